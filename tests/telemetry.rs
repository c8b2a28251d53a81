//! Tracing with OpenTelemetry, end to end: the real binary exports to a real collector (rotel),
//! over OTLP/HTTP (protobuf) and OTLP/gRPC; the trace context reaches the upstream; the
//! access log names the trace; sampling at ratio 0 exports nothing but still propagates; a
//! collector that is down costs no request.

mod common;

use std::time::Duration;

use common::collector::{field, Collector};
use common::*;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn config(upstream: &Upstream, telemetry: &str) -> String {
    format!(
        r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: access_log
    - type: router
      routes:
        - name: echo
          match: {{ path_prefix: / }}
          cluster: up
clusters:
  up: {{ endpoints: ["{}"] }}
telemetry:
{telemetry}
"#,
        upstream.address()
    )
}

/// `traceparent` as the upstream received it: (trace id, parent span id, flags).
fn upstream_parent(echo: &serde_json::Value) -> (String, String, String) {
    let tp = echo["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent upstream: {echo}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trace_reaches_the_collector_the_upstream_and_the_access_log() {
    let collector = Collector::start().await;
    let up = echo("a").await;
    let telemetry = format!(
        "  endpoint: {}\n  flush_every: 100ms\n  service_name: edge-test\n  resource: {{ deployment.environment.name: test }}",
        collector.http_endpoint()
    );
    let gw = Gateway::start(&config(&up, &telemetry)).await;
    let echo = client()
        .get(gw.url("/orders/7"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let (trace, parent, flags) = upstream_parent(&echo);
    assert_eq!((trace.as_str(), flags.as_str()), (CLIENT_TRACE, "01"));
    assert_ne!(
        parent, CLIENT_SPAN,
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(echo["headers"]["tracestate"], "vendor=opaque");

    let server = collector
        .wait_span("of kind server", |s| {
            field(s, "Trace ID") == CLIENT_TRACE && field(s, "Kind") == "SPAN_KIND_SERVER"
        })
        .await;
    assert_eq!(field(&server, "Parent ID"), CLIENT_SPAN, "{server}");
    assert_eq!(field(&server, "Name"), "GET echo", "{server}");
    for attr in [
        "http.request.method: Str(GET)",
        "url.path: Str(/orders/7)",
        "http.route: Str(echo)",
        "http.response.status_code: Int(200)",
        "client.address: Str(127.0.0.1)",
        "network.protocol.version: Str(1.1)",
    ] {
        assert!(server.contains(attr), "{attr} missing:\n{server}");
    }
    let upstream_span = collector
        .wait_span("of kind client", |s| {
            field(s, "Trace ID") == CLIENT_TRACE && field(s, "Kind") == "SPAN_KIND_CLIENT"
        })
        .await;
    // the upstream's parent is the client span, itself the server span's child
    assert_eq!(field(&upstream_span, "ID"), parent, "{upstream_span}");
    assert_eq!(field(&upstream_span, "Parent ID"), field(&server, "ID"));
    assert!(upstream_span.contains(&format!("server.port: Int({})", up.port())));
    assert!(
        upstream_span.contains("upstream.connected"),
        "{upstream_span}"
    );
    assert!(
        upstream_span.contains("upstream.first_byte"),
        "{upstream_span}"
    );
    let out = collector.output();
    assert!(out.contains("service.name: Str(edge-test)"), "{out}");
    assert!(
        out.contains("deployment.environment.name: Str(test)"),
        "{out}"
    );

    let line = gw
        .wait_stdout_line("\"type\":\"access\"", Duration::from_secs(5))
        .await;
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["trace_id"], CLIENT_TRACE);
    assert_eq!(
        line["span_id"].as_str(),
        Some(field(&server, "ID").as_str())
    );

    // without a context (or with a broken one) a request starts a trace of its own
    for header in [None, Some("00-zz-00f067aa0ba902b7-01")] {
        let mut req = client().get(gw.url("/new"));
        if let Some(h) = header {
            req = req.header("traceparent", h);
        }
        let echo = req
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        let (trace, _, flags) = upstream_parent(&echo);
        assert_ne!(trace, CLIENT_TRACE);
        assert_eq!(flags, "01", "ratio 1 by default: sampled");
        collector
            .wait_span("of the new trace", |s| field(s, "Trace ID") == trace)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_and_a_zero_ratio_that_still_propagates() {
    let collector = Collector::start().await;
    let up = echo("a").await;
    let telemetry = format!(
        "  endpoint: {}\n  protocol: grpc\n  sampler: parentbased_traceidratio\n  sampler_arg: 0\n  flush_every: 100ms\n  propagators: [tracecontext, b3]",
        collector.grpc_endpoint()
    );
    let gw = Gateway::start(&config(&up, &telemetry)).await;
    // a new trace at ratio 0: not sampled, not exported, but the upstream still gets it
    let echo = client()
        .get(gw.url("/unsampled"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let (unsampled, _, flags) = upstream_parent(&echo);
    assert_eq!(flags, "00");
    assert!(
        echo["headers"]["b3"]
            .as_str()
            .is_some_and(|b| b.starts_with(&unsampled) && b.ends_with("-0")),
        "{echo}"
    );
    // a sampled parent (B3 here) is followed: exported over gRPC
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let echo = client()
        .get(gw.url("/sampled"))
        .header("b3", format!("{b3_trace}-e457b5a2e4d86bd1-1"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let (trace, _, flags) = upstream_parent(&echo);
    assert_eq!((trace.as_str(), flags.as_str()), (b3_trace, "01"));
    let server = collector
        .wait_span("of the sampled parent", |s| {
            field(s, "Trace ID") == b3_trace && field(s, "Kind") == "SPAN_KIND_SERVER"
        })
        .await;
    assert_eq!(field(&server, "Parent ID"), "e457b5a2e4d86bd1");
    // by now the unsampled request's spans would have been exported with the sampled one's
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !collector.output().contains(&unsampled),
        "an unsampled trace was exported:\n{}",
        collector.output()
    );
    let metrics = gw.metrics().await;
    assert!(
        metric_value(&metrics, "stoa_trace_spans_exported_total", &[]).unwrap_or(0.0) >= 2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_goes_down_loses_no_request() {
    let mut collector = Collector::start().await;
    let up = echo("a").await;
    let telemetry = format!(
        "  endpoint: {}\n  flush_every: 50ms\n  timeout: 500ms\n  queue: 64\n  batch: 16",
        collector.http_endpoint()
    );
    let gw = Gateway::start(&config(&up, &telemetry)).await;
    let cl = client();
    assert_eq!(
        cl.get(gw.url("/before")).send().await.unwrap().status(),
        200
    );
    collector
        .wait_span("before the collector stopped", |s| {
            s.contains("url.path: Str(/before)")
        })
        .await;
    collector.kill();
    for i in 0..300 {
        let r = cl.get(gw.url(&format!("/down/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i} while the collector is down");
    }
    // the exporter failed, and the spans that did not fit the queue were counted
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = gw.metrics().await;
        let failures = metric_value(&m, "stoa_trace_export_failures_total", &[]).unwrap_or(0.0);
        let dropped = metric_value(&m, "stoa_trace_spans_dropped_total", &[]).unwrap_or(0.0);
        if failures >= 1.0 && dropped >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "failures {failures}, dropped {dropped}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn check_reports_a_bad_telemetry_section_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        "listeners: [{name: pub, address: \"127.0.0.1:1\", chains: [c]}]\nchains: {c: [{type: request_id}]}\ntelemetry:\n  endpoint: http://127.0.0.1:4318\n  sampler: sometimes\n",
    )
    .unwrap();
    let (status, out, err) = run_to_end(
        &["--check", "-c", path.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(!status.success(), "{out}{err}");
    assert!(err.contains("telemetry.sampler"), "{err}");
}
