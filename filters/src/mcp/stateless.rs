//! The stateless 2026-07-28 revision on the Streamable HTTP endpoint: no `initialize` and no
//! session; every POST carries the protocol version in its `MCP-Protocol-Version` header and
//! in `params._meta`, and says its method (and tool, prompt or resource) in `Mcp-Method` /
//! `Mcp-Name`, which must agree with the body (-32020 otherwise). `server/discover` tells a
//! client what this server speaks. Results carry `resultType` (and lists `ttlMs` +
//! `cacheScope`); methods the revision removed answer -32601. Relayed to federated upstreams
//! (which speak the handshake revisions) through one gateway-owned session per upstream, with
//! ids made unique and the revision's `_meta` keys removed; progress only for requests with a
//! token, logging only at or above the request's `logLevel`; a closed client connection
//! cancels the work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::jsonrpc::{self, Incoming, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND};
use super::upstream::MessageSink;

/// The stateless revision's version string.
pub const MODERN_VERSION: &str = "2026-07-28";
/// Headers and `_meta` do not agree with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// The requested protocol version is not spoken here.
pub const UNSUPPORTED_VERSION: i64 = -32022;
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// The revision's envelope keys (not for upstreams that speak an older revision).
const META_NAMESPACE: &str = "io.modelcontextprotocol/";

/// Methods of the handshake revisions that 2026-07-28 removed.
const REMOVED: &[&str] = &[
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// The HTTP status the revision gives a JSON-RPC error code.
pub fn status_of(code: i64) -> u16 {
    match code {
        -32700 | -32600 | -32602 | HEADER_MISMATCH | -32021 | UNSUPPORTED_VERSION => 400,
        METHOD_NOT_FOUND => 404,
        _ => 200,
    }
}

/// The routing headers of one POST.
pub struct RoutingHeaders {
    pub version: String,
    pub method: Option<String>,
    pub name: Option<String>,
}

/// A header value, decoding the `=?base64?…?=` form clients use for non-ASCII values.
fn header_text(raw: &str) -> String {
    raw.strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| raw.to_string())
}

/// One checked request of the revision.
#[derive(Debug)]
pub struct ModernRequest {
    pub id: Value,
    pub method: String,
    /// The message with the revision's `_meta` keys removed (what handlers and upstreams see).
    pub message: Value,
    /// `_meta` logLevel: send `notifications/message` at or above it, none without it.
    pub log_level: Option<String>,
}

/// Check a POSTed message against the revision: `Ok(None)` for a notification or response (202),
/// the error reply (with its id) when it breaks a rule.
pub fn check(
    message: Value,
    headers: &RoutingHeaders,
) -> Result<Option<ModernRequest>, (u16, Value)> {
    let refuse =
        |id: Value, code: i64, text: &str| (status_of(code), jsonrpc::error(id, code, text));
    if message.is_array() {
        return Err(refuse(
            Value::Null,
            INVALID_REQUEST,
            "Body must be a single JSON-RPC request or notification object",
        ));
    }
    let (id, method) = match jsonrpc::classify(&message) {
        Ok(Incoming::Request { id, method, .. }) => (id, method),
        Ok(_) => return Ok(None),
        Err(e) => return Err((400, e.0)),
    };
    // A version no revision of ours has (a handshake client's typo lands here too).
    if headers.version != MODERN_VERSION {
        let mut e = jsonrpc::error(id, UNSUPPORTED_VERSION, "Unsupported protocol version");
        e["error"]["data"] = json!({"supported": all_versions(), "requested": headers.version});
        return Err((400, e));
    }
    let meta = message["params"].get("_meta").and_then(Value::as_object);
    let Some(meta) =
        meta.filter(|m| m.contains_key(META_VERSION) && m.contains_key(META_CAPABILITIES))
    else {
        return Err(refuse(
            id,
            INVALID_PARAMS,
            &format!("params._meta must be an object carrying the required '{META_VERSION}' and '{META_CAPABILITIES}' envelope keys"),
        ));
    };
    let meta_version = meta[META_VERSION].as_str().unwrap_or_default();
    if headers.version != meta_version {
        return Err(refuse(
            id,
            HEADER_MISMATCH,
            "mcp-protocol-version header does not match the request envelope's protocol version",
        ));
    }
    if headers.method.as_deref() != Some(method.as_str()) {
        return Err(refuse(
            id,
            HEADER_MISMATCH,
            "mcp-method header does not match the request body's method",
        ));
    }
    let named = match method.as_str() {
        "tools/call" | "prompts/get" => message["params"]["name"].as_str(),
        "resources/read" => message["params"]["uri"].as_str(),
        _ => None,
    };
    if let Some(name) = named {
        if headers.name.as_deref().map(header_text).as_deref() != Some(name) {
            let param = if method == "resources/read" {
                "uri"
            } else {
                "name"
            };
            return Err(refuse(
                id,
                HEADER_MISMATCH,
                &format!("mcp-name header does not match the request body's '{param}' parameter"),
            ));
        }
    }
    if REMOVED.contains(&method.as_str()) {
        let mut e = jsonrpc::error(id, METHOD_NOT_FOUND, "Method not found");
        e["error"]["data"] = json!(method);
        return Err((404, e));
    }
    let log_level = meta
        .get(META_LOG_LEVEL)
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut message = message;
    if let Some(meta) = message["params"]["_meta"].as_object_mut() {
        meta.retain(|k, _| !k.starts_with(META_NAMESPACE));
        if meta.is_empty() {
            message["params"].as_object_mut().map(|p| p.remove("_meta"));
        }
    }
    Ok(Some(ModernRequest {
        id,
        method,
        message,
        log_level,
    }))
}

/// Every version spoken here: the handshake revisions and this one.
fn all_versions() -> Vec<&'static str> {
    let mut versions: Vec<&str> = super::PROTOCOL_VERSIONS.to_vec();
    versions.push(MODERN_VERSION);
    versions
}

/// The `server/discover` result.
pub fn discover(server_name: &str, capabilities: Value) -> Value {
    json!({
        "supportedVersions": all_versions(),
        "capabilities": capabilities,
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": {META_SERVER_INFO: {"name": server_name, "version": env!("CARGO_PKG_VERSION")}},
    })
}

/// A reply as the revision has it: `resultType` on every result; lists and reads say they may
/// not be cached (the gateway cannot promise a listing stays fresh).
pub fn finish(method: &str, mut reply: Value) -> Value {
    if let Some(result) = reply.get_mut("result").and_then(Value::as_object_mut) {
        result
            .entry("resultType")
            .or_insert_with(|| json!("complete"));
        if method.ends_with("/list") || method == "resources/read" {
            result.entry("ttlMs").or_insert(json!(0));
            result
                .entry("cacheScope")
                .or_insert_with(|| json!("private"));
        }
    }
    reply
}

/// The syslog severities of MCP logging, least severe first.
const LEVELS: &[&str] = &[
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

fn severity(level: &str) -> Option<usize> {
    LEVELS.iter().position(|l| *l == level)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Prepare a request for an upstream session that many stateless clients share: a unique id
/// (and progress token) in place of the client's, and a sink that gives progress back under the
/// client's token, passes logs at or above `log_level` (none without one) and drops the
/// upstream's requests to the client (this revision has no channel for them). Returns the
/// message, the sink, and the client's id to put back on the answer.
pub fn isolate(
    mut message: Value,
    related: &MessageSink,
    log_level: Option<&str>,
) -> (Value, MessageSink, Value) {
    let client_id = message["id"].clone();
    let unique = json!(format!("stoa-s{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)));
    message["id"] = unique.clone();
    let client_token = message["params"]["_meta"].get("progressToken").cloned();
    if client_token.is_some() {
        message["params"]["_meta"]["progressToken"] = unique.clone();
    }
    let floor = log_level.and_then(severity);
    let related = related.clone();
    let sink: MessageSink =
        Arc::new(
            move |mut m: Value| match m.get("method").and_then(Value::as_str) {
                _ if m.get("id").is_some() => {}
                Some("notifications/progress") => {
                    if let Some(token) = &client_token {
                        if m["params"].is_object() && m["params"]["progressToken"] == unique {
                            m["params"]["progressToken"] = token.clone();
                            related(m);
                        }
                    }
                }
                Some("notifications/message") => {
                    let level = m["params"]["level"].as_str().and_then(severity);
                    if let (Some(floor), Some(level)) = (floor, level) {
                        if level >= floor {
                            related(m);
                        }
                    }
                }
                _ => {}
            },
        );
    (message, sink, client_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(method: &str, name: Option<&str>) -> RoutingHeaders {
        RoutingHeaders {
            version: MODERN_VERSION.into(),
            method: Some(method.into()),
            name: name.map(str::to_string),
        }
    }

    fn request(method: &str, params: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})
    }

    fn meta() -> Value {
        json!({META_VERSION: MODERN_VERSION, META_CAPABILITIES: {}, META_LOG_LEVEL: "info", "progressToken": 7})
    }

    #[test]
    fn envelope_rules() {
        let call = request(
            "tools/call",
            json!({"name": "héllo", "arguments": {}, "_meta": meta()}),
        );
        // The name header may come base64-wrapped.
        let wrapped = format!("=?base64?{}?=", STANDARD.encode("héllo"));
        let ok = check(call.clone(), &headers("tools/call", Some(&wrapped)))
            .unwrap()
            .unwrap();
        assert_eq!(ok.log_level.as_deref(), Some("info"));
        assert_eq!(ok.message["params"]["_meta"], json!({"progressToken": 7}));
        let (status, e) = check(call.clone(), &headers("tools/call", Some("other"))).unwrap_err();
        assert_eq!(
            (status, e["error"]["code"].as_i64()),
            (400, Some(HEADER_MISMATCH))
        );
        let (_, e) = check(call, &headers("tools/list", None)).unwrap_err();
        assert_eq!(e["error"]["code"], HEADER_MISMATCH);
        let (status, e) = check(
            request("tools/list", json!({})),
            &headers("tools/list", None),
        )
        .unwrap_err();
        assert_eq!(
            (status, e["error"]["code"].as_i64()),
            (400, Some(INVALID_PARAMS))
        );
        assert_eq!(e["id"], 7);
        let (status, e) = check(
            request("ping", json!({"_meta": meta()})),
            &headers("ping", None),
        )
        .unwrap_err();
        assert_eq!(
            (status, e["error"]["code"].as_i64()),
            (404, Some(METHOD_NOT_FOUND))
        );
        let mut future = meta();
        future[META_VERSION] = json!("2099-01-01");
        let (status, e) = check(
            request("tools/list", json!({"_meta": future})),
            &RoutingHeaders {
                version: "2099-01-01".into(),
                method: Some("tools/list".into()),
                name: None,
            },
        )
        .unwrap_err();
        assert_eq!(
            (status, e["error"]["code"].as_i64()),
            (400, Some(UNSUPPORTED_VERSION))
        );
        assert_eq!(e["error"]["data"]["requested"], "2099-01-01");
        assert_eq!(
            e["error"]["data"]["supported"].as_array().map(Vec::len),
            Some(5)
        );
        // Notifications are accepted and dropped; batches are refused.
        assert!(check(
            json!({"jsonrpc": "2.0", "method": "notifications/x"}),
            &headers("x", None)
        )
        .unwrap()
        .is_none());
        assert_eq!(check(json!([]), &headers("x", None)).unwrap_err().0, 400);
    }

    #[test]
    fn results_carry_the_revision_fields() {
        let list = finish(
            "tools/list",
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}),
        );
        assert_eq!(list["result"]["resultType"], "complete");
        assert_eq!(list["result"]["ttlMs"], 0);
        assert_eq!(list["result"]["cacheScope"], "private");
        let call = finish(
            "tools/call",
            json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}),
        );
        assert_eq!(call["result"]["resultType"], "complete");
        assert!(call["result"].get("ttlMs").is_none());
    }

    #[test]
    fn shared_sessions_keep_clients_apart() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = seen.clone();
        let related: MessageSink = Arc::new(move |m| {
            into.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(m)
        });
        let message = request(
            "tools/call",
            json!({"name": "t", "_meta": {"progressToken": 7}}),
        );
        let (sent, sink, client_id) = isolate(message, &related, Some("warning"));
        assert_eq!(client_id, 7);
        let unique = sent["id"].clone();
        assert_eq!(sent["params"]["_meta"]["progressToken"], unique);
        sink(
            json!({"method": "notifications/progress", "params": {"progressToken": unique, "progress": 1}}),
        );
        sink(
            json!({"method": "notifications/progress", "params": {"progressToken": "someone else", "progress": 1}}),
        );
        sink(json!({"method": "notifications/message", "params": {"level": "info"}}));
        sink(json!({"method": "notifications/message", "params": {"level": "error"}}));
        sink(json!({"id": 1, "method": "sampling/createMessage"}));
        let seen = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0]["params"]["progressToken"], 7);
        assert_eq!(seen[1]["params"]["level"], "error");
    }

    #[test]
    fn http_status_of_each_error() {
        for code in [
            -32700,
            INVALID_REQUEST,
            INVALID_PARAMS,
            HEADER_MISMATCH,
            -32021,
            UNSUPPORTED_VERSION,
        ] {
            assert_eq!(status_of(code), 400, "{code}");
        }
        assert_eq!(status_of(METHOD_NOT_FOUND), 404);
        // Errors of the call itself (a refusal, a cancellation, an upstream's) are 200.
        for code in [-32603, -32003, -32004, -32800, -32002, 1] {
            assert_eq!(status_of(code), 200, "{code}");
        }
    }

    #[test]
    fn header_values_may_be_base64_wrapped() {
        assert_eq!(header_text("plain"), "plain");
        let wrapped = format!("=?base64?{}?=", STANDARD.encode("café ☕"));
        assert_eq!(header_text(&wrapped), "café ☕");
        // Not base64, or not UTF-8 inside: the value as it came.
        assert_eq!(header_text("=?base64?***?="), "=?base64?***?=");
        let latin1 = format!("=?base64?{}?=", STANDARD.encode([0xe9u8]));
        assert_eq!(header_text(&latin1), latin1);
        assert_eq!(header_text("=?base64?aGk="), "=?base64?aGk=");
    }

    #[test]
    fn discover_lists_every_version() {
        let d = discover("gw", json!({"tools": {}}));
        assert_eq!(
            d["supportedVersions"],
            json!([
                "2024-11-05",
                "2025-03-26",
                "2025-06-18",
                "2025-11-25",
                MODERN_VERSION
            ])
        );
        assert_eq!(d["capabilities"], json!({"tools": {}}));
        assert_eq!(d["resultType"], "complete");
        assert_eq!(d["_meta"][META_SERVER_INFO]["name"], "gw");
    }

    #[test]
    fn finish_leaves_errors_and_set_fields_alone() {
        let e = json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "x"}});
        assert_eq!(finish("tools/list", e.clone()), e);
        let read = finish(
            "resources/read",
            json!({"id": 1, "result": {"contents": [], "ttlMs": 5000, "cacheScope": "public"}}),
        );
        assert_eq!(read["result"]["ttlMs"], 5000);
        assert_eq!(read["result"]["cacheScope"], "public");
        assert_eq!(read["result"]["resultType"], "complete");
    }

    #[test]
    fn requests_without_a_token_or_level_hear_nothing() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = seen.clone();
        let related: MessageSink = Arc::new(move |m| {
            into.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(m)
        });
        let (first, sink, client_id) =
            isolate(request("tools/call", json!({"name": "t"})), &related, None);
        let (second, _, _) = isolate(request("tools/call", json!({"name": "t"})), &related, None);
        assert_eq!(client_id, 7);
        // Two clients' id 7 become two different ids upstream.
        assert_ne!(first["id"], second["id"]);
        assert!(first["params"].get("_meta").is_none());
        let unique = first["id"].clone();
        sink(json!({"method": "notifications/progress", "params": {"progressToken": unique}}));
        sink(json!({"method": "notifications/message", "params": {"level": "emergency"}}));
        assert!(seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty());
    }
}
