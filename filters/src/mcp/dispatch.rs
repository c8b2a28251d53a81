//! JSON-RPC dispatch of one MCP message of a session: `initialize` (version negotiation, the
//! server's capabilities, opening the session), requests by method (`ping`, `tools/list`,
//! `tools/call`, and with federated upstreams the prompt, resource, completion and logging
//! methods), notifications and the client's responses; list pagination; the per-method request
//! counter; the protocol versions and the server-defined error codes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::federation;
use super::http::{Reply, SESSION_HEADER};
use super::jsonrpc::{self, Incoming, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND};
use super::server::{Caller, McpCore};
use super::spans;
use super::upstream::MessageSink;
use crate::mcp::metrics::METRICS;

/// Protocol versions negotiated by `initialize`, oldest first.
pub const PROTOCOL_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The most a client's `initialize` capabilities may weigh (serialized), since they are kept
/// for the session (sealed into its id, or in `UNSEALED_CAPABILITIES`): 16 KiB.
pub const MAX_CLIENT_CAPABILITIES: usize = 16 * 1024;

/// A refusal by the per-tool policy (a server-defined JSON-RPC error code).
pub const FORBIDDEN: i64 = -32003;
/// `resources/read` of a URI no upstream serves (the MCP spec's code).
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// The answer to a request the client cancelled (`notifications/cancelled`; LSP's code).
pub const REQUEST_CANCELLED: i64 = -32800;
/// A call refused by `tool_rate_limit` (a server-defined JSON-RPC error code).
pub const RATE_LIMITED: i64 = -32004;

/// Negotiate: the client's version when we speak it, else our latest.
fn negotiate(requested: &str) -> &'static str {
    PROTOCOL_VERSIONS
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(PROTOCOL_VERSIONS[PROTOCOL_VERSIONS.len() - 1])
}

/// Methods counted under their own name in `mcp_requests_total` (anything else is `other`).
const COUNTED_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
];

fn method_label(method: &str) -> &'static str {
    COUNTED_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

impl McpCore {
    /// The server's capabilities: tools, and with upstreams prompts, resources, completions
    /// and logging; change notifications and subscriptions only where a session can hear them.
    pub(super) fn capabilities(&self, stateless: bool) -> Value {
        let mut capabilities = json!({"tools": {}});
        if !stateless {
            capabilities["tools"]["listChanged"] = json!(self.get_stream);
        }
        if let Some(fed) = &self.federation {
            if let (Some(ours), Value::Object(more)) =
                (capabilities.as_object_mut(), fed.capabilities(stateless))
            {
                ours.extend(more);
            }
        }
        capabilities
    }

    /// `initialize`: negotiate the version and open the session (`legacy`: the legacy
    /// transport's session, which exists already).
    pub(super) fn handle_initialize(&self, message: &Value, legacy: Option<&str>) -> Reply {
        let (id, params) = match jsonrpc::classify(message) {
            Ok(Incoming::Request { id, params, .. }) => (id, params),
            Ok(_) => {
                return Reply::json(
                    400,
                    jsonrpc::error(
                        Value::Null,
                        INVALID_REQUEST,
                        "initialize must be a request with an id",
                    ),
                )
            }
            Err(e) => return Reply::json(400, e.0),
        };
        let invalid_params = |message: &str| {
            self.count("initialize", "", "error");
            Reply::json(200, jsonrpc::error(id.clone(), INVALID_PARAMS, message))
        };
        let Some(requested) = params.get("protocolVersion").and_then(Value::as_str) else {
            return invalid_params("params.protocolVersion (a string) is required");
        };
        if let Some(caps) = params.get("capabilities") {
            if serde_json::to_vec(caps).map_or(0, |b| b.len()) > MAX_CLIENT_CAPABILITIES {
                return invalid_params(&format!(
                    "params.capabilities is larger than {MAX_CLIENT_CAPABILITIES} bytes"
                ));
            }
        }
        let version = negotiate(requested);
        let capabilities = self.capabilities(false);
        // Federated upstreams are offered the client's capabilities (sampling, roots…).
        let client_capabilities = self
            .federation
            .as_ref()
            .map(|_| params.get("capabilities").cloned().unwrap_or(json!({})));
        let result = json!({
            "protocolVersion": version,
            "capabilities": capabilities,
            "serverInfo": {"name": self.server_name, "version": env!("CARGO_PKG_VERSION")},
        });
        self.count("initialize", "", "ok");
        let mut reply = Reply::json(200, jsonrpc::result(id, result));
        match legacy {
            Some(session) => {
                if let Some(caps) = client_capabilities {
                    self.state
                        .unsealed_capabilities
                        .insert(session.to_string(), caps);
                }
            }
            None => reply.headers.push((
                SESSION_HEADER.into(),
                self.sealer.seal(version, client_capabilities.as_ref()),
            )),
        }
        reply
    }

    pub(super) fn count(&self, method: &str, tool: &str, status: &str) {
        METRICS
            .mcp_requests
            .with_label_values(&[method_label(method), tool, status])
            .inc();
    }

    /// Handle one message of an open session: the JSON-RPC reply, or `None` (notification,
    /// response). Messages an upstream sends about a relayed request go to `related`.
    pub(super) async fn handle_message(
        &self,
        message: &Value,
        caller: &Caller,
        related: &MessageSink,
    ) -> Option<Value> {
        let (id, method, params) = match jsonrpc::classify(message) {
            Ok(Incoming::Request { id, method, params }) => (id, method, params),
            Ok(Incoming::Notification { method, params }) => {
                match method.as_str() {
                    "notifications/cancelled" => {
                        self.cancel(caller, params.get("requestId"), message)
                    }
                    "notifications/roots/list_changed" => {
                        if let Some(fed) = &self.federation {
                            let notify = fed.clone().notify(caller.client(), None, message.clone());
                            crate::background::handle().spawn(notify);
                        }
                    }
                    _ => {}
                }
                return None;
            }
            Ok(Incoming::Response) => {
                // The client's answer to a request an upstream sent it (sampling, elicitation…).
                if let Some(fed) = &self.federation {
                    if federation::is_relayed_response(message) {
                        fed.clone()
                            .route_response(caller.client(), message.clone())
                            .await;
                    }
                }
                return None;
            }
            Err(e) => return Some(e.0),
        };
        let (method, params) = (method.as_str(), &params);
        let span = spans::request_span(caller, method, params, &id);
        let span = span.as_ref();
        // the answer, with every early return of the method's arms ending here
        let answer = async {
            let federated = self.federation.is_some();
            let outcome = match method {
                "ping" => Ok(json!({})),
                "initialize" => Err((INVALID_REQUEST, "initialize cannot be batched".to_string())),
                "tools/list" => self.list_tools(params, caller).await,
                "tools/call" => {
                    return self
                        .call_tool(id, message, params, caller, related, span)
                        .await
                }
                "prompts/list" | "resources/list" | "resources/templates/list" if federated => {
                    let key = match method {
                        "prompts/list" => "prompts",
                        "resources/list" => "resources",
                        _ => "resourceTemplates",
                    };
                    let items = self.federation().list(key);
                    self.paginate(items, params, key)
                }
                "prompts/get"
                | "resources/read"
                | "resources/subscribe"
                | "resources/unsubscribe"
                | "completion/complete"
                    if federated =>
                {
                    return self.relay_request(message, id, caller, related, span).await;
                }
                "logging/setLevel" if federated => {
                    self.federation()
                        .clone()
                        .set_level(caller.client(), message.clone())
                        .await;
                    Ok(json!({}))
                }
                _ => Err((METHOD_NOT_FOUND, format!("method not found: {method}"))),
            };
            match outcome {
                Ok(result) => {
                    self.count(method, "", "ok");
                    jsonrpc::result(id, result)
                }
                Err((code, message)) => {
                    self.count(method, "", "error");
                    jsonrpc::error(id, code, &message)
                }
            }
        }
        .await;
        if let Some(span) = span {
            spans::record_answer(span, &answer);
        }
        Some(answer)
    }

    /// One page of a list, with the cursor of the next.
    fn paginate(
        &self,
        items: Vec<Value>,
        params: &Value,
        key: &str,
    ) -> std::result::Result<Value, (i64, String)> {
        let start = match params.get("cursor") {
            None | Some(Value::Null) => 0,
            Some(Value::String(c)) => B64
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| {
                    s.strip_prefix("offset:")
                        .and_then(|n| n.parse::<usize>().ok())
                })
                .filter(|n| *n <= items.len())
                .ok_or((INVALID_PARAMS, "invalid cursor".to_string()))?,
            Some(_) => return Err((INVALID_PARAMS, "cursor must be a string".into())),
        };
        let end = (start + self.page_size).min(items.len());
        let mut result = json!({ key: items[start..end] });
        if end < items.len() {
            result["nextCursor"] = json!(B64.encode(format!("offset:{end}")));
        }
        Ok(result)
    }

    async fn list_tools(
        &self,
        params: &Value,
        caller: &Caller,
    ) -> std::result::Result<Value, (i64, String)> {
        let upstream = self
            .federation
            .as_ref()
            .map(|f| f.list("tools"))
            .unwrap_or_default()
            .into_iter()
            // A tool of the registry shadows an upstream's of the same name.
            .filter(|t| {
                t["name"]
                    .as_str()
                    .is_none_or(|n| self.registry.get(n).is_none())
            })
            .collect::<Vec<_>>();
        let all = self
            .registry
            .tools
            .iter()
            .map(|t| &t.descriptor)
            .chain(upstream.iter());
        let mut visible = Vec::with_capacity(self.registry.tools.len() + upstream.len());
        for tool in all {
            let name = tool["name"].as_str();
            if self
                .authorize(caller, "tools/call", name, None)
                .await
                .is_ok()
            {
                visible.push(tool.clone());
            }
        }
        self.paginate(visible, params, "tools")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::server::core_for_test;
    use crate::mcp::stateless::MODERN_VERSION;

    #[test]
    fn version_negotiation() {
        assert_eq!(negotiate("2025-03-26"), "2025-03-26");
        assert_eq!(negotiate("2024-11-05"), "2024-11-05");
        assert_eq!(negotiate("1999-01-01"), "2025-11-25");
        for v in PROTOCOL_VERSIONS {
            assert_eq!(negotiate(v), *v);
        }
        // Not a handshake revision: `initialize` answers with the latest one.
        assert_eq!(negotiate(MODERN_VERSION), "2025-11-25");
        assert_eq!(negotiate(""), "2025-11-25");
        assert_eq!(negotiate(" 2025-03-26"), "2025-11-25");
    }

    #[test]
    fn protocol_versions_are_oldest_first() {
        // `negotiate` takes the last as the latest, and results compare versions as strings.
        assert!(PROTOCOL_VERSIONS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(PROTOCOL_VERSIONS.last(), Some(&"2025-11-25"));
        assert!(!PROTOCOL_VERSIONS.contains(&MODERN_VERSION));
    }

    #[test]
    fn method_labels() {
        for m in COUNTED_METHODS {
            assert_eq!(method_label(m), *m);
        }
        assert_eq!(method_label("tools/call"), "tools/call");
        assert_eq!(method_label("server/discover"), "server/discover");
        // Anything else is one label, so clients cannot grow the metric's label set.
        assert_eq!(method_label("notifications/cancelled"), "other");
        assert_eq!(method_label("Tools/Call"), "other");
        assert_eq!(method_label("tools/call/"), "other");
        assert_eq!(method_label(""), "other");
        assert_eq!(method_label(&"x".repeat(1000)), "other");
    }

    fn initialize(params: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
    }

    #[test]
    fn initialize_negotiates_and_seals_the_version() {
        let core = core_for_test(json!({"server_name": "test-server"}));
        let reply = core.handle_initialize(
            &initialize(json!({"protocolVersion": "2025-03-26", "capabilities": {}})),
            None,
        );
        assert_eq!(reply.status, 200);
        let body = reply.body.expect("a body");
        assert_eq!(body["id"], 1);
        assert_eq!(body["result"]["protocolVersion"], "2025-03-26");
        assert_eq!(body["result"]["serverInfo"]["name"], "test-server");
        assert_eq!(
            body["result"]["capabilities"],
            json!({"tools": {"listChanged": true}})
        );
        let [(name, id)] = reply.headers.as_slice() else {
            panic!("one header expected: {:?}", reply.headers);
        };
        assert_eq!(name, SESSION_HEADER);
        let state = core.sealer.open(id).expect("a session this core opens");
        assert_eq!(state.protocol_version, "2025-03-26");
        // Without upstreams the client's capabilities are not kept.
        assert_eq!(state.client_capabilities, Value::Null);

        // A version not spoken here gets the latest, in the body and in the session.
        let reply =
            core.handle_initialize(&initialize(json!({"protocolVersion": "2099-01-01"})), None);
        assert_eq!(
            reply.body.as_ref().unwrap()["result"]["protocolVersion"],
            "2025-11-25"
        );
        let state = core.sealer.open(&reply.headers[0].1).unwrap();
        assert_eq!(state.protocol_version, "2025-11-25");

        // The legacy transport's session exists already: no new session id.
        let reply = core.handle_initialize(
            &initialize(json!({"protocolVersion": "2024-11-05"})),
            Some("legacy-session"),
        );
        assert_eq!(reply.status, 200);
        assert!(reply.headers.is_empty());
    }

    #[test]
    fn initialize_refusals() {
        let core = core_for_test(json!({}));
        let code = |reply: &Reply| reply.body.as_ref().unwrap()["error"]["code"].as_i64();
        for params in [
            json!({}),
            json!({"protocolVersion": 20250326}),
            json!({"protocolVersion": null}),
        ] {
            let reply = core.handle_initialize(&initialize(params), None);
            assert_eq!((reply.status, code(&reply)), (200, Some(INVALID_PARAMS)));
            assert_eq!(reply.body.as_ref().unwrap()["id"], 1);
            assert!(reply.headers.is_empty());
        }
        let big = "x".repeat(MAX_CLIENT_CAPABILITIES);
        let reply = core.handle_initialize(
            &initialize(json!({"protocolVersion": "2025-06-18", "capabilities": {"x": big}})),
            None,
        );
        assert_eq!((reply.status, code(&reply)), (200, Some(INVALID_PARAMS)));
        assert!(reply.headers.is_empty());
        // Just under the bound is fine.
        let fits = "x".repeat(MAX_CLIENT_CAPABILITIES - 16);
        let reply = core.handle_initialize(
            &initialize(json!({"protocolVersion": "2025-06-18", "capabilities": {"x": fits}})),
            None,
        );
        assert_eq!(reply.status, 200);
        assert!(reply.body.as_ref().unwrap().get("result").is_some());
        // Not a request: a notification, or not JSON-RPC at all.
        let reply = core.handle_initialize(
            &json!({"jsonrpc": "2.0", "method": "initialize", "params": {}}),
            None,
        );
        assert_eq!((reply.status, code(&reply)), (400, Some(INVALID_REQUEST)));
        let reply = core.handle_initialize(&json!({"method": "initialize", "id": 1}), None);
        assert_eq!((reply.status, code(&reply)), (400, Some(INVALID_REQUEST)));
    }

    #[test]
    fn capabilities_without_upstreams() {
        let core = core_for_test(json!({}));
        assert_eq!(
            core.capabilities(false),
            json!({"tools": {"listChanged": true}})
        );
        // The stateless revision has no stream to hear a change on.
        assert_eq!(core.capabilities(true), json!({"tools": {}}));
        let no_get = core_for_test(json!({"get_stream": false}));
        assert_eq!(
            no_get.capabilities(false),
            json!({"tools": {"listChanged": false}})
        );
    }

    #[test]
    fn pagination() {
        let core = core_for_test(json!({"page_size": 2}));
        let items: Vec<Value> = (0..5).map(|i| json!({"n": i})).collect();
        let mut seen = Vec::new();
        let mut params = json!({});
        loop {
            let page = core.paginate(items.clone(), &params, "tools").unwrap();
            let got = page["tools"].as_array().unwrap();
            assert!(got.len() <= 2);
            seen.extend(got.iter().cloned());
            match page.get("nextCursor") {
                Some(cursor) => params = json!({ "cursor": cursor }),
                None => break,
            }
        }
        assert_eq!(seen, items);
        // A null cursor is the first page; an exact multiple ends without a cursor.
        let first = core
            .paginate(items.clone(), &json!({"cursor": null}), "x")
            .unwrap();
        assert_eq!(first["x"], json!([{"n": 0}, {"n": 1}]));
        let even = core
            .paginate(
                items[..4].to_vec(),
                &json!({"cursor": first["nextCursor"]}),
                "x",
            )
            .unwrap();
        assert_eq!(even["x"], json!([{"n": 2}, {"n": 3}]));
        assert!(even.get("nextCursor").is_none());
        let empty = core.paginate(Vec::new(), &json!({}), "x").unwrap();
        assert_eq!(empty, json!({"x": []}));
    }

    #[test]
    fn bad_cursors_are_invalid_params() {
        let core = core_for_test(json!({"page_size": 2}));
        let items: Vec<Value> = (0..3).map(|i| json!(i)).collect();
        for cursor in [
            json!("not base64!"),
            json!(B64.encode("offset:4")),
            json!(B64.encode("offset:-1")),
            json!(B64.encode("page:1")),
            json!(7),
        ] {
            let e = core
                .paginate(items.clone(), &json!({ "cursor": cursor }), "tools")
                .unwrap_err();
            assert_eq!(e.0, INVALID_PARAMS, "{cursor}");
        }
        // The offset just past the end is the (empty) last page.
        let end = core
            .paginate(items, &json!({"cursor": B64.encode("offset:3")}), "tools")
            .unwrap();
        assert_eq!(end, json!({"tools": []}));
    }
}
