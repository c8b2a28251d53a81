//! stoa-gateway's core as a library: the config model and loader, the wiring of listeners,
//! the `ProxyHttp` request path, the admin API, the control plane. The binary (`main.rs`) is
//! the command line on top of it; the library exists so the fuzz targets (`fuzz/`) reach the
//! config loader and the request path's parsers as the binary runs them.

pub mod admin;
pub mod admin_guard;
pub mod circuit;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod control;
pub mod drain;
pub mod exemplars;
pub mod logging;
pub mod metrics;
pub mod overrides;
pub mod presets;
pub mod proxy;
pub mod runtime;
pub mod tracing_spans;
