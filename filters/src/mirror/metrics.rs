//! The `mirror` module's Prometheus metrics.

use once_cell::sync::Lazy;
use prometheus::IntCounterVec;

use crate::metrics::counter_vec;

/// The `mirror` metrics, in the filters' registry (`crate::metrics::REGISTRY`).
pub struct MirrorMetrics {
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
}

/// Registered once, in the process-wide registry (metric families are per process).
pub static METRICS: Lazy<MirrorMetrics> = Lazy::new(|| {
    MirrorMetrics {
    shadow_requests: counter_vec(
        "mcp_shadow_requests_total",
        "Requests mirrored to the shadow candidate, by route and outcome (ok, error, timeout)",
        &["route", "status"],
    ),
    shadow_matches: counter_vec(
        "mcp_shadow_match_total",
        "Candidate answers compared with the primary's, by route and result (match, mismatch)",
        &["route", "result"],
    ),
    shadow_field_differences: counter_vec(
        "mcp_shadow_field_differences_total",
        "Fields that differed between candidate and primary, by route and field (indexes as [*])",
        &["route", "field"],
    ),
    shadow_skipped: counter_vec(
        "mcp_shadow_skipped_total",
        "Requests the mirror filter did not copy, by route and reason",
        &["route", "reason"],
    ),
    shadow_baseline_requests: counter_vec(
        "mcp_shadow_baseline_requests_total",
        "Copies sent to the noise baseline (a second primary), by route and outcome (ok, error, timeout)",
        &["route", "status"],
    ),
    shadow_noise_differences: counter_vec(
        "mcp_shadow_noise_differences_total",
        "Candidate differences not counted because the baseline shows the same noise, by route and field",
        &["route", "field"],
    ),
}
});
