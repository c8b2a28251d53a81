//! Streaming responses (SSE), WebSocket upgrades, HTTP/2 (h2c and TLS) and upstream TLS.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};

fn proxy_all(extra_listener: &str, cluster: &str) -> String {
    format!(
        r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [routes]
{extra_listener}
chains:
  routes:
    - type: request_id
    - type: access_log
    - type: router
      routes:
        - name: all
          match: {{ path_prefix: / }}
          cluster: up
clusters:
  up:
{cluster}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_are_streamed_not_buffered() {
    let up = sse().await;
    let gw = Gateway::start(&proxy_all("", &format!("    endpoints: [\"{}\"]", up.addr))).await;
    let r = client().get(gw.url("/events")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let mut got = Vec::new();
    // The first event must arrive while the upstream is still holding the stream open.
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&got).contains("data: first\n\n") {
            match stream.next().await {
                Some(Ok(chunk)) => got.extend_from_slice(&chunk),
                other => panic!("stream ended early: {other:?}"),
            }
        }
    })
    .await;
    assert!(
        first.is_ok(),
        "the first event did not reach the client while the upstream held the stream \
         (buffered?); got so far: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        !up.finished.load(Ordering::SeqCst),
        "upstream finished before it was released"
    );
    // Now let the upstream finish.
    up.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream did not end after release");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "data: first\n\ndata: second\n\n"
    );
    assert!(up.finished.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_gateway() {
    use tokio_tungstenite::tungstenite::Message;
    let up = echo("ws").await;
    let gw = Gateway::start(&proxy_all(
        "",
        &format!("    endpoints: [\"{}\"]", up.address()),
    ))
    .await;
    let url = format!("ws://127.0.0.1:{}/ws", gw.port);
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .expect("ws connect timed out")
    .expect("ws connect");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::Text(format!("hello {i}").into()))
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no echo within 5s")
            .expect("stream ended")
            .unwrap();
        assert_eq!(msg, Message::Text(format!("echo: hello {i}").into()));
    }
    ws.send(Message::Binary(vec![0u8, 1, 2, 255].into()))
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg, Message::Binary(vec![0u8, 1, 2, 255].into()));
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_listener() {
    let up = echo("a").await;
    let yaml = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [routes]
    http2: true
  - name: plain
    address: "127.0.0.1:@PORT2@"
    chains: [routes]
chains:
  routes:
    - type: router
      routes:
        - name: all
          match: { path_prefix: / }
          cluster: up
clusters:
  up: { endpoints: ["@UP@"] }
"#
    .replace("@UP@", &up.address());
    let gw = Gateway::start(&yaml).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in 0..3 {
        let r = h2
            .get(gw.url(&format!("/h2/{i}?q=1")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["path"], format!("/h2/{i}"));
        assert_eq!(v["query"], "q=1");
    }
    // HTTP/1.1 still works on the http2 listener.
    let r = client().get(gw.url("/h1")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    // A listener without http2 does not speak h2c.
    assert!(
        h2.get(gw.url2("/nope")).send().await.is_err(),
        "h2c prior knowledge accepted on a listener without http2"
    );
    assert_eq!(up.hits(), 4);
}

fn https_client(certs: &Certs) -> reqwest::Client {
    let ca = std::fs::read(&certs.ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_https_with_h2() {
    let up = echo("a").await;
    let tmp = tempfile::TempDir::new().unwrap();
    let certs = make_certs(tmp.path());
    let yaml = format!(
        r#"
listeners:
  - name: tls
    address: "127.0.0.1:@PORT@"
    chains: [routes]
    tls: {{ cert: "{}", key: "{}" }}
    http2: true
  - name: tls1
    address: "127.0.0.1:@PORT2@"
    chains: [routes]
    tls: {{ cert: "{}", key: "{}" }}
chains:
  routes:
    - type: router
      routes:
        - name: all
          match: {{ path_prefix: / }}
          cluster: up
clusters:
  up: {{ endpoints: ["{}"] }}
"#,
        certs.cert.display(),
        certs.key.display(),
        certs.cert.display(),
        certs.key.display(),
        up.address()
    );
    let gw = Gateway::start(&yaml).await;
    let cl = https_client(&certs);
    let r = cl
        .get(format!("https://127.0.0.1:{}/secure?x=1", gw.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "h2 via ALPN");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/secure");
    // By name too (the certificate covers localhost).
    let r = cl
        .get(format!("https://localhost:{}/byname", gw.port))
        .send()
        .await;
    // localhost may resolve to ::1 first, where nothing listens; only check when it connected.
    if let Ok(r) = r {
        assert_eq!(r.status(), 200);
    }
    // An HTTP/1.1-only client is served on the h2 listener (ALPN falls back to http/1.1).
    let ca = std::fs::read(&certs.ca).unwrap();
    let h1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = h1
        .get(format!("https://127.0.0.1:{}/h1", gw.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    // The listener without `http2` serves HTTPS too.
    let r = cl
        .get(format!("https://127.0.0.1:{}/one", gw.port2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port fails.
    assert!(client()
        .get(format!("http://127.0.0.1:{}/plain", gw.port))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true));
    // A client that does not trust the CA refuses the certificate.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("https://127.0.0.1:{}/", gw.port))
        .send()
        .await
        .is_err());
}

/// contract.md: "tls: { cert: path.pem, key: key.pem }   # optional; TLS listener with ALPN
/// h2/http1.1" while `http2:` is described as "plaintext: accept h2c". src/main.rs only calls
/// `settings.enable_h2()` when `http2: true`, so a TLS listener without it never offers h2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_offers_h2_by_default() {
    let up = echo("a").await;
    let tmp = tempfile::TempDir::new().unwrap();
    let certs = make_certs(tmp.path());
    let yaml = format!(
        "listeners:\n  - name: tls\n    address: \"127.0.0.1:@PORT@\"\n    chains: [routes]\n    tls: {{ cert: \"{}\", key: \"{}\" }}\nchains:\n  routes:\n    - type: router\n      routes:\n        - {{ name: all, match: {{ path_prefix: / }}, cluster: up }}\nclusters:\n  up: {{ endpoints: [\"{}\"] }}\n",
        certs.cert.display(),
        certs.key.display(),
        up.address()
    );
    let gw = Gateway::start(&yaml).await;
    let r = https_client(&certs)
        .get(format!("https://127.0.0.1:{}/", gw.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

fn tls_cluster(up: &Upstream, tls: &str, retries: u32) -> String {
    format!(
        "    endpoints: [\"{}\"]\n    retries: {retries}\n    tls: {tls}",
        up.address()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verified_with_ca_file_and_sni() {
    let tmp = tempfile::TempDir::new().unwrap();
    let certs = make_certs(tmp.path());
    let up = tls_echo("tls-up", &certs).await;
    let gw = Gateway::start(&proxy_all(
        "",
        &tls_cluster(
            &up,
            &format!(
                "{{ sni: backend.test, verify: true, ca_file: \"{}\" }}",
                certs.ca.display()
            ),
            1,
        ),
    ))
    .await;
    let v = get_echo(&client(), &gw.url("/over-tls?a=b")).await;
    assert_eq!(v["server_id"], "tls-up");
    assert_eq!(v["path"], "/over-tls");
    assert_eq!(v["query"], "a=b");
    let snis = up.sni.lock().unwrap().clone();
    assert!(!snis.is_empty());
    assert!(
        snis.iter().all(|s| s.as_deref() == Some("backend.test")),
        "SNI seen by the upstream: {snis:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verify_without_ca_fails_502() {
    let tmp = tempfile::TempDir::new().unwrap();
    let certs = make_certs(tmp.path());
    let up = tls_echo("tls-up", &certs).await;
    // retries: 0 so the answer is the handshake failure itself (see the 503-on-retry bug).
    let gw = Gateway::start(&proxy_all(
        "",
        &tls_cluster(&up, "{ sni: backend.test, verify: true }", 0),
    ))
    .await;
    let r = fresh_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        up.hits(),
        0,
        "no request may go over an unverified connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_wrong_sni_fails_hostname_check() {
    let tmp = tempfile::TempDir::new().unwrap();
    let certs = make_certs(tmp.path());
    let up = tls_echo("tls-up", &certs).await;
    let gw = Gateway::start(&proxy_all(
        "",
        &tls_cluster(
            &up,
            &format!(
                "{{ sni: other.test, verify: true, ca_file: \"{}\" }}",
                certs.ca.display()
            ),
            0,
        ),
    ))
    .await;
    let r = fresh_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_without_verification() {
    let tmp = tempfile::TempDir::new().unwrap();
    let certs = make_certs(tmp.path());
    let up = tls_echo("tls-up", &certs).await;
    let gw = Gateway::start(&proxy_all(
        "",
        &tls_cluster(&up, "{ sni: whatever.test, verify: false }", 0),
    ))
    .await;
    let v = get_echo(&client(), &gw.url("/insecure")).await;
    assert_eq!(v["server_id"], "tls-up");
    assert_eq!(
        up.sni.lock().unwrap().first().cloned().flatten().as_deref(),
        Some("whatever.test")
    );
}

/// The contract: "upstream connect refused -> 502". A TLS verification failure on a
/// single-endpoint cluster with the default `retries: 1` gets 503 instead (same bug as
/// load_balancing::only_endpoint_refuses_is_502_quickly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verify_failure_default_retries_is_502() {
    let tmp = tempfile::TempDir::new().unwrap();
    let certs = make_certs(tmp.path());
    let up = tls_echo("tls-up", &certs).await;
    let gw = Gateway::start(&proxy_all(
        "",
        &format!(
            "    endpoints: [\"{}\"]\n    tls: {{ sni: backend.test, verify: true }}",
            up.address()
        ),
    ))
    .await;
    let r = fresh_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
}

/// HTTP/2 clients send `:authority` instead of `Host`; routing by host and `preserve_host`
/// must work the same as for HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_host_routing_and_preserve_host() {
    let (a, b) = (echo("a").await, echo("b").await);
    let yaml = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [routes]
    http2: true
chains:
  routes:
    - type: router
      routes:
        - name: by-host
          match: { host: 127.0.0.1, path_prefix: /h }
          cluster: b
          preserve_host: true
        - name: rest
          match: { path_prefix: / }
          cluster: a
clusters:
  a: { endpoints: ["@A@"] }
  b: { endpoints: ["@B@"] }
"#
    .replace("@A@", &a.address())
    .replace("@B@", &b.address());
    let gw = Gateway::start(&yaml).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = h2.get(gw.url("/h/x")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["server_id"], "b", "host match on :authority");
    assert_eq!(
        v["headers"]["host"],
        format!("127.0.0.1:{}", gw.port),
        "preserve_host keeps the client's authority"
    );
    let v: serde_json::Value = h2
        .get(gw.url("/other"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["server_id"], "a");
    assert_eq!(v["headers"]["host"], a.address());
}
