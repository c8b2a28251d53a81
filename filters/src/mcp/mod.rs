//! `mcp` filter: terminates the Model Context Protocol for AI agents and serves the tools of its
//! registry. Streamable HTTP at one path (`/mcp`): POST carries JSON-RPC messages (answered as
//! `application/json`; notifications and responses get 202), GET opens the server's SSE stream
//! (see `streams`), DELETE ends a session; the 2024-11-05 HTTP+SSE transport at `/sse` +
//! `/messages`. Sessions are sealed into `Mcp-Session-Id` (see `session`), versions 2024-11-05
//! to 2025-11-25 are negotiated by `initialize`, `Origin` is checked against DNS rebinding, and
//! bad input gets the JSON-RPC error object with the right id. Per tool: policy, rate limits,
//! a result cache, cancellation.
//!
//! Layout: `config` (the configuration), `state` (process-wide state), `server` (the shared
//! core of a filter instance), `http` (routing, Origin, the Streamable HTTP endpoint, replies),
//! `legacy` (the 2024-11-05 HTTP+SSE transport), `websocket`, `stateless` (the 2026-07-28
//! revision's rules), `dispatch` (JSON-RPC methods, `initialize`), `tool_call` (per-tool
//! authorization, limits, cache, cancellation), `relay` (requests to federated upstreams).

mod config;
mod dispatch;
pub mod federation;
mod http;
pub mod jsonrpc;
mod legacy;
pub mod metrics;
mod relay;
mod server;
pub mod session;
mod spans;
mod state;
pub mod stateless;
pub mod streams;
mod tool_call;
pub mod tool_resources;
pub mod tools;
pub mod upstream;
mod websocket;

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::Result;
use pingora_proxy::Session;

use crate::build::{BuildContext, BuildFilter};
use crate::context::RequestCtx;
use crate::filter::{phase, Filter, FilterAction};
use server::McpCore;

pub use config::{McpConfig, ResultCacheConfig, SESSION_SECRET_ENV};
pub use dispatch::{
    FORBIDDEN, MAX_CLIENT_CAPABILITIES, PROTOCOL_VERSIONS, RATE_LIMITED, REQUEST_CANCELLED,
    RESOURCE_NOT_FOUND,
};

/// The `mcp` filter (its state is shared with the tasks that answer on SSE streams).
pub struct Mcp(Arc<McpCore>);

impl Mcp {
    pub fn build(cfg: &McpConfig, bctx: &mut BuildContext) -> std::result::Result<Self, String> {
        McpCore::build(cfg, bctx).map(|core| Mcp(Arc::new(core)))
    }
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

impl BuildFilter for Mcp {
    const TYPE: &'static str = "mcp";
    type Config = McpConfig;

    fn build(cfg: &McpConfig, bctx: &mut BuildContext) -> std::result::Result<Self, String> {
        Mcp::build(cfg, bctx)
    }

    /// A tool resource added, changed or removed in `tools_dir` reloads the config.
    fn watched_dirs(cfg: &McpConfig) -> Vec<std::path::PathBuf> {
        cfg.tools_dir
            .iter()
            .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| std::path::PathBuf::from(d)))
            .collect()
    }

    fn register_metrics() {
        once_cell::sync::Lazy::force(&crate::mcp::metrics::METRICS);
    }
}
