//! Shadow mode's contract discovery (seed 004): the `shadow_capture` filter records the
//! exchanges of opted-in APIs without touching them, a bounded queue hands them to one worker
//! thread that masks PII (`pii`) and stores them (`store`), retention purges them, and contracts
//! are inferred from them (`infer`, `contract`), reviewed and exported through the admin API
//! (`admin`) and enforced by the `uac_validation` filter (`validate`). Configured by the
//! top-level `shadow:` section; one `Observatory` per process, kept across reloads.

pub mod admin;
pub mod contract;
pub mod infer;
pub mod pii;
pub mod store;
pub mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::context::RequestCtx;
use crate::exchange::{header, Exchange, EXCHANGE_PHASES};
use crate::filter::{Filter, FilterAction};
use crate::metrics::FILTER_METRICS;
use crate::units::{ByteSize, HumanDuration};
use pii::Masker;
use store::{now_ms, Sample, Store};

/// The longest retention allowed (seed 004: under 30 days).
pub const MAX_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// In `mode: proxy`: keep capturing while enforcing (seed 004's dual mode). In `mode:
    /// shadow` capture is always on.
    #[serde(default)]
    pub keep_observing: bool,
    #[serde(default)]
    pub store: StoreConfig,
    /// The APIs (and tenants) that may be captured; nothing else is.
    #[serde(default)]
    pub opt_in: Vec<OptIn>,
    /// How long samples are kept (default 7 days, at most 30).
    #[serde(default = "default_retention")]
    pub retention: HumanDuration,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default)]
    pub pii: PiiConfig,
    #[serde(default)]
    pub uac_generation: UacGeneration,
    /// Who may read observations and contracts through the admin API: a name and its bearer
    /// token (`token`, or `token_env` naming an environment variable).
    #[serde(default)]
    pub reviewers: Vec<Reviewer>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file.
    #[serde(default = "default_store_path")]
    pub path: String,
    /// The most the samples may take on disk; the oldest go first beyond it.
    #[serde(default = "default_store_size")]
    pub max_size: ByteSize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            max_size: default_store_size(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OptIn {
    /// The API's name (its contract id). Default: the host, else the path prefix.
    #[serde(default)]
    pub name: Option<String>,
    /// The request's host (`Host` header, port ignored), if it must match.
    #[serde(default)]
    pub host: Option<String>,
    /// A path prefix the request must start with.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Tenants whose traffic may be captured (empty: any); a request's tenant is its verified
    /// token's tenant claim, else the `capture.tenant_header`.
    #[serde(default)]
    pub tenants: Vec<String>,
}

impl OptIn {
    pub fn api_name(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.host.clone())
            .or_else(|| {
                self.path_prefix
                    .as_deref()
                    .map(|p| p.trim_matches('/').replace('/', "-"))
                    .filter(|p| !p.is_empty())
            })
            .unwrap_or_else(|| "default".into())
    }

    fn matches(&self, host: Option<&str>, path: &str, tenant: Option<&str>) -> bool {
        self.host
            .as_deref()
            .is_none_or(|h| host.is_some_and(|x| x.eq_ignore_ascii_case(h)))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && (self.tenants.is_empty()
                || tenant.is_some_and(|t| self.tenants.iter().any(|x| x == t)))
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    #[serde(default = "yes")]
    pub requests: bool,
    #[serde(default = "yes")]
    pub responses: bool,
    #[serde(default = "yes")]
    pub headers: bool,
    /// Bodies (masked) too.
    #[serde(default = "yes")]
    pub bodies: bool,
    /// Bodies larger than this are not kept (the exchange is stored without them).
    #[serde(default = "default_capture_body")]
    pub max_body: ByteSize,
    /// Exchanges waiting for the store at most; beyond it they are dropped (counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// The header naming the tenant when no verified token does.
    #[serde(default = "default_tenant_header")]
    pub tenant_header: String,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            requests: true,
            responses: true,
            headers: true,
            bodies: true,
            max_body: default_capture_body(),
            queue: default_queue(),
            tenant_header: default_tenant_header(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// JSON paths blanked in bodies (`$.customer.ssn`, `$.items[*].note`).
    #[serde(default)]
    pub json_paths: Vec<String>,
    /// Header names blanked.
    #[serde(default)]
    pub headers: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UacGeneration {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Endpoints below this confidence are listed for review but not part of the contract.
    #[serde(default = "default_threshold")]
    pub confidence_threshold: f64,
    /// POST each approved contract to `control_plane_url`.
    #[serde(default)]
    pub export_to_control_plane: bool,
    #[serde(default)]
    pub control_plane_url: Option<String>,
    /// Drafts wait for a reviewer's approval (when false, each new draft is approved as
    /// `stoa-gateway`).
    #[serde(default = "yes")]
    pub require_human_review: bool,
}

impl Default for UacGeneration {
    fn default() -> Self {
        UacGeneration {
            enabled: true,
            confidence_threshold: default_threshold(),
            export_to_control_plane: false,
            control_plane_url: None,
            require_human_review: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Reviewer {
    pub name: String,
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
}

fn yes() -> bool {
    true
}
fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 24 * 3600))
}
fn default_store_path() -> String {
    "stoa-shadow.db".into()
}
fn default_store_size() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_capture_body() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_queue() -> usize {
    10_000
}
fn default_tenant_header() -> String {
    "x-tenant-id".into()
}
fn default_threshold() -> f64 {
    0.8
}

impl ShadowConfig {
    /// The one-line start of seed 004 (`--mode=shadow --target=URL`): the target's host is
    /// opted in as one API.
    pub fn for_target(api: &str) -> Self {
        ShadowConfig {
            keep_observing: false,
            store: StoreConfig::default(),
            opt_in: vec![OptIn {
                name: Some(api.to_string()),
                ..OptIn::default()
            }],
            retention: default_retention(),
            capture: CaptureConfig::default(),
            pii: PiiConfig::default(),
            uac_generation: UacGeneration::default(),
            reviewers: Vec::new(),
        }
    }

    /// Problems as `key: message`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let r = self.retention.0;
        if r.is_zero() || r > MAX_RETENTION {
            return Err(format!(
                "retention: between 1s and 30d (seed 004), not {:.1} days",
                r.as_secs_f64() / 86_400.0
            ));
        }
        if self.capture.queue == 0 {
            return Err("capture.queue: must be more than 0".into());
        }
        if !(0.0..=1.0).contains(&self.uac_generation.confidence_threshold) {
            return Err("uac_generation.confidence_threshold: between 0 and 1".into());
        }
        if self.uac_generation.export_to_control_plane {
            let ok = self
                .uac_generation
                .control_plane_url
                .as_deref()
                .and_then(|u| reqwest::Url::parse(u).ok())
                .is_some_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err("uac_generation.control_plane_url: an http(s) URL is needed when export_to_control_plane is true".into());
            }
        }
        for (i, r) in self.reviewers.iter().enumerate() {
            if r.token.is_none() && r.token_env.is_none() {
                return Err(format!("reviewers[{i}]: `token` or `token_env` is needed"));
            }
        }
        Ok(())
    }
}

/// What the worker and the filters read, replaced whole on reload.
struct Settings {
    cfg: ShadowConfig,
    masker: Masker,
    /// The API name of each `opt_in` entry, in order.
    api_names: Vec<String>,
    /// Reviewer tokens → names (tokens read from the environment at load).
    tokens: Vec<(String, String)>,
}

/// A captured exchange on its way to the store (not yet masked: never leaves memory so).
struct Raw {
    api: String,
    tenant: Option<String>,
    at: i64,
    exchange: Exchange,
}

/// The process's shadow capture: settings, queue, store, and the approved contracts compiled
/// for `uac_validation`.
pub struct Observatory {
    settings: ArcSwap<Settings>,
    queue: SyncSender<Raw>,
    pub store: Arc<Store>,
    store_path: PathBuf,
    approved: ArcSwap<HashMap<String, Arc<validate::CompiledContract>>>,
    /// Serialises inference runs.
    infer_lock: Mutex<()>,
}

static OBSERVATORY: ArcSwapOption<Observatory> = ArcSwapOption::const_empty();

/// The process's observatory, once a config with a `shadow:` section was loaded.
pub fn observatory() -> Option<Arc<Observatory>> {
    OBSERVATORY.load_full()
}

/// Apply a `shadow:` section: open the store and start the worker the first time, replace the
/// settings after. The store's path is fixed for the process's life (a change is reported).
pub fn install(cfg: &ShadowConfig) -> std::result::Result<(), String> {
    cfg.validate()?;
    let settings = Settings {
        masker: Masker::new(&cfg.pii.json_paths, &cfg.pii.headers),
        api_names: cfg.opt_in.iter().map(OptIn::api_name).collect(),
        tokens: cfg
            .reviewers
            .iter()
            .filter_map(|r| {
                let token = r
                    .token
                    .clone()
                    .or_else(|| r.token_env.as_deref().and_then(|e| std::env::var(e).ok()));
                if token.is_none() {
                    warn!(reviewer = %r.name, env = ?r.token_env, "shadow reviewer has no token (its environment variable is unset): it cannot call /uac");
                }
                Some((token?, r.name.clone()))
            })
            .collect(),
        cfg: cfg.clone(),
    };
    if let Some(obs) = observatory() {
        if obs.store_path.as_path() != std::path::Path::new(&cfg.store.path) {
            warn!(
                running = %obs.store_path.display(),
                configured = %cfg.store.path,
                "shadow.store.path changed: the store in use is kept until a restart"
            );
        }
        obs.settings.store(Arc::new(settings));
        return Ok(());
    }
    let path = PathBuf::from(&cfg.store.path);
    let store =
        Arc::new(Store::open(&path, cfg.store.max_size.0).map_err(|e| format!("store.path: {e}"))?);
    let (tx, rx) = sync_channel(cfg.capture.queue);
    let obs = Arc::new(Observatory {
        settings: ArcSwap::from_pointee(settings),
        queue: tx,
        store,
        store_path: path,
        approved: ArcSwap::from_pointee(HashMap::new()),
        infer_lock: Mutex::new(()),
    });
    obs.refresh_approved();
    let worker = obs.clone();
    std::thread::Builder::new()
        .name("shadow-store".into())
        .spawn(move || worker.run(rx))
        .map_err(|e| format!("shadow worker: {e}"))?;
    info!(store = %cfg.store.path, "shadow capture store open");
    OBSERVATORY.store(Some(obs));
    Ok(())
}

impl Observatory {
    fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// The worker: masks and stores what the filters queued, and purges on schedule.
    /// Idle priority: storing samples never takes CPU from serving requests (a saturated
    /// gateway fills the queue instead, and samples are dropped, counted).
    fn run(self: Arc<Self>, rx: Receiver<Raw>) {
        crate::background::lowest_priority();
        let mut last_purge = Instant::now() - Duration::from_secs(3600);
        loop {
            let retention = self.settings().cfg.retention.0;
            let purge_every =
                (retention / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
            if last_purge.elapsed() >= purge_every {
                let before = now_ms() - retention.as_millis() as i64;
                match self.store.purge(before) {
                    Ok(n) if n > 0 => {
                        FILTER_METRICS.shadow_purged.inc_by(n as u64);
                        info!(samples = n, "shadow retention: purged");
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "shadow retention purge failed"),
                }
                last_purge = Instant::now();
            }
            let first = match rx.recv_timeout(purge_every) {
                Ok(raw) => raw,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let settings = self.settings();
            let mut batch = vec![self.mask(&settings, first)];
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(raw) => batch.push(self.mask(&settings, raw)),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.store.insert(&batch) {
                warn!(error = %e, samples = batch.len(), "shadow store write failed");
            }
        }
    }

    /// The stored form of an exchange: PII masked, parts not configured left out.
    fn mask(&self, s: &Settings, raw: Raw) -> Sample {
        let c = &s.cfg.capture;
        let m = &s.masker;
        let x = &raw.exchange;
        let headers = |pairs: &[(String, String)]| -> Vec<(String, String)> {
            if !c.headers {
                return Vec::new();
            }
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), m.header(k, v)))
                .collect()
        };
        let body = |b: &[u8]| if c.bodies { m.body(b) } else { None };
        let (req_ct, resp_ct) = (
            header(&x.headers, "content-type").map(String::from),
            header(&x.response_headers, "content-type").map(String::from),
        );
        Sample {
            api: raw.api,
            at: raw.at,
            tenant: raw.tenant.map(|t| pii::mask_text(&t)),
            method: x.method.clone(),
            path: pii::mask_text(x.path()),
            query: x.query().filter(|_| c.requests).map(|q| m.query(q)),
            request_headers: if c.requests {
                headers(&x.headers)
            } else {
                Vec::new()
            },
            request_content_type: req_ct.filter(|_| c.requests),
            request_body: if c.requests {
                body(&x.request_body)
            } else {
                None
            },
            status: x.status,
            response_headers: if c.responses {
                headers(&x.response_headers)
            } else {
                Vec::new()
            },
            response_content_type: resp_ct.filter(|_| c.responses),
            response_body: if c.responses {
                body(&x.response_body)
            } else {
                None
            },
        }
    }

    /// Infer the drafts of every API with samples and store them; returns the API names.
    pub fn refresh_drafts(&self) -> std::result::Result<Vec<String>, String> {
        let _one = self
            .infer_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let gen = self.settings().cfg.uac_generation.clone();
        let mut apis: Vec<String> = self.store.apis()?.into_iter().map(|a| a.0).collect();
        for api in &apis {
            let samples = self.store.samples(api)?;
            let doc = contract::uac_document(api, &samples, gen.confidence_threshold);
            self.store.put_draft(api, &doc)?;
            if !gen.require_human_review {
                let row = self.store.contract(api)?;
                if row.is_some_and(|r| r.draft_status == "draft") {
                    self.store
                        .review(api, true, "stoa-gateway", "require_human_review: false")?;
                }
            }
        }
        for known in self.store.contract_apis()? {
            if !apis.contains(&known) {
                apis.push(known);
            }
        }
        apis.sort();
        self.refresh_approved();
        Ok(apis)
    }

    /// Recompile the approved contracts for `uac_validation`.
    pub fn refresh_approved(&self) {
        let mut compiled = HashMap::new();
        for api in self.store.contract_apis().unwrap_or_default() {
            if let Ok(Some(row)) = self.store.contract(&api) {
                if let Some(doc) = row.approved {
                    match validate::CompiledContract::compile(&doc) {
                        Ok(c) => {
                            compiled.insert(api, Arc::new(c));
                        }
                        Err(e) => {
                            warn!(api = %api, error = %e, "approved contract does not compile")
                        }
                    }
                }
            }
        }
        self.approved.store(Arc::new(compiled));
    }

    pub fn approved(&self, api: &str) -> Option<Arc<validate::CompiledContract>> {
        self.approved.load().get(api).cloned()
    }

    /// The admin caller's name for a bearer token (tokens compared in constant time).
    fn reviewer(&self, token: &str) -> Option<String> {
        use subtle::ConstantTimeEq;
        self.settings()
            .tokens
            .iter()
            .find(|(t, _)| t.as_bytes().ct_eq(token.as_bytes()).into())
            .map(|(_, name)| name.clone())
    }

    fn has_reviewers(&self) -> bool {
        !self.settings().cfg.reviewers.is_empty()
    }

    fn uac_generation(&self) -> UacGeneration {
        self.settings().cfg.uac_generation.clone()
    }
}

/// The exchange a captured request gathers (its own type in the extensions, so a chain can
/// also hold a `mirror`).
#[derive(Clone)]
struct Captured {
    api: String,
    tenant: Option<String>,
    /// `capture.max_body` when the request came in.
    max_body: usize,
    exchange: Arc<Mutex<Exchange>>,
}

/// A body chunk kept in the captured exchange (up to `capture.max_body`).
fn keep_chunk(ctx: &RequestCtx, response: bool, chunk: Option<&Bytes>) {
    if let (Some(chunk), Some(c)) = (chunk, ctx.extensions.get::<Captured>()) {
        c.exchange
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keep(response, chunk, c.max_body);
    }
}

/// `shadow_capture`: records opted-in exchanges for the shadow store; changes nothing.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowCaptureConfig {}

pub struct ShadowCapture;

impl ShadowCapture {
    fn counted(api: &str, result: &str) {
        FILTER_METRICS
            .shadow_captures
            .with_label_values(&[api, result])
            .inc();
    }
}

#[async_trait]
impl Filter for ShadowCapture {
    fn name(&self) -> &'static str {
        "shadow_capture"
    }

    fn phases(&self) -> u8 {
        EXCHANGE_PHASES
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let Some(obs) = observatory() else {
            return Ok(FilterAction::Continue);
        };
        let settings = obs.settings();
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .map(|h| h.rsplit_once(':').map(|(h, _)| h).unwrap_or(h));
        let tenant = ctx
            .identity
            .as_ref()
            .and_then(|i| i.tenant.clone())
            .or_else(|| {
                req.headers
                    .get(settings.cfg.capture.tenant_header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            });
        let Some(i) = settings
            .cfg
            .opt_in
            .iter()
            .position(|o| o.matches(host, req.uri.path(), tenant.as_deref()))
        else {
            ShadowCapture::counted("-", "not_opted_in");
            return Ok(FilterAction::Continue);
        };
        ctx.extensions.insert(Captured {
            api: settings.api_names[i].clone(),
            tenant,
            max_body: settings.cfg.capture.max_body.0 as usize,
            exchange: Arc::new(Mutex::new(Exchange::of_request(req))),
        });
        Ok(FilterAction::Continue)
    }

    async fn on_request_body(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        keep_chunk(ctx, false, body.as_ref());
        Ok(())
    }

    fn on_response_headers(
        &self,
        _session: &Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(c) = ctx.extensions.get::<Captured>() {
            c.exchange
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .respond(response);
        }
        Ok(())
    }

    fn on_response_body(
        &self,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        keep_chunk(ctx, true, body.as_ref());
        Ok(())
    }

    /// The client has its answer: queue the exchange, never waiting (a full queue drops it).
    fn on_logging(&self, _session: &Session, ctx: &RequestCtx, status: u16) {
        let (Some(c), Some(obs)) = (ctx.extensions.get::<Captured>(), observatory()) else {
            return;
        };
        let mut exchange = std::mem::take(
            &mut *c
                .exchange
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if status == 0 || exchange.status == 0 {
            ShadowCapture::counted(&c.api, "no_response");
            return;
        }
        let result = if exchange.too_large {
            // Kept without its bodies.
            exchange.too_large = false;
            "queued_without_bodies"
        } else {
            "queued"
        };
        let raw = Raw {
            api: c.api.clone(),
            tenant: c.tenant.clone(),
            at: now_ms(),
            exchange,
        };
        match obs.queue.try_send(raw) {
            Ok(()) => ShadowCapture::counted(&c.api, result),
            Err(TrySendError::Full(_)) => ShadowCapture::counted(&c.api, "dropped_queue_full"),
            Err(TrySendError::Disconnected(_)) => ShadowCapture::counted(&c.api, "dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_in_matches_host_prefix_and_tenant() {
        let o = OptIn {
            name: None,
            host: Some("erp.internal".into()),
            path_prefix: Some("/api/".into()),
            tenants: vec!["acme".into()],
        };
        assert_eq!(o.api_name(), "erp.internal");
        assert!(o.matches(Some("ERP.internal"), "/api/users", Some("acme")));
        assert!(!o.matches(Some("erp.internal"), "/admin", Some("acme")));
        assert!(!o.matches(Some("other"), "/api/users", Some("acme")));
        assert!(!o.matches(Some("erp.internal"), "/api/users", Some("globex")));
        assert!(!o.matches(Some("erp.internal"), "/api/users", None));
        let any = OptIn {
            path_prefix: Some("/legacy/".into()),
            ..OptIn::default()
        };
        assert_eq!(any.api_name(), "legacy");
        assert!(any.matches(None, "/legacy/x", None));
    }

    #[test]
    fn retention_is_bounded() {
        let mut c = ShadowConfig::for_target("erp");
        assert_eq!(c.retention.0, Duration::from_secs(7 * 24 * 3600));
        c.retention = HumanDuration(Duration::from_secs(31 * 24 * 3600));
        assert!(c.validate().unwrap_err().starts_with("retention:"));
    }
}
