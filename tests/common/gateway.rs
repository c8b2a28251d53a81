//! The gateway under test: the real `stoa-gateway` binary as a child process (killed on drop),
//! started from a config template by `GatewayBuilder`, with its ports, logs, metrics, config
//! rewrites and signals; also free ports across nextest processes and bounded runs of the
//! binary (or any command) to completion.
//!
//! Config templates may use these placeholders, replaced before the file is written:
//! `@PORT@`, `@PORT2@` (free ports for listeners), `@ADMIN@` (the admin port) and `@DIR@` (the
//! test's temp dir). Unless the YAML has its own top-level `server:` / `admin:` section, the
//! harness prepends one that keeps the pid file and upgrade socket in the temp dir and puts the
//! admin listener on `127.0.0.1:@ADMIN@`.

use std::net::TcpListener as StdTcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::client;

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
