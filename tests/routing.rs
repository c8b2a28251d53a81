//! Routing and the request/response filters, end to end through the real binary.

mod common;

use std::time::Duration;

use common::*;

const ROUTES: &str = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [routes]
chains:
  routes:
    - type: router
      routes:
        - name: exact
          match: { path_exact: /exact }
          cluster: b
        - name: regex
          match: { path_regex: "^/v[0-9]+/" }
          cluster: c
          strip_path: true
        - name: host
          match: { host: api.example, path_prefix: /h }
          cluster: b
        - name: wildcard-host
          match: { host: "*.tenant.example", path_prefix: /h }
          cluster: c
        - name: post-only
          match: { path_prefix: /m, methods: [POST, PUT] }
          cluster: b
        - name: canary
          match: { path_prefix: /m, headers: { x-canary: "1" } }
          cluster: c
        - name: strip
          match: { path_prefix: /api }
          cluster: b
          strip_path: true
        - name: keep-host
          match: { path_prefix: /keep }
          cluster: b
          preserve_host: true
        - name: static
          match: { path_exact: /static }
          respond:
            status: 201
            body: "static body\n"
            headers: { content-type: text/plain, x-static: "yes" }
        - name: prefix
          match: { path_prefix: /prefix }
          cluster: a
clusters:
  a: { endpoints: ["@A@"] }
  b: { endpoints: ["@B@"] }
  c: { endpoints: ["@C@"] }
"#;

async fn three() -> (Upstream, Upstream, Upstream) {
    (echo("a").await, echo("b").await, echo("c").await)
}

fn with_upstreams(yaml: &str, a: &Upstream, b: &Upstream, c: &Upstream) -> String {
    yaml.replace("@A@", &a.address())
        .replace("@B@", &b.address())
        .replace("@C@", &c.address())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_exact_prefix_and_regex_pick_clusters() {
    let (a, b, c) = three().await;
    let gw = Gateway::start(&with_upstreams(ROUTES, &a, &b, &c)).await;
    let cl = client();

    let v = get_echo(&cl, &gw.url("/exact")).await;
    assert_eq!(v["server_id"], "b");
    assert_eq!(v["path"], "/exact");
    // path_exact does not match longer paths; nothing else matches /exact/more.
    let r = cl.get(gw.url("/exact/more")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let v = get_echo(&cl, &gw.url("/prefix/deeper/x")).await;
    assert_eq!(v["server_id"], "a");
    assert_eq!(
        v["path"], "/prefix/deeper/x",
        "no strip_path: path unchanged"
    );

    let v = get_echo(&cl, &gw.url("/v2/items?page=3")).await;
    assert_eq!(v["server_id"], "c");
    assert_eq!(v["path"], "/items", "regex match stripped");
    assert_eq!(v["query"], "page=3");
    // The regex is anchored: /x/v2/ does not match it.
    let r = cl.get(gw.url("/x/v2/items")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_method_and_header_matches() {
    let (a, b, c) = three().await;
    let gw = Gateway::start(&with_upstreams(ROUTES, &a, &b, &c)).await;
    let cl = client();

    // Host match (port ignored, case-insensitive).
    let r = cl
        .get(gw.url("/h"))
        .header("host", "API.example:8443")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream-id"], "b");
    // Wildcard host.
    let r = cl
        .get(gw.url("/h"))
        .header("host", "acme.tenant.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-upstream-id"], "c");
    // Other hosts fall through to 404 (no other route matches /h).
    let r = cl
        .get(gw.url("/h"))
        .header("host", "other.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = cl
        .get(gw.url("/h"))
        .header("host", "tenant.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "the bare suffix does not match *.tenant.example"
    );

    // Method match.
    let r = cl.post(gw.url("/m")).body("x").send().await.unwrap();
    assert_eq!(r.headers()["x-upstream-id"], "b");
    let r = cl.put(gw.url("/m")).body("x").send().await.unwrap();
    assert_eq!(r.headers()["x-upstream-id"], "b");
    // GET is not in the methods: the header route takes it when x-canary: 1.
    let r = cl
        .get(gw.url("/m"))
        .header("x-canary", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-upstream-id"], "c");
    let r = cl
        .get(gw.url("/m"))
        .header("x-canary", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "header value must match exactly");
    let r = cl.get(gw.url("/m")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_path_keeps_query_and_preserve_host() {
    let (a, b, c) = three().await;
    let gw = Gateway::start(&with_upstreams(ROUTES, &a, &b, &c)).await;
    let cl = client();

    let v = get_echo(&cl, &gw.url("/api/users/42?x=1&y=two")).await;
    assert_eq!(v["server_id"], "b");
    assert_eq!(v["path"], "/users/42");
    assert_eq!(v["query"], "x=1&y=two");
    // preserve_host: false -> the upstream sees its own authority as Host.
    assert_eq!(v["headers"]["host"], b.address());
    // X-Forwarded-For carries the client address.
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");

    let v = get_echo(&cl, &gw.url("/api")).await;
    assert_eq!(v["path"], "/", "stripping the whole path leaves /");

    let v = get_echo(&cl, &gw.url("/api?only=query")).await;
    assert_eq!(v["path"], "/");
    assert_eq!(v["query"], "only=query");

    // preserve_host: true -> the client's Host reaches the upstream.
    let r = cl
        .get(gw.url("/keep/me"))
        .header("host", "client.example")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["server_id"], "b");
    assert_eq!(v["headers"]["host"], "client.example");
    assert_eq!(v["path"], "/keep/me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_respond_and_no_route_404_json() {
    let (a, b, c) = three().await;
    let gw = Gateway::start(&with_upstreams(ROUTES, &a, &b, &c)).await;
    let cl = client();

    let r = cl.get(gw.url("/static")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-static"], "yes");
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "static body\n");

    let r = cl.head(gw.url("/static")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.text().await.unwrap(), "", "HEAD has no body");

    let r = cl.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], 404);
    assert!(v["error"].as_str().unwrap().contains("no route"), "{v}");
    // Nothing reached any upstream for the static and 404 answers.
    assert_eq!(a.hits() + b.hits() + c.hits(), 0);
    // Counted once the request is logged (after the answer was sent).
    gw.wait_metric(
        "stoa_filter_rejections_total",
        &[("filter", "router"), ("reason", "no_route")],
        Duration::from_secs(5),
        |v| v == Some(1.0),
    )
    .await;
}

const HEADERS: &str = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [edge, routes]
chains:
  edge:
    - type: request_id
    - type: headers
      request:
        set: { x-client: "{{ client_ip }}", x-tenant-copy: "t-{{ header.x-tenant }}", x-route: "{{ route }}@{{ cluster }}" }
        add: { x-added: "gw" }
        remove: [x-debug]
      response:
        set: { x-served-by: "{{ listener }}/{{ route }}", x-rid: "{{ request_id }}" }
        add: { x-multi: gateway }
        remove: [x-internal-secret]
  routes:
    - type: router
      routes:
        - name: api
          match: { path_prefix: / }
          cluster: a
clusters:
  a: { endpoints: ["@A@"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_filter_set_add_remove_and_templates() {
    let a = echo("a").await;
    let gw = Gateway::start(&HEADERS.replace("@A@", &a.address())).await;
    let cl = client();

    let r = cl
        .get(gw.url("/thing"))
        .header("x-tenant", "acme")
        .header("x-debug", "please-strip")
        .header("x-added", "client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let v: serde_json::Value = r.json().await.unwrap();
    let up = &v["headers"];
    assert_eq!(up["x-client"], "127.0.0.1");
    assert_eq!(up["x-tenant-copy"], "t-acme");
    assert_eq!(up["x-route"], "api@a");
    assert!(up.get("x-debug").is_none(), "x-debug must be removed: {up}");
    assert_eq!(
        up["x-added"], "client, gw",
        "add appends to the client's value"
    );

    assert_eq!(h["x-served-by"], "pub/api");
    assert!(
        h.get("x-internal-secret").is_none(),
        "removed response header"
    );
    let multi: Vec<_> = h
        .get_all("x-multi")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(multi, vec!["upstream", "gateway"]);
    // The request id template renders the id of this request.
    assert_eq!(h["x-rid"], h["x-request-id"]);

    // Without the x-tenant header the template renders empty.
    let v = get_echo(&cl, &gw.url("/thing")).await;
    assert_eq!(v["headers"]["x-tenant-copy"], "t-");
}

const REQUEST_ID: &str = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [edge]
chains:
  edge:
    - type: request_id
    - type: router
      routes:
        - name: api
          match: { path_prefix: /api }
          cluster: a
        - name: hello
          match: { path_exact: /hello }
          respond: { body: "hi" }
clusters:
  a: { endpoints: ["@A@"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_generated_and_propagated() {
    let a = echo("a").await;
    let gw = Gateway::start(&REQUEST_ID.replace("@A@", &a.address())).await;
    let cl = client();

    // Generated: a UUID, the same on the response and upstream; different per request.
    let r = cl.get(gw.url("/api/x")).send().await.unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(rid.len(), 36, "uuid: {rid}");
    assert_eq!(rid.matches('-').count(), 4, "uuid: {rid}");
    assert_eq!(v["headers"]["x-request-id"], rid.as_str());
    let r2 = cl.get(gw.url("/api/x")).send().await.unwrap();
    assert_ne!(r2.headers()["x-request-id"].to_str().unwrap(), rid);

    // Propagated: an incoming id is echoed and sent upstream unchanged.
    let r = cl
        .get(gw.url("/api/x"))
        .header("x-request-id", "client-id-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id-123");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-request-id"], "client-id-123");

    // An ill-formed incoming id (space) is replaced, never passed on.
    let r = cl
        .get(gw.url("/api/x"))
        .header("x-request-id", "bad id")
        .send()
        .await
        .unwrap();
    let got = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(got, "bad id");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-request-id"], got.as_str());

    // Local answers carry it too.
    let r = cl
        .get(gw.url("/hello"))
        .header("x-request-id", "local-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "local-1");
}

const CORS: &str = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [edge]
chains:
  edge:
    - type: cors
      allow_origins: ["https://app.example"]
      allow_methods: [GET, POST]
      allow_headers: [authorization, content-type]
      max_age: 10m
    - type: router
      routes:
        - name: api
          match: { path_prefix: / }
          cluster: a
clusters:
  a: { endpoints: ["@A@"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_allow_origin() {
    let a = echo("a").await;
    let gw = Gateway::start(&CORS.replace("@A@", &a.address())).await;
    let cl = client();

    let r = cl
        .request(reqwest::Method::OPTIONS, gw.url("/api/x"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(a.hits(), 0, "the preflight is answered by the gateway");

    let r = cl
        .request(reqwest::Method::OPTIONS, gw.url("/api/x"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], 403);
    assert_eq!(a.hits(), 0);

    // A normal request from an allowed origin gets ACAO on the upstream's answer.
    let r = cl
        .get(gw.url("/api/x"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(r
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("Origin")));
    // From another origin: served, but no ACAO.
    let r = cl
        .get(gw.url("/api/x"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(a.hits(), 2);
}

const BODY_LIMIT: &str = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [edge]
chains:
  edge:
    - type: body_limit
      max_size: 1KiB
    - type: router
      routes:
        - name: api
          match: { path_prefix: / }
          cluster: a
clusters:
  a: { endpoints: ["@A@"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_by_content_length_and_by_stream() {
    let a = echo("a").await;
    let gw = Gateway::start(&BODY_LIMIT.replace("@A@", &a.address())).await;
    let cl = client();

    // Under the limit: forwarded whole.
    let body = "x".repeat(1000);
    let r = cl
        .post(gw.url("/up"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["body"], body.as_str());

    // Over the limit by Content-Length: 413 without reaching the upstream.
    let r = cl
        .post(gw.url("/up"))
        .body("y".repeat(2000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], 413);
    assert_eq!(a.hits(), 1);

    // Chunked (no Content-Length): 413 once the streamed total passes 1 KiB.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'z'; 512])).collect();
    let stream = futures_util::stream::iter(chunks);
    let r = cl
        .post(gw.url("/up"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], 413);

    // A small chunked body still goes through.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..2).map(|_| Ok(vec![b'k'; 100])).collect();
    let r = cl
        .post(gw.url("/up"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["body"].as_str().unwrap().len(), 200);

    gw.wait_metric(
        "stoa_filter_rejections_total",
        &[("filter", "body_limit"), ("reason", "too_large")],
        Duration::from_secs(5),
        |v| v == Some(2.0),
    )
    .await;
}

const ACCESS_LOG: &str = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [edge]
chains:
  edge:
    - type: request_id
    - type: access_log
    - type: router
      routes:
        - name: api
          match: { path_prefix: /api }
          cluster: a
        - name: down
          match: { path_prefix: /down }
          cluster: dead
clusters:
  a: { endpoints: ["@A@"] }
  dead: { endpoints: ["127.0.0.1:@DEAD@"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_without_credentials() {
    let a = echo("a").await;
    let yaml = ACCESS_LOG
        .replace("@A@", &a.address())
        .replace("@DEAD@", &closed_port().to_string());
    let gw = Gateway::start(&yaml).await;
    let cl = client();

    let r = cl
        .get(gw.url("/api/items?token=query-secret-789"))
        .header("authorization", "Bearer secret-token-123")
        .header("cookie", "session=cookie-secret-456")
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The upstream did get the credentials (the gateway forwards them, it just does not log them).
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["authorization"], "Bearer secret-token-123");

    // A failing request with credentials too (error paths log more).
    let r = fresh_client()
        .get(gw.url("/down/x"))
        .header("authorization", "Bearer secret-token-123")
        .header("cookie", "session=cookie-secret-456")
        .header("x-request-id", "log-test-2")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error());
    let r = fresh_client()
        .get(gw.url("/nope"))
        .header("authorization", "Bearer secret-token-123")
        .header("x-request-id", "log-test-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let line = gw
        .wait_stdout_line("\"log-test-1\"", Duration::from_secs(5))
        .await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("access log is JSON");
    assert_eq!(v["request_id"], "log-test-1");
    assert_eq!(v["route"], "api");
    assert_eq!(v["status"], 200);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/api/items");
    assert_eq!(v["listener"], "pub");
    assert_eq!(v["upstream"], a.address());

    let line = gw
        .wait_stdout_line("\"log-test-3\"", Duration::from_secs(5))
        .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 404);
    assert_eq!(v["route"], "-");
    gw.wait_stdout_line("\"log-test-2\"", Duration::from_secs(5))
        .await;
    // Every stdout line is a JSON object.
    for l in gw.stdout().lines() {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"));
    }

    let (out, err) = (gw.stdout(), gw.stderr());
    for secret in ["secret-token-123", "cookie-secret-456", "query-secret-789"] {
        assert!(!out.contains(secret), "stdout leaks {secret}:\n{out}");
        assert!(!err.contains(secret), "stderr leaks {secret}:\n{err}");
    }
}

/// Even at `--log-level debug`, credentials sent by the client are not written to the logs.
/// (`x-no-echo` makes the upstream answer without reflecting the headers in its body.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logging_does_not_leak_credentials() {
    let a = echo("a").await;
    let yaml = ACCESS_LOG
        .replace("@A@", &a.address())
        .replace("@DEAD@", &closed_port().to_string());
    let gw = Gateway::builder()
        .config(&yaml)
        .arg("--log-level")
        .arg("debug")
        .start()
        .await;
    let cl = fresh_client();
    for path in ["/api/x", "/down/x", "/nope"] {
        let _ = cl
            .get(gw.url(path))
            .header("authorization", "Bearer secret-token-123")
            .header("cookie", "session=cookie-secret-456")
            .header("x-no-echo", "1")
            .send()
            .await
            .unwrap();
    }
    // Wait for the three access-log lines, so the logs of those requests are written.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.stdout().lines().count() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.stdout().lines().count(), 3, "{}", gw.stdout());
    let (out, err) = (gw.stdout(), gw.stderr());
    for secret in ["secret-token-123", "cookie-secret-456"] {
        assert!(!out.contains(secret), "stdout leaks {secret}");
        let leaks: Vec<&str> = err.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "stderr (debug) leaks {secret}: {leaks:#?}"
        );
    }
}

/// Send raw HTTP/1.1 requests on one connection; returns each response head (or the error).
fn raw_exchange(port: u16, paths: &[&str]) -> Vec<Result<String, String>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    for path in paths {
        let req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n");
        if let Err(e) = s.write_all(req.as_bytes()) {
            out.push(Err(format!("write: {e}")));
            break;
        }
        // Read the head and the Content-Length body.
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        let head = loop {
            match s.read(&mut byte) {
                Ok(0) => break Err("connection closed before a response".to_string()),
                Ok(_) => {
                    buf.push(byte[0]);
                    if buf.ends_with(b"\r\n\r\n") {
                        break Ok(String::from_utf8_lossy(&buf).into_owned());
                    }
                }
                Err(e) => break Err(format!("read: {e}")),
            }
        };
        let Ok(head) = head else {
            out.push(head);
            break;
        };
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        out.push(Ok(head));
    }
    out
}

/// After a gateway error answer (here 404 from the router, then a 5xx for an unreachable
/// upstream) the connection is either closed with `Connection: close` announced, or kept usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_404_keeps_connection_usable() {
    let a = echo("a").await;
    let yaml = ACCESS_LOG
        .replace("@A@", &a.address())
        .replace("@DEAD@", &closed_port().to_string());
    let gw = Gateway::start(&yaml).await;
    let port = gw.port;
    let res = tokio::task::spawn_blocking(move || raw_exchange(port, &["/nope", "/api/1"]))
        .await
        .unwrap();
    assert!(
        res[0].as_ref().unwrap().starts_with("HTTP/1.1 404"),
        "{res:?}"
    );
    assert!(
        res[1].as_ref().unwrap().starts_with("HTTP/1.1 200"),
        "{res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_response_keepalive() {
    let a = echo("a").await;
    let yaml = ACCESS_LOG
        .replace("@A@", &a.address())
        .replace("@DEAD@", &closed_port().to_string());
    let gw = Gateway::start(&yaml).await;
    let port = gw.port;
    let res = tokio::task::spawn_blocking(move || raw_exchange(port, &["/down/x", "/api/1"]))
        .await
        .unwrap();
    let first = res[0].as_ref().expect("an error answer");
    assert!(first.starts_with("HTTP/1.1 5"), "{first}");
    let announces_close = first
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "connection:close");
    if !announces_close {
        // Keep-alive was announced: the connection must then serve the next request.
        assert!(
            matches!(res.get(1), Some(Ok(h)) if h.starts_with("HTTP/1.1 200")),
            "the error answer announced keep-alive but the connection was not usable: {res:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_to_file_and_custom_request_id_header() {
    let a = echo("a").await;
    let yaml = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [edge]
chains:
  edge:
    - type: request_id
      header: x-trace-id
      propagate: false
    - type: access_log
      path: "@DIR@/access.log"
    - type: router
      routes:
        - name: api
          match: { path_prefix: / }
          cluster: a
clusters:
  a: { endpoints: ["@A@"] }
"#
    .replace("@A@", &a.address());
    let gw = Gateway::start(&yaml).await;
    let r = client()
        .get(gw.url("/f"))
        .header("x-trace-id", "client-chosen")
        .send()
        .await
        .unwrap();
    // propagate: false -> always a fresh id, under the configured header name.
    let id = r.headers()["x-trace-id"].to_str().unwrap().to_string();
    assert_ne!(id, "client-chosen");
    assert!(r.headers().get("x-request-id").is_none());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-trace-id"], id.as_str());

    let path = gw.dir.path().join("access.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(&id)) {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line in {path:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "api");
    assert!(
        !gw.stdout().contains(&id),
        "the access log went to the file, not stdout"
    );
}
