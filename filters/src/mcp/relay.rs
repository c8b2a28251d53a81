//! Requests relayed to federated upstreams: which messages are relayed, the prompt, resource
//! and completion requests sent to the upstream that owns the name, URI or reference (under the
//! upstream's own name), and relaying one request so that the client can cancel it (the
//! stateless revision's requests isolated first, as they share one upstream session).

use std::sync::Arc;

use serde_json::{json, Value};

use super::dispatch::{FORBIDDEN, REQUEST_CANCELLED, RESOURCE_NOT_FOUND};
use super::federation::Federation;
use super::jsonrpc::{self, INVALID_PARAMS};
use super::server::{Caller, McpCore};
use super::spans;
use super::stateless;
use super::upstream::MessageSink;
use crate::telemetry::SpanRef;

impl McpCore {
    /// Whether a message is a request relayed to a federated upstream.
    pub(super) fn relays(&self, message: &Value) -> bool {
        let Some(fed) = &self.federation else {
            return false;
        };
        let params = &message["params"];
        match message.get("method").and_then(Value::as_str) {
            Some("tools/call") => params["name"].as_str().is_some_and(|n| {
                self.registry.get(n).is_none() && fed.owner_of_name("tools", n).is_some()
            }),
            Some("prompts/get" | "resources/read" | "completion/complete") => {
                message.get("id").is_some()
            }
            _ => false,
        }
    }

    pub(super) fn federation(&self) -> &Arc<Federation> {
        self.federation
            .as_ref()
            .expect("only called when federating")
    }

    /// A prompt, resource or completion request: to the upstream that owns the name, URI or
    /// reference, as that upstream names it.
    pub(super) async fn relay_request(
        &self,
        message: &Value,
        id: Value,
        caller: &Caller,
        related: &MessageSink,
        span: Option<&SpanRef>,
    ) -> Value {
        let method = message.get("method").and_then(Value::as_str).unwrap_or("");
        let params = &message["params"];
        let fed = self.federation();
        let mut forwarded = message.clone();
        let owner = match method {
            "prompts/get" => params["name"]
                .as_str()
                .and_then(|n| fed.owner_of_name("prompts", n))
                .map(|(i, original, _)| {
                    forwarded["params"]["name"] = json!(original);
                    i
                }),
            "completion/complete" => fed.owner_of_ref(&params["ref"]).map(|(i, r)| {
                forwarded["params"]["ref"] = r;
                i
            }),
            _ => params["uri"].as_str().and_then(|u| fed.owner_of_uri(u)),
        };
        let Some(index) = owner else {
            self.count(method, "", "error");
            let (code, what) = match method {
                "prompts/get" => (INVALID_PARAMS, "prompt"),
                "completion/complete" => (INVALID_PARAMS, "reference"),
                _ => (RESOURCE_NOT_FOUND, "resource"),
            };
            return jsonrpc::error(id, code, &format!("unknown {what}"));
        };
        let arguments = params.get("arguments").and_then(Value::as_object);
        if let Err(reason) = self.authorize(caller, method, None, arguments).await {
            self.count(method, "", "denied");
            return jsonrpc::error(id, FORBIDDEN, &format!("forbidden: {reason}"));
        }
        let answer = self.relay(index, caller, forwarded, related, span).await;
        let status = if answer.get("error").is_some() {
            "error"
        } else {
            "ok"
        };
        self.count(method, "", status);
        answer
    }

    /// Relay a request to upstream `index` and wait for its answer; the client can cancel it.
    /// Traced (`span`: the request's MCP span), the relay is a client span whose context the
    /// upstream receives in `params._meta`, and the requests the upstream sends the client
    /// about it get spans of their own.
    pub(super) async fn relay(
        &self,
        index: usize,
        caller: &Caller,
        mut message: Value,
        related: &MessageSink,
        span: Option<&SpanRef>,
    ) -> Value {
        let relay_span = span.map(|s| {
            let upstream = self.federation().upstream_name(index);
            spans::relay_span(s, caller, upstream, &mut message)
        });
        let related = match &relay_span {
            Some(s) => spans::traced_sink(related.clone(), s, caller),
            None => related.clone(),
        };
        let related = &related;
        let (message, related, client_id) = if caller.stateless {
            stateless::isolate(message, related, caller.log_level.as_deref())
        } else {
            let id = message.get("id").cloned().unwrap_or(Value::Null);
            (message, related.clone(), id)
        };
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let forwarding =
            self.federation()
                .clone()
                .forward(index, caller.client(), message, related);
        let answer = match self.cancellable(caller, &id, Some(index), forwarding).await {
            Some(mut answer) => {
                answer["id"] = client_id;
                answer
            }
            None => jsonrpc::error(
                client_id,
                REQUEST_CANCELLED,
                "request cancelled by the client",
            ),
        };
        if let Some(s) = &relay_span {
            spans::record_answer(s, &answer);
        }
        answer
    }
}
