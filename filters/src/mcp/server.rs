//! The state one `mcp` filter instance shares with the tasks answering on its streams
//! (`McpCore`): building it from `McpConfig` (validation, tool registry, policy, limits, result
//! cache, session sealer, federation), activating it when it starts serving, and who is calling
//! (`Caller`) for one request of a session.

use std::sync::Arc;
use std::time::Duration;

use regorus::Value as Rego;
use serde_json::{json, Value};

use super::config::{stream_paths, McpConfig, SESSION_SECRET_ENV};
use super::dispatch::PROTOCOL_VERSIONS;
use super::federation::{ClientRef, Federation};
use super::session::SessionSealer;
use super::state::{session_key, McpState};
use super::tool_call::InFlight;
use super::tool_resources;
use super::tools::ToolRegistry;
use crate::build::BuildContext;
use crate::context::RequestCtx;
use crate::opa::{self, Opa};
use crate::rate_limit::RateLimit;
use crate::telemetry::SpanRef;

/// One `mcp` filter instance's state (behind the `Mcp` filter's `Arc`).
pub(super) struct McpCore {
    pub(super) path: String,
    pub(super) server_name: String,
    pub(super) allowed_origins: Vec<String>,
    pub(super) sealer: SessionSealer,
    pub(super) max_body: u64,
    pub(super) max_batch: usize,
    pub(super) page_size: usize,
    pub(super) registry: ToolRegistry,
    pub(super) policy: Option<Opa>,
    pub(super) client: reqwest::Client,
    pub(super) results: Option<moka::sync::Cache<String, Value>>,
    pub(super) get_stream: bool,
    pub(super) sse_keepalive: Duration,
    /// `(sse_path, messages_path)` when the legacy transport is on.
    pub(super) legacy: Option<(String, String)>,
    /// The WebSocket endpoint, when on.
    pub(super) ws_path: Option<String>,
    pub(super) tool_limits: Option<RateLimit>,
    pub(super) in_flight: InFlight,
    pub(super) federation: Option<Arc<Federation>>,
    /// What every `mcp` filter shares, across reloads (see `state`).
    pub(super) state: Arc<McpState>,
    /// Where sessions of each transport hear the server (for change notifications).
    pub(super) stream_paths: Vec<String>,
}

/// Who is asking, for one POST: the session, its protocol version, the policy input of the
/// HTTP request (without its `mcp` part) and the caller's tenant.
#[derive(Clone)]
pub(super) struct Caller {
    pub(super) session_id: String,
    pub(super) version: String,
    pub(super) base: Option<Rego>,
    pub(super) tenant: String,
    /// Who the per-tool limits count: the tenant, else the client IP.
    pub(super) rate_key: String,
    /// The HTTP request's id, for logs.
    pub(super) request_id: String,
    /// The client's `initialize` capabilities (offered to federated upstreams).
    pub(super) capabilities: Value,
    /// Where messages unrelated to a request reach this client (its transport's stream path).
    pub(super) stream_path: String,
    /// A request of the stateless revision (no session), and the log level it asked for.
    pub(super) stateless: bool,
    pub(super) log_level: Option<String>,
    /// The HTTP request's server span, when it is traced: the parent of this caller's MCP
    /// spans (unless a message carries its own context in `params._meta`).
    pub(super) trace: Option<SpanRef>,
}

impl Caller {
    pub(super) fn client(&self) -> ClientRef {
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

impl McpCore {
    pub(super) fn build(
        cfg: &McpConfig,
        bctx: &mut BuildContext,
    ) -> std::result::Result<Self, String> {
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
            Some(rl) => {
                Some(RateLimit::new(rl, bctx).map_err(|e| format!("tool_rate_limit.{e}"))?)
            }
            None => None,
        };
        let policy = match &cfg.policy {
            Some(p) => Some(Opa::new(p, bctx).map_err(|e| format!("policy: {e}"))?),
            None => None,
        };
        let state = bctx.shared::<McpState>("", || Ok(McpState::default()))?;
        state.start_gauge();
        let secret = match &cfg.session_secret {
            Some(s) if s.len() < 16 => {
                return Err("session_secret: use at least 16 characters".into())
            }
            Some(s) => s.as_bytes().to_vec(),
            None => match std::env::var(SESSION_SECRET_ENV) {
                Ok(s) if s.len() >= 16 => s.into_bytes(),
                Ok(_) => return Err(format!("{SESSION_SECRET_ENV}: use at least 16 characters")),
                Err(_) => state.generated_secret(),
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
                state.clone(),
            )?)
        };
        Ok(McpCore {
            federation,
            path: cfg.path.clone(),
            server_name: cfg.server_name.clone(),
            allowed_origins: cfg.allowed_origins.clone(),
            sealer: SessionSealer::new(&secret, cfg.session_ttl.0)
                .with_terminated(state.terminated.clone()),
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
            state,
        })
    }

    /// Now serving: start fetching upstream catalogs; if a reload changed the tools this path
    /// serves, tell every open stream.
    pub(super) fn activate(&self) {
        if let Some(fed) = &self.federation {
            fed.start();
        }
        let tools: Vec<&Value> = self.registry.tools.iter().map(|t| &t.descriptor).collect();
        let listing = serde_json::to_string(&tools).unwrap_or_default();
        let previous = self
            .state
            .served_tools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.path.clone(), listing.clone());
        if previous.is_some_and(|p| p != listing) {
            let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
            for path in &self.stream_paths {
                self.state.hub.broadcast(path, &note);
            }
        }
    }

    /// Who is calling, for one request of a session.
    pub(super) fn caller(
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
            if self.state.active_sessions.get(&key).is_none() {
                self.state.active_sessions.insert(key, ());
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
            trace: ctx.trace.as_ref().map(|t| t.server_ref()),
        }
    }
}

/// A core built from a JSON config (with a session secret unless it sets one), for tests.
#[cfg(test)]
pub(super) fn core_for_test(mut cfg: Value) -> McpCore {
    if cfg.get("session_secret").is_none() {
        cfg["session_secret"] = json!("a test secret of 16+ chars");
    }
    let cfg: McpConfig = serde_json::from_value(cfg).expect("a valid config");
    let none = Default::default();
    McpCore::build(&cfg, &mut BuildContext::new(&[], &none, None)).expect("a valid config")
}

/// A caller of a session (`stateless`: of the stateless revision), for tests.
#[cfg(test)]
pub(super) fn caller_for_test(stateless: bool) -> Caller {
    Caller {
        session_id: "s-1".into(),
        version: "2025-06-18".into(),
        base: None,
        tenant: "acme".into(),
        rate_key: "acme".into(),
        request_id: "r-1".into(),
        capabilities: json!({"sampling": {}}),
        stream_path: "/mcp".into(),
        stateless,
        log_level: None,
        trace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(cfg: Value) -> String {
        let cfg: McpConfig = serde_json::from_value(cfg).expect("a config that parses");
        let none = Default::default();
        match McpCore::build(&cfg, &mut BuildContext::new(&[], &none, None)) {
            Ok(_) => panic!("built, but should have been refused"),
            Err(e) => e,
        }
    }

    #[test]
    fn builds_with_defaults() {
        let core = core_for_test(json!({}));
        assert_eq!(core.path, "/mcp");
        assert_eq!(
            core.legacy,
            Some(("/sse".to_string(), "/messages".to_string()))
        );
        assert_eq!(core.ws_path.as_deref(), Some("/ws"));
        assert_eq!(core.stream_paths, ["/mcp", "/sse", "/ws"]);
        assert_eq!((core.page_size, core.max_batch), (100, 32));
        assert_eq!(core.max_body, 1 << 20);
        assert!(core.results.is_none() && core.tool_limits.is_none());
        assert!(core.policy.is_none() && core.federation.is_none());
        let off = core_for_test(json!({"legacy_sse": false, "websocket": false}));
        assert_eq!((off.legacy, off.ws_path), (None, None));
        assert_eq!(off.stream_paths, ["/mcp"]);
        let cached = core_for_test(json!({"result_cache": {"ttl": "30s"}}));
        assert!(cached.results.is_some());
    }

    #[test]
    fn refuses_inconsistent_configs() {
        assert!(refusal(json!({"path": "mcp"})).starts_with("path:"));
        assert!(refusal(json!({"sse_path": "/mcp"})).starts_with("sse_path:"));
        assert!(refusal(json!({"messages_path": "messages"})).starts_with("messages_path:"));
        assert!(refusal(json!({"ws_path": "/sse"})).starts_with("ws_path:"));
        assert!(refusal(json!({"ws_path": "/mcp"})).starts_with("ws_path:"));
        assert!(refusal(json!({"sse_keepalive": "0s"})).starts_with("sse_keepalive:"));
        assert!(refusal(json!({"page_size": 0})).starts_with("page_size:"));
        assert!(refusal(json!({"session_ttl": "31days"})).starts_with("session_ttl:"));
        let e = refusal(json!({"session_secret": "too short"}));
        assert!(e.starts_with("session_secret:"), "{e}");
        let e =
            refusal(json!({"tool_rate_limit": {"key": "{{ tenant }}", "requests_per_second": 5}}));
        assert!(e.starts_with("tool_rate_limit.key:"), "{e}");
        // The paths of a transport that is off are not checked.
        core_for_test(
            json!({"legacy_sse": false, "sse_path": "/mcp", "websocket": false, "ws_path": "/mcp"}),
        );
        // 30 days is the longest session.
        core_for_test(json!({"session_ttl": "30days"}));
    }

    #[test]
    fn tool_rate_limits_build_with_the_default_key() {
        let core = core_for_test(json!({"tool_rate_limit": {"requests_per_second": 5}}));
        assert!(core.tool_limits.is_some());
    }

    #[test]
    fn upstreams_see_a_session_or_the_shared_stateless_client() {
        let ours = caller_for_test(false).client();
        assert_eq!(ours.session_id, "s-1");
        assert_eq!(ours.version, "2025-06-18");
        assert_eq!(ours.capabilities, json!({"sampling": {}}));
        assert_eq!(ours.stream_path, "/mcp");
        // Every stateless caller is the same client: one upstream session, no capabilities,
        // the latest handshake revision.
        let shared = caller_for_test(true).client();
        assert_eq!(shared.session_id, "\u{0}stateless");
        assert_eq!(shared.version, "2025-11-25");
        assert_eq!(shared.capabilities, json!({}));
        assert_eq!(shared.stream_path, "/mcp");
    }
}
