//! The `canary` filter: sends a share of the routed traffic (`weight`, in percent, fractions
//! allowed) to a candidate cluster instead of the one the router chose, sticky by a hash of a
//! configurable key (client IP, a tenant claim, a header), so one user stays on one side. The
//! weight is a shared resource keyed by the canary's name (it outlives reloads), so the admin
//! API (`POST /canary`, served by `CanaryBoard`) and the CLI can change it at once, without a
//! reload and without dropping a request; a reload that changes the file's `weight` applies it;
//! `weight: 0` is the instant rollback. Each request is counted by the side that served it, so
//! the go/no-go decision of a migration (error and latency of the candidate against the
//! primary) can be read from the metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora_core::Result;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admin::{AdminEndpoint, AdminReply, AdminRequest};
use crate::build::BuildContext;
use crate::context::RequestCtx;
use crate::filter::{phase, Filter, FilterAction};
use crate::template::Template;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Names this canary in the admin API and metrics.
    #[serde(default = "default_name")]
    pub name: String,
    /// The candidate cluster.
    pub cluster: String,
    /// The share of traffic sent to it, in percent (0 to 100, fractions allowed).
    #[serde(default)]
    pub weight: f64,
    /// What stickiness hashes (a template): `{{ client_ip }}`, `{{ tenant }}`,
    /// `{{ header.x-user-id }}`.
    #[serde(default = "default_key")]
    pub sticky_key: String,
    /// Only these routes (router route names); all routes when empty.
    #[serde(default)]
    pub routes: Vec<String>,
}

fn default_name() -> String {
    "default".into()
}
fn default_key() -> String {
    "{{ client_ip }}".into()
}

/// A canary's live weight (percent, as `f64` bits) and the weight its config last set: a
/// shared resource keyed by the canary's name, so it outlives reloads that keep the canary.
struct Weight {
    live: AtomicU64,
    configured: Mutex<Option<f64>>,
}

impl Weight {
    /// A canary seen for the first time starts at its config's weight at once (its first
    /// requests may arrive before the version is told it serves).
    fn configured_at(weight: f64) -> Self {
        Weight {
            live: AtomicU64::new(weight.to_bits()),
            configured: Mutex::new(Some(weight)),
        }
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.live.load(Ordering::Relaxed))
    }

    fn set(&self, name: &str, weight: f64) {
        self.live.store(weight.to_bits(), Ordering::Relaxed);
        METRICS.canary_weight.with_label_values(&[name]).set(weight);
    }
}

/// Every canary of one config version, by name: what the admin API's `/canary` reads and sets.
#[derive(Default)]
pub struct CanaryBoard {
    weights: Mutex<BTreeMap<String, Arc<Weight>>>,
}

impl CanaryBoard {
    fn add(&self, name: &str, weight: Arc<Weight>) {
        self.weights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), weight);
    }

    /// Set a canary's weight now. Unknown canary or a weight out of 0..=100: an error.
    pub fn set_weight(&self, name: &str, weight: f64) -> std::result::Result<(), String> {
        if !(0.0..=100.0).contains(&weight) {
            return Err("weight: between 0 and 100".into());
        }
        let w = self
            .weights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no canary named `{name}`"))?;
        w.set(name, weight);
        Ok(())
    }

    /// Every canary's current weight, by name.
    pub fn weights(&self) -> Vec<(String, f64)> {
        self.weights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(n, w)| (n.clone(), w.get()))
            .collect()
    }

    fn weights_reply(&self) -> AdminReply {
        let weights: serde_json::Map<String, serde_json::Value> = self
            .weights()
            .into_iter()
            .map(|(name, w)| (name, serde_json::json!(w)))
            .collect();
        AdminReply::json(200, &serde_json::json!({ "weights": weights }))
    }
}

/// `GET /canary`: every canary's weight. `POST /canary {"weight": 5, "name": "default"}`: the
/// new weight applies to the next request.
#[async_trait]
impl AdminEndpoint for CanaryBoard {
    fn path(&self) -> &'static str {
        "/canary"
    }

    async fn handle(&self, req: &AdminRequest<'_>) -> AdminReply {
        match req.method {
            "GET" => self.weights_reply(),
            "POST" => {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(req.body) else {
                    return AdminReply::error(400, "the body must be JSON: {\"weight\": 5}");
                };
                let Some(weight) = v.get("weight").and_then(serde_json::Value::as_f64) else {
                    return AdminReply::error(400, "`weight` (a number, 0 to 100) is required");
                };
                let name = v
                    .get("name")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("default");
                match self.set_weight(name, weight) {
                    Ok(()) => {
                        tracing::info!(
                            canary = name,
                            weight,
                            "canary weight set through the admin API"
                        );
                        self.weights_reply()
                    }
                    Err(e) if e.starts_with("no canary") => AdminReply::error(404, &e),
                    Err(e) => AdminReply::error(400, &e),
                }
            }
            _ => AdminReply::error(
                405,
                "GET reads the canary weights, POST {\"weight\": N} sets one",
            ),
        }
    }
}

pub struct Canary {
    name: String,
    cluster: Arc<str>,
    weight: Arc<Weight>,
    configured: f64,
    key: Template,
    routes: Vec<String>,
}

impl Canary {
    pub fn build(cfg: &CanaryConfig, bctx: &mut BuildContext) -> std::result::Result<Self, String> {
        if !(0.0..=100.0).contains(&cfg.weight) {
            return Err("weight: between 0 and 100".into());
        }
        if !bctx.clusters.is_empty() && !bctx.clusters.contains(&cfg.cluster) {
            return Err(format!("cluster: no cluster named `{}`", cfg.cluster));
        }
        let weight = bctx.shared::<Weight>(&cfg.name, || Ok(Weight::configured_at(cfg.weight)))?;
        let board = bctx.local::<CanaryBoard>();
        board.add(&cfg.name, weight.clone());
        bctx.register_admin(board);
        Ok(Canary {
            name: cfg.name.clone(),
            cluster: Arc::from(cfg.cluster.as_str()),
            weight,
            configured: cfg.weight,
            key: Template::parse(&cfg.sticky_key).map_err(|e| format!("sticky_key: {e}"))?,
            routes: cfg.routes.clone(),
        })
    }

    /// Where a key falls in 0..100 (a stable hash: the same on every replica and restart).
    fn point(key: &str) -> f64 {
        let digest = Sha256::digest(key.as_bytes());
        let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        (n as f64 / u64::MAX as f64) * 100.0
    }
}

/// The side that served a request, for `on_logging`.
#[derive(Clone, Copy)]
struct Side(&'static str);

#[async_trait]
impl Filter for Canary {
    fn name(&self) -> &'static str {
        "canary"
    }

    fn phases(&self) -> u8 {
        phase::REQUEST | phase::LOGGING
    }

    /// Now serving: the config's weight applies when it differs from what the previous config
    /// said (a weight set through the admin API survives reloads that leave `weight` alone).
    fn activate(&self) {
        let mut configured = self
            .weight
            .configured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *configured != Some(self.configured) {
            *configured = Some(self.configured);
            self.weight.set(&self.name, self.configured);
        } else {
            let live = self.weight.get();
            METRICS
                .canary_weight
                .with_label_values(&[&self.name])
                .set(live);
        }
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let Some(route) = ctx.route.as_ref() else {
            return Ok(FilterAction::Continue);
        };
        if !self.routes.is_empty() && !self.routes.iter().any(|r| **r == *route.route) {
            return Ok(FilterAction::Continue);
        }
        let weight = self.weight.get();
        let candidate = weight > 0.0 && Canary::point(&self.key.render(session, ctx)) < weight;
        if candidate {
            if let Some(route) = ctx.route.as_mut() {
                route.cluster = self.cluster.clone();
            }
        }
        ctx.extensions
            .insert(Side(if candidate { "candidate" } else { "primary" }));
        Ok(FilterAction::Continue)
    }

    fn on_logging(&self, _session: &Session, ctx: &RequestCtx, status: u16) {
        let Some(Side(side)) = ctx.extensions.get::<Side>().copied() else {
            return;
        };
        let class = match status {
            0 => "none",
            s if s >= 500 => "5xx",
            s if s >= 400 => "4xx",
            _ => "ok",
        };
        METRICS
            .canary_requests
            .with_label_values(&[&self.name, side, class])
            .inc();
        METRICS
            .canary_duration
            .with_label_values(&[&self.name, side])
            .observe(ctx.started.elapsed().as_secs_f64());
    }
}

impl crate::build::BuildFilter for Canary {
    const TYPE: &'static str = "canary";
    type Config = CanaryConfig;

    fn build(
        cfg: &CanaryConfig,
        bctx: &mut crate::build::BuildContext,
    ) -> std::result::Result<Self, String> {
        Canary::build(cfg, bctx)
    }

    fn register_metrics() {
        once_cell::sync::Lazy::force(&METRICS);
    }
}

/// The `canary` metrics, in the filters' registry (`crate::metrics::REGISTRY`).
pub struct CanaryMetrics {
    /// `stoa_canary_weight{canary}`: the share of traffic (percent) sent to the candidate.
    pub canary_weight: prometheus::GaugeVec,
    /// `stoa_canary_requests_total{canary,backend,status}`: requests by the side that served
    /// them (`primary`, `candidate`) and status class (`ok`, `4xx`, `5xx`, `none`).
    pub canary_requests: prometheus::IntCounterVec,
    /// `stoa_canary_request_duration_seconds{canary,backend}`.
    pub canary_duration: prometheus::HistogramVec,
}

/// Registered once, in the process-wide registry (metric families are per process).
pub static METRICS: once_cell::sync::Lazy<CanaryMetrics> =
    once_cell::sync::Lazy::new(|| CanaryMetrics {
        canary_weight: prometheus::register_gauge_vec_with_registry!(
            "stoa_canary_weight",
            "Share of traffic (percent) the canary filter sends to its candidate cluster",
            &["canary"],
            crate::metrics::REGISTRY
        )
        .expect("metric"),
        canary_requests: crate::metrics::counter_vec(
            "stoa_canary_requests_total",
            "Requests through a canary filter, by the side that served them and status class",
            &["canary", "backend", "status"],
        ),
        canary_duration: prometheus::register_histogram_vec_with_registry!(
            "stoa_canary_request_duration_seconds",
            "Request duration through a canary filter, by the side that served it",
            &["canary", "backend"],
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            crate::metrics::REGISTRY
        )
        .expect("metric"),
    });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_spread_evenly_and_stay_put() {
        let below = (0..10_000)
            .filter(|i| Canary::point(&format!("10.0.{}.{}", i / 256, i % 256)) < 10.0)
            .count();
        assert!((800..1_200).contains(&below), "{below}");
        assert_eq!(Canary::point("a"), Canary::point("a"));
    }

    #[test]
    fn weights_are_checked_and_survive_a_reload_that_keeps_them() {
        let clusters = vec!["rust".to_string()];
        let none = Default::default();
        let mut bctx = BuildContext::new(&clusters, &none, None);
        let cfg = CanaryConfig {
            name: "t".into(),
            cluster: "rust".into(),
            weight: 1.5,
            sticky_key: default_key(),
            routes: vec![],
        };
        let c = Canary::build(&cfg, &mut bctx).unwrap();
        let board = bctx.local::<CanaryBoard>();
        assert!(board.set_weight("nobody", 5.0).is_err());
        // A new canary serves its config's weight before it is told it serves.
        assert_eq!(board.weights(), vec![("t".to_string(), 1.5)]);
        c.activate();
        assert_eq!(board.weights(), vec![("t".to_string(), 1.5)]);
        board.set_weight("t", 20.0).unwrap();
        assert!(board.set_weight("t", 120.0).is_err());
        let v1 = bctx.finish().resources;
        // A reload with the same configured weight keeps the admin's.
        let mut reload = BuildContext::new(&clusters, &none, Some(&v1));
        Canary::build(&cfg, &mut reload).unwrap().activate();
        assert_eq!(
            reload.local::<CanaryBoard>().weights(),
            vec![("t".to_string(), 20.0)]
        );
        // A canary another version does not keep starts from its config.
        let mut fresh = BuildContext::new(&clusters, &none, None);
        Canary::build(&cfg, &mut fresh).unwrap().activate();
        assert_eq!(
            fresh.local::<CanaryBoard>().weights(),
            vec![("t".to_string(), 1.5)]
        );
        let other = CanaryConfig {
            cluster: "python".into(),
            ..cfg
        };
        assert!(Canary::build(&other, &mut fresh).is_err());
    }
}
