//! `access_log` filter: one JSON line per finished request (request id, route, status, timing,
//! upstream, rejection), written by a background thread through a bounded channel so the
//! request path never waits on I/O. Lines that do not fit in the channel are dropped and counted.
//! The query string is not logged (it may carry tokens), nor any credential header.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use async_trait::async_trait;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};

use crate::context::RequestCtx;
use crate::filter::{phase, Filter};

/// Access-log lines dropped because the writer could not keep up.
pub static ACCESS_LOG_DROPPED: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout` (default), `stderr`, or a file path (appended to).
    #[serde(default = "default_path")]
    pub path: String,
    /// Lines buffered before new ones are dropped.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
}

fn default_path() -> String {
    "stdout".into()
}
fn default_buffer() -> usize {
    8192
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            path: default_path(),
            buffer: default_buffer(),
        }
    }
}

pub struct AccessLog {
    output: std::sync::Mutex<Option<Box<dyn Write + Send>>>,
    buffer: usize,
    /// Started on first use, so a daemonized (forked) process gets its own writer thread.
    tx: std::sync::OnceLock<Option<SyncSender<String>>>,
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
            output: std::sync::Mutex::new(Some(out)),
            buffer: cfg.buffer.max(1),
            tx: std::sync::OnceLock::new(),
        })
    }

    fn sender(&self) -> Option<&SyncSender<String>> {
        self.tx
            .get_or_init(|| {
                let out = self.output.lock().ok()?.take()?;
                let (tx, rx) = sync_channel::<String>(self.buffer);
                std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || {
                        let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
                        while let Ok(line) = rx.recv() {
                            let _ = w.write_all(line.as_bytes());
                            // Drain what is queued, then flush once.
                            while let Ok(line) = rx.try_recv() {
                                let _ = w.write_all(line.as_bytes());
                            }
                            let _ = w.flush();
                        }
                    })
                    .ok()?;
                Some(tx)
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
        let req = session.req_header();
        let ua = req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let mut line = serde_json::json!({
            "ts": httpdate_now(),
            "type": "access",
            "request_id": ctx.request_id,
            "listener": &*ctx.listener,
            "route": ctx.route_name(),
            "cluster": ctx.route.as_ref().map(|r| &*r.cluster),
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "status": status,
            "duration_ms": ctx.started.elapsed().as_secs_f64() * 1000.0,
            "bytes_sent": session.body_bytes_sent(),
            "upstream": ctx.upstream_addr.map(|a| a.to_string()),
            "client_ip": ctx.client_ip.map(|ip| ip.to_string()),
            "user_agent": ua,
            "attempts": ctx.attempts,
        });
        if let Some(r) = &ctx.rejection {
            line["rejected_by"] = serde_json::json!({ "filter": r.filter, "reason": r.reason });
        }
        let mut s = line.to_string();
        s.push('\n');
        let Some(tx) = self.sender() else { return };
        if let Err(TrySendError::Full(_)) = tx.try_send(s) {
            ACCESS_LOG_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn httpdate_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}
