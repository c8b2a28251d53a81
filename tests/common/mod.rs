//! Test harness shared by the integration tests: the real `stoa-gateway` binary as a child
//! process (killed on drop) and real upstream servers (axum) on 127.0.0.1 ephemeral ports.
//!
//! Config templates may use these placeholders, replaced before the file is written:
//! `@PORT@`, `@PORT2@` (free ports for listeners), `@ADMIN@` (the admin port) and `@DIR@` (the
//! test's temp dir). Unless the YAML has its own top-level `server:` / `admin:` section, the
//! harness prepends one that keeps the pid file and upgrade socket in the temp dir and puts the
//! admin listener on `127.0.0.1:@ADMIN@`.
#![allow(dead_code)]

pub mod auth;
pub mod mcp;
pub mod raw;
pub mod redis;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tempfile::TempDir;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub const BIN: &str = env!("CARGO_BIN_EXE_stoa-gateway");

/// Environment variables the gateway reads; cleared for every child so the host's environment
/// cannot leak into a test.
const GATEWAY_ENV: &[&str] = &[
    "GATEWAY_CONFIG",
    "GATEWAY_MODE",
    "GATEWAY_PORT",
    "GATEWAY_LOG_LEVEL",
    "GATEWAY_UPSTREAM",
    "GATEWAY_ADMIN_ADDRESS",
    "GATEWAY_THREADS",
    "SHADOW_TARGET_BACKEND",
    "SIDECAR_PRIMARY_GATEWAY",
    "SHADOW_MODE_ENABLED",
    "SHADOW_RUST_GATEWAY_URL",
    "RUST_LOG",
    "STOA_ADMIN_TOKEN",
];

/// The admin token every test gateway accepts (`STOA_ADMIN_TOKEN`, unless a test sets its own).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A state-changing admin call as the CLI or an operator makes it: JSON, with the admin token.
pub fn admin_request(method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
    client()
        .request(method, url)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
}

/// A port that was free a moment ago (bind 127.0.0.1:0, read it, release it), and that no
/// other test process was handed in the last ten minutes: nextest runs tests as parallel
/// processes, and the kernel readily hands a just-released port to the next `bind(0)`, so
/// two gateways could otherwise be given the same port (one's listener, the other's admin).
/// Claims are files created exclusively in a shared directory.
pub fn free_port() -> u16 {
    let claims = std::env::temp_dir().join("stoa-test-ports");
    let _ = std::fs::create_dir_all(&claims);
    loop {
        let port = StdTcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .unwrap()
            .port();
        let claim = claims.join(port.to_string());
        let stale = std::fs::metadata(&claim)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600));
        if stale {
            let _ = std::fs::remove_file(&claim);
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
            .is_ok()
        {
            return port;
        }
    }
}

/// A port on which nothing listens: connecting to it is refused.
pub fn closed_port() -> u16 {
    free_port()
}

/// A plain `Command` for the gateway binary with the gateway's environment cleared.
pub fn gateway_command() -> Command {
    let mut cmd = Command::new(BIN);
    for k in GATEWAY_ENV {
        cmd.env_remove(k);
    }
    cmd
}

/// Run the binary to completion (for `--check`, `--version`); bounded by `timeout`.
pub fn run_to_end(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut cmd = gateway_command();
    cmd.args(args);
    run_bounded(cmd, &format!("stoa-gateway {args:?}"), timeout)
}

/// Run `cmd` to completion (panics naming `what` past `timeout`): its status, stdout and
/// stderr. Output goes to files, not pipes, so nothing blocks on a full pipe while we poll.
pub fn run_bounded(
    mut cmd: Command,
    what: &str,
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let dir = TempDir::new().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(out_path).unwrap_or_default(),
        std::fs::read_to_string(err_path).unwrap_or_default(),
    )
}

pub fn default_server_section(watch_config: bool) -> String {
    format!(
        "server:\n  pid_file: \"@DIR@/gateway.pid\"\n  upgrade_sock: \"@DIR@/upgrade.sock\"\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n  watch_config: {watch_config}\n"
    )
}

fn has_top_level(yaml: &str, key: &str) -> bool {
    yaml.lines().any(|l| l.starts_with(&format!("{key}:")))
}

/// How to start a gateway: a config template (or none: mode presets), extra args and env.
pub struct GatewayBuilder {
    yaml: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    watch_config: bool,
    wait_ready: bool,
    /// Pass `-c <file>` (false: only write the file, e.g. for GATEWAY_CONFIG).
    pass_config_flag: bool,
}

impl GatewayBuilder {
    pub fn new() -> Self {
        GatewayBuilder {
            yaml: None,
            args: Vec::new(),
            env: Vec::new(),
            watch_config: true,
            wait_ready: true,
            pass_config_flag: true,
        }
    }
    pub fn config(mut self, yaml: &str) -> Self {
        self.yaml = Some(yaml.to_string());
        self
    }
    /// Extra command-line arguments; placeholders are replaced in them too.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    /// An environment variable for the child; placeholders are replaced in the value.
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_string(), v.into()));
        self
    }
    pub fn watch_config(mut self, on: bool) -> Self {
        self.watch_config = on;
        self
    }
    pub fn no_config_flag(mut self) -> Self {
        self.pass_config_flag = false;
        self
    }
    pub fn wait_ready(mut self, on: bool) -> Self {
        self.wait_ready = on;
        self
    }

    pub async fn start(self) -> Gateway {
        let dir = Arc::new(TempDir::new().expect("temp dir"));
        let vars = Vars {
            port: free_port(),
            port2: free_port(),
            admin: free_port(),
            dir: dir.path().to_path_buf(),
        };
        let config_path = dir.path().join("gateway.yaml");
        let mut args = Vec::new();
        if let Some(yaml) = &self.yaml {
            let mut full = String::new();
            if !has_top_level(yaml, "server") {
                full.push_str(&default_server_section(self.watch_config));
            }
            if !has_top_level(yaml, "admin") {
                full.push_str("admin:\n  address: \"127.0.0.1:@ADMIN@\"\n");
            }
            full.push_str(yaml);
            std::fs::write(&config_path, vars.render(&full)).unwrap();
            if self.pass_config_flag {
                args.push("-c".to_string());
                args.push(config_path.display().to_string());
            }
        }
        args.extend(self.args.iter().map(|a| vars.render(a)));
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), vars.render(v)))
            .collect();
        if !env.iter().any(|(k, _)| k == "STOA_ADMIN_TOKEN") {
            env.push(("STOA_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()));
        }
        let mut gw = Gateway {
            port: vars.port,
            port2: vars.port2,
            admin_port: vars.admin,
            dir,
            config_path,
            stdout_path: PathBuf::new(),
            stderr_path: PathBuf::new(),
            child: None,
            args,
            env,
            vars,
        };
        gw.spawn("");
        if self.wait_ready {
            gw.wait_ready().await;
        }
        gw
    }
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone)]
struct Vars {
    port: u16,
    port2: u16,
    admin: u16,
    dir: PathBuf,
}

impl Vars {
    fn render(&self, s: &str) -> String {
        s.replace("@PORT2@", &self.port2.to_string())
            .replace("@PORT@", &self.port.to_string())
            .replace("@ADMIN@", &self.admin.to_string())
            .replace("@DIR@", &self.dir.display().to_string())
    }
}

/// A running gateway process; killed (SIGKILL) when dropped.
pub struct Gateway {
    pub port: u16,
    pub port2: u16,
    pub admin_port: u16,
    pub dir: Arc<TempDir>,
    pub config_path: PathBuf,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    vars: Vars,
}

impl Gateway {
    /// Start with a config template and wait until the admin `/ready` says 200.
    pub async fn start(yaml: &str) -> Gateway {
        GatewayBuilder::new().config(yaml).start().await
    }

    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::new()
    }

    fn spawn(&mut self, suffix: &str) {
        self.stdout_path = self.dir.path().join(format!("stdout{suffix}.log"));
        self.stderr_path = self.dir.path().join(format!("stderr{suffix}.log"));
        let mut cmd = gateway_command();
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&self.stdout_path).unwrap())
            .stderr(std::fs::File::create(&self.stderr_path).unwrap());
        self.child = Some(cmd.spawn().expect("spawn stoa-gateway"));
    }

    /// A second process on the same config, temp dir and ports, started with `--upgrade`: it
    /// waits on `server.upgrade_sock` for the listening sockets of this one (send SIGQUIT).
    pub fn spawn_upgrade(&self) -> Gateway {
        let mut args = self.args.clone();
        args.push("--upgrade".into());
        let mut gw = Gateway {
            port: self.port,
            port2: self.port2,
            admin_port: self.admin_port,
            dir: self.dir.clone(),
            config_path: self.config_path.clone(),
            stdout_path: PathBuf::new(),
            stderr_path: PathBuf::new(),
            child: None,
            args,
            env: self.env.clone(),
            vars: self.vars.clone(),
        };
        gw.spawn("-upgrade");
        gw
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("child").id() as i32
    }

    pub fn render(&self, s: &str) -> String {
        self.vars.render(s)
    }

    /// Poll the admin `/ready` until 200 (bounded); panics with the logs if the child died.
    pub async fn wait_ready(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "stoa-gateway exited early ({status}).\nstderr:\n{}\nstdout:\n{}",
                    self.stderr(),
                    self.stdout()
                );
            }
            match client.get(self.admin_url("/ready")).send().await {
                Ok(r) if r.status() == 200 => return,
                Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                panic!(
                    "stoa-gateway not ready within 20s (last: {last}).\nstderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    pub fn url2(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port2)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap()
    }

    /// A metric's value from `/metrics` (the series whose labels include all of `labels`).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Poll `/metrics` until `pred(value)` holds for the series (bounded).
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        pred: impl Fn(Option<f64>) -> bool,
    ) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name, labels).await;
            if pred(v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "metric {name}{labels:?} did not reach the expected value within {timeout:?}; last {v:?}\n{}",
                    self.metrics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Wait (bounded) until stdout has a line containing `needle`; returns that line.
    pub async fn wait_stdout_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.stdout().lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "no stdout line containing {needle:?} within {timeout:?}; stdout:\n{}",
                    self.stdout()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait (bounded) until stderr contains `needle`.
    pub async fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stderr();
            if s.contains(needle) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("stderr has no {needle:?} within {timeout:?}; stderr:\n{s}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replace the config file's content (placeholders rendered; harness sections prepended
    /// like at start). Written in place.
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, self.full_config(yaml)).unwrap();
    }

    /// Replace the config file by writing a sibling and renaming it over (ConfigMap style).
    pub fn replace_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".gateway.yaml.tmp");
        std::fs::write(&tmp, self.full_config(yaml)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// The full file text for `yaml`, keeping the current file's `server:` section (so the
    /// watch_config setting of the running process is kept).
    fn full_config(&self, yaml: &str) -> String {
        let current = std::fs::read_to_string(&self.config_path).unwrap_or_default();
        let mut full = String::new();
        if !has_top_level(yaml, "server") {
            let mut in_server = false;
            for l in current.lines() {
                if l.starts_with("server:") {
                    in_server = true;
                } else if !l.starts_with(' ') && !l.is_empty() {
                    in_server = false;
                }
                if in_server {
                    full.push_str(l);
                    full.push('\n');
                }
            }
        }
        if !has_top_level(yaml, "admin") {
            full.push_str("admin:\n  address: \"127.0.0.1:@ADMIN@\"\n");
        }
        full.push_str(yaml);
        self.vars.render(&full)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on our own child's pid.
            let rc = unsafe { libc::kill(c.id() as i32, sig) };
            assert_eq!(rc, 0, "kill({}, {sig}) failed", c.id());
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Find `name{...labels...} value` in Prometheus text.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let all = labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
        if all {
            return value.trim().parse().ok();
        }
    }
    None
}

/// A reqwest client without proxies and with a generous overall timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

// ------------------------------------------------------------------------------------------
// Upstream servers
// ------------------------------------------------------------------------------------------

/// A running upstream server; its task is aborted on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    pub id: String,
    /// Requests served (not counting `/health`).
    pub hits: Arc<AtomicUsize>,
    /// `/health` requests served.
    pub health_hits: Arc<AtomicUsize>,
    /// What `/health` answers: 200 when true, 500 when false.
    pub healthy: Arc<AtomicBool>,
    /// How long `/health` waits before answering (ms).
    pub health_delay_ms: Arc<AtomicU64>,
    /// TLS servers: the SNI of each accepted connection.
    pub sni: Arc<Mutex<Vec<Option<String>>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// `127.0.0.1:port`, as written in cluster endpoints.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    pub fn set_healthy(&self, on: bool) {
        self.healthy.store(on, Ordering::SeqCst);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct EchoState {
    id: String,
    hits: Arc<AtomicUsize>,
    health_hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    health_delay_ms: Arc<AtomicU64>,
}

/// The echo answer: what the upstream saw. Header values of repeated headers are joined by ", ".
async fn echo_handler(
    axum::extract::State(st): axum::extract::State<EchoState>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    if parts.uri.path() == "/health" {
        st.health_hits.fetch_add(1, Ordering::SeqCst);
        let delay = st.health_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        return if st.healthy.load(Ordering::SeqCst) {
            (StatusCode::OK, "ok").into_response()
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, "unhealthy").into_response()
        };
    }
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    // Counted once the whole body is in, before any delay.
    st.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(ms) = parts
        .headers
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if parts.headers.contains_key("x-no-echo") {
        let mut resp = axum::Json(serde_json::json!({ "server_id": st.id })).into_response();
        resp.headers_mut()
            .insert("x-upstream-id", st.id.parse().unwrap());
        return resp;
    }
    let json = serde_json::json!({
        "server_id": st.id,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers_json(&parts.headers),
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = axum::Json(json).into_response();
    let h = resp.headers_mut();
    h.insert("x-upstream-id", st.id.parse().unwrap());
    h.insert("x-internal-secret", "upstream-internal".parse().unwrap());
    h.insert("x-multi", "upstream".parse().unwrap());
    resp
}

fn headers_json(h: &HeaderMap) -> serde_json::Value {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        map.entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    serde_json::to_value(map).unwrap()
}

fn echo_router(st: EchoState) -> Router {
    Router::new()
        .route("/ws", get(ws_echo))
        .fallback(echo_handler)
        .with_state(st)
}

async fn ws_echo(ws: WebSocketUpgrade) -> Response {
    use axum::extract::ws::Message;
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(format!("echo: {}", t.as_str()).into()),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

fn new_state(id: &str) -> EchoState {
    EchoState {
        id: id.to_string(),
        hits: Arc::new(AtomicUsize::new(0)),
        health_hits: Arc::new(AtomicUsize::new(0)),
        healthy: Arc::new(AtomicBool::new(true)),
        health_delay_ms: Arc::new(AtomicU64::new(0)),
    }
}

/// An HTTP echo server (also: `/health` toggled by `healthy`, `/ws` WebSocket echo, a delay
/// before answering when the request has `x-delay-ms`, and a short answer without the echo
/// when it has `x-no-echo`).
pub async fn echo(id: &str) -> Upstream {
    echo_on(id, 0).await
}

/// Like `echo`, on a given port (0: any).
pub async fn echo_on(id: &str, port: u16) -> Upstream {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().unwrap();
    let st = new_state(id);
    let up = Upstream {
        addr,
        id: id.to_string(),
        hits: st.hits.clone(),
        health_hits: st.health_hits.clone(),
        healthy: st.healthy.clone(),
        health_delay_ms: st.health_delay_ms.clone(),
        sni: Arc::new(Mutex::new(Vec::new())),
        task: tokio::spawn(async move {
            let _ = axum::serve(listener, echo_router(st)).await;
        }),
    };
    up
}

/// An SSE upstream: `GET /events` sends `data: first`, then waits until `release` is notified
/// (at most 20 s), then sends `data: second` and ends. `finished` is set once the stream ends.
pub struct SseUpstream {
    pub addr: SocketAddr,
    pub release: Arc<Notify>,
    pub finished: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for SseUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn sse() -> SseUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(Notify::new());
    let finished = Arc::new(AtomicBool::new(false));
    let (r, f) = (release.clone(), finished.clone());
    let app = Router::new().route(
        "/events",
        get(move || {
            let (release, finished) = (r.clone(), f.clone());
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
                tokio::spawn(async move {
                    let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                    let _ = tokio::time::timeout(Duration::from_secs(20), release.notified()).await;
                    let _ = tx.send(Bytes::from_static(b"data: second\n\n")).await;
                    finished.store(true, Ordering::SeqCst);
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .header("cache-control", "no-cache")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    SseUpstream {
        addr,
        release,
        finished,
        task,
    }
}

// ------------------------------------------------------------------------------------------
// TLS
// ------------------------------------------------------------------------------------------

/// A test CA and a server certificate it signed (SANs: localhost, backend.test, 127.0.0.1).
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run the openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Generate the certificates with the `openssl` CLI into `dir`.
pub fn make_certs(dir: &Path) -> Certs {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(ec);
    ca_args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=stoa test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca_args);
    let mut csr_args = vec!["req"];
    csr_args.extend(ec);
    csr_args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr_args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,DNS:backend.test,IP:127.0.0.1\n\
         basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "4242",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// axum `Listener` that terminates TLS (rustls) and records each connection's SNI.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    sni: Arc<Mutex<Vec<Option<String>>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // Handshakes that fail (a client that does not trust us) are just dropped.
            let hs = tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await;
            if let Ok(Ok(tls)) = hs {
                let name = tls.get_ref().1.server_name().map(str::to_string);
                self.sni.lock().unwrap().push(name);
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An HTTPS echo server with the given certificate.
pub async fn tls_echo(id: &str, certs: &Certs) -> Upstream {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&certs.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let sni = Arc::new(Mutex::new(Vec::new()));
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        sni: sni.clone(),
    };
    let st = new_state(id);
    Upstream {
        addr,
        id: id.to_string(),
        hits: st.hits.clone(),
        health_hits: st.health_hits.clone(),
        healthy: st.healthy.clone(),
        health_delay_ms: st.health_delay_ms.clone(),
        sni,
        task: tokio::spawn(async move {
            let _ = axum::serve(listener, echo_router(st)).await;
        }),
    }
}

// ------------------------------------------------------------------------------------------
// Client helpers
// ------------------------------------------------------------------------------------------

/// A client that opens a new connection per request: for requests answered with a gateway error
/// (the gateway closes those connections; see `error_response_keepalive` in routing.rs).
pub fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// GET `url` and parse its JSON answer, e.g. an echo upstream's (panics unless 200).
pub async fn get_echo(c: &reqwest::Client, url: &str) -> serde_json::Value {
    let r = c
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "GET {url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not echo JSON ({e}): {text}"))
}

/// Which upstream answered (`server_id` of the echo JSON), or the status as `status:N`.
pub async fn who(c: &reqwest::Client, url: &str) -> String {
    match c.get(url).send().await {
        Ok(r) if r.status() == 200 => {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            v["server_id"].as_str().unwrap_or("?").to_string()
        }
        Ok(r) => format!("status:{}", r.status().as_u16()),
        Err(e) => format!("error:{e}"),
    }
}

// ------------------------------------------------------------------------------------------
// Load
// ------------------------------------------------------------------------------------------

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    pub failed: usize,
    /// Requests that failed at the transport level on a kept-alive connection and succeeded
    /// when sent again (only with `LoadOptions::retry_once`).
    pub retried: usize,
    /// The first few failures, for the assertion message.
    pub errors: Vec<String>,
    /// Successful answers by `x-upstream-id`.
    pub by_upstream: BTreeMap<String, usize>,
}

impl LoadReport {
    fn merge(&mut self, r: LoadReport) {
        self.ok += r.ok;
        self.failed += r.failed;
        self.retried += r.retried;
        self.errors.extend(r.errors);
        for (k, v) in r.by_upstream {
            *self.by_upstream.entry(k).or_insert(0) += v;
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub workers: usize,
    /// A new connection for every request (no keep-alive).
    pub fresh_connections: bool,
    /// Send a GET once more after a transport error, as browsers do for idempotent requests
    /// on a kept-alive connection the server closed meanwhile.
    pub retry_once: bool,
}

impl LoadOptions {
    pub fn keepalive(workers: usize) -> Self {
        LoadOptions {
            workers,
            fresh_connections: false,
            retry_once: false,
        }
    }
}

/// Continuous load on `url` until `stop` is set: `workers` tasks, each sending requests one
/// after another. Every answer other than a complete 200 is a failure.
pub fn start_load(url: String, opts: LoadOptions, stop: Arc<AtomicBool>) -> JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for w in 0..opts.workers {
            let (url, stop) = (url.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let cl = if opts.fresh_connections {
                    fresh_client()
                } else {
                    client()
                };
                let mut rep = LoadReport::default();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let url = format!("{url}?w={w}&i={i}");
                    let mut res = one_request(&cl, &url).await;
                    if opts.retry_once && matches!(res, Err((true, _))) {
                        res = one_request(&cl, &url).await;
                        if res.is_ok() {
                            rep.retried += 1;
                        }
                    }
                    match res {
                        Ok(id) => {
                            rep.ok += 1;
                            *rep.by_upstream.entry(id).or_insert(0) += 1;
                        }
                        Err((_, e)) => {
                            rep.failed += 1;
                            rep.errors.push(e);
                        }
                    }
                }
                rep
            }));
        }
        let mut total = LoadReport::default();
        for t in tasks {
            total.merge(t.await.unwrap());
        }
        total.errors.truncate(10);
        total
    })
}

/// One GET; Ok(upstream id) or Err((transport error?, description)).
async fn one_request(cl: &reqwest::Client, url: &str) -> Result<String, (bool, String)> {
    let r = cl
        .get(url)
        .header("x-no-echo", "1")
        .send()
        .await
        .map_err(|e| (true, format!("{e:?}")))?;
    let status = r.status();
    let id = r
        .headers()
        .get("x-upstream-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let body = r
        .bytes()
        .await
        .map_err(|e| (true, format!("body: {e:?}")))?;
    if status != 200 {
        return Err((
            false,
            format!("status {status}: {}", String::from_utf8_lossy(&body)),
        ));
    }
    Ok(id)
}
