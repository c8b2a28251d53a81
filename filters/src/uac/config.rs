//! The top-level `shadow:` section: what may be captured (`opt_in`), what is kept (`capture`,
//! `pii`), where and for how long (`store`, `retention`), how contracts are generated and
//! exported (`uac_generation`) and who may review them (`reviewers`); and its validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, HumanDuration};

/// The longest retention allowed: captured samples are never kept more than 30 days.
pub const MAX_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// In `mode: proxy`: keep capturing while enforcing contracts (dual mode: contracts keep
    /// being discovered after the switch from shadow to proxy). In `mode: shadow` capture is
    /// always on.
    #[serde(default)]
    pub keep_observing: bool,
    #[serde(default)]
    pub store: StoreConfig,
    /// The APIs (and tenants) that may be captured; nothing else is.
    #[serde(default)]
    pub opt_in: Vec<OptIn>,
    /// How long samples are kept (default 7 days, at most 30).
    #[serde(default = "default_retention")]
    pub retention: HumanDuration,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default)]
    pub pii: PiiConfig,
    #[serde(default)]
    pub uac_generation: UacGeneration,
    /// Who may read observations and contracts through the admin API: a name and its bearer
    /// token (`token`, or `token_env` naming an environment variable).
    #[serde(default)]
    pub reviewers: Vec<Reviewer>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file.
    #[serde(default = "default_store_path")]
    pub path: String,
    /// The most the samples may take on disk; the oldest go first beyond it.
    #[serde(default = "default_store_size")]
    pub max_size: ByteSize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            max_size: default_store_size(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OptIn {
    /// The API's name (its contract id). Default: the host, else the path prefix.
    #[serde(default)]
    pub name: Option<String>,
    /// The request's host (`Host` header, port ignored), if it must match.
    #[serde(default)]
    pub host: Option<String>,
    /// A path prefix the request must start with.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Tenants whose traffic may be captured (empty: any); a request's tenant is its verified
    /// token's tenant claim, else the `capture.tenant_header`.
    #[serde(default)]
    pub tenants: Vec<String>,
}

impl OptIn {
    pub fn api_name(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.host.clone())
            .or_else(|| {
                self.path_prefix
                    .as_deref()
                    .map(|p| p.trim_matches('/').replace('/', "-"))
                    .filter(|p| !p.is_empty())
            })
            .unwrap_or_else(|| "default".into())
    }

    pub(super) fn matches(&self, host: Option<&str>, path: &str, tenant: Option<&str>) -> bool {
        self.host
            .as_deref()
            .is_none_or(|h| host.is_some_and(|x| x.eq_ignore_ascii_case(h)))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && (self.tenants.is_empty()
                || tenant.is_some_and(|t| self.tenants.iter().any(|x| x == t)))
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    #[serde(default = "yes")]
    pub requests: bool,
    #[serde(default = "yes")]
    pub responses: bool,
    #[serde(default = "yes")]
    pub headers: bool,
    /// Bodies (masked) too.
    #[serde(default = "yes")]
    pub bodies: bool,
    /// Bodies larger than this are not kept (the exchange is stored without them).
    #[serde(default = "default_capture_body")]
    pub max_body: ByteSize,
    /// Exchanges waiting for the store at most; beyond it they are dropped (counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// The header naming the tenant when no verified token does.
    #[serde(default = "default_tenant_header")]
    pub tenant_header: String,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            requests: true,
            responses: true,
            headers: true,
            bodies: true,
            max_body: default_capture_body(),
            queue: default_queue(),
            tenant_header: default_tenant_header(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// JSON paths blanked in bodies (`$.customer.ssn`, `$.items[*].note`).
    #[serde(default)]
    pub json_paths: Vec<String>,
    /// Header names blanked.
    #[serde(default)]
    pub headers: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UacGeneration {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Endpoints below this confidence are listed for review but not part of the contract.
    #[serde(default = "default_threshold")]
    pub confidence_threshold: f64,
    /// POST each approved contract to `control_plane_url`.
    #[serde(default)]
    pub export_to_control_plane: bool,
    #[serde(default)]
    pub control_plane_url: Option<String>,
    /// Drafts wait for a reviewer's approval (when false, each new draft is approved as
    /// `stoa-gateway`).
    #[serde(default = "yes")]
    pub require_human_review: bool,
}

impl Default for UacGeneration {
    fn default() -> Self {
        UacGeneration {
            enabled: true,
            confidence_threshold: default_threshold(),
            export_to_control_plane: false,
            control_plane_url: None,
            require_human_review: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reviewer {
    pub name: String,
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
}

fn yes() -> bool {
    true
}
fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 24 * 3600))
}
fn default_store_path() -> String {
    "stoa-shadow.db".into()
}
fn default_store_size() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_capture_body() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_queue() -> usize {
    10_000
}
fn default_tenant_header() -> String {
    "x-tenant-id".into()
}
fn default_threshold() -> f64 {
    0.8
}

impl ShadowConfig {
    /// The config of shadow mode's one-line start (`--mode=shadow --target=URL`): the target's
    /// host is opted in as one API.
    pub fn for_target(api: &str) -> Self {
        ShadowConfig {
            keep_observing: false,
            store: StoreConfig::default(),
            opt_in: vec![OptIn {
                name: Some(api.to_string()),
                ..OptIn::default()
            }],
            retention: default_retention(),
            capture: CaptureConfig::default(),
            pii: PiiConfig::default(),
            uac_generation: UacGeneration::default(),
            reviewers: Vec::new(),
        }
    }

    /// Problems as `key: message`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let r = self.retention.0;
        if r.is_zero() || r > MAX_RETENTION {
            return Err(format!(
                "retention: between 1s and 30d (the longest captured samples may be kept), not {:.1} days",
                r.as_secs_f64() / 86_400.0
            ));
        }
        if self.capture.queue == 0 {
            return Err("capture.queue: must be more than 0".into());
        }
        if !(0.0..=1.0).contains(&self.uac_generation.confidence_threshold) {
            return Err("uac_generation.confidence_threshold: between 0 and 1".into());
        }
        if self.uac_generation.export_to_control_plane {
            let ok = self
                .uac_generation
                .control_plane_url
                .as_deref()
                .and_then(|u| reqwest::Url::parse(u).ok())
                .is_some_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err("uac_generation.control_plane_url: an http(s) URL is needed when export_to_control_plane is true".into());
            }
        }
        for (i, r) in self.reviewers.iter().enumerate() {
            if r.token.is_none() && r.token_env.is_none() {
                return Err(format!("reviewers[{i}]: `token` or `token_env` is needed"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_in_matches_host_prefix_and_tenant() {
        let o = OptIn {
            name: None,
            host: Some("erp.internal".into()),
            path_prefix: Some("/api/".into()),
            tenants: vec!["acme".into()],
        };
        assert_eq!(o.api_name(), "erp.internal");
        assert!(o.matches(Some("ERP.internal"), "/api/users", Some("acme")));
        assert!(!o.matches(Some("erp.internal"), "/admin", Some("acme")));
        assert!(!o.matches(Some("other"), "/api/users", Some("acme")));
        assert!(!o.matches(Some("erp.internal"), "/api/users", Some("globex")));
        assert!(!o.matches(Some("erp.internal"), "/api/users", None));
        let any = OptIn {
            path_prefix: Some("/legacy/".into()),
            ..OptIn::default()
        };
        assert_eq!(any.api_name(), "legacy");
        assert!(any.matches(None, "/legacy/x", None));
    }

    #[test]
    fn retention_is_bounded() {
        let mut c = ShadowConfig::for_target("erp");
        assert_eq!(c.retention.0, Duration::from_secs(7 * 24 * 3600));
        c.retention = HumanDuration(Duration::from_secs(31 * 24 * 3600));
        assert!(c.validate().unwrap_err().starts_with("retention:"));
    }
}
