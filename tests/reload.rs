//! Config reloads (SIGHUP, file change, invalid files, under load), `/config` redaction, graceful
//! upgrade (SIGQUIT + `--upgrade`) and graceful shutdown (SIGTERM).

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Route everything to cluster `target` (`a` or `b`).
fn routed_to(target: &str, a: &Upstream, b: &Upstream) -> String {
    format!(
        r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [routes]
chains:
  routes:
    - type: request_id
    - type: access_log
    - type: router
      routes:
        - name: all
          match: {{ path_prefix: / }}
          cluster: {target}
clusters:
  a: {{ endpoints: ["{}"] }}
  b: {{ endpoints: ["{}"] }}
"#,
        a.address(),
        b.address()
    )
}

/// Poll until requests are answered by `want` (bounded).
async fn wait_served_by(gw: &Gateway, want: &str, timeout: Duration) {
    let cl = client();
    let deadline = Instant::now() + timeout;
    loop {
        let got = who(&cl, &gw.url("/which")).await;
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "still served by {got}, not {want}, after {timeout:?}\nstderr:\n{}",
                gw.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn config_json(gw: &Gateway) -> serde_json::Value {
    client()
        .get(gw.admin_url("/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn find_key<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, val) in m {
                if k == key {
                    out.push(val);
                }
                find_key(val, key, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_key(x, key, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_endpoint_redacts_secrets() {
    let a = echo("a").await;
    let yaml = format!(
        r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [routes]
chains:
  routes:
    - type: headers
      request:
        set: {{ x-api-token: tok-abc-123, authorization: "Bearer cfg-secret-456", x-plain: visible-value }}
    - type: router
      routes:
        - name: all
          match: {{ path_prefix: / }}
          cluster: a
clusters:
  a: {{ endpoints: ["{}"] }}
"#,
        a.address()
    );
    let gw = Gateway::start(&yaml).await;
    let r = client().get(gw.admin_url("/config")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let text = r.text().await.unwrap();
    assert!(!text.contains("tok-abc-123"), "token not redacted:\n{text}");
    assert!(
        !text.contains("cfg-secret-456"),
        "authorization not redacted:\n{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1);
    let mut found = Vec::new();
    find_key(&v, "x-api-token", &mut found);
    assert_eq!(found, vec![&serde_json::json!("***")], "{text}");
    let mut found = Vec::new();
    find_key(&v, "x-plain", &mut found);
    assert_eq!(found, vec![&serde_json::json!("visible-value")], "{text}");
    // The effective config: listener and cluster are there.
    assert!(text.contains(&a.address()));
    assert!(text.contains(&format!("127.0.0.1:{}", gw.port)));

    // Redaction is only for display: the upstream still gets the real values.
    let v = get_echo(&client(), &gw.url("/x")).await;
    assert_eq!(v["headers"]["x-api-token"], "tok-abc-123");
    assert_eq!(v["headers"]["authorization"], "Bearer cfg-secret-456");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_switches_route() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = Gateway::builder()
        .config(&routed_to("a", &a, &b))
        .watch_config(false)
        .start()
        .await;
    let cl = client();
    assert_eq!(who(&cl, &gw.url("/")).await, "a");

    gw.write_config(&routed_to("b", &a, &b));
    // watch_config is off: the new file is not picked up by itself.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(who(&cl, &gw.url("/")).await, "a");
    assert_eq!(config_json(&gw).await["version"], 1);

    gw.signal(libc::SIGHUP);
    wait_served_by(&gw, "b", Duration::from_secs(10)).await;
    assert_eq!(config_json(&gw).await["version"], 2);
    gw.wait_metric(
        "stoa_config_reloads_total",
        &[("result", "ok")],
        Duration::from_secs(5),
        |v| v == Some(1.0),
    )
    .await;
    gw.wait_stderr("config reloaded", Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_reloads_without_signal() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = Gateway::builder()
        .config(&routed_to("a", &a, &b))
        .watch_config(true)
        .start()
        .await;
    assert_eq!(who(&client(), &gw.url("/")).await, "a");
    // Edited in place.
    gw.write_config(&routed_to("b", &a, &b));
    wait_served_by(&gw, "b", Duration::from_secs(10)).await;
    // Replaced by rename (editors, Kubernetes ConfigMaps).
    gw.replace_config(&routed_to("a", &a, &b));
    wait_served_by(&gw, "a", Duration::from_secs(10)).await;
    let ok = gw
        .metric("stoa_config_reloads_total", &[("result", "ok")])
        .await
        .unwrap();
    assert!(ok >= 2.0, "reloads ok: {ok}");
    // Debounced: a burst of writes is not one reload per event; and no failed reloads.
    assert_eq!(
        gw.metric("stoa_config_reloads_total", &[("result", "error")])
            .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_serving_old_config() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = Gateway::builder()
        .config(&routed_to("a", &a, &b))
        .watch_config(false)
        .start()
        .await;
    let cl = client();
    assert_eq!(who(&cl, &gw.url("/")).await, "a");

    let bad = routed_to("b", &a, &b).replace(
        "    chains: [routes]\n",
        "    chains: [routes]\n    unknown_reload_key: 1\n",
    );
    gw.write_config(&bad);
    gw.signal(libc::SIGHUP);
    gw.wait_metric(
        "stoa_config_reloads_total",
        &[("result", "error")],
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;
    let err = gw
        .wait_stderr("unknown_reload_key", Duration::from_secs(5))
        .await;
    let line = err
        .lines()
        .find(|l| l.contains("unknown_reload_key"))
        .unwrap();
    assert!(line.contains("reload rejected"), "{line}");
    assert!(
        line.contains(&gw.config_path.display().to_string()),
        "the log names the file: {line}"
    );
    // Still the old config.
    for _ in 0..5 {
        assert_eq!(who(&cl, &gw.url("/")).await, "a");
    }
    assert_eq!(config_json(&gw).await["version"], 1);
    assert_eq!(
        gw.metric("stoa_config_reloads_total", &[("result", "ok")])
            .await,
        Some(0.0)
    );

    // A valid file afterwards is taken.
    gw.write_config(&routed_to("b", &a, &b));
    gw.signal(libc::SIGHUP);
    wait_served_by(&gw, "b", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rejects_listener_changes() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = Gateway::builder()
        .config(&routed_to("a", &a, &b))
        .watch_config(false)
        .start()
        .await;
    // Moving the listener needs a restart: the reload is refused as a whole.
    gw.write_config(&routed_to("b", &a, &b).replace("@PORT@", "@PORT2@"));
    gw.signal(libc::SIGHUP);
    gw.wait_metric(
        "stoa_config_reloads_total",
        &[("result", "error")],
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;
    assert_eq!(who(&client(), &gw.url("/")).await, "a");
    assert!(client().get(gw.url2("/")).send().await.is_err());
    gw.wait_stderr("need a restart", Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nothing() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = Gateway::builder()
        .config(&routed_to("a", &a, &b))
        .watch_config(false)
        .start()
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(gw.url("/load"), LoadOptions::keepalive(4), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        let target = if i % 2 == 0 { "b" } else { "a" };
        gw.write_config(&routed_to(target, &a, &b));
        gw.signal(libc::SIGHUP);
        wait_served_by(&gw, target, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rep = tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .expect("load did not stop")
        .unwrap();
    assert_eq!(rep.failed, 0, "failed requests during reloads: {rep:?}");
    assert!(rep.ok >= 100, "too little load to mean anything: {rep:?}");
    assert!(
        rep.by_upstream.get("a").copied().unwrap_or(0) > 0
            && rep.by_upstream.get("b").copied().unwrap_or(0) > 0,
        "{rep:?}"
    );
    gw.wait_metric(
        "stoa_config_reloads_total",
        &[("result", "ok")],
        Duration::from_secs(5),
        |v| v == Some(5.0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_under_load() {
    let (a, b) = (echo("a").await, echo("b").await);
    let mut old = Gateway::builder()
        .config(&routed_to("a", &a, &b))
        .watch_config(false)
        .start()
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    // New connections all the time: none may be refused or dropped during the handoff.
    let fresh = start_load(
        old.url("/fresh"),
        LoadOptions {
            workers: 2,
            fresh_connections: true,
            retry_once: false,
        },
        stop.clone(),
    );
    // Kept-alive connections: the old process closes idle ones when it stops, which a client
    // may race with its next request; like browsers, such a GET is sent once more.
    let kept = start_load(
        old.url("/kept"),
        LoadOptions {
            workers: 2,
            fresh_connections: false,
            retry_once: true,
        },
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new process waits on the upgrade socket for the old one's listeners.
    let sock = old.dir.path().join("upgrade.sock");
    assert!(!sock.exists());
    let mut new = old.spawn_upgrade();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            new.try_wait().is_none(),
            "new process exited:\n{}",
            new.stderr()
        );
        assert!(Instant::now() < deadline, "upgrade socket never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    old.signal(libc::SIGQUIT);

    // The old process hands over, drains (grace_period 1s) and exits; load never stops.
    let status = old.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some(),
        "old process still running 30s after SIGQUIT:\n{}",
        old.stderr()
    );
    assert!(
        new.try_wait().is_none(),
        "new process died:\n{}",
        new.stderr()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for (name, load) in [("fresh connections", fresh), ("kept-alive", kept)] {
        let rep = tokio::time::timeout(Duration::from_secs(30), load)
            .await
            .expect("load did not stop")
            .unwrap();
        assert_eq!(
            rep.failed, 0,
            "{name}: failed requests during the upgrade: {rep:?}"
        );
        assert!(rep.ok >= 50, "{name}: {rep:?}");
        eprintln!("{name}: {rep:?}");
    }

    // Only the new process is left, and it serves (listener and admin).
    new.wait_ready().await;
    let fresh = fresh_client();
    for _ in 0..5 {
        let r = fresh
            .get(new.url("/after"))
            .header("x-request-id", "after-upgrade")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    new.wait_stdout_line("\"after-upgrade\"", Duration::from_secs(5))
        .await;
    assert!(status.unwrap().success(), "old exit status: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let (a, b) = (echo("a").await, echo("b").await);
    let mut gw = Gateway::builder()
        .config(&routed_to("a", &a, &b))
        .watch_config(false)
        .start()
        .await;
    let url = gw.url("/slow");
    let in_flight = tokio::spawn(async move {
        client()
            .get(url)
            .header("x-delay-ms", "800")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // Let the request reach the upstream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.hits.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        // `hits` counts a request before its delay: the request is now in flight upstream.
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.signal(libc::SIGTERM);
    let status = in_flight.await.unwrap();
    assert_eq!(status.ok(), Some(200), "the in-flight request was cut");
    let exit = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.is_some(), "still running 20s after SIGTERM");
    assert!(exit.unwrap().success(), "{exit:?}");
}

/// A reload builds new clusters; until their first health check they must not send traffic to
/// an endpoint the running config already knows is unhealthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_unhealthy_endpoints_out() {
    let (a, b) = (echo("a").await, echo("b").await);
    let config = |route: &str| {
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
        - name: {route}
          match: {{ path_prefix: / }}
          cluster: pool
clusters:
  pool:
    endpoints: ["{}", "{}"]
    health_check: {{ path: /health, interval: 2s, timeout: 1s }}
"#,
            a.address(),
            b.address()
        )
    };
    // b answers traffic but fails its health check: it must get no requests.
    b.set_healthy(false);
    let gw = Gateway::builder()
        .config(&config("r0"))
        .watch_config(false)
        .start()
        .await;
    let eb = b.address();
    gw.wait_metric(
        "stoa_upstream_healthy",
        &[("cluster", "pool"), ("endpoint", eb.as_str())],
        Duration::from_secs(10),
        |v| v == Some(0.0),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(gw.url("/load"), LoadOptions::keepalive(2), stop.clone());
    for i in 1..=3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw.write_config(&config(&format!("r{i}")));
        gw.signal(libc::SIGHUP);
        gw.wait_metric(
            "stoa_config_reloads_total",
            &[("result", "ok")],
            Duration::from_secs(10),
            |v| v == Some(i as f64),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rep = tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rep.failed, 0, "{rep:?}");
    assert!(rep.ok > 20, "{rep:?}");
    assert_eq!(
        rep.by_upstream.get("b").copied().unwrap_or(0),
        0,
        "requests reached the unhealthy endpoint after a reload: {rep:?}"
    );
}

/// Route everything to `target` and capture it for the shadow store under the API name
/// `via-{target}`: the chain (which upstream) and the `shadow:` settings (which API name) of
/// one version go together.
fn routed_and_observed(
    target: &str,
    a: &Upstream,
    b: &Upstream,
    store: &std::path::Path,
) -> String {
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
          cluster: {target}
clusters:
  a: {{ endpoints: ["{a}"], health_check: {{ path: /health, interval: 30s, timeout: 5s }} }}
  b: {{ endpoints: ["{b}"], health_check: {{ path: /health, interval: 30s, timeout: 5s }} }}
shadow:
  keep_observing: true
  store:
    path: "{store}"
  opt_in:
    - name: via-{target}
      path_prefix: /
"#,
        a = a.address(),
        b = b.address(),
        store = store.display(),
    )
}

/// A reload that changes the chains and the `shadow:` settings together is one swap: no
/// request is captured under one version's settings while served by the other's chain, even
/// while the new version's first health checks hold the swap back for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_chains_and_shadow_settings_together() {
    let (a, b) = (echo("a").await, echo("b").await);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("shadow.db");
    let gw = Gateway::builder()
        .config(&routed_and_observed("a", &a, &b, &store))
        .watch_config(false)
        .start()
        .await;
    // From now on every first health check of a new version takes a second.
    for u in [&a, &b] {
        u.health_delay_ms
            .store(1000, std::sync::atomic::Ordering::SeqCst);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(gw.url("/load"), LoadOptions::keepalive(4), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..4 {
        let target = if i % 2 == 0 { "b" } else { "a" };
        gw.write_config(&routed_and_observed(target, &a, &b, &store));
        gw.signal(libc::SIGHUP);
        wait_served_by(&gw, target, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rep = tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .expect("load did not stop")
        .unwrap();
    assert_eq!(rep.failed, 0, "{rep:?}");
    // Every sample captured as `via-X` was answered by X.
    let mut seen = 0;
    for (api, server) in [("via-a", "a"), ("via-b", "b")] {
        let mut samples = Vec::new();
        // The store's worker runs at idle priority: on a busy machine it may take a while.
        for _ in 0..300 {
            let r = admin_request(
                reqwest::Method::GET,
                gw.admin_url(&format!(
                    "/uac/observations?api={api}&limit=1000&reason=reload+test"
                )),
            )
            .header("x-stoa-actor", "reload-test")
            .send()
            .await
            .unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            samples = v["samples"].as_array().cloned().unwrap_or_default();
            if !samples.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!samples.is_empty(), "nothing captured as {api}");
        for s in &samples {
            let body = s["response_body"].as_str().unwrap_or("");
            let answered_by: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            assert_eq!(
                answered_by["server_id"], server,
                "captured as {api} but served by another chain: {s}"
            );
        }
        seen += samples.len();
    }
    assert!(seen >= 50, "too few samples to mean anything: {seen}");
}
