//! The admin listener (127.0.0.1:9901 by default): `/health` (liveness), `/ready` (every
//! listener accepts connections and every cluster's first health check is done), `/metrics`
//! (Prometheus text, or OpenMetrics with exemplars to a scraper that asks), `/logging` (the
//! log level, changeable) and `/config` (the effective config, secrets redacted), plus the endpoints
//! the serving config's filters registered (`stoa_filters::AdminEndpoint`: `/canary`,
//! `/shadow/report`, `/uac`, ...); `admin_guard` decides who may call what.

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
    /// The read-only probe listener (`admin.probe_address`): probes only.
    pub probes_only: bool,
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
        if crate::drain::draining() {
            return Some("draining (shutting down)".into());
        }
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

    /// `/metrics` in the Prometheus text format, or in OpenMetrics (with exemplars) when
    /// `openmetrics`.
    fn metrics(&self, openmetrics: bool) -> Vec<u8> {
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
        if openmetrics {
            METRICS.render_openmetrics()
        } else {
            METRICS.render()
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let state = self.state.load_full();
        let endpoint = state
            .admin_endpoints
            .iter()
            .find(|e| stoa_filters::admin::serves(e.as_ref(), &path))
            .cloned();
        if !crate::admin_guard::is_probe(&session.req_header().method, &path) {
            if self.probes_only {
                return reply(
                    404,
                    "application/json",
                    br#"{"error":"this listener serves GET /health, /ready and /metrics only","status":404}"#
                        .to_vec(),
                );
            }
            let self_authenticating = endpoint.as_ref().is_some_and(|e| e.authenticates_callers());
            if let Err((status, why)) = state.admin.check(session.req_header(), self_authenticating)
            {
                let body = serde_json::json!({ "error": why, "status": status });
                return reply(status, "application/json", body.to_string().into_bytes());
            }
        }
        if let Some(endpoint) = endpoint {
            return serve_endpoint(session, &path, endpoint.as_ref()).await;
        }
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
            "/metrics" => {
                let accept = session
                    .req_header()
                    .headers
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                if crate::exemplars::wants_openmetrics(accept) {
                    let body = self.metrics(true);
                    reply(200, crate::exemplars::OPENMETRICS_CONTENT_TYPE, body)
                } else {
                    reply(200, "text/plain; version=0.0.4", self.metrics(false))
                }
            }
            "/logging" => logging(session).await,
            "/config" => {
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
            _ => {
                let mut endpoints = vec!["/health", "/ready", "/metrics", "/config", "/logging"];
                endpoints.extend(state.admin_endpoints.iter().map(|e| e.path()));
                let body = serde_json::json!({
                    "error": "not found",
                    "status": 404,
                    "endpoints": endpoints,
                });
                reply(404, "application/json", body.to_string().into_bytes())
            }
        }
    }
}

/// `GET /logging`: the log level or filter in force; `PUT /logging` with `{"level": "..."}`
/// (a level, or a filter such as `info,stoa_filters::mcp=debug`) replaces it until the next
/// restart.
async fn logging(session: &mut ServerSession) -> Response<Vec<u8>> {
    let json = |status: u16, body: serde_json::Value| {
        reply(status, "application/json", body.to_string().into_bytes())
    };
    match session.req_header().method.as_str() {
        "GET" | "HEAD" => json(200, serde_json::json!({ "level": crate::logging::level() })),
        "PUT" | "POST" => {
            let body = match read_body(session).await {
                Ok(body) => body,
                Err(too_large) => return too_large,
            };
            let level = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("level").and_then(|l| l.as_str()).map(str::to_string));
            let Some(level) = level else {
                return json(
                    400,
                    serde_json::json!({"error": "expected {\"level\": \"...\"}", "status": 400}),
                );
            };
            match crate::logging::set_level(&level) {
                Ok(()) => {
                    tracing::info!(filter = %level, "log level changed through the admin API");
                    json(200, serde_json::json!({ "level": level }))
                }
                Err(why) => json(400, serde_json::json!({"error": why, "status": 400})),
            }
        }
        _ => json(
            405,
            serde_json::json!({"error": "GET or PUT /logging", "status": 405}),
        ),
    }
}

/// An endpoint a filter registered: read the (bounded) body, hand the request over.
async fn serve_endpoint(
    session: &mut ServerSession,
    path: &str,
    endpoint: &dyn stoa_filters::AdminEndpoint,
) -> Response<Vec<u8>> {
    let req = session.req_header();
    let method = req.method.as_str().to_string();
    let query = req.uri.query().unwrap_or("").to_string();
    let headers = stoa_filters::exchange::header_pairs(req.headers.iter());
    let body = match read_body(session).await {
        Ok(body) => body,
        Err(too_large) => return too_large,
    };
    let request = stoa_filters::AdminRequest {
        method: &method,
        path,
        query: &query,
        headers: &headers,
        body: &body,
    };
    let r = endpoint.handle(&request).await;
    let mut resp = reply(r.status, r.content_type, r.body);
    for (k, v) in r.headers {
        if let Ok(v) = http::HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// An admin request's body, or a 413 past 64 KiB.
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        if body.len() + chunk.len() > 64 * 1024 {
            return Err(reply(
                413,
                "application/json",
                br#"{"error":"body too large","status":413}"#.to_vec(),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
