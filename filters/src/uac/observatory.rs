//! The process's shadow capture (`Observatory`): the settings replaced whole on reload, the
//! bounded queue the `shadow_capture` filter feeds, the worker thread that masks and stores
//! samples and applies retention, the sample store, and the approved contracts compiled for
//! `uac_validation`. `install` starts it once and updates it on every reload.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tracing::{info, warn};

use super::config::{OptIn, ShadowConfig, UacGeneration};
use super::pii::{self, Masker};
use super::store::{now_ms, Sample, Store};
use super::{contract, validate};
use crate::exchange::{header, Exchange};
use crate::metrics::FILTER_METRICS;

/// What the worker and the filters read, replaced whole on reload.
pub(super) struct Settings {
    pub(super) cfg: ShadowConfig,
    masker: Masker,
    /// The API name of each `opt_in` entry, in order.
    pub(super) api_names: Vec<String>,
    /// Reviewer tokens → names (tokens read from the environment at load).
    tokens: Vec<(String, String)>,
}

/// A captured exchange on its way to the store (not yet masked: never leaves memory so).
pub(super) struct Raw {
    pub(super) api: String,
    pub(super) tenant: Option<String>,
    pub(super) at: i64,
    pub(super) exchange: Exchange,
}

/// The process's shadow capture: settings, queue, store, and the approved contracts compiled
/// for `uac_validation`.
pub struct Observatory {
    settings: ArcSwap<Settings>,
    pub(super) queue: SyncSender<Raw>,
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
    pub(super) fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
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
    pub(super) fn reviewer(&self, token: &str) -> Option<String> {
        use subtle::ConstantTimeEq;
        self.settings()
            .tokens
            .iter()
            .find(|(t, _)| t.as_bytes().ct_eq(token.as_bytes()).into())
            .map(|(_, name)| name.clone())
    }

    pub(super) fn has_reviewers(&self) -> bool {
        !self.settings().cfg.reviewers.is_empty()
    }

    pub(super) fn uac_generation(&self) -> UacGeneration {
        self.settings().cfg.uac_generation.clone()
    }
}
