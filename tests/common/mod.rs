//! Test harness shared by the integration tests: the real `stoa-gateway` binary as a child
//! process (killed on drop) and real upstream servers (axum) on 127.0.0.1 ephemeral ports.
//!
//! One module per concern, re-exported here so a test's `use common::*` (or `common::foo`)
//! reaches every helper: `gateway` (the process under test, config placeholders, free ports,
//! bounded runs), `upstream` (echo and SSE servers), `tls` (certificates, the HTTPS echo
//! server), `client` (HTTP clients and request helpers), `load` (continuous load). The
//! protocol-specific helpers stay behind their module name: `auth`, `mcp`, `raw`, `redis`.
#![allow(dead_code)]

pub mod auth;
pub mod collector;
pub mod mcp;
pub mod raw;
pub mod redis;

mod client;
mod gateway;
mod load;
mod tls;
mod upstream;

// Each test binary uses some of these, so a re-export unused in one is not a mistake.
#[allow(unused_imports)]
pub use client::{client, fresh_client, get_echo, who};
#[allow(unused_imports)]
pub use gateway::{
    admin_request, closed_port, default_server_section, free_port, gateway_command, metric_value,
    run_bounded, run_to_end, Gateway, GatewayBuilder, ADMIN_TOKEN, BIN,
};
#[allow(unused_imports)]
pub use load::{start_load, LoadOptions, LoadReport};
#[allow(unused_imports)]
pub use tls::{make_certs, tls_echo, Certs};
#[allow(unused_imports)]
pub use upstream::{echo, echo_on, sse, SseUpstream, Upstream};
