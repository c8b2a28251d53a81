//! The `mcp` filter's configuration: `McpConfig` (endpoint paths, transports, sessions, limits,
//! tools, per-tool policy and limits, federated upstreams), `ResultCacheConfig`, their
//! defaults, and what a config derives (the stream path of each transport).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::federation::UpstreamConfig;
use super::tools::ToolConfig;
use crate::opa::OpaConfig;
use crate::rate_limit::RateLimitConfig;
use crate::units::{ByteSize, HumanDuration};

/// The session secret's environment variable (shared by all replicas).
pub const SESSION_SECRET_ENV: &str = "STOA_MCP_SESSION_SECRET";

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
fn default_keepalive() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

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

/// The stream paths of a config's transports: Streamable HTTP's, the legacy one's, WebSocket's.
pub(super) fn stream_paths(cfg: &McpConfig) -> Vec<String> {
    let mut paths = vec![cfg.path.clone()];
    if cfg.legacy_sse {
        paths.push(cfg.sse_path.clone());
    }
    if cfg.websocket {
        paths.push(cfg.ws_path.clone());
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: serde_json::Value) -> McpConfig {
        serde_json::from_value(v).expect("a valid config")
    }

    #[test]
    fn defaults() {
        let c = config(serde_json::json!({}));
        assert_eq!(c.path, "/mcp");
        assert_eq!(c.server_name, "stoa-gateway");
        assert_eq!(c.session_ttl.0, Duration::from_secs(24 * 3600));
        assert_eq!(c.max_body.0, 1 << 20);
        assert_eq!((c.max_batch, c.page_size), (32, 100));
        assert!(c.legacy_sse && c.websocket && c.get_stream);
        assert_eq!(
            (c.sse_path.as_str(), c.messages_path.as_str()),
            ("/sse", "/messages")
        );
        assert_eq!(c.ws_path, "/ws");
        assert_eq!(c.sse_keepalive.0, Duration::from_secs(15));
        assert!(c.allowed_origins.is_empty() && c.tools.is_empty() && c.upstreams.is_empty());
        assert!(c.session_secret.is_none() && c.result_cache.is_none());
        let cache: ResultCacheConfig =
            serde_json::from_value(serde_json::json!({"ttl": "1m"})).unwrap();
        assert_eq!(cache.ttl.0, Duration::from_secs(60));
        assert_eq!((cache.max_entries, cache.max_bytes.0), (10_000, 64 << 20));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = serde_json::from_value::<McpConfig>(serde_json::json!({"pathh": "/x"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pathh"), "{e}");
        assert!(serde_json::from_value::<ResultCacheConfig>(
            serde_json::json!({"ttl": "1m", "entries": 5})
        )
        .is_err());
        // `ttl` has no default.
        assert!(serde_json::from_value::<ResultCacheConfig>(serde_json::json!({})).is_err());
    }

    #[test]
    fn stream_paths_follow_the_transports() {
        let all = config(serde_json::json!({"path": "/a", "sse_path": "/b", "ws_path": "/c"}));
        assert_eq!(stream_paths(&all), ["/a", "/b", "/c"]);
        let no_legacy = config(serde_json::json!({"legacy_sse": false}));
        assert_eq!(stream_paths(&no_legacy), ["/mcp", "/ws"]);
        let no_ws = config(serde_json::json!({"websocket": false}));
        assert_eq!(stream_paths(&no_ws), ["/mcp", "/sse"]);
    }
}
