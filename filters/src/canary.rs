//! The `canary` filter: sends a share of the routed traffic (`weight`, in percent, fractions
//! allowed) to a candidate cluster instead of the one the router chose, sticky by a hash of a
//! configurable key (client IP, a tenant claim, a header), so one user stays on one side. The
//! weight lives outside the config so the admin API (`POST /canary`) and the CLI can change it
//! at once, without a reload and without dropping a request; a reload that changes the file's
//! `weight` applies it; `weight: 0` is the instant rollback. Each request is counted by the
//! side that served it, for the runbook's go/no-go rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use once_cell::sync::Lazy;
use pingora_core::Result;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::RequestCtx;
use crate::filter::{phase, Filter, FilterAction};
use crate::metrics::FILTER_METRICS;
use crate::registry::BuildContext;
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

/// A canary's live weight (percent, as `f64` bits) and the weight its config last set.
struct Weight {
    live: AtomicU64,
    configured: Mutex<Option<f64>>,
}

/// The weights of every canary in the process, by name: shared by config versions, the admin
/// API and the filters.
static WEIGHTS: Lazy<Mutex<HashMap<String, Arc<Weight>>>> = Lazy::new(Default::default);

fn weight_of(name: &str) -> Arc<Weight> {
    WEIGHTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(Weight {
                live: AtomicU64::new(0f64.to_bits()),
                configured: Mutex::new(None),
            })
        })
        .clone()
}

/// Set a canary's weight now (admin API). Unknown canary or a weight out of 0..=100: an error.
pub fn set_weight(name: &str, weight: f64) -> std::result::Result<(), String> {
    if !(0.0..=100.0).contains(&weight) {
        return Err("weight: between 0 and 100".into());
    }
    let w = WEIGHTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(name)
        .cloned()
        .ok_or_else(|| format!("no canary named `{name}`"))?;
    w.live.store(weight.to_bits(), Ordering::Relaxed);
    FILTER_METRICS
        .canary_weight
        .with_label_values(&[name])
        .set(weight);
    Ok(())
}

/// Every canary's current weight.
pub fn weights() -> Vec<(String, f64)> {
    let mut all: Vec<(String, f64)> = WEIGHTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(n, w)| (n.clone(), f64::from_bits(w.live.load(Ordering::Relaxed))))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
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
    pub fn build(cfg: &CanaryConfig, bctx: &BuildContext) -> std::result::Result<Self, String> {
        if !(0.0..=100.0).contains(&cfg.weight) {
            return Err("weight: between 0 and 100".into());
        }
        if !bctx.clusters.is_empty() && !bctx.clusters.contains(&cfg.cluster) {
            return Err(format!("cluster: no cluster named `{}`", cfg.cluster));
        }
        Ok(Canary {
            name: cfg.name.clone(),
            cluster: Arc::from(cfg.cluster.as_str()),
            weight: weight_of(&cfg.name),
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
            self.weight
                .live
                .store(self.configured.to_bits(), Ordering::Relaxed);
            FILTER_METRICS
                .canary_weight
                .with_label_values(&[&self.name])
                .set(self.configured);
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
        let weight = f64::from_bits(self.weight.live.load(Ordering::Relaxed));
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
        FILTER_METRICS
            .canary_requests
            .with_label_values(&[&self.name, side, class])
            .inc();
        FILTER_METRICS
            .canary_duration
            .with_label_values(&[&self.name, side])
            .observe(ctx.started.elapsed().as_secs_f64());
    }
}

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
    fn weights_are_checked() {
        assert!(set_weight("nobody", 5.0).is_err());
        let bctx = BuildContext {
            clusters: vec!["rust".into()],
        };
        let cfg = CanaryConfig {
            name: "t".into(),
            cluster: "rust".into(),
            weight: 1.5,
            sticky_key: default_key(),
            routes: vec![],
        };
        let c = Canary::build(&cfg, &bctx).unwrap();
        c.activate();
        assert_eq!(
            weights().iter().find(|(n, _)| n == "t").map(|w| w.1),
            Some(1.5)
        );
        set_weight("t", 20.0).unwrap();
        assert!(set_weight("t", 120.0).is_err());
        // A reload with the same configured weight keeps the admin's.
        Canary::build(&cfg, &bctx).unwrap().activate();
        assert_eq!(
            weights().iter().find(|(n, _)| n == "t").map(|w| w.1),
            Some(20.0)
        );
        let other = CanaryConfig {
            cluster: "python".into(),
            ..cfg
        };
        assert!(Canary::build(&other, &bctx).is_err());
    }
}
