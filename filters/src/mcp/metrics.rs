//! The `mcp` module's Prometheus metrics.

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec_with_registry, register_int_gauge_vec_with_registry,
    register_int_gauge_with_registry, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
};

use crate::metrics::{counter_vec, REGISTRY};

/// The `mcp` metrics, in the filters' registry (`crate::metrics::REGISTRY`).
pub struct McpMetrics {
    /// `mcp_requests_total{method,tool,status}`: MCP requests answered by the `mcp` filter.
    pub mcp_requests: IntCounterVec,
    /// `mcp_tool_call_duration_seconds{tool}`: backend time of `tools/call`.
    pub mcp_tool_duration: HistogramVec,
    /// `mcp_tool_cache_total{tool,result}`: result-cache lookups, `hit` or `miss`.
    pub mcp_tool_cache: IntCounterVec,
    /// `mcp_sse_streams`: open server streams (GET) of MCP sessions.
    pub mcp_streams: IntGauge,
    /// `mcp_active_sessions`: MCP sessions that made a request to this process recently.
    pub mcp_active_sessions: IntGauge,
    /// `mcp_dropped_total{what}`: what an MCP bound refused to keep (`stream_session`: the
    /// stream hub was full; `replay_event`: a resumable event pushed out by the byte bound;
    /// `notification`: a WebSocket client read too slowly for a server notification).
    pub mcp_dropped: IntCounterVec,
    /// `mcp_upstream_up{upstream}`: 1 while a federated upstream MCP server answers.
    pub mcp_upstream_up: IntGaugeVec,
    /// `mcp_upstream_requests_total{upstream,method,status}`: messages relayed to upstreams.
    pub mcp_upstream_requests: IntCounterVec,
}

/// Registered once, in the process-wide registry (metric families are per process).
pub static METRICS: Lazy<McpMetrics> = Lazy::new(|| McpMetrics {
    mcp_requests: counter_vec(
        "mcp_requests_total",
        "MCP requests answered by the mcp filter, by method, tool (tools/call) and status",
        &["method", "tool", "status"],
    ),
    mcp_tool_duration: register_histogram_vec_with_registry!(
        "mcp_tool_call_duration_seconds",
        "Time of tools/call backend calls, by tool",
        &["tool"],
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        REGISTRY
    )
    .expect("metric"),
    mcp_tool_cache: counter_vec(
        "mcp_tool_cache_total",
        "Result-cache lookups of idempotent MCP tools, by tool and result (hit, miss)",
        &["tool", "result"],
    ),
    mcp_streams: register_int_gauge_with_registry!(
        "mcp_sse_streams",
        "Open server-to-client SSE streams of MCP sessions",
        REGISTRY
    )
    .expect("metric"),
    mcp_active_sessions: register_int_gauge_with_registry!(
        "mcp_active_sessions",
        "MCP sessions that made a request to this process in the last 5 minutes",
        REGISTRY
    )
    .expect("metric"),
    mcp_dropped: counter_vec(
        "mcp_dropped_total",
        "MCP state a bound refused to keep, by what (stream_session, replay_event, notification)",
        &["what"],
    ),
    mcp_upstream_up: register_int_gauge_vec_with_registry!(
        "mcp_upstream_up",
        "Whether a federated upstream MCP server answered its last catalog refresh (1) or not (0)",
        &["upstream"],
        REGISTRY
    )
    .expect("metric"),
    mcp_upstream_requests: counter_vec(
        "mcp_upstream_requests_total",
        "Requests relayed to federated upstream MCP servers, by upstream, method and status",
        &["upstream", "method", "status"],
    ),
});
