//! `cors` filter: answers CORS preflights (`OPTIONS` + `Access-Control-Request-Method`) itself
//! and adds `Access-Control-Allow-Origin` (and friends) to responses for allowed origins.
//! A preflight from an origin that is not allowed gets 403.
#![deny(clippy::indexing_slicing, clippy::string_slice)]

use async_trait::async_trait;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};

use crate::context::RequestCtx;
use crate::filter::{phase, Filter, FilterAction, LocalResponse};
use crate::units::HumanDuration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins (`https://app.example`), or `["*"]` for any.
    pub allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: String,
    headers: String,
    expose: String,
    credentials: bool,
    max_age: Option<String>,
}

/// The allowed `Origin` of this request, when it has one (kept in the request context).
#[derive(Clone)]
struct AllowedOrigin(String);

impl Cors {
    pub fn build(cfg: &CorsConfig) -> std::result::Result<Self, String> {
        if cfg.allow_origins.is_empty() {
            return Err("allow_origins: list at least one origin, or \"*\"".into());
        }
        let any_origin = cfg.allow_origins.iter().any(|o| o == "*");
        Ok(Cors {
            any_origin,
            origins: cfg
                .allow_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            methods: cfg.allow_methods.join(", ").to_ascii_uppercase(),
            headers: cfg.allow_headers.join(", "),
            expose: cfg.expose_headers.join(", "),
            credentials: cfg.allow_credentials,
            max_age: cfg.max_age.map(|d| d.0.as_secs().to_string()),
        })
    }

    fn allowed(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The value of `Access-Control-Allow-Origin` for an allowed origin.
    fn allow_origin_value<'a>(&self, origin: &'a str) -> &'a str {
        if self.any_origin && !self.credentials {
            "*"
        } else {
            origin
        }
    }
}

#[async_trait]
impl Filter for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn phases(&self) -> u8 {
        phase::REQUEST | phase::RESPONSE_HEADERS
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let req = session.req_header();
        let Some(origin) = req
            .headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(FilterAction::Continue);
        };
        let preflight = req.method == http::Method::OPTIONS
            && req
                .headers
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
        if !self.allowed(origin) {
            if preflight {
                ctx.reject("cors", "origin_not_allowed");
                return Ok(FilterAction::Respond(LocalResponse::json_error(
                    403,
                    "CORS origin not allowed",
                )));
            }
            return Ok(FilterAction::Continue);
        }
        let origin = origin.to_string();
        if preflight {
            let mut resp = LocalResponse::new(204)
                .with_header("access-control-allow-methods", &self.methods)
                .with_header("vary", "Origin");
            let allow_headers = if self.headers.is_empty() {
                // Reflect what the browser asked for when no list is configured.
                req.headers
                    .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            } else {
                self.headers.clone()
            };
            if !allow_headers.is_empty() {
                resp = resp.with_header("access-control-allow-headers", &allow_headers);
            }
            if let Some(age) = &self.max_age {
                resp = resp.with_header("access-control-max-age", age);
            }
            ctx.extensions.insert(AllowedOrigin(origin));
            return Ok(FilterAction::Respond(resp));
        }
        ctx.extensions.insert(AllowedOrigin(origin));
        Ok(FilterAction::Continue)
    }

    fn on_response_headers(
        &self,
        _session: &Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(AllowedOrigin(origin)) = ctx.extensions.get::<AllowedOrigin>() else {
            return Ok(());
        };
        response.insert_header(
            "access-control-allow-origin",
            self.allow_origin_value(origin),
        )?;
        if self.credentials {
            response.insert_header("access-control-allow-credentials", "true")?;
        }
        if !self.expose.is_empty() {
            response.insert_header("access-control-expose-headers", self.expose.as_str())?;
        }
        if !self.any_origin || self.credentials {
            response.append_header("vary", "Origin")?;
        }
        Ok(())
    }
}

impl crate::build::BuildFilter for Cors {
    const TYPE: &'static str = "cors";
    type Config = CorsConfig;

    fn build(
        cfg: &CorsConfig,
        _bctx: &mut crate::build::BuildContext,
    ) -> std::result::Result<Self, String> {
        Cors::build(cfg)
    }
}
