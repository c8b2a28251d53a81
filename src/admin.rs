//! The admin listener (127.0.0.1:9901 by default): `/health` (liveness), `/ready` (every
//! listener accepts connections and every cluster's first health check is done), `/metrics`
//! (Prometheus text) and `/config` (the effective config, secrets redacted), plus the canary,
//! shadow-report and `/uac` endpoints; `admin_guard` decides who may call what.

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
        if !crate::admin_guard::is_probe(&session.req_header().method, &path) {
            if self.probes_only {
                return reply(
                    404,
                    "application/json",
                    br#"{"error":"this listener serves GET /health, /ready and /metrics only","status":404}"#
                        .to_vec(),
                );
            }
            let guard = self.state.load().admin.clone();
            if let Err((status, why)) = guard.check(session.req_header()) {
                let body = serde_json::json!({ "error": why, "status": status });
                return reply(status, "application/json", body.to_string().into_bytes());
            }
        }
        if path == "/uac" || path.starts_with("/uac/") {
            return uac(session, &path).await;
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
            "/metrics" => reply(200, "text/plain; version=0.0.4", self.metrics()),
            "/canary" => match session.req_header().method.as_str() {
                "GET" => canary_weights(),
                "POST" => match read_body(session).await {
                    Ok(body) => set_canary(&body),
                    Err(too_large) => too_large,
                },
                _ => reply(
                    405,
                    "application/json",
                    br#"{"error":"GET reads the canary weights, POST {\"weight\": N} sets one"}"#
                        .to_vec(),
                ),
            },
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
                br#"{"error":"not found","endpoints":["/health","/ready","/metrics","/config","/shadow/report","/canary","/uac/contracts"]}"#
                    .to_vec(),
            ),
        }
    }
}

/// `GET /canary`: every canary's weight.
fn canary_weights() -> Response<Vec<u8>> {
    let weights: serde_json::Map<String, serde_json::Value> = stoa_filters::canary::weights()
        .into_iter()
        .map(|(name, w)| (name, serde_json::json!(w)))
        .collect();
    reply(
        200,
        "application/json",
        serde_json::to_vec(&serde_json::json!({ "weights": weights })).unwrap_or_default(),
    )
}

/// `POST /canary {"weight": 5, "name": "default"}`: the new weight applies to the next request.
fn set_canary(body: &[u8]) -> Response<Vec<u8>> {
    let bad = |msg: String| {
        reply(
            400,
            "application/json",
            serde_json::to_vec(&serde_json::json!({ "error": msg })).unwrap_or_default(),
        )
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return bad("the body must be JSON: {\"weight\": 5}".into());
    };
    let Some(weight) = v.get("weight").and_then(serde_json::Value::as_f64) else {
        return bad("`weight` (a number, 0 to 100) is required".into());
    };
    let name = v
        .get("name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("default");
    match stoa_filters::canary::set_weight(name, weight) {
        Ok(()) => {
            tracing::info!(
                canary = name,
                weight,
                "canary weight set through the admin API"
            );
            canary_weights()
        }
        Err(e) if e.starts_with("no canary") => reply(
            404,
            "application/json",
            serde_json::to_vec(&serde_json::json!({ "error": e })).unwrap_or_default(),
        ),
        Err(e) => bad(e),
    }
}

/// `/uac/…`: shadow mode's contracts, observations, reviews and audit log (see
/// `stoa_filters::uac::admin`).
async fn uac(session: &mut ServerSession, path: &str) -> Response<Vec<u8>> {
    let req = session.req_header();
    let method = req.method.as_str().to_string();
    let query = req.uri.query().unwrap_or("").to_string();
    let headers = stoa_filters::exchange::header_pairs(req.headers.iter());
    let body = match read_body(session).await {
        Ok(body) => body,
        Err(too_large) => return too_large,
    };
    let request = stoa_filters::uac::admin::AdminRequest {
        method: &method,
        path,
        query: &query,
        headers: &headers,
        body: &body,
    };
    let Some(r) = stoa_filters::uac::admin::handle(&request).await else {
        return reply(
            404,
            "application/json",
            br#"{"error":"not found","status":404}"#.to_vec(),
        );
    };
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
