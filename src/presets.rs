//! Mode presets: what `--mode=<mode>` runs when no config file is given. Each preset is written
//! as the YAML a user would write, then parsed and validated like any file, so `--check` and
//! `/config` show exactly what runs.

use crate::config::{ConfigError, GatewayConfig, Mode};

pub struct PresetArgs<'a> {
    pub mode: Mode,
    pub port: u16,
    pub upstream: Option<&'a str>,
    pub admin_address: &'a str,
    /// `KEYCLOAK_URL` + `KEYCLOAK_REALM` (+ `KEYCLOAK_CLIENT_ID`): verify bearer tokens.
    pub keycloak: Option<Keycloak<'a>>,
    /// `PROXY_OPA_ENDPOINT`: the proxy preset asks this OPA server about every request.
    pub opa_endpoint: Option<&'a str>,
    /// `--mcp-upstream [NAME=]URL`: the edge-mcp preset terminates MCP and federates these.
    pub mcp_upstreams: &'a [String],
    /// The shadow preset's store file (`--shadow-store`, `SHADOW_STORE_PATH`).
    pub shadow_store: &'a str,
}

pub struct Keycloak<'a> {
    pub url: &'a str,
    pub realm: &'a str,
    pub client_id: Option<&'a str>,
}

/// A YAML double-quoted string.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The default listening port of each mode: 3001 for edge-mcp, 8080 for the others.
pub fn default_port(mode: Mode) -> u16 {
    match mode {
        Mode::EdgeMcp => 3001,
        _ => 8080,
    }
}

/// Split `http://host:port` / `https://host:port` / `host:port` into (address, tls).
fn upstream_endpoint(url: &str) -> Result<(String, bool), String> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("https://") {
        (r, true)
    } else if let Some(r) = url.strip_prefix("http://") {
        (r, false)
    } else if url.contains("://") {
        return Err(format!(
            "upstream `{url}`: only http:// and https:// are supported"
        ));
    } else {
        (url, false)
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        return Err(format!("upstream `{url}` has no host"));
    }
    // `host:port`, `[v6]:port`, or a host alone (`[v6]` included) that gets the scheme's port
    let port = match authority.rsplit_once(':') {
        Some((_, p)) if !authority.ends_with(']') => Some(p),
        _ => None,
    };
    let with_port = match port {
        Some(p) if p.parse::<u16>().is_ok_and(|p| p > 0) => authority.to_string(),
        Some(p) => {
            return Err(format!(
                "upstream `{url}`: `{p}` is not a port (1 to 65535)"
            ))
        }
        None => format!("{authority}:{}", if tls { 443 } else { 80 }),
    };
    Ok((with_port, tls))
}

/// The edge-mcp preset's `mcp` filter federating `--mcp-upstream`s (each an http(s) URL with
/// a host, checked here so that the error names the flag).
fn mcp_filter(upstreams: &[String]) -> Result<String, String> {
    let mut yaml = String::from("    - type: mcp\n      upstreams:\n");
    for (i, flag) in upstreams.iter().enumerate() {
        let u = stoa_filters::mcp::federation::UpstreamConfig::from_flag(flag, i);
        let rest = u
            .url
            .strip_prefix("http://")
            .or_else(|| u.url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.split('/').next().unwrap_or("").is_empty()) {
            return Err(format!(
                "--mcp-upstream `{flag}`: not an http(s) URL with a host (`http://host:port/mcp`, or `NAME=URL`)"
            ));
        }
        yaml.push_str(&format!(
            "        - name: {}\n          url: {}\n",
            quoted(&u.name),
            quoted(&u.url)
        ));
    }
    Ok(yaml)
}

pub fn preset_yaml(a: &PresetArgs) -> Result<String, String> {
    let federates = a.mode == Mode::EdgeMcp && !a.mcp_upstreams.is_empty();
    if !a.mcp_upstreams.is_empty() && a.mode != Mode::EdgeMcp {
        return Err(format!(
            "--mcp-upstream is for --mode=edge-mcp, not --mode={}",
            a.mode
        ));
    }
    let upstream = match a.upstream {
        Some(u) => Some(u),
        None if federates => None,
        None => {
            let flag = match a.mode {
                Mode::Shadow => "--target (or SHADOW_TARGET_BACKEND)",
                Mode::EdgeMcp => {
                    "--mcp-upstream (MCP servers to federate) or --upstream (or GATEWAY_UPSTREAM)"
                }
                _ => "--upstream (or GATEWAY_UPSTREAM)",
            };
            return Err(format!(
                "--mode={} without a config file needs {flag}",
                a.mode
            ));
        }
    };
    // Every preset: request ids and an access log in front of a catch-all route.
    let extra = match a.mode {
        // Agents call from browsers and desktop apps: answer CORS preflights.
        Mode::EdgeMcp => "    - type: cors\n      allow_origins: [\"*\"]\n      allow_headers: [authorization, content-type, mcp-session-id, mcp-protocol-version, mcp-method, mcp-name, last-event-id]\n      expose_headers: [mcp-session-id]\n",
        _ => "",
    };
    // The Keycloak variables apply to every mode that serves clients directly (not shadow,
    // which only observes).
    let mut security = String::new();
    if let (Some(kc), Mode::Proxy | Mode::EdgeMcp | Mode::Sidecar) = (&a.keycloak, a.mode) {
        let client = kc.client_id.ok_or_else(|| {
            "KEYCLOAK_URL and KEYCLOAK_REALM are set but KEYCLOAK_CLIENT_ID is not: \
             it is the audience tokens must carry"
                .to_string()
        })?;
        let issuer = format!("{}/realms/{}", kc.url.trim_end_matches('/'), kc.realm);
        security.push_str(&format!(
            "    - type: jwt\n      issuer: {}\n      audiences: [{}]\n      client_id: {}\n",
            quoted(&issuer),
            quoted(client),
            quoted(client)
        ));
    }
    if let (Some(opa), Mode::Proxy) = (a.opa_endpoint, a.mode) {
        security.push_str(&format!(
            "    - type: opa\n      endpoint: {}\n",
            quoted(opa)
        ));
    }
    // A catch-all route to the upstream (optional when the preset federates MCP servers).
    let (router, clusters) = match upstream {
        Some(upstream) => {
            let (endpoint, tls) = upstream_endpoint(upstream)?;
            let tls_block = if tls {
                "\n    tls: { verify: true }"
            } else {
                ""
            };
            (
                format!(
                    "    - type: router\n      routes:\n        - name: upstream\n          match: {{ path_prefix: / }}\n          cluster: upstream\n          preserve_host: {}\n          forwarded_for: {}\n",
                    // A sidecar and a shadow sit in front of an existing service: keep its
                    // virtual hosts working.
                    matches!(a.mode, Mode::Sidecar | Mode::Shadow),
                    // Shadow mode passes requests through unmodified.
                    a.mode != Mode::Shadow
                ),
                format!("clusters:\n  upstream:\n    endpoints: [\"{endpoint}\"]{tls_block}\n"),
            )
        }
        None => (String::new(), String::new()),
    };
    let mcp = if federates {
        mcp_filter(a.mcp_upstreams)?
    } else {
        String::new()
    };
    // Shadow mode observes without touching: no request id header, and the target is opted
    // in for capture, so `--mode=shadow --target URL` alone starts capturing.
    let (request_id, shadow) = match (a.mode, upstream) {
        (Mode::Shadow, Some(target)) => {
            let (endpoint, _) = upstream_endpoint(target)?;
            let api = endpoint
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(&endpoint);
            (
                "",
                format!(
                    "shadow:\n  store:\n    path: {}\n  opt_in:\n    - name: {}\n",
                    quoted(a.shadow_store),
                    quoted(api)
                ),
            )
        }
        _ => ("    - type: request_id\n", String::new()),
    };
    Ok(format!(
        "# preset for --mode={mode}\ngateway:\n  mode: {mode}\nadmin:\n  address: \"{admin}\"\nlisteners:\n  - name: {mode}\n    address: \"0.0.0.0:{port}\"\n    chains: [{mode}]\n    http: {{ health_path: /health }}\nchains:\n  {mode}:\n{request_id}    - type: access_log\n{extra}{router}{security}{mcp}{clusters}{shadow}",
        mode = a.mode,
        admin = a.admin_address,
        port = a.port,
    ))
}

pub fn preset(a: &PresetArgs) -> Result<GatewayConfig, ConfigError> {
    let yaml = preset_yaml(a).map_err(|e| ConfigError::new("", None, e))?;
    GatewayConfig::parse(&yaml, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_ports_are_checked() {
        assert_eq!(
            upstream_endpoint("http://a:8000/x"),
            Ok(("a:8000".into(), false))
        );
        assert_eq!(upstream_endpoint("https://a"), Ok(("a:443".into(), true)));
        assert_eq!(
            upstream_endpoint("http://[::1]"),
            Ok(("[::1]:80".into(), false))
        );
        assert_eq!(upstream_endpoint("[::1]:9"), Ok(("[::1]:9".into(), false)));
        for bad in ["http://a:99999", "http://a:0", "http://a:", "http://a:x"] {
            let e = upstream_endpoint(bad).unwrap_err();
            assert!(e.contains("is not a port"), "{bad}: {e}");
        }
    }

    #[test]
    fn mcp_upstream_flags_are_checked_naming_the_flag() {
        assert!(mcp_filter(&["http://a:1/mcp".into(), "crm=https://crm/sse".into()]).is_ok());
        for bad in ["notaurl", "crm=ftp://x", "http:///mcp"] {
            let e = mcp_filter(&[bad.into()]).unwrap_err();
            assert!(e.starts_with("--mcp-upstream"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_mode_builds() {
        for mode in [Mode::EdgeMcp, Mode::Sidecar, Mode::Proxy, Mode::Shadow] {
            let cfg = preset(&PresetArgs {
                mode,
                port: 8080,
                upstream: Some("http://127.0.0.1:9000"),
                admin_address: "127.0.0.1:9901",
                keycloak: None,
                opa_endpoint: None,
                mcp_upstreams: &[],
                shadow_store: "stoa-shadow.db",
            })
            .unwrap();
            cfg.validate().unwrap();
            assert_eq!(cfg.gateway.mode, Some(mode));
        }
    }

    #[test]
    fn keycloak_env_adds_jwt_to_client_facing_modes() {
        let args = |mode, client_id| PresetArgs {
            mode,
            port: 8080,
            upstream: Some("http://127.0.0.1:9000"),
            admin_address: "127.0.0.1:9901",
            keycloak: Some(Keycloak {
                url: "https://auth.example/",
                realm: "stoa",
                client_id,
            }),
            opa_endpoint: Some("http://opa:8181"),
            mcp_upstreams: &[],
            shadow_store: "stoa-shadow.db",
        };
        let proxy = preset_yaml(&args(Mode::Proxy, Some("stoa-gateway"))).unwrap();
        assert!(proxy.contains("type: jwt"));
        assert!(proxy.contains("issuer: \"https://auth.example/realms/stoa\""));
        assert!(proxy.contains("audiences: [\"stoa-gateway\"]"));
        assert!(proxy.contains("endpoint: \"http://opa:8181\""));
        preset(&args(Mode::Proxy, Some("stoa-gateway")))
            .unwrap()
            .validate()
            .unwrap();
        for mode in [Mode::EdgeMcp, Mode::Sidecar] {
            let y = preset_yaml(&args(mode, Some("c"))).unwrap();
            assert!(y.contains("type: jwt") && !y.contains("type: opa"), "{y}");
        }
        assert!(!preset_yaml(&args(Mode::Shadow, Some("c")))
            .unwrap()
            .contains("type: jwt"));
        assert!(preset_yaml(&args(Mode::Proxy, None))
            .unwrap_err()
            .contains("KEYCLOAK_CLIENT_ID"));
    }

    #[test]
    fn mcp_upstreams_make_edge_mcp_federate() {
        let flags = [
            "http://127.0.0.1:4000/mcp".to_string(),
            "crm=http://crm:1/sse".to_string(),
        ];
        let args = |mode, upstream| PresetArgs {
            mode,
            port: 3001,
            upstream,
            admin_address: "127.0.0.1:9901",
            keycloak: None,
            opa_endpoint: None,
            mcp_upstreams: &flags,
            shadow_store: "stoa-shadow.db",
        };
        let y = preset_yaml(&args(Mode::EdgeMcp, None)).unwrap();
        assert!(
            y.contains("type: mcp") && !y.contains("type: router"),
            "{y}"
        );
        assert!(y.contains("name: \"crm\"") && y.contains("url: \"http://crm:1/sse\""));
        preset(&args(Mode::EdgeMcp, None))
            .unwrap()
            .validate()
            .unwrap();
        let with_upstream = preset_yaml(&args(Mode::EdgeMcp, Some("http://api:80"))).unwrap();
        assert!(with_upstream.contains("type: router") && with_upstream.contains("type: mcp"));
        assert!(preset_yaml(&args(Mode::Proxy, Some("http://api:80")))
            .unwrap_err()
            .contains("--mcp-upstream is for --mode=edge-mcp"));
    }

    #[test]
    fn upstream_parsing() {
        assert_eq!(
            upstream_endpoint("http://b:8080").unwrap(),
            ("b:8080".into(), false)
        );
        assert_eq!(
            upstream_endpoint("https://b").unwrap(),
            ("b:443".into(), true)
        );
        assert!(upstream_endpoint("ftp://b").is_err());
    }
}
