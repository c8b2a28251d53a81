//! The gateway's Prometheus metrics (one registry, served by the admin listener's `/metrics`):
//! requests by listener/route/status, request durations, upstream endpoint health, filter
//! rejections, config reloads, and access-log lines dropped under pressure.

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec_with_registry, register_int_counter_vec_with_registry,
    register_int_gauge_vec_with_registry, Encoder, HistogramVec, IntCounterVec, IntGaugeVec,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_healthy: IntGaugeVec,
    pub rejections: IntCounterVec,
    pub reloads: IntCounterVec,
    pub upstream_failures: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub connections_open: IntGaugeVec,
    pub connections_refused: IntCounterVec,
}

pub static METRICS: Lazy<Metrics> = Lazy::new(|| {
    // The filters' families too, so `/metrics` lists them from the start.
    stoa_filters::registry::register_metrics();
    let registry = Registry::new();
    let requests = register_int_counter_vec_with_registry!(
        "stoa_requests_total",
        "Requests handled, by listener, route and response status",
        &["listener", "route", "status"],
        registry
    )
    .expect("metric");
    let duration = register_histogram_vec_with_registry!(
        "stoa_request_duration_seconds",
        "Time from request headers to the end of the response, by listener and route",
        &["listener", "route"],
        crate::exemplars::BUCKETS.to_vec(),
        registry
    )
    .expect("metric");
    let upstream_healthy = register_int_gauge_vec_with_registry!(
        "stoa_upstream_healthy",
        "1 when the endpoint passes health checks and is not ejected, else 0",
        &["cluster", "endpoint"],
        registry
    )
    .expect("metric");
    let rejections = register_int_counter_vec_with_registry!(
        "stoa_filter_rejections_total",
        "Requests a filter answered itself instead of forwarding, by filter and reason",
        &["filter", "reason"],
        registry
    )
    .expect("metric");
    let reloads = register_int_counter_vec_with_registry!(
        "stoa_config_reloads_total",
        "Config reload attempts by result (ok or error)",
        &["result"],
        registry
    )
    .expect("metric");
    let upstream_failures = register_int_counter_vec_with_registry!(
        "stoa_upstream_connect_failures_total",
        "Failed upstream connection attempts, by cluster",
        &["cluster"],
        registry
    )
    .expect("metric");
    let breaker_state = register_int_gauge_vec_with_registry!(
        "stoa_circuit_breaker_state",
        "Circuit breaker state by cluster: 0 closed, 1 open, 2 half-open",
        &["cluster"],
        registry
    )
    .expect("metric");
    let breaker_transitions = register_int_counter_vec_with_registry!(
        "stoa_circuit_breaker_transitions_total",
        "Circuit breaker state changes, by cluster and new state",
        &["cluster", "state"],
        registry
    )
    .expect("metric");
    let connections_open = register_int_gauge_vec_with_registry!(
        "stoa_downstream_connections",
        "Client connections open now, by listener",
        &["listener"],
        registry
    )
    .expect("metric");
    let connections_refused = register_int_counter_vec_with_registry!(
        "stoa_downstream_connections_closed_total",
        "Client connections the gateway closed to protect itself, by listener and reason \
         (max_connections: over the listener's limit; header_timeout: header_read_timeout)",
        &["listener", "reason"],
        registry
    )
    .expect("metric");
    // Make the reload counters visible before the first reload.
    reloads.with_label_values(&["ok"]);
    reloads.with_label_values(&["error"]);
    Metrics {
        registry,
        requests,
        duration,
        upstream_healthy,
        rejections,
        reloads,
        upstream_failures,
        breaker_state,
        breaker_transitions,
        connections_open,
        connections_refused,
    }
});

impl Metrics {
    /// The registries in the OpenMetrics text format, with the latency histogram's exemplars.
    pub fn render_openmetrics(&self) -> Vec<u8> {
        let text = String::from_utf8_lossy(&self.render()).into_owned();
        crate::exemplars::openmetrics(&text).into_bytes()
    }

    /// The registries in Prometheus text format, plus the suppressed-log-lines counter.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8192);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let _ = TextEncoder::new().encode(&stoa_filters::metrics::REGISTRY.gather(), &mut buf);
        let suppressed =
            crate::logging::LINES_SUPPRESSED.load(std::sync::atomic::Ordering::Relaxed);
        buf.extend_from_slice(
            format!(
                "# HELP stoa_log_lines_suppressed_total Warning and error lines dropped by the per-call-site log rate limit\n\
                 # TYPE stoa_log_lines_suppressed_total counter\nstoa_log_lines_suppressed_total {suppressed}\n"
            )
            .as_bytes(),
        );
        buf
    }
}
