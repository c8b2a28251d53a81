//! The `mirror` filter end to end: the real binary proxying to a real primary while copying
//! requests to a real candidate (both axum servers written here), comparing the answers and
//! counting and logging what differs.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Json;
use common::*;
use serde_json::{json, Value};

/// What the candidate saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    markers: AtomicUsize,
    posts: AtomicUsize,
    slow_started: AtomicUsize,
    slow_finished: AtomicUsize,
    bodies: Mutex<Vec<String>>,
}

/// A backend answering `/items/{case}`: the primary (`candidate: false`) and the candidate
/// answer the same except where the case says otherwise.
async fn backend(candidate: bool) -> (std::net::SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route(
            "/items/{case}",
            get(answer).post(
                |State((c, seen)): State<(bool, Arc<Seen>)>,
                 Path(case): Path<String>,
                 headers: HeaderMap,
                 body: String| async move {
                    if c {
                        seen.posts.fetch_add(1, Ordering::SeqCst);
                        seen.bodies.lock().unwrap().push(body);
                    }
                    answer(State((c, seen)), Path(case), headers).await
                },
            ),
        )
        .with_state((candidate, seen.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

async fn answer(
    State((candidate, seen)): State<(bool, Arc<Seen>)>,
    Path(case): Path<String>,
    headers: HeaderMap,
) -> Json<Value> {
    if candidate {
        seen.requests.fetch_add(1, Ordering::SeqCst);
        if headers.get("x-stoa-shadow").is_some_and(|v| v == "1") {
            seen.markers.fetch_add(1, Ordering::SeqCst);
        }
    }
    let base = json!({"id": 7, "user": {"name": "Ada", "email": "ada@example.com"},
        "meta": {"request_id": "primary"}, "updated_at": "2026-11-23T10:00:00Z"});
    if !candidate {
        return Json(base);
    }
    Json(match case.as_str() {
        // The same document, keys in another order and a later timestamp.
        "same" => {
            json!({"updated_at": "2026-11-23T10:00:05.250Z", "meta": {"request_id": "primary"},
            "user": {"email": "ada@example.com", "name": "Ada"}, "id": 7})
        }
        "renamed" => json!({"id": 7, "user": {"name": "Bob", "email": "ada@example.com"},
            "meta": {"request_id": "primary"}, "updated_at": "2026-11-23T10:00:00Z"}),
        "ignored" => json!({"id": 7, "user": {"name": "Ada", "email": "ada@example.com"},
            "meta": {"request_id": "candidate"}, "updated_at": "2026-11-23T10:00:00Z"}),
        "slow" => {
            seen.slow_started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(5)).await;
            seen.slow_finished.fetch_add(1, Ordering::SeqCst);
            base
        }
        _ => base,
    })
}

fn config(primary: std::net::SocketAddr, candidate: &str, dead: u16, patient: u16) -> String {
    format!(
        r#"
listeners:
  - name: patient
    address: "127.0.0.1:{patient}"
    chains: [patient]
  - name: main
    address: "127.0.0.1:@PORT@"
    chains: [main]
  - name: dead
    address: "127.0.0.1:@PORT2@"
    chains: [dead]
chains:
  main:
    - type: request_id
    - type: router
      routes:
        - name: writes
          match: {{ path_prefix: /items/write }}
          cluster: primary
        - name: items
          match: {{ path_prefix: /items/ }}
          cluster: primary
    - type: mirror
      url: "{candidate}"
      timeout: 1s
      allow_all_methods_on: [writes]
      compare:
        ignore_paths: ["$.meta.request_id"]
  patient:
    - type: router
      routes:
        - name: items
          match: {{ path_prefix: / }}
          cluster: primary
    - type: mirror
      url: "{candidate}"
      timeout: 30s
  dead:
    - type: router
      routes:
        - name: items
          match: {{ path_prefix: / }}
          cluster: primary
    - type: mirror
      url: "http://127.0.0.1:{dead}"
clusters:
  primary:
    endpoints: ["{primary}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_are_compared_counted_and_logged() {
    let (primary, _) = backend(false).await;
    let (candidate, seen) = backend(true).await;
    let patient = free_port();
    let gw = Gateway::start(&config(
        primary,
        &format!("http://{candidate}"),
        closed_port(),
        patient,
    ))
    .await;
    let c = client();
    for case in ["same", "same", "ignored", "renamed"] {
        let r = c
            .get(gw.url(&format!("/items/{case}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The client always gets the primary's answer.
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["user"]["name"], "Ada");
    }
    gw.wait_metric(
        "mcp_shadow_match_total",
        &[("route", "items"), ("result", "match")],
        Duration::from_secs(10),
        |v| v == Some(3.0),
    )
    .await;
    gw.wait_metric(
        "mcp_shadow_match_total",
        &[("route", "items"), ("result", "mismatch")],
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;
    assert_eq!(
        gw.metric(
            "mcp_shadow_field_differences_total",
            &[("route", "items"), ("field", "$.user.name")]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        seen.markers.load(Ordering::SeqCst),
        4,
        "every copy carries the marker"
    );
    // One JSON line per mismatch, with the path and the field (masked values).
    let line = gw
        .wait_stderr("Shadow MISMATCH", Duration::from_secs(5))
        .await;
    let line = line
        .lines()
        .find(|l| l.contains("Shadow MISMATCH"))
        .unwrap();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["path"], "/items/renamed", "{v}");
    assert_eq!(v["method"], "GET");
    assert!(v["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    let diff: Value = serde_json::from_str(v["diff"].as_str().unwrap()).unwrap();
    assert_eq!(diff[0]["field"], "$.user.name", "{diff}");
    assert_eq!(
        diff[0]["candidate"], "\"***\" (3 chars)",
        "values are masked"
    );
    assert!(!line.contains("ada@example.com"));

    // The admin report: per route, rates, top fields, recent samples; DELETE resets it.
    let report: Value = get_echo(&c, &gw.admin_url("/shadow/report")).await;
    let items = &report["routes"]["items"];
    assert_eq!(
        (items["match"].as_u64(), items["mismatch"].as_u64()),
        (Some(3), Some(1)),
        "{report}"
    );
    assert_eq!(items["match_rate"], 0.75);
    assert_eq!(items["requests"]["ok"], 4);
    assert_eq!(
        items["top_fields"][0],
        json!({"field": "$.user.name", "count": 1})
    );
    assert_eq!(items["recent_mismatches"][0]["path"], "/items/renamed");
    let r = admin_request(reqwest::Method::DELETE, gw.admin_url("/shadow/report"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let report: Value = get_echo(&c, &gw.admin_url("/shadow/report")).await;
    assert_eq!(report["compared"], 0, "{report}");

    // POST: not mirrored on `items`, mirrored on `writes` (which allows every method).
    let r = c
        .post(gw.url("/items/same"))
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(gw.url("/items/write-1"))
        .body("{\"order\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_metric(
        "mcp_shadow_requests_total",
        &[("route", "writes"), ("status", "ok")],
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;
    assert_eq!(seen.posts.load(Ordering::SeqCst), 1);
    assert_eq!(seen.bodies.lock().unwrap().as_slice(), ["{\"order\":1}"]);
    assert_eq!(
        gw.metric(
            "mcp_shadow_skipped_total",
            &[("route", "items"), ("reason", "method")]
        )
        .await,
        Some(1.0)
    );

    // A candidate that takes 5 s (mirror timeout 30 s): the client's answer does not wait for
    // it: the copy is still in flight when the client has its answer.
    let r = c
        .get(format!("http://127.0.0.1:{patient}/items/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    for _ in 0..50 {
        if seen.slow_started.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.slow_started.load(Ordering::SeqCst), 1);
    assert_eq!(
        seen.slow_finished.load(Ordering::SeqCst),
        0,
        "the client got its answer before the candidate finished"
    );
    // With a 1 s timeout, the slow copy counts as a timeout.
    let r = c.get(gw.url("/items/slow")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_metric(
        "mcp_shadow_requests_total",
        &[("route", "items"), ("status", "timeout")],
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;

    // A candidate that is down: the client is served, an error counts.
    let r = c.get(gw.url2("/items/same")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_metric(
        "mcp_shadow_requests_total",
        &[("route", "items"), ("status", "error")],
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_flag_and_runbook_environment_add_the_filter() {
    let (primary, _) = backend(false).await;
    let (candidate, seen) = backend(true).await;
    let yaml = format!(
        r#"
listeners:
  - name: main
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: router
      routes:
        - name: items
          match: {{ path_prefix: / }}
          cluster: primary
clusters:
  primary:
    endpoints: ["{primary}"]
"#
    );
    let by_flag = Gateway::builder()
        .config(&yaml)
        .arg(format!("--mirror=http://{candidate}"))
        .start()
        .await;
    let by_env = Gateway::builder()
        .config(&yaml)
        .env("SHADOW_MODE_ENABLED", "true")
        .env("SHADOW_RUST_GATEWAY_URL", format!("http://{candidate}"))
        .start()
        .await;
    for gw in [&by_flag, &by_env] {
        let r = client().get(gw.url("/items/same")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        gw.wait_metric(
            "mcp_shadow_match_total",
            &[("route", "items"), ("result", "match")],
            Duration::from_secs(10),
            |v| v == Some(1.0),
        )
        .await;
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    // Enabled without a URL is a configuration error.
    let plain = Gateway::builder()
        .config(&yaml)
        .env("SHADOW_MODE_ENABLED", "true")
        .wait_ready(false)
        .start()
        .await;
    let mut plain = plain;
    plain.wait_exit(Duration::from_secs(10)).await;
    assert!(
        plain.stderr().contains("SHADOW_RUST_GATEWAY_URL"),
        "{}",
        plain.stderr()
    );
}

/// A backend whose every answer names the instance and a fresh nonce (noise between two healthy
/// instances of the same code); the candidate renames the user on `/profile/renamed`. Counts
/// the POSTs it gets.
async fn noisy_backend(candidate: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let posts = Arc::new(AtomicUsize::new(0));
    let nonce = Arc::new(AtomicUsize::new(rand_seed()));
    let app = axum::Router::new()
        .route(
            "/profile/{case}",
            get(
                move |State((nonce, _)): State<(Arc<AtomicUsize>, Arc<AtomicUsize>)>,
                      Path(case): Path<String>| async move {
                    let name = if candidate && case == "renamed" {
                        "Bob"
                    } else {
                        "Ada"
                    };
                    let n = nonce.fetch_add(7919, Ordering::SeqCst);
                    Json(json!({"id": 7, "name": name, "served_by": format!("pod-{n}")}))
                },
            )
            .post(
                |State((_, posts)): State<(Arc<AtomicUsize>, Arc<AtomicUsize>)>| async move {
                    posts.fetch_add(1, Ordering::SeqCst);
                    Json(json!({"ok": true}))
                },
            ),
        )
        .with_state((nonce, posts.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, posts)
}

/// A different starting nonce per instance.
fn rand_seed() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1_000_003, Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noise_baseline_keeps_instance_noise_out_of_mismatches() {
    let (primary, _) = noisy_backend(false).await;
    let (baseline, baseline_posts) = noisy_backend(false).await;
    let (candidate, candidate_posts) = noisy_backend(true).await;
    let yaml = format!(
        r#"
listeners:
  - name: main
    address: "127.0.0.1:@PORT@"
    chains: [with_baseline]
  - name: plain
    address: "127.0.0.1:@PORT2@"
    chains: [without_baseline]
chains:
  with_baseline:
    - type: router
      routes:
        - name: profiles
          match: {{ path_prefix: /profile/ }}
          cluster: primary
    - type: mirror
      url: "http://{candidate}"
      allow_all_methods_on: [profiles]
      baseline:
        url: "http://{baseline}"
  without_baseline:
    - type: router
      routes:
        - name: plain
          match: {{ path_prefix: /profile/ }}
          cluster: primary
    - type: mirror
      url: "http://{candidate}"
clusters:
  primary:
    endpoints: ["{primary}"]
"#
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    for _ in 0..10 {
        for url in [gw.url("/profile/same"), gw.url2("/profile/same")] {
            let r = c.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    // Without a baseline, `served_by` makes every copy a mismatch…
    gw.wait_metric(
        "mcp_shadow_match_total",
        &[("route", "plain"), ("result", "mismatch")],
        Duration::from_secs(10),
        |v| v == Some(10.0),
    )
    .await;
    // …with one, the same answers match: the baseline differs on `served_by` as much.
    gw.wait_metric(
        "mcp_shadow_match_total",
        &[("route", "profiles"), ("result", "match")],
        Duration::from_secs(10),
        |v| v == Some(10.0),
    )
    .await;
    assert_eq!(
        gw.metric(
            "mcp_shadow_noise_differences_total",
            &[("route", "profiles"), ("field", "$.served_by")]
        )
        .await,
        Some(10.0)
    );
    assert_eq!(
        gw.metric(
            "mcp_shadow_baseline_requests_total",
            &[("route", "profiles"), ("status", "ok")]
        )
        .await,
        Some(10.0)
    );

    // A real difference is still a mismatch, logged with that field alone.
    let r = c.get(gw.url("/profile/renamed")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_metric(
        "mcp_shadow_match_total",
        &[("route", "profiles"), ("result", "mismatch")],
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;
    let report: Value = get_echo(&c, &gw.admin_url("/shadow/report")).await;
    let profiles = &report["routes"]["profiles"];
    let diff = &profiles["recent_mismatches"][0]["diff"];
    assert_eq!(diff.as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(diff[0]["field"], "$.name");
    assert_eq!(profiles["noise"]["noisy_fields"][0]["field"], "$.served_by");
    assert_eq!(profiles["noise"]["noisy_fields"][0]["noise_rate"], 1.0);

    // A POST goes to the candidate where allowed, never to the baseline (a second primary).
    let r = c.post(gw.url("/profile/same")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_metric(
        "mcp_shadow_requests_total",
        &[("route", "profiles"), ("status", "ok")],
        Duration::from_secs(10),
        |v| v == Some(12.0),
    )
    .await;
    assert_eq!(candidate_posts.load(Ordering::SeqCst), 1);
    assert_eq!(baseline_posts.load(Ordering::SeqCst), 0);
}
