//! Signing keys: where they come from (an HMAC secret, a PEM file, a local JWKS file, a JWKS
//! URL or OIDC discovery on the issuer), which algorithms each key may verify, the cache of
//! remote keys (`RemoteKeys`, a shared resource) with its background and on-demand refreshes, and the
//! lookup of the keys that may verify one token (`KeyStore`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tracing::{info, warn};

use super::config::JwtConfig;
use super::verify::{is_hmac, KeyRules};
use crate::build::BuildContext;
use crate::jwt::metrics::METRICS;
use crate::telemetry::{outbound, SpanRef};

/// One verification key with the validation rules it may be used with.
pub(super) struct VerifyKey {
    kid: Option<String>,
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
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

impl RemoteKeys {
    fn new(source: RemoteSource, client: reqwest::Client, timeout: Duration) -> Self {
        RemoteKeys {
            source,
            client,
            timeout,
            jwks: ArcSwap::from_pointee((0, None, Vec::new())),
            last_attempt: Mutex::new(None),
            refreshing: AtomicBool::new(false),
            fetch_lock: tokio::sync::Mutex::new(()),
            attempted: AtomicBool::new(false),
        }
    }

    fn since_last_attempt(&self) -> Option<Duration> {
        self.last_attempt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    /// Fetch now (on the background runtime); on failure the previous keys stay. `span`: the
    /// request that needs the keys, when traced (its calls are client spans of it).
    async fn fetch(self: &Arc<Self>, span: Option<&SpanRef>) -> bool {
        *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let me = self.clone();
        let span = span.cloned();
        let result = crate::background::handle()
            .spawn(async move { me.download(span.as_ref()).await })
            .await
            .unwrap_or_else(|e| Err(format!("fetch task failed: {e}")));
        self.attempted.store(true, Ordering::Release);
        match result {
            Ok(keys) => {
                let generation = self.jwks.load().0 + 1;
                info!(source = ?self.source, keys = keys.len(), "signing keys fetched");
                self.jwks
                    .store(Arc::new((generation, Some(Instant::now()), keys)));
                METRICS.jwks_refreshes.with_label_values(&["ok"]).inc();
                true
            }
            Err(e) => {
                warn!(source = ?self.source, error = %e, "could not fetch signing keys; keeping the cached ones");
                METRICS.jwks_refreshes.with_label_values(&["error"]).inc();
                false
            }
        }
    }

    async fn get_json(
        &self,
        url: &str,
        span: Option<&SpanRef>,
    ) -> std::result::Result<serde_json::Value, String> {
        let get = self.client.get(url).timeout(self.timeout);
        let resp = outbound::send(get, span, "jwks")
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        resp.json()
            .await
            .map_err(|e| format!("GET {url}: invalid JSON: {e}"))
    }

    async fn download(&self, span: Option<&SpanRef>) -> std::result::Result<Vec<Jwk>, String> {
        let jwks_url = match &self.source {
            RemoteSource::Jwks(url) => url.clone(),
            RemoteSource::Discovery(issuer) => {
                let url = format!("{issuer}/.well-known/openid-configuration");
                let doc = self.get_json(&url, span).await?;
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
        let doc = self.get_json(&jwks_url, span).await?;
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

/// Keys from config (file, PEM, secret) plus, when configured, the shared remote keys.
pub(super) struct KeyStore {
    local: Vec<Arc<VerifyKey>>,
    remote: Option<Arc<RemoteKeys>>,
    rules: KeyRules,
    /// Remote keys turned into verification keys, for one remote generation.
    built: ArcSwap<KeySet>,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
}

pub(super) enum KeyLookup {
    Found(Vec<Arc<VerifyKey>>),
    NoKey,
    Unavailable,
}

impl KeyStore {
    /// The keys a config names: the local ones (secret, JWKS file, PEM file) and, with
    /// `jwks_url` or without any local key, the shared remote keys of that source.
    pub(super) fn build(
        cfg: &JwtConfig,
        rules: KeyRules,
        bctx: &mut BuildContext,
    ) -> std::result::Result<Self, String> {
        let allowed = &rules.allowed;
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
                // Kept across reloads (no refetch, and an issuer outage does not lose them)
                // while the source, its CA and the timeout stay the same.
                let key = format!("{source:?}|{:?}|{:?}", cfg.ca_file, cfg.fetch_timeout.0);
                Some(bctx.shared::<RemoteKeys>(&key, || {
                    Ok(RemoteKeys::new(source, client, cfg.fetch_timeout.0))
                })?)
            }
            None => None,
        };

        let built = ArcSwap::from_pointee(KeySet {
            keys: local.clone(),
            generation: 0,
            fetched: None,
        });
        Ok(KeyStore {
            local,
            remote,
            rules,
            built,
            refresh_interval: cfg.refresh_interval.0,
            min_refresh_interval: cfg.min_refresh_interval.0,
        })
    }

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
                remote.fetch(None).await;
                remote.refreshing.store(false, Ordering::Release);
            });
        }
    }

    /// Why requests cannot be verified yet: the first fetch of remote keys has not finished. (A
    /// failed first fetch counts as finished: the gateway then answers 503 per request, and
    /// readiness does not wait on an issuer that may stay down.)
    pub(super) fn not_ready(&self) -> Option<String> {
        let remote = self.remote.as_ref()?;
        (remote.jwks.load().1.is_none() && !remote.attempted.load(Ordering::Acquire))
            .then(|| format!("jwt: fetching signing keys from {:?}", remote.source))
    }

    /// Start fetching now (used when a config version becomes active).
    pub(super) fn prefetch(&self) {
        if let Some(remote) = &self.remote {
            if remote.jwks.load().1.is_none() && !remote.refreshing.swap(true, Ordering::AcqRel) {
                let remote = remote.clone();
                crate::background::handle().spawn(async move {
                    remote.fetch(None).await;
                    remote.refreshing.store(false, Ordering::Release);
                });
            }
        }
    }

    /// The keys that may verify a token with this `kid` and `alg`, fetching remote keys on
    /// demand.
    pub(super) async fn lookup(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        span: Option<&SpanRef>,
    ) -> KeyLookup {
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
            remote.fetch(span).await;
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
