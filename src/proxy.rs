//! `Gateway`: the Pingora `ProxyHttp` implementation every listener runs. Each phase walks the
//! listener's filter chain (request phases in declared order, response phases in reverse), the
//! router's choice picks a cluster and endpoint, and errors become 502/503/504 JSON answers.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use stoa_filters::request_id::generate_request_id;
use stoa_filters::{FilterAction, LocalResponse, LocalStream, LocalUpgrade, RequestCtx};
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::metrics::METRICS;
use crate::runtime::{Chain, GatewayState, SharedState};

pub struct Gateway {
    pub listener: Arc<str>,
    /// Position of this listener in `config.listeners` (listeners only change on restart).
    pub index: usize,
    pub state: SharedState,
    /// How this listener canonicalises paths (listener settings change on restart only).
    pub paths: stoa_filters::request_target::PathOptions,
    /// Idle keep-alive connections close after this many seconds.
    pub keepalive_secs: u64,
    /// A request body idle this long ends the request.
    pub body_idle_timeout: std::time::Duration,
    /// The path answered `200 ok` here, before any filter (`http.health_path`).
    pub health_path: Option<String>,
}

/// Per-request context: the filters' `RequestCtx` plus the pinned config version.
pub struct GatewayCtx {
    pub req: RequestCtx,
    state: Arc<GatewayState>,
    chain: Arc<Chain>,
    cluster: Option<Arc<Cluster>>,
    /// How many filters ran their request phase (a local answer only goes back through those).
    ran: usize,
    /// The cluster's circuit breaker let this request through (its outcome is recorded).
    breaker_permit: Option<crate::circuit::Permit>,
    /// The chosen endpoint's `Host` value (sent unless the route preserves the client's).
    host_header: Option<http::HeaderValue>,
}

impl Gateway {
    async fn respond_local(
        &self,
        session: &mut Session,
        ctx: &mut GatewayCtx,
        local: LocalResponse,
    ) -> Result<()> {
        let resp = self.local_header(
            session,
            ctx,
            local.status,
            &local.headers,
            Some(local.body.len()),
        )?;
        let head_only = session.req_header().method == http::Method::HEAD;
        let no_body = local.body.is_empty() || head_only;
        session
            .write_response_header(Box::new(resp), no_body)
            .await?;
        if !no_body {
            session.write_response_body(Some(local.body), true).await?;
        }
        Ok(())
    }

    /// The header of a gateway-made answer (`Content-Length` when the length is known),
    /// through the response-header phase of the filters that ran.
    fn local_header(
        &self,
        session: &Session,
        ctx: &mut GatewayCtx,
        status: u16,
        headers: &[(String, String)],
        length: Option<usize>,
    ) -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(status, Some(headers.len() + 2))?;
        for (k, v) in headers {
            resp.append_header(k.clone(), v.as_str())?;
        }
        if let Some(len) = length {
            resp.insert_header(http::header::CONTENT_LENGTH, len)?;
        }
        let chain = ctx.chain.clone();
        for &i in &chain.response_headers {
            if i < ctx.ran {
                chain.filters[i].on_response_headers(session, &mut resp, &mut ctx.req)?;
            }
        }
        Ok(resp)
    }

    /// Write a streamed local answer: the header (no length: chunked for an HTTP/1.1 client,
    /// so its connection stays open for the next request; HTTP/2 frames it itself), then each
    /// chunk as it arrives, flushed; ends when the senders are gone. A client that went away
    /// makes a write fail, which ends the request and drops the receiver.
    async fn respond_stream(
        &self,
        session: &mut Session,
        ctx: &mut GatewayCtx,
        mut stream: LocalStream,
    ) -> Result<()> {
        let mut resp = self.local_header(session, ctx, stream.status, &stream.headers, None)?;
        if !session.is_http2() && session.req_header().version == http::Version::HTTP_11 {
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        while let Some(chunk) = stream.body.recv().await {
            session.write_response_body(Some(chunk), false).await?;
        }
        session.write_response_body(None, true).await?;
        Ok(())
    }
}

impl Gateway {
    /// Switch protocols and relay bytes both ways between the client and the filter's end of
    /// the connection until either closes. The client's bytes go to the filter through a
    /// writer task, and are only read while it has room: a filter that stops reading (its
    /// backpressure) never stops its answers from reaching the client.
    async fn respond_upgrade(
        &self,
        session: &mut Session,
        ctx: &mut GatewayCtx,
        upgrade: LocalUpgrade,
    ) -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let resp = self.local_header(session, ctx, 101, &upgrade.headers, None)?;
        session.write_response_header(Box::new(resp), false).await?;
        let (mut from_filter, mut to_filter) = tokio::io::split(upgrade.io);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if to_filter.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = to_filter.shutdown().await;
        });
        let mut buf = vec![0u8; 16 * 1024];
        let mut room: Option<tokio::sync::mpsc::OwnedPermit<Bytes>> = None;
        loop {
            tokio::select! {
                permit = tx.clone().reserve_owned(), if room.is_none() => match permit {
                    Ok(p) => room = Some(p),
                    Err(_) => break,
                },
                read = session.read_request_body(), if room.is_some() => match (read, room.take()) {
                    (Ok(Some(bytes)), Some(permit)) => {
                        permit.send(bytes);
                    }
                    _ => break,
                },
                n = from_filter.read(&mut buf) => match n {
                    Ok(n) if n > 0 => {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if session.write_response_body(Some(chunk), false).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                },
            }
        }
        // Hand the filter what the client sent last, unless the filter stopped reading.
        drop((room, tx));
        let writer_abort = writer.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(1), writer)
            .await
            .is_err()
        {
            writer_abort.abort();
        }
        let _ = session.write_response_body(None, true).await;
        Ok(())
    }
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = GatewayCtx;

    fn new_ctx(&self) -> GatewayCtx {
        let state = self.state.load_full();
        let chain = state.chains[self.index].clone();
        GatewayCtx {
            req: RequestCtx::new(self.listener.clone()),
            state,
            chain,
            cluster: None,
            ran: 0,
            breaker_permit: None,
            host_header: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut GatewayCtx) -> Result<bool> {
        ctx.req.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(telemetry) = &ctx.state.telemetry {
            ctx.req.trace = Some(crate::tracing_spans::server_span(
                telemetry,
                session,
                ctx.req.client_ip,
            ));
        }
        // An HTTP/1.1 connection is kept alive by default, for ever: bound its idle time.
        if session.get_keepalive() == Some(0) {
            session.set_keepalive(Some(self.keepalive_secs));
        }
        session.set_read_timeout(Some(self.body_idle_timeout));
        if let Err(refusal) =
            stoa_filters::request_target::canonicalize(session.req_header_mut(), &self.paths)
        {
            ctx.req.reject("gateway", refusal.reason);
            session.set_keepalive(None);
            let local = LocalResponse::json_error(refusal.status, refusal.message);
            self.respond_local(session, ctx, local).await?;
            return Ok(true);
        }
        if let Some(health) = &self.health_path {
            let req = session.req_header();
            if req.uri.path() == health && matches!(req.method.as_str(), "GET" | "HEAD") {
                let mut local = LocalResponse::new(200)
                    .with_header("content-type", "text/plain")
                    .with_header("cache-control", "no-store");
                local.body = bytes::Bytes::from_static(b"ok\n");
                self.respond_local(session, ctx, local).await?;
                return Ok(true);
            }
        }
        let chain = ctx.chain.clone();
        for &i in &chain.request {
            match chain.filters[i].on_request(session, &mut ctx.req).await? {
                FilterAction::Continue => {}
                FilterAction::Respond(local) => {
                    ctx.ran = i + 1;
                    self.respond_local(session, ctx, local).await?;
                    return Ok(true);
                }
                FilterAction::Stream(stream) => {
                    ctx.ran = i + 1;
                    self.respond_stream(session, ctx, stream).await?;
                    return Ok(true);
                }
                FilterAction::Upgrade(upgrade) => {
                    ctx.ran = i + 1;
                    self.respond_upgrade(session, ctx, upgrade).await?;
                    return Ok(true);
                }
            }
        }
        ctx.ran = chain.filters.len();
        if let Some(route) = &ctx.req.route {
            ctx.cluster = ctx.state.clusters.get(&route.cluster).cloned();
        }
        if let Some(breaker) = ctx.cluster.as_ref().and_then(|c| c.breaker.as_ref()) {
            match breaker.try_acquire() {
                Ok(permit) => ctx.breaker_permit = Some(permit),
                Err(retry_after) => {
                    ctx.req.reject("circuit_breaker", "open");
                    let local = LocalResponse::json_error(
                        503,
                        "circuit breaker open: the upstream is failing",
                    )
                    .with_header("retry-after", &retry_after.to_string());
                    self.respond_local(session, ctx, local).await?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        let chain = ctx.chain.clone();
        for &i in &chain.request_body {
            chain.filters[i]
                .on_request_body(session, body, end_of_stream, &mut ctx.req)
                .await?;
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut GatewayCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = &ctx.req.route else {
            return Error::e_explain(
                ErrorType::HTTPStatus(404),
                "no route: the chain has no router or the router did not match",
            );
        };
        if ctx.cluster.is_none() {
            ctx.cluster = ctx.state.clusters.get(&route.cluster).cloned();
        }
        let Some(cluster) = &ctx.cluster else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "route points at no cluster");
        };
        let Some(backend) = cluster.select(session, &ctx.req.failed_endpoints) else {
            if ctx.req.attempts > 0 {
                // A retry found no other endpoint: report the connect failure, not "no endpoint".
                return Error::e_explain(
                    ErrorType::HTTPStatus(502),
                    format!("cluster {}: no other endpoint to retry on", cluster.name),
                );
            }
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("cluster {} has no healthy endpoint", cluster.name),
            );
        };
        ctx.req.attempts += 1;
        let (peer, meta) = cluster.peer(&backend);
        ctx.req.upstream_addr = backend.addr.as_inet().copied();
        ctx.host_header = meta.map(|m| m.host_header.clone());
        if let Some(trace) = ctx.req.trace.as_mut() {
            let method = session.req_header().method.as_str();
            crate::tracing_spans::upstream_span(trace, method, ctx.req.upstream_addr);
        }
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        if let Some(route) = &ctx.req.route {
            if let Some(path) = &route.upstream_path {
                let uri = path
                    .parse::<http::Uri>()
                    .map_err(|e| Error::because(ErrorType::InternalError, "rewritten path", e))?;
                upstream.set_uri(uri);
            }
            if !route.preserve_host {
                if let Some(host) = &ctx.host_header {
                    upstream.insert_header(http::header::HOST, host.clone())?;
                }
            }
        }
        if let Some(trace) = &ctx.req.trace {
            for (name, value) in trace.telemetry().headers_for(trace.current()) {
                upstream.insert_header(name, value)?;
            }
        }
        let forwarded_for = ctx.req.route.as_ref().is_none_or(|r| r.forwarded_for);
        if let (Some(ip), true) = (ctx.req.client_ip, forwarded_for) {
            let xff = forwarded_for_value(upstream.headers.get("x-forwarded-for"), ip)?;
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        let chain = ctx.chain.clone();
        for &i in &chain.upstream_request {
            chain.filters[i].on_upstream_request(session, upstream, &mut ctx.req)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        if let Some(trace) = &ctx.req.trace {
            crate::tracing_spans::upstream_answered(trace, response.status.as_u16());
        }
        let chain = ctx.chain.clone();
        for &i in &chain.response_headers {
            chain.filters[i].on_response_headers(session, response, &mut ctx.req)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut GatewayCtx,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            if let Some(trace) = &ctx.req.trace {
                crate::tracing_spans::upstream_body_ended(trace);
            }
        }
        if ctx.chain.response_body.is_empty() {
            return Ok(None);
        }
        let chain = ctx.chain.clone();
        for &i in &chain.response_body {
            chain.filters[i].on_response_body(body, end_of_stream, &mut ctx.req)?;
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut GatewayCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(cluster) = &ctx.cluster {
            METRICS
                .upstream_failures
                .with_label_values(&[&*cluster.name])
                .inc();
            if let Some(addr) = peer._address.as_inet() {
                cluster.eject(*addr);
                ctx.req.failed_endpoints.push(*addr);
            }
            let idempotent = session.req_header().method.is_idempotent();
            if idempotent && ctx.req.attempts <= cluster.retries {
                e.set_retry(true);
            }
        }
        ensure_request_id(&mut ctx.req);
        let ids = ctx.req.trace.as_ref().map(|t| t.ids());
        warn!(
            request_id = %ctx.req.request_id,
            trace_id = ids.as_ref().map(|(t, _)| t.as_str()),
            span_id = ids.as_ref().map(|(_, s)| s.as_str()),
            listener = %ctx.req.listener,
            route = ctx.req.route_name(),
            upstream = %peer._address,
            attempt = ctx.req.attempts,
            error = ?e.etype(),
            "upstream connect failed"
        );
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut GatewayCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ if is_timeout(e) && e.esource() == &ErrorSource::Upstream => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            // The connection is not reused after an error: say so instead of resetting it.
            session.set_keepalive(None);
            let msg = match code {
                404 => "no route matches this request",
                413 => "request body too large",
                502 => "upstream unavailable",
                503 => "no healthy upstream endpoint",
                504 => "upstream timed out",
                400 => "bad request",
                _ => "gateway error",
            };
            let local = LocalResponse::json_error(code, msg);
            if let Err(err) = self.respond_local(session, ctx, local).await {
                debug!(error = %err, "could not write the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut GatewayCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if !ctx.chain.logging.is_empty() || e.is_some() {
            ensure_request_id(&mut ctx.req);
        }
        let route = ctx.req.route_name();
        let listener = &*ctx.req.listener;
        METRICS
            .requests
            .with_label_values(&[listener, route, status_label(status)])
            .inc();
        let seconds = ctx.req.started.elapsed().as_secs_f64();
        METRICS
            .duration
            .with_label_values(&[listener, route])
            .observe(seconds);
        if let Some(trace) = ctx.req.trace.as_ref().filter(|t| t.recording()) {
            crate::exemplars::record(listener, route, seconds, || trace.ids());
        }
        if let Some(r) = &ctx.req.rejection {
            METRICS
                .rejections
                .with_label_values(&[r.filter, r.reason])
                .inc();
        }
        if let (Some(permit), Some(cluster)) = (ctx.breaker_permit, &ctx.cluster) {
            if let Some(breaker) = &cluster.breaker {
                let upstream_error = e.is_some_and(|e| {
                    e.esource() == &ErrorSource::Upstream
                        || matches!(e.etype(), ErrorType::HTTPStatus(s) if *s >= 500)
                });
                if status == 0 && !upstream_error {
                    breaker.release(permit);
                } else {
                    let failed = upstream_error || breaker.is_failure_status(status);
                    breaker.record(permit, !failed);
                }
            }
        }
        let chain = ctx.chain.clone();
        if let Some(e) = e {
            if status >= 500 || status == 0 {
                let ids = ctx.req.trace.as_ref().map(|t| t.ids());
                warn!(
                    request_id = %ctx.req.request_id,
                    trace_id = ids.as_ref().map(|(t, _)| t.as_str()),
                    span_id = ids.as_ref().map(|(_, s)| s.as_str()),
                    listener,
                    route = ctx.req.route_name(),
                    status,
                    error = %e,
                    "request failed"
                );
            }
        }
        for &i in &chain.logging {
            chain.filters[i].on_logging(session, &ctx.req, status);
        }
        if let Some(mut trace) = ctx.req.trace.take() {
            crate::tracing_spans::response_sent(&trace, session.body_bytes_sent());
            let method = session.req_header().method.as_str();
            trace.finish(
                method,
                ctx.req.route_name(),
                status,
                e.map(|e| e.etype().as_str().to_string()),
            );
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        if let Some(trace) = &ctx.req.trace {
            crate::tracing_spans::upstream_connected(trace, reused);
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &GatewayCtx, _error: &Error) -> bool {
        // Failures are logged by `logging` with the request id and without request headers.
        true
    }
}

/// `X-Forwarded-For` with `ip` appended (after the client's own value, if any). This runs on
/// every proxied request, so an IPv4 address is written digit by digit rather than through
/// the formatting machinery, into the one buffer the header value then owns.
fn forwarded_for_value(
    previous: Option<&http::HeaderValue>,
    ip: std::net::IpAddr,
) -> Result<http::HeaderValue> {
    let previous = previous
        .map(http::HeaderValue::as_bytes)
        .unwrap_or_default();
    let mut value = Vec::with_capacity(previous.len() + 2 + 39);
    if !previous.is_empty() {
        value.extend_from_slice(previous);
        value.extend_from_slice(b", ");
    }
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    value.push(b'.');
                }
                if octet >= 100 {
                    value.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    value.push(b'0' + (octet / 10) % 10);
                }
                value.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => value.extend_from_slice(v6.to_string().as_bytes()),
    }
    http::HeaderValue::from_maybe_shared(Bytes::from(value))
        .map_err(|e| Error::because(ErrorType::InternalError, "x-forwarded-for", e))
}

fn ensure_request_id(req: &mut RequestCtx) {
    if req.request_id.is_empty() {
        req.request_id = generate_request_id();
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        0 => "0",
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::forwarded_for_value;

    #[test]
    fn forwarded_for_appends_the_client_address() {
        let cases = [
            (None, "0.0.0.0", "0.0.0.0"),
            (None, "10.20.255.9", "10.20.255.9"),
            (None, "100.1.99.200", "100.1.99.200"),
            (Some("203.0.113.7"), "127.0.0.1", "203.0.113.7, 127.0.0.1"),
            (None, "::1", "::1"),
            (Some("a"), "2001:db8::5", "a, 2001:db8::5"),
        ];
        for (previous, ip, expected) in cases {
            let previous = previous.map(http::HeaderValue::from_static);
            let value = forwarded_for_value(previous.as_ref(), ip.parse().unwrap()).unwrap();
            assert_eq!(value.to_str().unwrap(), expected);
        }
    }
}
