//! The spans the gateway core opens for every traced request, with OpenTelemetry's HTTP
//! semantic conventions: the server span (`http.request.method`, `url.path`, `server.address`,
//! `client.address`, `network.protocol.version`, `user_agent.original`; `http.route` and
//! `http.response.status_code` and `http.response.body.size` are added when the request ends)
//! and one client span per upstream attempt (`server.address`, `server.port`, events when
//! connected, at the first byte of the answer and at the end of its body, so the body's
//! streaming time shows). Attributes are only built for sampled requests.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use opentelemetry::KeyValue;
use pingora_proxy::Session;
use stoa_filters::telemetry::{RequestTrace, Telemetry};

pub fn server_span(
    telemetry: &Arc<Telemetry>,
    session: &Session,
    client_ip: Option<IpAddr>,
) -> RequestTrace {
    let req = session.req_header();
    let trace = telemetry.start_request(&req.headers, method_name(&req.method), Vec::new());
    if trace.recording() {
        let mut attrs = vec![
            KeyValue::new("http.request.method", req.method.as_str().to_string()),
            KeyValue::new("url.path", req.uri.path().to_string()),
            KeyValue::new("network.protocol.version", protocol_version(req.version)),
        ];
        let host = req.uri.host().map(str::to_string).or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .map(|a| a.host().to_string())
        });
        if let Some(host) = host {
            attrs.push(KeyValue::new("server.address", host));
        }
        if let Some(ip) = client_ip {
            attrs.push(KeyValue::new("client.address", ip.to_string()));
        }
        if let Some(ua) = req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attrs.push(KeyValue::new(
                "user_agent.original",
                ua.chars().take(256).collect::<String>(),
            ));
        }
        for kv in attrs {
            trace.set_attribute(kv);
        }
    }
    trace
}

/// The method as a span name, without an allocation for the standard ones.
fn method_name(m: &http::Method) -> std::borrow::Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|s| **s == m.as_str()) {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(m.as_str().to_string()),
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Open the client span of this upstream attempt (when its endpoint is chosen, so that the
/// connection is part of it); `upstream_request_filter` sends its context upstream.
pub fn upstream_span(trace: &mut RequestTrace, method: &str, addr: Option<SocketAddr>) {
    if !trace.recording() {
        return; // no client span for an unsampled request (see `start_upstream`)
    }
    let mut attrs = vec![KeyValue::new("http.request.method", method.to_string())];
    if let Some(a) = addr {
        attrs.push(KeyValue::new("server.address", a.ip().to_string()));
        attrs.push(KeyValue::new("server.port", a.port() as i64));
    }
    trace.start_upstream(method.to_string(), attrs);
}

pub fn upstream_connected(trace: &RequestTrace, reused: bool) {
    if trace.recording() {
        trace.upstream_event(
            "upstream.connected",
            vec![KeyValue::new("connection.reused", reused)],
        );
    }
}

/// The upstream's answer began (its headers arrived): time to first byte.
pub fn upstream_answered(trace: &RequestTrace, status: u16) {
    if trace.recording() && trace.upstream.is_some() {
        trace.upstream_event("upstream.first_byte", Vec::new());
        trace.set_upstream_attribute(KeyValue::new("http.response.status_code", status as i64));
    }
}

/// The upstream's answer has been streamed through to its end.
pub fn upstream_body_ended(trace: &RequestTrace) {
    if trace.recording() && trace.upstream.is_some() {
        trace.upstream_event("upstream.body_end", Vec::new());
    }
}

/// The response is complete: the body bytes sent to the client.
pub fn response_sent(trace: &RequestTrace, body_bytes: usize) {
    if trace.recording() {
        trace.set_attribute(KeyValue::new(
            "http.response.body.size",
            i64::try_from(body_bytes).unwrap_or(i64::MAX),
        ));
    }
}
