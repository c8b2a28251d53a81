//! `jwt` filter: verifies bearer tokens (JWS) and puts the caller's identity into the request
//! context. Allowed algorithms come from config and each key, never from the token; keys come
//! from a JWKS URL, OIDC discovery on the issuer, a local JWKS or PEM file, or an HMAC secret.
//! Remote keys are cached, refreshed in the background and on an unknown `kid` (rate limited),
//! and kept when the issuer is down. Verified tokens are cached by SHA-256 until their `exp`.
//! Failures answer 401/403 with an RFC 6750 `WWW-Authenticate` challenge.
#![deny(clippy::indexing_slicing, clippy::string_slice)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use once_cell::sync::Lazy;
use pingora_core::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::context::{Identity, RequestCtx, RouteAuth};
use crate::filter::{phase, Filter, FilterAction, LocalResponse};
use crate::metrics::FILTER_METRICS;
use crate::protected_resource::{ProtectedResource, ProtectedResourceConfig};
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

/// One verification key with the validation rules it may be used with.
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

impl VerifyKey {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.validation.algorithms.contains(&alg)
    }
}

struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    /// Bumped on every successful fetch.
    generation: u64,
    fetched: Option<Instant>,
}

/// Where remote keys come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RemoteSource {
    Jwks(String),
    Discovery(String),
}

/// What a key must satisfy; shared by every key of one filter.
#[derive(Clone)]
struct KeyRules {
    allowed: Vec<Algorithm>,
    base: Validation,
}

/// Keys fetched from the network, shared by every `jwt` filter (and config version) with the
/// same source, so a reload does not refetch them and an issuer outage does not lose them.
struct RemoteKeys {
    source: RemoteSource,
    client: reqwest::Client,
    timeout: Duration,
    /// The raw JWKs of the last good fetch.
    jwks: ArcSwap<(u64, Option<Instant>, Vec<Jwk>)>,
    /// The last fetch attempt (successful or not), for rate limiting.
    last_attempt: Mutex<Option<Instant>>,
    refreshing: AtomicBool,
    fetch_lock: tokio::sync::Mutex<()>,
    /// A fetch attempt has finished (successfully or not).
    attempted: AtomicBool,
}

static REMOTE_KEYS: Lazy<Mutex<Vec<Weak<RemoteKeys>>>> = Lazy::new(|| Mutex::new(Vec::new()));

impl RemoteKeys {
    fn shared(source: RemoteSource, client: reqwest::Client, timeout: Duration) -> Arc<Self> {
        let mut all = REMOTE_KEYS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        if let Some(existing) = all
            .iter()
            .filter_map(Weak::upgrade)
            .find(|r| r.source == source)
        {
            return existing;
        }
        let keys = Arc::new(RemoteKeys {
            source,
            client,
            timeout,
            jwks: ArcSwap::from_pointee((0, None, Vec::new())),
            last_attempt: Mutex::new(None),
            refreshing: AtomicBool::new(false),
            fetch_lock: tokio::sync::Mutex::new(()),
            attempted: AtomicBool::new(false),
        });
        all.push(Arc::downgrade(&keys));
        keys
    }

    fn since_last_attempt(&self) -> Option<Duration> {
        self.last_attempt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    /// Fetch now (on the background runtime); on failure the previous keys stay.
    async fn fetch(self: &Arc<Self>) -> bool {
        *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let me = self.clone();
        let result = crate::background::handle()
            .spawn(async move { me.download().await })
            .await
            .unwrap_or_else(|e| Err(format!("fetch task failed: {e}")));
        self.attempted.store(true, Ordering::Release);
        match result {
            Ok(keys) => {
                let generation = self.jwks.load().0 + 1;
                info!(source = ?self.source, keys = keys.len(), "signing keys fetched");
                self.jwks
                    .store(Arc::new((generation, Some(Instant::now()), keys)));
                FILTER_METRICS
                    .jwks_refreshes
                    .with_label_values(&["ok"])
                    .inc();
                true
            }
            Err(e) => {
                warn!(source = ?self.source, error = %e, "could not fetch signing keys; keeping the cached ones");
                FILTER_METRICS
                    .jwks_refreshes
                    .with_label_values(&["error"])
                    .inc();
                false
            }
        }
    }

    async fn get_json(&self, url: &str) -> std::result::Result<serde_json::Value, String> {
        let resp = self
            .client
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        resp.json()
            .await
            .map_err(|e| format!("GET {url}: invalid JSON: {e}"))
    }

    async fn download(&self) -> std::result::Result<Vec<Jwk>, String> {
        let jwks_url = match &self.source {
            RemoteSource::Jwks(url) => url.clone(),
            RemoteSource::Discovery(issuer) => {
                let url = format!("{issuer}/.well-known/openid-configuration");
                let doc = self.get_json(&url).await?;
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer.as_str()) {
                    return Err(format!(
                        "{url}: the document's issuer is not `{issuer}` (OpenID Connect Discovery 1.0 §4.3)"
                    ));
                }
                doc.get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("{url}: no jwks_uri"))?
                    .to_string()
            }
        };
        let doc = self.get_json(&jwks_url).await?;
        parse_jwks(&doc)
    }
}

/// The keys of a JWKS document; entries that are not signature keys or cannot be read are
/// skipped (and logged) rather than failing the whole set.
fn parse_jwks(doc: &serde_json::Value) -> std::result::Result<Vec<Jwk>, String> {
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWKS document (no `keys` array)")?;
    let mut out = Vec::new();
    for k in keys {
        if k.get("use")
            .and_then(|u| u.as_str())
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        match serde_json::from_value::<Jwk>(k.clone()) {
            Ok(jwk) => out.push(jwk),
            Err(e) => warn!(kid = ?k.get("kid"), error = %e, "skipping an unreadable JWK"),
        }
    }
    Ok(out)
}

fn parse_algorithm(s: &str) -> std::result::Result<Algorithm, String> {
    s.parse::<Algorithm>()
        .map_err(|_| format!("algorithms: unknown algorithm `{s}`"))
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The algorithms a JWK may verify: its own type's (and curve's), narrowed by its `alg` and by
/// the filter's allowed list. Symmetric (`oct`) keys from a JWKS are never used.
fn jwk_algorithms(jwk: &Jwk, allowed: &[Algorithm]) -> Vec<Algorithm> {
    use Algorithm::*;
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[ES256],
            EllipticCurve::P384 => &[ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(_) => &[EdDSA],
        _ => &[],
    };
    let declared = jwk
        .common
        .key_algorithm
        .and_then(|ka| ka.to_string().parse::<Algorithm>().ok());
    by_type
        .iter()
        .copied()
        .filter(|a| allowed.contains(a) && declared.is_none_or(|d| d == *a))
        .collect()
}

fn verify_key(
    kid: Option<String>,
    key: DecodingKey,
    algs: Vec<Algorithm>,
    rules: &KeyRules,
) -> Option<Arc<VerifyKey>> {
    if algs.is_empty() {
        return None;
    }
    let mut validation = rules.base.clone();
    validation.algorithms = algs;
    Some(Arc::new(VerifyKey {
        kid,
        key,
        validation,
    }))
}

fn keys_from_jwks(jwks: &[Jwk], rules: &KeyRules) -> Vec<Arc<VerifyKey>> {
    jwks.iter()
        .filter_map(|jwk| {
            let algs = jwk_algorithms(jwk, &rules.allowed);
            let key = DecodingKey::from_jwk(jwk).ok()?;
            verify_key(jwk.common.key_id.clone(), key, algs, rules)
        })
        .collect()
}

/// Keys from config (file, PEM, secret) plus, when configured, the shared remote keys.
struct KeyStore {
    local: Vec<Arc<VerifyKey>>,
    remote: Option<Arc<RemoteKeys>>,
    rules: KeyRules,
    /// Remote keys turned into verification keys, for one remote generation.
    built: ArcSwap<KeySet>,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
}

enum KeyLookup {
    Found(Vec<Arc<VerifyKey>>),
    NoKey,
    Unavailable,
}

impl KeyStore {
    fn current(&self) -> Arc<KeySet> {
        let Some(remote) = &self.remote else {
            return self.built.load_full();
        };
        let raw = remote.jwks.load();
        let built = self.built.load_full();
        if built.generation == raw.0 {
            return built;
        }
        let mut keys = self.local.clone();
        keys.extend(keys_from_jwks(&raw.2, &self.rules));
        let set = Arc::new(KeySet {
            keys,
            generation: raw.0,
            fetched: raw.1,
        });
        self.built.store(set.clone());
        set
    }

    fn candidates(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<VerifyKey>> {
        set.keys
            .iter()
            .filter(|k| {
                k.accepts(alg) && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            })
            .cloned()
            .collect()
    }

    /// Start a background refresh when the keys are older than the refresh interval.
    fn maybe_refresh_in_background(&self, set: &KeySet) {
        let Some(remote) = &self.remote else { return };
        let stale = set
            .fetched
            .is_none_or(|t| t.elapsed() >= self.refresh_interval);
        let may = remote
            .since_last_attempt()
            .is_none_or(|t| t >= self.min_refresh_interval.min(self.refresh_interval));
        if stale && may && !remote.refreshing.swap(true, Ordering::AcqRel) {
            let remote = remote.clone();
            crate::background::handle().spawn(async move {
                remote.fetch().await;
                remote.refreshing.store(false, Ordering::Release);
            });
        }
    }

    /// Why requests cannot be verified yet: the first fetch of remote keys has not finished. (A
    /// failed first fetch counts as finished: the gateway then answers 503 per request, and
    /// readiness does not wait on an issuer that may stay down.)
    fn not_ready(&self) -> Option<String> {
        let remote = self.remote.as_ref()?;
        (remote.jwks.load().1.is_none() && !remote.attempted.load(Ordering::Acquire))
            .then(|| format!("jwt: fetching signing keys from {:?}", remote.source))
    }

    /// Start fetching now (used when a config version becomes active).
    fn prefetch(&self) {
        if let Some(remote) = &self.remote {
            if remote.jwks.load().1.is_none() && !remote.refreshing.swap(true, Ordering::AcqRel) {
                let remote = remote.clone();
                crate::background::handle().spawn(async move {
                    remote.fetch().await;
                    remote.refreshing.store(false, Ordering::Release);
                });
            }
        }
    }

    async fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup {
        let set = self.current();
        self.maybe_refresh_in_background(&set);
        let found = Self::candidates(&set, kid, alg);
        if !found.is_empty() {
            return KeyLookup::Found(found);
        }
        let Some(remote) = &self.remote else {
            return KeyLookup::NoKey;
        };
        // No key yet, or an unknown kid (a rotation): fetch on demand, at most once per
        // `min_refresh_interval`, one fetch at a time.
        let _guard = remote.fetch_lock.lock().await;
        let set = self.current();
        let mut found = Self::candidates(&set, kid, alg);
        if found.is_empty()
            && remote
                .since_last_attempt()
                .is_none_or(|t| t >= self.min_refresh_interval)
        {
            remote.fetch().await;
            found = Self::candidates(&self.current(), kid, alg);
        }
        if !found.is_empty() {
            KeyLookup::Found(found)
        } else if self.current().fetched.is_none() && self.local.is_empty() {
            KeyLookup::Unavailable
        } else {
            KeyLookup::NoKey
        }
    }
}

/// Why a token was refused: the metric label and the `error_description`.
struct Refusal {
    label: &'static str,
    description: &'static str,
}

/// Whether a compact JWS names critical header extensions (`crit`, RFC 7515 §4.1.11): none are
/// implemented here, so any (or a malformed `crit`) makes the token invalid.
fn has_critical_extensions(token: &str) -> bool {
    use base64::Engine;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false; // malformed: refused by the header parser next
    };
    serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|h| h.get("crit").is_some())
}

/// A raw query string without every `name=…` pair (no decoding: the name is matched as sent).
fn without_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect::<Vec<_>>()
        .join("&")
}

const MALFORMED: Refusal = Refusal {
    label: "malformed",
    description: "the token is malformed",
};

fn refusal(kind: &ErrorKind) -> Refusal {
    let (label, description) = match kind {
        ErrorKind::ExpiredSignature => ("expired", "the token expired"),
        ErrorKind::ImmatureSignature => ("not_yet_valid", "the token is not valid yet"),
        ErrorKind::InvalidIssuer => ("wrong_issuer", "the token's issuer is not accepted"),
        ErrorKind::InvalidAudience => ("wrong_audience", "the token's audience is not accepted"),
        ErrorKind::MissingRequiredClaim(_) => (
            "missing_claim",
            "the token lacks a required claim (exp, iss or aud)",
        ),
        ErrorKind::InvalidSignature => ("bad_signature", "the token's signature is invalid"),
        ErrorKind::InvalidAlgorithm => ("bad_algorithm", "the token's algorithm is not allowed"),
        _ => return MALFORMED,
    };
    Refusal { label, description }
}

struct ForwardedClaim {
    header: HeaderName,
    claim: String,
}

/// Cached verification results, keyed by the token's SHA-256.
type TokenCache = moka::sync::Cache<[u8; 32], Arc<Identity>>;

struct ExpireAtExp;

impl moka::Expiry<[u8; 32], Arc<Identity>> for ExpireAtExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Identity>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.expires_at.saturating_sub(unix_now()),
        ))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct Jwt {
    keys: KeyStore,
    allowed: Vec<Algorithm>,
    leeway: u64,
    from_header: Option<HeaderName>,
    from_cookie: Option<String>,
    from_query: Option<String>,
    tenant_claim: String,
    role_clients: Vec<String>,
    forward: Vec<ForwardedClaim>,
    required_scopes: Vec<String>,
    required_roles: Vec<String>,
    default_auth: RouteAuth,
    realm: String,
    cache: Option<TokenCache>,
    protected_resource: Option<ProtectedResource>,
}

/// The outcome of checking one request's credentials.
enum Verdict {
    /// Verified; `true` when the token cache answered.
    Ok(Arc<Identity>, bool),
    Missing,
    Invalid(Refusal),
    Unavailable,
}

impl Jwt {
    pub fn build(cfg: &JwtConfig) -> std::result::Result<Self, String> {
        if cfg.issuer.is_empty() {
            return Err("issuer: must not be empty".into());
        }
        if cfg.audiences.is_empty() {
            return Err(
                "audiences: at least one audience is required (tokens must carry `aud`)".into(),
            );
        }
        let allowed = cfg
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let Some(&first) = allowed.first() else {
            return Err("algorithms: at least one algorithm is required".into());
        };
        if allowed.iter().any(|a| is_hmac(*a)) && cfg.hmac_secret.is_none() {
            return Err("algorithms: HS256/HS384/HS512 need `hmac_secret`".into());
        }
        let mut base = Validation::new(first);
        base.leeway = cfg.leeway.0.as_secs();
        base.validate_exp = true;
        base.validate_nbf = true;
        base.validate_aud = true;
        base.set_issuer(&[cfg.issuer.trim_end_matches('/')]);
        base.set_audience(&cfg.audiences);
        base.set_required_spec_claims(&["exp", "iss", "aud"]);
        let rules = KeyRules {
            allowed: allowed.clone(),
            base,
        };

        let mut local = Vec::new();
        if let Some(secret) = &cfg.hmac_secret {
            let algs: Vec<_> = allowed.iter().copied().filter(|a| is_hmac(*a)).collect();
            if algs.is_empty() {
                return Err("hmac_secret: add HS256, HS384 or HS512 to `algorithms`".into());
            }
            local.extend(verify_key(
                None,
                DecodingKey::from_secret(secret.as_bytes()),
                algs,
                &rules,
            ));
        }
        if let Some(path) = &cfg.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("jwks_file: cannot read `{path}`: {e}"))?;
            let doc: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("jwks_file: `{path}`: {e}"))?;
            let jwks = parse_jwks(&doc).map_err(|e| format!("jwks_file: `{path}`: {e}"))?;
            let keys = keys_from_jwks(&jwks, &rules);
            if keys.is_empty() {
                return Err(format!(
                    "jwks_file: `{path}` has no key usable with the allowed algorithms"
                ));
            }
            local.extend(keys);
        }
        if let Some(path) = &cfg.public_key_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("public_key_file: cannot read `{path}`: {e}"))?;
            local.push(
                pem_key(&pem, &rules).map_err(|e| format!("public_key_file: `{path}`: {e}"))?,
            );
        }

        let remote_source = if let Some(url) = &cfg.jwks_url {
            Some(RemoteSource::Jwks(url.clone()))
        } else if local.is_empty() {
            Some(RemoteSource::Discovery(
                cfg.issuer.trim_end_matches('/').to_string(),
            ))
        } else {
            None
        };
        let remote = match remote_source {
            Some(source) => {
                let mut builder = reqwest::Client::builder()
                    .timeout(cfg.fetch_timeout.0)
                    .connect_timeout(cfg.fetch_timeout.0)
                    .user_agent(concat!("stoa-gateway/", env!("CARGO_PKG_VERSION")));
                if let Some(ca) = &cfg.ca_file {
                    let pem = std::fs::read(ca)
                        .map_err(|e| format!("ca_file: cannot read `{ca}`: {e}"))?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| format!("ca_file: `{ca}`: {e}"))?;
                    for c in certs {
                        builder = builder.add_root_certificate(c);
                    }
                }
                let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
                Some(RemoteKeys::shared(source, client, cfg.fetch_timeout.0))
            }
            None => None,
        };

        let header = |name: &str, what: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{what}: invalid header name `{name}`"))
        };
        let forward = cfg
            .forward_claims
            .iter()
            .map(|(h, claim)| {
                Ok(ForwardedClaim {
                    header: header(h, "forward_claims")?,
                    claim: claim.clone(),
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let cache = (cfg.cache_size > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cfg.cache_size)
                .expire_after(ExpireAtExp)
                .build()
        });
        let built = ArcSwap::from_pointee(KeySet {
            keys: local.clone(),
            generation: 0,
            fetched: None,
        });
        Ok(Jwt {
            keys: KeyStore {
                local,
                remote,
                rules,
                built,
                refresh_interval: cfg.refresh_interval.0,
                min_refresh_interval: cfg.min_refresh_interval.0,
            },
            allowed,
            leeway: cfg.leeway.0.as_secs(),
            from_header: cfg
                .from_header
                .as_deref()
                .map(|h| header(h, "from_header"))
                .transpose()?,
            from_cookie: cfg.from_cookie.clone(),
            from_query: cfg.from_query.clone(),
            tenant_claim: cfg.tenant_claim.clone(),
            role_clients: cfg
                .client_id
                .clone()
                .map(|c| vec![c])
                .unwrap_or_else(|| cfg.audiences.clone()),
            forward,
            required_scopes: cfg.required_scopes.clone(),
            required_roles: cfg.required_roles.clone(),
            default_auth: cfg.auth,
            realm: cfg.realm.clone(),
            cache,
            protected_resource: cfg
                .protected_resource
                .as_ref()
                .map(|p| ProtectedResource::build(p, &cfg.issuer, &cfg.required_scopes))
                .transpose()
                .map_err(|e| format!("protected_resource.{e}"))?,
        })
    }

    /// The bearer token of the request, from `Authorization` or the configured places.
    fn token<'a>(&self, req: &'a RequestHeader) -> Option<&'a str> {
        let bearer = |v: &'a str| -> Option<&'a str> {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim())
                .filter(|t| !t.is_empty())
        };
        if let Some(t) = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
        {
            return Some(t);
        }
        if let Some(h) = &self.from_header {
            if let Some(v) = req.headers.get(h).and_then(|v| v.to_str().ok()) {
                let v = v.trim();
                return Some(bearer(v).unwrap_or(v)).filter(|t| !t.is_empty());
            }
        }
        if let Some(name) = &self.from_cookie {
            for header in req.headers.get_all(http::header::COOKIE) {
                let Ok(v) = header.to_str() else { continue };
                for pair in v.split(';') {
                    if let Some((k, val)) = pair.trim().split_once('=') {
                        if k == name && !val.is_empty() {
                            return Some(val);
                        }
                    }
                }
            }
        }
        if let Some(name) = &self.from_query {
            if let Some(v) = crate::template::query_param(req.uri.query().unwrap_or(""), name) {
                return Some(v).filter(|t| !t.is_empty());
            }
        }
        None
    }

    /// Verify one token as a request would (cache included): the caller's identity or why the
    /// token is refused. Used by the benchmarks.
    pub async fn verify_token(
        &self,
        token: &str,
    ) -> std::result::Result<Arc<Identity>, &'static str> {
        match self.verify(token).await {
            Verdict::Ok(identity, _) => Ok(identity),
            Verdict::Missing => Err("missing"),
            Verdict::Invalid(r) => Err(r.label),
            Verdict::Unavailable => Err("keys_unavailable"),
        }
    }

    async fn verify(&self, token: &str) -> Verdict {
        let digest: Option<[u8; 32]> = self.cache.as_ref().map(|_| Sha256::digest(token).into());
        if let (Some(cache), Some(d)) = (&self.cache, &digest) {
            if let Some(identity) = cache.get(d) {
                if identity.expires_at + self.leeway > unix_now() {
                    return Verdict::Ok(identity, true);
                }
                cache.invalidate(d);
            }
        }
        if has_critical_extensions(token) {
            return Verdict::Invalid(Refusal {
                label: "unsupported_crit",
                description:
                    "the token names critical header extensions this gateway does not implement",
            });
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => return Verdict::Invalid(MALFORMED),
        };
        if !self.allowed.contains(&header.alg) {
            return Verdict::Invalid(refusal(&ErrorKind::InvalidAlgorithm));
        }
        let keys = match self.keys.lookup(header.kid.as_deref(), header.alg).await {
            KeyLookup::Found(k) => k,
            KeyLookup::NoKey => {
                return Verdict::Invalid(Refusal {
                    label: "unknown_key",
                    description: "no signing key matches the token",
                })
            }
            KeyLookup::Unavailable => return Verdict::Unavailable,
        };
        let mut last = ErrorKind::InvalidSignature;
        for key in keys {
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &key.validation) {
                Ok(data) => {
                    let identity = Arc::new(self.identity(data.claims));
                    if let (Some(cache), Some(d)) = (&self.cache, digest) {
                        cache.insert(d, identity.clone());
                    }
                    return Verdict::Ok(identity, false);
                }
                Err(e) => {
                    last = e.into_kind();
                    if !matches!(last, ErrorKind::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        Verdict::Invalid(refusal(&last))
    }

    fn identity(&self, claims: serde_json::Value) -> Identity {
        let string_list = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut identity = Identity {
            subject: claims.get("sub").and_then(|v| v.as_str()).map(String::from),
            expires_at: claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0),
            claims,
            ..Identity::default()
        };
        identity.tenant = match identity.claim(&self.tenant_claim) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let mut roles = string_list(identity.claims.get("roles"));
        roles.extend(string_list(identity.claim("realm_access.roles")));
        for client in &self.role_clients {
            roles.extend(string_list(
                identity
                    .claims
                    .get("resource_access")
                    .and_then(|r| r.get(client))
                    .and_then(|c| c.get("roles")),
            ));
        }
        roles.sort();
        roles.dedup();
        identity.roles = roles;
        identity.scopes = match identity.claims.get("scope").or(identity.claims.get("scp")) {
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            other => string_list(other),
        };
        identity
    }

    fn challenge(&self, error: Option<(&str, &str)>) -> String {
        let mut v = format!("Bearer realm=\"{}\"", self.realm);
        if let Some(pr) = &self.protected_resource {
            v.push_str(&format!(", resource_metadata=\"{}\"", pr.metadata_url));
        }
        if let Some((code, description)) = error {
            v.push_str(&format!(
                ", error=\"{code}\", error_description=\"{description}\""
            ));
        }
        v
    }

    fn unauthorized(&self, description: Option<&str>) -> LocalResponse {
        let message = description.unwrap_or("a bearer token is required");
        LocalResponse::json_error(401, message).with_header(
            "www-authenticate",
            &self.challenge(description.map(|d| ("invalid_token", d))),
        )
    }
}

/// A PEM public key of any supported type, with the algorithms of its type.
fn pem_key(pem: &[u8], rules: &KeyRules) -> std::result::Result<Arc<VerifyKey>, String> {
    use Algorithm::*;
    type PemParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let attempts: [(PemParser, &[Algorithm]); 3] = [
        (
            DecodingKey::from_rsa_pem,
            &[RS256, RS384, RS512, PS256, PS384, PS512],
        ),
        (DecodingKey::from_ec_pem, &[ES256, ES384]),
        (DecodingKey::from_ed_pem, &[EdDSA]),
    ];
    for (parse, algs) in attempts {
        if let Ok(key) = parse(pem) {
            let algs: Vec<_> = algs
                .iter()
                .copied()
                .filter(|a| rules.allowed.contains(a))
                .collect();
            return verify_key(None, key, algs, rules)
                .ok_or_else(|| "none of the allowed algorithms fits this key's type".to_string());
        }
    }
    Err("not an RSA, EC or Ed25519 public key in PEM form".into())
}

fn has_all(have: &[String], need: &[String]) -> bool {
    need.iter().all(|n| have.contains(n))
}

#[async_trait]
impl Filter for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn phases(&self) -> u8 {
        phase::REQUEST
            | if self.forward.is_empty() && self.from_query.is_none() {
                0
            } else {
                phase::UPSTREAM_REQUEST
            }
    }

    fn activate(&self) {
        self.keys.prefetch();
    }

    fn not_ready(&self) -> Option<String> {
        self.keys.not_ready()
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        if let Some(pr) = &self.protected_resource {
            let req = session.req_header();
            if matches!(req.method.as_str(), "GET" | "HEAD") && pr.serves(req.uri.path()) {
                let mut resp = LocalResponse::new(200)
                    .with_header("content-type", "application/json")
                    .with_header("cache-control", "max-age=300");
                resp.body = pr.document.clone();
                return Ok(FilterAction::Respond(resp));
            }
        }
        let access = ctx.route.as_ref().and_then(|r| r.access.clone());
        let auth = access
            .as_ref()
            .and_then(|a| a.auth)
            .unwrap_or(self.default_auth);
        if auth == RouteAuth::Anonymous {
            return Ok(FilterAction::Continue);
        }
        let verdict = match self.token(session.req_header()) {
            None => Verdict::Missing,
            Some(token) => self.verify(token).await,
        };
        let m = &FILTER_METRICS.jwt_validations;
        let (identity, cached) = match verdict {
            Verdict::Ok(identity, cached) => (identity, cached),
            Verdict::Missing if auth == RouteAuth::Optional => {
                m.with_label_values(&["anonymous"]).inc();
                return Ok(FilterAction::Continue);
            }
            Verdict::Missing => {
                m.with_label_values(&["missing"]).inc();
                ctx.reject("jwt", "missing_token");
                return Ok(FilterAction::Respond(self.unauthorized(None)));
            }
            Verdict::Invalid(r) => {
                m.with_label_values(&[r.label]).inc();
                ctx.reject("jwt", r.label);
                return Ok(FilterAction::Respond(
                    self.unauthorized(Some(r.description)),
                ));
            }
            Verdict::Unavailable => {
                m.with_label_values(&["keys_unavailable"]).inc();
                ctx.reject("jwt", "keys_unavailable");
                return Ok(FilterAction::Respond(
                    LocalResponse::json_error(
                        503,
                        "the identity provider's signing keys are unavailable",
                    )
                    .with_header("retry-after", "5"),
                ));
            }
        };
        let (scopes, roles) = match &access {
            Some(a) => (&a.required_scopes, &a.required_roles),
            None => (&Vec::new(), &Vec::new()),
        };
        if !has_all(&identity.scopes, &self.required_scopes)
            || !has_all(&identity.scopes, scopes)
            || !has_all(&identity.roles, &self.required_roles)
            || !has_all(&identity.roles, roles)
        {
            m.with_label_values(&["insufficient_scope"]).inc();
            ctx.reject("jwt", "insufficient_scope");
            let mut needed: Vec<&str> = self
                .required_scopes
                .iter()
                .chain(scopes)
                .map(String::as_str)
                .collect();
            needed.dedup();
            let mut challenge = self.challenge(Some((
                "insufficient_scope",
                "the token lacks a required scope or role",
            )));
            if !needed.is_empty() {
                challenge.push_str(&format!(", scope=\"{}\"", needed.join(" ")));
            }
            return Ok(FilterAction::Respond(
                LocalResponse::json_error(403, "the token lacks a required scope or role")
                    .with_header("www-authenticate", &challenge),
            ));
        }
        m.with_label_values(&[if cached { "ok_cached" } else { "ok" }])
            .inc();
        ctx.identity = Some(identity);
        Ok(FilterAction::Continue)
    }

    fn on_upstream_request(
        &self,
        _session: &Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A token taken from the query goes no further than a header token would.
        if let Some(name) = &self.from_query {
            if let Some(query) = upstream.uri.query() {
                let kept = without_query_param(query, name);
                if kept.len() != query.len() {
                    let mut pq = upstream.uri.path().to_string();
                    if !kept.is_empty() {
                        pq.push('?');
                        pq.push_str(&kept);
                    }
                    let uri = pq.parse::<http::Uri>().map_err(|e| {
                        pingora_core::Error::because(
                            pingora_core::ErrorType::InternalError,
                            "query without the token",
                            e,
                        )
                    })?;
                    upstream.set_uri(uri);
                }
            }
        }
        for f in &self.forward {
            upstream.remove_header(&f.header);
            let Some(identity) = &ctx.identity else {
                continue;
            };
            let value = match f.claim.as_str() {
                "tenant" => identity.tenant.clone(),
                "sub" => identity.subject.clone(),
                "roles" => Some(identity.roles.join(",")),
                "scopes" => Some(identity.scopes.join(" ")),
                path => match identity.claim(path) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Null) | None => None,
                    Some(v) => Some(v.to_string()),
                },
            };
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                upstream.insert_header(f.header.clone(), v)?;
            }
        }
        Ok(())
    }
}
