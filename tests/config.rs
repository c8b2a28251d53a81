//! The command line and config contract: `--check`, `--version`, mode presets and environment
//! overrides, admin endpoints.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// 1-based line number of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the file"))
        + 1
}

fn check(path: &Path) -> (i32, String, String) {
    let (status, out, err) = run_to_end(&["--check", "-c", path.to_str().unwrap()], CHECK_TIMEOUT);
    (status.code().expect("exit code"), out, err)
}

const GOOD: &str = r#"
admin:
  address: 127.0.0.1:1
listeners:
  - name: public
    address: 127.0.0.1:1
    chains: [edge, routes]
    http2: true
  - name: internal
    address: 127.0.0.1:2
    chains: [routes]
chains:
  edge:
    - type: request_id
    - type: access_log
    - type: body_limit
      max_size: 1MiB
    - type: cors
      allow_origins: ["https://app.example"]
      max_age: 10m
    - type: headers
      request: { set: { x-client: "{{ client_ip }}" }, remove: [x-debug] }
  routes:
    - type: router
      routes:
        - name: api
          match: { path_prefix: /api, methods: [GET, POST], headers: { x-canary: "1" } }
          cluster: backend
          strip_path: true
        - name: hello
          match: { path_prefix: / }
          respond: { status: 200, body: "hello\n" }
clusters:
  backend:
    endpoints: [127.0.0.1:9000, { address: 127.0.0.1:9001, weight: 3 }]
    health_check: { type: tcp, interval: 5s }
    timeouts: { connect: 1s, read: 30s }
"#;

#[test]
fn check_good_config_prints_each_listeners_chain() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = write(dir.path(), "good.yaml", GOOD);
    let (code, out, err) = check(&path);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("config OK"), "{out}");
    assert!(out.contains(path.to_str().unwrap()), "{out}");
    let expected_public = "listener public on 127.0.0.1:1 (http2):\n\
        \x20 1. request_id  [chain edge]\n\
        \x20 2. access_log  [chain edge]\n\
        \x20 3. body_limit  [chain edge]\n\
        \x20 4. cors  [chain edge]\n\
        \x20 5. headers  [chain edge]\n\
        \x20 6. router  [chain routes]\n";
    assert!(out.contains(expected_public), "{out}");
    let expected_internal = "listener internal on 127.0.0.1:2:\n  1. router  [chain routes]\n";
    assert!(out.contains(expected_internal), "{out}");
    assert!(
        out.contains("cluster backend: 127.0.0.1:9000, 127.0.0.1:9001"),
        "{out}"
    );
}

#[test]
fn check_unknown_key_names_file_line_and_key() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = "listeners:\n  - name: pub\n    address: 127.0.0.1:1\n    chains: [r]\n    bogus_key: 1\nchains:\n  r:\n    - type: router\n      routes:\n        - { name: a, match: { path_prefix: / }, respond: { body: hi } }\n";
    let path = write(dir.path(), "unknown.yaml", text);
    let (code, out, err) = check(&path);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains(&format!("{}:5:", path.display())),
        "file:line missing: {first}"
    );
    assert!(
        first.contains("listeners[0].bogus_key"),
        "key path missing: {first}"
    );
    assert!(first.contains("unknown field"), "{first}");
    assert!(!out.contains("config OK"));
}

#[test]
fn check_unknown_top_level_section() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = format!("{GOOD}\nplugins:\n  - foo\n");
    let path = write(dir.path(), "top.yaml", &text);
    let (code, _, err) = check(&path);
    assert_eq!(code, 1);
    let line = line_of(&text, "plugins:");
    assert!(
        err.contains(&format!("{}:{line}:", path.display())),
        "{err}"
    );
    assert!(err.contains("plugins"), "{err}");
}

#[test]
fn check_undefined_cluster_names_chain_route_and_line() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = "listeners:\n  - name: pub\n    address: 127.0.0.1:1\n    chains: [r]\nchains:\n  r:\n    - type: request_id\n    - type: router\n      routes:\n        - name: hello\n          match: { path_exact: / }\n          respond: { body: hi }\n        - name: api\n          match: { path_prefix: / }\n          cluster: nope\nclusters:\n  real: { endpoints: [\"127.0.0.1:1\"] }\n";
    let path = write(dir.path(), "cluster.yaml", text);
    let (code, _, err) = check(&path);
    assert_eq!(code, 1, "{err}");
    let line = line_of(text, "- type: router");
    assert!(
        err.contains(&format!("{}:{line}:", path.display())),
        "{err}"
    );
    assert!(err.contains("chains.r[1] (router)"), "{err}");
    assert!(err.contains("routes[1] (api)"), "{err}");
    assert!(err.contains("`nope`"), "{err}");
    assert!(err.contains("defined: real"), "{err}");
}

#[test]
fn check_undefined_chain_names_listener() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = "listeners:\n  - name: pub\n    address: 127.0.0.1:1\n    chains: [r, missing]\nchains:\n  r:\n    - type: router\n      routes:\n        - { name: a, match: { path_prefix: / }, respond: { body: hi } }\n";
    let path = write(dir.path(), "chain.yaml", text);
    let (code, _, err) = check(&path);
    assert_eq!(code, 1);
    assert!(err.contains("listeners[0].chains"), "{err}");
    assert!(err.contains("`missing`"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn check_bad_duration_message() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = "listeners:\n  - name: pub\n    address: 127.0.0.1:1\n    chains: [r]\nchains:\n  r:\n    - type: router\n      routes:\n        - { name: api, match: { path_prefix: / }, cluster: real }\nclusters:\n  real:\n    endpoints: [\"127.0.0.1:1\"]\n    health_check:\n      type: http\n      interval: 5 parsecs\n";
    let path = write(dir.path(), "duration.yaml", text);
    let (code, _, err) = check(&path);
    assert_eq!(code, 1);
    let line = line_of(text, "5 parsecs");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains(&format!("{}:{line}:", path.display())),
        "{first}"
    );
    assert!(
        first.contains("clusters.real.health_check.interval"),
        "{first}"
    );
    assert!(first.contains("invalid duration `5 parsecs`"), "{first}");
    assert!(
        first.contains("250ms"),
        "the message shows the expected form: {first}"
    );
}

#[test]
fn check_bad_size_message() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = "listeners:\n  - name: pub\n    address: 127.0.0.1:1\n    chains: [r]\nchains:\n  r:\n    - type: body_limit\n      max_size: 10XB\n    - type: router\n      routes:\n        - { name: a, match: { path_prefix: / }, respond: { body: hi } }\n";
    let path = write(dir.path(), "size.yaml", text);
    let (code, _, err) = check(&path);
    assert_eq!(code, 1);
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains(&path.display().to_string()), "{first}");
    assert!(first.contains("chains.r[0]"), "{first}");
    assert!(
        first.contains("invalid size unit `XB` in `10XB`"),
        "{first}"
    );
    assert!(
        first.contains("KiB"),
        "the message lists the units: {first}"
    );
    // The line is the filter entry's or the key's.
    let entry = line_of(text, "- type: body_limit");
    assert!(
        first.contains(&format!("{}:{entry}:", path.display()))
            || first.contains(&format!("{}:{}:", path.display(), entry + 1)),
        "{first}"
    );
}

/// Errors inside a chain entry should point at the offending key's own line and name its full
/// key path, like errors elsewhere in the file do.
#[test]
fn check_errors_inside_filters_point_at_the_key() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = "listeners:\n  - name: pub\n    address: 127.0.0.1:1\n    chains: [r]\nchains:\n  r:\n    - type: body_limit\n      max_size: 10XB\n    - type: router\n      routes:\n        - { name: a, match: { path_prefix: / }, respond: { body: hi } }\n";
    let path = write(dir.path(), "size.yaml", text);
    let (_, _, err) = check(&path);
    let line = line_of(text, "max_size");
    assert!(
        err.contains(&format!("{}:{line}:", path.display())),
        "{err}"
    );
    assert!(err.contains("chains.r[0].max_size"), "{err}");

    let text = "listeners:\n  - name: pub\n    address: 127.0.0.1:1\n    chains: [r]\nchains:\n  r:\n    - type: router\n      routes:\n        - name: a\n          match: { path_prefx: / }\n          respond: { body: hi }\n";
    let path = write(dir.path(), "typo.yaml", text);
    let (_, _, err) = check(&path);
    let line = line_of(text, "path_prefx");
    assert!(
        err.contains(&format!("{}:{line}:", path.display())),
        "{err}"
    );
}

#[test]
fn check_unknown_filter_type_lists_known_types() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = "listeners:\n  - name: pub\n    address: 127.0.0.1:1\n    chains: [r]\nchains:\n  r:\n    - type: rate_limiter\n      rps: 5\n";
    let path = write(dir.path(), "type.yaml", text);
    let (code, _, err) = check(&path);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:7:", path.display())), "{err}");
    assert!(err.contains("rate_limit"), "{err}");
    assert!(
        err.contains("router") && err.contains("body_limit"),
        "{err}"
    );
}

#[test]
fn version_flag() {
    let (status, out, _) = run_to_end(&["--version"], CHECK_TIMEOUT);
    assert!(status.success());
    assert!(out.contains("stoa-gateway"), "{out}");
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}

/// A preset is built from flags: its errors name the flag or the preset, never a line of a
/// file the user did not write.
#[test]
fn preset_errors_name_the_flag_not_a_line() {
    for (args, says) in [
        (
            &["--mode=edge-mcp", "--mcp-upstream=notaurl"][..],
            "--mcp-upstream `notaurl`: not an http(s) URL",
        ),
        (
            &["--mode=proxy", "--upstream=http://a:99999"][..],
            "upstream `http://a:99999`: `99999` is not a port",
        ),
        (
            &["--mode=proxy", "--upstream=http://nosuchhost.invalid:1"][..],
            "the --mode=proxy preset (from the flags): clusters.upstream",
        ),
    ] {
        let mut args = args.to_vec();
        args.push("--check");
        let (status, out, err) = run_to_end(&args, CHECK_TIMEOUT);
        assert_eq!(status.code(), Some(1), "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("line "), "{args:?} cites a line: {err}");
    }
}

#[test]
fn mode_without_upstream_is_an_error() {
    let (status, _, err) = run_to_end(
        &["--mode=proxy", "--port=1", "--admin-address=127.0.0.1:1"],
        CHECK_TIMEOUT,
    );
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("--upstream"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_from_flags_without_config_file() {
    let up = echo("up").await;
    let gw = Gateway::builder()
        .arg("--mode=proxy")
        .arg("--port=@PORT@")
        .arg(format!("--upstream=http://{}", up.address()))
        .arg("--admin-address")
        .arg("127.0.0.1:@ADMIN@")
        .start()
        .await;
    let r = client()
        .get(gw.url("/anything?x=1"))
        .header("x-request-id", "preset-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "preset-1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["server_id"], "up");
    assert_eq!(v["path"], "/anything");
    assert_eq!(v["query"], "x=1");
    // The proxy preset does not preserve the client's Host.
    assert_eq!(v["headers"]["host"], up.address());
    // The preset has an access log.
    gw.wait_stdout_line("\"preset-1\"", Duration::from_secs(5))
        .await;
    let cfg: serde_json::Value = client()
        .get(gw.admin_url("/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["config"]["gateway"]["mode"], "proxy");
}

const ENV_FILE: &str = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
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
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_port_env_overrides_file_port() {
    let up = echo("up").await;
    let gw = Gateway::builder()
        .config(&ENV_FILE.replace("@UP@", &up.address()))
        .env("GATEWAY_PORT", "@PORT2@")
        .start()
        .await;
    let v = get_echo(&client(), &gw.url2("/via-env-port")).await;
    assert_eq!(v["server_id"], "up");
    // Nothing listens on the file's port.
    assert!(client().get(gw.url("/")).send().await.is_err());
    let cfg: serde_json::Value = client()
        .get(gw.admin_url("/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cfg["config"]["listeners"][0]["address"],
        format!("127.0.0.1:{}", gw.port2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_flag_and_config_env_var() {
    let up = echo("up").await;
    // GATEWAY_CONFIG instead of -c, and --port over the file's port.
    let gw = Gateway::builder()
        .config(&ENV_FILE.replace("@UP@", &up.address()))
        .no_config_flag()
        .env("GATEWAY_CONFIG", "@DIR@/gateway.yaml")
        .arg("--port=@PORT2@")
        .start()
        .await;
    let v = get_echo(&client(), &gw.url2("/x")).await;
    assert_eq!(v["server_id"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_from_env_without_file() {
    let up = echo("target").await;
    let gw = Gateway::builder()
        .env("GATEWAY_MODE", "shadow")
        .env("SHADOW_TARGET_BACKEND", format!("http://{}", up.address()))
        .env("GATEWAY_PORT", "@PORT@")
        .env("GATEWAY_ADMIN_ADDRESS", "127.0.0.1:@ADMIN@")
        .start()
        .await;
    let r = client()
        .get(gw.url("/shadowed"))
        .header("host", "service.internal")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["server_id"], "target");
    assert_eq!(v["path"], "/shadowed");
    // Shadow sits in front of an existing service: the client's Host is kept.
    assert_eq!(v["headers"]["host"], "service.internal");
    let cfg: serde_json::Value = client()
        .get(gw.admin_url("/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["config"]["gateway"]["mode"], "shadow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_mode_with_primary_gateway() {
    let up = echo("svc").await;
    let gw = Gateway::builder()
        .arg("--mode")
        .arg("sidecar")
        .arg("--port=@PORT@")
        .arg(format!("--upstream={}", up.address()))
        .arg("--admin-address=127.0.0.1:@ADMIN@")
        .env("SIDECAR_PRIMARY_GATEWAY", "kong")
        .start()
        .await;
    let r = client()
        .get(gw.url("/s"))
        .header("host", "svc.example")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["server_id"], "svc");
    assert_eq!(v["headers"]["host"], "svc.example");
    gw.wait_stderr("kong", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let up = echo("up").await;
    let gw = Gateway::start(&ENV_FILE.replace("@UP@", &up.address())).await;
    let cl = client();
    let r = cl.get(gw.admin_url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "ok");
    let r = cl.get(gw.admin_url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = cl.get(gw.admin_url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Requests are counted by listener, route and status; durations observed.
    for _ in 0..3 {
        get_echo(&cl, &gw.url("/m")).await;
    }
    gw.wait_metric(
        "stoa_requests_total",
        &[("listener", "pub"), ("route", "all"), ("status", "200")],
        Duration::from_secs(5),
        |v| v == Some(3.0),
    )
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "stoa_request_duration_seconds_count",
            &[("listener", "pub"), ("route", "all")]
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "stoa_config_reloads_total", &[("result", "ok")]),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&m, "stoa_config_reloads_total", &[("result", "error")]),
        Some(0.0)
    );
}

/// `/ready` is 503 until every cluster's first health check is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_first_health_check() {
    let up = echo("up").await;
    // The first health check takes 3 s to answer (its timeout is 10 s).
    up.health_delay_ms
        .store(3000, std::sync::atomic::Ordering::SeqCst);
    let yaml = ENV_FILE.replace("@UP@", &up.address()).replace(
        "clusters:\n  up: { endpoints: [\"",
        "clusters:\n  up: { health_check: { path: /health, interval: 30s, timeout: 10s }, endpoints: [\"",
    );
    assert!(yaml.contains("health_check"), "{yaml}");
    let mut gw = Gateway::builder()
        .config(&yaml)
        .wait_ready(false)
        .start()
        .await;
    let cl = client();
    // The first answer of the admin listener: not ready, because of the health check.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Ok(r) = cl.get(gw.admin_url("/ready")).send().await {
            break (r.status().as_u16(), r.text().await.unwrap_or_default());
        }
        assert!(std::time::Instant::now() < deadline, "admin never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first.0, 503, "{first:?}");
    assert!(first.1.contains("health check"), "{first:?}");
    gw.wait_ready().await;
    let ep = up.address();
    assert_eq!(
        gw.metric(
            "stoa_upstream_healthy",
            &[("cluster", "up"), ("endpoint", ep.as_str())]
        )
        .await,
        Some(1.0)
    );
}

#[test]
fn every_shipped_config_is_valid() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&conf).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (code, out, err) = check(&path);
            assert_eq!(code, 0, "{}:\n{out}\n{err}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "expected the shipped configs in {}",
        conf.display()
    );
}

#[test]
fn check_a_read_buffer_over_one_mebibyte_is_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let text = "listeners:\n  - name: pub\n    address: 127.0.0.1:1\n    chains: [r]\n    http: { read_buffer: 2MiB }\nchains:\n  r:\n    - type: router\n      routes:\n        - { name: a, match: { path_prefix: / }, respond: { body: hi } }\n";
    let path = write(dir.path(), "buffer.yaml", text);
    let (code, _, err) = check(&path);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("listeners[0].http.read_buffer"), "{err}");
    assert!(err.contains("more than the 1 MiB"), "{err}");
    let fine = write(
        dir.path(),
        "fine.yaml",
        &text.replace("read_buffer: 2MiB", "read_buffer: 1KiB"),
    );
    let (code, out, err) = check(&fine);
    assert_eq!(code, 0, "{out}{err}");
}
