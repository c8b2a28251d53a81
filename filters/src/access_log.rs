//! `access_log` filter: one JSON line per finished request (request id, route, status, timing,
//! upstream, rejection). Lines are appended to a shared in-memory batch that a background
//! thread writes out every 100 ms (or sooner once 64 KiB are waiting), so the request path never
//! waits on I/O and never wakes another thread per line. When the batch reaches its cap the line
//! is dropped and counted. The query string is not logged (it may carry tokens), nor any
//! credential header.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};

use std::time::Duration;

use async_trait::async_trait;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};

use crate::context::RequestCtx;
use crate::filter::{phase, Filter};

/// `stoa_access_log_dropped_total`: access-log lines dropped because the writer was behind
/// (in the filters' process-wide registry).
static DROPPED: once_cell::sync::Lazy<prometheus::IntCounter> = once_cell::sync::Lazy::new(|| {
    prometheus::register_int_counter_with_registry!(
        "stoa_access_log_dropped_total",
        "Access-log lines dropped because the writer was behind",
        crate::metrics::REGISTRY
    )
    .expect("each metric family is registered once")
});

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout` (default), `stderr`, or a file path (appended to).
    #[serde(default = "default_path")]
    pub path: String,
    /// Bytes of log lines held in memory before new lines are dropped.
    #[serde(default = "default_buffer")]
    pub buffer: crate::units::ByteSize,
}

fn default_path() -> String {
    "stdout".into()
}
fn default_buffer() -> crate::units::ByteSize {
    crate::units::ByteSize(4 << 20)
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            path: default_path(),
            buffer: default_buffer(),
        }
    }
}

/// The batch shared by the request path and the writer thread.
struct Batch {
    lines: Mutex<Vec<u8>>,
    ready: Condvar,
}

pub struct AccessLog {
    output: Mutex<Option<Box<dyn Write + Send>>>,
    cap: usize,
    /// Started on first use, so a daemonized (forked) process gets its own writer thread.
    batch: std::sync::OnceLock<Option<Arc<Batch>>>,
}

/// One access-log line, serialized straight from borrowed request data.
#[derive(Serialize)]
struct AccessLine<'a> {
    ts: f64,
    #[serde(rename = "type")]
    kind: &'static str,
    request_id: &'a str,
    listener: &'a str,
    route: &'a str,
    cluster: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    bytes_sent: usize,
    upstream: Option<std::net::SocketAddr>,
    client_ip: Option<std::net::IpAddr>,
    user_agent: Option<&'a str>,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_by: Option<Rejected>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a crate::context::PolicyLog>,
    /// The request's trace and server span, when tracing is on (sampled or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<String>,
}

#[derive(Serialize)]
struct Rejected {
    filter: &'static str,
    reason: &'static str,
}

impl AccessLog {
    pub fn build(cfg: &AccessLogConfig) -> Result<Self, String> {
        let out: Box<dyn Write + Send> = match cfg.path.as_str() {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("path: cannot open `{path}`: {e}"))?,
            ),
        };
        Ok(AccessLog {
            output: Mutex::new(Some(out)),
            cap: (cfg.buffer.0 as usize).max(4096),
            batch: std::sync::OnceLock::new(),
        })
    }

    fn batch(&self) -> Option<&Arc<Batch>> {
        self.batch
            .get_or_init(|| {
                let mut out = self.output.lock().ok()?.take()?;
                let batch = Arc::new(Batch {
                    lines: Mutex::new(Vec::with_capacity(FLUSH_AT_BYTES)),
                    ready: Condvar::new(),
                });
                // The writer ends once the filter (its config version) is gone and the last
                // lines are written.
                let shared = batch.clone();
                std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || {
                        let mut spare = Vec::with_capacity(FLUSH_AT_BYTES);
                        loop {
                            let last = Arc::strong_count(&shared) == 1;
                            {
                                let mut guard =
                                    shared.lines.lock().unwrap_or_else(|p| p.into_inner());
                                if !last && guard.len() < FLUSH_AT_BYTES {
                                    guard = shared
                                        .ready
                                        .wait_timeout(guard, FLUSH_EVERY)
                                        .unwrap_or_else(|p| p.into_inner())
                                        .0;
                                }
                                std::mem::swap(&mut *guard, &mut spare);
                            }
                            if !spare.is_empty() {
                                let _ = out.write_all(&spare);
                                let _ = out.flush();
                                spare.clear();
                            }
                            if last {
                                break;
                            }
                        }
                    })
                    .ok()?;
                Some(batch)
            })
            .as_ref()
    }
}

#[async_trait]
impl Filter for AccessLog {
    fn name(&self) -> &'static str {
        "access_log"
    }

    fn phases(&self) -> u8 {
        phase::LOGGING
    }

    fn on_logging(&self, session: &Session, ctx: &RequestCtx, status: u16) {
        let Some(batch) = self.batch() else { return };
        let req = session.req_header();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let trace_ids = ctx.trace.as_ref().map(|t| t.ids());
        let line = AccessLine {
            ts: (now.as_millis() as f64) / 1000.0,
            kind: "access",
            request_id: &ctx.request_id,
            listener: &ctx.listener,
            route: ctx.route_name(),
            cluster: ctx.route.as_ref().map(|r| &*r.cluster),
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            bytes_sent: session.body_bytes_sent(),
            upstream: ctx.upstream_addr,
            client_ip: ctx.client_ip,
            user_agent: req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            attempts: ctx.attempts,
            rejected_by: ctx.rejection.as_ref().map(|r| Rejected {
                filter: r.filter,
                reason: r.reason,
            }),
            sub: ctx.identity.as_ref().and_then(|i| i.subject.as_deref()),
            tenant: ctx.tenant(),
            policy: ctx.policy.as_ref(),
            trace_id: trace_ids.as_ref().map(|(t, _)| t.clone()),
            span_id: trace_ids.map(|(_, s)| s),
        };
        let mut guard = batch.lines.lock().unwrap_or_else(|p| p.into_inner());
        if guard.len() >= self.cap {
            DROPPED.inc();
            return;
        }
        if serde_json::to_writer(&mut *guard, &line).is_ok() {
            guard.push(b'\n');
        }
        if guard.len() >= FLUSH_AT_BYTES {
            batch.ready.notify_one();
        }
    }
}

impl crate::build::BuildFilter for AccessLog {
    const TYPE: &'static str = "access_log";
    type Config = AccessLogConfig;

    fn build(
        cfg: &AccessLogConfig,
        _bctx: &mut crate::build::BuildContext,
    ) -> std::result::Result<Self, String> {
        AccessLog::build(cfg)
    }

    fn register_metrics() {
        once_cell::sync::Lazy::force(&DROPPED);
    }
}
