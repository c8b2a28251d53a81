//! MCP spans, with the OpenTelemetry MCP semantic conventions: one server span per request a
//! client sends (`{mcp.method.name} {target}`, kind server), one client span per request
//! relayed to a federated upstream and per request an upstream sends the client through us,
//! each with `mcp.method.name`, `jsonrpc.request.id`, `mcp.session.id` (a SHA-256 prefix, never
//! the id), `mcp.protocol.version`, `gen_ai.tool.name`/`gen_ai.operation.name` for tool calls,
//! `gen_ai.prompt.name`, `mcp.resource.uri`, and `error.type`/`rpc.response.status_code` on
//! failure. Trace context rides in `params._meta` both ways (`traceparent`, `tracestate`).

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use serde_json::Value;

use super::server::Caller;
use super::state::session_key;
use super::upstream::MessageSink;
use crate::telemetry::{extract_from_json_meta, SpanRef};

/// The span name's target: the tool or prompt name, when the method has one.
fn target<'a>(method: &str, params: &'a Value) -> Option<&'a str> {
    match method {
        "tools/call" | "prompts/get" => params.get("name").and_then(Value::as_str),
        _ => None,
    }
}

fn name(method: &str, params: &Value) -> String {
    match target(method, params) {
        Some(t) => format!("{method} {}", t.chars().take(128).collect::<String>()),
        None => method.chars().take(128).collect(),
    }
}

fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.chars().take(128).collect(),
        other => other.to_string(),
    }
}

/// The session id as the conventions want it recorded: not the id itself (a bearer of the
/// session), a prefix of its SHA-256.
fn hashed_session(session_id: &str) -> String {
    session_key(session_id)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a span records of its session: the protocol version and the hashed session id (none
/// for the stateless revision).
struct SessionAttrs {
    version: String,
    session: Option<String>,
}

impl SessionAttrs {
    fn of(caller: &Caller) -> Self {
        SessionAttrs {
            version: caller.version.clone(),
            session: (!caller.session_id.is_empty() && !caller.stateless)
                .then(|| hashed_session(&caller.session_id)),
        }
    }
}

fn attributes(
    session: &SessionAttrs,
    method: &str,
    params: &Value,
    id: Option<&Value>,
) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new(
            "mcp.method.name",
            method.chars().take(128).collect::<String>(),
        ),
        KeyValue::new("mcp.protocol.version", session.version.clone()),
        KeyValue::new("network.transport", "tcp"),
    ];
    if let Some(id) = id {
        attrs.push(KeyValue::new("jsonrpc.request.id", id_text(id)));
    }
    if let Some(s) = &session.session {
        attrs.push(KeyValue::new("mcp.session.id", s.clone()));
    }
    let text = |k: &str| params.get(k).and_then(Value::as_str).map(str::to_string);
    match method {
        "tools/call" => {
            attrs.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
            if let Some(n) = text("name") {
                attrs.push(KeyValue::new("gen_ai.tool.name", n));
            }
        }
        "prompts/get" => {
            if let Some(n) = text("name") {
                attrs.push(KeyValue::new("gen_ai.prompt.name", n));
            }
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            if let Some(u) = text("uri") {
                attrs.push(KeyValue::new("mcp.resource.uri", u));
            }
        }
        _ => {}
    }
    attrs
}

/// The server span of a client's request: the child of the context its `params._meta`
/// carries, else of the HTTP request's span. `None` when the request is not traced.
pub(super) fn request_span(
    caller: &Caller,
    method: &str,
    params: &Value,
    id: &Value,
) -> Option<SpanRef> {
    let http = caller.trace.as_ref()?;
    let sent = extract_from_json_meta(Some(params));
    Some(
        http.child_of(&sent, name(method, params), SpanKind::Server, || {
            attributes(&SessionAttrs::of(caller), method, params, Some(id))
        }),
    )
}

/// The client span of a request relayed to upstream `upstream`, whose context then replaces
/// what the client put in the message's `params._meta`.
pub(super) fn relay_span(
    parent: &SpanRef,
    caller: &Caller,
    upstream: &str,
    message: &mut Value,
) -> SpanRef {
    let method = message.get("method").and_then(Value::as_str).unwrap_or("");
    let params = message.get("params").unwrap_or(&Value::Null);
    let span = parent.child(name(method, params), SpanKind::Client, || {
        let mut attrs = attributes(&SessionAttrs::of(caller), method, params, message.get("id"));
        attrs.push(KeyValue::new("server.address", upstream.to_string()));
        attrs
    });
    span.inject_into_meta(message);
    span
}

/// Record a JSON-RPC answer on its span: the error code, or `tool_error` for a tool result
/// with `isError`.
pub(super) fn record_answer(span: &SpanRef, answer: &Value) {
    if !span.recording() {
        return;
    }
    if let Some(error) = answer.get("error") {
        let code = error.get("code").map(Value::to_string).unwrap_or_default();
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .take(256)
            .collect::<String>();
        span.set_attribute(KeyValue::new("rpc.response.status_code", code.clone()));
        span.fail(code, message);
    } else if answer["result"]["isError"] == Value::Bool(true) {
        span.fail("tool_error", String::new());
    }
}

/// Wrap the sink an upstream's messages about a relayed request go to, so that each request
/// the upstream sends the client (sampling, elicitation, roots) gets a client span, child of
/// the context the upstream put in its `_meta` (else of the relay span), whose context the
/// client then receives in `_meta`.
pub(super) fn traced_sink(sink: MessageSink, relay: &SpanRef, caller: &Caller) -> MessageSink {
    let relay = relay.clone();
    let session = SessionAttrs::of(caller);
    std::sync::Arc::new(move |mut message: Value| {
        let method = message.get("method").and_then(Value::as_str);
        if let (Some(method), Some(id)) = (method, message.get("id")) {
            let params = message.get("params").unwrap_or(&Value::Null);
            let sent = extract_from_json_meta(Some(params));
            let span = relay.child_of(&sent, name(method, params), SpanKind::Client, || {
                attributes(&session, method, params, Some(id))
            });
            span.inject_into_meta(&mut message);
        }
        sink(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_ids() {
        let p = json!({"name": "echo"});
        assert_eq!(name("tools/call", &p), "tools/call echo");
        assert_eq!(
            name("prompts/get", &json!({"name": "review"})),
            "prompts/get review"
        );
        assert_eq!(
            name("resources/read", &json!({"uri": "memo://x"})),
            "resources/read"
        );
        assert_eq!(name("tools/call", &json!({})), "tools/call");
        assert_eq!(id_text(&json!(7)), "7");
        assert_eq!(id_text(&json!("a")), "a");
        // multi-byte names are cut on characters
        let long = "é".repeat(300);
        assert_eq!(
            name("tools/call", &json!({"name": long})).chars().count(),
            11 + 128
        );
    }

    #[test]
    fn the_session_id_is_recorded_hashed() {
        let h = hashed_session("s-1");
        assert_eq!(h.len(), 16);
        assert!(!h.contains("s-1"));
        assert_eq!(h, hashed_session("s-1"));
        assert_ne!(h, hashed_session("s-2"));
    }
}
