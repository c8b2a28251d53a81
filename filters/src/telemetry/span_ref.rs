//! `SpanRef`: one open span and the tracer that made it, for work a request does beyond the
//! core's server and upstream spans (MCP messages, tool backends, policy and key-set calls,
//! mirror copies). Cheap to clone; the span ends when `end` is called or the last clone drops.
//! Every method is a no-op for an unsampled span beyond what propagation needs.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};

use super::propagation::{self, HeaderPairs};
use super::Telemetry;

#[derive(Clone)]
pub struct SpanRef {
    telemetry: Arc<Telemetry>,
    /// The context holding the span.
    pub cx: Context,
}

impl std::fmt::Debug for SpanRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let span = self.cx.span();
        let sc = span.span_context();
        write!(f, "SpanRef({}/{})", sc.trace_id(), sc.span_id())
    }
}

impl SpanRef {
    pub(super) fn new(telemetry: Arc<Telemetry>, cx: Context) -> Self {
        SpanRef { telemetry, cx }
    }

    /// Whether the span is recorded (sampled): attributes and events are only worth building
    /// then.
    pub fn recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// A child span; `attributes` is only called for a sampled one.
    pub fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> SpanRef {
        self.child_of(&self.cx, name, kind, attributes)
    }

    /// A span whose parent is `parent` (a context another hop sent, such as an MCP message's
    /// `_meta`), made by this span's tracer; this span's own parent when `parent` holds none.
    pub fn child_of(
        &self,
        parent: &Context,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> SpanRef {
        let parent = if parent.span().span_context().is_valid() {
            parent
        } else {
            &self.cx
        };
        // parent-based sampling: the child is recorded exactly when its parent is sampled
        let attributes = if parent.span().span_context().is_sampled() {
            attributes()
        } else {
            Vec::new()
        };
        let cx = self
            .telemetry
            .start_child(parent, name.into(), kind, attributes);
        SpanRef::new(self.telemetry.clone(), cx)
    }

    /// The headers that carry this span's context to the next hop, in every configured format.
    pub fn headers(&self) -> HeaderPairs {
        self.telemetry.headers_for(&self.cx)
    }

    /// Write this span's context into a JSON-RPC message's `params._meta`.
    pub fn inject_into_meta(&self, message: &mut serde_json::Value) {
        propagation::inject_into_json_meta(message, &self.cx);
    }

    pub fn set_attribute(&self, kv: KeyValue) {
        self.cx.span().set_attribute(kv);
    }

    pub fn event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        self.cx.span().add_event(name, attributes);
    }

    /// Mark the span failed: `error.type` and an error status with `message`.
    pub fn fail(&self, error_type: impl Into<String>, message: impl Into<String>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("error.type", error_type.into()));
        span.set_status(Status::error(message.into()));
    }

    /// End the span now (rather than when the last clone drops).
    pub fn end(&self) {
        self.cx.span().end();
    }

    /// The trace and span id, as lowercase hex.
    pub fn ids(&self) -> (String, String) {
        let span = self.cx.span();
        let sc = span.span_context();
        (sc.trace_id().to_string(), sc.span_id().to_string())
    }
}
