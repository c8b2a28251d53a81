//! `GatewayState`: one immutable, fully built version of the config — each listener's filter
//! chain and every cluster — swapped atomically on reload (`ArcSwap`). A request pins the state
//! it started with, so in-flight requests finish on the chain and clusters they began on.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use stoa_filters::filter::phase;
use stoa_filters::{AdminEndpoint, BuildContext, Filter, Resources};

use crate::cluster::Cluster;
use crate::config::{line_of, ConfigError, GatewayConfig};

/// A listener's concatenated filter chain, with per-phase index lists so a phase only visits
/// the filters that implement it.
pub struct Chain {
    pub filters: Vec<Arc<dyn Filter>>,
    /// `(chain name, filter type)` of each filter, for `--check` and logs.
    pub labels: Vec<(String, &'static str)>,
    pub request: Vec<usize>,
    pub request_body: Vec<usize>,
    pub upstream_request: Vec<usize>,
    /// Reverse declared order.
    pub response_headers: Vec<usize>,
    /// Reverse declared order.
    pub response_body: Vec<usize>,
    pub logging: Vec<usize>,
}

impl Chain {
    fn new(filters: Vec<Arc<dyn Filter>>, labels: Vec<(String, &'static str)>) -> Self {
        let with = |p: u8| -> Vec<usize> {
            (0..filters.len())
                .filter(|&i| filters[i].phases() & p != 0)
                .collect()
        };
        let mut response_headers = with(phase::RESPONSE_HEADERS);
        response_headers.reverse();
        let mut response_body = with(phase::RESPONSE_BODY);
        response_body.reverse();
        Chain {
            request: with(phase::REQUEST),
            request_body: with(phase::REQUEST_BODY),
            upstream_request: with(phase::UPSTREAM_REQUEST),
            response_headers,
            response_body,
            logging: with(phase::LOGGING),
            filters,
            labels,
        }
    }
}

pub struct GatewayState {
    pub version: u64,
    pub config: Arc<GatewayConfig>,
    /// Indexed like `config.listeners`.
    pub chains: Vec<Arc<Chain>>,
    pub clusters: HashMap<Arc<str>, Arc<Cluster>>,
    /// Who may call the admin API (tokens are read with the config).
    pub admin: Arc<crate::admin_guard::AdminGuard>,
    /// The admin endpoints this version's filters registered (`/canary`, `/shadow/report`, ...).
    pub admin_endpoints: Vec<Arc<dyn AdminEndpoint>>,
    /// The state this version's filters share and the next version may keep (see
    /// `stoa_filters::build`).
    pub resources: Resources,
    /// What the filters asked to run when this version serves.
    on_activate: Vec<stoa_filters::build::Activation>,
    /// The tracer, when tracing is on.
    pub telemetry: Option<Arc<stoa_filters::telemetry::Telemetry>>,
}

pub type SharedState = Arc<ArcSwap<GatewayState>>;

impl GatewayState {
    /// Validate and build everything. `previous` is the serving version, whose shared resources
    /// the filters of this one keep when their keys are unchanged; nothing else is shared.
    pub fn build(
        mut config: GatewayConfig,
        version: u64,
        previous: Option<&GatewayState>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        config.add_shadow_capture()?;
        let mut clusters = HashMap::new();
        for (name, c) in &config.clusters {
            let cluster = Cluster::build(name, &c.value)
                .map_err(|e| ConfigError::new(format!("clusters.{name}"), line_of(c), e))?;
            clusters.insert(Arc::<str>::from(name.as_str()), Arc::new(cluster));
        }
        let cluster_names: Vec<String> = config.clusters.keys().cloned().collect();
        let mut bctx = BuildContext::new(
            &cluster_names,
            &config.filter_settings,
            previous.map(|p| &p.resources),
        );
        // The `shadow:` section: this version's capture settings with the (shared) store,
        // found by the filters that need it. A store that cannot open fails the build.
        if let Some(s) = &config.shadow {
            stoa_filters::uac::prepare(&s.value, &mut bctx).map_err(|e| {
                let (key, message) = e.split_once(": ").unwrap_or(("", &e));
                ConfigError::new(format!("shadow.{key}"), line_of(s), message)
            })?;
        }
        // The `telemetry:` section (or the OTEL_* variables): the tracer, kept while unchanged.
        let telemetry = stoa_filters::telemetry::prepare(
            config.telemetry.as_ref().map(|t| &t.value),
            &mut bctx,
        )
        .map_err(|e| {
            let (key, message) = e.split_once(": ").unwrap_or(("", &e));
            let line = config.telemetry.as_ref().and_then(line_of);
            ConfigError::new(format!("telemetry.{key}"), line, message)
        })?;
        // Build each named chain once per listener that uses it (filters may hold state).
        let mut chains = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let mut filters = Vec::new();
            let mut labels = Vec::new();
            for chain_name in &l.value.chains {
                let entries = &config.chains[chain_name];
                for (i, entry) in entries.iter().enumerate() {
                    let f = entry.value.build(&mut bctx).map_err(|e| {
                        ConfigError::new(
                            format!("chains.{chain_name}[{i}] ({})", entry.value.type_name()),
                            line_of(entry),
                            e,
                        )
                    })?;
                    labels.push((chain_name.clone(), entry.value.type_name()));
                    filters.push(f);
                }
            }
            chains.push(Arc::new(Chain::new(filters, labels)));
        }
        let built = bctx.finish();
        let admin = crate::admin_guard::AdminGuard::build(&config.admin)?;
        Ok(GatewayState {
            version,
            config: Arc::new(config),
            chains,
            clusters,
            admin: Arc::new(admin),
            admin_endpoints: built.admin_endpoints,
            resources: built.resources,
            on_activate: built.on_activate,
            telemetry,
        })
    }

    /// Tell every filter its config version serves now (starts key prefetches, ...).
    pub fn activate(&self) {
        for f in &self.on_activate {
            f();
        }
        for cluster in self.clusters.values() {
            if let Some(b) = &cluster.breaker {
                b.activate();
            }
        }
        for chain in &self.chains {
            for f in &chain.filters {
                f.activate();
            }
        }
    }

    /// A human-readable listing of each listener's effective chain (used by `--check`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (l, chain) in self.config.listeners.iter().zip(&self.chains) {
            let l = &l.value;
            out.push_str(&format!(
                "listener {} on {}{}{}:\n",
                l.name,
                l.address,
                if l.tls.is_some() { " (tls)" } else { "" },
                if l.http2_enabled() { " (http2)" } else { "" },
            ));
            for (i, (chain, ty)) in chain.labels.iter().enumerate() {
                out.push_str(&format!("  {}. {ty}  [chain {chain}]\n", i + 1));
            }
        }
        for (name, c) in &self.config.clusters {
            let eps: Vec<&str> = c.value.endpoints.iter().map(|e| e.address()).collect();
            out.push_str(&format!("cluster {name}: {}\n", eps.join(", ")));
        }
        out
    }
}
