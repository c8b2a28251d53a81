//! The admin listener (127.0.0.1:9901 by default): `/health` (liveness), `/ready` (every
//! listener accepts connections and every cluster's first health check is done), `/metrics`
//! (Prometheus text) and `/config` (the effective config, secrets redacted).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::metrics::METRICS;
use crate::runtime::SharedState;

pub struct AdminApp {
    pub state: SharedState,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .expect("static response parts are valid")
}

impl AdminApp {
    /// Why the gateway is not ready, or `None` when it is.
    fn not_ready_reason(&self) -> Option<String> {
        let state = self.state.load();
        for l in &state.config.listeners {
            let Ok(mut addr) = l.value.address.parse::<SocketAddr>() else {
                return Some(format!("listener {} has a bad address", l.value.name));
            };
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                return Some(format!(
                    "listener {} ({addr}) is not accepting yet",
                    l.value.name
                ));
            }
        }
        for chain in &state.chains {
            if let Some(why) = chain.filters.iter().find_map(|f| f.not_ready()) {
                return Some(why);
            }
        }
        for c in state.clusters.values() {
            if !c.health_known() {
                return Some(format!(
                    "cluster {} has not finished its first health check",
                    c.name
                ));
            }
        }
        None
    }

    fn metrics(&self) -> Vec<u8> {
        let state = self.state.load();
        METRICS.upstream_healthy.reset();
        for c in state.clusters.values() {
            for (endpoint, healthy) in c.endpoint_health() {
                METRICS
                    .upstream_healthy
                    .with_label_values(&[&*c.name, &endpoint])
                    .set(healthy as i64);
            }
        }
        METRICS.render()
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/health" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/ready" => match self.not_ready_reason() {
                None => reply(200, "text/plain", b"ready\n".to_vec()),
                Some(why) => reply(
                    503,
                    "text/plain",
                    format!("not ready: {why}\n").into_bytes(),
                ),
            },
            "/metrics" => reply(200, "text/plain; version=0.0.4", self.metrics()),
            "/shadow/report" => match session.req_header().method.as_str() {
                "GET" => reply(
                    200,
                    "application/json",
                    serde_json::to_vec_pretty(&stoa_filters::mirror::report::snapshot())
                        .unwrap_or_default(),
                ),
                "DELETE" => {
                    stoa_filters::mirror::report::reset();
                    reply(204, "application/json", Vec::new())
                }
                _ => reply(
                    405,
                    "application/json",
                    br#"{"error":"GET reads the report, DELETE resets it"}"#.to_vec(),
                ),
            },
            "/config" => {
                let state = self.state.load();
                let body = serde_json::json!({
                    "version": state.version,
                    "config": state.config.redacted_json(),
                });
                reply(
                    200,
                    "application/json",
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )
            }
            _ => reply(
                404,
                "application/json",
                br#"{"error":"not found","endpoints":["/health","/ready","/metrics","/config","/shadow/report"]}"#
                    .to_vec(),
            ),
        }
    }
}
