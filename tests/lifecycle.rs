//! Start and stop, as an orchestrator sees them: an address already in use fails the start at
//! once, naming the address (no retries, no panic); each listener gets a start-up line with its
//! address, chains and TLS; SIGTERM first drains (`/ready` answers 503 while every listener
//! keeps serving, so no request of a load fails), then shuts down gracefully.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn config(upstream: &Upstream, server_extra: &str) -> String {
    format!(
        r#"
server:
  threads: 1
  pid_file: "@DIR@/gw.pid"
  upgrade_sock: "@DIR@/gw-upgrade.sock"
  watch_config: false
{server_extra}
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: router
      routes:
        - name: all
          match: {{ path_prefix: / }}
          cluster: up
clusters:
  up: {{ endpoints: ["{}"] }}
"#,
        upstream.address()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_fails_the_start_at_once_and_says_which() {
    let up = echo("a").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    let yaml = config(&up, "")
        .replace("@DIR@", dir.path().to_str().unwrap())
        .replace("@PORT@", &port.to_string());
    std::fs::write(
        &path,
        format!(
            "{yaml}admin: {{ address: \"127.0.0.1:{}\" }}\n",
            free_port()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let (status, out, err) = run_to_end(&["-c", path.to_str().unwrap()], Duration::from_secs(20));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (listener pub): address in use"
        )),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?} to give up");

    // the admin address too
    let yaml = config(&up, "")
        .replace("@DIR@", dir.path().to_str().unwrap())
        .replace("@PORT@", &free_port().to_string());
    std::fs::write(
        &path,
        format!("{yaml}admin: {{ address: \"127.0.0.1:{port}\" }}\n"),
    )
    .unwrap();
    let (status, out, err) = run_to_end(&["-c", path.to_str().unwrap()], Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (the admin API): address in use"
        )),
        "{err}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_says_where_it_listens() {
    let up = echo("a").await;
    let gw = Gateway::start(&config(&up, "")).await;
    let stderr = gw
        .wait_stderr("\"message\":\"listening\"", Duration::from_secs(5))
        .await;
    let line = stderr
        .lines()
        .find(|l| l.contains("\"message\":\"listening\""))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["listener"], "pub");
    assert_eq!(
        line["address"].as_str().unwrap(),
        gw.url("")
            .trim_start_matches("http://")
            .trim_end_matches('/')
    );
    assert_eq!(line["chains"], "main");
    assert_eq!(line["tls"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_shuts_down_without_failing_a_request() {
    let up = echo("a").await;
    let mut gw = Gateway::start(&config(&up, "  drain_period: 2s")).await;
    assert_eq!(
        client()
            .get(gw.admin_url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(gw.url("/x"), LoadOptions::keepalive(4), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    // `/ready` turns 503 at once...
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let r = client().get(gw.admin_url("/ready")).send().await.unwrap();
        if r.status() == 503 {
            assert!(r.text().await.unwrap().contains("draining"));
            break;
        }
        assert!(Instant::now() < deadline, "/ready still 200 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while the listener keeps serving, new connections included
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fresh = fresh_client().get(gw.url("/during")).send().await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the check ran past the drain"
    );
    stop.store(true, Ordering::SeqCst);
    let report = load.await.unwrap();
    assert!(report.ok > 0);
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(
        gw.try_wait().is_none(),
        "exited before the drain period was over"
    );
    // then the graceful shutdown, and a clean exit
    let exit = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
    assert!(signalled.elapsed() >= Duration::from_secs(2));
    let stderr = gw.stderr();
    assert!(stderr.contains("SIGTERM received: draining"), "{stderr}");
    assert!(stderr.contains("drain period over"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_says_shadow_mode_at_start_without_credentials() {
    let (up, candidate) = (echo("a").await, echo("b").await);
    let yaml = config(&up, "").replace(
        "          cluster: up\n",
        &format!(
            "          cluster: up\n    - type: mirror\n      url: \"http://user:secret-pw@{}\"\n",
            candidate.address()
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let stderr = gw.wait_stderr("Shadow mode", Duration::from_secs(5)).await;
    let line = stderr.lines().find(|l| l.contains("Shadow mode")).unwrap();
    assert!(line.contains(&candidate.address()), "{line}");
    assert!(!stderr.contains("secret-pw"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_can_answer_its_own_health_path() {
    let up = echo("a").await;
    let yaml = config(&up, "").replace(
        "    chains: [main]\n",
        "    chains: [main]\n    http: { health_path: /healthz }\n",
    );
    let gw = Gateway::start(&yaml).await;
    let r = client().get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");
    // only GET and HEAD, only that path: the rest is the upstream's
    let posted = client().post(gw.url("/healthz")).send().await.unwrap();
    let v: serde_json::Value = posted.json().await.unwrap();
    assert_eq!(v["server_id"], "a");
    let v: serde_json::Value = client()
        .get(gw.url("/healthz/deep"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["server_id"], "a");

    // the presets serve /health on the traffic port (the migration runbook curls it there)
    let preset = Gateway::builder()
        .arg("--mode=proxy")
        .arg("--port=@PORT@")
        .arg(format!("--upstream=http://{}", up.address()))
        .arg("--admin-address")
        .arg("127.0.0.1:@ADMIN@")
        .start()
        .await;
    // the upstream's own /health now answers 500: a 200 here is the gateway's
    up.set_healthy(false);
    let r = client().get(preset.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");
}
