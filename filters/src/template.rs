//! Header value templates such as `"{{ client_ip }}"` or `"tenant-{{ header.x-tenant }}"`,
//! compiled once at config load (unknown variables are config errors) and rendered per request.
//! A leading dot is accepted (`{{ .request_id }}`), as in the seed documents' examples.
//! Identity variables (`tenant`, `sub`, `claims.<path>`) render empty until a `jwt` filter has
//! verified the caller's token.
#![deny(clippy::indexing_slicing, clippy::string_slice)]

use pingora_proxy::Session;

use crate::context::RequestCtx;

#[derive(Clone, Debug, PartialEq)]
enum Var {
    RequestId,
    ClientIp,
    Method,
    Path,
    Host,
    Route,
    Cluster,
    Listener,
    Header(String),
    Query(String),
    Tenant,
    Subject,
    /// A claim by dotted path (`claims.realm_access.roles`).
    Claim(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Var(Var),
}

/// A compiled template; `Template::literal` values render without any work.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

pub const TEMPLATE_VARIABLES: &str =
    "request_id, client_ip, method, path, host, route, cluster, listener, header.<name>, query.<name>, tenant, sub, claims.<path>";

impl Template {
    pub fn parse(src: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some((literal, after)) = rest.split_once("{{") {
            if !literal.is_empty() {
                parts.push(Part::Literal(literal.to_string()));
            }
            let (name, tail) = after
                .split_once("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in template `{src}`"))?;
            let name = name.trim();
            let name = name.strip_prefix('.').unwrap_or(name);
            parts.push(Part::Var(parse_var(name).ok_or_else(|| {
                format!(
                    "unknown template variable `{name}` in `{src}`; known: {TEMPLATE_VARIABLES}"
                )
            })?));
            rest = tail;
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// True when the template has no variables.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// True when the template reads the caller's identity (tenant, sub or a claim).
    pub fn uses_identity(&self) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                p,
                Part::Var(Var::Tenant) | Part::Var(Var::Subject) | Part::Var(Var::Claim(_))
            )
        })
    }

    pub fn render(&self, session: &Session, ctx: &RequestCtx) -> String {
        self.render_request(session.req_header(), ctx)
    }

    /// Render against a request header (what `render` does with the session's).
    pub fn render_request(&self, req: &pingora_http::RequestHeader, ctx: &RequestCtx) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Var(v) => match v {
                    Var::RequestId => out.push_str(&ctx.request_id),
                    Var::ClientIp => {
                        if let Some(ip) = ctx.client_ip {
                            out.push_str(&ip.to_string())
                        }
                    }
                    Var::Method => out.push_str(req.method.as_str()),
                    Var::Path => out.push_str(req.uri.path()),
                    Var::Host => out.push_str(request_host(req).unwrap_or("")),
                    Var::Route => out.push_str(ctx.route_name()),
                    Var::Cluster => {
                        if let Some(r) = &ctx.route {
                            out.push_str(&r.cluster)
                        }
                    }
                    Var::Listener => out.push_str(&ctx.listener),
                    Var::Header(name) => {
                        if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                            out.push_str(v)
                        }
                    }
                    Var::Query(name) => {
                        if let Some(v) = query_param(req.uri.query().unwrap_or(""), name) {
                            out.push_str(v)
                        }
                    }
                    Var::Tenant => {
                        if let Some(t) = ctx.tenant() {
                            out.push_str(t)
                        }
                    }
                    Var::Subject => {
                        if let Some(s) = ctx.identity.as_ref().and_then(|i| i.subject.as_deref()) {
                            out.push_str(s)
                        }
                    }
                    Var::Claim(path) => match ctx.identity.as_ref().and_then(|i| i.claim(path)) {
                        Some(serde_json::Value::String(s)) => out.push_str(s),
                        Some(serde_json::Value::Array(items)) => {
                            for (i, item) in items.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                match item {
                                    serde_json::Value::String(s) => out.push_str(s),
                                    other => out.push_str(&other.to_string()),
                                }
                            }
                        }
                        Some(serde_json::Value::Null) | None => {}
                        Some(other) => out.push_str(&other.to_string()),
                    },
                },
            }
        }
        out
    }
}

fn parse_var(name: &str) -> Option<Var> {
    Some(match name {
        "request_id" => Var::RequestId,
        "client_ip" => Var::ClientIp,
        "method" => Var::Method,
        "path" => Var::Path,
        "host" => Var::Host,
        "route" => Var::Route,
        "cluster" => Var::Cluster,
        "listener" => Var::Listener,
        "tenant" => Var::Tenant,
        "sub" => Var::Subject,
        _ => {
            if let Some(h) = name.strip_prefix("header.") {
                if h.is_empty() {
                    return None;
                }
                Var::Header(h.to_ascii_lowercase())
            } else if let Some(c) = name.strip_prefix("claims.") {
                if c.is_empty() || c.split('.').any(str::is_empty) {
                    return None;
                }
                Var::Claim(c.to_string())
            } else if let Some(q) = name.strip_prefix("query.") {
                if q.is_empty() {
                    return None;
                }
                Var::Query(q.to_string())
            } else {
                return None;
            }
        }
    })
}

/// The request's host: the `Host` header, else the URI authority (HTTP/2), without the port.
/// The gateway canonicalised (and lowercased) it before any filter ran; anything that still
/// does not parse as `host[:port]` has no host.
pub fn request_host(req: &pingora_http::RequestHeader) -> Option<&str> {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    crate::request_target::split_authority(raw)
        .ok()
        .map(|hp| hp.host)
}

/// The first value of `name` in a raw query string (no percent-decoding).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn parses_variables_and_literals() {
        let t = Template::parse("id-{{ request_id }}/{{ .header.X-Tenant }}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Literal("id-".into()),
                Part::Var(Var::RequestId),
                Part::Literal("/".into()),
                Part::Var(Var::Header("x-tenant".into())),
            ]
        );
        assert!(Template::parse("plain").unwrap().is_literal());
    }

    #[test]
    fn rejects_unknown_and_unclosed() {
        assert!(Template::parse("{{ nope }}")
            .unwrap_err()
            .contains("unknown template variable"));
        assert!(Template::parse("{{ request_id")
            .unwrap_err()
            .contains("unclosed"));
    }

    #[test]
    fn host_and_query_helpers() {
        let host = |h: &str| {
            let mut r = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
            r.insert_header("host", h).unwrap();
            request_host(&r).map(str::to_string)
        };
        assert_eq!(host("example.com:8080").as_deref(), Some("example.com"));
        assert_eq!(host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host("["), None);
        assert_eq!(query_param("a=1&b=2", "b"), Some("2"));
        assert_eq!(query_param("a=1", "c"), None);
    }
}
