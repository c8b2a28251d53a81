//! The per-cluster circuit breaker end to end: the real binary in front of a real upstream whose
//! failures are switched on and off (or of a port nobody listens on).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use common::*;
use reqwest::header::HeaderMap;
use tokio::task::JoinHandle;

const BREAKER_BODY: &str = "circuit breaker open: the upstream is failing";

/// An upstream that answers `status` (500 unless changed) while `failing` is set or the request
/// has `x-fail`, else 200 `ok`; counts every request when it arrives (before `delay_ms`).
struct Flaky {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct FlakyState {
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
}

impl Flaky {
    fn address(&self) -> String {
        self.addr.to_string()
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
    fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn flaky_handler(State(st): State<FlakyState>, req: Request) -> Response {
    st.hits.fetch_add(1, Ordering::SeqCst);
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if st.failing.load(Ordering::SeqCst) || req.headers().contains_key("x-fail") {
        let status = StatusCode::from_u16(st.status.load(Ordering::SeqCst)).unwrap();
        (status, "upstream failure").into_response()
    } else {
        (StatusCode::OK, "ok").into_response()
    }
}

async fn flaky() -> Flaky {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let st = FlakyState {
        hits: Arc::new(AtomicUsize::new(0)),
        failing: Arc::new(AtomicBool::new(false)),
        status: Arc::new(AtomicU16::new(500)),
        delay_ms: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new().fallback(flaky_handler).with_state(st.clone());
    Flaky {
        addr,
        hits: st.hits,
        failing: st.failing,
        status: st.status,
        delay_ms: st.delay_ms,
        task: tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }),
    }
}

/// Everything routed to cluster `b` at `endpoint`, whose `circuit_breaker:` body (YAML at column
/// 0) is `breaker`.
fn config(endpoint: &str, breaker: &str) -> String {
    let body: String = breaker.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        r#"
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
          cluster: b
clusters:
  b:
    endpoints: ["{endpoint}"]
    circuit_breaker:
{body}"#
    )
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

async fn get(cl: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = cl.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// Check a fast refusal of the open breaker; returns its `Retry-After`.
fn assert_breaker_refusal(a: &Answer) -> u64 {
    assert_eq!(a.status, 503, "{}", a.body);
    let v: serde_json::Value =
        serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", a.body));
    assert_eq!(v["error"], BREAKER_BODY, "{}", a.body);
    assert_eq!(v["status"], 503);
    let retry = a
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", a.headers))
        .to_str()
        .unwrap();
    let retry: u64 = retry.parse().expect("Retry-After in seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    retry
}

/// The sum of every series of `name` whose labels include `labels` (0 when there is none).
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some(x) => x,
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

async fn transitions(gw: &Gateway, state: &str) -> f64 {
    metric_sum(
        &gw.metrics().await,
        "stoa_circuit_breaker_transitions_total",
        &[("cluster", "b"), ("state", state)],
    )
}

async fn state(gw: &Gateway) -> Option<f64> {
    gw.metric("stoa_circuit_breaker_state", &[("cluster", "b")])
        .await
}

/// Wait (bounded) until the breaker state gauge is `want` (0 closed, 1 open, 2 half-open). The
/// outcome of a request is recorded when it is logged, just after its answer went out.
async fn wait_state(gw: &Gateway, want: f64) {
    gw.wait_metric(
        "stoa_circuit_breaker_state",
        &[("cluster", "b")],
        Duration::from_secs(10),
        |v| v == Some(want),
    )
    .await;
}

async fn wait_transitions(gw: &Gateway, to: &str, n: f64) {
    gw.wait_metric(
        "stoa_circuit_breaker_transitions_total",
        &[("cluster", "b"), ("state", to)],
        Duration::from_secs(10),
        |v| v == Some(n),
    )
    .await;
}

/// Wait (bounded) until the gateway has logged `n` requests in all.
async fn wait_logged(gw: &Gateway, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = gw.metrics().await;
        let v = metric_sum(&text, "stoa_requests_total", &[]);
        if v == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stoa_requests_total is {v}, expected {n}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send requests (100 ms apart) until one is not a breaker refusal; every refusal on the way must
/// leave the upstream alone. Bounded.
async fn until_let_through(gw: &Gateway, cl: &reqwest::Client, hits: impl Fn() -> usize) -> Answer {
    let before = hits();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = get(cl, &gw.url("/p"), &[]).await;
        let refused =
            a.status == 503 && a.body.contains("circuit breaker open") && hits() == before;
        if !refused {
            return a;
        }
        assert_breaker_refusal(&a);
        assert!(
            Instant::now() < deadline,
            "the breaker let no probe through within 20s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CONSECUTIVE: &str =
    "consecutive_failures: 3\nfailure_ratio: 0\nopen_for: 3s\nhalf_open_requests: 1";

/// Open the breaker of `gw` with three upstream 500s in a row.
async fn open_with_three_failures(gw: &Gateway, up: &Flaky, cl: &reqwest::Client) {
    up.set_failing(true);
    for i in 0..3 {
        let a = get(cl, &gw.url("/fail"), &[]).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (500, "upstream failure"),
            "failure {i} is passed through while the breaker is closed"
        );
    }
    assert_eq!(up.hits(), 3);
    wait_state(gw, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_open_then_a_probe_closes() {
    let up = flaky().await;
    let gw = Gateway::start(&config(&up.address(), CONSECUTIVE)).await;
    let cl = client();
    assert_eq!(state(&gw).await, Some(0.0), "{}", gw.metrics().await);
    assert_eq!(get(&cl, &gw.url("/ok"), &[]).await.status, 200);
    up.hits.store(0, Ordering::SeqCst);

    open_with_three_failures(&gw, &up, &cl).await;
    assert_eq!(transitions(&gw, "open").await, 1.0);

    // Open: fast 503 without contacting the upstream.
    for _ in 0..3 {
        let a = get(&cl, &gw.url("/x"), &[]).await;
        let retry = assert_breaker_refusal(&a);
        assert!(retry <= 3, "Retry-After {retry} beyond open_for");
    }
    assert_eq!(
        up.hits(),
        3,
        "the open breaker must not contact the upstream"
    );
    gw.wait_metric(
        "stoa_filter_rejections_total",
        &[("filter", "circuit_breaker"), ("reason", "open")],
        Duration::from_secs(10),
        |v| v == Some(3.0),
    )
    .await;

    // The upstream recovers; after open_for exactly one probe goes through and closes.
    up.set_failing(false);
    let probe = until_let_through(&gw, &cl, || up.hits()).await;
    assert_eq!((probe.status, probe.body.as_str()), (200, "ok"));
    assert_eq!(up.hits(), 4, "one probe");
    wait_state(&gw, 0.0).await;
    assert_eq!(transitions(&gw, "half_open").await, 1.0);
    assert_eq!(transitions(&gw, "closed").await, 1.0);
    assert_eq!(transitions(&gw, "open").await, 1.0);

    for _ in 0..5 {
        assert_eq!(get(&cl, &gw.url("/ok"), &[]).await.status, 200);
    }
    assert_eq!(up.hits(), 9);
    assert_eq!(state(&gw).await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_reopens() {
    let up = flaky().await;
    let gw = Gateway::start(&config(&up.address(), CONSECUTIVE)).await;
    let cl = client();
    open_with_three_failures(&gw, &up, &cl).await;

    // Still failing: the probe gets the upstream's 500 and the breaker opens again.
    let probe = until_let_through(&gw, &cl, || up.hits()).await;
    assert_eq!(
        (probe.status, probe.body.as_str()),
        (500, "upstream failure")
    );
    assert_eq!(up.hits(), 4, "one probe");
    wait_transitions(&gw, "open", 2.0).await;
    assert_eq!(transitions(&gw, "half_open").await, 1.0);
    assert_eq!(transitions(&gw, "closed").await, 0.0);
    assert_eq!(state(&gw).await, Some(1.0));

    // Open again for a full open_for.
    let a = get(&cl, &gw.url("/x"), &[]).await;
    let retry = assert_breaker_refusal(&a);
    assert!(retry <= 3, "Retry-After {retry}");
    assert_eq!(up.hits(), 4);

    // And it still recovers once the upstream does.
    up.set_failing(false);
    let probe = until_let_through(&gw, &cl, || up.hits()).await;
    assert_eq!(probe.status, 200);
    wait_state(&gw, 0.0).await;
    assert_eq!(transitions(&gw, "half_open").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_lets_one_probe_through_at_a_time() {
    let up = flaky().await;
    let gw = Gateway::start(&config(&up.address(), CONSECUTIVE)).await;
    let cl = client();
    open_with_three_failures(&gw, &up, &cl).await;

    // A healthy but slow upstream: the probe stays in flight for a while.
    up.set_failing(false);
    up.set_delay_ms(1500);
    let prober = {
        let url = gw.url("/p");
        let hits = up.hits.clone();
        tokio::spawn(async move {
            let cl = client();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let a = get(&cl, &url, &[]).await;
                if a.status != 503 || !a.body.contains("circuit breaker open") {
                    return (a.status, a.body, hits.load(Ordering::SeqCst));
                }
                assert!(Instant::now() < deadline, "no probe within 20s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Wait until the probe reached the upstream.
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.hits() < 4 {
        assert!(
            Instant::now() < deadline,
            "the probe never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Half-open with its one probe in flight: everything else is refused.
    let a = get(&cl, &gw.url("/other"), &[]).await;
    let retry = assert_breaker_refusal(&a);
    assert_eq!(up.hits(), 4, "only the probe reaches the upstream");
    let (status, body, _) = prober.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(retry >= 1);
    wait_state(&gw, 0.0).await;
    up.set_delay_ms(0);
    assert_eq!(get(&cl, &gw.url("/ok"), &[]).await.status, 200);
    assert_eq!(up.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_open_the_breaker() {
    let port = closed_port();
    let gw = Gateway::start(&config(&format!("127.0.0.1:{port}"), CONSECUTIVE)).await;
    // The gateway closes connections after error answers: a new connection per request.
    let cl = fresh_client();
    for i in 0..3 {
        let a = get(&cl, &gw.url("/c"), &[]).await;
        assert_eq!(a.status, 502, "attempt {i}: {}", a.body);
    }
    wait_state(&gw, 1.0).await;
    let connects = || async {
        metric_sum(
            &gw.metrics().await,
            "stoa_upstream_connect_failures_total",
            &[("cluster", "b")],
        )
    };
    let before = connects().await;
    assert!(before >= 3.0, "connect failures: {before}");

    let a = get(&cl, &gw.url("/c"), &[]).await;
    assert_breaker_refusal(&a);
    assert_eq!(
        connects().await,
        before,
        "the open breaker must not try to connect"
    );

    // Something listens on the port now: the probe succeeds and the breaker closes.
    let up = echo_on("b", port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = get(&cl, &gw.url("/c"), &[]).await;
        if a.status == 200 {
            break;
        }
        assert_breaker_refusal(&a);
        assert!(Instant::now() < deadline, "no successful probe within 20s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.hits(), 1);
    wait_state(&gw, 0.0).await;
    assert_eq!(get(&cl, &gw.url("/c"), &[]).await.status, 200);
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_ratio_opens_once_min_requests_are_seen() {
    let up = flaky().await;
    let gw = Gateway::start(&config(
        &up.address(),
        "consecutive_failures: 0\nfailure_ratio: 0.5\nmin_requests: 10\nwindow: 60s\nopen_for: 30s",
    ))
    .await;
    let cl = client();
    // Success, failure, success, ...: 9 requests, 4 failures; below min_requests anyway.
    for i in 0..9 {
        let fail = i % 2 == 1;
        let h: &[(&str, &str)] = if fail { &[("x-fail", "1")] } else { &[] };
        let a = get(&cl, &gw.url("/r"), h).await;
        assert_eq!(a.status, if fail { 500 } else { 200 }, "request {i}");
    }
    wait_logged(&gw, 9.0).await;
    // Everything logged is recorded: still closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state(&gw).await, Some(0.0));
    assert_eq!(transitions(&gw, "open").await, 0.0);

    // The 10th: a failure, 5 of 10 = 0.5 reaches the ratio.
    let a = get(&cl, &gw.url("/r"), &[("x-fail", "1")]).await;
    assert_eq!(a.status, 500);
    wait_state(&gw, 1.0).await;
    assert_eq!(up.hits(), 10);
    let a = get(&cl, &gw.url("/r"), &[]).await;
    assert_breaker_refusal(&a);
    assert_eq!(up.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failure_statuses_count() {
    let up = flaky().await;
    let gw = Gateway::start(&config(
        &up.address(),
        "consecutive_failures: 3\nfailure_ratio: 0\nopen_for: 30s\nfailure_statuses: [503]",
    ))
    .await;
    let cl = client();
    up.set_failing(true);
    // 500 is not a failure status here.
    for i in 0..6 {
        assert_eq!(
            get(&cl, &gw.url("/s"), &[]).await.status,
            500,
            "request {i}"
        );
    }
    wait_logged(&gw, 6.0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state(&gw).await, Some(0.0));
    assert_eq!(up.hits(), 6);

    // 503 is.
    up.set_status(503);
    for i in 0..3 {
        let a = get(&cl, &gw.url("/s"), &[]).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (503, "upstream failure"),
            "request {i}"
        );
    }
    wait_state(&gw, 1.0).await;
    assert_breaker_refusal(&get(&cl, &gw.url("/s"), &[]).await);
    assert_eq!(up.hits(), 9);
}

/// A reload that is rejected keeps the running config, breaker included: the breaker stays open
/// and `stoa_circuit_breaker_state` must keep saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_reload_keeps_the_open_state_and_its_gauge() {
    let up = flaky().await;
    let good = config(&up.address(), CONSECUTIVE);
    let gw = Gateway::builder()
        .config(&good)
        .watch_config(false)
        .start()
        .await;
    let cl = client();
    open_with_three_failures(&gw, &up, &cl).await;

    // Same cluster; a rate_limit filter without any limit, which fails to build.
    let bad = good.replace(
        "          cluster: b\n",
        "          cluster: b\n    - type: rate_limit\n      dry_run: true\n",
    );
    assert_ne!(bad, good);
    gw.write_config(&bad);
    gw.signal(libc::SIGHUP);
    gw.wait_metric(
        "stoa_config_reloads_total",
        &[("result", "error")],
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;

    // The running breaker is still open...
    assert_breaker_refusal(&get(&cl, &gw.url("/x"), &[]).await);
    assert_eq!(up.hits(), 3);
    // ...and the gauge must say so.
    assert_eq!(
        state(&gw).await,
        Some(1.0),
        "the state gauge reports the breaker closed while it refuses every request"
    );
}
