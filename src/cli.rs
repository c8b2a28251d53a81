//! The command line: the clap definition of flags, subcommands and the environment variables
//! they fall back to, and what those produce before any server exists: the mirror target
//! (`--mirror` or the shadow environment variables) and the config (the file, or a preset).

use std::path::PathBuf;

use clap::Parser;

use stoa_gateway::config::{self, GatewayConfig, Mode};
use stoa_gateway::presets;

#[derive(Parser, Debug)]
#[command(
    name = "stoa-gateway",
    version,
    about = "A programmable reverse proxy and API gateway on Pingora"
)]
pub struct Cli {
    /// Config file (YAML). Without it, the --mode preset runs.
    #[arg(short = 'c', long = "config", env = "GATEWAY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Deployment mode; selects the built-in preset when no config file is given.
    #[arg(long, env = "GATEWAY_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// Port of the (first) listener.
    #[arg(long, env = "GATEWAY_PORT")]
    pub port: Option<u16>,
    /// Upstream URL for the preset (http://host:port or https://host:port).
    #[arg(long, env = "GATEWAY_UPSTREAM")]
    pub upstream: Option<String>,
    /// Shadow mode's target backend (same as --upstream for the shadow preset).
    #[arg(long, env = "SHADOW_TARGET_BACKEND")]
    pub target: Option<String>,
    /// Shadow preset: the SQLite file of captured samples and contracts.
    #[arg(long, env = "SHADOW_STORE_PATH", default_value = "stoa-shadow.db")]
    pub shadow_store: String,
    /// Sidecar mode: the gateway in front of this one (kong, apigee, webmethods, custom).
    #[arg(long, env = "SIDECAR_PRIMARY_GATEWAY")]
    pub primary_gateway: Option<String>,
    /// Admin listener address (default 127.0.0.1:9901).
    #[arg(long, env = "GATEWAY_ADMIN_ADDRESS", global = true)]
    pub admin_address: Option<String>,
    /// A read-only listener for `/health`, `/ready` and `/metrics` only (Kubernetes probes,
    /// Prometheus), so the admin API itself can stay on loopback.
    #[arg(long, env = "GATEWAY_PROBE_ADDRESS")]
    pub probe_address: Option<String>,
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long, env = "GATEWAY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Worker threads per listener (overrides server.threads).
    #[arg(long, env = "GATEWAY_THREADS")]
    pub threads: Option<usize>,
    /// Keycloak base URL; with --keycloak-realm, the proxy, edge-mcp and sidecar presets verify
    /// bearer tokens (issuer <url>/realms/<realm>, keys by OIDC discovery).
    #[arg(long, env = "KEYCLOAK_URL")]
    pub keycloak_url: Option<String>,
    /// Keycloak realm.
    #[arg(long, env = "KEYCLOAK_REALM")]
    pub keycloak_realm: Option<String>,
    /// Keycloak client id: the audience tokens must carry.
    #[arg(long, env = "KEYCLOAK_CLIENT_ID")]
    pub keycloak_client_id: Option<String>,
    /// External OPA server for the proxy preset's `opa` filter (and for `opa` filters that set
    /// neither `policy` nor `endpoint`).
    #[arg(long, env = "PROXY_OPA_ENDPOINT")]
    pub opa_endpoint: Option<String>,
    /// Mirror the (idempotent) requests of every routing chain to this candidate and compare
    /// its answers (shadow traffic: the first step of a migration, before a canary and the
    /// cut-over).
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Edge-mcp preset: an upstream MCP server to federate, `URL` or `NAME=URL` (repeatable;
    /// a URL ending in `/sse` speaks the 2024-11-05 transport).
    #[arg(long = "mcp-upstream", value_name = "[NAME=]URL")]
    pub mcp_upstream: Vec<String>,
    /// Run the Rego unit tests (`test_` rules) of a policy directory or file, then exit.
    #[arg(long, value_name = "DIR")]
    pub test_policies: Option<PathBuf>,
    /// Validate the config, print each listener's effective chain, and exit 0 (valid) or 1.
    #[arg(long)]
    pub check: bool,
    /// Run in the background (Pingora daemon mode).
    #[arg(short, long)]
    pub daemon: bool,
    /// Take over the listening sockets of a running instance (Pingora graceful upgrade).
    #[arg(short, long)]
    pub upgrade: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
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
pub enum UacAction {
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
pub enum ExportFormat {
    Openapi,
    Uac,
}

#[derive(clap::Subcommand, Debug)]
pub enum CanaryAction {
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

/// `--mirror URL`, else `SHADOW_MODE_ENABLED=true` + `SHADOW_RUST_GATEWAY_URL` (the environment
/// of a migration's shadow step: mirror to the candidate, then canary, then cut over).
pub fn mirror_target(cli: &Cli) -> Option<String> {
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
        _ => crate::fail(&format!(
            "{SHADOW_ENABLED_ENV} is true but {SHADOW_URL_ENV} is not set"
        )),
    }
}

/// The config file (`-c`), else the preset the mode, upstream and Keycloak options build.
pub fn load_config(cli: &Cli) -> Result<GatewayConfig, String> {
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
