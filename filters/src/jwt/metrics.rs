//! The `jwt` module's Prometheus metrics.

use once_cell::sync::Lazy;
use prometheus::IntCounterVec;

use crate::metrics::counter_vec;

/// The `jwt` metrics, in the filters' registry (`crate::metrics::REGISTRY`).
pub struct JwtMetrics {
    /// `stoa_jwt_validations_total{result}`: ok, cached, missing, invalid, expired, ...
    pub jwt_validations: IntCounterVec,
    /// `stoa_jwks_refreshes_total{result}`: ok or error.
    pub jwks_refreshes: IntCounterVec,
}

/// Registered once, in the process-wide registry (metric families are per process).
pub static METRICS: Lazy<JwtMetrics> = Lazy::new(|| JwtMetrics {
    jwt_validations: counter_vec(
        "stoa_jwt_validations_total",
        "Bearer token checks by the jwt filter, by result",
        &["result"],
    ),
    jwks_refreshes: counter_vec(
        "stoa_jwks_refreshes_total",
        "Fetches of signing keys (JWKS or OIDC discovery), by result",
        &["result"],
    ),
});
