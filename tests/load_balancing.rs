//! Endpoint selection, health checks, passive ejection, retries and upstream error codes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

fn one_cluster(cluster: &str) -> String {
    format!(
        r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [routes]
chains:
  routes:
    - type: router
      routes:
        - name: all
          match: {{ path_prefix: / }}
          cluster: pool
clusters:
  pool:
{cluster}
"#
    )
}

async fn count_hits(
    gw: &Gateway,
    n: usize,
    header: Option<(&str, String)>,
) -> HashMap<String, usize> {
    let cl = client();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let mut req = cl.get(gw.url("/lb")).header("x-no-echo", "1");
        if let Some((k, v)) = &header {
            req = req.header(*k, v.as_str());
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-upstream-id"].to_str().unwrap().to_string();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let ups = [echo("a").await, echo("b").await, echo("c").await];
    let eps: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.address())).collect();
    let gw = Gateway::start(&one_cluster(&format!(
        "    endpoints: [{}]\n    selection: round_robin",
        eps.join(", ")
    )))
    .await;
    let counts = count_hits(&gw, 300, None).await;
    for u in &ups {
        let n = counts.get(&u.id).copied().unwrap_or(0);
        assert!(n >= 60, "{} got {n} of 300: {counts:?}", u.id);
        assert_eq!(n, u.hits(), "the upstream's own count agrees");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_honours_weights() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = Gateway::start(&one_cluster(&format!(
        "    endpoints: [{{ address: \"{}\", weight: 1 }}, {{ address: \"{}\", weight: 3 }}]",
        a.address(),
        b.address()
    )))
    .await;
    let counts = count_hits(&gw, 400, None).await;
    let (na, nb) = (counts["a"], counts["b"]);
    assert_eq!(na + nb, 400);
    // Expected 100 / 300.
    assert!((60..=140).contains(&na), "a got {na}, b got {nb}");
    assert!((260..=340).contains(&nb), "a got {na}, b got {nb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_header_is_sticky_and_spreads() {
    let ups = [echo("a").await, echo("b").await, echo("c").await];
    let eps: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.address())).collect();
    let gw = Gateway::start(&one_cluster(&format!(
        "    endpoints: [{}]\n    selection: consistent_hash\n    hash_on: {{ header: x-user }}",
        eps.join(", ")
    )))
    .await;
    // The same key always lands on the same upstream.
    let counts = count_hits(&gw, 50, Some(("x-user", "alice".into()))).await;
    assert_eq!(counts.len(), 1, "alice moved between upstreams: {counts:?}");
    let alice = counts.keys().next().unwrap().clone();
    let again = count_hits(&gw, 10, Some(("x-user", "alice".into()))).await;
    assert_eq!(again.keys().collect::<Vec<_>>(), vec![&alice]);

    // Different keys spread over the upstreams, each key sticky.
    let mut used = std::collections::HashSet::new();
    for i in 0..30 {
        let key = format!("user-{i}");
        let c = count_hits(&gw, 3, Some(("x-user", key.clone()))).await;
        assert_eq!(c.len(), 1, "{key} moved: {c:?}");
        used.insert(c.keys().next().unwrap().clone());
    }
    assert!(used.len() >= 2, "30 keys all hashed to {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_http_health_check_ejects_and_restores() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = Gateway::start(&one_cluster(&format!(
        "    endpoints: [\"{}\", \"{}\"]\n    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }}",
        a.address(),
        b.address()
    )))
    .await;
    let (ea, eb) = (a.address(), b.address());
    let la = [("cluster", "pool"), ("endpoint", ea.as_str())];
    let lb = [("cluster", "pool"), ("endpoint", eb.as_str())];
    let both = count_hits(&gw, 20, None).await;
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(a.health_hits.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert_eq!(gw.metric("stoa_upstream_healthy", &lb).await, Some(1.0));

    b.set_healthy(false);
    gw.wait_metric("stoa_upstream_healthy", &lb, Duration::from_secs(10), |v| {
        v == Some(0.0)
    })
    .await;
    assert_eq!(gw.metric("stoa_upstream_healthy", &la).await, Some(1.0));
    let before = b.hits();
    let only_a = count_hits(&gw, 30, None).await;
    assert_eq!(only_a.get("a"), Some(&30), "{only_a:?}");
    assert_eq!(
        b.hits(),
        before,
        "the unhealthy upstream still got requests"
    );

    b.set_healthy(true);
    gw.wait_metric("stoa_upstream_healthy", &lb, Duration::from_secs(10), |v| {
        v == Some(1.0)
    })
    .await;
    let back = count_hits(&gw, 30, None).await;
    assert!(
        back.get("b").copied().unwrap_or(0) >= 5,
        "b did not come back: {back:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_unhealthy_is_503() {
    let a = echo("a").await;
    a.set_healthy(false);
    let gw = Gateway::start(&one_cluster(&format!(
        "    endpoints: [\"{}\"]\n    health_check: {{ path: /health, interval: 200ms }}",
        a.address()
    )))
    .await;
    let ep = a.address();
    gw.wait_metric(
        "stoa_upstream_healthy",
        &[("cluster", "pool"), ("endpoint", ep.as_str())],
        Duration::from_secs(5),
        |v| v == Some(0.0),
    )
    .await;
    let r = fresh_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], 503);
    assert_eq!(a.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_and_retry_on_connect_failure() {
    let a = echo("a").await;
    let dead = format!("127.0.0.1:{}", closed_port());
    let gw = Gateway::start(&one_cluster(&format!(
        "    endpoints: [\"{dead}\", \"{}\"]\n    passive_ejection: {{ duration: 30s }}\n    retries: 1",
        a.address()
    )))
    .await;
    let cl = client();
    for i in 0..20 {
        let r = cl.get(gw.url(&format!("/r{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-upstream-id"], "a");
    }
    assert_eq!(a.hits(), 20);
    // The refused endpoint was tried once, then ejected for 30s.
    let failures = gw
        .metric(
            "stoa_upstream_connect_failures_total",
            &[("cluster", "pool")],
        )
        .await;
    assert_eq!(failures, Some(1.0), "{}", gw.metrics().await);
    assert_eq!(
        gw.metric(
            "stoa_upstream_healthy",
            &[("cluster", "pool"), ("endpoint", dead.as_str())]
        )
        .await,
        Some(0.0)
    );
    // Non-idempotent requests are not retried, but the dead endpoint is ejected, so POSTs work too.
    let r = cl.post(gw.url("/p")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_retries_is_502_quickly() {
    let dead = format!("127.0.0.1:{}", closed_port());
    let gw = Gateway::start(&one_cluster(&format!(
        "    endpoints: [\"{dead}\"]\n    retries: 0"
    )))
    .await;
    let cl = fresh_client();
    for _ in 0..3 {
        let t = Instant::now();
        let r = cl.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 502);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], 502);
    }
}

/// The contract: "upstream connect refused -> 502". With the default `retries: 1` and a single
/// endpoint, the retry finds no other endpoint and the answer becomes 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_endpoint_refuses_is_502_quickly() {
    let dead = format!("127.0.0.1:{}", closed_port());
    let gw = Gateway::start(&one_cluster(&format!("    endpoints: [\"{dead}\"]"))).await;
    let cl = fresh_client();
    for _ in 0..3 {
        let t = Instant::now();
        let r = cl.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 502);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504() {
    let a = echo("a").await;
    let gw = Gateway::start(&one_cluster(&format!(
        "    endpoints: [\"{}\"]\n    timeouts: {{ connect: 1s, read: 500ms }}",
        a.address()
    )))
    .await;
    let cl = fresh_client();
    // Fast requests are fine.
    let r = cl
        .get(gw.url("/fast"))
        .header("x-delay-ms", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = Instant::now();
    let r = cl
        .get(gw.url("/slow"))
        .header("x-delay-ms", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_check_marks_closed_port_down_and_up() {
    let a = echo("a").await;
    let dead_port = closed_port();
    let dead = format!("127.0.0.1:{dead_port}");
    let gw = Gateway::start(&one_cluster(&format!(
        "    endpoints: [\"{}\", \"{dead}\"]\n    health_check: {{ type: tcp, interval: 200ms, timeout: 500ms }}",
        a.address()
    )))
    .await;
    // /ready waited for the first check: the closed port is already known down.
    let labels = [("cluster", "pool"), ("endpoint", dead.as_str())];
    assert_eq!(gw.metric("stoa_upstream_healthy", &labels).await, Some(0.0));
    let ep_a = a.address();
    assert_eq!(
        gw.metric(
            "stoa_upstream_healthy",
            &[("cluster", "pool"), ("endpoint", ep_a.as_str())]
        )
        .await,
        Some(1.0)
    );
    let counts = count_hits(&gw, 20, None).await;
    assert_eq!(counts.get("a"), Some(&20));
    // Never even tried: the health check kept it out of rotation.
    assert_eq!(
        gw.metric(
            "stoa_upstream_connect_failures_total",
            &[("cluster", "pool")]
        )
        .await
        .unwrap_or(0.0),
        0.0
    );

    // Something starts listening there: it comes into rotation.
    let b = echo_on("b", dead_port).await;
    gw.wait_metric(
        "stoa_upstream_healthy",
        &labels,
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;
    let counts = count_hits(&gw, 20, None).await;
    assert!(counts.get("b").copied().unwrap_or(0) >= 5, "{counts:?}");
    assert!(b.hits() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_cookie() {
    let ups = [echo("a").await, echo("b").await, echo("c").await];
    let eps: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.address())).collect();
    let gw = Gateway::start(&one_cluster(&format!(
        "    endpoints: [{}]\n    selection: consistent_hash\n    hash_on: {{ cookie: sid }}",
        eps.join(", ")
    )))
    .await;
    let mut used = std::collections::HashSet::new();
    for i in 0..20 {
        // The hash key is the `sid` cookie only: other cookies around it do not matter.
        let c1 = count_hits(&gw, 3, Some(("cookie", format!("sid=s{i}")))).await;
        let c2 = count_hits(
            &gw,
            3,
            Some(("cookie", format!("theme=dark; sid=s{i}; x=1"))),
        )
        .await;
        assert_eq!(c1.len(), 1, "{c1:?}");
        assert_eq!(c1.keys().collect::<Vec<_>>(), c2.keys().collect::<Vec<_>>());
        used.insert(c1.keys().next().unwrap().clone());
    }
    assert!(used.len() >= 2, "20 cookies all hashed to {used:?}");
}
