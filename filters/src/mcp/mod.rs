//! `mcp` filter: terminates the Model Context Protocol for AI agents and serves the tools of its
//! registry. Streamable HTTP at one path (`/mcp`): POST carries JSON-RPC messages (answered as
//! `application/json`; notifications and responses get 202), GET opens the server's SSE stream
//! (see `streams`), DELETE ends a session; the 2024-11-05 HTTP+SSE transport at `/sse` +
//! `/messages`. Sessions are sealed into `Mcp-Session-Id` (see `session`), versions 2024-11-05
//! to 2025-11-25 are negotiated by `initialize`, `Origin` is checked against DNS rebinding, and
//! bad input gets the JSON-RPC error object with the right id. Per tool: policy, rate limits,
//! a result cache, cancellation.

pub mod federation;
pub mod jsonrpc;
pub mod stateless;
pub mod session;
pub mod streams;
pub mod tool_resources;
pub mod tools;
pub mod upstream;
mod websocket;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use bytes::Bytes;
use once_cell::sync::Lazy;
use pingora_core::Result;
use pingora_proxy::Session;
use regorus::Value as Rego;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tracing::warn;

use crate::context::RequestCtx;
use crate::filter::{phase, Filter, FilterAction, LocalResponse, LocalStream};
use crate::metrics::FILTER_METRICS;
use crate::opa::{self, Opa, OpaConfig};
use crate::rate_limit::{RateLimit, RateLimitConfig};
use crate::units::{ByteSize, HumanDuration};
use federation::{ClientRef, Federation, UpstreamConfig};
use jsonrpc::{
    Incoming, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR,
};
use stateless::MODERN_VERSION;
use session::{SessionError, SessionSealer};
use tools::{ToolConfig, ToolRegistry};
use upstream::MessageSink;

/// Protocol versions negotiated by `initialize`, oldest first.
pub const PROTOCOL_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The session secret's environment variable (shared by all replicas).
pub const SESSION_SECRET_ENV: &str = "STOA_MCP_SESSION_SECRET";
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// The endpoint path.
    #[serde(default = "default_path")]
    pub path: String,
    /// `serverInfo.name` in `initialize`.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Extra `Origin`s allowed besides localhost ones (`http://localhost:*`, `http://127.0.0.1:*`,
    /// `http://[::1]:*`); `"*"` allows any. Requests without `Origin` are not browsers and pass.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// HMAC key sealing session ids; replicas must share it. Default: `STOA_MCP_SESSION_SECRET`,
    /// else a random key per process (sessions then end with the process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_secret: Option<String>,
    /// How long a session lives after `initialize`.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: HumanDuration,
    /// The largest POST body accepted (413 above).
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// The most messages one JSON-RPC batch may carry (2025-03-26 only; 400 above). Each
    /// request of a batch counts against `rate_limit` filters earlier in the chain.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Also serve the 2024-11-05 HTTP+SSE transport: `GET sse_path` opens the stream, whose
    /// first event names `messages_path?session_id=…` for the client's POSTs.
    #[serde(default = "yes")]
    pub legacy_sse: bool,
    #[serde(default = "default_sse_path")]
    pub sse_path: String,
    #[serde(default = "default_messages_path")]
    pub messages_path: String,
    /// Also serve MCP over WebSocket at `ws_path` (subprotocol `mcp`, one message per frame).
    #[serde(default = "yes")]
    pub websocket: bool,
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
    /// Offer the server's SSE stream on GET (`false`: GET is 405).
    #[serde(default = "yes")]
    pub get_stream: bool,
    /// Interval of the keep-alive comments on open SSE streams.
    #[serde(default = "default_keepalive")]
    pub sse_keepalive: HumanDuration,
    /// Tools per `tools/list` page.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    #[serde(default)]
    pub tools: Vec<ToolConfig>,
    /// A directory of `kind: Tool` resources (`apiVersion: gostoa.dev/v1alpha1`), read at every
    /// config load and reload, added after `tools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools_dir: Option<String>,
    /// Reuse results of tools annotated `idempotentHint: true` for `ttl`, keyed by tool,
    /// canonical arguments and the caller's tenant (only successful results are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_cache: Option<ResultCacheConfig>,
    /// Limits per caller (its tenant, else its client IP) and tool: the `rate_limit` filter's
    /// settings without `key` (local or, with `redis`, cluster-wide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_rate_limit: Option<RateLimitConfig>,
    /// Per-tool authorization: the `opa` filter's settings (embedded policy or external OPA).
    /// The input is the `opa` filter's document plus `mcp: {method, tool, arguments}`; a tool
    /// the caller may not call is left out of `tools/list` and refused on `tools/call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<OpaConfig>,
    /// Upstream MCP servers federated into this one (see `federation`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamConfig>,
}

fn default_path() -> String {
    "/mcp".into()
}
fn default_server_name() -> String {
    "stoa-gateway".into()
}
fn default_session_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_max_batch() -> usize {
    32
}
fn default_page_size() -> usize {
    100
}
fn yes() -> bool {
    true
}
fn default_sse_path() -> String {
    "/sse".into()
}
fn default_messages_path() -> String {
    "/messages".into()
}
fn default_ws_path() -> String {
    "/ws".into()
}
/// The legacy HTTP+SSE transport speaks this version only.
const LEGACY_VERSION: &str = "2024-11-05";
fn default_keepalive() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

/// The tool list each path last served, to tell sessions when a reload changed it.
static SERVED_TOOLS: Lazy<std::sync::Mutex<std::collections::HashMap<String, String>>> =
    Lazy::new(Default::default);

/// The process's own session key, when none is configured: the same across reloads.
static PROCESS_SECRET: Lazy<Vec<u8>> = Lazy::new(|| {
    warn!(
        "mcp: no session_secret and no {SESSION_SECRET_ENV}: sessions are sealed with a random key \
         and end when this process does (set one shared secret for restarts and replicas)"
    );
    let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    key
});

/// The `mcp` filter (its state is shared with the tasks that answer on SSE streams).
pub struct Mcp(Arc<McpCore>);

struct McpCore {
    path: String,
    server_name: String,
    allowed_origins: Vec<String>,
    sealer: SessionSealer,
    max_body: u64,
    max_batch: usize,
    page_size: usize,
    registry: ToolRegistry,
    policy: Option<Opa>,
    client: reqwest::Client,
    results: Option<moka::sync::Cache<String, Value>>,
    get_stream: bool,
    sse_keepalive: Duration,
    /// `(sse_path, messages_path)` when the legacy transport is on.
    legacy: Option<(String, String)>,
    /// The WebSocket endpoint, when on.
    ws_path: Option<String>,
    tool_limits: Option<RateLimit>,
    in_flight: InFlight,
    federation: Option<Arc<Federation>>,
    /// Where sessions of each transport hear the server (for change notifications).
    stream_paths: Vec<String>,
}

/// The stream paths of a config's transports: Streamable HTTP's, the legacy one's, WebSocket's.
fn stream_paths(cfg: &McpConfig) -> Vec<String> {
    let mut paths = vec![cfg.path.clone()];
    if cfg.legacy_sse {
        paths.push(cfg.sse_path.clone());
    }
    if cfg.websocket {
        paths.push(cfg.ws_path.clone());
    }
    paths
}

/// A refusal by the per-tool policy (a server-defined JSON-RPC error code).
pub const FORBIDDEN: i64 = -32003;
/// `resources/read` of a URI no upstream serves (the MCP spec's code).
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// The answer to a request the client cancelled (`notifications/cancelled`; LSP's code).
pub const REQUEST_CANCELLED: i64 = -32800;
/// A call refused by `tool_rate_limit` (a server-defined JSON-RPC error code).
pub const RATE_LIMITED: i64 = -32004;

/// Who is asking, for one POST: the session, its protocol version, the policy input of the
/// HTTP request (without its `mcp` part) and the caller's tenant.
#[derive(Clone)]
struct Caller {
    session_id: String,
    version: String,
    base: Option<Rego>,
    tenant: String,
    /// Who the per-tool limits count: the tenant, else the client IP.
    rate_key: String,
    /// The HTTP request's id, for logs.
    request_id: String,
    /// The client's `initialize` capabilities (offered to federated upstreams).
    capabilities: Value,
    /// Where messages unrelated to a request reach this client (its transport's stream path).
    stream_path: String,
    /// A request of the stateless revision (no session), and the log level it asked for.
    stateless: bool,
    log_level: Option<String>,
}

impl Caller {
    fn client(&self) -> ClientRef {
        if self.stateless {
            // Stateless clients share one upstream session per upstream, which offers no
            // client capabilities (there is no channel to ask them anything).
            return ClientRef {
                session_id: "\u{0}stateless".into(),
                version: PROTOCOL_VERSIONS[PROTOCOL_VERSIONS.len() - 1].into(),
                capabilities: json!({}),
                stream_path: self.stream_path.clone(),
            };
        }
        ClientRef {
            session_id: self.session_id.clone(),
            version: self.version.clone(),
            capabilities: self.capabilities.clone(),
            stream_path: self.stream_path.clone(),
        }
    }
}

/// Calls in flight, by session and JSON-RPC id, so `notifications/cancelled` can abort them
/// (and tell the federated upstream serving one, by its index).
type InFlight = std::sync::Mutex<
    std::collections::HashMap<(String, String), (futures::future::AbortHandle, Option<usize>)>,
>;

/// The most a client's `initialize` capabilities may weigh (serialized), since they are kept
/// for the session (sealed into its id, or in `UNSEALED_CAPABILITIES`): 16 KiB.
pub const MAX_CLIENT_CAPABILITIES: usize = 16 * 1024;

/// Client capabilities of sessions that could not seal them (the legacy transport's session
/// exists before its `initialize`); that transport's sessions live in one process anyway.
/// Bounded by bytes (64 MiB, each entry weighed as its serialized size), not only entries.
static UNSEALED_CAPABILITIES: Lazy<moka::sync::Cache<String, Value>> = Lazy::new(|| {
    moka::sync::Cache::builder()
        .weigher(|k: &String, v: &Value| {
            let bytes = k.len() + serde_json::to_vec(v).map_or(0, |b| b.len()) + 64;
            u32::try_from(bytes).unwrap_or(u32::MAX)
        })
        .max_capacity(64 << 20)
        .time_to_idle(Duration::from_secs(24 * 3600))
        .build()
});

/// A fixed-size key for a client-chosen session id, so a store of ids costs 32 bytes each
/// however long the ids are.
pub(crate) fn session_key(session_id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(session_id.as_bytes()).into()
}

/// Sessions seen recently by this process, for the `mcp_active_sessions` gauge (at most a
/// million, 32-byte keys).
static ACTIVE_SESSIONS: Lazy<moka::sync::Cache<[u8; 32], ()>> = Lazy::new(|| {
    let cache = moka::sync::Cache::builder()
        .max_capacity(1_000_000)
        .time_to_idle(Duration::from_secs(300))
        .build();
    let counted = cache.clone();
    crate::background::handle().spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            counted.run_pending_tasks();
            FILTER_METRICS
                .mcp_active_sessions
                .set(counted.entry_count() as i64);
        }
    });
    cache
});

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResultCacheConfig {
    /// How long a result is reused.
    pub ttl: HumanDuration,
    #[serde(default = "default_cache_entries")]
    pub max_entries: u64,
    /// Bytes of keys (arguments) and results kept at most, whatever the entry count.
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: ByteSize,
}

fn default_cache_entries() -> u64 {
    10_000
}
fn default_cache_bytes() -> ByteSize {
    ByteSize(64 << 20)
}

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

/// A reply to one POST: status, JSON body (none for 202) and headers.
struct Reply {
    status: u16,
    body: Option<Value>,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }
    fn accepted() -> Self {
        Reply {
            status: 202,
            body: None,
            headers: Vec::new(),
        }
    }
    fn into_local(self) -> LocalResponse {
        let mut resp = LocalResponse::new(self.status);
        resp.headers = self.headers;
        if let Some(body) = self.body {
            resp.headers
                .push(("content-type".into(), "application/json".into()));
            resp.body = Bytes::from(body.to_string());
        }
        resp
    }
}

/// A protocol error answered with an HTTP status and a JSON-RPC error without id.
fn http_error(status: u16, code: i64, message: &str) -> Reply {
    Reply::json(status, jsonrpc::error(Value::Null, code, message))
}

fn is_local_origin(origin: &str) -> bool {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let Some(rest) = rest else { return false };
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().map(|h| format!("[{h}]")),
        None => rest.split(':').next().map(str::to_string),
    };
    matches!(host.as_deref(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

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

impl Mcp {
    pub fn build(cfg: &McpConfig) -> std::result::Result<Self, String> {
        McpCore::build(cfg).map(|core| Mcp(Arc::new(core)))
    }
}

impl McpCore {
    fn build(cfg: &McpConfig) -> std::result::Result<Self, String> {
        if !cfg.path.starts_with('/') {
            return Err("path: must start with `/`".into());
        }
        if cfg.legacy_sse {
            for (key, p) in [
                ("sse_path", &cfg.sse_path),
                ("messages_path", &cfg.messages_path),
            ] {
                if !p.starts_with('/') || *p == cfg.path {
                    return Err(format!("{key}: must start with `/` and differ from `path`"));
                }
            }
        }
        if cfg.websocket {
            let taken = [&cfg.path, &cfg.sse_path, &cfg.messages_path];
            if !cfg.ws_path.starts_with('/') || taken.contains(&&cfg.ws_path) {
                return Err("ws_path: must start with `/` and differ from the other paths".into());
            }
        }
        if cfg.sse_keepalive.0.is_zero() {
            return Err("sse_keepalive: must be more than 0".into());
        }
        if cfg.page_size == 0 {
            return Err("page_size: must be at least 1".into());
        }
        if cfg.session_ttl.0 > Duration::from_secs(30 * 24 * 3600) {
            return Err("session_ttl: at most 30 days".into());
        }
        let mut tools = cfg.tools.clone();
        if let Some(dir) = &cfg.tools_dir {
            tools.extend(
                tool_resources::load_dir(std::path::Path::new(dir))
                    .map_err(|e| format!("tools_dir: {e}"))?,
            );
        }
        let registry = ToolRegistry::build(&tools)?;
        let tool_limits = match &cfg.tool_rate_limit {
            Some(rl) if rl.key != "{{ client_ip }}" => {
                return Err("tool_rate_limit.key: not used: these limits count per caller (tenant, else client IP) and tool".into())
            }
            Some(rl) => Some(RateLimit::build(rl).map_err(|e| format!("tool_rate_limit.{e}"))?),
            None => None,
        };
        let policy = match &cfg.policy {
            Some(p) => Some(Opa::build(p).map_err(|e| format!("policy: {e}"))?),
            None => None,
        };
        let secret = match &cfg.session_secret {
            Some(s) if s.len() < 16 => {
                return Err("session_secret: use at least 16 characters".into())
            }
            Some(s) => s.as_bytes().to_vec(),
            None => match std::env::var(SESSION_SECRET_ENV) {
                Ok(s) if s.len() >= 16 => s.into_bytes(),
                Ok(_) => return Err(format!("{SESSION_SECRET_ENV}: use at least 16 characters")),
                Err(_) => PROCESS_SECRET.clone(),
            },
        };
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let federation = if cfg.upstreams.is_empty() {
            None
        } else {
            Some(Federation::build(
                &cfg.upstreams,
                stream_paths(cfg),
                cfg.session_ttl.0,
            )?)
        };
        Ok(McpCore {
            federation,
            path: cfg.path.clone(),
            server_name: cfg.server_name.clone(),
            allowed_origins: cfg.allowed_origins.clone(),
            sealer: SessionSealer::new(&secret, cfg.session_ttl.0),
            max_body: cfg.max_body.0,
            max_batch: cfg.max_batch,
            page_size: cfg.page_size,
            registry,
            policy,
            client,
            results: cfg.result_cache.as_ref().map(|c| {
                // Weighed in bytes, each entry at least `max_bytes / max_entries`: both bounds
                // hold (the arguments in a key are the client's).
                let floor = (c.max_bytes.0 / c.max_entries.max(1)).max(1);
                moka::sync::Cache::builder()
                    .weigher(move |k: &String, v: &Value| {
                        let bytes = (k.len() + serde_json::to_vec(v).map_or(0, |b| b.len())) as u64;
                        u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
                    })
                    .max_capacity(c.max_bytes.0)
                    .time_to_live(c.ttl.0)
                    .build()
            }),
            in_flight: InFlight::default(),
            get_stream: cfg.get_stream,
            legacy: cfg
                .legacy_sse
                .then(|| (cfg.sse_path.clone(), cfg.messages_path.clone())),
            sse_keepalive: cfg.sse_keepalive.0,
            ws_path: cfg.websocket.then(|| cfg.ws_path.clone()),
            stream_paths: stream_paths(cfg),
            tool_limits,
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        is_local_origin(origin)
            || self
                .allowed_origins
                .iter()
                .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }

    /// Read the whole body as JSON; the refusal when it exceeds `max_body` (413) or is not
    /// JSON (-32700).
    async fn read_message(
        &self,
        session: &mut Session,
    ) -> Result<std::result::Result<Value, Reply>> {
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if (body.len() + chunk.len()) as u64 > self.max_body {
                return Ok(Err(http_error(
                    413,
                    INVALID_REQUEST,
                    &format!("the request body exceeds {} bytes", self.max_body),
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(serde_json::from_slice(&body)
            .map_err(|e| http_error(400, PARSE_ERROR, &format!("parse error: {e}"))))
    }

    async fn post(self: &Arc<Self>, session: &mut Session, ctx: &RequestCtx) -> Result<Answer> {
        let req = session.req_header();
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let accept = header("accept").map(|a| a.to_ascii_lowercase());
        if let Some(a) = &accept {
            if !(a.contains("application/json") || a.contains("*/*") || a.contains("application/*"))
            {
                return Ok(Answer::Reply(http_error(
                    406,
                    INVALID_REQUEST,
                    "Accept must include application/json",
                )));
            }
        }
        let accepts_stream = accept.is_some_and(|a| a.contains("text/event-stream"));
        if let Some(ct) = header("content-type") {
            if !ct.to_ascii_lowercase().starts_with("application/json") {
                return Ok(Answer::Reply(http_error(
                    415,
                    INVALID_REQUEST,
                    "Content-Type must be application/json",
                )));
            }
        }
        let session_id = header(SESSION_HEADER);
        let version_header = header(VERSION_HEADER);
        if let Some(v) = version_header
            .as_ref()
            .filter(|v| !PROTOCOL_VERSIONS.contains(&v.as_str()))
        {
            // Not a handshake revision: the stateless one (or a version nobody speaks).
            let routing = stateless::RoutingHeaders {
                version: v.clone(),
                method: header("mcp-method"),
                name: header("mcp-name"),
            };
            return self
                .post_stateless(session, ctx, routing, accepts_stream)
                .await;
        }
        let message = match self.read_message(session).await? {
            Ok(m) => m,
            Err(refusal) => return Ok(Answer::Reply(refusal)),
        };
        // `initialize` opens a session; everything else needs one.
        let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        if is_initialize {
            return Ok(Answer::Reply(self.handle_initialize(&message, None)));
        }
        let Some(id) = session_id else {
            return Ok(Answer::Reply(http_error(
                400,
                INVALID_REQUEST,
                "missing Mcp-Session-Id header (initialize first)",
            )));
        };
        let state = match self.sealer.open(&id) {
            Ok(s) => s,
            Err(e) => {
                let why = match e {
                    SessionError::Unknown => "unknown session",
                    SessionError::Expired => "session expired",
                    SessionError::Terminated => "session terminated",
                };
                return Ok(Answer::Reply(http_error(
                    404,
                    INVALID_REQUEST,
                    &format!("{why}: initialize a new one"),
                )));
            }
        };
        if let Some(v) = &version_header {
            if *v != state.protocol_version {
                return Ok(Answer::Reply(http_error(
                    400,
                    INVALID_REQUEST,
                    &format!(
                        "MCP-Protocol-Version `{v}` is not this session's `{}`",
                        state.protocol_version
                    ),
                )));
            }
        }
        let caller = self.caller(
            ctx,
            session.req_header(),
            id,
            state.protocol_version,
            state.client_capabilities,
            &self.path,
        );
        let version = caller.version.as_str();
        match message {
            Value::Array(batch) => {
                if version != "2025-03-26" {
                    return Ok(Answer::Reply(Reply::json(
                        400,
                        jsonrpc::error(
                            Value::Null,
                            INVALID_REQUEST,
                            &format!("JSON-RPC batches are not part of protocol version {version}"),
                        ),
                    )));
                }
                if batch.is_empty() {
                    return Ok(Answer::Reply(Reply::json(
                        400,
                        jsonrpc::error(Value::Null, INVALID_REQUEST, "empty batch"),
                    )));
                }
                if batch.len() > self.max_batch {
                    return Ok(Answer::Reply(Reply::json(
                        400,
                        jsonrpc::error(
                            Value::Null,
                            INVALID_REQUEST,
                            &format!(
                                "a batch of {} messages is more than max_batch ({})",
                                batch.len(),
                                self.max_batch
                            ),
                        ),
                    )));
                }
                // The HTTP request was counted once; every further request in it counts too.
                let requests = batch
                    .iter()
                    .filter(|m| m.get("method").is_some() && m.get("id").is_some())
                    .count();
                if !crate::rate_limit::charge_extra(ctx, requests.saturating_sub(1)).await {
                    return Ok(Answer::Reply(Reply::json(
                        429,
                        jsonrpc::error(
                            Value::Null,
                            RATE_LIMITED,
                            "rate limit exceeded: each request of a batch counts",
                        ),
                    )));
                }
                let related = self.stream_sink(&caller);
                let mut replies = Vec::new();
                for m in &batch {
                    if let Some(r) = self.handle_message(m, &caller, &related).await {
                        replies.push(r);
                    }
                }
                Ok(Answer::Reply(if replies.is_empty() {
                    Reply::accepted()
                } else {
                    Reply::json(200, Value::Array(replies))
                }))
            }
            // A request relayed to an upstream may bring messages before its answer (progress,
            // logging, sampling…): answer it as an SSE stream that carries them, then it.
            single if accepts_stream && self.relays(&single) => {
                Ok(self.answer_as_stream(single, caller, |reply| reply))
            }
            single => {
                let related = self.stream_sink(&caller);
                Ok(Answer::Reply(
                    match self.handle_message(&single, &caller, &related).await {
                        Some(reply) => Reply::json(200, reply),
                        None => Reply::accepted(),
                    },
                ))
            }
        }
    }

    /// Answer one request as an SSE stream: the messages related to it, then its reply (as
    /// `finish` makes it). A client that closes the stream cancels the request.
    fn answer_as_stream(
        self: &Arc<Self>,
        message: Value,
        caller: Caller,
        finish: impl FnOnce(Value) -> Value + Send + 'static,
    ) -> Answer {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let events = tx.clone();
        let related: MessageSink = Arc::new(move |m: Value| {
            let _ = events.try_send(sse_data(&m));
        });
        let core = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                reply = core.handle_message(&message, &caller, &related) => {
                    if let Some(reply) = reply {
                        let _ = tx.send(sse_data(&finish(reply))).await;
                    }
                }
                _ = tx.closed() => {}
            }
        });
        Answer::Stream(rx)
    }

    /// A POST of the stateless 2026-07-28 revision (see `stateless`).
    async fn post_stateless(
        self: &Arc<Self>,
        session: &mut Session,
        ctx: &RequestCtx,
        routing: stateless::RoutingHeaders,
        accepts_stream: bool,
    ) -> Result<Answer> {
        let message = match self.read_message(session).await? {
            Ok(m) => m,
            Err(refusal) => return Ok(Answer::Reply(refusal)),
        };
        let request = match stateless::check(message, &routing) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Answer::Reply(Reply::accepted())),
            Err((status, body)) => {
                self.count("other", "", "error");
                return Ok(Answer::Reply(Reply::json(status, body)));
            }
        };
        let method = request.method.clone();
        if method == "server/discover" {
            self.count("server/discover", "", "ok");
            let result = stateless::discover(&self.server_name, self.capabilities(true));
            return Ok(Answer::Reply(Reply::json(
                200,
                jsonrpc::result(request.id, result),
            )));
        }
        let mut caller = self.caller(
            ctx,
            session.req_header(),
            String::new(),
            MODERN_VERSION.into(),
            json!({}),
            &self.path,
        );
        caller.stateless = true;
        caller.log_level = request.log_level;
        if accepts_stream && self.relays(&request.message) {
            let finish = move |reply| stateless::finish(&method, reply);
            return Ok(self.answer_as_stream(request.message, caller, finish));
        }
        // Without a stream, what the upstream says meanwhile has nowhere to go.
        let nowhere: MessageSink = Arc::new(|_| {});
        let reply = self
            .handle_message(&request.message, &caller, &nowhere)
            .await
            .unwrap_or_else(|| jsonrpc::error(request.id, INTERNAL_ERROR, "no reply"));
        let reply = stateless::finish(&method, reply);
        let status = reply["error"]["code"]
            .as_i64()
            .map(stateless::status_of)
            .unwrap_or(200);
        Ok(Answer::Reply(Reply::json(status, reply)))
    }

    /// The server's capabilities: tools, and with upstreams prompts, resources, completions
    /// and logging; change notifications and subscriptions only where a session can hear them.
    fn capabilities(&self, stateless: bool) -> Value {
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

    /// The sink of related messages when the answer is not a stream: the client's server stream.
    fn stream_sink(&self, caller: &Caller) -> MessageSink {
        let (path, session) = (caller.stream_path.clone(), caller.session_id.clone());
        Arc::new(move |m: Value| streams::HUB.publish(&path, &session, &m))
    }

    /// Whether a message is a request relayed to a federated upstream.
    fn relays(&self, message: &Value) -> bool {
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

    /// `initialize`: negotiate the version and open the session (`legacy`: the legacy
    /// transport's session, which exists already).
    fn handle_initialize(&self, message: &Value, legacy: Option<&str>) -> Reply {
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
                    UNSEALED_CAPABILITIES.insert(session.to_string(), caps);
                }
            }
            None => reply.headers.push((
                SESSION_HEADER.into(),
                self.sealer.seal(version, client_capabilities.as_ref()),
            )),
        }
        reply
    }

    /// Legacy transport, `GET sse_path`: a new session and its stream, whose first event is
    /// the `endpoint` to POST messages to.
    fn legacy_open(&self, sse_path: &str, messages_path: &str) -> FilterAction {
        let id = self.sealer.seal(LEGACY_VERSION, None);
        let first = Bytes::from(format!(
            "event: endpoint\ndata: {messages_path}?session_id={id}\n\n"
        ));
        sse_answer(streams::HUB.open_with(sse_path, &id, None, self.sse_keepalive, first))
    }

    /// Legacy transport, `POST messages_path?session_id=…`: the message is handled here and
    /// its answer sent as an event on the session's stream; the POST itself gets 202.
    async fn legacy_post(
        self: &Arc<Self>,
        session: &mut Session,
        ctx: &RequestCtx,
        sse_path: &str,
    ) -> Result<Reply> {
        let req = session.req_header();
        let id = form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "session_id")
            .map(|(_, v)| v.into_owned());
        let Some(id) = id else {
            return Ok(http_error(400, INVALID_REQUEST, "missing session_id"));
        };
        if self.sealer.open(&id).is_err() {
            return Ok(http_error(404, INVALID_REQUEST, "unknown session"));
        }
        let capabilities = UNSEALED_CAPABILITIES.get(&id).unwrap_or(Value::Null);
        let caller = self.caller(
            ctx,
            req,
            id,
            LEGACY_VERSION.to_string(),
            capabilities,
            sse_path,
        );
        let mut message = match self.read_message(session).await? {
            Ok(m) => m,
            Err(refusal) => return Ok(refusal),
        };
        let reply = if message.get("method").and_then(Value::as_str) == Some("initialize") {
            // This transport speaks its own version, whatever the client asked.
            if let Some(p) = message.get_mut("params").and_then(Value::as_object_mut) {
                p.insert("protocolVersion".into(), json!(LEGACY_VERSION));
            }
            self.handle_initialize(&message, Some(&caller.session_id))
                .body
        } else if message.is_array() {
            Some(jsonrpc::error(
                Value::Null,
                INVALID_REQUEST,
                "JSON-RPC batches are not part of protocol version 2024-11-05",
            ))
        } else {
            // Answered on the stream, so the POST is accepted at once: the client's next POSTs
            // (its answer to a sampling request the call needs, say) are not held up behind it.
            let core = self.clone();
            tokio::spawn(async move {
                let related = core.stream_sink(&caller);
                if let Some(reply) = core.handle_message(&message, &caller, &related).await {
                    related(reply);
                }
            });
            return Ok(Reply::accepted());
        };
        if let Some(reply) = reply {
            streams::HUB.publish(sse_path, &caller.session_id, &reply);
        }
        Ok(Reply::accepted())
    }

    /// Who is calling, for one request of a session.
    fn caller(
        &self,
        ctx: &RequestCtx,
        req: &pingora_http::RequestHeader,
        session_id: String,
        version: String,
        capabilities: Value,
        stream_path: &str,
    ) -> Caller {
        // A read refreshes a known session's idle time; only a new one costs a write.
        if !session_id.is_empty() {
            let key = session_key(&session_id);
            if ACTIVE_SESSIONS.get(&key).is_none() {
                ACTIVE_SESSIONS.insert(key, ());
            }
        }
        let base = self.policy.is_some().then(|| opa::input_document(req, ctx));
        let tenant = ctx
            .identity
            .as_ref()
            .and_then(|i| i.tenant.clone())
            .unwrap_or_default();
        let rate_key = if tenant.is_empty() {
            ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default()
        } else {
            tenant.clone()
        };
        Caller {
            session_id,
            version,
            base,
            tenant,
            rate_key,
            request_id: ctx.request_id.clone(),
            capabilities,
            stream_path: stream_path.to_string(),
            stateless: false,
            log_level: None,
        }
    }

    fn count(&self, method: &str, tool: &str, status: &str) {
        FILTER_METRICS
            .mcp_requests
            .with_label_values(&[method_label(method), tool, status])
            .inc();
    }

    /// Handle one message of an open session: the JSON-RPC reply, or `None` (notification,
    /// response). Messages an upstream sends about a relayed request go to `related`.
    async fn handle_message(
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
        let federated = self.federation.is_some();
        let outcome = match method.as_str() {
            "ping" => Ok(json!({})),
            "initialize" => Err((INVALID_REQUEST, "initialize cannot be batched".to_string())),
            "tools/list" => self.list_tools(&params, caller).await,
            "tools/call" => {
                return Some(self.call_tool(id, message, &params, caller, related).await)
            }
            "prompts/list" | "resources/list" | "resources/templates/list" if federated => {
                let key = match method.as_str() {
                    "prompts/list" => "prompts",
                    "resources/list" => "resources",
                    _ => "resourceTemplates",
                };
                let items = self.federation().list(key);
                self.paginate(items, &params, key)
            }
            "prompts/get"
            | "resources/read"
            | "resources/subscribe"
            | "resources/unsubscribe"
            | "completion/complete"
                if federated =>
            {
                return Some(
                    self.relay_request(message, &method, &params, id, caller, related)
                        .await,
                );
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
        Some(match outcome {
            Ok(result) => {
                self.count(&method, "", "ok");
                jsonrpc::result(id, result)
            }
            Err((code, message)) => {
                self.count(&method, "", "error");
                jsonrpc::error(id, code, &message)
            }
        })
    }

    fn federation(&self) -> &Arc<Federation> {
        self.federation
            .as_ref()
            .expect("only called when federating")
    }

    /// A prompt, resource or completion request: to the upstream that owns the name, URI or
    /// reference, as that upstream names it.
    async fn relay_request(
        &self,
        message: &Value,
        method: &str,
        params: &Value,
        id: Value,
        caller: &Caller,
        related: &MessageSink,
    ) -> Value {
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
        let answer = self.relay(index, caller, forwarded, related).await;
        let status = if answer.get("error").is_some() {
            "error"
        } else {
            "ok"
        };
        self.count(method, "", status);
        answer
    }

    /// Relay a request to upstream `index` and wait for its answer; the client can cancel it.
    async fn relay(
        &self,
        index: usize,
        caller: &Caller,
        message: Value,
        related: &MessageSink,
    ) -> Value {
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
        match self.cancellable(caller, &id, Some(index), forwarding).await {
            Some(mut answer) => {
                answer["id"] = client_id;
                answer
            }
            None => jsonrpc::error(
                client_id,
                REQUEST_CANCELLED,
                "request cancelled by the client",
            ),
        }
    }

    /// Run `work` for the request `id` of this session so that `notifications/cancelled` can
    /// abort it (`None` then); it runs within the HTTP request, so a client that goes away
    /// drops it too, closing any backend or upstream request it had open.
    async fn cancellable<T>(
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

    /// Whether the policy lets this request call `tool` (always, without a policy).
    async fn authorize(
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
        policy.authorize(input, &caller.request_id).await
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

    /// Abort the call in flight for `request_id` in this session (and its backend request),
    /// and pass the cancellation on to the upstream serving it.
    fn cancel(&self, caller: &Caller, request_id: Option<&Value>, notification: &Value) {
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

    async fn call_tool(
        &self,
        id: Value,
        message: &Value,
        params: &Value,
        caller: &Caller,
        related: &MessageSink,
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
            FILTER_METRICS
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
            (Some(tool), _) => match self.call_local(&tool, arguments, &id, caller).await {
                Ok(result) => result,
                Err(error) => return error,
            },
            (None, Some((index, original, _))) => {
                // The upstream's answer goes back as it is (with fields we do not know).
                let mut forwarded = message.clone();
                forwarded["params"]["name"] = json!(original);
                let answer = self.relay(index, caller, forwarded, related).await;
                FILTER_METRICS
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
        FILTER_METRICS
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
    ) -> std::result::Result<Value, Value> {
        let name = tool.name.as_str();
        let call = tool.call(&self.client, &arguments);
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

/// A tool result as this protocol version has it: `structuredContent` from 2025-06-18 on.
fn for_version(mut result: Value, version: &str) -> Value {
    if version < "2025-06-18" {
        if let Some(o) = result.as_object_mut() {
            o.remove("structuredContent");
        }
    }
    result
}

/// An SSE stream as the answer (either transport).
fn sse_answer(body: tokio::sync::mpsc::Receiver<Bytes>) -> FilterAction {
    FilterAction::Stream(LocalStream {
        status: 200,
        headers: vec![
            ("content-type".into(), "text/event-stream".into()),
            ("cache-control".into(), "no-cache".into()),
            ("x-accel-buffering".into(), "no".into()),
        ],
        body,
    })
}

/// One message as an SSE event (of a POST's answer stream).
fn sse_data(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

/// What a POST gets: one reply, or an SSE stream of related messages and then the reply.
enum Answer {
    Reply(Reply),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

#[async_trait]
impl Filter for Mcp {
    fn name(&self) -> &'static str {
        "mcp"
    }

    fn phases(&self) -> u8 {
        phase::REQUEST
    }

    fn activate(&self) {
        self.0.activate()
    }

    fn not_ready(&self) -> Option<String> {
        self.0.federation.as_ref().and_then(|f| f.not_ready())
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        self.0.on_request(session, ctx).await
    }
}

impl McpCore {
    /// Now serving: start fetching upstream catalogs; if a reload changed the tools this path
    /// serves, tell every open stream.
    fn activate(&self) {
        if let Some(fed) = &self.federation {
            fed.start();
        }
        let tools: Vec<&Value> = self.registry.tools.iter().map(|t| &t.descriptor).collect();
        let listing = serde_json::to_string(&tools).unwrap_or_default();
        let previous = SERVED_TOOLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.path.clone(), listing.clone());
        if previous.is_some_and(|p| p != listing) {
            let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
            for path in &self.stream_paths {
                streams::HUB.broadcast(path, &note);
            }
        }
    }

    async fn on_request(
        self: &Arc<Self>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let req = session.req_header();
        let path = req.uri.path();
        let legacy = self.legacy.as_ref().and_then(|(sse, messages)| {
            if path == sse {
                Some(true)
            } else if path == messages {
                Some(false)
            } else {
                None
            }
        });
        let is_ws = self.ws_path.as_deref() == Some(path);
        if path != self.path && legacy.is_none() && !is_ws {
            return Ok(FilterAction::Continue);
        }
        if let Some(origin) = req.headers.get("origin").and_then(|v| v.to_str().ok()) {
            if !self.origin_allowed(origin) {
                ctx.reject("mcp", "origin");
                return Ok(FilterAction::Respond(
                    http_error(403, INVALID_REQUEST, "Origin not allowed").into_local(),
                ));
            }
        }
        let method = req.method.clone();
        if is_ws {
            return Ok(match websocket::handshake(req) {
                Ok(headers) => {
                    let ws_path = self.ws_path.clone().unwrap_or_default();
                    let caller = self.caller(
                        ctx,
                        req,
                        websocket::session_id(),
                        String::new(),
                        Value::Null,
                        &ws_path,
                    );
                    self.websocket(headers, caller)
                }
                Err(refusal) => {
                    ctx.reject("mcp", "protocol");
                    FilterAction::Respond(refusal.into_local())
                }
            });
        }
        if let (Some(is_stream), Some((sse, messages))) = (legacy, &self.legacy) {
            let reply = match (is_stream, method.as_str()) {
                (true, "GET") => return Ok(self.legacy_open(sse, messages)),
                (false, "POST") => self.legacy_post(session, ctx, sse).await?,
                _ => {
                    let mut r = http_error(405, INVALID_REQUEST, "method not allowed");
                    let allow = if is_stream { "GET" } else { "POST" };
                    r.headers.push(("allow".into(), allow.into()));
                    r
                }
            };
            if reply.status >= 400 {
                ctx.reject("mcp", "protocol");
            }
            return Ok(FilterAction::Respond(reply.into_local()));
        }
        let session_id = req
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let stateless = req
            .headers
            .get(VERSION_HEADER)
            .is_some_and(|v| v.as_bytes() == MODERN_VERSION.as_bytes());
        let reply = match method.as_str() {
            // The stateless revision has no sessions to stream to or end.
            "GET" | "DELETE" if stateless => {
                let mut r = http_error(
                    405,
                    INVALID_REQUEST,
                    "the 2026-07-28 revision takes POST only",
                );
                r.headers.push(("allow".into(), "POST".into()));
                r
            }
            "POST" => match self.post(session, ctx).await? {
                Answer::Reply(reply) => reply,
                Answer::Stream(events) => return Ok(sse_answer(events)),
            },
            "DELETE" => match session_id.as_deref() {
                None => http_error(400, INVALID_REQUEST, "missing Mcp-Session-Id header"),
                Some(id) => match self.sealer.open(id) {
                    Ok(_) => {
                        self.sealer.terminate(id);
                        streams::HUB.close(&self.path, id);
                        ACTIVE_SESSIONS.invalidate(&session_key(id));
                        if let Some(fed) = self.federation.clone() {
                            let id = id.to_string();
                            crate::background::handle()
                                .spawn(async move { fed.close_client(&id).await });
                        }
                        Reply {
                            status: 204,
                            body: None,
                            headers: Vec::new(),
                        }
                    }
                    Err(_) => http_error(404, INVALID_REQUEST, "unknown session"),
                },
            },
            "GET" if self.get_stream => {
                let req = session.req_header();
                let accept = req
                    .headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let last_event_id = req
                    .headers
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match session_id.as_deref().map(|id| (id, self.sealer.open(id))) {
                    _ if !accept.contains("text/event-stream") => http_error(
                        406,
                        INVALID_REQUEST,
                        "Accept must include text/event-stream",
                    ),
                    None => http_error(400, INVALID_REQUEST, "missing Mcp-Session-Id header"),
                    Some((_, Err(_))) => http_error(404, INVALID_REQUEST, "unknown session"),
                    Some((id, Ok(_))) => {
                        return Ok(sse_answer(streams::HUB.open(
                            &self.path,
                            id,
                            last_event_id,
                            self.sse_keepalive,
                        )));
                    }
                }
            }
            _ => {
                let (allow, why) = if self.get_stream {
                    ("GET, POST, DELETE", "this endpoint takes GET (the server's stream), POST (messages) and DELETE (end a session)")
                } else {
                    ("POST, DELETE", "this endpoint takes POST (messages) and DELETE (end a session); it offers no GET stream")
                };
                let mut r = http_error(405, INVALID_REQUEST, why);
                r.headers.push(("allow".into(), allow.into()));
                r
            }
        };
        if reply.status >= 400 {
            ctx.reject("mcp", "protocol");
        }
        Ok(FilterAction::Respond(reply.into_local()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_origins() {
        assert!(is_local_origin("http://localhost:3000"));
        assert!(is_local_origin("http://127.0.0.1"));
        assert!(is_local_origin("https://[::1]:8443"));
        assert!(!is_local_origin("http://evil.example"));
        assert!(!is_local_origin("http://localhost.evil.example"));
        assert!(!is_local_origin("null"));
    }

    #[test]
    fn version_negotiation() {
        assert_eq!(negotiate("2025-03-26"), "2025-03-26");
        assert_eq!(negotiate("2024-11-05"), "2024-11-05");
        assert_eq!(negotiate("1999-01-01"), "2025-11-25");
    }
}
