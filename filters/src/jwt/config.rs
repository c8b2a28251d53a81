//! The `jwt` filter's configuration: `JwtConfig`, its defaults, and the config the Keycloak
//! environment variables describe.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::context::RouteAuth;
use crate::protected_resource::ProtectedResourceConfig;
use crate::units::HumanDuration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The expected `iss` (required). Without `jwks_url`/`jwks_file`/`public_key_file`/
    /// `hmac_secret`, keys are found by OIDC discovery at `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// Accepted `aud` values (at least one; the token's `aud` must contain one of them).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// A JWKS document URL (e.g. Keycloak's `/protocol/openid-connect/certs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A local JWKS file (read at config load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// A local PEM public key (RSA, EC or Ed25519; read at config load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<String>,
    /// A shared secret: the only way HS256/384/512 tokens are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<String>,
    /// Allowed algorithms (a key only ever verifies the ones of its own type).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    /// Also look for the token in this header (raw or `Bearer <token>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_header: Option<String>,
    /// Also look for the token in this cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_cookie: Option<String>,
    /// Also look for the token in this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_query: Option<String>,
    /// The claim (dotted path) that names the caller's tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The client whose Keycloak `resource_access.<client>.roles` count as roles (default: each
    /// audience).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Upstream header name -> claim (dotted path, or `tenant`/`sub`/`roles`/`scopes`). Any
    /// value the client sent in those headers is removed first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
    /// Scopes every token must carry (403 `insufficient_scope` otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    /// Roles every caller must have (403 `insufficient_scope` otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_roles: Vec<String>,
    /// The default for routes that do not set `auth:` (`required`, `optional`, `anonymous`).
    #[serde(default)]
    pub auth: RouteAuth,
    /// The `realm` of the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Verified tokens remembered (by SHA-256) until their `exp`; 0 turns the cache off.
    #[serde(default = "default_cache_size")]
    pub cache_size: u64,
    /// How often remote keys are refreshed in the background.
    #[serde(default = "default_refresh")]
    pub refresh_interval: HumanDuration,
    /// The least time between two fetches caused by an unknown `kid` (or a failed fetch).
    #[serde(default = "default_min_refresh")]
    pub min_refresh_interval: HumanDuration,
    /// Timeout of one JWKS or discovery fetch.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: HumanDuration,
    /// Extra CA certificates (PEM) for fetching keys over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Serve OAuth 2.0 Protected Resource Metadata (RFC 9728) for this resource and name it in
    /// every challenge (`resource_metadata`), as MCP's authorization spec asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_resource: Option<ProtectedResourceConfig>,
}

fn default_algorithms() -> Vec<String> {
    [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
fn default_leeway() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_realm() -> String {
    "stoa".into()
}
fn default_cache_size() -> u64 {
    10_000
}
fn default_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_min_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_fetch_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl JwtConfig {
    /// The config the Keycloak env vars describe: discovery on `<url>/realms/<realm>`.
    pub fn keycloak(url: &str, realm: &str, client_id: &str) -> Self {
        let issuer = format!("{}/realms/{realm}", url.trim_end_matches('/'));
        let mut cfg: JwtConfig =
            serde_json::from_value(serde_json::json!({ "issuer": issuer })).expect("defaults");
        cfg.audiences = vec![client_id.to_string()];
        cfg.client_id = Some(client_id.to_string());
        cfg
    }
}
