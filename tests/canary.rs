//! The `canary` filter end to end: the real binary splitting live traffic between a primary
//! and a candidate cluster (two real upstreams), sticky by a header, with the weight changed
//! through the admin API, the `canary set` subcommand and config reloads under continuous
//! load.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn config(python: &Upstream, rust: &Upstream) -> String {
    format!(
        r#"
listeners:
  - name: main
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: router
      routes:
        - name: mcp
          match: {{ path_prefix: / }}
          cluster: python
    - type: canary
      cluster: rust
      weight: 10
      sticky_key: "{{{{ header.x-user }}}}"
clusters:
  python:
    endpoints: ["{}"]
  rust:
    endpoints: ["{}"]
"#,
        python.address(),
        rust.address()
    )
}

async fn side(url: &str, user: &str) -> String {
    let r = client()
        .get(url)
        .header("x-user", user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-upstream-id"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_users_goes_to_the_candidate_and_stays_there() {
    let python = echo("python").await;
    let rust = echo("rust").await;
    let gw = Gateway::start(&config(&python, &rust)).await;
    let url = gw.url("/mcp");
    let mut to_rust = 0;
    for i in 0..2000 {
        if side(&url, &format!("user-{i}")).await == "rust" {
            to_rust += 1;
        }
    }
    // 10% of 2,000 users, within ±2.5 points.
    assert!(
        (150..=250).contains(&to_rust),
        "{to_rust} of 2000 went to the candidate"
    );
    // Sticky: a user always lands on the same side.
    for user in ["user-1", "user-2", "user-3", "user-42"] {
        let first = side(&url, user).await;
        for _ in 0..20 {
            assert_eq!(side(&url, user).await, first, "{user} moved");
        }
    }
    gw.wait_metric(
        "stoa_canary_requests_total",
        &[
            ("canary", "default"),
            ("backend", "candidate"),
            ("status", "ok"),
        ],
        Duration::from_secs(5),
        |v| v.is_some_and(|v| v >= to_rust as f64),
    )
    .await;
    assert_eq!(
        gw.metric("stoa_canary_weight", &[("canary", "default")])
            .await,
        Some(10.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_under_load_drop_nothing() {
    let python = echo("python").await;
    let rust = echo("rust").await;
    // Reloads by SIGHUP only, so each one below is counted once.
    let gw = Gateway::builder()
        .config(&config(&python, &rust))
        .watch_config(false)
        .start()
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    // No x-user header: every request has the same (empty) key, so the whole load switches
    // sides with the weight.
    let load = start_load(gw.url("/mcp"), LoadOptions::keepalive(8), stop.clone());
    let set = |weight: f64| {
        let admin = gw.admin_url("/canary");
        async move {
            let r = admin_request(reqwest::Method::POST, admin)
                .body(format!("{{\"weight\": {weight}}}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    set(100.0).await;
    assert_eq!(side(&gw.url("/"), "").await, "rust");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The CLI subcommand talks to the same admin API: 0 is the instant rollback.
    let admin = format!("--admin-address=127.0.0.1:{}", gw.admin_port);
    let (status, out, err) = tokio::task::spawn_blocking(move || {
        run_to_end(
            &[
                "canary",
                "set",
                "0",
                &admin,
                &format!("--token={ADMIN_TOKEN}"),
            ],
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap();
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("\"default\":0"), "{out}");
    assert_eq!(side(&gw.url("/"), "").await, "python");
    tokio::time::sleep(Duration::from_millis(300)).await;
    set(37.5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A config reload that changes the file's weight applies it, still under load.
    let reload = |weight: &str, reloads: f64| {
        gw.replace_config(&config(&python, &rust).replace("weight: 10", weight));
        gw.signal(libc::SIGHUP);
        gw.wait_metric(
            "stoa_config_reloads_total",
            &[("result", "ok")],
            Duration::from_secs(10),
            move |v| v == Some(reloads),
        )
    };
    reload("weight: 100", 1.0).await;
    assert_eq!(
        gw.metric("stoa_canary_weight", &[("canary", "default")])
            .await,
        Some(100.0)
    );
    assert_eq!(side(&gw.url("/"), "").await, "rust");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A reload that leaves the file's weight as it was keeps a weight set live since.
    set(20.0).await;
    reload("weight: 100", 2.0).await;
    assert_eq!(
        gw.metric("stoa_canary_weight", &[("canary", "default")])
            .await,
        Some(20.0)
    );
    set(37.5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let report = load.await.unwrap();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(
        report.by_upstream.get("rust").is_some_and(|n| *n > 0),
        "{:?}",
        report.by_upstream
    );
    assert!(
        report.by_upstream.get("python").is_some_and(|n| *n > 0),
        "{:?}",
        report.by_upstream
    );
    // Bad input is refused and changes nothing.
    let r = admin_request(reqwest::Method::POST, gw.admin_url("/canary"))
        .body("{\"weight\": 120}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = admin_request(reqwest::Method::POST, gw.admin_url("/canary"))
        .body("{\"weight\": 5, \"name\": \"nope\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let weights: serde_json::Value = get_echo(&client(), &gw.admin_url("/canary")).await;
    assert_eq!(weights["weights"]["default"], 37.5);
}
