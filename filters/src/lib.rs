//! stoa-filters: the `Filter` trait, the per-request `RequestCtx`, the filter registry and the
//! built-in filters. The gateway core (`src/`) depends on this crate, never the reverse.

pub mod access_log;
pub mod admin;
pub mod background;
pub mod body_limit;
pub mod build;
pub mod canary;
pub mod context;
pub mod cors;
pub mod exchange;
pub mod filter;
pub mod headers;
pub mod jwt;
pub mod mcp;
pub mod metrics;
pub mod mirror;
pub mod opa;
pub mod protected_resource;
pub mod rate_limit;
pub mod registry;
pub mod request_id;
pub mod request_target;
pub mod router;
pub mod telemetry;
pub mod template;
pub mod uac;
pub mod units;

pub use admin::{AdminEndpoint, AdminReply, AdminRequest};
pub use build::{BuildContext, BuildFilter, Resources};
pub use context::{RequestCtx, RouteTarget};
pub use filter::{Filter, FilterAction, LocalResponse, LocalStream, LocalUpgrade};
pub use registry::{build_filter, FilterConfig, FILTER_TYPES};
