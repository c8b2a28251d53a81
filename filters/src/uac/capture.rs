//! The `shadow_capture` filter: gathers the exchanges of opted-in APIs (request, response,
//! bodies up to `capture.max_body`) without changing them, and queues each one for the
//! observatory's worker once the client has its answer, never waiting (a full queue drops it).

use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};

use super::observatory::{Raw, ShadowVersion, NEEDS_SHADOW_SECTION};
use super::store::now_ms;
use crate::build::{BuildContext, BuildFilter};
use crate::context::RequestCtx;
use crate::exchange::{Exchange, EXCHANGE_PHASES};
use crate::filter::{Filter, FilterAction};
use crate::uac::metrics::METRICS;

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

pub struct ShadowCapture {
    shadow: Arc<ShadowVersion>,
}

impl BuildFilter for ShadowCapture {
    const TYPE: &'static str = "shadow_capture";
    type Config = ShadowCaptureConfig;

    fn build(
        _cfg: &ShadowCaptureConfig,
        bctx: &mut BuildContext,
    ) -> std::result::Result<Self, String> {
        let shadow = bctx
            .get_local::<ShadowVersion>()
            .ok_or(NEEDS_SHADOW_SECTION)?;
        Ok(ShadowCapture { shadow })
    }

    fn register_metrics() {
        once_cell::sync::Lazy::force(&crate::uac::metrics::METRICS);
    }
}

impl ShadowCapture {
    fn counted(api: &str, result: &str) {
        METRICS
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
        let settings = &self.shadow.settings;
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
        let Some(c) = ctx.extensions.get::<Captured>() else {
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
            settings: self.shadow.settings.clone(),
        };
        match self.shadow.obs.queue.try_send(raw) {
            Ok(()) => ShadowCapture::counted(&c.api, result),
            Err(TrySendError::Full(_)) => ShadowCapture::counted(&c.api, "dropped_queue_full"),
            Err(TrySendError::Disconnected(_)) => ShadowCapture::counted(&c.api, "dropped"),
        }
    }
}
