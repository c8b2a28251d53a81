//! `jwt` filter: verifies bearer tokens (JWS) and puts the caller's identity into the request
//! context. Allowed algorithms come from config and each key, never from the token; keys come
//! from a JWKS URL, OIDC discovery on the issuer, a local JWKS or PEM file, or an HMAC secret.
//! Remote keys are cached, refreshed in the background and on an unknown `kid` (rate limited),
//! and kept when the issuer is down. Verified tokens are cached by SHA-256 until their `exp`.
//! Failures answer 401/403 with an RFC 6750 `WWW-Authenticate` challenge.
#![deny(clippy::indexing_slicing, clippy::string_slice)]

mod config;
mod identity;
mod jwks;
pub mod metrics;
mod verify;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use opentelemetry::KeyValue;
use pingora_core::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use crate::build::{BuildContext, BuildFilter};
use crate::context::{RequestCtx, RouteAuth};
use crate::filter::{phase, Filter, FilterAction, LocalResponse};
use crate::jwt::metrics::METRICS;
use crate::protected_resource::ProtectedResource;
use identity::{has_all, ForwardedClaim};
use jwks::KeyStore;
use verify::{TokenCache, Verdict};

pub use config::JwtConfig;

/// The `jwt` filter of one config version.
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

impl Jwt {
    pub fn build(cfg: &JwtConfig, bctx: &mut BuildContext) -> std::result::Result<Self, String> {
        if cfg.issuer.is_empty() {
            return Err("issuer: must not be empty".into());
        }
        if cfg.audiences.is_empty() {
            return Err(
                "audiences: at least one audience is required (tokens must carry `aud`)".into(),
            );
        }
        let rules = verify::key_rules(cfg)?;
        let allowed = rules.allowed.clone();
        let keys = KeyStore::build(cfg, rules, bctx)?;

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
        let cache = verify::token_cache(cfg.cache_size);
        Ok(Jwt {
            keys,
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

    /// The `WWW-Authenticate` challenge, with an RFC 6750 error when there is one.
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

/// A raw query string without every `name=…` pair (no decoding: the name is matched as sent).
fn without_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect::<Vec<_>>()
        .join("&")
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
        let started = std::time::Instant::now();
        let span = ctx.span();
        let verdict = match self.token(session.req_header()) {
            None => Verdict::Missing,
            Some(token) => self.verify(token, span.as_ref()).await,
        };
        if let Some(span) = span.filter(|s| s.recording()) {
            let (result, cache) = match &verdict {
                Verdict::Ok(_, true) => ("ok", "hit"),
                Verdict::Ok(_, false) => ("ok", "miss"),
                Verdict::Missing => ("missing", "none"),
                Verdict::Invalid(r) => (r.label, "miss"),
                Verdict::Unavailable => ("keys_unavailable", "miss"),
            };
            span.event(
                "jwt.verified",
                vec![
                    KeyValue::new("jwt.result", result),
                    KeyValue::new("jwt.cache", cache),
                    KeyValue::new("duration_ms", started.elapsed().as_secs_f64() * 1e3),
                ],
            );
        }
        let m = &METRICS.jwt_validations;
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
            if let Some(v) = f
                .value(identity)
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                upstream.insert_header(f.header.clone(), v)?;
            }
        }
        Ok(())
    }
}

impl BuildFilter for Jwt {
    const TYPE: &'static str = "jwt";
    type Config = JwtConfig;

    fn build(cfg: &JwtConfig, bctx: &mut BuildContext) -> std::result::Result<Self, String> {
        Jwt::build(cfg, bctx)
    }

    fn register_metrics() {
        once_cell::sync::Lazy::force(&crate::jwt::metrics::METRICS);
    }
}
