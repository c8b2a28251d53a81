//! The filter registry: the `type:` of a chain entry selects one `FilterConfig` variant, and
//! `build_filter` maps it to the filter's constructor. Adding a filter is one variant here plus
//! one line in `build_filter`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::access_log::{AccessLog, AccessLogConfig};
use crate::body_limit::{BodyLimit, BodyLimitConfig};
use crate::cors::{Cors, CorsConfig};
use crate::filter::Filter;
use crate::headers::{Headers, HeadersConfig};
use crate::request_id::{RequestId, RequestIdConfig};
use crate::router::{Router, RouterConfig};

/// One entry of a chain in the config file, selected by its `type:` key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterConfig {
    Router(RouterConfig),
    Headers(HeadersConfig),
    RequestId(RequestIdConfig),
    Cors(CorsConfig),
    AccessLog(AccessLogConfig),
    BodyLimit(BodyLimitConfig),
}

/// The filter type names the registry knows.
pub const FILTER_TYPES: &[&str] = &[
    "router",
    "headers",
    "request_id",
    "cors",
    "access_log",
    "body_limit",
];

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
    })
}
