//! The config file model: YAML parsed strictly (unknown keys and bad values are errors that name
//! the file, line and key path), then validated as a whole (chains referenced by listeners
//! exist, routes point at defined clusters, addresses parse) before anything uses it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use stoa_filters::units::HumanDuration;
use stoa_filters::FilterConfig;

/// The deployment mode: a named preset of chains, not a code branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    EdgeMcp,
    Sidecar,
    Proxy,
    Shadow,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::EdgeMcp => "edge-mcp",
            Mode::Sidecar => "sidecar",
            Mode::Proxy => "proxy",
            Mode::Shadow => "shadow",
        })
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenerConfig>>,
    #[serde(default)]
    pub chains: BTreeMap<String, Vec<Spanned<FilterConfig>>>,
    #[serde(default)]
    pub clusters: BTreeMap<String, Spanned<ClusterConfig>>,
    /// Shadow capture and contract discovery: used in `mode: shadow`, and in other
    /// modes with `keep_observing: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Spanned<stoa_filters::uac::ShadowConfig>>,
    /// Tracing with OpenTelemetry (OTLP export); see `stoa_filters::telemetry`. Without it,
    /// the standard `OTEL_EXPORTER_OTLP_*ENDPOINT` variables turn tracing on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Spanned<stoa_filters::telemetry::TelemetryConfig>>,
    /// Settings from the command line that filters read as defaults, by `filter.key` (e.g.
    /// `opa.endpoint`); not part of the file (see `Overrides`).
    #[serde(skip)]
    pub filter_settings: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// The mode this file implements (informational when listeners are given).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter directive.
    #[serde(default)]
    pub log_level: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads per listener service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// How long the old process keeps serving after a graceful upgrade/shutdown signal.
    #[serde(default = "default_grace")]
    pub grace_period: HumanDuration,
    #[serde(default = "default_shutdown_timeout")]
    pub graceful_shutdown_timeout: HumanDuration,
    /// On SIGTERM, how long `/ready` answers 503 while every listener keeps serving, before
    /// the graceful shutdown begins (what a Kubernetes rollout needs to take the pod out of
    /// its Service first). 0: shut down at once.
    #[serde(default)]
    pub drain_period: HumanDuration,
    /// Reload when the config file changes on disk.
    #[serde(default = "yes")]
    pub watch_config: bool,
    /// Idle upstream connections kept per worker.
    #[serde(default = "default_pool")]
    pub upstream_keepalive_pool_size: usize,
}

fn default_threads() -> usize {
    1
}
fn default_pid_file() -> String {
    "/tmp/stoa-gateway.pid".into()
}
fn default_upgrade_sock() -> String {
    "/tmp/stoa-gateway-upgrade.sock".into()
}
fn default_grace() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_pool() -> usize {
    128
}
fn yes() -> bool {
    true
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            threads: default_threads(),
            pid_file: default_pid_file(),
            upgrade_sock: default_upgrade_sock(),
            grace_period: default_grace(),
            graceful_shutdown_timeout: default_shutdown_timeout(),
            drain_period: HumanDuration::default(),
            watch_config: true,
            upstream_keepalive_pool_size: default_pool(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "default_admin")]
    pub address: String,
    /// Set to false to run without the admin listener.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A file of admin bearer tokens, one per line (besides `STOA_ADMIN_TOKEN`); read at every
    /// config load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// `Host` values accepted besides loopback ones and the admin address's own IP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// `Origin`s allowed to call the admin API (none by default: no browser page may).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// A second, read-only listener serving only `/health`, `/ready` and `/metrics` (for
    /// Kubernetes probes and Prometheus while the admin API stays on loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_address: Option<String>,
}

pub fn default_admin() -> String {
    "127.0.0.1:9901".into()
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            address: default_admin(),
            enabled: true,
            token_file: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            probe_address: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: String,
    /// Named chains, concatenated in this order.
    pub chains: Vec<String>,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Plaintext: also accept HTTP/2 with prior knowledge (h2c); default false.
    /// TLS: offer h2 via ALPN; default true.
    #[serde(default)]
    pub http2: Option<bool>,
    /// Request canonicalisation and per-connection limits (see `ListenerHttp`).
    #[serde(default)]
    pub http: ListenerHttp,
}

/// How a listener treats its clients: how paths are canonicalised and what one connection
/// may cost. Defaults are nginx's where it has one.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerHttp {
    /// Merge `//` in paths into `/` (Envoy's `merge_slashes`).
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// `reject` (400) or `keep` an encoded `/` or `\` (`%2F`, `%5C`) in a path.
    #[serde(default)]
    pub escaped_slashes: stoa_filters::request_target::EscapedSlashes,
    /// The whole request header must arrive within this (0s: no deadline).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// An idle keep-alive connection is closed after this.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: HumanDuration,
    /// Requests served on one connection before it is closed (0: no limit).
    #[serde(default = "default_max_requests")]
    pub max_requests_per_connection: u32,
    /// Connections open at once on this listener; beyond it a new one is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A request body that sends nothing for this long ends the request (and frees its
    /// upstream connection).
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout: HumanDuration,
    /// The read buffer each client connection gets (Pingora's own default is 64 KiB, the
    /// largest part of what an open connection cost): 4 KiB on plaintext listeners (requests
    /// are read through it; the throughput is that of 64 KiB, see benches/README.md), 16 KiB
    /// with TLS (one whole TLS record per read). At most 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_buffer: Option<stoa_filters::units::ByteSize>,
    /// A path this listener answers itself, `200 ok` to GET and HEAD, before any filter: a
    /// liveness probe on the traffic port (the presets set `/health`). None by default, since
    /// the path may be the upstream API's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
}

fn default_header_read_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_keepalive_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_max_requests() -> u32 {
    1000
}
fn default_max_connections() -> usize {
    10_000
}
/// A plaintext listener's read buffer per connection (see `ListenerHttp::read_buffer`).
pub const DEFAULT_READ_BUFFER: u64 = 4 * 1024;
/// A TLS listener's: one TLS record (16 KiB) per read.
pub const DEFAULT_TLS_READ_BUFFER: u64 = 16 * 1024;
/// Above this a read buffer is a config error.
pub const MAX_READ_BUFFER: u64 = 1 << 20;

fn default_body_idle_timeout() -> HumanDuration {
    // nginx's client_body_timeout; it also bounds silence on upgraded (WebSocket) connections.
    HumanDuration::from_secs(60)
}

impl Default for ListenerHttp {
    fn default() -> Self {
        ListenerHttp {
            merge_slashes: true,
            escaped_slashes: Default::default(),
            header_read_timeout: default_header_read_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            max_requests_per_connection: default_max_requests(),
            max_connections: default_max_connections(),
            body_idle_timeout: default_body_idle_timeout(),
            read_buffer: None,
            health_path: None,
        }
    }
}

impl ListenerHttp {
    pub fn path_options(&self) -> stoa_filters::request_target::PathOptions {
        stoa_filters::request_target::PathOptions {
            merge_slashes: self.merge_slashes,
            escaped_slashes: self.escaped_slashes,
        }
    }
}

impl ListenerConfig {
    pub fn http2_enabled(&self) -> bool {
        self.http2.unwrap_or(self.tls.is_some())
    }

    /// The read buffer of each of this listener's connections, in bytes.
    pub fn read_buffer(&self) -> u64 {
        match (self.http.read_buffer, &self.tls) {
            (Some(size), _) => size.0,
            (None, Some(_)) => DEFAULT_TLS_READ_BUFFER,
            (None, None) => DEFAULT_READ_BUFFER,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub cert: String,
    pub key: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    pub selection: Selection,
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub passive_ejection: PassiveEjection,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Extra attempts on another endpoint after a connect failure (idempotent methods only).
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// h2 via ALPN (TLS) or h2c with prior knowledge (plaintext).
    #[serde(default)]
    pub http2: bool,
    /// Fast 503s while the cluster keeps failing (see `circuit.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<crate::circuit::CircuitBreakerConfig>,
}

fn default_retries() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EndpointConfig {
    Address(String),
    Weighted(WeightedEndpoint),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedEndpoint {
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: usize,
}

fn default_weight() -> usize {
    1
}

impl EndpointConfig {
    pub fn address(&self) -> &str {
        match self {
            EndpointConfig::Address(a) => a,
            EndpointConfig::Weighted(w) => &w.address,
        }
    }
    pub fn weight(&self) -> usize {
        match self {
            EndpointConfig::Address(_) => 1,
            EndpointConfig::Weighted(w) => w.weight,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Round robin; endpoint weights are honoured.
    #[default]
    RoundRobin,
    /// Alias of round_robin, for readers who expect the word.
    Weighted,
    Random,
    /// Ketama consistent hashing on `hash_on`.
    ConsistentHash,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum HashOn {
    Header(String),
    Cookie(String),
    Path(bool),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(rename = "type", default)]
    pub kind: HealthCheckKind,
    /// HTTP checks: the path to GET (expects a 2xx).
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// HTTP checks: the Host header to send.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_hc_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_hc_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "one")]
    pub healthy_threshold: usize,
    #[serde(default = "one")]
    pub unhealthy_threshold: usize,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

fn default_hc_path() -> String {
    "/health".into()
}
fn default_hc_interval() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_hc_timeout() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn one() -> usize {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveEjection {
    /// How long an endpoint that refused a connection is skipped (`0s` disables ejection).
    #[serde(default = "default_ejection")]
    pub duration: HumanDuration,
}

fn default_ejection() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl Default for PassiveEjection {
    fn default() -> Self {
        PassiveEjection {
            duration: default_ejection(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "default_connect")]
    pub connect: HumanDuration,
    #[serde(default = "default_rw")]
    pub read: HumanDuration,
    #[serde(default = "default_rw")]
    pub write: HumanDuration,
    /// How long an idle upstream connection stays in the pool.
    #[serde(default = "default_rw")]
    pub idle: HumanDuration,
}

fn default_connect() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_rw() -> HumanDuration {
    HumanDuration::from_secs(60)
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect(),
            read: default_rw(),
            write: default_rw(),
            idle: default_rw(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent in SNI and verified (defaults to the endpoint's host).
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the upstream certificate chain and host name.
    #[serde(default = "yes")]
    pub verify: bool,
    /// PEM bundle of CAs to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// A config error with its place: file, line and key path when known.
#[derive(Debug)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            // no file: a preset the flags built, whose lines the user never saw
            (None, _) => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn new(path: impl Into<String>, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line,
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Line of a spanned node (1-based), when the parser recorded one.
pub fn line_of<T>(s: &Spanned<T>) -> Option<usize> {
    let l = s.referenced.line();
    (l > 0).then_some(l as usize)
}

impl GatewayConfig {
    /// Parse YAML text; `file` is only used in error messages.
    pub fn parse(text: &str, file: Option<&Path>) -> Result<Self, ConfigError> {
        // serde_path_to_error records the key path; serde-saphyr records the line.
        let key_path = std::cell::RefCell::new(String::new());
        let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize::<_, GatewayConfig>(de).map_err(|e| {
                *key_path.borrow_mut() = e.path().to_string();
                e.into_inner()
            })
        });
        parsed.map_err(|e| {
            let (line, mut message) = describe_yaml_error(&e);
            // The rendered snippet shows neighbouring lines: never a secret's value.
            message = mask_secret_values(&message, text);
            if let Some(f) = file {
                message = message.replace("<input>", &f.display().to_string());
            }
            // `Spanned` wrappers show up as a `.value` segment; users never write it.
            let path = key_path.into_inner().replace(".value.", ".");
            let path = path.strip_suffix(".value").unwrap_or(&path).to_string();
            ConfigError {
                file: file.map(Path::to_path_buf),
                line,
                path: if path == "." { String::new() } else { path },
                message,
            }
        })
    }

    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: Some(file.to_path_buf()),
            line: None,
            path: String::new(),
            message: format!("cannot read config file: {e}"),
        })?;
        Self::parse(&text, Some(file))
    }

    /// Whether exchanges are captured for the shadow store: `mode: shadow`, or
    /// `shadow.keep_observing: true` in another mode (dual mode: the chain enforces while
    /// the store keeps capturing).
    pub fn observing(&self) -> bool {
        self.gateway.mode == Some(Mode::Shadow)
            || self.shadow.as_ref().is_some_and(|s| s.value.keep_observing)
    }

    /// Check the `shadow:` section and, when observing, put a `shadow_capture` at the end of
    /// every routing chain that has none. (Entries that need the section say so when built.)
    pub fn add_shadow_capture(&mut self) -> Result<(), ConfigError> {
        if let Some(s) = &self.shadow {
            s.value.validate().map_err(|e| {
                let (key, message) = e.split_once(": ").unwrap_or(("", &e));
                ConfigError::new(format!("shadow.{key}"), line_of(s), message)
            })?;
        } else if self.gateway.mode == Some(Mode::Shadow) {
            return Err(ConfigError::new(
                "shadow",
                None,
                "`mode: shadow` needs a `shadow:` section naming what may be captured (`opt_in`)",
            ));
        }
        if !self.observing() {
            return Ok(());
        }
        let capture = FilterConfig::with_type("shadow_capture", serde_json::json!({}))
            .map_err(|e| ConfigError::new("shadow", None, e))?;
        self.add_to_routing_chains(&capture);
        Ok(())
    }

    /// Put `entry` at the end of every chain that routes to clusters and has no entry of its
    /// type (`--mirror`, shadow capture).
    pub fn add_to_routing_chains(&mut self, entry: &FilterConfig) {
        for chain in self.chains.values_mut() {
            let routes = chain.iter().any(|f| f.value.routes_upstream());
            let has_one = chain
                .iter()
                .any(|f| f.value.type_name() == entry.type_name());
            if routes && !has_one {
                let unknown = serde_saphyr::Location::UNKNOWN;
                chain.push(Spanned::new(entry.clone(), unknown, unknown));
            }
        }
    }

    /// Whole-file checks that serde cannot express. Filter- and cluster-level checks happen when
    /// the runtime is built (see `runtime::GatewayState::build`), which reports the same way.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::new(
                "listeners",
                None,
                "at least one listener is required",
            ));
        }
        if self.server.threads == 0 {
            return Err(ConfigError::new(
                "server.threads",
                None,
                "must be at least 1",
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let line = line_of(l);
            let at = |k: &str| format!("listeners[{i}].{k}");
            if !names.insert(l.value.name.clone()) {
                return Err(ConfigError::new(
                    at("name"),
                    line,
                    format!("duplicate listener name `{}`", l.value.name),
                ));
            }
            let addr: SocketAddr = l.value.address.parse().map_err(|_| {
                ConfigError::new(
                    at("address"),
                    line,
                    format!("`{}` is not an IP:port address", l.value.address),
                )
            })?;
            if !addrs.insert(addr) {
                return Err(ConfigError::new(
                    at("address"),
                    line,
                    format!("address {addr} is used by another listener"),
                ));
            }
            if l.value.chains.is_empty() {
                return Err(ConfigError::new(
                    at("chains"),
                    line,
                    "list at least one chain",
                ));
            }
            for c in &l.value.chains {
                if !self.chains.contains_key(c) {
                    return Err(ConfigError::new(
                        at("chains"),
                        line,
                        format!(
                            "chain `{c}` is not defined under `chains:` (defined: {})",
                            self.chains.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            if l.value.read_buffer() > MAX_READ_BUFFER {
                return Err(ConfigError::new(
                    at("http.read_buffer"),
                    line,
                    format!(
                        "{} bytes is more than the 1 MiB a connection's read buffer may take",
                        l.value.read_buffer()
                    ),
                ));
            }
            if let Some(tls) = &l.value.tls {
                for (k, p) in [("cert", &tls.cert), ("key", &tls.key)] {
                    if !Path::new(p).is_file() {
                        return Err(ConfigError::new(
                            at(&format!("tls.{k}")),
                            line,
                            format!("file `{p}` does not exist"),
                        ));
                    }
                }
            }
        }
        if self.admin.enabled {
            self.admin.address.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "admin.address",
                    None,
                    format!("`{}` is not an IP:port address", self.admin.address),
                )
            })?;
        }
        for (name, c) in &self.clusters {
            let line = line_of(c);
            let at = |k: &str| format!("clusters.{name}.{k}");
            let c = &c.value;
            if c.endpoints.is_empty() {
                return Err(ConfigError::new(
                    at("endpoints"),
                    line,
                    "list at least one endpoint",
                ));
            }
            for (i, e) in c.endpoints.iter().enumerate() {
                if e.weight() == 0 {
                    return Err(ConfigError::new(
                        at(&format!("endpoints[{i}].weight")),
                        line,
                        "weight must be at least 1",
                    ));
                }
            }
            if c.selection == Selection::ConsistentHash && c.hash_on.is_none() {
                return Err(ConfigError::new(
                    at("hash_on"),
                    line,
                    "consistent_hash needs `hash_on: {header: NAME}`, `{cookie: NAME}` or `{path: true}`",
                ));
            }
            if let Some(hc) = &c.health_check {
                if hc.interval.0.is_zero() {
                    return Err(ConfigError::new(
                        at("health_check.interval"),
                        line,
                        "must be > 0",
                    ));
                }
                if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                    return Err(ConfigError::new(
                        at("health_check"),
                        line,
                        "thresholds must be at least 1",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The effective config as JSON with secret-looking values replaced by `"***"`.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        redact(&mut v);
        v
    }
}

/// Replace the values of keys that hold secrets (tokens, passwords, keys) with `"***"`.
pub fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if is_secret_key(k) && !val.is_null() {
                    *val = serde_json::Value::String("***".into());
                } else {
                    redact(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "secret",
        "password",
        "passphrase",
        "private_key",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "cookie",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// `message` with the value of every secret-looking key of `source` (block or flow style)
/// replaced by `***`.
pub fn mask_secret_values(message: &str, source: &str) -> String {
    static PAIR: once_cell::sync::Lazy<regex::Regex> = once_cell::sync::Lazy::new(|| {
        regex::Regex::new(r#"([A-Za-z0-9_.\-]+)\s*:\s*("[^"\n]*"|'[^'\n]*'|[^,{}\[\]\n#]+)"#)
            .expect("static regex")
    });
    let mut secrets: Vec<&str> = PAIR
        .captures_iter(source)
        .filter(|c| is_secret_key(&c[1]))
        .filter_map(|c| c.get(2))
        .map(|v| v.as_str().trim().trim_matches(|ch| ch == '"' || ch == '\''))
        .filter(|v| v.len() >= 3)
        .collect();
    // Longest first, so a secret containing another is masked whole.
    secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = message.to_string();
    for secret in secrets {
        out = out.replace(secret, "***");
    }
    out
}

/// serde-saphyr errors carry a location, a message and a rendered snippet of the file.
fn describe_yaml_error(e: &serde_saphyr::Error) -> (Option<usize>, String) {
    let line = e.location().map(|l| l.line() as usize).filter(|l| *l > 0);
    let full = e.to_string();
    let full = full.strip_prefix("error: ").unwrap_or(&full).to_string();
    (line, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_key() {
        let text =
            "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    chains: [c]\n    bogus: 1\n";
        let e = GatewayConfig::parse(text, Some(Path::new("x.yaml"))).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("x.yaml:5:"), "{s}");
        assert!(s.contains("bogus"), "{s}");
    }

    #[test]
    fn snippets_never_show_secret_values() {
        let text = "listeners:\n  - {name: a, address: \"127.0.0.1:1\", chains: [c]}\nchains:\n  c:\n    - type: jwt\n      issuer: x\n      hmac_secret: \"supersecretvalue-123\"\n      leeway: banana\n      flow: {client_secret: other-secret-999, x: 1}\n";
        let e = GatewayConfig::parse(text, None).unwrap_err().to_string();
        assert!(e.contains("banana"), "{e}");
        assert!(!e.contains("supersecretvalue"), "{e}");
        assert!(!e.contains("other-secret-999"), "{e}");
        assert!(e.contains("hmac_secret: \"***\""), "{e}");
    }

    #[test]
    fn redacts_secrets() {
        let mut v = serde_json::json!({"a": {"client_secret": "s", "path": "/x"}, "token": "t"});
        redact(&mut v);
        assert_eq!(v["a"]["client_secret"], "***");
        assert_eq!(v["a"]["path"], "/x");
        assert_eq!(v["token"], "***");
    }
}
