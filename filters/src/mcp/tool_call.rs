//! `tools/call`: the per-tool mechanisms around one call. Authorization by the per-tool policy
//! (also used for listings and relayed requests), the per-caller and per-tool rate limits,
//! argument validation, the result cache of idempotent tools (keyed by canonical arguments),
//! cancellation of calls in flight (`notifications/cancelled`), calling a registry tool's
//! backend or relaying to the upstream that owns the tool, and results as the session's
//! protocol version has them.

use std::sync::Arc;
use std::time::Instant;

use regorus::Value as Rego;
use serde_json::{json, Map, Value};

use super::dispatch::{FORBIDDEN, RATE_LIMITED, REQUEST_CANCELLED};
use super::jsonrpc::{self, INVALID_PARAMS};
use super::server::{Caller, McpCore};
use super::tools;
use super::upstream::MessageSink;
use crate::mcp::metrics::METRICS;
use crate::telemetry::SpanRef;

/// Calls in flight, by session and JSON-RPC id, so `notifications/cancelled` can abort them
/// (and tell the federated upstream serving one, by its index).
pub(super) type InFlight = std::sync::Mutex<
    std::collections::HashMap<(String, String), (futures::future::AbortHandle, Option<usize>)>,
>;

/// Arguments as canonical JSON (object keys sorted at every level), for cache keys.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// A tool result as this protocol version has it: `structuredContent` from 2025-06-18 on.
fn for_version(mut result: Value, version: &str) -> Value {
    if version < "2025-06-18" {
        if let Some(o) = result.as_object_mut() {
            o.remove("structuredContent");
        }
    }
    result
}

impl McpCore {
    /// Run `work` for the request `id` of this session so that `notifications/cancelled` can
    /// abort it (`None` then); it runs within the HTTP request, so a client that goes away
    /// drops it too, closing any backend or upstream request it had open.
    pub(super) async fn cancellable<T>(
        &self,
        caller: &Caller,
        id: &Value,
        upstream: Option<usize>,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let (handle, registration) = futures::future::AbortHandle::new_pair();
        let key = (caller.session_id.clone(), id.to_string());
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), (handle, upstream));
        let outcome = futures::future::Abortable::new(work, registration).await;
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        outcome.ok()
    }

    /// Whether the policy lets this request call `tool` (always, without a policy).
    pub(super) async fn authorize(
        &self,
        caller: &Caller,
        method: &str,
        tool: Option<&str>,
        arguments: Option<&Map<String, Value>>,
    ) -> std::result::Result<(), String> {
        let (Some(policy), Some(base)) = (&self.policy, &caller.base) else {
            return Ok(());
        };
        let mut input = base.clone();
        if let Ok(fields) = input.as_object_mut() {
            let mcp = json!({"method": method, "tool": tool, "arguments": arguments});
            fields.insert(Rego::from("mcp"), Rego::from(mcp));
        }
        policy
            .authorize(input, &caller.request_id, caller.trace.as_ref())
            .await
    }

    /// Abort the call in flight for `request_id` in this session (and its backend request),
    /// and pass the cancellation on to the upstream serving it.
    pub(super) fn cancel(&self, caller: &Caller, request_id: Option<&Value>, notification: &Value) {
        let Some(rid) = request_id else { return };
        let key = (caller.session_id.clone(), rid.to_string());
        let Some((handle, upstream)) = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key)
        else {
            return;
        };
        handle.abort();
        if let (Some(index), Some(fed)) = (upstream, &self.federation) {
            let notify = fed
                .clone()
                .notify(caller.client(), Some(index), notification.clone());
            crate::background::handle().spawn(notify);
        }
    }

    pub(super) async fn call_tool(
        &self,
        id: Value,
        message: &Value,
        params: &Value,
        caller: &Caller,
        related: &MessageSink,
        span: Option<&SpanRef>,
    ) -> Value {
        let Some(name) = params.get("name").and_then(Value::as_str) else {
            self.count("tools/call", "", "error");
            return jsonrpc::error(id, INVALID_PARAMS, "params.name (a string) is required");
        };
        let local = self.registry.get(name).cloned();
        let remote = match (&local, &self.federation) {
            (None, Some(fed)) => fed.owner_of_name("tools", name),
            _ => None,
        };
        if local.is_none() && remote.is_none() {
            self.count("tools/call", "unknown", "error");
            return jsonrpc::error(id, INVALID_PARAMS, &format!("unknown tool: {name}"));
        }
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(a)) => a.clone(),
            Some(_) => {
                self.count("tools/call", name, "error");
                return jsonrpc::error(id, INVALID_PARAMS, "params.arguments must be an object");
            }
        };
        if let Err(reason) = self
            .authorize(caller, "tools/call", Some(name), Some(&arguments))
            .await
        {
            self.count("tools/call", name, "denied");
            return jsonrpc::error(id, FORBIDDEN, &format!("forbidden: {reason}"));
        }
        if let Some(limits) = &self.tool_limits {
            if !limits.admit(&format!("{}|{name}", caller.rate_key)).await {
                self.count("tools/call", name, "rate_limited");
                return jsonrpc::error(
                    id,
                    RATE_LIMITED,
                    &format!("rate limit exceeded for tool `{name}`: try again later"),
                );
            }
        }
        if let Some(tool) = &local {
            let violations = tool.violations(&Value::Object(arguments.clone()));
            if !violations.is_empty() {
                // A tool execution error (not a protocol error), so the model can correct itself.
                self.count("tools/call", name, "invalid_arguments");
                let text = format!("invalid arguments for `{name}`: {}", violations.join("; "));
                return jsonrpc::result(
                    id,
                    json!({"content": [{"type": "text", "text": text}], "isError": true}),
                );
            }
        }
        let idempotent = match (&local, &remote) {
            (Some(tool), _) => tool.idempotent,
            (None, Some((_, _, descriptor))) => {
                descriptor["annotations"]["idempotentHint"] == json!(true)
            }
            _ => false,
        };
        let cache_key = self.results.as_ref().filter(|_| idempotent).map(|_| {
            format!(
                "{name}\u{0}{}\u{0}{}",
                caller.tenant,
                canonical(&Value::Object(arguments.clone()))
            )
        });
        if let (Some(cache), Some(key)) = (&self.results, &cache_key) {
            let hit = cache.get(key);
            METRICS
                .mcp_tool_cache
                .with_label_values(&[name, if hit.is_some() { "hit" } else { "miss" }])
                .inc();
            if let Some(result) = hit {
                self.count("tools/call", name, "ok");
                return jsonrpc::result(id, for_version(result, &caller.version));
            }
        }
        let started = Instant::now();
        let result = match (local, remote) {
            (Some(tool), _) => match self.call_local(&tool, arguments, &id, caller, span).await {
                Ok(result) => result,
                Err(error) => return error,
            },
            (None, Some((index, original, _))) => {
                // The upstream's answer goes back as it is (with fields we do not know).
                let mut forwarded = message.clone();
                forwarded["params"]["name"] = json!(original);
                let answer = self.relay(index, caller, forwarded, related, span).await;
                METRICS
                    .mcp_tool_duration
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                let is_error = answer["result"]["isError"] == json!(true);
                let status = match answer.get("result") {
                    None => "error",
                    Some(_) if is_error => "tool_error",
                    Some(_) => "ok",
                };
                self.count("tools/call", name, status);
                if let (Some(cache), Some(key), Some(result), false) =
                    (&self.results, cache_key, answer.get("result"), is_error)
                {
                    cache.insert(key, result.clone());
                }
                return answer;
            }
            (None, None) => unreachable!("checked above"),
        };
        METRICS
            .mcp_tool_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        let is_error = result["isError"] == json!(true);
        self.count(
            "tools/call",
            name,
            if is_error { "tool_error" } else { "ok" },
        );
        if let (Some(cache), Some(key), false) = (&self.results, cache_key, is_error) {
            cache.insert(key, result.clone());
        }
        jsonrpc::result(id, for_version(result, &caller.version))
    }

    /// Call a tool of the registry (its HTTP backend); the result, or the JSON-RPC error.
    async fn call_local(
        &self,
        tool: &Arc<tools::Tool>,
        arguments: Map<String, Value>,
        id: &Value,
        caller: &Caller,
        span: Option<&SpanRef>,
    ) -> std::result::Result<Value, Value> {
        let name = tool.name.as_str();
        let call = tool.call(&self.client, &arguments, span);
        let Some(outcome) = self.cancellable(caller, id, None, call).await else {
            self.count("tools/call", name, "cancelled");
            return Err(jsonrpc::error(
                id.clone(),
                REQUEST_CANCELLED,
                "request cancelled by the client",
            ));
        };
        let mut result = json!({
            "content": [{"type": "text", "text": outcome.text}],
            "isError": outcome.is_error,
        });
        if let Some(s) = outcome.structured {
            result["structuredContent"] = s;
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_arguments_ignore_key_order() {
        // serde_json keeps insertion order when its `preserve_order` feature is on (a dependency
        // may turn it on): the key must not depend on it.
        let a = json!({"b": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, {"p": 1, "q": 2}]}, "b": 1});
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&a),
            r#"{"a":{"x":null,"y":[1,{"p":1,"q":2}]},"b":1}"#
        );
        // It is JSON, and the same value.
        let back: Value = serde_json::from_str(&canonical(&a)).unwrap();
        assert_eq!(back, a);
        assert_eq!(canonical(&json!({})), "{}");
        assert_eq!(canonical(&json!([])), "[]");
        assert_eq!(canonical(&json!("s")), r#""s""#);
    }

    #[test]
    fn canonical_arguments_tell_values_apart() {
        let distinct = [
            json!({"a": 1}),
            json!({"a": "1"}),
            json!({"a": 1.5}),
            json!({"a": true}),
            json!({"a": null}),
            json!({}),
            json!({"a": [1, 2]}),
            json!({"a": [2, 1]}),
            json!({"a": [[1, 2]]}),
            json!({"a": {"b": 1}}),
            json!({"a:b": 1}),
            json!({"a": 1, "b": 2}),
            // A value that looks like more fields stays one escaped string.
            json!({"a": "1,\"b\":2"}),
            json!({"a\":1,\"b": 2}),
        ];
        let keys: std::collections::HashSet<String> = distinct.iter().map(canonical).collect();
        assert_eq!(keys.len(), distinct.len(), "{keys:?}");
    }

    #[test]
    fn structured_content_from_2025_06_18_on() {
        let result = json!({"content": [], "isError": false, "structuredContent": {"n": 1}});
        for old in ["2024-11-05", "2025-03-26"] {
            let shown = for_version(result.clone(), old);
            assert!(shown.get("structuredContent").is_none(), "{old}");
            assert_eq!(shown["content"], json!([]));
            assert_eq!(shown["isError"], false);
        }
        for new in ["2025-06-18", "2025-11-25", "2026-07-28"] {
            assert_eq!(for_version(result.clone(), new), result, "{new}");
        }
        // Results without it, or not objects, pass as they are.
        assert_eq!(
            for_version(json!({"content": []}), "2024-11-05"),
            json!({"content": []})
        );
        assert_eq!(for_version(json!(null), "2024-11-05"), json!(null));
    }

    #[tokio::test]
    async fn cancellation_aborts_the_call_in_flight() {
        let core = std::sync::Arc::new(crate::mcp::server::core_for_test(json!({})));
        let caller = crate::mcp::server::caller_for_test(false);
        let id = json!(42);
        // Finished work is returned and forgotten.
        assert_eq!(
            core.cancellable(&caller, &id, None, async { 7 }).await,
            Some(7)
        );
        assert!(core.in_flight.lock().unwrap().is_empty());
        let (running, cancelled) = (core.clone(), caller.clone());
        let call = tokio::spawn(async move {
            running
                .cancellable(&cancelled, &json!(42), None, std::future::pending::<()>())
                .await
        });
        while core.in_flight.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // Another session's cancellation of the same id does nothing.
        let mut other = caller.clone();
        other.session_id = "s-2".into();
        core.cancel(&other, Some(&id), &Value::Null);
        assert_eq!(core.in_flight.lock().unwrap().len(), 1);
        core.cancel(&caller, Some(&id), &Value::Null);
        assert_eq!(call.await.unwrap(), None);
        assert!(core.in_flight.lock().unwrap().is_empty());
    }
}
