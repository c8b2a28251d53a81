//! Token verification: the allowed algorithms and the validation rules every key shares
//! (`exp`, `nbf`, `iss`, `aud`, leeway), the refusal of `crit` header extensions, the check of
//! one token against the candidate keys, the cache of verified tokens, and the reason a token
//! is refused (metric label and `error_description`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use sha2::{Digest, Sha256};

use super::config::JwtConfig;
use super::jwks::KeyLookup;
use super::Jwt;
use crate::context::Identity;

/// What a key must satisfy; shared by every key of one filter.
#[derive(Clone)]
pub(super) struct KeyRules {
    pub(super) allowed: Vec<Algorithm>,
    pub(super) base: Validation,
}

fn parse_algorithm(s: &str) -> std::result::Result<Algorithm, String> {
    s.parse::<Algorithm>()
        .map_err(|_| format!("algorithms: unknown algorithm `{s}`"))
}

pub(super) fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The rules of a config's keys: its allowed algorithms and the claims every token must
/// satisfy.
pub(super) fn key_rules(cfg: &JwtConfig) -> std::result::Result<KeyRules, String> {
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
    Ok(KeyRules { allowed, base })
}

/// Why a token was refused: the metric label and the `error_description`.
pub(super) struct Refusal {
    pub(super) label: &'static str,
    pub(super) description: &'static str,
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

/// Cached verification results, keyed by the token's SHA-256.
pub(super) type TokenCache = moka::sync::Cache<[u8; 32], Arc<Identity>>;

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

/// The token cache of a config (`None` when `cache_size` is 0).
pub(super) fn token_cache(cache_size: u64) -> Option<TokenCache> {
    (cache_size > 0).then(|| {
        moka::sync::Cache::builder()
            .max_capacity(cache_size)
            .expire_after(ExpireAtExp)
            .build()
    })
}

/// The outcome of checking one request's credentials.
pub(super) enum Verdict {
    /// Verified; `true` when the token cache answered.
    Ok(Arc<Identity>, bool),
    Missing,
    Invalid(Refusal),
    Unavailable,
}

impl Jwt {
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

    pub(super) async fn verify(&self, token: &str) -> Verdict {
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
}
