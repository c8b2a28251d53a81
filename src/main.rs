//! stoa-gateway: the binary. Parses the command line and environment, loads the config file (or
//! builds a mode preset), then wires one Pingora proxy service per listener, the admin listener
//! and the control plane (reload + health checks) into a Pingora server.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::Parser;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use tracing::{info, warn};

use stoa_gateway::config::{self, GatewayConfig, Mode};
use stoa_gateway::overrides::Overrides;
use stoa_gateway::runtime::{GatewayState, SharedState};
use stoa_gateway::{admin, connection, control, logging, presets, proxy};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "stoa-gateway",
    version,
    about = "A programmable reverse proxy and API gateway on Pingora"
)]
struct Cli {
    /// Config file (YAML). Without it, the --mode preset runs.
    #[arg(short = 'c', long = "config", env = "GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Deployment mode; selects the built-in preset when no config file is given.
    #[arg(long, env = "GATEWAY_MODE", value_enum)]
    mode: Option<Mode>,
    /// Port of the (first) listener.
    #[arg(long, env = "GATEWAY_PORT")]
    port: Option<u16>,
    /// Upstream URL for the preset (http://host:port or https://host:port).
    #[arg(long, env = "GATEWAY_UPSTREAM")]
    upstream: Option<String>,
    /// Shadow mode's target backend (same as --upstream for the shadow preset).
    #[arg(long, env = "SHADOW_TARGET_BACKEND")]
    target: Option<String>,
    /// Shadow preset: the SQLite file of captured samples and contracts.
    #[arg(long, env = "SHADOW_STORE_PATH", default_value = "stoa-shadow.db")]
    shadow_store: String,
    /// Sidecar mode: the gateway in front of this one (kong, apigee, webmethods, custom).
    #[arg(long, env = "SIDECAR_PRIMARY_GATEWAY")]
    primary_gateway: Option<String>,
    /// Admin listener address (default 127.0.0.1:9901).
    #[arg(long, env = "GATEWAY_ADMIN_ADDRESS", global = true)]
    admin_address: Option<String>,
    /// A read-only listener for `/health`, `/ready` and `/metrics` only (Kubernetes probes,
    /// Prometheus), so the admin API itself can stay on loopback.
    #[arg(long, env = "GATEWAY_PROBE_ADDRESS")]
    probe_address: Option<String>,
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long, env = "GATEWAY_LOG_LEVEL")]
    log_level: Option<String>,
    /// Worker threads per listener (overrides server.threads).
    #[arg(long, env = "GATEWAY_THREADS")]
    threads: Option<usize>,
    /// Keycloak base URL; with --keycloak-realm, the proxy, edge-mcp and sidecar presets verify
    /// bearer tokens (issuer <url>/realms/<realm>, keys by OIDC discovery).
    #[arg(long, env = "KEYCLOAK_URL")]
    keycloak_url: Option<String>,
    /// Keycloak realm.
    #[arg(long, env = "KEYCLOAK_REALM")]
    keycloak_realm: Option<String>,
    /// Keycloak client id: the audience tokens must carry.
    #[arg(long, env = "KEYCLOAK_CLIENT_ID")]
    keycloak_client_id: Option<String>,
    /// External OPA server for the proxy preset's `opa` filter (and for `opa` filters that set
    /// neither `policy` nor `endpoint`).
    #[arg(long, env = "PROXY_OPA_ENDPOINT")]
    opa_endpoint: Option<String>,
    /// Mirror the (idempotent) requests of every routing chain to this candidate and compare
    /// its answers (shadow mode, Phase 1 of the migration runbook).
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// Edge-mcp preset: an upstream MCP server to federate, `URL` or `NAME=URL` (repeatable;
    /// a URL ending in `/sse` speaks the 2024-11-05 transport).
    #[arg(long = "mcp-upstream", value_name = "[NAME=]URL")]
    mcp_upstream: Vec<String>,
    /// Run the Rego unit tests (`test_` rules) of a policy directory or file, then exit.
    #[arg(long, value_name = "DIR")]
    test_policies: Option<PathBuf>,
    /// Validate the config, print each listener's effective chain, and exit 0 (valid) or 1.
    #[arg(long)]
    check: bool,
    /// Run in the background (Pingora daemon mode).
    #[arg(short, long)]
    daemon: bool,
    /// Take over the listening sockets of a running instance (Pingora graceful upgrade).
    #[arg(short, long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Read or change canary weights through a running gateway's admin API (its address:
    /// --admin-address, else the config file's `admin.address`, else 127.0.0.1:9901).
    Canary {
        #[command(subcommand)]
        action: CanaryAction,
        /// An admin token (setting a weight needs one).
        #[arg(long, env = "STOA_ADMIN_TOKEN", global = true, hide_env_values = true)]
        token: Option<String>,
    },
    /// Shadow mode's contracts through a running gateway's admin API (same address rules).
    /// Every call is audited: give a `--reason`, and a reviewer's `--token` (or, when the
    /// gateway has no reviewers configured, an `--actor` name).
    Uac {
        #[command(subcommand)]
        action: UacAction,
        /// Why you are reading or reviewing (recorded in the audit log).
        #[arg(long, env = "STOA_AUDIT_REASON", global = true)]
        reason: Option<String>,
        /// A reviewer's bearer token (`shadow.reviewers`).
        #[arg(long, env = "STOA_ADMIN_TOKEN", global = true, hide_env_values = true)]
        token: Option<String>,
        /// Your name, when the gateway has no reviewers configured (default: $USER).
        #[arg(long, env = "USER", global = true)]
        actor: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum UacAction {
    /// Every API with captures or a contract, and its review status.
    List,
    /// Print an API's contract: OpenAPI 3.1 (`--format openapi`, YAML; `--json` for JSON) or
    /// the UAC document (`--format uac`).
    Export {
        #[arg(long)]
        api: String,
        #[arg(long, value_enum, default_value = "openapi")]
        format: ExportFormat,
        #[arg(long)]
        json: bool,
        /// `approved` or `draft` (default: the approved version when there is one).
        #[arg(long)]
        source: Option<String>,
    },
    /// Approve an API's current draft (it becomes the enforced, exported version).
    Approve { api: String },
    /// Reject an API's current draft.
    Reject { api: String },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ExportFormat {
    Openapi,
    Uac,
}

#[derive(clap::Subcommand, Debug)]
enum CanaryAction {
    /// Print every canary's weight.
    Get,
    /// Set a canary's weight in percent (fractions allowed; 0 rolls back at once).
    Set {
        weight: f64,
        /// The canary filter's `name`.
        #[arg(long, default_value = "default")]
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Canary { action, token }) => {
            std::process::exit(canary_command(&cli, action, token.as_deref()))
        }
        Some(Command::Uac {
            action,
            reason,
            token,
            actor,
        }) => std::process::exit(uac_command(
            &cli,
            action,
            reason.as_deref(),
            token.as_deref(),
            actor.as_deref(),
        )),
        None => {}
    }
    if let Some(dir) = &cli.test_policies {
        std::process::exit(test_policies(dir));
    }
    let overrides = Overrides {
        port: cli.port,
        admin_address: cli.admin_address.clone(),
        probe_address: cli.probe_address.clone(),
        log_level: cli.log_level.clone(),
        mode: cli.mode,
        mirror: mirror_target(&cli),
        // `opa` filters without `policy`/`endpoint` ask this server.
        filter_settings: cli
            .opa_endpoint
            .iter()
            .map(|e| {
                (
                    stoa_filters::opa::OPA_ENDPOINT_SETTING.to_string(),
                    e.clone(),
                )
            })
            .collect(),
    };

    let mut cfg = match load_config(&cli) {
        Ok(cfg) => cfg,
        Err(e) => fail(&e),
    };
    overrides.apply(&mut cfg);
    if let Some(t) = cli.threads {
        cfg.server.threads = t;
    }
    if !cli.check {
        logging::init(cfg.gateway.log_level.as_deref().unwrap_or("info"));
    }
    let state = match GatewayState::build(cfg, 1, None) {
        Ok(s) => s,
        Err(mut e) => {
            if e.file.is_none() {
                e.file = cli.config.clone();
            }
            fail(&e.to_string())
        }
    };
    if cli.check {
        use std::io::Write;
        let report = format!(
            "config OK{}\n{}",
            cli.config
                .as_ref()
                .map(|p| format!(": {}", p.display()))
                .unwrap_or_default(),
            state.describe()
        );
        // A closed pipe (`--check | head -1`) is not an error worth a panic.
        let _ = std::io::stdout().write_all(report.as_bytes());
        std::process::exit(0);
    }
    if let Err(mut e) = state.install_shadow() {
        if e.file.is_none() {
            e.file = cli.config.clone();
        }
        fail(&e.to_string())
    }
    if let Some(pg) = &cli.primary_gateway {
        info!(primary_gateway = %pg, "sidecar: running behind the primary gateway");
    }
    if state.config.gateway.mode == Some(Mode::EdgeMcp)
        && cli.config.is_none()
        && cli.mcp_upstream.is_empty()
    {
        warn!("edge-mcp preset without a config file or --mcp-upstream: requests pass through to the upstream; MCP termination with a tool registry needs a config (see conf/edge-mcp.yaml), federation needs --mcp-upstream");
    }
    run(state, cli, overrides)
}

/// `stoa-gateway canary get|set`: talk to the admin API; the exit code says how it went.
fn canary_command(cli: &Cli, action: &CanaryAction, token: Option<&str>) -> i32 {
    admin_call(cli, |client, base| {
        let req = match action {
            CanaryAction::Get => client.get(format!("{base}/canary")),
            CanaryAction::Set { weight, name } => client
                .post(format!("{base}/canary"))
                .json(&serde_json::json!({ "weight": weight, "name": name })),
        };
        match token.and_then(|t| t.split(',').next()) {
            Some(t) => req.bearer_auth(t.trim()),
            None => req,
        }
    })
}

/// `stoa-gateway uac …`: the admin API's `/uac` endpoints.
fn uac_command(
    cli: &Cli,
    action: &UacAction,
    reason: Option<&str>,
    token: Option<&str>,
    actor: Option<&str>,
) -> i32 {
    let Some(reason) = reason.filter(|r| !r.trim().is_empty()) else {
        eprintln!("stoa-gateway: uac: --reason is required (every read is audited)");
        return 2;
    };
    let query = |extra: &[(&str, &str)]| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("reason", reason);
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        q.finish()
    };
    admin_call(cli, |client, base| {
        let req = match action {
            UacAction::List => client.get(format!("{base}/uac/contracts?{}", query(&[]))),
            UacAction::Export {
                api,
                format: ExportFormat::Uac,
                ..
            } => client.get(format!(
                "{base}/uac/contracts/{}?{}",
                form_urlencoded::byte_serialize(api.as_bytes()).collect::<String>(),
                query(&[])
            )),
            UacAction::Export {
                api,
                format: ExportFormat::Openapi,
                json,
                source,
            } => {
                let mut extra = vec![
                    ("api", api.as_str()),
                    ("format", if *json { "json" } else { "yaml" }),
                ];
                if let Some(s) = source {
                    extra.push(("source", s.as_str()));
                }
                client.get(format!("{base}/uac/openapi?{}", query(&extra)))
            }
            UacAction::Approve { api } | UacAction::Reject { api } => {
                let verb = if matches!(action, UacAction::Approve { .. }) {
                    "approve"
                } else {
                    "reject"
                };
                client
                    .post(format!(
                        "{base}/uac/contracts/{}/{verb}",
                        form_urlencoded::byte_serialize(api.as_bytes()).collect::<String>()
                    ))
                    .json(&serde_json::json!({ "reason": reason }))
            }
        };
        // A reviewer's token (with `shadow.reviewers`), else an admin token plus the actor.
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        match actor {
            Some(a) => req.header("x-stoa-actor", a),
            None => req,
        }
    })
}

/// One call to the admin API (address: --admin-address, else the config file's, else the
/// default); prints the answer, and the exit code says how it went.
fn admin_call(
    cli: &Cli,
    request: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> i32 {
    let admin = cli.admin_address.clone().unwrap_or_else(|| {
        cli.config
            .as_ref()
            .and_then(|p| GatewayConfig::load(p).ok())
            .map(|c| c.admin.address)
            .unwrap_or_else(config::default_admin)
    });
    let base = format!("http://{admin}");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stoa-gateway: {e}");
            return 1;
        }
    };
    let client = reqwest::Client::new();
    let req = request(&client, &base).timeout(std::time::Duration::from_secs(30));
    let outcome = runtime.block_on(async {
        let resp = req.send().await?;
        let status = resp.status();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    });
    match outcome {
        Ok((status, body)) if status.is_success() => {
            println!("{}", body.trim_end());
            0
        }
        Ok((status, body)) => {
            eprintln!("stoa-gateway: {base}: {status}: {body}");
            1
        }
        Err(e) => {
            eprintln!("stoa-gateway: {base}: {}", e.without_url());
            1
        }
    }
}

/// `--mirror URL`, else the runbook's `SHADOW_MODE_ENABLED=true` + `SHADOW_RUST_GATEWAY_URL`.
fn mirror_target(cli: &Cli) -> Option<String> {
    use stoa_filters::mirror::{SHADOW_ENABLED_ENV, SHADOW_URL_ENV};
    if cli.mirror.is_some() {
        return cli.mirror.clone();
    }
    let enabled = std::env::var(SHADOW_ENABLED_ENV)
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    if !enabled {
        return None;
    }
    match std::env::var(SHADOW_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => fail(&format!(
            "{SHADOW_ENABLED_ENV} is true but {SHADOW_URL_ENV} is not set"
        )),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("stoa-gateway: config error: {msg}");
    std::process::exit(1)
}

fn load_config(cli: &Cli) -> Result<GatewayConfig, String> {
    if let Some(path) = &cli.config {
        if !cli.mcp_upstream.is_empty() {
            return Err("--mcp-upstream builds the edge-mcp preset and takes no config file: list the servers under the mcp filter's `upstreams:` instead".into());
        }
        return GatewayConfig::load(path).map_err(|e| e.to_string());
    }
    let mode = cli.mode.unwrap_or(if cli.mcp_upstream.is_empty() {
        Mode::Proxy
    } else {
        Mode::EdgeMcp
    });
    let upstream = match mode {
        Mode::Shadow => cli.target.as_deref().or(cli.upstream.as_deref()),
        _ => cli.upstream.as_deref(),
    };
    let admin = cli
        .admin_address
        .clone()
        .unwrap_or_else(config::default_admin);
    presets::preset(&presets::PresetArgs {
        mode,
        port: cli.port.unwrap_or(presets::default_port(mode)),
        upstream,
        admin_address: &admin,
        keycloak: match (&cli.keycloak_url, &cli.keycloak_realm) {
            (Some(url), Some(realm)) => Some(presets::Keycloak {
                url,
                realm,
                client_id: cli.keycloak_client_id.as_deref(),
            }),
            _ => None,
        },
        opa_endpoint: cli.opa_endpoint.as_deref(),
        mcp_upstreams: &cli.mcp_upstream,
        shadow_store: &cli.shadow_store,
    })
    .map_err(|e| e.to_string())
}

fn secs_ceil(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn run(state: GatewayState, cli: Cli, overrides: Overrides) -> ! {
    let cfg = state.config.clone();
    let mut conf = ServerConf {
        threads: cfg.server.threads,
        pid_file: cfg.server.pid_file.clone(),
        upgrade_sock: cfg.server.upgrade_sock.clone(),
        daemon: cli.daemon,
        grace_period_seconds: Some(secs_ceil(cfg.server.grace_period.0)),
        graceful_shutdown_timeout_seconds: Some(secs_ceil(cfg.server.graceful_shutdown_timeout.0)),
        upstream_keepalive_pool_size: cfg.server.upstream_keepalive_pool_size,
        ..ServerConf::default()
    };
    conf.work_stealing = true;
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let shared: SharedState = Arc::new(ArcSwap::from_pointee(state));
    for (index, l) in cfg.listeners.iter().enumerate() {
        let l = &l.value;
        let gateway = proxy::Gateway {
            listener: l.name.as_str().into(),
            index,
            state: shared.clone(),
            paths: l.http.path_options(),
            keepalive_secs: l.http.keepalive_timeout.0.as_secs().max(1),
            body_idle_timeout: l.http.body_idle_timeout.0,
        };
        let mut http = pingora_proxy::http_proxy(&server.configuration, gateway);
        let mut opts = HttpServerOptions::default();
        opts.h2c = l.http2_enabled() && l.tls.is_none();
        // Pingora counts reuses after the first request.
        opts.keepalive_request_limit = l.http.max_requests_per_connection.checked_sub(1);
        opts.h2_idle_timeout = Some(l.http.keepalive_timeout.0);
        http.server_options = Some(opts);
        let guarded = connection::ConnectionGuard {
            inner: Arc::new(http),
            listener: l.name.as_str().into(),
            max_connections: l.http.max_connections,
            header_read_timeout: l.http.header_read_timeout.0,
            open: Default::default(),
        };
        let mut service = Service::new(format!("listener {}", l.name), guarded);
        match &l.tls {
            Some(tls) => {
                let mut settings = TlsSettings::intermediate(&tls.cert, &tls.key)
                    .unwrap_or_else(|e| fail(&format!("listeners.{}.tls: {e}", l.name)));
                if l.http2_enabled() {
                    settings.enable_h2();
                }
                service.add_tls_with_settings(&l.address, None, settings);
            }
            None => service.add_tcp(&l.address),
        }
        server.add_service(service);
    }

    if cfg.admin.enabled {
        let mut admin = Service::new(
            "admin".to_string(),
            admin_service("admin", shared.clone(), false),
        );
        admin.add_tcp(&cfg.admin.address);
        server.add_service(admin);
        let loopback = cfg
            .admin
            .address
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        if !loopback && !shared.load().admin.has_tokens() {
            warn!(admin = %cfg.admin.address, "the admin API listens beyond loopback without a token: reads are open to the network and state-changing calls are refused; set STOA_ADMIN_TOKEN or admin.token_file, or serve probes with admin.probe_address");
        }
    }
    if let Some(address) = &cfg.admin.probe_address {
        let mut probes = Service::new(
            "probes".to_string(),
            admin_service("probes", shared.clone(), true),
        );
        probes.add_tcp(address);
        server.add_service(probes);
    }

    let control = control::ControlPlane {
        state: shared.clone(),
        config_path: cli.config.clone(),
        overrides,
    };
    server.add_service(background_service("control plane", control));

    info!(
        listeners = cfg.listeners.len(),
        admin = %cfg.admin.address,
        mode = cfg.gateway.mode.map(|m| m.to_string()).unwrap_or_else(|| "custom".into()),
        version = env!("CARGO_PKG_VERSION"),
        "stoa-gateway starting"
    );
    server.run_forever()
}

/// The admin API (or the probe listener) as a Pingora app, with the same header deadline as a
/// default listener and room for 1,024 connections.
fn admin_service(
    name: &str,
    state: SharedState,
    probes_only: bool,
) -> connection::ConnectionGuard<pingora_core::apps::http_app::HttpServer<admin::AdminApp>> {
    let defaults = config::ListenerHttp::default();
    connection::ConnectionGuard {
        inner: Arc::new(pingora_core::apps::http_app::HttpServer::new_app(
            admin::AdminApp { state, probes_only },
        )),
        listener: name.into(),
        max_connections: 1024,
        header_read_timeout: defaults.header_read_timeout.0,
        open: Default::default(),
    }
}

/// `--test-policies`: run a policy directory's Rego unit tests through regorus, like `opa test`.
fn test_policies(dir: &std::path::Path) -> i32 {
    match stoa_filters::opa::run_rego_tests(dir) {
        Err(e) => {
            eprintln!("stoa-gateway: {e}");
            2
        }
        Ok(results) => {
            let failed = results.iter().filter(|r| !r.passed).count();
            for r in &results {
                let mark = if r.passed { "PASS" } else { "FAIL" };
                match &r.error {
                    Some(e) => println!("{mark} {} ({e})", r.name),
                    None => println!("{mark} {}", r.name),
                }
            }
            println!("{} passed, {failed} failed", results.len() - failed);
            if results.is_empty() {
                eprintln!("stoa-gateway: no test_ rules found in {}", dir.display());
                return 1;
            }
            i32::from(failed > 0)
        }
    }
}
