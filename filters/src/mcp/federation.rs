//! Federation of upstream MCP servers behind the `mcp` filter: each upstream's catalog (tools,
//! prompts, resources, resource templates), fetched by a gateway-owned session and refreshed
//! on its `list_changed` or on a timer, merged into one server with optional name prefixes and
//! include/exclude lists; the owner of a name or URI; and the relay of one client's messages
//! through that client's own session with each upstream (opened lazily with the client's
//! capabilities, re-initialized when the upstream forgets it). Whatever an upstream sends on
//! its own (progress, logging, `resources/updated`, sampling, elicitation, roots) reaches the
//! client; server-to-client requests get ids that name their upstream, so the client's
//! response finds its way back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::jsonrpc::{self, INTERNAL_ERROR};
use super::upstream::{
    is_response, Endpoint, MessageSink, Transport, UpstreamError, UpstreamSession,
};
use crate::mcp::metrics::METRICS;
use crate::units::HumanDuration;

/// The prefix of the ids the gateway gives to an upstream's requests to a client.
const RELAYED_ID: &str = "stoa:";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Names the upstream in metrics, logs and relayed request ids (letters, digits, `_`, `-`).
    pub name: String,
    /// The upstream's MCP endpoint (`http://host:port/mcp`, or `…/sse` for the old transport).
    pub url: String,
    /// `streamable_http` or `sse`; default: `sse` when the URL's path ends in `/sse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// Put before the upstream's tool and prompt names (`crm_` makes `search` `crm_search`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Only these tool, prompt, resource and template names (`*` wildcards); all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Never these names (`*` wildcards), applied after `include`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Sent with every request to the upstream (its credentials, for example).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The longest one request to the upstream may take.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// How often the catalog is fetched again (besides on the upstream's `list_changed`).
    #[serde(default = "default_refresh")]
    pub refresh: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

impl UpstreamConfig {
    /// `--mcp-upstream [NAME=]URL`.
    pub fn from_flag(flag: &str, index: usize) -> Self {
        let (name, url) = match flag.split_once('=') {
            Some((n, u)) if !n.contains('/') && !n.contains(':') => (n.to_string(), u.to_string()),
            _ => (format!("upstream{}", index + 1), flag.to_string()),
        };
        UpstreamConfig {
            name,
            url,
            transport: None,
            prefix: String::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            headers: BTreeMap::new(),
            timeout: default_timeout(),
            refresh: default_refresh(),
        }
    }
}

/// `*` matches any run of characters.
fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| wildcard(rest, &tail[i..]))
        }
    }
}

/// What one upstream offers, as the gateway's clients see it (prefixed and filtered).
#[derive(Default)]
struct Catalog {
    tools: Vec<Value>,
    prompts: Vec<Value>,
    resources: Vec<Value>,
    templates: Vec<Value>,
    /// `templates` as patterns matching the URIs they expand to.
    template_patterns: Vec<regex::Regex>,
    capabilities: Value,
}

/// An RFC 6570 URI template as a pattern over the URIs it expands to.
fn template_pattern(template: &str) -> Option<regex::Regex> {
    let mut pattern = String::from("^");
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        pattern.push_str(&regex::escape(&rest[..open]));
        let close = rest[open..].find('}')? + open;
        let expr = &rest[open + 1..close];
        pattern.push_str(if expr.starts_with(['+', '#', '/']) {
            ".*"
        } else {
            "[^/]*"
        });
        rest = &rest[close + 1..];
    }
    pattern.push_str(&regex::escape(rest));
    pattern.push('$');
    regex::Regex::new(&pattern).ok()
}

struct Upstream {
    cfg: UpstreamConfig,
    endpoint: Arc<Endpoint>,
    catalog: ArcSwap<Catalog>,
    /// The last catalog fetch succeeded.
    up: AtomicBool,
    /// A first catalog fetch was tried (readiness).
    tried: AtomicBool,
    /// Catalog fetches failed in a row.
    failures: AtomicU32,
    /// Wakes the catalog task (the upstream said a list changed).
    refresh: Arc<tokio::sync::Notify>,
}

impl Upstream {
    fn keep(&self, name: &str) -> bool {
        (self.cfg.include.is_empty() || self.cfg.include.iter().any(|p| wildcard(p, name)))
            && !self.cfg.exclude.iter().any(|p| wildcard(p, name))
    }

    /// The catalog clients see: empty while the upstream is down.
    fn visible(&self) -> Option<arc_swap::Guard<Arc<Catalog>>> {
        self.up.load(Ordering::Relaxed).then(|| self.catalog.load())
    }

    fn count(&self, method: &str, status: &str) {
        METRICS
            .mcp_upstream_requests
            .with_label_values(&[&self.cfg.name, method, status])
            .inc();
    }
}

/// The client side of a relay: its session, protocol version, capabilities and the path of
/// its server stream (where messages unrelated to a request go).
#[derive(Clone)]
pub struct ClientRef {
    pub session_id: String,
    pub version: String,
    pub capabilities: Value,
    pub stream_path: String,
}

pub struct Federation {
    upstreams: Vec<Upstream>,
    /// Paths of the streams that hear `list_changed` (Streamable HTTP's and the legacy one).
    stream_paths: Vec<String>,
    /// Each client's session with each upstream, by (client session id, upstream index).
    sessions: moka::future::Cache<(String, usize), Arc<UpstreamSession>>,
    started: AtomicBool,
    next_id: AtomicU64,
    /// The `mcp` filters' shared state (the stream hub that relays upstream notifications).
    state: Arc<super::state::McpState>,
}

/// The kinds of list a client can be told changed.
const LISTS: [&str; 3] = ["tools", "prompts", "resources"];

impl Federation {
    pub fn build(
        configs: &[UpstreamConfig],
        stream_paths: Vec<String>,
        session_ttl: Duration,
        state: Arc<super::state::McpState>,
    ) -> Result<Arc<Self>, String> {
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let mut upstreams = Vec::with_capacity(configs.len());
        for (i, cfg) in configs.iter().enumerate() {
            let at = |e: String| format!("upstreams[{i}].{e}");
            if cfg.name.is_empty()
                || !cfg
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(at("name: use letters, digits, `_` and `-`".into()));
            }
            if configs[..i].iter().any(|c| c.name == cfg.name) {
                return Err(at(format!("name: `{}` is used twice", cfg.name)));
            }
            let url = reqwest::Url::parse(&cfg.url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| at(format!("url: `{}` is not an http(s) URL", cfg.url)))?;
            let transport = cfg.transport.unwrap_or(if url.path().ends_with("/sse") {
                Transport::Sse
            } else {
                Transport::StreamableHttp
            });
            let mut headers = reqwest::header::HeaderMap::new();
            for (k, v) in &cfg.headers {
                let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| at(format!("headers: `{k}` is not a header name")))?;
                let value = reqwest::header::HeaderValue::from_str(v)
                    .map_err(|_| at(format!("headers.{k}: not a valid header value")))?;
                headers.insert(name, value);
            }
            if cfg.timeout.0.is_zero() || cfg.refresh.0.is_zero() {
                return Err(at("timeout and refresh: must be more than 0".into()));
            }
            upstreams.push(Upstream {
                endpoint: Arc::new(Endpoint {
                    name: cfg.name.clone(),
                    url,
                    transport,
                    headers,
                    timeout: cfg.timeout.0,
                    client: client.clone(),
                }),
                cfg: cfg.clone(),
                catalog: ArcSwap::from_pointee(Catalog::default()),
                up: AtomicBool::new(false),
                tried: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                refresh: Arc::new(tokio::sync::Notify::new()),
            });
        }
        Ok(Arc::new(Federation {
            upstreams,
            stream_paths,
            // Bounded by bytes (128 MiB, a session weighed as its key plus 1 KiB), not only count.
            sessions: moka::future::Cache::builder()
                .weigher(|k: &(String, usize), _: &Arc<UpstreamSession>| {
                    u32::try_from(k.0.len() + 1024).unwrap_or(u32::MAX)
                })
                .max_capacity(128 << 20)
                .time_to_idle(session_ttl)
                .build(),
            started: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            state,
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// Start fetching catalogs (once, when the config starts serving). The tasks end once the
    /// federation is dropped (a reload built another).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        for i in 0..self.upstreams.len() {
            let weak = Arc::downgrade(self);
            crate::background::handle().spawn(catalog_task(weak, i));
        }
    }

    /// The upstreams whose first catalog fetch has not finished yet (for `/ready`).
    pub fn not_ready(&self) -> Option<String> {
        let waiting: Vec<&str> = self
            .upstreams
            .iter()
            .filter(|u| !u.tried.load(Ordering::Relaxed))
            .map(|u| u.cfg.name.as_str())
            .collect();
        (!waiting.is_empty())
            .then(|| format!("mcp upstreams not fetched yet: {}", waiting.join(", ")))
    }

    /// The server capabilities federation adds (without the change notifications, logging
    /// level and subscriptions a stateless client has no session for).
    pub fn capabilities(&self, stateless: bool) -> Value {
        if stateless {
            return json!({"prompts": {}, "resources": {}, "completions": {}});
        }
        json!({
            "prompts": {"listChanged": true},
            "resources": {"subscribe": true, "listChanged": true},
            "completions": {},
            "logging": {},
        })
    }

    /// Every visible upstream's items of one list (`tools`, `prompts`, `resources`,
    /// `resourceTemplates`), in config order; of items with the same name (or URI), the first
    /// upstream's (the one requests go to).
    pub fn list(&self, kind: &str) -> Vec<Value> {
        let identity = match kind {
            "resources" => "uri",
            "resourceTemplates" => "uriTemplate",
            _ => "name",
        };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for u in &self.upstreams {
            if let Some(c) = u.visible() {
                let items = match kind {
                    "tools" => &c.tools,
                    "prompts" => &c.prompts,
                    "resources" => &c.resources,
                    _ => &c.templates,
                };
                for item in items {
                    if seen.insert(item[identity].to_string()) {
                        out.push(item.clone());
                    }
                }
            }
        }
        out
    }

    /// The upstream serving the tool or prompt (`kind`) the client calls `name`, and the name
    /// the upstream knows it by; also the tool's descriptor.
    pub fn owner_of_name(&self, kind: &str, name: &str) -> Option<(usize, String, Value)> {
        self.upstreams.iter().enumerate().find_map(|(i, u)| {
            let c = u.visible()?;
            let list = if kind == "tools" {
                &c.tools
            } else {
                &c.prompts
            };
            let item = list.iter().find(|t| t["name"] == name)?;
            let original = name.strip_prefix(u.cfg.prefix.as_str())?.to_string();
            Some((i, original, item.clone()))
        })
    }

    /// The upstream serving a resource URI: one listing it, else one whose template matches,
    /// else the only upstream offering resources.
    pub fn owner_of_uri(&self, uri: &str) -> Option<usize> {
        let visible: Vec<(usize, arc_swap::Guard<Arc<Catalog>>)> = self
            .upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.visible().map(|c| (i, c)))
            .collect();
        visible
            .iter()
            .find(|(_, c)| c.resources.iter().any(|r| r["uri"] == uri))
            .or_else(|| {
                visible
                    .iter()
                    .find(|(_, c)| c.template_patterns.iter().any(|p| p.is_match(uri)))
            })
            .map(|(i, _)| *i)
            .or_else(|| {
                let with: Vec<usize> = visible
                    .iter()
                    .filter(|(_, c)| c.capabilities.get("resources").is_some())
                    .map(|(i, _)| *i)
                    .collect();
                (with.len() == 1).then(|| with[0])
            })
    }

    /// The upstream a `completion/complete` reference points at, and the reference as it knows it.
    pub fn owner_of_ref(&self, reference: &Value) -> Option<(usize, Value)> {
        match reference.get("type").and_then(Value::as_str)? {
            "ref/prompt" => {
                let name = reference.get("name")?.as_str()?;
                let (i, original, _) = self.owner_of_name("prompts", name)?;
                let mut r = reference.clone();
                r["name"] = json!(original);
                Some((i, r))
            }
            "ref/resource" => {
                let uri = reference.get("uri")?.as_str()?;
                let by_template = self.upstreams.iter().position(|u| {
                    u.visible()
                        .is_some_and(|c| c.templates.iter().any(|t| t["uriTemplate"] == uri))
                });
                Some((
                    by_template.or_else(|| self.owner_of_uri(uri))?,
                    reference.clone(),
                ))
            }
            _ => None,
        }
    }

    pub fn upstream_name(&self, index: usize) -> &str {
        &self.upstreams[index].cfg.name
    }

    /// Whether upstream `index` offers a capability (`logging`, `resources`…).
    fn offers(&self, index: usize, capability: &str) -> bool {
        self.upstreams[index]
            .visible()
            .is_some_and(|c| c.capabilities.get(capability).is_some())
    }

    /// The client's session with upstream `index`, opened if needed.
    async fn session(
        self: &Arc<Self>,
        client: &ClientRef,
        index: usize,
    ) -> Result<Arc<UpstreamSession>, String> {
        let key = (client.session_id.clone(), index);
        let fed = self.clone();
        let client = client.clone();
        self.sessions
            .try_get_with(key, async move {
                let u = &fed.upstreams[index];
                let on_message = fed.relay_sink(index, None, &client);
                let opened = UpstreamSession::open(
                    u.endpoint.clone(),
                    &client.version,
                    client.capabilities.clone(),
                    on_message,
                )
                .await;
                u.count("initialize", if opened.is_ok() { "ok" } else { "error" });
                opened.map(Arc::new).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// Where an upstream's messages to a client go: to `related` (the answer stream of the
    /// request they belong to) or else the client's server stream. `list_changed` instead
    /// refreshes the catalog (whose change is announced to every client); the upstream's
    /// requests get ids naming it.
    fn relay_sink(
        self: &Arc<Self>,
        index: usize,
        related: Option<MessageSink>,
        client: &ClientRef,
    ) -> MessageSink {
        let refresh = self.upstreams[index].refresh.clone();
        let name = self.upstreams[index].cfg.name.clone();
        let (path, session) = (client.stream_path.clone(), client.session_id.clone());
        let state = self.state.clone();
        Arc::new(move |mut message: Value| {
            let method = message.get("method").and_then(Value::as_str).unwrap_or("");
            if method.ends_with("/list_changed") && method != "notifications/roots/list_changed" {
                refresh.notify_one();
                return;
            }
            if let Some(id) = message.get("id").filter(|_| !method.is_empty()) {
                message["id"] = json!(format!("{RELAYED_ID}{name}:{id}"));
            }
            match &related {
                Some(sink) => sink(message),
                None => state.hub.publish(&path, &session, &message),
            }
        })
    }

    /// Relay one request of a client to upstream `index` (the message already names things
    /// as the upstream knows them); the upstream's response, or a JSON-RPC error. Messages the
    /// upstream sends about the request go to `related`.
    pub async fn forward(
        self: Arc<Self>,
        index: usize,
        client: ClientRef,
        message: Value,
        related: MessageSink,
    ) -> Value {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let u = &self.upstreams[index];
        let sink = self.relay_sink(index, Some(related), &client);
        let outcome = match self.try_request(&client, index, &message, &sink).await {
            Err(UpstreamError::Expired) => {
                // The upstream forgot the session (it restarted): open a new one, once.
                info!(upstream = %u.cfg.name, "mcp: upstream session expired, initializing again");
                self.sessions
                    .invalidate(&(client.session_id.clone(), index))
                    .await;
                self.try_request(&client, index, &message, &sink).await
            }
            other => other,
        };
        match outcome {
            Ok(answer) => {
                let status = if answer.get("error").is_some() {
                    "error"
                } else {
                    "ok"
                };
                u.count(&method, status);
                answer
            }
            Err(e) => {
                u.count(&method, "error");
                jsonrpc::error(
                    id,
                    INTERNAL_ERROR,
                    &format!("upstream `{}`: {e}", u.cfg.name),
                )
            }
        }
    }

    /// One try of a relayed request through the client's session with upstream `index`.
    async fn try_request(
        self: &Arc<Self>,
        client: &ClientRef,
        index: usize,
        message: &Value,
        sink: &MessageSink,
    ) -> Result<Value, UpstreamError> {
        let session = self
            .session(client, index)
            .await
            .map_err(|e| UpstreamError::Failed(format!("unavailable: {e}")))?;
        session.request(message.clone(), sink).await
    }

    /// A client's response to a request an upstream relayed: back to that upstream, with the
    /// upstream's own id. False when the id is not a relayed one.
    pub async fn route_response(self: Arc<Self>, client: ClientRef, mut message: Value) -> bool {
        let Some(rest) = message
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| id.strip_prefix(RELAYED_ID))
        else {
            return false;
        };
        let Some((name, original)) = rest.split_once(':') else {
            return false;
        };
        let Some(index) = self.upstreams.iter().position(|u| u.cfg.name == name) else {
            return false;
        };
        let Ok(original) = serde_json::from_str::<Value>(original) else {
            return false;
        };
        message["id"] = original;
        if let Some(session) = self.sessions.get(&(client.session_id.clone(), index)).await {
            let sent = session.send(message).await;
            self.upstreams[index].count("response", if sent.is_ok() { "ok" } else { "error" });
        }
        true
    }

    /// Send a client's notification to the upstreams it already has sessions with (or to one).
    pub async fn notify(self: Arc<Self>, client: ClientRef, only: Option<usize>, message: Value) {
        for index in 0..self.upstreams.len() {
            if only.is_some_and(|o| o != index) {
                continue;
            }
            if let Some(session) = self.sessions.get(&(client.session_id.clone(), index)).await {
                let _ = session.send(message.clone()).await;
            }
        }
    }

    /// `logging/setLevel`: to every upstream that logs, through the client's sessions.
    pub async fn set_level(self: Arc<Self>, client: ClientRef, message: Value) {
        let sink: MessageSink = Arc::new(|_| {});
        for index in 0..self.upstreams.len() {
            if self.offers(index, "logging") {
                let mut m = message.clone();
                m["id"] = json!(format!(
                    "stoa-{}",
                    self.next_id.fetch_add(1, Ordering::Relaxed)
                ));
                self.clone()
                    .forward(index, client.clone(), m, sink.clone())
                    .await;
            }
        }
    }

    /// A client ended its session: end its upstream sessions.
    pub async fn close_client(&self, session_id: &str) {
        for index in 0..self.upstreams.len() {
            let key = (session_id.to_string(), index);
            if let Some(session) = self.sessions.remove(&key).await {
                session.close().await;
            }
        }
    }
}

/// Fetch every page of one list.
async fn list_all(
    session: &UpstreamSession,
    method: &str,
    key: &str,
    next_id: &AtomicU64,
) -> Result<Vec<Value>, UpstreamError> {
    let ignore: MessageSink = Arc::new(|_| {});
    let mut items = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..1000 {
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let id = format!("stoa-{}", next_id.fetch_add(1, Ordering::Relaxed));
        let answer = session
            .request(
                json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
                &ignore,
            )
            .await?;
        let Some(result) = answer.get("result") else {
            return Err(UpstreamError::Failed(format!(
                "{method}: {}",
                answer["error"]
            )));
        };
        if let Some(page) = result.get(key).and_then(Value::as_array) {
            items.extend(page.iter().cloned());
        }
        match result.get("nextCursor") {
            Some(c) if !c.is_null() => cursor = Some(c.clone()),
            _ => break,
        }
    }
    Ok(items)
}

impl Upstream {
    /// Fetch the catalog through the gateway's own session.
    async fn fetch(
        &self,
        session: &UpstreamSession,
        next_id: &AtomicU64,
    ) -> Result<Catalog, UpstreamError> {
        let caps = session.capabilities().clone();
        let has = |c: &str| caps.get(c).is_some();
        let keep_named = |items: Vec<Value>, prefix: &str| -> Vec<Value> {
            items
                .into_iter()
                .filter(|t| t.is_object() && t["name"].as_str().is_some_and(|n| self.keep(n)))
                .map(|mut t| {
                    if !prefix.is_empty() {
                        let n = format!("{prefix}{}", t["name"].as_str().unwrap_or(""));
                        t["name"] = json!(n);
                    }
                    t
                })
                .collect()
        };
        let prefix = self.cfg.prefix.as_str();
        let mut catalog = Catalog {
            capabilities: caps.clone(),
            ..Catalog::default()
        };
        if has("tools") {
            catalog.tools = keep_named(
                list_all(session, "tools/list", "tools", next_id).await?,
                prefix,
            );
        }
        if has("prompts") {
            catalog.prompts = keep_named(
                list_all(session, "prompts/list", "prompts", next_id).await?,
                prefix,
            );
        }
        if has("resources") {
            catalog.resources = keep_named(
                list_all(session, "resources/list", "resources", next_id).await?,
                "",
            );
            // Templates are optional even for servers with resources.
            catalog.templates = list_all(
                session,
                "resources/templates/list",
                "resourceTemplates",
                next_id,
            )
            .await
            .map(|t| keep_named(t, ""))
            .unwrap_or_default();
            catalog.template_patterns = catalog
                .templates
                .iter()
                .filter_map(|t| t["uriTemplate"].as_str().and_then(template_pattern))
                .collect();
        }
        Ok(catalog)
    }
}

/// Keeps one upstream's catalog fresh: fetch, then wait for the refresh interval or the
/// upstream's `list_changed`; announce changes to every client. Ends when the federation is
/// dropped.
async fn catalog_task(federation: Weak<Federation>, index: usize) {
    let mut session: Option<UpstreamSession> = None;
    loop {
        let Some(fed) = federation.upgrade() else {
            return;
        };
        let u = &fed.upstreams[index];
        let before: Vec<String> = LISTS
            .iter()
            .map(|k| serde_json::to_string(&visible_list(u, k)).unwrap_or_default())
            .collect();
        if session.is_none() {
            let refresh = u.refresh.clone();
            let on_message: MessageSink = Arc::new(move |m: Value| {
                let method = m.get("method").and_then(Value::as_str).unwrap_or("");
                if method.ends_with("/list_changed") {
                    refresh.notify_one();
                }
            });
            session = UpstreamSession::open(
                u.endpoint.clone(),
                super::PROTOCOL_VERSIONS[super::PROTOCOL_VERSIONS.len() - 1],
                json!({}),
                on_message,
            )
            .await
            .map_err(|e| note_down(u, &e))
            .ok();
        }
        let fetched = match &session {
            Some(s) => u.fetch(s, &fed.next_id).await.map_err(|e| note_down(u, &e)),
            None => Err(()),
        };
        match fetched {
            Ok(catalog) => {
                u.failures.store(0, Ordering::Relaxed);
                if !u.up.swap(true, Ordering::Relaxed) {
                    info!(upstream = %u.cfg.name, tools = catalog.tools.len(), "mcp: upstream up");
                }
                u.catalog.store(Arc::new(catalog));
                METRICS
                    .mcp_upstream_up
                    .with_label_values(&[&u.cfg.name])
                    .set(1);
            }
            Err(()) => session = None,
        }
        u.tried.store(true, Ordering::Relaxed);
        for (k, old) in LISTS.iter().zip(before) {
            if serde_json::to_string(&visible_list(u, k)).unwrap_or_default() != old {
                let note =
                    json!({"jsonrpc": "2.0", "method": format!("notifications/{k}/list_changed")});
                for path in &fed.stream_paths {
                    fed.state.hub.broadcast(path, &note);
                }
            }
        }
        // Down: try again soon (0.25 s, doubling up to 5 s).
        let failures = u.failures.load(Ordering::Relaxed);
        let wait = if failures == 0 {
            u.cfg.refresh.0
        } else {
            let backoff = Duration::from_millis(250) * 2u32.pow(failures.min(5));
            u.cfg.refresh.0.min(backoff).min(Duration::from_secs(5))
        };
        let refresh = u.refresh.clone();
        drop(fed);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = refresh.notified() => {}
        }
    }
}

fn visible_list(u: &Upstream, kind: &str) -> Vec<Value> {
    match u.visible() {
        None => Vec::new(),
        Some(c) => match kind {
            "tools" => c.tools.clone(),
            "prompts" => c.prompts.clone(),
            _ => c.resources.clone(),
        },
    }
}

/// A failed catalog fetch: the upstream is down until one succeeds (logged on the transition).
fn note_down(u: &Upstream, e: &UpstreamError) {
    let failures = u.failures.fetch_add(1, Ordering::Relaxed) + 1;
    // Logged when it goes down, or when it has not answered its first three tries (a server
    // starting next to the gateway may take a moment).
    if u.up.swap(false, Ordering::Relaxed) || failures == 3 {
        warn!(upstream = %u.cfg.name, error = %e, "mcp: upstream down; its tools, prompts and resources are hidden until it answers");
    }
    METRICS
        .mcp_upstream_up
        .with_label_values(&[&u.cfg.name])
        .set(0);
}

/// Whether a message is a response to one of the gateway's relayed requests.
pub fn is_relayed_response(message: &Value) -> bool {
    is_response(message)
        && message
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| id.starts_with(RELAYED_ID))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("get_*", "get_order"));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("a*c*e", "abcde"));
        assert!(!wildcard("get_*", "list_orders"));
        assert!(wildcard("exact", "exact"));
        assert!(!wildcard("exact", "exactly"));
    }

    #[test]
    fn templates_match_the_uris_they_expand_to() {
        let p = template_pattern("memo://notes/{name}").unwrap();
        assert!(p.is_match("memo://notes/x"));
        assert!(!p.is_match("memo://notes/x/y"));
        assert!(!p.is_match("memo://other/x"));
        let deep = template_pattern("file:///{+path}").unwrap();
        assert!(deep.is_match("file:///a/b/c.txt"));
    }

    #[test]
    fn flag_names() {
        let a = UpstreamConfig::from_flag("http://h:1/mcp", 0);
        assert_eq!(
            (a.name.as_str(), a.url.as_str()),
            ("upstream1", "http://h:1/mcp")
        );
        let b = UpstreamConfig::from_flag("crm=http://h:1/sse", 3);
        assert_eq!((b.name.as_str(), b.url.as_str()), ("crm", "http://h:1/sse"));
    }
}
