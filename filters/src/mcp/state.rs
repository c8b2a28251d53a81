//! `McpState`: what the `mcp` filters share and what outlives one filter instance (a config
//! reload builds new ones): the tool list each path last served, the fallback session key,
//! client capabilities that could not be sealed, the sessions seen recently (for the gauge),
//! the SSE stream hub and the terminated sessions. A shared resource (see `crate::build`): one
//! per process while a config has an `mcp` filter, handed to each when it is built.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde_json::Value;
use tracing::warn;

use super::config::SESSION_SECRET_ENV;
use super::streams::StreamHub;
use crate::mcp::metrics::METRICS;

pub struct McpState {
    /// The tool list each path last served, to tell sessions when a reload changed it.
    pub(super) served_tools: Mutex<HashMap<String, String>>,
    /// The session key when none is configured: the same across reloads.
    secret: OnceLock<Vec<u8>>,
    /// Client capabilities of sessions that could not seal them (the legacy transport's
    /// session exists before its `initialize`); that transport's sessions live in one process
    /// anyway. Bounded by bytes (64 MiB, each entry weighed as its serialized size).
    pub(super) unsealed_capabilities: moka::sync::Cache<String, Value>,
    /// Sessions seen recently, for the `mcp_active_sessions` gauge (at most a million,
    /// 32-byte keys).
    pub(super) active_sessions: moka::sync::Cache<[u8; 32], ()>,
    gauge_started: AtomicBool,
    /// The SSE streams of every session, by transport path (see `streams`).
    pub hub: StreamHub,
    /// Sessions ended by `DELETE` (so a reload, which builds a new sealer, does not bring them
    /// back), kept as long as a session may live (30 days at most). Keyed by the id's SHA-256,
    /// so a million terminated sessions cost ~100 MB at most whatever their ids' length.
    pub(super) terminated: moka::sync::Cache<[u8; 32], ()>,
}

impl Default for McpState {
    fn default() -> Self {
        McpState {
            served_tools: Mutex::default(),
            secret: OnceLock::new(),
            unsealed_capabilities: moka::sync::Cache::builder()
                .weigher(|k: &String, v: &Value| {
                    let bytes = k.len() + serde_json::to_vec(v).map_or(0, |b| b.len()) + 64;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .max_capacity(64 << 20)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
            active_sessions: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(Duration::from_secs(300))
                .build(),
            gauge_started: AtomicBool::new(false),
            hub: StreamHub::default(),
            terminated: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(30 * 24 * 3600))
                .build(),
        }
    }
}

impl McpState {
    /// The random session key used when none is configured (made, and warned about, once).
    pub(super) fn generated_secret(&self) -> Vec<u8> {
        self.secret
            .get_or_init(|| {
                warn!(
                    "mcp: no session_secret and no {SESSION_SECRET_ENV}: sessions are sealed with a random key \
                     and end when this process does (set one shared secret for restarts and replicas)"
                );
                let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
                key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                key
            })
            .clone()
    }

    /// Keep `mcp_active_sessions` current while this state lives (started once).
    pub(super) fn start_gauge(self: &Arc<Self>) {
        if self.gauge_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let state: Weak<McpState> = Arc::downgrade(self);
        crate::background::handle().spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let Some(state) = state.upgrade() else { return };
                state.active_sessions.run_pending_tasks();
                METRICS
                    .mcp_active_sessions
                    .set(state.active_sessions.entry_count() as i64);
            }
        });
    }
}

/// A fixed-size key for a client-chosen session id, so a store of ids costs 32 bytes each
/// however long the ids are.
pub(super) fn session_key(session_id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(session_id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_sha256_of_the_id() {
        // SHA-256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            hex(&session_key("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(session_key("s-1"), session_key("s-1"));
        assert_ne!(session_key("s-1"), session_key("s-2"));
        // However long the id, the key is 32 bytes.
        assert_ne!(
            session_key(&"x".repeat(10_000)),
            session_key(&"x".repeat(10_001))
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
