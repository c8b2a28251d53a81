//! `Overrides`: values from the command line and environment (`GATEWAY_PORT`,
//! `GATEWAY_ADMIN_ADDRESS`, `GATEWAY_PROBE_ADDRESS`, `GATEWAY_LOG_LEVEL`, ...) that win over the config file, applied on
//! the first load and again on every reload.

use crate::config::GatewayConfig;

#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Port of the first listener.
    pub port: Option<u16>,
    pub admin_address: Option<String>,
    /// `--probe-address`: the read-only probe listener (`admin.probe_address`).
    pub probe_address: Option<String>,
    pub log_level: Option<String>,
    pub mode: Option<crate::config::Mode>,
    /// `--mirror URL` (or `SHADOW_MODE_ENABLED=true` + `SHADOW_RUST_GATEWAY_URL`): a `mirror`
    /// filter to this candidate at the end of every chain that routes to upstreams and has none.
    pub mirror: Option<String>,
    /// Defaults for filters, by `filter.key` (e.g. `opa.endpoint` from `--opa-endpoint`),
    /// handed to every filter when it is built.
    pub filter_settings: std::collections::BTreeMap<String, String>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut GatewayConfig) {
        if let Some(port) = self.port {
            if let Some(l) = cfg.listeners.first_mut() {
                let host = l
                    .value
                    .address
                    .rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .unwrap_or_else(|| "0.0.0.0".into());
                l.value.address = format!("{host}:{port}");
            }
        }
        if let Some(a) = &self.admin_address {
            cfg.admin.address = a.clone();
        }
        if let Some(a) = &self.probe_address {
            cfg.admin.probe_address = Some(a.clone());
        }
        if let Some(l) = &self.log_level {
            cfg.gateway.log_level = Some(l.clone());
        }
        if let Some(m) = self.mode {
            cfg.gateway.mode = Some(m);
        }
        if let Some(url) = &self.mirror {
            match stoa_filters::FilterConfig::with_type("mirror", serde_json::json!({ "url": url }))
            {
                Ok(mirror) => cfg.add_to_routing_chains(&mirror),
                // Cannot happen for a string `url`; a bad URL is reported when the filter is built.
                Err(e) => tracing::error!(error = %e, "--mirror: not applied"),
            }
        }
        cfg.filter_settings = self.filter_settings.clone();
    }
}
