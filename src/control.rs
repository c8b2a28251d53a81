//! `ControlPlane`: the background service that keeps the running state current — it reloads the
//! config on SIGHUP and on file change (debounced), swapping the whole `GatewayState` only when
//! the new file validated and built completely, and it runs each cluster's active health checks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::cluster::Cluster;
use crate::config::{ConfigError, GatewayConfig};
use crate::metrics::METRICS;
use crate::overrides::Overrides;
use crate::runtime::{GatewayState, SharedState};

pub struct ControlPlane {
    pub state: SharedState,
    pub config_path: Option<PathBuf>,
    pub overrides: Overrides,
}

const DEBOUNCE: Duration = Duration::from_millis(200);
/// Upper bound on the health checks run before a reloaded config takes traffic.
const FIRST_CHECK_LIMIT: Duration = Duration::from_secs(5);

impl ControlPlane {
    /// Load, validate and build the file, run the new clusters' first health checks, then swap
    /// it in — only if everything succeeded.
    pub async fn reload(&self, trigger: &str) -> Result<u64, ConfigError> {
        let Some(path) = &self.config_path else {
            return Err(ConfigError::new(
                "",
                None,
                "no config file to reload (started from a --mode preset)",
            ));
        };
        let result = GatewayConfig::load(path).and_then(|mut cfg| {
            self.overrides.apply(&mut cfg);
            let current = self.state.load();
            let old: Vec<_> = current.config.listeners.iter().map(|l| &l.value).collect();
            let new: Vec<_> = cfg.listeners.iter().map(|l| &l.value).collect();
            let same_sockets = old.len() == new.len()
                && old.iter().zip(&new).all(|(a, b)| {
                    a.name == b.name
                        && a.address == b.address
                        && a.tls == b.tls
                        && a.http2 == b.http2
                        && a.http.read_buffer == b.http.read_buffer
                });
            if !same_sockets {
                return Err(ConfigError {
                    file: Some(path.clone()),
                    line: None,
                    path: "listeners".into(),
                    message:
                        "listener names, addresses, TLS, HTTP/2 or read_buffer settings changed; \
                              these need a restart (use a graceful upgrade)"
                            .into(),
                });
            }
            if current.config.admin.address != cfg.admin.address {
                warn!("admin.address changed; the admin listener keeps its address until restart");
            }
            let version = current.version + 1;
            GatewayState::build(cfg, version, Some(&current)).map_err(|mut e| {
                e.file.get_or_insert(path.clone());
                e
            })
        });
        match result {
            Ok(state) => {
                // New clusters start out "healthy": check them before they take traffic, so an
                // endpoint known to be down does not get requests after every reload.
                let checks = state
                    .clusters
                    .values()
                    .filter(|c| c.health_interval.is_some())
                    .map(|c| c.run_health_check());
                if tokio::time::timeout(FIRST_CHECK_LIMIT, futures::future::join_all(checks))
                    .await
                    .is_err()
                {
                    warn!("first health checks of the new config took too long; swapping anyway");
                }
                let version = state.version;
                // One swap makes the whole version current (chains, clusters, shadow settings,
                // admin endpoints); then its filters are told it serves.
                let state = Arc::new(state);
                self.state.store(state.clone());
                state.activate();
                METRICS.reloads.with_label_values(&["ok"]).inc();
                info!(version, trigger, "config reloaded");
                Ok(version)
            }
            Err(e) => {
                METRICS.reloads.with_label_values(&["error"]).inc();
                error!(trigger, error = %e, "config reload rejected; the previous config keeps serving");
                Err(e)
            }
        }
    }

    fn spawn_file_watcher(
        &self,
        tx: mpsc::UnboundedSender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        use notify::{EventKind, RecursiveMode, Watcher};
        let path = self.config_path.clone()?;
        if !self.state.load().config.server.watch_config {
            return None;
        }
        let file_name = path.file_name()?.to_os_string();
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from("."));
        // The directories filters read when built (e.g. an `mcp` filter's `tools_dir`): a file
        // added, changed or removed there reloads the config like an edit of the file does.
        let tool_dirs: Vec<PathBuf> = self
            .state
            .load()
            .config
            .chains
            .values()
            .flatten()
            .flat_map(|f| f.value.watched_dirs())
            .collect();
        let in_tool_dir = {
            let dirs = tool_dirs.clone();
            move |p: &std::path::Path| {
                let yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
                yaml && p.parent().is_some_and(|d| dirs.iter().any(|t| d == t))
            }
        };
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let relevant = matches!(
                    ev.kind,
                    EventKind::Modify(_) | EventKind::Create(_) | EventKind::Remove(_)
                ) && ev
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(file_name.as_os_str()) || in_tool_dir(p));
                if relevant {
                    let _ = tx.send(());
                }
            }
        })
        .map_err(|e| warn!(error = %e, "cannot watch the config file; reload with SIGHUP"))
        .ok()?;
        // Watch the directory: editors and ConfigMap updates replace the file rather than write it.
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP");
            return None;
        }
        for tools in &tool_dirs {
            if let Err(e) = watcher.watch(tools, RecursiveMode::NonRecursive) {
                warn!(error = %e, dir = %tools.display(), "cannot watch a directory a filter reads; reload with SIGHUP");
            }
        }
        Some(watcher)
    }
}

#[async_trait]
impl BackgroundService for ControlPlane {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut file_events) = mpsc::unbounded_channel();
        let _watcher = self.spawn_file_watcher(tx);
        let mut sighup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        self.state.load().activate();
        let health = tokio::spawn(health_loop(self.state.clone(), shutdown.clone()));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async { match sighup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                    let _ = self.reload("SIGHUP").await;
                }
                Some(()) = file_events.recv() => {
                    // Debounce: wait for the burst of events an editor produces, then reload once.
                    while let Ok(Some(())) =
                        tokio::time::timeout(DEBOUNCE, file_events.recv()).await
                    {}
                    if self.config_path.as_ref().is_some_and(|p| p.exists()) {
                        let _ = self.reload("file change").await;
                    }
                }
            }
        }
        health.abort();
    }
}

/// Runs every cluster's active health check at its own interval; clusters of a new config
/// version are checked at once. Results feed selection and `/ready`.
async fn health_loop(state: SharedState, mut shutdown: ShutdownWatch) {
    let mut due: HashMap<usize, (Arc<Cluster>, Instant)> = HashMap::new();
    loop {
        let current = state.load_full();
        let now = Instant::now();
        let mut live = HashMap::new();
        for c in current.clusters.values() {
            if c.health_interval.is_none() {
                continue;
            }
            let key = Arc::as_ptr(c) as usize;
            let next = due.get(&key).map(|(_, t)| *t).unwrap_or(now);
            live.insert(key, (c.clone(), next));
        }
        due = live;
        let to_run: Vec<Arc<Cluster>> = due
            .values()
            .filter(|(_, t)| *t <= now)
            .map(|(c, _)| c.clone())
            .collect();
        if !to_run.is_empty() {
            futures::future::join_all(to_run.iter().map(|c| c.run_health_check())).await;
            let after = Instant::now();
            for c in &to_run {
                let key = Arc::as_ptr(c) as usize;
                if let Some(entry) = due.get_mut(&key) {
                    entry.1 = after + c.health_interval.unwrap_or(Duration::from_secs(5));
                }
            }
        }
        let wait = due
            .values()
            .map(|(_, t)| t.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_millis(250))
            .min(Duration::from_millis(250));
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
