//! The filters' Prometheus registry: each filter module declares its own metrics (a `METRICS`
//! static next to its code) in this one registry, which the gateway's `/metrics` renders after
//! its own. Process-wide because metric families are: a family is registered once per process,
//! whatever the config versions that come and go.

use once_cell::sync::Lazy;
use prometheus::{register_int_counter_vec_with_registry, IntCounterVec, Registry};

/// The registry the filters' metrics live in.
pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

/// A counter family with labels, in `REGISTRY`.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec_with_registry!(name, help, labels, REGISTRY)
        .expect("each metric family is registered once")
}
