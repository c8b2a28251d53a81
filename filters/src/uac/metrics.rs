//! The `uac` module's Prometheus metrics.

use once_cell::sync::Lazy;
use prometheus::{register_int_counter_with_registry, IntCounter, IntCounterVec};

use crate::metrics::{counter_vec, REGISTRY};

/// The `uac` metrics, in the filters' registry (`crate::metrics::REGISTRY`).
pub struct UacMetrics {
    /// `stoa_shadow_captures_total{api,result}`: exchanges the `shadow_capture` filter saw.
    pub shadow_captures: IntCounterVec,
    /// `stoa_shadow_purged_samples_total`: samples removed by retention.
    pub shadow_purged: IntCounter,
    /// `stoa_shadow_store_evictions_total`: times the store dropped its oldest tenth to stay
    /// under `max_size`.
    pub shadow_store_evictions: IntCounter,
    /// `stoa_uac_validation_total{contract,result}`: requests checked by `uac_validation`.
    pub uac_violations: IntCounterVec,
}

/// Registered once, in the process-wide registry (metric families are per process).
pub static METRICS: Lazy<UacMetrics> = Lazy::new(|| {
    UacMetrics {
    shadow_captures: counter_vec(
        "stoa_shadow_captures_total",
        "Exchanges seen by shadow_capture, by API and result (queued, queued_without_bodies, dropped_queue_full, not_opted_in, no_response)",
        &["api", "result"],
    ),
    shadow_purged: register_int_counter_with_registry!(
        "stoa_shadow_purged_samples_total",
        "Captured samples removed by the shadow retention",
        REGISTRY
    )
    .expect("metric"),
    shadow_store_evictions: register_int_counter_with_registry!(
        "stoa_shadow_store_evictions_total",
        "Times the shadow store dropped its oldest tenth of samples to stay under max_size",
        REGISTRY
    )
    .expect("metric"),
    uac_violations: counter_vec(
        "stoa_uac_validation_total",
        "Requests checked by uac_validation, by contract and result (none, no_contract, or the violation kind)",
        &["contract", "result"],
    ),
}
});
