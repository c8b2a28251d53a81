//! `router` filter: picks the first route whose match (path prefix/exact/regex, host, methods,
//! headers) fits the request, and either sends it to a cluster (with optional `strip_path` and
//! `preserve_host`) or answers with a configured static response. No match answers 404.
#![deny(clippy::indexing_slicing, clippy::string_slice)]

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use pingora_core::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::build::BuildContext;
use crate::context::{RequestCtx, RouteTarget};
use crate::filter::{phase, Filter, FilterAction, LocalResponse};
use crate::template::request_host;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    pub routes: Vec<RouteConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: RouteMatchConfig,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub respond: Option<RespondConfig>,
    #[serde(default)]
    pub strip_path: bool,
    #[serde(default)]
    pub preserve_host: bool,
    /// Append the client's address to `X-Forwarded-For` upstream (off: the request goes as
    /// the client sent it, as shadow mode's passthrough wants).
    #[serde(default = "yes")]
    pub forwarded_for: bool,
    /// `required` (default), `optional` or `anonymous`; read by a `jwt` filter later in the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::context::RouteAuth>,
    /// Scopes the caller's token must all carry on this route (403 `insufficient_scope`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    /// Roles the caller must all have on this route (403 `insufficient_scope`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_roles: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Exact host (`api.example.com`) or a wildcard (`*.example.com`); the port is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header name -> exact value; `"*"` only requires the header to be present.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    200
}

enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

fn yes() -> bool {
    true
}

enum RouteAction {
    Cluster {
        cluster: Arc<str>,
        strip_path: bool,
        preserve_host: bool,
        forwarded_for: bool,
    },
    Respond(LocalResponse),
}

/// A route compiled from its config: matchers ready to run, action resolved.
pub struct CompiledRoute {
    pub name: Arc<str>,
    path: PathMatch,
    host: Option<HostMatch>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
    action: RouteAction,
    access: Option<Arc<crate::context::RouteAccess>>,
}

pub struct Router {
    routes: Vec<CompiledRoute>,
}

impl Router {
    pub fn build(cfg: &RouterConfig, bctx: &BuildContext) -> std::result::Result<Self, String> {
        if cfg.routes.is_empty() {
            return Err("routes: at least one route is required".into());
        }
        let mut routes = Vec::with_capacity(cfg.routes.len());
        for (i, r) in cfg.routes.iter().enumerate() {
            let name: Arc<str> = r
                .name
                .clone()
                .unwrap_or_else(|| format!("route-{i}"))
                .into();
            let at = |msg: String| format!("routes[{i}] ({name}): {msg}");
            let m = &r.matches;
            let set = [&m.path_prefix, &m.path_exact, &m.path_regex]
                .iter()
                .filter(|p| p.is_some())
                .count();
            if set > 1 {
                return Err(at(
                    "match: use only one of path_prefix, path_exact, path_regex".into(),
                ));
            }
            let path = if let Some(p) = &m.path_prefix {
                check_path(p).map_err(&at)?;
                if p == "/" {
                    PathMatch::Any
                } else {
                    PathMatch::Prefix(p.clone())
                }
            } else if let Some(p) = &m.path_exact {
                check_path(p).map_err(&at)?;
                PathMatch::Exact(p.clone())
            } else if let Some(re) = &m.path_regex {
                PathMatch::Regex(Regex::new(re).map_err(|e| at(format!("match.path_regex: {e}")))?)
            } else {
                PathMatch::Any
            };
            let host = m.host.as_ref().map(|h| {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                    None => HostMatch::Exact(h),
                }
            });
            let methods = m
                .methods
                .iter()
                .map(|s| {
                    Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                        .map_err(|_| at(format!("match.methods: invalid method `{s}`")))
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let headers =
                m.headers
                    .iter()
                    .map(|(k, v)| {
                        let name = HeaderName::from_bytes(k.as_bytes())
                            .map_err(|_| at(format!("match.headers: invalid header name `{k}`")))?;
                        let value = if v == "*" {
                            None
                        } else {
                            Some(HeaderValue::from_str(v).map_err(|_| {
                                at(format!("match.headers.{k}: invalid header value"))
                            })?)
                        };
                        Ok((name, value))
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()?;
            let action = match (&r.cluster, &r.respond) {
                (Some(c), None) => {
                    if !bctx.clusters.iter().any(|k| k == c) {
                        return Err(at(format!(
                            "cluster `{c}` is not defined under `clusters:` (defined: {})",
                            if bctx.clusters.is_empty() {
                                "none".to_string()
                            } else {
                                bctx.clusters.join(", ")
                            }
                        )));
                    }
                    RouteAction::Cluster {
                        cluster: c.as_str().into(),
                        strip_path: r.strip_path,
                        preserve_host: r.preserve_host,
                        forwarded_for: r.forwarded_for,
                    }
                }
                (None, Some(resp)) => {
                    if !(100..=599).contains(&resp.status) {
                        return Err(at(format!("respond.status {} is not valid", resp.status)));
                    }
                    let mut local = LocalResponse::new(resp.status);
                    for (k, v) in &resp.headers {
                        HeaderName::from_bytes(k.as_bytes())
                            .map_err(|_| at(format!("respond.headers: invalid name `{k}`")))?;
                        HeaderValue::from_str(v)
                            .map_err(|_| at(format!("respond.headers.{k}: invalid value")))?;
                        local.headers.push((k.clone(), v.clone()));
                    }
                    local.body = Bytes::from(resp.body.clone());
                    RouteAction::Respond(local)
                }
                _ => return Err(at("set exactly one of `cluster` or `respond`".into())),
            };
            let access =
                (r.auth.is_some() || !r.required_scopes.is_empty() || !r.required_roles.is_empty())
                    .then(|| {
                        Arc::new(crate::context::RouteAccess {
                            auth: r.auth,
                            required_scopes: r.required_scopes.clone(),
                            required_roles: r.required_roles.clone(),
                        })
                    });
            routes.push(CompiledRoute {
                name,
                path,
                host,
                methods,
                headers,
                action,
                access,
            });
        }
        Ok(Router { routes })
    }

    /// The first route matching `req`, and the rewritten upstream path when `strip_path` applies.
    pub fn find(&self, req: &RequestHeader) -> Option<(&CompiledRoute, Option<String>)> {
        let path = req.uri.path();
        let mut host: Option<Option<String>> = None;
        'routes: for route in &self.routes {
            if !route.methods.is_empty() && !route.methods.contains(&req.method) {
                continue;
            }
            if let Some(hm) = &route.host {
                let h =
                    host.get_or_insert_with(|| request_host(req).map(|h| h.to_ascii_lowercase()));
                let Some(h) = h.as_deref() else { continue };
                let ok = match hm {
                    HostMatch::Exact(e) => h == e,
                    HostMatch::Suffix(s) => h.ends_with(s.as_str()) && h.len() > s.len(),
                };
                if !ok {
                    continue;
                }
            }
            for (name, value) in &route.headers {
                match (req.headers.get(name), value) {
                    (None, _) => continue 'routes,
                    (Some(got), Some(want)) if got != want => continue 'routes,
                    _ => {}
                }
            }
            let matched_len = match &route.path {
                PathMatch::Any => 0,
                PathMatch::Prefix(p) => {
                    if !path.starts_with(p.as_str()) {
                        continue;
                    }
                    p.len()
                }
                // `/internal` is also `/internal/` (upstreams commonly treat them alike).
                PathMatch::Exact(p) => {
                    if path != p && path.strip_suffix('/') != Some(p.as_str()) {
                        continue;
                    }
                    p.len()
                }
                PathMatch::Regex(re) => match re.find(path) {
                    Some(m) => {
                        if m.start() == 0 {
                            m.end()
                        } else {
                            0
                        }
                    }
                    None => continue,
                },
            };
            let rewritten = match &route.action {
                RouteAction::Cluster {
                    strip_path: true, ..
                } if matched_len > 0 => Some(strip(path, matched_len, req.uri.query())),
                _ => None,
            };
            return Some((route, rewritten));
        }
        None
    }
}

fn check_path(p: &str) -> std::result::Result<(), String> {
    if p.starts_with('/') {
        Ok(())
    } else {
        Err(format!("match: path `{p}` must start with `/`"))
    }
}

fn strip(path: &str, matched_len: usize, query: Option<&str>) -> String {
    let rest = path.get(matched_len..).unwrap_or("");
    let mut out = String::with_capacity(rest.len() + 1 + query.map_or(0, |q| q.len() + 1));
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[async_trait]
impl Filter for Router {
    fn name(&self) -> &'static str {
        "router"
    }

    fn phases(&self) -> u8 {
        phase::REQUEST
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let Some((route, rewritten)) = self.find(session.req_header()) else {
            ctx.reject("router", "no_route");
            return Ok(FilterAction::Respond(LocalResponse::json_error(
                404,
                "no route matches this request",
            )));
        };
        match &route.action {
            RouteAction::Respond(resp) => {
                ctx.route = Some(RouteTarget {
                    route: route.name.clone(),
                    cluster: "-".into(),
                    upstream_path: None,
                    preserve_host: false,
                    forwarded_for: true,
                    access: None,
                });
                Ok(FilterAction::Respond(resp.clone()))
            }
            RouteAction::Cluster {
                cluster,
                preserve_host,
                forwarded_for,
                ..
            } => {
                ctx.route = Some(RouteTarget {
                    route: route.name.clone(),
                    cluster: cluster.clone(),
                    upstream_path: rewritten,
                    preserve_host: *preserve_host,
                    forwarded_for: *forwarded_for,
                    access: route.access.clone(),
                });
                Ok(FilterAction::Continue)
            }
        }
    }
}

impl crate::build::BuildFilter for Router {
    const TYPE: &'static str = "router";
    type Config = RouterConfig;

    fn build(
        cfg: &RouterConfig,
        bctx: &mut crate::build::BuildContext,
    ) -> std::result::Result<Self, String> {
        Router::build(cfg, bctx)
    }

    fn routes_upstream(_cfg: &Self::Config) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn router(yaml_routes: serde_json::Value) -> Router {
        let cfg: RouterConfig =
            serde_json::from_value(serde_json::json!({ "routes": yaml_routes })).unwrap();
        let clusters = ["a".to_string(), "b".to_string()];
        let none = Default::default();
        Router::build(&cfg, &BuildContext::new(&clusters, &none, None)).unwrap()
    }

    fn req(method: &str, uri: &str, host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build(method, uri.as_bytes(), None).unwrap();
        if let Some(h) = host {
            r.insert_header("host", h).unwrap();
        }
        r
    }

    #[test]
    fn first_match_wins_and_strips_prefix() {
        let r = router(serde_json::json!([
            { "name": "api", "match": { "path_prefix": "/api" }, "cluster": "a", "strip_path": true },
            { "name": "rest", "match": { "path_prefix": "/" }, "cluster": "b" },
        ]));
        let (route, path) = r.find(&req("GET", "/api/users?x=1", None)).unwrap();
        assert_eq!(&*route.name, "api");
        assert_eq!(path.as_deref(), Some("/users?x=1"));
        let (route, path) = r.find(&req("GET", "/api", None)).unwrap();
        assert_eq!(&*route.name, "api");
        assert_eq!(path.as_deref(), Some("/"));
        let (route, path) = r.find(&req("GET", "/other", None)).unwrap();
        assert_eq!(&*route.name, "rest");
        assert_eq!(path, None);
    }

    #[test]
    fn host_method_header_exact_regex() {
        let r = router(serde_json::json!([
            { "name": "h", "match": { "host": "*.example.com" }, "cluster": "a" },
            { "name": "m", "match": { "methods": ["post"], "path_exact": "/x" }, "cluster": "a" },
            { "name": "hd", "match": { "headers": { "x-canary": "1" } }, "cluster": "b" },
            { "name": "re", "match": { "path_regex": "^/v[0-9]+/" }, "cluster": "b", "strip_path": true },
        ]));
        assert_eq!(
            &*r.find(&req("GET", "/", Some("api.example.com:80")))
                .unwrap()
                .0
                .name,
            "h"
        );
        assert!(r.find(&req("GET", "/", Some("example.com"))).is_none());
        assert_eq!(&*r.find(&req("POST", "/x", None)).unwrap().0.name, "m");
        assert!(r.find(&req("GET", "/x", None)).is_none());
        let mut h = req("GET", "/y", None);
        h.insert_header("x-canary", "1").unwrap();
        assert_eq!(&*r.find(&h).unwrap().0.name, "hd");
        let (route, path) = r.find(&req("GET", "/v2/items", None)).unwrap();
        assert_eq!(&*route.name, "re");
        assert_eq!(path.as_deref(), Some("/items"));
    }

    #[test]
    fn build_errors_name_the_route() {
        let cfg: RouterConfig = serde_json::from_value(serde_json::json!({ "routes": [
            { "name": "bad", "cluster": "nope" }
        ]}))
        .unwrap();
        let none = Default::default();
        let err = Router::build(&cfg, &BuildContext::new(&[], &none, None))
            .err()
            .unwrap();
        assert!(
            err.contains("routes[0] (bad)") && err.contains("`nope`"),
            "{err}"
        );
    }
}
