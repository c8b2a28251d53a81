//! Prometheus metrics owned by filters (auth, policy, rate limits). They live in their own
//! registry, which the gateway's `/metrics` renders after its own.

use once_cell::sync::Lazy;
use prometheus::{
    register_gauge_vec_with_registry, register_histogram_vec_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_vec_with_registry, register_int_gauge_with_registry, GaugeVec, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

pub struct FilterMetrics {
    pub registry: Registry,
    /// `stoa_jwt_validations_total{result}`: ok, cached, missing, invalid, expired, ...
    pub jwt_validations: IntCounterVec,
    /// `stoa_jwks_refreshes_total{result}`: ok or error.
    pub jwks_refreshes: IntCounterVec,
    /// `stoa_opa_decisions_total{engine,result}`: allow, deny or error.
    pub opa_decisions: IntCounterVec,
    /// `stoa_rate_limit_decisions_total{limit,result}`: allowed, limited, dry_run_limited.
    pub rate_limit_decisions: IntCounterVec,
    /// `stoa_rate_limit_backend_failures_total{mode}`: Redis errors or timeouts, by fail mode.
    pub rate_limit_backend_failures: IntCounterVec,
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
    /// `mcp_shadow_requests_total{route,status}`: mirrored copies, `ok`, `error` or `timeout`.
    pub shadow_requests: IntCounterVec,
    /// `mcp_shadow_match_total{route,result}`: compared answers, `match` or `mismatch`.
    pub shadow_matches: IntCounterVec,
    /// `mcp_shadow_field_differences_total{route,field}`: fields that differed.
    pub shadow_field_differences: IntCounterVec,
    /// `mcp_shadow_skipped_total{route,reason}`: requests not mirrored, and why.
    pub shadow_skipped: IntCounterVec,
    /// `mcp_shadow_baseline_requests_total{route,status}`: copies to the noise baseline.
    pub shadow_baseline_requests: IntCounterVec,
    /// `mcp_shadow_noise_differences_total{route,field}`: candidate differences taken for noise.
    pub shadow_noise_differences: IntCounterVec,
    /// `stoa_shadow_captures_total{api,result}`: exchanges the `shadow_capture` filter saw.
    pub shadow_captures: IntCounterVec,
    /// `stoa_shadow_purged_samples_total`: samples removed by retention.
    pub shadow_purged: IntCounter,
    /// `stoa_shadow_store_evictions_total`: times the store dropped its oldest tenth to stay
    /// under `max_size`.
    pub shadow_store_evictions: IntCounter,
    /// `stoa_uac_validation_total{contract,result}`: requests checked by `uac_validation`.
    pub uac_violations: IntCounterVec,
    /// `stoa_canary_weight{canary}`: the share of traffic (percent) sent to the candidate.
    pub canary_weight: GaugeVec,
    /// `stoa_canary_requests_total{canary,backend,status}`: requests by the side that served
    /// them (`primary`, `candidate`) and status class (`ok`, `4xx`, `5xx`, `none`).
    pub canary_requests: IntCounterVec,
    /// `stoa_canary_request_duration_seconds{canary,backend}`.
    pub canary_duration: HistogramVec,
}

pub static FILTER_METRICS: Lazy<FilterMetrics> = Lazy::new(|| {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        register_int_counter_vec_with_registry!(name, help, labels, registry).expect("metric")
    };
    FilterMetrics {
        jwt_validations: counter(
            "stoa_jwt_validations_total",
            "Bearer token checks by the jwt filter, by result",
            &["result"],
        ),
        jwks_refreshes: counter(
            "stoa_jwks_refreshes_total",
            "Fetches of signing keys (JWKS or OIDC discovery), by result",
            &["result"],
        ),
        opa_decisions: counter(
            "stoa_opa_decisions_total",
            "Policy decisions of the opa filter, by engine (embedded or external) and result",
            &["engine", "result"],
        ),
        rate_limit_decisions: counter(
            "stoa_rate_limit_decisions_total",
            "Rate-limit checks, by limit name and result",
            &["limit", "result"],
        ),
        rate_limit_backend_failures: counter(
            "stoa_rate_limit_backend_failures_total",
            "Rate-limit checks Redis could not answer in time, by the fail mode applied",
            &["mode"],
        ),
        mcp_requests: counter(
            "mcp_requests_total",
            "MCP requests answered by the mcp filter, by method, tool (tools/call) and status",
            &["method", "tool", "status"],
        ),
        mcp_dropped: counter(
            "mcp_dropped_total",
            "MCP state a bound refused to keep, by what (stream_session, replay_event, notification)",
            &["what"],
        ),
        mcp_streams: register_int_gauge_with_registry!(
            "mcp_sse_streams",
            "Open server-to-client SSE streams of MCP sessions",
            registry
        )
        .expect("metric"),
        mcp_active_sessions: register_int_gauge_with_registry!(
            "mcp_active_sessions",
            "MCP sessions that made a request to this process in the last 5 minutes",
            registry
        )
        .expect("metric"),
        mcp_upstream_up: register_int_gauge_vec_with_registry!(
            "mcp_upstream_up",
            "Whether a federated upstream MCP server answered its last catalog refresh (1) or not (0)",
            &["upstream"],
            registry
        )
        .expect("metric"),
        mcp_upstream_requests: counter(
            "mcp_upstream_requests_total",
            "Requests relayed to federated upstream MCP servers, by upstream, method and status",
            &["upstream", "method", "status"],
        ),
        shadow_requests: counter(
            "mcp_shadow_requests_total",
            "Requests mirrored to the shadow candidate, by route and outcome (ok, error, timeout)",
            &["route", "status"],
        ),
        shadow_matches: counter(
            "mcp_shadow_match_total",
            "Candidate answers compared with the primary's, by route and result (match, mismatch)",
            &["route", "result"],
        ),
        shadow_field_differences: counter(
            "mcp_shadow_field_differences_total",
            "Fields that differed between candidate and primary, by route and field (indexes as [*])",
            &["route", "field"],
        ),
        shadow_skipped: counter(
            "mcp_shadow_skipped_total",
            "Requests the mirror filter did not copy, by route and reason",
            &["route", "reason"],
        ),
        shadow_baseline_requests: counter(
            "mcp_shadow_baseline_requests_total",
            "Copies sent to the noise baseline (a second primary), by route and outcome (ok, error, timeout)",
            &["route", "status"],
        ),
        shadow_captures: counter(
            "stoa_shadow_captures_total",
            "Exchanges seen by shadow_capture, by API and result (queued, queued_without_bodies, dropped_queue_full, not_opted_in, no_response)",
            &["api", "result"],
        ),
        shadow_purged: register_int_counter_with_registry!(
            "stoa_shadow_purged_samples_total",
            "Captured samples removed by the shadow retention",
            registry
        )
        .expect("metric"),
        shadow_store_evictions: register_int_counter_with_registry!(
            "stoa_shadow_store_evictions_total",
            "Times the shadow store dropped its oldest tenth of samples to stay under max_size",
            registry
        )
        .expect("metric"),
        uac_violations: counter(
            "stoa_uac_validation_total",
            "Requests checked by uac_validation, by contract and result (none, no_contract, or the violation kind)",
            &["contract", "result"],
        ),
        shadow_noise_differences: counter(
            "mcp_shadow_noise_differences_total",
            "Candidate differences not counted because the baseline shows the same noise, by route and field",
            &["route", "field"],
        ),
        canary_weight: register_gauge_vec_with_registry!(
            "stoa_canary_weight",
            "Share of traffic (percent) the canary filter sends to its candidate cluster",
            &["canary"],
            registry
        )
        .expect("metric"),
        canary_requests: counter(
            "stoa_canary_requests_total",
            "Requests through a canary filter, by the side that served them and status class",
            &["canary", "backend", "status"],
        ),
        canary_duration: register_histogram_vec_with_registry!(
            "stoa_canary_request_duration_seconds",
            "Request duration through a canary filter, by the side that served it",
            &["canary", "backend"],
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            registry
        )
        .expect("metric"),
        mcp_tool_cache: counter(
            "mcp_tool_cache_total",
            "Result-cache lookups of idempotent MCP tools, by tool and result (hit, miss)",
            &["tool", "result"],
        ),
        mcp_tool_duration: register_histogram_vec_with_registry!(
            "mcp_tool_call_duration_seconds",
            "Time of tools/call backend calls, by tool",
            &["tool"],
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            registry
        )
        .expect("metric"),
        registry,
    }
});
