//! The server's SSE streams (Streamable HTTP's GET) per MCP session, for the whole process:
//! server-to-client messages (`notifications/tools/list_changed` after a reload) go to every
//! open stream of a session, each event carries an id, and the last events of each session are
//! kept so that a client reconnecting with `Last-Event-ID` gets what it missed. Keep-alive
//! comments at a set interval keep idle streams open through proxies and reveal dead clients.
//! Held by `McpState` (a shared resource) so that it outlives config reloads (which rebuild
//! the `mcp` filter).
#![deny(clippy::indexing_slicing, clippy::string_slice)]

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

/// The process-wide hub, defined with the rest of the process-wide state (`state`).
use crate::mcp::metrics::METRICS;

/// Events kept per session for resumption.
const REPLAY: usize = 64;
/// How long a session's events are kept after its last stream closed.
const KEEP_IDLE: Duration = Duration::from_secs(600);
/// Events buffered per stream before a slow client misses some (it can resume).
const STREAM_BUFFER: usize = 64;
/// Bytes of events kept per session for resumption (the oldest go first beyond it).
const REPLAY_BYTES: usize = 256 * 1024;
/// Sessions the hub keeps at once; a new one beyond it is not kept (counted).
const MAX_SESSIONS: usize = 50_000;

#[derive(Default)]
struct SessionStreams {
    next_id: u64,
    recent: VecDeque<(u64, Bytes)>,
    recent_bytes: usize,
    senders: Vec<mpsc::Sender<Bytes>>,
    idle_since: Option<Instant>,
}

impl SessionStreams {
    fn live(&mut self) -> usize {
        self.senders.retain(|s| !s.is_closed());
        if self.senders.is_empty() && self.idle_since.is_none() {
            self.idle_since = Some(Instant::now());
        }
        self.senders.len()
    }
}

#[derive(Default)]
pub struct StreamHub {
    /// Keyed by `path \0 session id`.
    sessions: Mutex<HashMap<String, SessionStreams>>,
}

fn key(path: &str, session: &str) -> String {
    format!("{path}\u{0}{session}")
}

fn event(id: u64, message: &Value) -> Bytes {
    Bytes::from(format!("id: {id}\ndata: {message}\n\n"))
}

impl StreamHub {
    /// Open a stream for a session: the events after `last_event_id` are replayed first, then
    /// new ones and a keep-alive comment every `keepalive` follow.
    pub fn open(
        &self,
        path: &str,
        session: &str,
        last_event_id: Option<u64>,
        keepalive: Duration,
    ) -> mpsc::Receiver<Bytes> {
        // Tells the client the stream is open (and gets the headers on their way).
        let first = Bytes::from_static(b": stream open\n\n");
        self.open_with(path, session, last_event_id, keepalive, first)
    }

    /// `open`, with `first` as the stream's first bytes (the legacy transport's `endpoint`).
    pub fn open_with(
        &self,
        path: &str,
        session: &str,
        last_event_id: Option<u64>,
        keepalive: Duration,
        first: Bytes,
    ) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER + REPLAY);
        let _ = tx.try_send(first);
        {
            let mut sessions = self
                .sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            sessions.retain(|_, s| {
                s.live() > 0 || s.idle_since.is_some_and(|t| t.elapsed() < KEEP_IDLE)
            });
            let Some(s) = Self::session(&mut sessions, key(path, session)) else {
                // Full: the stream opens, but hears nothing (and resumes nothing).
                return rx;
            };
            if let Some(last) = last_event_id {
                for (id, ev) in s.recent.iter().filter(|(id, _)| *id > last) {
                    let _ = (id, tx.try_send(ev.clone()));
                }
            }
            s.senders.push(tx.clone());
            s.idle_since = None;
        }
        // The registry holds the only strong sender, so `close` ends the stream; the keep-alive
        // task ends with it, or when a write finds the client gone.
        let weak = tx.downgrade();
        drop(tx);
        METRICS.mcp_streams.inc();
        crate::background::handle().spawn(async move {
            loop {
                tokio::time::sleep(keepalive).await;
                let Some(tx) = weak.upgrade() else { break };
                if tx
                    .send(Bytes::from_static(b": keep-alive\n\n"))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            METRICS.mcp_streams.dec();
        });
        rx
    }

    /// A session's entry, new if need be, unless the hub holds `MAX_SESSIONS` already (after
    /// forgetting the idle ones); that refusal is counted.
    fn session(
        sessions: &mut HashMap<String, SessionStreams>,
        key: String,
    ) -> Option<&mut SessionStreams> {
        if !sessions.contains_key(&key) && sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| {
                s.live() > 0 || s.idle_since.is_some_and(|t| t.elapsed() < KEEP_IDLE)
            });
            if sessions.len() >= MAX_SESSIONS {
                METRICS
                    .mcp_dropped
                    .with_label_values(&["stream_session"])
                    .inc();
                return None;
            }
        }
        Some(sessions.entry(key).or_default())
    }

    fn send(s: &mut SessionStreams, message: &Value) {
        s.next_id += 1;
        let ev = event(s.next_id, message);
        let dropped = &METRICS.mcp_dropped;
        if ev.len() > REPLAY_BYTES {
            // Sent live, but too big to keep for a resume.
            dropped.with_label_values(&["replay_event"]).inc();
        } else {
            s.recent_bytes += ev.len();
            s.recent.push_back((s.next_id, ev.clone()));
        }
        while s.recent.len() > REPLAY || s.recent_bytes > REPLAY_BYTES {
            let by_bytes = s.recent.len() <= REPLAY;
            let Some((_, old)) = s.recent.pop_front() else {
                break;
            };
            s.recent_bytes -= old.len();
            if by_bytes {
                dropped.with_label_values(&["replay_event"]).inc();
            }
        }
        // A full stream misses the event (it stays in `recent` for a resume).
        s.senders.retain(|tx| {
            !matches!(
                tx.try_send(ev.clone()),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        });
    }

    /// Send a message to every session with a stream on `path`.
    pub fn broadcast(&self, path: &str, message: &Value) {
        let prefix = format!("{path}\u{0}");
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, s) in sessions.iter_mut().filter(|(k, _)| k.starts_with(&prefix)) {
            if s.live() > 0 {
                Self::send(s, message);
            }
        }
    }

    /// Send a message to one session's streams (kept for resumption when none is open).
    pub fn publish(&self, path: &str, session: &str, message: &Value) {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = Self::session(&mut sessions, key(path, session)) {
            s.live();
            Self::send(s, message);
        }
    }

    /// End a session's streams (DELETE) and forget its events.
    pub fn close(&self, path: &str, session: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key(path, session));
    }

    /// Open streams on `path`.
    #[cfg(test)]
    pub fn open_streams(&self, path: &str) -> usize {
        let prefix = format!("{path}\u{0}");
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions
            .iter_mut()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, s)| s.live())
            .sum()
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn events_reach_open_streams_and_replay_after_their_id() {
        let hub = StreamHub::default();
        let mut a = hub.open("/m", "s1", None, Duration::from_millis(50));
        assert_eq!(
            a.recv().await.unwrap(),
            Bytes::from_static(b": stream open\n\n")
        );
        hub.broadcast("/m", &json!({"n": 1}));
        hub.broadcast("/other", &json!({"n": 0}));
        hub.broadcast("/m", &json!({"n": 2}));
        assert_eq!(
            a.recv().await.unwrap(),
            Bytes::from("id: 1\ndata: {\"n\":1}\n\n")
        );
        assert_eq!(
            a.recv().await.unwrap(),
            Bytes::from("id: 2\ndata: {\"n\":2}\n\n")
        );
        assert_eq!(hub.open_streams("/m"), 1);
        drop(a);
        assert_eq!(hub.open_streams("/m"), 0);
        // Reconnecting after event 1 replays event 2 only.
        let mut b = hub.open("/m", "s1", Some(1), Duration::from_millis(50));
        b.recv().await.unwrap();
        assert_eq!(
            b.recv().await.unwrap(),
            Bytes::from("id: 2\ndata: {\"n\":2}\n\n")
        );
        assert_eq!(
            b.recv().await.unwrap(),
            Bytes::from_static(b": keep-alive\n\n")
        );
        // DELETE: the stream ends.
        hub.close("/m", "s1");
        assert_eq!(hub.open_streams("/m"), 0);
        while let Some(chunk) = b.recv().await {
            assert_eq!(chunk, Bytes::from_static(b": keep-alive\n\n"));
        }
    }
}
