//! The filter registry: the `type:` of a chain entry selects one `FilterConfig` variant, and
//! `build_filter` maps it to the filter's constructor. Adding a filter is one variant here plus
//! one line in `build_filter`.

use std::sync::Arc;

use serde::de::{self, value::MapAccessDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::access_log::{AccessLog, AccessLogConfig};
use crate::body_limit::{BodyLimit, BodyLimitConfig};
use crate::canary::{Canary, CanaryConfig};
use crate::cors::{Cors, CorsConfig};
use crate::filter::Filter;
use crate::headers::{Headers, HeadersConfig};
use crate::jwt::{Jwt, JwtConfig};
use crate::mcp::{Mcp, McpConfig};
use crate::mirror::{Mirror, MirrorConfig};
use crate::opa::{Opa, OpaConfig};
use crate::rate_limit::{RateLimit, RateLimitConfig};
use crate::request_id::{RequestId, RequestIdConfig};
use crate::router::{Router, RouterConfig};
use crate::uac::validate::{UacValidation, UacValidationConfig};
use crate::uac::{ShadowCapture, ShadowCaptureConfig};

/// One entry of a chain in the config file, selected by its `type:` key, which must come first
/// so the rest of the entry is read straight into the filter's own config struct (errors then
/// point at the exact key and line).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // parsed once per config load; boxing buys nothing
pub enum FilterConfig {
    Router(RouterConfig),
    Headers(HeadersConfig),
    RequestId(RequestIdConfig),
    Cors(CorsConfig),
    AccessLog(AccessLogConfig),
    BodyLimit(BodyLimitConfig),
    Jwt(JwtConfig),
    Opa(OpaConfig),
    RateLimit(RateLimitConfig),
    Mcp(McpConfig),
    Mirror(MirrorConfig),
    Canary(CanaryConfig),
    ShadowCapture(ShadowCaptureConfig),
    UacValidation(UacValidationConfig),
}

/// The filter type names the registry knows.
pub const FILTER_TYPES: &[&str] = &[
    "router",
    "headers",
    "request_id",
    "cors",
    "access_log",
    "body_limit",
    "jwt",
    "opa",
    "rate_limit",
    "mcp",
    "mirror",
    "canary",
    "shadow_capture",
    "uac_validation",
];

impl<'de> Deserialize<'de> for FilterConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FilterConfigVisitor)
    }
}

struct FilterConfigVisitor;

impl<'de> Visitor<'de> for FilterConfigVisitor {
    type Value = FilterConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a filter entry: a map whose first key is `type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FilterConfig, A::Error> {
        match map.next_key::<String>()?.as_deref() {
            Some("type") => {}
            Some(other) => {
                return Err(de::Error::custom(format!(
                    "`type` must be the first key of a filter entry (found `{other}` first)"
                )))
            }
            None => return Err(de::Error::missing_field("type")),
        }
        let ty: String = map.next_value()?;
        let rest = MapAccessDeserializer::new(map);
        Ok(match ty.as_str() {
            "router" => FilterConfig::Router(RouterConfig::deserialize(rest)?),
            "headers" => FilterConfig::Headers(HeadersConfig::deserialize(rest)?),
            "request_id" => FilterConfig::RequestId(RequestIdConfig::deserialize(rest)?),
            "cors" => FilterConfig::Cors(CorsConfig::deserialize(rest)?),
            "access_log" => FilterConfig::AccessLog(AccessLogConfig::deserialize(rest)?),
            "body_limit" => FilterConfig::BodyLimit(BodyLimitConfig::deserialize(rest)?),
            "jwt" => FilterConfig::Jwt(JwtConfig::deserialize(rest)?),
            "opa" => FilterConfig::Opa(OpaConfig::deserialize(rest)?),
            "rate_limit" => FilterConfig::RateLimit(RateLimitConfig::deserialize(rest)?),
            "mcp" => FilterConfig::Mcp(McpConfig::deserialize(rest)?),
            "mirror" => FilterConfig::Mirror(MirrorConfig::deserialize(rest)?),
            "canary" => FilterConfig::Canary(CanaryConfig::deserialize(rest)?),
            "shadow_capture" => {
                FilterConfig::ShadowCapture(ShadowCaptureConfig::deserialize(rest)?)
            }
            "uac_validation" => {
                FilterConfig::UacValidation(UacValidationConfig::deserialize(rest)?)
            }
            other => return Err(de::Error::unknown_variant(other, FILTER_TYPES)),
        })
    }
}

/// What a filter may check against while it is built (e.g. that a route's cluster exists).
#[derive(Clone, Debug, Default)]
pub struct BuildContext {
    pub clusters: Vec<String>,
}

impl FilterConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            FilterConfig::Router(_) => "router",
            FilterConfig::Headers(_) => "headers",
            FilterConfig::RequestId(_) => "request_id",
            FilterConfig::Cors(_) => "cors",
            FilterConfig::AccessLog(_) => "access_log",
            FilterConfig::BodyLimit(_) => "body_limit",
            FilterConfig::Jwt(_) => "jwt",
            FilterConfig::Opa(_) => "opa",
            FilterConfig::RateLimit(_) => "rate_limit",
            FilterConfig::Mcp(_) => "mcp",
            FilterConfig::Mirror(_) => "mirror",
            FilterConfig::Canary(_) => "canary",
            FilterConfig::ShadowCapture(_) => "shadow_capture",
            FilterConfig::UacValidation(_) => "uac_validation",
        }
    }
}

/// Build a filter from its config; the error says what is wrong (the caller adds where).
pub fn build_filter(cfg: &FilterConfig, bctx: &BuildContext) -> Result<Arc<dyn Filter>, String> {
    Ok(match cfg {
        FilterConfig::Router(c) => Arc::new(Router::build(c, bctx)?),
        FilterConfig::Headers(c) => Arc::new(Headers::build(c)?),
        FilterConfig::RequestId(c) => Arc::new(RequestId::build(c)?),
        FilterConfig::Cors(c) => Arc::new(Cors::build(c)?),
        FilterConfig::AccessLog(c) => Arc::new(AccessLog::build(c)?),
        FilterConfig::BodyLimit(c) => Arc::new(BodyLimit::build(c)?),
        FilterConfig::Jwt(c) => Arc::new(Jwt::build(c)?),
        FilterConfig::Opa(c) => Arc::new(Opa::build(c)?),
        FilterConfig::RateLimit(c) => Arc::new(RateLimit::build(c)?),
        FilterConfig::Mcp(c) => Arc::new(Mcp::build(c)?),
        FilterConfig::Mirror(c) => Arc::new(Mirror::build(c)?),
        FilterConfig::Canary(c) => Arc::new(Canary::build(c, bctx)?),
        FilterConfig::ShadowCapture(_) => Arc::new(ShadowCapture),
        FilterConfig::UacValidation(c) => Arc::new(UacValidation::build(c)?),
    })
}
