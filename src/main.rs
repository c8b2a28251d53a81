//! stoa-gateway: the binary. `main` dispatches the command line (`cli`): an admin-API
//! subcommand (`admin_client`), the Rego test runner (`policy_tests`), `--check`, or the server;
//! the server wiring here builds one Pingora proxy service per listener, the admin and probe
//! listeners and the control plane (reload + health checks) into a Pingora server.

mod admin_client;
mod cli;
mod policy_tests;

use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::Parser;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use tracing::{info, warn};

use stoa_gateway::config::{self, Mode};
use stoa_gateway::overrides::Overrides;
use stoa_gateway::runtime::{GatewayState, SharedState};
use stoa_gateway::{admin, connection, control, drain, logging, proxy};

use crate::admin_client::{canary_command, uac_command};
use crate::cli::{load_config, mirror_target, Cli, Command};
use crate::policy_tests::test_policies;

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        // `--check` builds the config to validate it: filters create nothing.
        filter_settings: cli
            .opa_endpoint
            .iter()
            .map(|e| {
                (
                    stoa_filters::opa::OPA_ENDPOINT_SETTING.to_string(),
                    e.clone(),
                )
            })
            .chain(cli.check.then(|| {
                (
                    stoa_filters::build::CHECK_ONLY_SETTING.to_string(),
                    "true".to_string(),
                )
            }))
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
        // --log-level / GATEWAY_LOG_LEVEL, then RUST_LOG, then the file's gateway.log_level.
        let level = cli
            .log_level
            .clone()
            .or_else(|| {
                std::env::var("RUST_LOG")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            })
            .or_else(|| cfg.gateway.log_level.clone())
            .unwrap_or_else(|| "info".into());
        logging::init(&level);
    }
    let state = match GatewayState::build(cfg, 1, None) {
        Ok(s) => s,
        Err(mut e) => {
            if e.file.is_none() {
                e.file = cli.config.clone();
            }
            match &cli.config {
                Some(_) => fail(&e.to_string()),
                // a preset: no file the user wrote, so no line of it to cite
                None => fail(&format!(
                    "the {} preset (from the flags): {e}",
                    preset_name(&cli)
                )),
            }
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

/// A config error: print it and exit 1.
fn fail(msg: &str) -> ! {
    eprintln!("stoa-gateway: config error: {msg}");
    std::process::exit(1)
}

fn secs_ceil(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `--mode=X`, as the preset the flags built is named in errors.
fn preset_name(cli: &Cli) -> String {
    let mode = cli.mode.unwrap_or(if cli.mcp_upstream.is_empty() {
        Mode::Proxy
    } else {
        Mode::EdgeMcp
    });
    format!("--mode={mode}")
}

/// Every address the gateway will listen on, bound once and released, so that one already in
/// use fails the start at once with its address (Pingora would retry for half a minute and
/// then panic). Skipped for a graceful upgrade, whose sockets come from the old process.
fn check_addresses(cfg: &config::GatewayConfig) {
    let mut addresses: Vec<(String, &str)> = cfg
        .listeners
        .iter()
        .map(|l| {
            (
                format!("listener {}", l.value.name),
                l.value.address.as_str(),
            )
        })
        .collect();
    if cfg.admin.enabled {
        addresses.push(("the admin API".into(), cfg.admin.address.as_str()));
    }
    if let Some(probes) = &cfg.admin.probe_address {
        addresses.push(("the probe listener".into(), probes.as_str()));
    }
    for (what, address) in addresses {
        if let Err(e) = std::net::TcpListener::bind(address) {
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse => "address in use".to_string(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                _ => e.to_string(),
            };
            eprintln!("stoa-gateway: cannot listen on {address} ({what}): {why}");
            std::process::exit(1);
        }
    }
}

fn run(state: GatewayState, cli: Cli, overrides: Overrides) -> ! {
    let cfg = state.config.clone();
    if !cli.upgrade {
        check_addresses(&cfg);
    }
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

    let tracing_on = state.telemetry.is_some();
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
            health_path: l.http.health_path.clone(),
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
        // The read buffer is what an open connection costs most (see `http.read_buffer`).
        let read_buffer = usize::try_from(l.read_buffer()).unwrap_or(usize::MAX);
        let buffers = L4BufferSettings::default().read(read_buffer);
        let mut endpoint =
            pingora_core::listeners::ListenerConfig::tcp(&l.address).l4_buffer(buffers);
        if let Some(tls) = &l.tls {
            let mut settings = TlsSettings::intermediate(&tls.cert, &tls.key)
                .unwrap_or_else(|e| fail(&format!("listeners.{}.tls: {e}", l.name)));
            if l.http2_enabled() {
                settings.enable_h2();
            }
            endpoint = endpoint.tls(settings);
        }
        service.add_listener(endpoint);
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

    let listening: Vec<String> = cfg
        .listeners
        .iter()
        .map(|l| format!("{}={}", l.value.name, l.value.address))
        .collect();
    for l in &cfg.listeners {
        let l = &l.value;
        info!(
            listener = %l.name,
            address = %l.address,
            chains = %l.chains.join(","),
            tls = l.tls.is_some(),
            http2 = l.http2_enabled(),
            "listening"
        );
    }
    // The migration runbook checks that mirroring is on with `grep "Shadow mode"`.
    for (chain, filters) in &cfg.chains {
        for f in filters {
            if let stoa_filters::registry::FilterConfig::Mirror(m) = &f.value {
                info!(
                    chain = %chain,
                    candidate = %stoa_filters::telemetry::outbound::url_without_credentials(&m.url),
                    percent = m.percent,
                    "Shadow mode: mirroring to the candidate (its answers are compared, never returned)"
                );
            }
        }
    }
    info!(
        listeners = %listening.join(" "),
        admin = %cfg.admin.address,
        tracing = tracing_on,
        mode = cfg.gateway.mode.map(|m| m.to_string()).unwrap_or_else(|| "custom".into()),
        version = env!("CARGO_PKG_VERSION"),
        "stoa-gateway starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(drain::DrainingSignalWatch {
            drain_period: cfg.server.drain_period.0,
        }),
    });
    std::process::exit(0)
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
