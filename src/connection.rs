//! Per-connection limits of a listener, around Pingora's HTTP app: at most `max_connections`
//! open at once (beyond it a new connection is closed at once and counted), and a total
//! deadline for reading each HTTP/1 request header (`header_read_timeout`: a client dripping
//! its header a byte at a time is cut off, as nginx's `client_header_timeout` does). Pingora's
//! own read timeout is per read, which a slow client resets with every byte.
//!
//! The deadline is kept by `HeaderDeadline`, a transparent wrapper of the connection: it arms
//! at the first byte of a request (on a new connection, or after a response began), and
//! disarms at the blank line that ends the header. It steps aside for good on HTTP/2 and once
//! a `101 Switching Protocols` went out (WebSocket frames are not headers).
#![deny(clippy::indexing_slicing, clippy::string_slice, clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::METRICS;

/// A listener's HTTP app with its connection limits.
pub struct ConnectionGuard<A> {
    pub inner: Arc<A>,
    pub listener: Arc<str>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub open: AtomicUsize,
}

/// Gives back a connection slot (and the open-connections gauge) when the connection ends,
/// however it ends.
struct Slot<'a>(&'a AtomicUsize, prometheus::IntGauge);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionGuard<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let listener = &*self.listener;
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            METRICS
                .connections_refused
                .with_label_values(&[listener, "max_connections"])
                .inc();
            return None;
        }
        let gauge = METRICS.connections_open.with_label_values(&[listener]);
        gauge.inc();
        let _slot = Slot(&self.open, gauge);
        let stream: Stream = Box::new(HeaderDeadline::new(
            stream,
            self.header_read_timeout,
            listener.into(),
        ));
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Where the connection is, as far as reading request headers goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request.
    AwaitingRequest,
    /// Inside a request header; `matched` bytes of `\r\n\r\n` seen at the end so far.
    InHeader { matched: u8 },
    /// Reading a body or waiting for the response.
    AfterHeader,
    /// HTTP/2 or an upgraded connection: no deadline any more.
    Off,
}

/// The connection, with a deadline on reading each request header.
pub struct HeaderDeadline {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    listener: Arc<str>,
}

impl std::fmt::Debug for HeaderDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDeadline")
            .field("phase", &self.phase)
            .field("inner", &self.inner)
            .finish()
    }
}

const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

impl HeaderDeadline {
    fn new(inner: Stream, limit: Duration, listener: Arc<str>) -> Self {
        let phase = if limit.is_zero() {
            Phase::Off
        } else {
            Phase::AwaitingRequest
        };
        HeaderDeadline {
            inner,
            limit,
            phase,
            timer: None,
            listener,
        }
    }

    /// Follow the bytes just read through the header state machine.
    fn saw(&mut self, data: &[u8]) {
        if self.phase == Phase::AwaitingRequest && data.starts_with(H2_PREFACE_START) {
            self.phase = Phase::Off;
            return;
        }
        for &b in data {
            let before = self.phase;
            self.phase = step(before, b);
            match (before, self.phase) {
                (Phase::AwaitingRequest, Phase::InHeader { .. }) => {
                    self.timer = Some(Box::pin(tokio::time::sleep(self.limit)));
                }
                (_, Phase::AfterHeader) => {
                    self.timer = None;
                    return;
                }
                _ => {}
            }
        }
    }
}

/// One byte through the header state machine: a request starts at its first byte that is
/// not part of a blank line (RFC 9112 §2.2) and ends at `\r\n\r\n` (or a bare `\n\n`).
fn step(phase: Phase, b: u8) -> Phase {
    match phase {
        Phase::AwaitingRequest if b != b'\r' && b != b'\n' => Phase::InHeader { matched: 0 },
        Phase::InHeader { matched } => {
            let next = match (matched, b) {
                (0 | 2, b'\r') => matched + 1,
                (1 | 3, b'\n') => matched + 1,
                (_, b'\n') => 2,
                (_, b'\r') => 1,
                _ => 0,
            };
            if next >= 4 || (next == 2 && matched == 2) {
                Phase::AfterHeader
            } else {
                Phase::InHeader { matched: next }
            }
        }
        p => p,
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(timer) = this.timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                METRICS
                    .connections_refused
                    .with_label_values(&[&*this.listener, "header_timeout"])
                    .inc();
                this.timer = None;
                this.phase = Phase::Off;
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request header not received within header_read_timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if matches!(this.phase, Phase::AwaitingRequest | Phase::InHeader { .. }) {
                this.saw(buf.filled().get(before..).unwrap_or(&[]));
                // A timer armed by these bytes must be polled once to wake us later.
                if let Some(timer) = this.timer.as_mut() {
                    let _ = timer.as_mut().poll(cx);
                }
            }
        }
        polled
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.phase != Phase::Off && data.starts_with(b"HTTP/1.") {
            // A response header: `HTTP/1.1 NNN`. 1xx interim answers are not the end of an
            // exchange, except 101, after which the connection is not HTTP any more.
            match data.get(9..12) {
                Some(b"101") => {
                    this.phase = Phase::Off;
                    this.timer = None;
                }
                Some([b'1', _, _]) => {}
                _ => {
                    if this.phase == Phase::AfterHeader {
                        this.phase = Phase::AwaitingRequest;
                    }
                }
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // Only the first slice can start a response header.
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(first) if first.starts_with(b"HTTP/1.") => {
                let first: &[u8] = first;
                self.poll_write(cx, first)
            }
            _ => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: pingora_core::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        // Pingora peeks for the h2c preface on plaintext HTTP/2 listeners and waits until it
        // has the preface's 24 bytes: a client sending fewer is held to the same deadline.
        let peek = self.inner.try_peek(buf);
        let peeked = if self.limit.is_zero() {
            peek.await?
        } else {
            match tokio::time::timeout(self.limit, peek).await {
                Ok(peeked) => peeked?,
                Err(_) => {
                    METRICS
                        .connections_refused
                        .with_label_values(&[&*self.listener, "header_timeout"])
                        .inc();
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request header not received within header_read_timeout",
                    ));
                }
            }
        };
        if peeked && buf.starts_with(H2_PREFACE_START) {
            self.phase = Phase::Off;
        }
        Ok(peeked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the header state machine over reads.
    fn feed(chunks: &[&[u8]]) -> Phase {
        let mut phase = Phase::AwaitingRequest;
        for chunk in chunks {
            for &b in *chunk {
                phase = step(phase, b);
            }
        }
        phase
    }

    #[test]
    fn header_end_is_found_across_reads() {
        assert_eq!(
            feed(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]),
            Phase::AfterHeader
        );
        assert_eq!(
            feed(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n", b"\r\n"]),
            Phase::AfterHeader
        );
        assert_eq!(feed(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Phase::AfterHeader);
        assert!(matches!(
            feed(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]),
            Phase::InHeader { .. }
        ));
        assert_eq!(feed(&[b"\r\n"]), Phase::AwaitingRequest);
    }
}
