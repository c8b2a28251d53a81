//! Tracing with OpenTelemetry, end to end: the real binary exports to a real collector (rotel),
//! over OTLP/HTTP (protobuf) and OTLP/gRPC; the trace context reaches the upstream; the
//! access log names the trace; sampling at ratio 0 exports nothing but still propagates; a
//! collector that is down costs no request; filter decisions are span events and key fetches
//! client spans; a federated MCP `tools/call` is one trace from the client through the gateway
//! into an upstream built on the official Python SDK (which traces what it serves), and a tool
//! backend call continues a context sent in `params._meta`; a mirror copy is a trace of its own
//! linked to the primary's.

mod common;

use std::time::Duration;

use common::auth::{claims, JwksServer, TestKey};
use common::collector::{field, Collector};
use common::mcp::{initialize, json_of, post, McpUpstream};
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

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
    assert!(
        upstream_span.contains("upstream.body_end"),
        "{upstream_span}"
    );
    assert!(server.contains("http.response.body.size: Int("), "{server}");
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

/// The telemetry section exporting to `collector` over HTTP, flushed every 100 ms.
fn export_to(collector: &Collector) -> String {
    format!(
        "telemetry:\n  endpoint: {}\n  flush_every: 100ms\n",
        collector.http_endpoint()
    )
}

/// The collector's span of trace `trace` and kind `kind` (`SERVER`, `CLIENT`, `INTERNAL`) whose
/// block also contains `needle`.
async fn span_of(collector: &Collector, trace: &str, kind: &str, needle: &str) -> String {
    let kind = format!("SPAN_KIND_{kind}");
    collector
        .wait_span(&format!("{kind} with {needle} in {trace}"), |s| {
            field(s, "Trace ID") == trace && field(s, "Kind") == kind && s.contains(needle)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_decisions_are_events_and_a_key_fetch_is_a_client_span() {
    let collector = Collector::start().await;
    let up = echo("a").await;
    // the key set is empty at start, so the first token's key is fetched within its request
    let jwks = JwksServer::start().await;
    let iss = jwks.url();
    let config = format!(
        r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: router
      routes:
        - name: api
          match: {{ path_prefix: / }}
          cluster: up
    - type: jwt
      issuer: "{iss}"
      audiences: [api]
      jwks_url: "{jwks_url}"
      min_refresh_interval: 100ms
    - type: rate_limit
      limits:
        - {{ name: burst, requests: 100, per: 1m }}
clusters:
  up: {{ endpoints: ["{up}"] }}
{telemetry}"#,
        jwks_url = jwks.jwks_url(),
        up = up.address(),
        telemetry = export_to(&collector),
    );
    let gw = Gateway::start(&config).await;
    let key = TestKey::rsa("k1", Algorithm::RS256);
    jwks.set_keys(&[&key]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let token = key.sign(&claims(&iss, "api", "alice"));
    let traces = [
        "0af7651916cd43dd8448eb211c80319c",
        "0af7651916cd43dd8448eb211c80319d",
    ];
    for trace in traces {
        let r = client()
            .get(gw.url("/orders"))
            .bearer_auth(&token)
            .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // the first request verified the token (a cache miss) after fetching the keys
    let first = span_of(&collector, traces[0], "SERVER", "jwt.verified").await;
    for needle in [
        "jwt.cache: Str(miss)",
        "jwt.result: Str(ok)",
        "rate_limit.decision",
        "rate_limit.result: Str(allowed)",
        "rate_limit.backend: Str(local)",
    ] {
        assert!(first.contains(needle), "{needle} missing:\n{first}");
    }
    let fetch = span_of(&collector, traces[0], "CLIENT", "stoa.call: Str(jwks)").await;
    assert_eq!(field(&fetch, "Parent ID"), field(&first, "ID"), "{fetch}");
    assert!(
        fetch.contains(&format!("url.full: Str({})", jwks.jwks_url())),
        "{fetch}"
    );
    assert!(
        fetch.contains("http.response.status_code: Int(200)"),
        "{fetch}"
    );
    // the second found it in the token cache, and fetched nothing
    let second = span_of(&collector, traces[1], "SERVER", "jwt.verified").await;
    assert!(second.contains("jwt.cache: Str(hit)"), "{second}");
    assert!(
        !collector
            .spans()
            .iter()
            .any(|s| field(s, "Trace ID") == traces[1] && s.contains("stoa.call: Str(jwks)")),
        "a cached token fetched keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_tool_call_is_one_trace_through_the_gateway_into_the_upstream() {
    let collector = Collector::start().await;
    let upstream = McpUpstream::start_on(
        free_port(),
        "traced-upstream",
        "streamable",
        &["--otlp-endpoint", &collector.http_endpoint()],
    );
    let api = echo("api").await;
    let config = format!(
        r#"
listeners:
  - name: mcp
    address: "127.0.0.1:@PORT@"
    chains: [mcp]
chains:
  mcp:
    - type: mcp
      session_secret: "telemetry-session-secret-0123"
      tools:
        - name: whoami
          description: Ask the REST API who is calling
          input_schema: {{ type: object }}
          backend: {{ url: "http://{api}/whoami" }}
      upstreams:
        - name: a
          url: "{url}"
          prefix: a_
{telemetry}"#,
        api = api.address(),
        url = upstream.url(),
        telemetry = export_to(&collector),
    );
    let gw = Gateway::start(&config).await;
    let url = gw.url("/mcp");
    let (version, session) = initialize(&url, "2025-06-18").await;
    // the catalog is fetched in the background: wait for the upstream's tools
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
        let (_, _, text) = post(
            &url,
            &body,
            Some(&session),
            &[("mcp-protocol-version", &version)],
        )
        .await;
        if text.contains("a_echo") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no upstream tools: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // a relayed call, its context in the HTTP request's traceparent
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "a_echo", "arguments": {"text": "hi"}}});
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, _, text) = post(
        &url,
        &body.to_string(),
        Some(&session),
        &[("mcp-protocol-version", &version), ("traceparent", &tp)],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("hi"), "{text}");
    let http = span_of(&collector, CLIENT_TRACE, "SERVER", "url.path: Str(/mcp)").await;
    assert_eq!(field(&http, "Parent ID"), CLIENT_SPAN);
    let mcp = span_of(
        &collector,
        CLIENT_TRACE,
        "SERVER",
        "gen_ai.tool.name: Str(a_echo)",
    )
    .await;
    assert_eq!(field(&mcp, "Name"), "tools/call a_echo", "{mcp}");
    assert_eq!(field(&mcp, "Parent ID"), field(&http, "ID"), "{mcp}");
    for needle in [
        "mcp.method.name: Str(tools/call)",
        "gen_ai.tool.name: Str(a_echo)",
        "gen_ai.operation.name: Str(execute_tool)",
        "jsonrpc.request.id: Str(7)",
        "mcp.protocol.version: Str(2025-06-18)",
        "mcp.session.id: Str(",
    ] {
        assert!(mcp.contains(needle), "{needle} missing:\n{mcp}");
    }
    assert!(
        !mcp.contains(&session),
        "the session id is recorded hashed:\n{mcp}"
    );
    let relay = span_of(&collector, CLIENT_TRACE, "CLIENT", "server.address: Str(a)").await;
    assert_eq!(field(&relay, "Name"), "tools/call echo", "{relay}");
    assert_eq!(field(&relay, "Parent ID"), field(&mcp, "ID"), "{relay}");
    // the upstream's own span (the Python SDK's), continuing the relay's context from `_meta`
    let served = collector
        .wait_span("of the upstream", |s| {
            field(s, "Trace ID") == CLIENT_TRACE
                && field(s, "Kind") == "SPAN_KIND_SERVER"
                && field(s, "Name") == "tools/call echo"
        })
        .await;
    assert_eq!(field(&served, "Parent ID"), field(&relay, "ID"), "{served}");
    assert!(
        collector
            .output()
            .contains("service.name: Str(traced-upstream)"),
        "the upstream's spans come from the upstream"
    );

    // a call of a tool of the gateway's own, its context in `params._meta` only: the backend
    // gets it, through a client span of the MCP span
    let meta_trace = "5b8efff798038103d269b633813fc60c";
    let meta_span = "eee19b7ec3c1b174";
    let body = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "whoami", "arguments": {},
                   "_meta": {"traceparent": format!("00-{meta_trace}-{meta_span}-01")}}});
    let (status, _, text) = post(
        &url,
        &body.to_string(),
        Some(&session),
        &[("mcp-protocol-version", &version)],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let answer = json_of(
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or(&text),
    );
    let echoed: serde_json::Value = serde_json::from_str(
        answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}")),
    )
    .unwrap();
    let (trace, parent, _) = upstream_parent(&echoed);
    assert_eq!(trace, meta_trace, "{echoed}");
    let mcp = span_of(
        &collector,
        meta_trace,
        "SERVER",
        "gen_ai.tool.name: Str(whoami)",
    )
    .await;
    assert_eq!(field(&mcp, "Parent ID"), meta_span, "{mcp}");
    let backend = span_of(&collector, meta_trace, "CLIENT", "stoa.call: Str(mcp_tool)").await;
    assert_eq!(field(&backend, "ID"), parent, "{backend}");
    assert_eq!(field(&backend, "Parent ID"), field(&mcp, "ID"), "{backend}");
    assert!(
        backend.contains(&format!("server.port: Int({})", api.port())),
        "{backend}"
    );

    // an unknown tool: the MCP span carries the JSON-RPC error
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "nope", "arguments": {}}});
    let tp = format!("00-{meta_trace}-{CLIENT_SPAN}-01");
    post(
        &url,
        &body.to_string(),
        Some(&session),
        &[("mcp-protocol-version", &version), ("traceparent", &tp)],
    )
    .await;
    let failed = span_of(
        &collector,
        meta_trace,
        "SERVER",
        "gen_ai.tool.name: Str(nope)",
    )
    .await;
    assert!(failed.contains("error.type: Str(-32602)"), "{failed}");
    assert!(
        failed.contains("rpc.response.status_code: Str(-32602)"),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_copy_is_a_trace_of_its_own_linked_to_the_primary() {
    let collector = Collector::start().await;
    let primary = echo("primary").await;
    let candidate = echo("candidate").await;
    let config = format!(
        r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: router
      routes:
        - name: orders
          match: {{ path_prefix: / }}
          cluster: up
    - type: mirror
      url: "http://{candidate}"
      timeout: 1s
clusters:
  up: {{ endpoints: ["{primary}"] }}
{telemetry}"#,
        candidate = candidate.address(),
        primary = primary.address(),
        telemetry = export_to(&collector),
    );
    let gw = Gateway::start(&config).await;
    let r = client()
        .get(gw.url("/orders/1"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let server = span_of(
        &collector,
        CLIENT_TRACE,
        "SERVER",
        "url.path: Str(/orders/1)",
    )
    .await;
    let copy = collector
        .wait_span("of the mirror copy", |s| field(s, "Name") == "mirror GET")
        .await;
    assert_ne!(
        field(&copy, "Trace ID"),
        CLIENT_TRACE,
        "a trace of its own:\n{copy}"
    );
    assert!(
        copy.contains(CLIENT_TRACE) && copy.contains(&field(&server, "ID")),
        "linked to the primary's server span:\n{copy}"
    );
    for needle in [
        "http.route: Str(orders)",
        "stoa.mirror.outcome: Str(ok)",
        "stoa.mirror.result: Str(",
        "stoa.mirror.candidate_status: Int(200)",
    ] {
        assert!(copy.contains(needle), "{needle} missing:\n{copy}");
    }
    // the primary and candidate answer differently: the mismatch line names the copy's trace
    let stderr = gw
        .wait_stderr("Shadow MISMATCH", Duration::from_secs(5))
        .await;
    let line = stderr
        .lines()
        .find(|l| l.contains("Shadow MISMATCH"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("\"trace_id\":\"{}\"", field(&copy, "Trace ID"))),
        "{line}"
    );
    let copy_trace = field(&copy, "Trace ID");
    let sent = span_of(&collector, &copy_trace, "CLIENT", "stoa.call: Str(mirror)").await;
    assert_eq!(field(&sent, "Parent ID"), field(&copy, "ID"), "{sent}");
    assert!(
        sent.contains(&format!("server.port: Int({})", candidate.port())),
        "{sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_at_run_time_through_the_admin_api() {
    let up = echo("a").await;
    let token = "an-admin-token-for-the-log-level";
    let gw = Gateway::builder()
        .config(&config(&up, "  enabled: false"))
        .env("STOA_ADMIN_TOKEN", token)
        .start()
        .await;
    let cl = client();
    let level = |r: serde_json::Value| r["level"].as_str().unwrap_or_default().to_string();
    let now = cl.get(gw.admin_url("/logging")).send().await.unwrap();
    assert_eq!(now.status(), 200);
    assert_eq!(level(now.json().await.unwrap()), "info");
    let put = |body: serde_json::Value, bearer: Option<&str>| {
        let mut rb = cl.put(gw.admin_url("/logging")).json(&body);
        if let Some(t) = bearer {
            rb = rb.bearer_auth(t);
        }
        rb.send()
    };
    // a state change: the admin token is required, and the filter must parse
    assert_eq!(
        put(json!({"level": "debug"}), None).await.unwrap().status(),
        401
    );
    let bad = put(json!({"level": "info,[[["}), Some(token))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("not a log level"));
    assert_eq!(
        put(json!({"lvl": "x"}), Some(token))
            .await
            .unwrap()
            .status(),
        400
    );

    // at warn, the change's own info line is not written...
    let r = put(json!({"level": "warn"}), Some(token)).await.unwrap();
    assert_eq!(r.status(), 200);
    let now = cl.get(gw.admin_url("/logging")).send().await.unwrap();
    assert_eq!(level(now.json().await.unwrap()), "warn");
    // ...and back at info (with a directive for one module) it is
    let directive = "info,stoa_filters::mcp=debug";
    let r = put(json!({ "level": directive }), Some(token))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stderr = gw
        .wait_stderr("log level changed", Duration::from_secs(5))
        .await;
    let changes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("log level changed"))
        .collect();
    assert_eq!(
        changes.len(),
        1,
        "only the change back to info is logged:\n{stderr}"
    );
    assert!(changes[0].contains(directive), "{stderr}");
}

/// The exemplars of an OpenMetrics exposition, as the official Python client's (strict)
/// OpenMetrics parser reads them: `(sample name, le, exemplar trace_id)`. Panics when the
/// parser refuses the exposition.
fn exemplars_parsed(exposition: &str) -> Vec<(String, String, String)> {
    use std::io::Write;
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        if s.exemplar:
            out.append([s.name, s.labels.get("le", ""), s.exemplar.labels.get("trace_id", "")])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (the test command installs prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the exposition: {}\n{exposition}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_buckets_carry_the_trace_of_a_sampled_request_as_an_exemplar() {
    let up = echo("a").await;
    // no collector: export fails, which costs the requests (and the exemplars) nothing
    let gw = Gateway::start(&config(
        &up,
        "  endpoint: http://127.0.0.1:9\n  timeout: 100ms",
    ))
    .await;
    let unsampled = "11111111111111111111111111111111";
    for (trace, flags) in [(CLIENT_TRACE, "01"), (unsampled, "00")] {
        let r = client()
            .get(gw.url("/x"))
            .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-{flags}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = client()
        .get(gw.admin_url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.headers()
    );
    let exposition = r.text().await.unwrap();
    let exemplars = exemplars_parsed(&exposition);
    let ours: Vec<_> = exemplars
        .iter()
        .filter(|(name, _, _)| name == "stoa_request_duration_seconds_bucket")
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one sampled request, one exemplar: {exemplars:?}"
    );
    assert_eq!(ours[0].2, CLIENT_TRACE);
    assert!(
        !exposition.contains(unsampled),
        "an unsampled request is no exemplar"
    );
    // counters are families without `_total` there, samples with it
    assert!(
        exposition.contains("# TYPE stoa_requests counter"),
        "{exposition}"
    );
    assert!(exposition.contains("stoa_requests_total{"), "{exposition}");

    // the Prometheus text format has no exemplars
    let plain = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(plain.contains("stoa_request_duration_seconds_bucket{"));
    assert!(!plain.contains("trace_id") && !plain.contains("# EOF"));
}
