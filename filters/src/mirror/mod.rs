//! Shadow traffic: the `mirror` filter tees a sample of live requests to a candidate backend
//! and compares its answers with the primary's (see `compare`). The client only ever sees the
//! primary's response: the copy is sent after the primary answered, off the request path (on
//! the idle-priority runtime, so copies only use spare CPU), with its own timeout and a cap on
//! copies in flight, so a slow or dead candidate changes nothing for the client. Requests are sampled by a deterministic hash of a configurable key; methods
//! that are not idempotent are mirrored only on the routes that allow it; copies carry a marker
//! header; bodies over `max_body` are counted as skipped. Outcomes are the migration dashboards' metrics
//! (`mcp_shadow_requests_total{route,status}`, `mcp_shadow_match_total{route,result}`) plus the
//! fields that differed, and each mismatch logs one `Shadow MISMATCH` JSON line. With a
//! `baseline` (a second instance of the primary), differences the baseline shows too are noise
//! and do not make a mismatch (see `noise`).

pub mod compare;
pub mod metrics;
pub mod noise;
pub mod report;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use once_cell::sync::Lazy;
use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::KeyValue;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::build::BuildContext;
use crate::context::RequestCtx;
use crate::exchange::{header_pairs, Exchange, EXCHANGE_PHASES};
use crate::filter::{Filter, FilterAction};
use crate::mirror::metrics::METRICS;
use crate::telemetry::{outbound, SpanRef};
use crate::template::Template;
use crate::units::{ByteSize, HumanDuration};
use compare::{Comparator, CompareConfig, Difference, Observed};
use report::Report;

/// The environment switch and candidate URL of a migration's mirroring step (`SHADOW_MODE_ENABLED=true`,
/// `SHADOW_RUST_GATEWAY_URL=http://…`).
pub const SHADOW_ENABLED_ENV: &str = "SHADOW_MODE_ENABLED";
pub const SHADOW_URL_ENV: &str = "SHADOW_RUST_GATEWAY_URL";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The candidate's base URL; the request's path and query are appended.
    pub url: String,
    /// The share of requests mirrored, in percent (fractions allowed).
    #[serde(default = "hundred")]
    pub percent: f64,
    /// What the sampling hashes (a template: `{{ header.x-user-id }}`, `{{ client_ip }}`);
    /// the same key is always in or always out. Default: the request id (each request alone).
    #[serde(default = "default_sample_key")]
    pub sample_key: String,
    /// The longest the candidate may take.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Copies in flight at most; beyond it, requests are not mirrored (counted).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Request and response bodies are kept up to this size; a larger one skips the copy.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Methods mirrored everywhere (the idempotent ones by default).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Routes (router route names) where every method is mirrored, POST included.
    #[serde(default)]
    pub allow_all_methods_on: Vec<String>,
    /// The header marking a copy (value `1`), so the candidate can tell.
    #[serde(default = "default_marker")]
    pub marker_header: String,
    #[serde(default)]
    pub compare: CompareConfig,
    /// A second instance of the primary: what differs between the two is noise.
    #[serde(default)]
    pub baseline: Option<BaselineConfig>,
}

/// The noise baseline: each copy of an idempotent request also goes here, and a candidate
/// difference counts only when it is above the primary-vs-baseline noise.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    /// The second primary's base URL.
    pub url: String,
    /// How far (a fraction of the route's requests) a field's candidate difference rate must
    /// exceed its noise rate to count, for fields the baseline has shown to be noisy.
    #[serde(default = "default_margin")]
    pub margin: f64,
}

fn default_margin() -> f64 {
    0.05
}

fn hundred() -> f64 {
    100.0
}
fn default_sample_key() -> String {
    "{{ request_id }}".into()
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_concurrency() -> usize {
    64
}
fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec()
}
fn default_marker() -> String {
    "x-stoa-shadow".into()
}

impl MirrorConfig {
    /// `--mirror URL` / the mirroring environment variables: every request (idempotent methods) to `url`.
    pub fn for_url(url: &str) -> Self {
        MirrorConfig {
            url: url.to_string(),
            percent: hundred(),
            sample_key: default_sample_key(),
            timeout: default_timeout(),
            max_concurrency: default_concurrency(),
            max_body: default_max_body(),
            methods: default_methods(),
            allow_all_methods_on: Vec::new(),
            marker_header: default_marker(),
            compare: CompareConfig::default(),
            baseline: None,
        }
    }
}

/// Headers not copied to the candidate (hop by hop, or recomputed).
const NOT_COPIED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
    "host",
];

/// The exchange a mirrored request gathers (its own type in the extensions, so a chain can
/// also hold a `shadow_capture`).
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Exchange>>);

pub struct Mirror {
    url: String,
    /// The baseline's base URL and margin.
    baseline: Option<(String, f64)>,
    threshold: u64,
    sample_key: Template,
    timeout: Duration,
    slots: Arc<tokio::sync::Semaphore>,
    max_body: usize,
    methods: Vec<String>,
    all_methods_on: Vec<String>,
    marker: http::HeaderName,
    comparator: Arc<Comparator>,
    client: reqwest::Client,
    report: Arc<Report>,
}

/// Distinct `field` labels of `mcp_shadow_field_differences_total` per process; more share
/// `other`.
const MAX_FIELD_LABELS: usize = 200;
/// The `field` labels in use. Process-wide because the metric is: a label, once exported,
/// stays in the metrics registry for the process's life, so its bound must too.
static FIELD_LABELS: Lazy<std::sync::Mutex<std::collections::HashSet<String>>> =
    Lazy::new(Default::default);

fn field_label(field: &str) -> String {
    let general = compare::generalise(field);
    let mut seen = FIELD_LABELS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen.contains(&general) || seen.len() < MAX_FIELD_LABELS {
        seen.insert(general.clone());
        general
    } else {
        "other".into()
    }
}

impl Mirror {
    pub fn build(cfg: &MirrorConfig, bctx: &mut BuildContext) -> std::result::Result<Self, String> {
        let base_url = |key: &str, text: &str| {
            reqwest::Url::parse(text)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .map(|u| u.as_str().trim_end_matches('/').to_string())
                .ok_or_else(|| format!("{key}: `{text}` is not an http(s) URL"))
        };
        let url = base_url("url", &cfg.url)?;
        let baseline = match &cfg.baseline {
            None => None,
            Some(b) if !(0.0..=1.0).contains(&b.margin) => {
                return Err("baseline.margin: between 0 and 1".into())
            }
            Some(b) => Some((base_url("baseline.url", &b.url)?, b.margin)),
        };
        if !(0.0..=100.0).contains(&cfg.percent) {
            return Err("percent: between 0 and 100".into());
        }
        if cfg.max_concurrency == 0 || cfg.timeout.0.is_zero() {
            return Err("max_concurrency and timeout: must be more than 0".into());
        }
        let marker = http::HeaderName::from_bytes(cfg.marker_header.as_bytes()).map_err(|_| {
            format!(
                "marker_header: `{}` is not a header name",
                cfg.marker_header
            )
        })?;
        Ok(Mirror {
            url,
            baseline,
            // The share of the 2^32 hash space that is mirrored.
            threshold: ((cfg.percent / 100.0) * 4_294_967_296.0) as u64,
            sample_key: Template::parse(&cfg.sample_key).map_err(|e| format!("sample_key: {e}"))?,
            timeout: cfg.timeout.0,
            slots: Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrency)),
            max_body: cfg.max_body.0 as usize,
            methods: cfg.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            all_methods_on: cfg.allow_all_methods_on.clone(),
            marker,
            comparator: Arc::new(
                Comparator::build(&cfg.compare).map_err(|e| format!("compare.{e}"))?,
            ),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("HTTP client: {e}"))?,
            report: {
                let report = bctx.shared::<Report>("", || Ok(Report::default()))?;
                bctx.register_admin(report.clone());
                report
            },
        })
    }

    /// Whether this key falls in the mirrored share (a stable hash, the same on every replica).
    fn sampled(&self, key: &str) -> bool {
        let digest = Sha256::digest(key.as_bytes());
        let point = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) as u64;
        point < self.threshold
    }

    fn skipped(route: &str, reason: &str) {
        METRICS
            .shadow_skipped
            .with_label_values(&[route, reason])
            .inc();
    }
}

#[async_trait]
impl Filter for Mirror {
    fn name(&self) -> &'static str {
        "mirror"
    }

    fn phases(&self) -> u8 {
        EXCHANGE_PHASES
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let route = ctx.route_name().to_string();
        if !self.methods.contains(&method) && !self.all_methods_on.contains(&route) {
            Mirror::skipped(&route, "method");
            return Ok(FilterAction::Continue);
        }
        // Everything mirrored: no key to render and hash.
        let everything = self.threshold > u32::MAX as u64;
        if !everything && !self.sampled(&self.sample_key.render(session, ctx)) {
            return Ok(FilterAction::Continue);
        }
        let mut exchange = Exchange::of_request(session.req_header());
        exchange
            .headers
            .retain(|(k, _)| !NOT_COPIED.contains(&k.as_str()));
        ctx.extensions
            .insert(Capture(Arc::new(std::sync::Mutex::new(exchange))));
        Ok(FilterAction::Continue)
    }

    async fn on_request_body(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(chunk), Some(c)) = (body.as_ref(), capture(ctx)) {
            c.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keep(false, chunk, self.max_body);
        }
        Ok(())
    }

    fn on_response_headers(
        &self,
        _session: &Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(c) = capture(ctx) {
            c.lock()
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
        if let (Some(chunk), Some(c)) = (body.as_ref(), capture(ctx)) {
            c.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keep(true, chunk, self.max_body);
        }
        Ok(())
    }

    /// The primary has answered: send the copy and compare, off the request path.
    fn on_logging(&self, _session: &Session, ctx: &RequestCtx, status: u16) {
        let Some(c) = capture(ctx) else { return };
        let route = ctx.route_name().to_string();
        let capture =
            std::mem::take(&mut *c.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if capture.too_large {
            Mirror::skipped(&route, "body_too_large");
            return;
        }
        if status == 0 || capture.status == 0 {
            // No answer from the primary (client gone, or a local refusal): nothing to compare.
            Mirror::skipped(&route, "no_primary_response");
            return;
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            Mirror::skipped(&route, "concurrency");
            return;
        };
        // The baseline is a primary: it gets only what may safely be sent twice.
        let idempotent = self.methods.contains(&capture.method);
        let span = ctx.trace.as_ref().filter(|t| t.recording()).map(|t| {
            let primary = t.server.span().span_context().clone();
            t.telemetry().start_linked(
                format!("mirror {}", capture.method),
                SpanKind::Internal,
                Some(primary),
                vec![
                    KeyValue::new("http.route", route.clone()),
                    KeyValue::new("stoa.mirror.primary_status", i64::from(capture.status)),
                ],
            )
        });
        let shot = Shot {
            url: self.url.clone(),
            baseline_url: self
                .baseline
                .as_ref()
                .filter(|_| idempotent)
                .map(|(url, _)| url.clone()),
            noise_margin: self.baseline.as_ref().map(|(_, margin)| *margin),
            capture,
            route,
            request_id: ctx.request_id.clone(),
            timeout: self.timeout,
            max_body: self.max_body,
            marker: self.marker.clone(),
            comparator: self.comparator.clone(),
            client: self.client.clone(),
            report: self.report.clone(),
            span,
        };
        crate::background::idle_handle().spawn(async move {
            shot.fire().await;
            drop(permit);
        });
    }
}

fn capture(ctx: &RequestCtx) -> Option<Arc<std::sync::Mutex<Exchange>>> {
    ctx.extensions.get::<Capture>().map(|c| c.0.clone())
}

/// A response: status, headers, body.
type Answer = (u16, Vec<(String, String)>, Bytes);

/// One copy on its way to the candidate (and the baseline, if any).
struct Shot {
    /// The candidate's base URL.
    url: String,
    /// The baseline's base URL, when this copy goes there too.
    baseline_url: Option<String>,
    /// With a baseline configured: how far above the noise a difference must be.
    noise_margin: Option<f64>,
    capture: Exchange,
    route: String,
    request_id: String,
    timeout: Duration,
    max_body: usize,
    marker: http::HeaderName,
    comparator: Arc<Comparator>,
    client: reqwest::Client,
    report: Arc<Report>,
    /// The copy's own trace when the primary is traced and sampled: a root span linked to the
    /// primary's server span, whose calls to the candidate and baseline are client spans.
    span: Option<SpanRef>,
}

impl Shot {
    /// The copy sent to `base`: the answer, or `error`/`timeout`.
    async fn send(&self, base: &str) -> std::result::Result<Answer, &'static str> {
        let c = &self.capture;
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap_or_default();
        let mut req = self
            .client
            .request(method, format!("{base}{}", c.path_and_query));
        for (k, v) in &c.headers {
            req = req.header(k, v);
        }
        req = req
            .header(self.marker.as_str(), "1")
            .header("x-request-id", &self.request_id)
            .body(c.request_body.clone());
        let answer = tokio::time::timeout(self.timeout, async {
            let resp = outbound::send(req, self.span.as_ref(), "mirror").await?;
            let status = resp.status().as_u16();
            let headers = header_pairs(resp.headers().iter());
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        })
        .await;
        match answer {
            Err(_) => Err("timeout"),
            Ok(Err(e)) if e.is_timeout() => Err("timeout"),
            Ok(Err(_)) => Err("error"),
            Ok(Ok(a)) => Ok(a),
        }
    }

    /// The primary's answer compared with another one.
    fn differences(&self, (status, headers, body): &Answer) -> Vec<Difference> {
        let c = &self.capture;
        self.comparator.compare(
            &Observed {
                status: c.status,
                headers: &c.response_headers,
                body: &c.response_body,
            },
            &Observed {
                status: *status,
                headers,
                body,
            },
        )
    }

    async fn fire(self) {
        let baseline = async {
            match &self.baseline_url {
                Some(url) => Some(self.send(url).await),
                None => None,
            }
        };
        let (candidate, baseline) = tokio::join!(self.send(&self.url), baseline);
        let outcome = |answer: &std::result::Result<Answer, &'static str>| match answer {
            Ok(_) => "ok",
            Err(status) => status,
        };
        self.report.record_outcome(&self.route, outcome(&candidate));
        if let Some(span) = &self.span {
            span.set_attribute(KeyValue::new("stoa.mirror.outcome", outcome(&candidate)));
            if let Ok((status, _, _)) = &candidate {
                span.set_attribute(KeyValue::new(
                    "stoa.mirror.candidate_status",
                    i64::from(*status),
                ));
            }
        }
        METRICS
            .shadow_requests
            .with_label_values(&[&self.route, outcome(&candidate)])
            .inc();
        if let Some(b) = &baseline {
            self.report.noise.record_baseline(&self.route, outcome(b));
            METRICS
                .shadow_baseline_requests
                .with_label_values(&[&self.route, outcome(b)])
                .inc();
        }
        let Ok(candidate) = candidate else { return };
        if candidate.2.len() > self.max_body {
            Mirror::skipped(&self.route, "body_too_large");
            return;
        }
        let mut differences = self.differences(&candidate);
        if let Some(margin) = self.noise_margin {
            let noise_now = match &baseline {
                Some(Ok(b)) if b.2.len() <= self.max_body => Some(self.differences(b)),
                _ => None,
            };
            let (real, noise) =
                self.report
                    .noise
                    .separate(&self.route, differences, noise_now.as_deref(), margin);
            for d in &noise {
                METRICS
                    .shadow_noise_differences
                    .with_label_values(&[&self.route, &field_label(&d.field)])
                    .inc();
            }
            differences = real;
        }
        self.report.record_comparison(
            &self.route,
            &self.capture.method,
            self.capture.path(),
            &self.request_id,
            &differences,
        );
        let result = if differences.is_empty() {
            "match"
        } else {
            "mismatch"
        };
        METRICS
            .shadow_matches
            .with_label_values(&[&self.route, result])
            .inc();
        if let Some(span) = &self.span {
            span.set_attribute(KeyValue::new("stoa.mirror.result", result));
            span.set_attribute(KeyValue::new(
                "stoa.mirror.differences",
                differences.len() as i64,
            ));
        }
        if !differences.is_empty() {
            self.log_mismatch(&differences);
        }
    }

    /// One JSON line per mismatch: `grep "Shadow MISMATCH" | jq '.path'` works.
    fn log_mismatch(&self, differences: &[Difference]) {
        for d in differences {
            METRICS
                .shadow_field_differences
                .with_label_values(&[&self.route, &field_label(&d.field)])
                .inc();
        }
        // At most 10 fields in the line (the count says how many there were).
        let shown: Vec<&Difference> = differences.iter().take(10).collect();
        let path = self.capture.path();
        let ids = self.span.as_ref().map(SpanRef::ids);
        warn!(
            method = %self.capture.method,
            path = %path,
            request_id = %self.request_id,
            trace_id = ids.as_ref().map(|(t, _)| t.as_str()),
            span_id = ids.as_ref().map(|(_, s)| s.as_str()),
            route = %self.route,
            differing_fields = differences.len(),
            diff = %json!(shown),
            "Shadow MISMATCH"
        );
    }
}

impl crate::build::BuildFilter for Mirror {
    const TYPE: &'static str = "mirror";
    type Config = MirrorConfig;

    fn build(cfg: &MirrorConfig, bctx: &mut BuildContext) -> std::result::Result<Self, String> {
        Mirror::build(cfg, bctx)
    }

    fn register_metrics() {
        once_cell::sync::Lazy::force(&crate::mirror::metrics::METRICS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_stable_and_close_to_the_share() {
        let none = Default::default();
        let mut bctx = BuildContext::new(&[], &none, None);
        let mut cfg = MirrorConfig::for_url("http://candidate:8080");
        cfg.percent = 10.0;
        let m = Mirror::build(&cfg, &mut bctx).unwrap();
        let hits = (0..20_000)
            .filter(|i| m.sampled(&format!("user-{i}")))
            .count();
        assert!((1_700..2_300).contains(&hits), "{hits}");
        assert_eq!(m.sampled("user-7"), m.sampled("user-7"));
        cfg.percent = 0.0;
        assert!(!Mirror::build(&cfg, &mut bctx).unwrap().sampled("x"));
        cfg.percent = 100.0;
        assert!(Mirror::build(&cfg, &mut bctx).unwrap().sampled("x"));
        cfg.percent = 101.0;
        assert!(Mirror::build(&cfg, &mut bctx).is_err());
    }
}
