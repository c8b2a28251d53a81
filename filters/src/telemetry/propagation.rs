//! Trace context in and out: W3C `traceparent`/`tracestate` and `baggage` through the SDK's
//! propagators, B3 (single `b3` header and the `X-B3-*` set) parsed here. Reading never fails:
//! a malformed header is ignored and the request starts a new trace.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use super::Propagator;

/// Header names and values to add to an outgoing request.
pub type HeaderPairs = Vec<(http::HeaderName, String)>;

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
const BAGGAGE: http::HeaderName = http::HeaderName::from_static("baggage");
const B3: http::HeaderName = http::HeaderName::from_static("b3");
const X_B3_TRACEID: http::HeaderName = http::HeaderName::from_static("x-b3-traceid");
const X_B3_SPANID: http::HeaderName = http::HeaderName::from_static("x-b3-spanid");
const X_B3_SAMPLED: http::HeaderName = http::HeaderName::from_static("x-b3-sampled");

/// `bytes` as lowercase hex, appended to `out`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// The W3C `traceparent` of a valid span context (version 00; only the sampled flag is
/// propagated, as the SDK's propagator does), written without the formatting machinery: it is
/// on every traced request's path.
fn traceparent(sc: &SpanContext) -> String {
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &sc.trace_id().to_bytes());
    out.push('-');
    push_hex(&mut out, &sc.span_id().to_bytes());
    out.push_str(if sc.is_sampled() { "-01" } else { "-00" });
    out
}

/// The longest header value looked at (a `tracestate` may carry 32 members; longer is not
/// trace context).
const MAX_VALUE: usize = 8 * 1024;

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .filter(|v| v.len() <= MAX_VALUE)
            .and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The context the client sent, in the first configured format that holds a valid one, with
/// the baggage it sent when `baggage` is configured.
pub fn extract(propagators: &[Propagator], headers: &http::HeaderMap) -> Context {
    let carrier = Headers(headers);
    let mut cx = Context::new();
    for p in propagators {
        let found = match p {
            Propagator::Tracecontext => TraceContextPropagator::new()
                .extract(&carrier)
                .span()
                .span_context()
                .clone(),
            Propagator::B3 | Propagator::B3multi => b3(&carrier),
            Propagator::Baggage => continue,
        };
        if found.is_valid() {
            cx = cx.with_remote_span_context(found);
            break;
        }
    }
    if propagators.contains(&Propagator::Baggage) {
        cx = BaggagePropagator::new().extract_with_context(&cx, &carrier);
    }
    cx
}

struct Pairs(HeaderPairs);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        let key = match key {
            "traceparent" => TRACEPARENT,
            "tracestate" => TRACESTATE,
            "baggage" => BAGGAGE,
            _ => return,
        };
        self.0.push((key, value));
    }
}

/// The headers that carry `cx`, in every configured format.
pub fn inject(propagators: &[Propagator], cx: &Context) -> HeaderPairs {
    let mut pairs = Pairs(Vec::with_capacity(2));
    let span = cx.span();
    let sc = span.span_context();
    for p in propagators {
        match p {
            Propagator::Tracecontext if sc.is_valid() => {
                pairs.0.push((TRACEPARENT, traceparent(sc)));
                let state = sc.trace_state().header();
                if !state.is_empty() {
                    pairs.0.push((TRACESTATE, state));
                }
            }
            Propagator::Baggage => BaggagePropagator::new().inject_context(cx, &mut pairs),
            Propagator::B3 if sc.is_valid() => pairs.0.push((
                B3,
                format!(
                    "{}-{}-{}",
                    sc.trace_id(),
                    sc.span_id(),
                    if sc.is_sampled() { 1 } else { 0 }
                ),
            )),
            Propagator::B3multi if sc.is_valid() => {
                pairs.0.push((X_B3_TRACEID, sc.trace_id().to_string()));
                pairs.0.push((X_B3_SPANID, sc.span_id().to_string()));
                let sampled = if sc.is_sampled() { "1" } else { "0" };
                pairs.0.push((X_B3_SAMPLED, sampled.to_string()));
            }
            _ => {}
        }
    }
    pairs.0
}

/// B3 from the single `b3` header or the `X-B3-*` headers; invalid when neither parses.
fn b3(carrier: &dyn Extractor) -> SpanContext {
    let parse = |trace: &str, span: &str, sampled: Option<&str>| -> Option<SpanContext> {
        // 64-bit trace ids are left-padded to 128 bits, as Zipkin does.
        let trace = match trace.len() {
            16 => TraceId::from_hex(&format!("{:0>32}", trace)).ok()?,
            32 => TraceId::from_hex(trace).ok()?,
            _ => return None,
        };
        if span.len() != 16 {
            return None;
        }
        let span = SpanId::from_hex(span).ok()?;
        let flags = match sampled {
            Some("1") | Some("d") | Some("true") => TraceFlags::SAMPLED,
            _ => TraceFlags::default(),
        };
        Some(SpanContext::new(
            trace,
            span,
            flags,
            true,
            TraceState::default(),
        ))
    };
    let single = carrier.get("b3").and_then(|v| {
        let mut parts = v.trim().split('-');
        let (trace, span) = (parts.next()?, parts.next()?);
        parse(trace, span, parts.next())
    });
    single
        .or_else(|| {
            let sampled = carrier
                .get("x-b3-flags")
                .filter(|f| *f == "1")
                .map(|_| "d")
                .or_else(|| carrier.get("x-b3-sampled"));
            parse(
                carrier.get("x-b3-traceid")?.trim(),
                carrier.get("x-b3-spanid")?.trim(),
                sampled,
            )
        })
        .unwrap_or_else(SpanContext::empty_context)
}

/// The trace context an MCP message carries in `params._meta` (`traceparent`, `tracestate`;
/// the 2026-07-28 revision's convention), or an empty context.
pub fn extract_from_json_meta(params: Option<&serde_json::Value>) -> Context {
    let Some(meta) = params.and_then(|p| p.get("_meta")) else {
        return Context::new();
    };
    let mut headers = http::HeaderMap::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(v) = meta
            .get(key)
            .and_then(|v| v.as_str())
            .and_then(|v| http::HeaderValue::from_str(v).ok())
        {
            headers.insert(key, v);
        }
    }
    let cx = TraceContextPropagator::new().extract(&Headers(&headers));
    if cx.span().span_context().is_valid() {
        cx
    } else {
        Context::new()
    }
}

/// Write `cx` into a JSON-RPC message's `params._meta` (`traceparent`, `tracestate`),
/// replacing what the client put there. A message whose `params` is not an object (or absent,
/// for a method without params) gets `params: {_meta: …}` only when it had no `params`.
pub fn inject_into_json_meta(message: &mut serde_json::Value, cx: &Context) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    let Some(obj) = message.as_object_mut() else {
        return;
    };
    let params = obj
        .entry("params")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let Some(params) = params.as_object_mut() else {
        return;
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let mut pairs = Pairs(Vec::new());
    TraceContextPropagator::new().inject_context(cx, &mut pairs);
    meta.remove("tracestate");
    for (k, v) in pairs.0 {
        meta.insert(k.as_str().to_string(), serde_json::Value::String(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn our_traceparent_is_the_sdks() {
        for flags in ["00", "01"] {
            let tp = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            let cx = extract(
                &[Propagator::Tracecontext],
                &headers(&[("traceparent", &tp), ("tracestate", "a=1,b=2")]),
            );
            let mut sdk = Pairs(Vec::new());
            TraceContextPropagator::new().inject_context(&cx, &mut sdk);
            assert_eq!(inject(&[Propagator::Tracecontext], &cx), sdk.0);
        }
        // an invalid context writes nothing
        assert!(inject(&[Propagator::Tracecontext], &Context::new()).is_empty());
    }

    #[test]
    fn w3c_in_and_out() {
        let all = [Propagator::Tracecontext, Propagator::Baggage];
        let cx = extract(
            &all,
            &headers(&[("traceparent", TP), ("baggage", "user=alice")]),
        );
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled() && sc.is_remote());
        let out = inject(&all, &cx);
        assert!(
            out.iter().any(|(k, v)| *k == "traceparent" && v == TP),
            "{out:?}"
        );
        assert!(out
            .iter()
            .any(|(k, v)| *k == "baggage" && v.contains("user=alice")));
    }

    #[test]
    fn malformed_context_is_ignored() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
        ] {
            let mut h = http::HeaderMap::new();
            h.insert(
                "traceparent",
                http::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            );
            let cx = extract(&[Propagator::Tracecontext], &h);
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn b3_single_and_multi() {
        let both = [Propagator::Tracecontext, Propagator::B3];
        let cx = extract(
            &both,
            &headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]),
        );
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(sc.is_sampled());
        let cx = extract(
            &[Propagator::B3multi],
            &headers(&[
                ("x-b3-traceid", "a3ce929d0e0e4736"),
                ("x-b3-spanid", "00f067aa0ba902b7"),
                ("x-b3-sampled", "0"),
            ]),
        );
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "0000000000000000a3ce929d0e0e4736"
        );
        assert!(!sc.is_sampled());
        // not configured: not read
        let cx = extract(
            &[Propagator::Tracecontext],
            &headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]),
        );
        assert!(!cx.span().span_context().is_valid());
        let out = inject(
            &[Propagator::B3],
            &extract(&both, &headers(&[("traceparent", TP)])),
        );
        assert_eq!(
            out,
            vec![(
                B3,
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1".to_string()
            )]
        );
    }

    #[test]
    fn mcp_meta_round_trip() {
        let cx = extract(
            &[Propagator::Tracecontext],
            &headers(&[("traceparent", TP)]),
        );
        let mut msg = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}});
        inject_into_json_meta(&mut msg, &cx);
        assert_eq!(msg["params"]["_meta"]["traceparent"], TP);
        assert_eq!(msg["params"]["name"], "x");
        let back = extract_from_json_meta(msg.get("params"));
        assert_eq!(
            back.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut odd = serde_json::json!({"params": [1, 2]});
        inject_into_json_meta(&mut odd, &cx);
        assert_eq!(odd, serde_json::json!({"params": [1, 2]}));
        assert!(
            !extract_from_json_meta(Some(&serde_json::json!({"_meta": {"traceparent": 5}})))
                .span()
                .span_context()
                .is_valid()
        );
    }
}
