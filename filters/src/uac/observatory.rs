//! Shadow capture's state. `Observatory`: the store, the bounded queue the `shadow_capture`
//! filter feeds, the worker thread that masks and stores samples and applies retention, and
//! the approved contracts compiled for `uac_validation`; a shared resource (one per process
//! while a config has a `shadow:` section, kept across reloads). `ShadowVersion`: one config
//! version's `shadow:` settings with the observatory; the filters and the `/uac` endpoint of a
//! version hold it, so a reload changes settings and chains in the same swap. `prepare` builds
//! it for a version.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::config::{OptIn, ShadowConfig, UacGeneration};
use super::pii::{self, Masker};
use super::store::{now_ms, Sample, Store};
use super::{contract, validate};
use crate::build::BuildContext;
use crate::exchange::{header, Exchange};
use crate::uac::metrics::METRICS;

/// One config version's `shadow:` settings, as the filters, the worker and `/uac` read them.
pub(super) struct Settings {
    pub(super) cfg: ShadowConfig,
    masker: Masker,
    /// The API name of each `opt_in` entry, in order.
    pub(super) api_names: Vec<String>,
    /// Reviewer tokens → names (tokens read from the environment at load).
    tokens: Vec<(String, String)>,
}

impl Settings {
    fn new(cfg: &ShadowConfig) -> Self {
        Settings {
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
        }
    }
}

/// A captured exchange on its way to the store (not yet masked: never leaves memory so), with
/// the settings of the version that captured it (they decide how it is masked).
pub(super) struct Raw {
    pub(super) api: String,
    pub(super) tenant: Option<String>,
    pub(super) at: i64,
    pub(super) exchange: Exchange,
    pub(super) settings: Arc<Settings>,
}

/// The shadow store, its queue and worker, and the approved contracts compiled for
/// `uac_validation`.
pub struct Observatory {
    pub(super) queue: SyncSender<Raw>,
    pub store: Arc<Store>,
    store_path: PathBuf,
    /// The serving version's settings, for the worker's retention schedule.
    serving: Arc<ArcSwap<Settings>>,
    approved: ArcSwap<HashMap<String, Arc<validate::CompiledContract>>>,
    /// Serialises inference runs.
    infer_lock: Mutex<()>,
}

/// One config version's shadow capture: its settings and the (shared) observatory.
pub struct ShadowVersion {
    pub(super) settings: Arc<Settings>,
    pub(super) obs: Arc<Observatory>,
    pub store: Arc<Store>,
}

/// Build a version's shadow capture from its `shadow:` section: open the store and start the
/// worker the first time (a store that cannot open fails the start or the reload), keep them
/// after. The store's path is fixed for the process's life (a change is reported). The
/// version's filters (`shadow_capture`, `uac_validation`) find it in the build context, and
/// its `/uac` endpoint is registered.
pub fn prepare(cfg: &ShadowConfig, bctx: &mut BuildContext) -> std::result::Result<(), String> {
    cfg.validate()?;
    let settings = Arc::new(Settings::new(cfg));
    let check_only = bctx.check_only();
    let obs =
        bctx.shared::<Observatory>("", || Observatory::open(cfg, settings.clone(), check_only))?;
    if obs.store_path.as_path() != std::path::Path::new(&cfg.store.path) {
        warn!(
            running = %obs.store_path.display(),
            configured = %cfg.store.path,
            "shadow.store.path changed: the store in use is kept until a restart"
        );
    }
    let version = Arc::new(ShadowVersion {
        store: obs.store.clone(),
        settings,
        obs,
    });
    bctx.set_local(version.clone());
    bctx.register_admin(Arc::new(super::admin::UacEndpoint(version.clone())));
    bctx.on_activate(move || version.obs.serving.store(version.settings.clone()));
    Ok(())
}

/// What `shadow_capture` and `uac_validation` say when the config has no `shadow:` section.
pub(super) const NEEDS_SHADOW_SECTION: &str =
    "needs a `shadow:` section (its store holds the captures and contracts)";

impl Observatory {
    /// Open the store and start its worker; `check_only` (`--check`): validate the path, keep
    /// the samples in memory and start nothing.
    fn open(
        cfg: &ShadowConfig,
        settings: Arc<Settings>,
        check_only: bool,
    ) -> std::result::Result<Self, String> {
        let path = PathBuf::from(&cfg.store.path);
        let opened = if check_only {
            Store::check(&path, cfg.store.max_size.0)
        } else {
            Store::open(&path, cfg.store.max_size.0)
        };
        let store = Arc::new(opened.map_err(|e| format!("store.path: {e}"))?);
        let (tx, rx) = sync_channel(cfg.capture.queue);
        let serving = Arc::new(ArcSwap::new(settings));
        let obs = Observatory {
            queue: tx,
            store: store.clone(),
            store_path: path,
            serving: serving.clone(),
            approved: ArcSwap::from_pointee(HashMap::new()),
            infer_lock: Mutex::new(()),
        };
        obs.refresh_approved();
        if check_only {
            return Ok(obs);
        }
        // The worker holds the store and the receiver, not the observatory: when the last
        // version with a `shadow:` section is gone, the queue closes and the worker ends.
        std::thread::Builder::new()
            .name("shadow-store".into())
            .spawn(move || run_worker(&store, &serving, rx))
            .map_err(|e| format!("shadow worker: {e}"))?;
        info!(store = %cfg.store.path, "shadow capture store open");
        Ok(obs)
    }
    /// Infer the drafts of every API with samples and store them; returns the API names.
    pub fn refresh_drafts(&self, gen: &UacGeneration) -> std::result::Result<Vec<String>, String> {
        let _one = self
            .infer_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
}

impl ShadowVersion {
    /// The admin caller's name for a bearer token (tokens compared in constant time).
    pub(super) fn reviewer(&self, token: &str) -> Option<String> {
        use subtle::ConstantTimeEq;
        self.settings
            .tokens
            .iter()
            .find(|(t, _)| t.as_bytes().ct_eq(token.as_bytes()).into())
            .map(|(_, name)| name.clone())
    }

    pub(super) fn has_reviewers(&self) -> bool {
        !self.settings.cfg.reviewers.is_empty()
    }

    pub(super) fn uac_generation(&self) -> UacGeneration {
        self.settings.cfg.uac_generation.clone()
    }

    /// Infer the drafts with this version's settings (see `Observatory::refresh_drafts`).
    pub fn refresh_drafts(&self) -> std::result::Result<Vec<String>, String> {
        self.obs.refresh_drafts(&self.settings.cfg.uac_generation)
    }

    pub fn refresh_approved(&self) {
        self.obs.refresh_approved()
    }

    pub fn approved(&self, api: &str) -> Option<Arc<validate::CompiledContract>> {
        self.obs.approved(api)
    }
}

/// The worker: masks and stores what the filters queued, and purges on schedule.
/// Idle priority: storing samples never takes CPU from serving requests (a saturated
/// gateway fills the queue instead, and samples are dropped, counted).
fn run_worker(store: &Store, serving: &ArcSwap<Settings>, rx: Receiver<Raw>) {
    crate::background::lowest_priority();
    let mut last_purge = Instant::now() - Duration::from_secs(3600);
    loop {
        let retention = serving.load().cfg.retention.0;
        let purge_every =
            (retention / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
        if last_purge.elapsed() >= purge_every {
            let before = now_ms() - retention.as_millis() as i64;
            match store.purge(before) {
                Ok(n) if n > 0 => {
                    METRICS.shadow_purged.inc_by(n as u64);
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
        let mut batch = vec![mask(first)];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(raw) => batch.push(mask(raw)),
                Err(_) => break,
            }
        }
        if let Err(e) = store.insert(&batch) {
            warn!(error = %e, samples = batch.len(), "shadow store write failed");
        }
    }
}

/// The stored form of an exchange: PII masked, parts not configured left out.
fn mask(raw: Raw) -> Sample {
    let s = raw.settings.clone();
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
