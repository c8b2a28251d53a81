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
use crate::telemetry::SpanRef;

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
        match self.verify(token, None).await {
            Verdict::Ok(identity, _) => Ok(identity),
            Verdict::Missing => Err("missing"),
            Verdict::Invalid(r) => Err(r.label),
            Verdict::Unavailable => Err("keys_unavailable"),
        }
    }

    /// `span`: the request's span, when traced (an on-demand key fetch is a client span of it).
    pub(super) async fn verify(&self, token: &str, span: Option<&SpanRef>) -> Verdict {
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
        let keys = match self
            .keys
            .lookup(header.kid.as_deref(), header.alg, span)
            .await
        {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::BuildContext;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::{json, Value};

    const ISSUER: &str = "https://idp.example/realms/stoa";
    const AUDIENCE: &str = "stoa-api";
    const SECRET: &str = "test-secret-0123456789abcdef0123456789";
    /// An Ed25519 key pair made for these tests only.
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEILpyypc6zGl+hPWkZG2RBp120BPhCGXqKuqxKI2lLSoL\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAG2guFXgBJvQIBRN5smvuZ8s3PA5FWKx0vZdzlUoXKMU=\n-----END PUBLIC KEY-----\n";

    /// `base` with the fields of `extra` set (a `null` removes the field).
    fn merged(mut base: Value, extra: Value) -> Value {
        let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) else {
            panic!("objects expected");
        };
        for (k, v) in e {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
        base
    }

    fn config(extra: Value) -> JwtConfig {
        let base = json!({
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": ["HS256"],
            "hmac_secret": SECRET,
        });
        serde_json::from_value(merged(base, extra)).expect("a valid jwt config")
    }

    fn filter(extra: Value) -> Jwt {
        Jwt::build(&config(extra), &mut BuildContext::standalone()).expect("the filter builds")
    }

    /// Claims valid now (a null in `extra` removes a claim).
    fn claims(extra: Value) -> Value {
        let now = unix_now();
        merged(
            json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}),
            extra,
        )
    }

    fn hs256(claims: &Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("signed")
    }

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    /// A compact JWS with any header, HMAC-SHA256-signed with `secret` by hand (for headers
    /// the `jsonwebtoken` encoder cannot write).
    fn hand_signed(header: &Value, claims: &Value, secret: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(input.as_bytes());
        let sig =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{input}.{sig}")
    }

    async fn check(jwt: &Jwt, token: &str) -> std::result::Result<Arc<Identity>, &'static str> {
        jwt.verify_token(token).await
    }

    #[tokio::test]
    async fn a_good_token_gives_the_callers_identity() {
        let jwt = filter(json!({}));
        let token = hs256(&claims(json!({"tenant": "acme", "scope": "read"})), SECRET);
        let identity = check(&jwt, &token).await.expect("accepted");
        assert_eq!(identity.subject.as_deref(), Some("alice"));
        assert_eq!(identity.tenant.as_deref(), Some("acme"));
        assert_eq!(identity.scopes, ["read"]);
        assert!(identity.expires_at > unix_now());
    }

    #[tokio::test]
    async fn a_wrong_signature_is_refused() {
        let jwt = filter(json!({}));
        let other = hs256(&claims(json!({})), "another-secret-0123456789abcdef");
        assert_eq!(check(&jwt, &other).await.unwrap_err(), "bad_signature");
        // A good token whose payload was changed after signing.
        let good = hs256(&claims(json!({})), SECRET);
        let (header, rest) = good.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged = format!(
            "{header}.{}.{signature}",
            b64(&claims(json!({"sub": "admin"})))
        );
        assert_eq!(check(&jwt, &forged).await.unwrap_err(), "bad_signature");
    }

    #[tokio::test]
    async fn expiry_counts_the_leeway() {
        let jwt = filter(json!({"leeway": "30s"}));
        let now = unix_now();
        let expired = hs256(&claims(json!({"exp": now - 120})), SECRET);
        assert_eq!(check(&jwt, &expired).await.unwrap_err(), "expired");
        let within_leeway = hs256(&claims(json!({"exp": now - 5})), SECRET);
        assert!(check(&jwt, &within_leeway).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_not_yet_valid_is_refused() {
        let jwt = filter(json!({"leeway": "30s"}));
        let now = unix_now();
        let later = hs256(&claims(json!({"nbf": now + 600})), SECRET);
        assert_eq!(check(&jwt, &later).await.unwrap_err(), "not_yet_valid");
        let within_leeway = hs256(&claims(json!({"nbf": now + 5})), SECRET);
        assert!(check(&jwt, &within_leeway).await.is_ok());
    }

    #[tokio::test]
    async fn issuer_and_audience_must_match() {
        let jwt = filter(json!({"audiences": [AUDIENCE, "second"]}));
        let issuer = hs256(&claims(json!({"iss": "https://evil.example"})), SECRET);
        assert_eq!(check(&jwt, &issuer).await.unwrap_err(), "wrong_issuer");
        let audience = hs256(&claims(json!({"aud": "someone-else"})), SECRET);
        assert_eq!(check(&jwt, &audience).await.unwrap_err(), "wrong_audience");
        // One accepted audience in a list is enough.
        let list = hs256(&claims(json!({"aud": ["someone-else", "second"]})), SECRET);
        assert!(check(&jwt, &list).await.is_ok());
    }

    #[tokio::test]
    async fn a_trailing_slash_on_the_configured_issuer_is_ignored() {
        let jwt = filter(json!({"issuer": format!("{ISSUER}/")}));
        assert!(check(&jwt, &hs256(&claims(json!({})), SECRET))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn exp_iss_and_aud_are_required() {
        let jwt = filter(json!({}));
        for claim in ["exp", "iss", "aud"] {
            let token = hs256(&claims(json!({ claim: null })), SECRET);
            assert_eq!(
                check(&jwt, &token).await.unwrap_err(),
                "missing_claim",
                "without {claim}"
            );
        }
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let jwt = filter(json!({}));
        let body = b64(&claims(json!({})));
        for header in [json!({"alg": "none", "typ": "JWT"}), json!({"alg": "None"})] {
            let unsigned = format!("{}.{body}.", b64(&header));
            assert_eq!(check(&jwt, &unsigned).await.unwrap_err(), "malformed");
        }
    }

    #[tokio::test]
    async fn algorithms_come_from_the_config_and_the_key() {
        // HS512 is not allowed: refused before any key is tried.
        let jwt = filter(json!({}));
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &claims(json!({})),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(check(&jwt, &hs512).await.unwrap_err(), "bad_algorithm");
        // RS256 is allowed but the only key is the HMAC secret: never used for RS256 (the
        // algorithm confusion attack), whatever the signature.
        let jwt = filter(json!({"algorithms": ["HS256", "RS256"]}));
        let rs256 = hand_signed(&json!({"alg": "RS256"}), &claims(json!({})), SECRET);
        assert_eq!(check(&jwt, &rs256).await.unwrap_err(), "unknown_key");
    }

    #[tokio::test]
    async fn critical_header_extensions_are_refused() {
        let jwt = filter(json!({}));
        let plain = hand_signed(&json!({"alg": "HS256"}), &claims(json!({})), SECRET);
        assert!(
            check(&jwt, &plain).await.is_ok(),
            "the hand-signed token is valid"
        );
        for crit in [json!(["exp"]), json!([]), json!("not-a-list")] {
            let header = json!({"alg": "HS256", "crit": crit, "exp": 1});
            let token = hand_signed(&header, &claims(json!({})), SECRET);
            assert_eq!(check(&jwt, &token).await.unwrap_err(), "unsupported_crit");
        }
        assert!(has_critical_extensions(&format!(
            "{}.e30.",
            b64(&json!({"crit": ["b64"]}))
        )));
        assert!(!has_critical_extensions("%%%.e30."));
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let jwt = filter(json!({}));
        for token in ["not-a-token", "a.b.c", "", "...."] {
            assert_eq!(
                check(&jwt, token).await.unwrap_err(),
                "malformed",
                "{token:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_ed25519_public_key_file_verifies_eddsa() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, ED_PUBLIC).unwrap();
        let jwt = filter(json!({
            "algorithms": ["EdDSA"],
            "hmac_secret": null,
            "public_key_file": path.to_str().unwrap(),
        }));
        let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::EdDSA), &claims(json!({})), &key).unwrap();
        assert_eq!(
            check(&jwt, &token).await.unwrap().subject.as_deref(),
            Some("alice")
        );
        let mut tampered = token.clone();
        tampered.push_str("AA");
        assert_eq!(check(&jwt, &tampered).await.unwrap_err(), "bad_signature");
        let hmac = hs256(&claims(json!({})), SECRET);
        assert_eq!(check(&jwt, &hmac).await.unwrap_err(), "bad_algorithm");
        // The key's type decides what it may verify.
        let wrong = Jwt::build(
            &config(json!({
                "algorithms": ["RS256"],
                "hmac_secret": null,
                "public_key_file": path.to_str().unwrap(),
            })),
            &mut BuildContext::standalone(),
        );
        assert!(wrong
            .err()
            .unwrap()
            .contains("none of the allowed algorithms fits this key's type"));
    }

    #[tokio::test]
    async fn verified_tokens_are_cached() {
        let jwt = filter(json!({}));
        let token = hs256(&claims(json!({})), SECRET);
        assert!(matches!(
            jwt.verify(&token, None).await,
            Verdict::Ok(_, false)
        ));
        assert!(matches!(
            jwt.verify(&token, None).await,
            Verdict::Ok(_, true)
        ));
        // A refused token is not remembered.
        let bad = hs256(&claims(json!({})), "another-secret-0123456789abcdef");
        assert!(matches!(jwt.verify(&bad, None).await, Verdict::Invalid(_)));
        assert!(matches!(jwt.verify(&bad, None).await, Verdict::Invalid(_)));
        let uncached = filter(json!({"cache_size": 0}));
        assert!(matches!(
            uncached.verify(&token, None).await,
            Verdict::Ok(_, false)
        ));
        assert!(matches!(
            uncached.verify(&token, None).await,
            Verdict::Ok(_, false)
        ));
    }

    #[test]
    fn algorithm_rules_are_checked_at_build() {
        let err = |extra| {
            Jwt::build(&config(extra), &mut BuildContext::standalone())
                .err()
                .expect("refused")
        };
        assert!(err(json!({"algorithms": ["RS257"]})).contains("unknown algorithm `RS257`"));
        assert!(err(json!({"algorithms": []})).contains("at least one algorithm"));
        assert!(err(json!({"hmac_secret": null})).contains("need `hmac_secret`"));
        assert!(err(json!({"algorithms": ["RS256"], "jwks_url": null}))
            .contains("hmac_secret: add HS256"));
        assert!(err(json!({"audiences": []})).starts_with("audiences:"));
        assert!(err(json!({"issuer": ""})).starts_with("issuer:"));
    }

    #[test]
    fn refusals_name_their_cause() {
        assert_eq!(refusal(&ErrorKind::ExpiredSignature).label, "expired");
        assert_eq!(refusal(&ErrorKind::InvalidToken).label, "malformed");
        assert_eq!(
            refusal(&ErrorKind::MissingRequiredClaim("exp".into())).label,
            "missing_claim"
        );
    }
}
