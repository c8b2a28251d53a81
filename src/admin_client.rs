//! The subcommands that talk to a running gateway's admin API over HTTP (`canary`, `uac`):
//! building each request, finding the admin address, printing the answer as the exit code.

use stoa_gateway::config::{self, GatewayConfig};

use crate::cli::{CanaryAction, Cli, ExportFormat, UacAction};

/// `stoa-gateway canary get|set`: talk to the admin API; the exit code says how it went.
pub fn canary_command(cli: &Cli, action: &CanaryAction, token: Option<&str>) -> i32 {
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
pub fn uac_command(
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
