//! `AdminGuard`: who may call the admin API. The probes (`GET /health`, `/ready`, `/metrics`)
//! are open; every other call must come with a loopback (or allowed) `Host` (no DNS rebinding),
//! no foreign `Origin` (no browser page), a JSON body when it has one (no CORS-simple
//! `text/plain` POST), and, when it changes state (any method but GET and HEAD), an admin
//! bearer token (`STOA_ADMIN_TOKEN`, comma-separated, and/or `admin.token_file`, one
//! per line), compared in constant time. An endpoint that authenticates its own callers (the
//! `/uac` endpoints when `shadow.reviewers` is set: reviewer tokens, every call audited) is
//! not asked for the admin token.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AdminSection, ConfigError};

/// The environment variable holding admin tokens (comma-separated); the CLI sends it too.
pub const ADMIN_TOKEN_ENV: &str = "STOA_ADMIN_TOKEN";

pub struct AdminGuard {
    /// SHA-256 digests of the accepted tokens (equal length, so comparisons are constant-time).
    tokens: Vec<[u8; 32]>,
    /// Hosts accepted in `Host` besides loopback ones (lowercase, without port).
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
}

/// A refusal: status and message.
pub type Refused = (u16, &'static str);

pub fn is_probe(method: &http::Method, path: &str) -> bool {
    (method == http::Method::GET || method == http::Method::HEAD)
        && matches!(path, "/health" | "/ready" | "/metrics")
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl AdminGuard {
    pub fn build(cfg: &AdminSection) -> Result<Self, ConfigError> {
        let mut raw: Vec<String> = std::env::var(ADMIN_TOKEN_ENV)
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(file) = &cfg.token_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                ConfigError::new(
                    "admin.token_file",
                    None,
                    format!("cannot read `{file}`: {e}"),
                )
            })?;
            raw.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        if let Some(short) = raw.iter().find(|t| t.len() < 16) {
            return Err(ConfigError::new(
                "admin",
                None,
                format!(
                    "admin tokens must be at least 16 characters (one has {})",
                    short.len()
                ),
            ));
        }
        let mut allowed_hosts: Vec<String> = cfg
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        // The admin listener's own address is always a fine Host.
        if let Ok(addr) = cfg.address.parse::<std::net::SocketAddr>() {
            if !addr.ip().is_unspecified() {
                allowed_hosts.push(addr.ip().to_string());
            }
        }
        Ok(AdminGuard {
            tokens: raw
                .iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
            allowed_hosts,
            allowed_origins: cfg.allowed_origins.clone(),
        })
    }

    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn token_matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // No early exit: every configured token is compared.
        self.tokens
            .iter()
            .fold(subtle::Choice::from(0), |acc, t| acc | t.ct_eq(&digest))
            .into()
    }

    /// Whether a (non-probe) admin call may go on; `self_authenticating`: the endpoint called
    /// authenticates its callers itself.
    pub fn check(
        &self,
        req: &pingora_http::RequestHeader,
        self_authenticating: bool,
    ) -> Result<(), Refused> {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let host = header("host").unwrap_or("");
        let host_only = stoa_filters::request_target::split_authority(host)
            .map(|hp| hp.host.to_ascii_lowercase())
            .map_err(|_| (400, "the admin API needs a valid Host"))?;
        if !is_loopback_host(&host_only) && !self.allowed_hosts.contains(&host_only) {
            return Err((
                403,
                "this Host is not the admin API's (add it to admin.allowed_hosts)",
            ));
        }
        if let Some(origin) = header("origin") {
            if !self
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
            {
                return Err((
                    403,
                    "browser pages may not call the admin API (admin.allowed_origins)",
                ));
            }
        }
        let reads = req.method == http::Method::GET || req.method == http::Method::HEAD;
        let has_body = header("transfer-encoding").is_some()
            || header("content-length").is_some_and(|l| l.trim() != "0");
        if has_body
            && !header("content-type")
                .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"))
        {
            return Err((415, "admin request bodies must be application/json"));
        }
        if reads || self_authenticating {
            return Ok(());
        }
        if self.tokens.is_empty() {
            return Err((
                403,
                "state-changing admin calls need a token: set STOA_ADMIN_TOKEN or admin.token_file",
            ));
        }
        let presented = header("authorization")
            .and_then(|a| {
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("bearer "))
            })
            .map(str::trim);
        match presented {
            Some(t) if self.token_matches(t) => Ok(()),
            Some(_) => Err((401, "the admin token is not valid")),
            None => Err((401, "an admin bearer token is required")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(tokens: &[&str]) -> AdminGuard {
        AdminGuard {
            tokens: tokens
                .iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
            allowed_hosts: vec![],
            allowed_origins: vec![],
        }
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> pingora_http::RequestHeader {
        let mut r = pingora_http::RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn rules() {
        let g = guard(&["0123456789abcdef"]);
        let host = ("host", "127.0.0.1:9901");
        let auth = ("authorization", "Bearer 0123456789abcdef");
        assert!(g.check(&req("GET", "/config", &[host]), false).is_ok());
        assert!(g
            .check(&req("POST", "/canary", &[host, auth]), false)
            .is_ok());
        assert_eq!(
            g.check(&req("POST", "/canary", &[host]), false)
                .unwrap_err()
                .0,
            401
        );
        let bad = ("authorization", "Bearer 0123456789abcdeX");
        assert_eq!(
            g.check(&req("POST", "/canary", &[host, bad]), false)
                .unwrap_err()
                .0,
            401
        );
        let evil = ("host", "evil.example");
        assert_eq!(
            g.check(&req("GET", "/config", &[evil, auth]), false)
                .unwrap_err()
                .0,
            403
        );
        let origin = ("origin", "http://evil.example");
        assert_eq!(
            g.check(&req("POST", "/canary", &[host, auth, origin]), false)
                .unwrap_err()
                .0,
            403
        );
        let plain = [
            host,
            auth,
            ("content-type", "text/plain"),
            ("content-length", "12"),
        ];
        assert_eq!(
            g.check(&req("POST", "/canary", &plain), false)
                .unwrap_err()
                .0,
            415
        );
        let open = guard(&[]);
        assert!(open.check(&req("GET", "/config", &[host]), false).is_ok());
        assert_eq!(
            open.check(&req("DELETE", "/shadow/report", &[host]), false)
                .unwrap_err()
                .0,
            403
        );
        // An endpoint that authenticates its callers is not asked for the admin token.
        assert!(open.check(&req("POST", "/uac/x", &[host]), true).is_ok());
        assert_eq!(
            open.check(&req("POST", "/uac/x", &[evil]), true)
                .unwrap_err()
                .0,
            403
        );
        assert!(is_probe(&http::Method::GET, "/metrics"));
        assert!(!is_probe(&http::Method::POST, "/metrics"));
    }
}
