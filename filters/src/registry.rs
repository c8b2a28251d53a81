//! The filter registry: one list, `filters!` below, maps each filter's `type:` (its
//! `BuildFilter::TYPE`) to the filter. From that list come the `FilterConfig` enum (one variant
//! per filter, holding the filter's own config), its strict `type:`-first reader, its
//! serialisation, `FILTER_TYPES` and the builder. Adding a filter is its module plus one line
//! in `filters!`.

use std::path::PathBuf;
use std::sync::Arc;

use serde::de::{self, value::MapAccessDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::build::{BuildContext, BuildFilter};
use crate::filter::Filter;

macro_rules! filters {
    ($($variant:ident => $filter:ty),* $(,)?) => {
        /// One entry of a chain in the config file, selected by its `type:` key, which must come
        /// first so the rest of the entry is read straight into the filter's own config struct
        /// (errors then point at the exact key and line).
        #[derive(Clone, Debug)]
        #[allow(clippy::large_enum_variant)] // parsed once per config load; boxing buys nothing
        pub enum FilterConfig {
            $($variant(<$filter as BuildFilter>::Config),)*
        }

        /// The filter type names the registry knows.
        pub const FILTER_TYPES: &[&str] = &[$(<$filter as BuildFilter>::TYPE,)*];

        /// Register every filter's metrics (see `BuildFilter::register_metrics`).
        pub fn register_metrics() {
            $(<$filter as BuildFilter>::register_metrics();)*
        }

        impl FilterConfig {
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(FilterConfig::$variant(_) => <$filter as BuildFilter>::TYPE,)*
                }
            }

            /// Read the rest of an entry whose `type:` is `ty`.
            fn read<'de, D: Deserializer<'de>>(ty: &str, rest: D) -> Result<Self, D::Error> {
                Ok(match ty {
                    $(t if t == <$filter as BuildFilter>::TYPE => FilterConfig::$variant(
                        <<$filter as BuildFilter>::Config as Deserialize>::deserialize(rest)?,
                    ),)*
                    other => return Err(de::Error::unknown_variant(other, FILTER_TYPES)),
                })
            }

            /// Build the filter; the error says what is wrong (the caller adds where).
            pub fn build(&self, bctx: &mut BuildContext) -> Result<Arc<dyn Filter>, String> {
                Ok(match self {
                    $(FilterConfig::$variant(c) => Arc::new(<$filter as BuildFilter>::build(c, bctx)?),)*
                })
            }

            /// Whether this entry sends requests to clusters (see `BuildFilter::routes_upstream`).
            pub fn routes_upstream(&self) -> bool {
                match self {
                    $(FilterConfig::$variant(c) => <$filter as BuildFilter>::routes_upstream(c),)*
                }
            }

            /// Directories this entry reads (see `BuildFilter::watched_dirs`).
            pub fn watched_dirs(&self) -> Vec<PathBuf> {
                match self {
                    $(FilterConfig::$variant(c) => <$filter as BuildFilter>::watched_dirs(c),)*
                }
            }

            fn inner_json(&self) -> Result<serde_json::Value, serde_json::Error> {
                match self {
                    $(FilterConfig::$variant(c) => serde_json::to_value(c),)*
                }
            }
        }
    };
}

filters! {
    Router => crate::router::Router,
    Headers => crate::headers::Headers,
    RequestId => crate::request_id::RequestId,
    Cors => crate::cors::Cors,
    AccessLog => crate::access_log::AccessLog,
    BodyLimit => crate::body_limit::BodyLimit,
    Jwt => crate::jwt::Jwt,
    Opa => crate::opa::Opa,
    RateLimit => crate::rate_limit::RateLimit,
    Mcp => crate::mcp::Mcp,
    Mirror => crate::mirror::Mirror,
    Canary => crate::canary::Canary,
    ShadowCapture => crate::uac::ShadowCapture,
    UacValidation => crate::uac::validate::UacValidation,
}

impl FilterConfig {
    /// An entry of type `ty` from the rest of its keys (used by the core to add entries, e.g.
    /// `--mirror URL`); the error says what is wrong.
    pub fn with_type(ty: &str, rest: serde_json::Value) -> Result<Self, String> {
        Self::read(ty, rest).map_err(|e| e.to_string())
    }
}

/// Build a filter from its config (see `FilterConfig::build`).
pub fn build_filter(
    cfg: &FilterConfig,
    bctx: &mut BuildContext,
) -> Result<Arc<dyn Filter>, String> {
    cfg.build(bctx)
}

impl Serialize for FilterConfig {
    /// `{"type": ..., <the filter's own keys>}`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let inner = self.inner_json().map_err(S::Error::custom)?;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", self.type_name())?;
        if let serde_json::Value::Object(fields) = inner {
            for (k, v) in fields {
                map.serialize_entry(&k, &v)?;
            }
        }
        map.end()
    }
}

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
        FilterConfig::read(&ty, MapAccessDeserializer::new(map))
    }
}
