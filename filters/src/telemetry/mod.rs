//! Tracing with OpenTelemetry: the `telemetry:` config section, the tracer a version builds
//! from it (a runtime-owned resource, kept across reloads while the section is unchanged), and
//! the per-request trace (`RequestTrace`) that the gateway core and the filters add spans and
//! events to and inject into every upstream call.
//!
//! - `settings`: the section merged with the standard `OTEL_*` variables;
//! - `propagation`: W3C trace context and baggage (the SDK's propagators) and B3, read from
//!   client headers and written to upstream headers;
//! - `export`: the bounded, off-request-path span queue and the OTLP exporters;
//! - `span_ref`: a handle on one open span, for the work a request does beyond the core's spans;
//! - `outbound`: the gateway's own HTTP calls, each in a client span with the context injected.

mod export;
pub mod outbound;
mod propagation;
mod settings;
mod span_ref;

use std::sync::Arc;

use opentelemetry::trace::{
    Link, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub use propagation::{extract_from_json_meta, inject_into_json_meta, HeaderPairs};
pub use settings::{Propagator, TelemetryConfig, TelemetrySettings};
pub use span_ref::SpanRef;

use crate::build::BuildContext;

/// The tracer of one telemetry configuration. Dropping the last handle flushes what is queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagators: Vec<Propagator>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

/// The telemetry a version serves with: `None` when tracing is off (no `telemetry:` section
/// and no `OTEL_EXPORTER_OTLP_*ENDPOINT`, or `OTEL_SDK_DISABLED=true`). Shared with the
/// serving version while the resolved settings are unchanged; a `--check` builds nothing.
pub fn prepare(
    config: Option<&TelemetryConfig>,
    bctx: &mut BuildContext,
) -> Result<Option<Arc<Telemetry>>, String> {
    let Some(settings) = TelemetrySettings::resolve(config, &|k| std::env::var(k).ok())? else {
        return Ok(None);
    };
    if bctx.check_only() {
        return Ok(None);
    }
    let key = serde_json::to_string(&settings).map_err(|e| e.to_string())?;
    bctx.shared(&key, || Telemetry::start(&settings)).map(Some)
}

impl Telemetry {
    /// Start the exporter thread and build the tracer.
    pub fn start(settings: &TelemetrySettings) -> Result<Telemetry, String> {
        let resource = settings.resource();
        let processor = export::QueueProcessor::start(settings, resource.clone())?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampler())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("stoa-gateway");
        Ok(Telemetry {
            provider,
            tracer,
            propagators: settings.propagators.clone(),
        })
    }

    /// The server span of a request, child of the trace context the client sent (a new trace
    /// when it sent none or an invalid one).
    pub fn start_request(
        self: &Arc<Self>,
        headers: &http::HeaderMap,
        name: impl Into<std::borrow::Cow<'static, str>>,
        attributes: Vec<KeyValue>,
    ) -> RequestTrace {
        let parent = propagation::extract(&self.propagators, headers);
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            telemetry: self.clone(),
            server: parent.with_span(span),
            upstream: None,
        }
    }

    /// The root span of a trace of its own (a mirror copy), linked to `link`.
    pub fn start_linked(
        self: &Arc<Self>,
        name: String,
        kind: SpanKind,
        link: Option<SpanContext>,
        attributes: Vec<KeyValue>,
    ) -> SpanRef {
        let links = link
            .map(|l| vec![Link::with_context(l)])
            .unwrap_or_default();
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_links(links)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &Context::new());
        SpanRef::new(self.clone(), Context::new().with_span(span))
    }

    /// A child span of `parent`.
    pub fn start_child(
        &self,
        parent: &Context,
        name: impl Into<std::borrow::Cow<'static, str>>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// The headers that carry `cx` to the next hop, in every configured format.
    pub fn headers_for(&self, cx: &Context) -> HeaderPairs {
        propagation::inject(&self.propagators, cx)
    }
}

/// One request's trace: the server span and, while an upstream attempt is open, its client
/// span. Both end when the request is logged (or when this is dropped).
pub struct RequestTrace {
    telemetry: Arc<Telemetry>,
    /// The context holding the server span.
    pub server: Context,
    /// The context holding the current upstream attempt's client span.
    pub upstream: Option<Context>,
}

impl RequestTrace {
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Whether spans of this request are recorded (sampled): attributes and events are only
    /// worth building then.
    pub fn recording(&self) -> bool {
        self.server.span().is_recording()
    }

    /// The trace id and the server span id, as lowercase hex (for the access log).
    pub fn ids(&self) -> (String, String) {
        let span = self.server.span();
        let sc = span.span_context();
        (sc.trace_id().to_string(), sc.span_id().to_string())
    }

    /// An event on the server span (a filter's decision and what it cost).
    pub fn event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        self.server.span().add_event(name, attributes);
    }

    /// An attribute on the server span.
    pub fn set_attribute(&self, kv: KeyValue) {
        self.server.span().set_attribute(kv);
    }

    /// An event on the current upstream attempt's span.
    pub fn upstream_event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        if let Some(up) = &self.upstream {
            up.span().add_event(name, attributes);
        }
    }

    /// An attribute on the current upstream attempt's span.
    pub fn set_upstream_attribute(&self, kv: KeyValue) {
        if let Some(up) = &self.upstream {
            up.span().set_attribute(kv);
        }
    }

    /// The context an outgoing call made on behalf of this request continues from: the
    /// upstream attempt's span while there is one, the server span otherwise.
    pub fn current(&self) -> &Context {
        self.upstream.as_ref().unwrap_or(&self.server)
    }

    /// A handle on the span outgoing calls made for this request continue from (see
    /// `current`).
    pub fn span_ref(&self) -> SpanRef {
        SpanRef::new(self.telemetry.clone(), self.current().clone())
    }

    /// A handle on the server span.
    pub fn server_ref(&self) -> SpanRef {
        SpanRef::new(self.telemetry.clone(), self.server.clone())
    }

    /// Open the client span of an upstream attempt, ending the previous attempt's. An
    /// unsampled request gets none: nothing of it is recorded, and the upstream continues from
    /// the server span's id, which saves a span per request when most are not sampled.
    pub fn start_upstream(&mut self, name: String, attributes: Vec<KeyValue>) {
        if !self.recording() {
            return;
        }
        if let Some(previous) = self.upstream.take() {
            previous
                .span()
                .set_status(Status::error("attempt failed; retried"));
            previous.span().end();
        }
        let cx = self
            .telemetry
            .start_child(&self.server, name, SpanKind::Client, attributes);
        self.upstream = Some(cx);
    }

    /// End the spans: `status` is the response status (0 when none was sent), `error` the
    /// reason the request failed, if it did.
    pub fn finish(&mut self, method: &str, route: &str, status: u16, error: Option<String>) {
        if let Some(up) = self.upstream.take() {
            let span = up.span();
            if let Some(e) = &error {
                span.set_status(Status::error(e.clone()));
            }
            span.end();
        }
        let span = self.server.span();
        if span.is_recording() {
            if route != "-" {
                span.set_attribute(KeyValue::new("http.route", route.to_string()));
                span.update_name(format!("{method} {route}"));
            }
            if status > 0 {
                span.set_attribute(KeyValue::new("http.response.status_code", status as i64));
            }
            if let Some(e) = error {
                span.set_attribute(KeyValue::new("error.type", e.clone()));
                span.set_status(Status::error(e));
            } else if status >= 500 {
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
                span.set_status(Status::error(String::new()));
            }
        }
        span.end();
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        if let Some(up) = self.upstream.take() {
            up.span().end();
        }
        self.server.span().end();
    }
}
