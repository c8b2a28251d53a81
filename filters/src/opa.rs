//! `opa` filter: authorizes each request with a Rego policy. The policy runs in-process on the
//! regorus engine — loaded from files or a directory (plus `data.json`) and compiled once per
//! config version, then evaluated per request without re-parsing — or on an external OPA server
//! (`POST /v1/data/<path>`, fail-closed by default). A decision is a boolean or an object
//! `{allow, reason, headers}`; a deny answers 403 with the reason. Also runs a policy
//! directory's own Rego unit tests (`test_` rules) for `stoa-gateway --test-policies`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use opentelemetry::KeyValue;
use pingora_core::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use regorus::Value as Rego;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use tracing::warn;

use crate::build::BuildContext;
use crate::context::{PolicyLog, RequestCtx};
use crate::filter::{phase, Filter, FilterAction, LocalResponse};
use crate::headers::CREDENTIAL_HEADERS;
use crate::telemetry::{outbound, SpanRef};
use crate::units::HumanDuration;

/// The environment variable naming an external OPA server, for `opa` filters that set neither
/// `policy` nor `endpoint` (`--opa-endpoint` sets it).
pub const OPA_ENDPOINT_ENV: &str = "PROXY_OPA_ENDPOINT";
/// The `BuildContext::settings` key of `--opa-endpoint`.
pub const OPA_ENDPOINT_SETTING: &str = "opa.endpoint";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpaConfig {
    /// A `.rego` file, or a directory of them (`*_test.rego` files are skipped; a `data.json`
    /// beside them is loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// A JSON data document (`data.*` in the policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// An external OPA server (`http://opa:8181`) instead of the embedded engine. With neither
    /// `policy` nor `endpoint`, `PROXY_OPA_ENDPOINT` is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The rule to evaluate.
    #[serde(default = "default_query")]
    pub query: String,
    /// Timeout of one call to an external OPA.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Let requests through when the policy cannot be evaluated (default: refuse them).
    #[serde(default)]
    pub fail_open: bool,
    /// The status of a refusal caused by an evaluation error (Envoy ext_authz's default: 403).
    #[serde(default = "default_error_status")]
    pub status_on_error: u16,
    /// The fraction of allow decisions written to the access log (denials always are).
    #[serde(default = "default_log_sample")]
    pub log_sample: f64,
}

fn default_query() -> String {
    "data.stoa.authz.allow".into()
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}
fn default_error_status() -> u16 {
    403
}
fn default_log_sample() -> f64 {
    0.1
}

/// What a policy decided.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub allow: bool,
    pub reason: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Decision {
    /// Read a decision from the query's result: `true`/`false`, or `{allow, reason, headers}`.
    /// An undefined result (JSON `null` here) is a deny.
    pub fn from_result(v: &Json) -> std::result::Result<Decision, String> {
        match v {
            Json::Null => Ok(Decision {
                allow: false,
                reason: Some("the policy's decision is undefined".into()),
                headers: Vec::new(),
            }),
            Json::Bool(allow) => Ok(Decision {
                allow: *allow,
                reason: None,
                headers: Vec::new(),
            }),
            Json::Object(o) => {
                let allow = o
                    .get("allow")
                    .and_then(Json::as_bool)
                    .ok_or("the decision object has no boolean `allow`")?;
                let reason = o.get("reason").and_then(|r| match r {
                    Json::String(s) => Some(s.clone()),
                    Json::Null => None,
                    other => Some(other.to_string()),
                });
                let headers = o
                    .get("headers")
                    .and_then(Json::as_object)
                    .map(|h| {
                        h.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Decision {
                    allow,
                    reason,
                    headers,
                })
            }
            other => Err(format!(
                "the decision is neither a boolean nor an object: {other}"
            )),
        }
    }
}

enum Engine {
    Embedded(Arc<Policy>),
    External {
        client: reqwest::Client,
        url: String,
        timeout: Duration,
    },
}

pub struct Opa {
    engine: Engine,
    fail_open: bool,
    status_on_error: u16,
    log_sample: f64,
    allows: AtomicU64,
}

/// The `.rego` files of a policy path: the file itself, or a directory's `*.rego` files
/// (sorted), with or without the `*_test.rego` ones.
fn rego_files(path: &Path, with_tests: bool) -> std::result::Result<Vec<PathBuf>, String> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rego"))
        .filter(|p| with_tests || !p.to_string_lossy().ends_with("_test.rego"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no .rego file in `{}`", path.display()));
    }
    Ok(files)
}

/// A policy ready to evaluate: compiled to regorus' bytecode VM (RVM) when the policy's
/// features allow it — several times faster than the tree-walking interpreter — with the
/// interpreter's compiled policy as the fallback.
pub struct Policy {
    compiled: regorus::CompiledPolicy,
    rvm: Option<(Arc<regorus::rvm::program::Program>, regorus::Value)>,
}

thread_local! {
    /// Per-worker VMs, one per policy (keyed by the policy's address; a few versions at most).
    static VMS: std::cell::RefCell<Vec<(usize, std::sync::Weak<Policy>, regorus::rvm::vm::RegoVM)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Policy {
    /// Load, compile (interpreter and, when possible, RVM) once.
    pub fn load(
        policy: &Path,
        data: Option<&Path>,
        query: &str,
    ) -> std::result::Result<Arc<Self>, String> {
        let mut engine = load_engine(policy, data, false)?;
        let compiled = engine
            .compile_with_entrypoint(&query.into())
            .map_err(|e| format!("query `{query}`: {e}"))?;
        let rvm = match regorus::languages::rego::compiler::Compiler::compile_from_policy(
            &compiled,
            &[query],
        ) {
            Ok(program) => Some((program, engine.get_data())),
            Err(e) => {
                tracing::info!(query, error = %e, "policy runs on the regorus interpreter (the bytecode VM does not support it)");
                None
            }
        };
        Ok(Arc::new(Policy { compiled, rvm }))
    }

    /// Evaluate on one input document; `Json::Null` when the result is undefined.
    pub fn evaluate(self: &Arc<Self>, input: impl Into<Rego>) -> std::result::Result<Json, String> {
        let input = input.into();
        let result = match &self.rvm {
            None => self
                .compiled
                .eval_with_input(input)
                .map_err(|e| e.to_string())?,
            Some((program, data)) => {
                VMS.with(|vms| -> std::result::Result<regorus::Value, String> {
                    let mut vms = vms.borrow_mut();
                    let key = Arc::as_ptr(self) as usize;
                    vms.retain(|(_, owner, _)| owner.strong_count() > 0);
                    let i = match vms.iter().position(|(k, _, _)| *k == key) {
                        Some(i) => i,
                        None => {
                            let mut vm = regorus::rvm::vm::RegoVM::new();
                            vm.load_program(program.clone());
                            vm.set_data(data.clone()).map_err(|e| e.to_string())?;
                            vms.push((key, Arc::downgrade(self), vm));
                            vms.len() - 1
                        }
                    };
                    let vm = &mut vms[i].2;
                    vm.set_input(input.clone());
                    match vm.execute() {
                        Ok(v) if v != regorus::Value::Undefined => Ok(v),
                        // Undefined or an error (rare; usually a deny): the interpreter has the
                        // last word, so conflicts and runtime errors are reported as OPA would.
                        _ => self
                            .compiled
                            .eval_with_input(input)
                            .map_err(|e| e.to_string()),
                    }
                })?
            }
        };
        if result == regorus::Value::Undefined {
            return Ok(Json::Null);
        }
        serde_json::to_value(&result).map_err(|e| e.to_string())
    }

    /// True when the bytecode VM runs this policy.
    pub fn on_vm(&self) -> bool {
        self.rvm.is_some()
    }
}

/// An engine with the policy files and data loaded.
fn load_engine(
    policy: &Path,
    data: Option<&Path>,
    with_tests: bool,
) -> std::result::Result<regorus::Engine, String> {
    let mut engine = regorus::Engine::new();
    for file in rego_files(policy, with_tests)? {
        engine
            .add_policy_from_file(&file)
            .map_err(|e| format!("`{}`: {e}", file.display()))?;
    }
    let dir_data = policy.is_dir().then(|| policy.join("data.json"));
    let data = data
        .map(Path::to_path_buf)
        .or(dir_data.filter(|p| p.is_file()));
    if let Some(data) = data {
        let text = std::fs::read_to_string(&data)
            .map_err(|e| format!("cannot read `{}`: {e}", data.display()))?;
        let value = regorus::Value::from_json_str(&text)
            .map_err(|e| format!("`{}`: {e}", data.display()))?;
        engine
            .add_data(value)
            .map_err(|e| format!("`{}`: {e}", data.display()))?;
    }
    Ok(engine)
}

/// The policy for `query`, compiled once.
pub fn compile(
    policy: &Path,
    data: Option<&Path>,
    query: &str,
) -> std::result::Result<regorus::CompiledPolicy, String> {
    let mut engine = load_engine(policy, data, false)?;
    engine
        .compile_with_entrypoint(&query.into())
        .map_err(|e| format!("query `{query}`: {e}"))
}

/// Evaluate a compiled policy on one input document.
pub fn evaluate(
    policy: &regorus::CompiledPolicy,
    input: Json,
) -> std::result::Result<Json, String> {
    let result = policy
        .eval_with_input(regorus::Value::from(input))
        .map_err(|e| e.to_string())?;
    if result == regorus::Value::Undefined {
        return Ok(Json::Null);
    }
    serde_json::to_value(&result).map_err(|e| e.to_string())
}

/// One Rego unit test's outcome.
#[derive(Debug)]
pub struct RegoTest {
    pub name: String,
    pub passed: bool,
    pub error: Option<String>,
}

/// Run every `test_*` rule of a policy directory (or file), as `opa test` would.
pub fn run_rego_tests(path: &Path) -> std::result::Result<Vec<RegoTest>, String> {
    let mut engine = load_engine(path, None, true)?;
    let rule = regex::Regex::new(r"(?m)^\s*(test_[A-Za-z0-9_]+)\b").expect("regex");
    let package = regex::Regex::new(r"(?m)^\s*package\s+([A-Za-z0-9_.]+)").expect("regex");
    let mut results = Vec::new();
    for file in rego_files(path, true)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
        let Some(pkg) = package.captures(&text).map(|c| c[1].to_string()) else {
            continue;
        };
        let mut names: Vec<String> = rule
            .captures_iter(&text)
            .map(|c| c[1].to_string())
            .collect();
        names.dedup();
        for name in names {
            let full = format!("data.{pkg}.{name}");
            let (passed, error) = match engine.eval_rule(full.clone()) {
                Ok(v) => (v == regorus::Value::from(true), None),
                Err(e) => (false, Some(e.to_string())),
            };
            results.push(RegoTest {
                name: full,
                passed,
                error,
            });
        }
    }
    Ok(results)
}

/// The policy's `input` document for a request, built directly as a Rego value (the embedded
/// engine's own type; serialized to JSON for an external OPA). The identity's part is built
/// once per identity and shared through the token cache.
pub fn input_document(req: &RequestHeader, ctx: &RequestCtx) -> Rego {
    let mut headers: BTreeMap<Rego, Rego> = BTreeMap::new();
    for (name, value) in req.headers.iter() {
        let v = if CREDENTIAL_HEADERS.contains(&name.as_str()) {
            "[redacted]"
        } else {
            &String::from_utf8_lossy(value.as_bytes())
        };
        let key = Rego::from(name.as_str());
        match headers.get_mut(&key) {
            // A repeated header: its values joined as HTTP joins them.
            Some(Rego::String(prev)) => *prev = format!("{prev}, {v}").into(),
            _ => {
                headers.insert(key, Rego::from(v));
            }
        }
    }
    // Decoded as the upstream will decode them; a repeated key becomes an array of its values.
    let mut query: BTreeMap<Rego, Rego> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes()) {
        let (k, v) = (Rego::from(k.as_ref()), Rego::from(v.as_ref()));
        match query.get_mut(&k) {
            Some(Rego::Array(values)) => Arc::make_mut(values).push(v),
            Some(first) => *first = Rego::from(vec![first.clone(), v]),
            None => {
                query.insert(k, v);
            }
        }
    }
    let opt = |s: Option<&str>| s.map_or(Rego::Null, Rego::from);
    let request = rego_object([
        ("method", Rego::from(req.method.as_str())),
        ("path", Rego::from(req.uri.path())),
        ("query", Rego::from(query)),
        ("headers", Rego::from(headers)),
        (
            "client_ip",
            ctx.client_ip
                .map_or(Rego::Null, |ip| Rego::from(ip.to_string())),
        ),
    ]);
    let mut input: BTreeMap<Rego, Rego> = BTreeMap::new();
    input.insert(Rego::from("request"), request);
    input.insert(
        Rego::from("route"),
        opt(ctx.route.as_ref().map(|r| &*r.route)),
    );
    let identity_input = |identity: &crate::context::Identity| {
        let list =
            |l: &[String]| Rego::from(l.iter().map(|s| Rego::from(s.as_str())).collect::<Vec<_>>());
        rego_object([
            ("token", Rego::from(identity.claims.clone())),
            ("subject", opt(identity.subject.as_deref())),
            ("tenant", opt(identity.tenant.as_deref())),
            ("roles", list(&identity.roles)),
            ("scopes", list(&identity.scopes)),
        ])
    };
    let fresh;
    let identity: &Rego = match ctx.identity.as_deref() {
        Some(identity) => {
            let derived = identity
                .derived
                .get_or_init(|| std::sync::Arc::new(identity_input(identity)));
            match derived.downcast_ref::<Rego>() {
                Some(cached) => cached,
                None => {
                    fresh = identity_input(identity);
                    &fresh
                }
            }
        }
        None => &ANONYMOUS,
    };
    if let Ok(fields) = identity.as_object() {
        input.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Rego::from(input)
}

/// The identity's part of the input when the request carries no verified token.
static ANONYMOUS: once_cell::sync::Lazy<Rego> = once_cell::sync::Lazy::new(|| {
    rego_object([
        ("token", Rego::Null),
        ("subject", Rego::Null),
        ("tenant", Rego::Null),
        ("roles", Rego::new_array()),
        ("scopes", Rego::new_array()),
    ])
});

/// A Rego object with string keys.
fn rego_object<const N: usize>(fields: [(&str, Rego); N]) -> Rego {
    Rego::from(
        fields
            .into_iter()
            .map(|(k, v)| (Rego::from(k), v))
            .collect::<BTreeMap<Rego, Rego>>(),
    )
}

impl Opa {
    /// Build the filter; an `opa` entry with neither `policy` nor `endpoint` asks the OPA server
    /// the command line named (`--opa-endpoint`, the `opa.endpoint` setting), else the one in
    /// `PROXY_OPA_ENDPOINT`.
    pub fn new(cfg: &OpaConfig, bctx: &BuildContext) -> std::result::Result<Self, String> {
        Self::with_default_endpoint(
            cfg,
            bctx.settings.get(OPA_ENDPOINT_SETTING).map(String::as_str),
        )
    }

    fn with_default_endpoint(
        cfg: &OpaConfig,
        default_endpoint: Option<&str>,
    ) -> std::result::Result<Self, String> {
        let engine = match (&cfg.policy, &cfg.endpoint) {
            (Some(_), Some(_)) => return Err("set only one of `policy` and `endpoint`".into()),
            (Some(policy), None) => {
                if cfg.query.trim().is_empty() {
                    return Err("query: must not be empty".into());
                }
                let compiled = Policy::load(
                    Path::new(policy),
                    cfg.data.as_deref().map(Path::new),
                    &cfg.query,
                )
                .map_err(|e| format!("policy: {e}"))?;
                Engine::Embedded(compiled)
            }
            (None, endpoint) => {
                let endpoint = match endpoint.as_deref().or(default_endpoint) {
                    Some(e) => e.to_string(),
                    None => std::env::var(OPA_ENDPOINT_ENV).map_err(|_| {
                        format!("set `policy` (embedded engine) or `endpoint` (external OPA), or {OPA_ENDPOINT_ENV}")
                    })?,
                };
                let path = cfg
                    .query
                    .strip_prefix("data.")
                    .ok_or("query: an external OPA query must start with `data.`")?
                    .replace('.', "/");
                let client = reqwest::Client::builder()
                    .timeout(cfg.timeout.0)
                    .build()
                    .map_err(|e| format!("HTTP client: {e}"))?;
                Engine::External {
                    client,
                    url: format!("{}/v1/data/{path}", endpoint.trim_end_matches('/')),
                    timeout: cfg.timeout.0,
                }
            }
        };
        if !(0.0..=1.0).contains(&cfg.log_sample) {
            return Err("log_sample: must be between 0 and 1".into());
        }
        if !(100..=599).contains(&cfg.status_on_error) {
            return Err("status_on_error: not an HTTP status".into());
        }
        Ok(Opa {
            engine,
            fail_open: cfg.fail_open,
            status_on_error: cfg.status_on_error,
            log_sample: cfg.log_sample,
            allows: AtomicU64::new(0),
        })
    }

    fn engine_label(&self) -> &'static str {
        match self.engine {
            Engine::Embedded(_) => "embedded",
            Engine::External { .. } => "external",
        }
    }

    async fn decide(
        &self,
        input: Rego,
        span: Option<&SpanRef>,
    ) -> std::result::Result<Decision, String> {
        let result = match &self.engine {
            Engine::Embedded(policy) => policy.evaluate(input)?,
            Engine::External {
                client,
                url,
                timeout,
            } => {
                let (client, url, timeout) = (client.clone(), url.clone(), *timeout);
                let span = span.cloned();
                // On the background runtime, which owns the client's pooled connections.
                let call = crate::background::handle().spawn(async move {
                    let post = client.post(&url).json(&json!({ "input": input }));
                    let resp = outbound::send(post, span.as_ref(), "opa")
                        .await
                        .map_err(|e| format!("POST {url}: {e}"))?;
                    if !resp.status().is_success() {
                        return Err(format!("POST {url}: status {}", resp.status()));
                    }
                    let body: Json = resp
                        .json()
                        .await
                        .map_err(|e| format!("POST {url}: invalid JSON: {e}"))?;
                    Ok(body.get("result").cloned().unwrap_or(Json::Null))
                });
                match tokio::time::timeout(timeout + Duration::from_millis(50), call).await {
                    Ok(Ok(r)) => r?,
                    Ok(Err(e)) => return Err(format!("OPA call failed: {e}")),
                    Err(_) => return Err("OPA call timed out".into()),
                }
            }
        };
        Decision::from_result(&result)
    }

    /// Decide, counting the decision (`stoa_opa_decisions_total`), logging a failure, and
    /// recording it as an `opa.decision` event on the request's span when traced.
    async fn judge(
        &self,
        input: Rego,
        request_id: &str,
        span: Option<&SpanRef>,
    ) -> std::result::Result<Decision, String> {
        let started = std::time::Instant::now();
        let outcome = self.decide(input, span).await;
        let result = match &outcome {
            Ok(d) if d.allow => "allow",
            Ok(_) => "deny",
            Err(e) => {
                let ids = span.map(SpanRef::ids);
                warn!(
                    request_id,
                    trace_id = ids.as_ref().map(|(t, _)| t.as_str()),
                    span_id = ids.as_ref().map(|(_, s)| s.as_str()),
                    error = %e,
                    fail_open = self.fail_open,
                    "policy evaluation failed"
                );
                "error"
            }
        };
        METRICS
            .opa_decisions
            .with_label_values(&[self.engine_label(), result])
            .inc();
        if let Some(span) = span.filter(|s| s.recording()) {
            span.event(
                "opa.decision",
                vec![
                    KeyValue::new("opa.result", result),
                    KeyValue::new("opa.engine", self.engine_label()),
                    KeyValue::new("duration_ms", started.elapsed().as_secs_f64() * 1e3),
                ],
            );
        }
        outcome
    }

    /// Decide on an input built elsewhere (the `mcp` filter's per-tool checks): allowed, or why
    /// not. An evaluation error refuses unless `fail_open`.
    pub async fn authorize(
        &self,
        input: Rego,
        request_id: &str,
        span: Option<&SpanRef>,
    ) -> std::result::Result<(), String> {
        match self.judge(input, request_id, span).await {
            Ok(d) if d.allow => Ok(()),
            Ok(d) => Err(d.reason.unwrap_or_else(|| "denied by policy".to_string())),
            Err(_) if self.fail_open => Ok(()),
            Err(_) => Err("the policy could not be evaluated".to_string()),
        }
    }

    /// Sample allow decisions at `log_sample` (exactly, by counting).
    fn sample_allow(&self) -> bool {
        let n = self.allows.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.log_sample).floor() > (n * self.log_sample).floor()
    }
}

#[async_trait]
impl Filter for Opa {
    fn name(&self) -> &'static str {
        "opa"
    }

    fn phases(&self) -> u8 {
        phase::REQUEST | phase::UPSTREAM_REQUEST
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let input = input_document(session.req_header(), ctx);
        let span = ctx.span();
        match self.judge(input, &ctx.request_id, span.as_ref()).await {
            Ok(d) if d.allow => {
                if self.sample_allow() {
                    ctx.policy = Some(PolicyLog {
                        allow: true,
                        reason: d.reason.clone(),
                    });
                }
                if !d.headers.is_empty() {
                    ctx.extensions.insert(PolicyHeaders(d.headers));
                }
                Ok(FilterAction::Continue)
            }
            Ok(d) => {
                let reason = d
                    .reason
                    .clone()
                    .unwrap_or_else(|| "denied by policy".to_string());
                ctx.policy = Some(PolicyLog {
                    allow: false,
                    reason: Some(reason.clone()),
                });
                ctx.reject("opa", "deny");
                let body = json!({ "error": "forbidden", "reason": reason, "status": 403 });
                let mut resp =
                    LocalResponse::new(403).with_header("content-type", "application/json");
                resp.body = body.to_string().into();
                for (k, v) in d.headers {
                    if HeaderName::from_bytes(k.as_bytes()).is_ok()
                        && HeaderValue::from_str(&v).is_ok()
                    {
                        resp.headers.push((k, v));
                    }
                }
                Ok(FilterAction::Respond(resp))
            }
            Err(e) => {
                ctx.policy = Some(PolicyLog {
                    allow: self.fail_open,
                    reason: Some(format!("evaluation failed: {e}")),
                });
                if self.fail_open {
                    return Ok(FilterAction::Continue);
                }
                ctx.reject("opa", "error");
                let body = json!({
                    "error": "forbidden",
                    "reason": "the policy could not be evaluated",
                    "status": self.status_on_error,
                });
                let mut resp = LocalResponse::new(self.status_on_error)
                    .with_header("content-type", "application/json");
                resp.body = body.to_string().into();
                Ok(FilterAction::Respond(resp))
            }
        }
    }

    fn on_upstream_request(
        &self,
        _session: &Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(PolicyHeaders(headers)) = ctx.extensions.get::<PolicyHeaders>() {
            for (k, v) in headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    upstream.insert_header(name, value)?;
                }
            }
        }
        Ok(())
    }
}

/// Headers an allow decision asked to add to the upstream request.
#[derive(Clone)]
struct PolicyHeaders(Vec<(String, String)>);

impl crate::build::BuildFilter for Opa {
    const TYPE: &'static str = "opa";
    type Config = OpaConfig;

    fn build(
        cfg: &OpaConfig,
        bctx: &mut crate::build::BuildContext,
    ) -> std::result::Result<Self, String> {
        Opa::new(cfg, bctx)
    }

    fn register_metrics() {
        once_cell::sync::Lazy::force(&METRICS);
    }
}

/// The `opa` metrics, in the filters' registry (`crate::metrics::REGISTRY`).
pub struct OpaMetrics {
    /// `stoa_opa_decisions_total{engine,result}`: allow, deny or error.
    pub opa_decisions: prometheus::IntCounterVec,
}

/// Registered once, in the process-wide registry (metric families are per process).
pub static METRICS: once_cell::sync::Lazy<OpaMetrics> = once_cell::sync::Lazy::new(|| OpaMetrics {
    opa_decisions: crate::metrics::counter_vec(
        "stoa_opa_decisions_total",
        "Policy decisions of the opa filter, by engine (embedded or external) and result",
        &["engine", "result"],
    ),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert!(Decision::from_result(&json!(true)).unwrap().allow);
        assert!(!Decision::from_result(&Json::Null).unwrap().allow);
        let d = Decision::from_result(
            &json!({"allow": false, "reason": "no", "headers": {"x-a": "1"}}),
        )
        .unwrap();
        assert_eq!(d.reason.as_deref(), Some("no"));
        assert_eq!(d.headers, vec![("x-a".to_string(), "1".to_string())]);
        assert!(Decision::from_result(&json!(3)).is_err());
        assert!(Decision::from_result(&json!({"reason": "x"})).is_err());
    }

    #[test]
    fn example_policies_pass_their_rego_tests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/policies");
        let results = run_rego_tests(&dir).unwrap();
        assert!(
            results.len() >= 7,
            "expected the example tests, got {results:?}"
        );
        let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
        assert!(failed.is_empty(), "failing Rego tests: {failed:?}");
    }

    #[test]
    fn the_bytecode_vm_agrees_with_the_interpreter() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/policies");
        let inputs = [
            json!({"request": {"method": "GET", "path": "/api/orders"}, "token": {"sub": "u"}, "tenant": "acme", "roles": []}),
            json!({"request": {"method": "POST", "path": "/api/orders"}, "token": {"sub": "u"}, "tenant": "acme", "roles": ["viewer"]}),
            json!({"request": {"method": "POST", "path": "/api/orders"}, "token": {"sub": "u"}, "tenant": "acme", "roles": ["editor"]}),
            json!({"request": {"method": "GET", "path": "/api/tenants/globex/x"}, "token": {"sub": "u"}, "tenant": "acme", "roles": []}),
            json!({"request": {"method": "GET", "path": "/api/orders"}, "token": {"sub": "u"}, "tenant": "suspended-co", "roles": []}),
            json!({"request": {"method": "GET", "path": "/public/x"}, "token": null, "roles": []}),
            json!({"request": {"method": "GET", "path": "/api/orders"}, "token": null, "roles": []}),
        ];
        for query in ["data.stoa.authz.allow", "data.stoa.authz.decision"] {
            let policy = Policy::load(&dir, None, query).unwrap();
            assert!(policy.on_vm(), "{query} should run on the VM");
            let interpreter = compile(&dir, None, query).unwrap();
            for input in &inputs {
                let vm = policy.evaluate(input.clone()).unwrap();
                let reference = evaluate(&interpreter, input.clone()).unwrap();
                assert_eq!(vm, reference, "{query} on {input}");
            }
        }
    }

    #[test]
    fn example_policy_compiles_and_decides() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/policies");
        let policy = compile(&dir, None, "data.stoa.authz.decision").unwrap();
        let out = evaluate(
            &policy,
            json!({"request": {"method": "DELETE", "path": "/api/orders/1", "headers": {}},
                   "roles": ["viewer"], "tenant": "acme"}),
        )
        .unwrap();
        let d = Decision::from_result(&out).unwrap();
        assert!(!d.allow);
        assert!(d.reason.is_some());
    }
}
