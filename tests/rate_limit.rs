//! The `rate_limit` filter end to end: the real binary, real upstreams and a real
//! `redis-server` (local limits, keys, several limits per request, dry run, cluster-wide limits
//! through Redis, and Redis going away, hanging and coming back).

mod common;

use std::time::{Duration, Instant};

use common::redis::{RedisServer, Resp};
use common::*;
use reqwest::header::HeaderMap;

/// A hang guard for one request (not a performance bound): Redis' own timeout in these configs
/// is 50 ms to 500 ms, a request stuck on Redis would wait far longer than this.
const HANG_GUARD: Duration = Duration::from_secs(2);

/// Every header the filter may add.
const RATE_HEADERS: &[&str] = &[
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// One listener: a router sending everything to cluster `b`, then the `rate_limit` filter whose
/// body (YAML at column 0) is `rate_limit`.
fn config(b: &Upstream, rate_limit: &str) -> String {
    let body: String = rate_limit.lines().map(|l| format!("      {l}\n")).collect();
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
    - type: rate_limit
{body}clusters:
  b: {{ endpoints: ["{b}"] }}
"#,
        b = b.address()
    )
}

/// A Redis section for `config` (at column 0).
fn redis_section(redis: &RedisServer, rest: &str) -> String {
    let rest: String = rest.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "redis:\n  url: \"{}\"\n  key_prefix: \"it:rl:\"\n{rest}",
        redis.url()
    )
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn num(&self, name: &str) -> u64 {
        let v = self
            .header(name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers));
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: not an integer: {v:?}"))
    }

    fn has_no_rate_headers(&self) -> bool {
        RATE_HEADERS.iter().all(|h| self.header(h).is_none())
    }

    /// The `t=` of the `RateLimit` header, after checking its `"<limit>";r=<remaining>;` start.
    fn ratelimit_reset(&self, limit: &str, remaining: u64) -> u64 {
        let v = self
            .header("ratelimit")
            .unwrap_or_else(|| panic!("no RateLimit header: {:?}", self.headers));
        let prefix = format!("\"{limit}\";r={remaining};t=");
        let t = v
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("RateLimit {v:?} does not start with {prefix:?}"));
        t.parse()
            .unwrap_or_else(|_| panic!("RateLimit t= is not an integer: {v:?}"))
    }
}

/// GET `url` with extra headers, bounded by the hang guard.
async fn get(cl: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = cl.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let started = Instant::now();
    let r = tokio::time::timeout(HANG_GUARD, async {
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
    })
    .await;
    r.unwrap_or_else(|_| {
        panic!(
            "GET {url} {headers:?} not answered within {HANG_GUARD:?} (started {:?} ago): the request hangs",
            started.elapsed()
        )
    })
}

/// GET with the key header `x-k`.
async fn get_k(cl: &reqwest::Client, url: &str, key: &str) -> Answer {
    get(cl, url, &[("x-k", key)]).await
}

fn statuses(answers: &[Answer]) -> Vec<u16> {
    answers.iter().map(|a| a.status).collect()
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
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

async fn decisions(gw: &Gateway, limit: &str, result: &str) -> f64 {
    metric_sum(
        &gw.metrics().await,
        "stoa_rate_limit_decisions_total",
        &[("limit", limit), ("result", result)],
    )
}

async fn backend_failures(gw: &Gateway, mode: &str) -> f64 {
    metric_sum(
        &gw.metrics().await,
        "stoa_rate_limit_backend_failures_total",
        &[("mode", mode)],
    )
}

/// Send requests (through `gw`, key header `x-k: probe-<n>`, a new key each time, so no budget
/// that matters is used) until one of them was decided by Redis: its key appears there. Proves
/// that the gateway uses Redis (again). Bounded.
async fn wait_redis_path(gw: &Gateway, redis: &RedisServer, limit: &str, tag: &str) {
    let cl = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        let key = format!("probe-{tag}-{n}");
        let a = get_k(&cl, &gw.url("/probe"), &key).await;
        assert!(a.status < 500 || a.status == 503, "probe: {}", a.status);
        let redis_key = format!("it:rl:{limit}:{key}");
        if redis.keys(&redis_key) == vec![redis_key.clone()] {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "the gateway did not use Redis within 20s (last probe {key}: {}); keys: {:?}\nstderr:\n{}",
                a.status,
                redis.keys("*"),
                gw.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_burst_admits_exactly_the_budget_with_headers() {
    let b = echo("b").await;
    let gw = Gateway::start(&config(
        &b,
        "limits:\n  - { name: burst, requests: 5, per: 10m }",
    ))
    .await;
    let cl = client();
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(get(&cl, &gw.url("/x"), &[]).await);
    }
    assert_eq!(statuses(&answers), [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(b.hits(), 5, "refused requests must not reach the upstream");

    for (i, a) in answers[..5].iter().enumerate() {
        let remaining = 4 - i as u64;
        assert_eq!(a.header("ratelimit-policy"), Some("\"burst\";q=5;w=600"));
        assert_eq!(a.num("x-ratelimit-limit"), 5);
        assert_eq!(a.num("x-ratelimit-remaining"), remaining, "answer {i}");
        let t = a.ratelimit_reset("burst", remaining);
        assert_eq!(t, a.num("x-ratelimit-reset"));
        assert!((1..=600).contains(&t), "reset {t}");
        // The echo upstream's answer came through.
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["server_id"], "b");
    }
    for a in &answers[5..] {
        assert_eq!(
            a.header("content-type"),
            Some("application/json"),
            "{:?}",
            a.headers
        );
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "rate limit exceeded", "status": 429})
        );
        let retry = a.num("retry-after");
        // One request comes back every 10m / 5 = 120 s.
        assert!((1..=120).contains(&retry), "Retry-After {retry}");
        assert_eq!(a.header("ratelimit-policy"), Some("\"burst\";q=5;w=600"));
        assert_eq!(a.num("x-ratelimit-limit"), 5);
        assert_eq!(a.num("x-ratelimit-remaining"), 0);
        let t = a.ratelimit_reset("burst", 0);
        assert_eq!(t, a.num("x-ratelimit-reset"));
        assert!((1..=600).contains(&t), "reset {t}");
    }

    assert_eq!(decisions(&gw, "burst", "allowed").await, 5.0);
    assert_eq!(decisions(&gw, "burst", "limited").await, 3.0);
    assert_eq!(decisions(&gw, "burst", "dry_run_limited").await, 0.0);
    // Rejections are counted when the request is logged, just after the answer.
    gw.wait_metric(
        "stoa_filter_rejections_total",
        &[("filter", "rate_limit"), ("reason", "limited")],
        Duration::from_secs(10),
        |v| v == Some(3.0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_keys_give_each_tenant_its_own_budget() {
    let b = echo("b").await;
    let gw = Gateway::start(&config(
        &b,
        "key: \"{{ header.x-tenant }}\"\nlimits:\n  - { name: tenant, requests: 2, per: 10m }",
    ))
    .await;
    let cl = client();
    let tenant = |t: &'static str| [("x-tenant", t)];
    let url = gw.url("/t");

    let a: Vec<Answer> = vec![
        get(&cl, &url, &tenant("a")).await,
        get(&cl, &url, &tenant("a")).await,
        get(&cl, &url, &tenant("a")).await,
    ];
    assert_eq!(statuses(&a), [200, 200, 429], "tenant a");
    // Tenant a is out of budget, tenant b is not.
    let b1 = get(&cl, &url, &tenant("b")).await;
    assert_eq!(b1.status, 200, "tenant b: {}", b1.body);
    assert_eq!(b1.num("x-ratelimit-remaining"), 1);
    assert_eq!(get(&cl, &url, &tenant("b")).await.status, 200);
    assert_eq!(get(&cl, &url, &tenant("b")).await.status, 429);
    assert_eq!(get(&cl, &url, &tenant("a")).await.status, 429);

    // Without the header the key renders empty and falls back to the client IP: a budget of its
    // own, the same one as a tenant literally named 127.0.0.1.
    assert_eq!(get(&cl, &url, &[]).await.status, 200);
    assert_eq!(get(&cl, &url, &[]).await.status, 200);
    assert_eq!(get(&cl, &url, &[]).await.status, 429);
    assert_eq!(
        get(&cl, &url, &tenant("127.0.0.1")).await.status,
        429,
        "an empty key must fall back to the client IP"
    );
    assert_eq!(get(&cl, &url, &tenant("c")).await.status, 200);
    assert_eq!(b.hits(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limits_per_request_the_quota_refuses() {
    let b = echo("b").await;
    let gw = Gateway::start(&config(
        &b,
        "requests_per_second: 100\nlimits:\n  - { name: quota, requests: 3, per: 1m }",
    ))
    .await;
    let cl = client();
    let policy = "\"per_second\";q=100;w=1, \"quota\";q=3;w=60";
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&cl, &gw.url("/q"), &[]).await);
    }
    assert_eq!(statuses(&answers), [200, 200, 200, 429]);
    for (i, a) in answers[..3].iter().enumerate() {
        // The most constraining limit is described: the quota (2/3 left) rather than the
        // per-second burst (99/100 left).
        let remaining = 2 - i as u64;
        assert_eq!(a.header("ratelimit-policy"), Some(policy));
        a.ratelimit_reset("quota", remaining);
        assert_eq!(a.num("x-ratelimit-limit"), 3);
        assert_eq!(a.num("x-ratelimit-remaining"), remaining);
    }
    let refused = &answers[3];
    assert_eq!(refused.header("ratelimit-policy"), Some(policy));
    let t = refused.ratelimit_reset("quota", 0);
    assert!((1..=60).contains(&t), "reset {t}");
    assert_eq!(refused.num("x-ratelimit-limit"), 3);
    assert_eq!(refused.num("x-ratelimit-remaining"), 0);
    let retry = refused.num("retry-after");
    // One quota request comes back every 20 s.
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(b.hits(), 3);

    assert_eq!(decisions(&gw, "quota", "allowed").await, 3.0);
    assert_eq!(decisions(&gw, "quota", "limited").await, 1.0);
    assert_eq!(decisions(&gw, "per_second", "limited").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_but_never_refuses() {
    let b = echo("b").await;
    let gw = Gateway::start(&config(
        &b,
        "dry_run: true\nlimits:\n  - { name: burst, requests: 2, per: 10m }",
    ))
    .await;
    let cl = client();
    for i in 0..5 {
        let a = get(&cl, &gw.url("/d"), &[]).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert!(
            a.has_no_rate_headers(),
            "dry run must not add headers: {:?}",
            a.headers
        );
    }
    assert_eq!(b.hits(), 5);
    assert_eq!(decisions(&gw, "burst", "allowed").await, 2.0);
    assert_eq!(decisions(&gw, "burst", "dry_run_limited").await, 3.0);
    assert_eq!(decisions(&gw, "burst", "limited").await, 0.0);
    // Give the logging phase a moment, then make sure nothing was counted as a rejection.
    gw.wait_metric(
        "stoa_requests_total",
        &[("status", "200")],
        Duration::from_secs(10),
        |v| v == Some(5.0),
    )
    .await;
    assert_eq!(
        metric_sum(
            &gw.metrics().await,
            "stoa_filter_rejections_total",
            &[("filter", "rate_limit")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_false_keeps_allowed_answers_clean() {
    let b = echo("b").await;
    let gw = Gateway::start(&config(
        &b,
        "headers: false\nlimits:\n  - { name: one, requests: 1, per: 10m }",
    ))
    .await;
    let cl = client();
    let ok = get(&cl, &gw.url("/h"), &[]).await;
    assert_eq!(ok.status, 200);
    assert!(ok.has_no_rate_headers(), "{:?}", ok.headers);
    let refused = get(&cl, &gw.url("/h"), &[]).await;
    assert_eq!(refused.status, 429);
    // A refusal still explains itself.
    assert!(refused.num("retry-after") >= 1);
    assert_eq!(refused.num("x-ratelimit-limit"), 1);
    refused.ratelimit_reset("one", 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_limits_are_shared_by_two_gateways() {
    let redis = RedisServer::start();
    let b = echo("b").await;
    // fail_closed and a generous timeout: if Redis did not decide a request it is a 503, never a
    // local (per-instance) admission, so the count below is exact.
    let yaml = config(
        &b,
        &format!(
            "limits:\n  - {{ name: shared, requests: 10, per: 10m }}\n{}",
            redis_section(&redis, "timeout: 2s\nfailure_mode: fail_closed")
        ),
    );
    let gw1 = Gateway::start(&yaml).await;
    let gw2 = Gateway::start(&yaml).await;
    assert_ne!(gw1.port, gw2.port);

    let url = |i: usize| {
        let gw = if i.is_multiple_of(2) { &gw1 } else { &gw2 };
        gw.url(&format!("/s?i={i}"))
    };
    // Four one after another, alternating (so each gateway admits some), then 26 at once.
    let mut answers = Vec::new();
    let cl = client();
    for i in 0..4 {
        let a = get(&cl, &url(i), &[]).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(a.num("x-ratelimit-remaining"), 9 - i as u64, "request {i}");
        answers.push(a);
    }
    let mut tasks = Vec::new();
    for i in 4..30 {
        let url = url(i);
        tasks.push(tokio::spawn(async move {
            let cl = client();
            get(&cl, &url, &[]).await
        }));
    }
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let others: Vec<(u16, &str)> = answers
        .iter()
        .filter(|a| a.status != 200 && a.status != 429)
        .map(|a| (a.status, a.body.as_str()))
        .collect();
    assert!(others.is_empty(), "unexpected answers: {others:?}");
    assert_eq!(
        count(&answers, 200),
        10,
        "exactly the shared budget is admitted across both gateways"
    );
    assert_eq!(count(&answers, 429), 20);
    assert_eq!(b.hits(), 10);

    // Redis decided every admission in turn: the remaining counts are 9, 8, ..., 0 once each.
    let mut remaining: Vec<u64> = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.num("x-ratelimit-remaining"))
        .collect();
    remaining.sort();
    assert_eq!(remaining, (0..10).collect::<Vec<u64>>());
    for a in answers.iter().filter(|a| a.status == 429) {
        assert!(a.num("retry-after") >= 1);
        assert_eq!(a.num("x-ratelimit-remaining"), 0);
        a.ratelimit_reset("shared", 0);
    }

    let key = "it:rl:shared:127.0.0.1";
    assert_eq!(redis.keys("it:rl:*"), vec![key.to_string()]);
    let ttl = redis.cmd(&["PTTL", key]).as_int().unwrap();
    assert!(ttl > 0, "the key must expire (PTTL {ttl})");

    let allowed =
        decisions(&gw1, "shared", "allowed").await + decisions(&gw2, "shared", "allowed").await;
    let limited =
        decisions(&gw1, "shared", "limited").await + decisions(&gw2, "shared", "limited").await;
    assert_eq!((allowed, limited), (10.0, 20.0));
    assert!(
        decisions(&gw1, "shared", "allowed").await > 0.0
            && decisions(&gw2, "shared", "allowed").await > 0.0,
        "both gateways admitted some"
    );
    assert_eq!(backend_failures(&gw1, "fail_closed").await, 0.0);
    assert_eq!(backend_failures(&gw2, "fail_closed").await, 0.0);
}

const FIVE_BY_KEY: &str =
    "key: \"{{ header.x-k }}\"\nlimits:\n  - { name: five, requests: 5, per: 10m }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_uses_local_limits_when_redis_is_down() {
    let mut redis = RedisServer::start();
    let b = echo("b").await;
    let gw = Gateway::start(&config(
        &b,
        &format!(
            "{FIVE_BY_KEY}\n{}",
            redis_section(
                &redis,
                "timeout: 50ms\nfailure_mode: fail_open\nretry_interval: 1s"
            )
        ),
    ))
    .await;
    wait_redis_path(&gw, &redis, "five", "up").await;
    let cl = client();
    // Redis decides: two of the five of key `k` are used there.
    assert_eq!(get_k(&cl, &gw.url("/o"), "k").await.status, 200);
    assert_eq!(get_k(&cl, &gw.url("/o"), "k").await.status, 200);
    assert_eq!(redis.keys("it:rl:five:k"), vec!["it:rl:five:k".to_string()]);
    assert_eq!(backend_failures(&gw, "fail_open").await, 0.0);

    redis.stop();
    assert!(!redis.is_running());
    // The local limiter (same limit, per instance) decides now: 5 of key `down`, then 429.
    let mut answers = Vec::new();
    for _ in 0..7 {
        answers.push(get_k(&cl, &gw.url("/o"), "down").await);
    }
    assert_eq!(
        statuses(&answers),
        [200, 200, 200, 200, 200, 429, 429],
        "bodies: {:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    assert_eq!(answers[0].num("x-ratelimit-limit"), 5);
    assert_eq!(answers[0].num("x-ratelimit-remaining"), 4);
    assert!(
        backend_failures(&gw, "fail_open").await > 0.0,
        "{}",
        gw.metrics().await
    );
    assert_eq!(backend_failures(&gw, "fail_closed").await, 0.0);
    // Still answering later (after the retry interval Redis is tried again, and fails again).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let a = get_k(&cl, &gw.url("/o"), "later").await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_when_redis_hangs() {
    let redis = RedisServer::start();
    let b = echo("b").await;
    let gw = Gateway::start(&config(
        &b,
        &format!(
            "{FIVE_BY_KEY}\n{}",
            redis_section(
                &redis,
                "timeout: 50ms\nfailure_mode: fail_open\nretry_interval: 1s"
            )
        ),
    ))
    .await;
    wait_redis_path(&gw, &redis, "five", "up").await;
    let cl = client();

    redis.freeze();
    // Connections are accepted (backlog) but nothing answers: the timeout bounds each request.
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get_k(&cl, &gw.url("/f"), "frozen").await);
    }
    // Try Redis again after the retry interval while it still hangs.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    answers.push(get_k(&cl, &gw.url("/f"), "frozen").await);
    redis.thaw();
    assert_eq!(
        statuses(&answers),
        [200, 200, 200, 200, 200],
        "bodies: {:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    assert!(
        backend_failures(&gw, "fail_open").await >= 2.0,
        "{}",
        gw.metrics().await
    );
    // After the thaw the gateway goes back to Redis.
    wait_redis_path(&gw, &redis, "five", "thawed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_with_503_when_redis_is_down() {
    let mut redis = RedisServer::start();
    let b = echo("b").await;
    let gw = Gateway::start(&config(
        &b,
        &format!(
            "{FIVE_BY_KEY}\n{}",
            redis_section(
                &redis,
                "timeout: 50ms\nfailure_mode: fail_closed\nretry_interval: 1s"
            )
        ),
    ))
    .await;
    wait_redis_path(&gw, &redis, "five", "up").await;
    let cl = client();
    let hits = b.hits();

    redis.stop();
    for i in 0..3 {
        let a = get_k(&cl, &gw.url("/c"), "k").await;
        assert_eq!(a.status, 503, "request {i}: {}", a.body);
        assert_eq!(a.header("retry-after"), Some("1"));
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "rate limiting is unavailable", "status": 503})
        );
    }
    assert_eq!(
        b.hits(),
        hits,
        "refused requests must not reach the upstream"
    );
    assert!(
        backend_failures(&gw, "fail_closed").await >= 3.0,
        "{}",
        gw.metrics().await
    );
    assert_eq!(backend_failures(&gw, "fail_open").await, 0.0);
    gw.wait_metric(
        "stoa_filter_rejections_total",
        &[("filter", "rate_limit"), ("reason", "backend_unavailable")],
        Duration::from_secs(10),
        |v| v == Some(3.0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_restores_cluster_wide_limits() {
    let mut redis = RedisServer::start();
    let b = echo("b").await;
    // A 500 ms Redis timeout: long enough that a busy machine does not fall back to the local
    // limiters by accident while Redis is up (which would make the counts below inexact).
    let yaml = config(
        &b,
        &format!(
            "key: \"{{{{ header.x-k }}}}\"\nlimits:\n  - {{ name: three, requests: 3, per: 10m }}\n{}",
            redis_section(
                &redis,
                "timeout: 500ms\nfailure_mode: fail_open\nretry_interval: 1s"
            )
        ),
    );
    let gw1 = Gateway::start(&yaml).await;
    let gw2 = Gateway::start(&yaml).await;
    let gws = [&gw1, &gw2];
    let cl = client();
    let round = |key: &'static str| {
        let cl = cl.clone();
        async move {
            let mut answers = Vec::new();
            for i in 0..8 {
                answers.push(get_k(&cl, &gws[i % 2].url("/r"), key).await);
            }
            answers
        }
    };

    for (n, gw) in gws.iter().enumerate() {
        wait_redis_path(gw, &redis, "three", &format!("up{n}")).await;
    }
    let before = round("before").await;
    assert_eq!(count(&before, 200), 3, "{:?}", statuses(&before));
    assert_eq!(count(&before, 429), 5);

    redis.stop();
    // Each gateway on its own: 3 each.
    let down = round("down").await;
    assert_eq!(count(&down, 200), 6, "{:?}", statuses(&down));
    assert_eq!(count(&down, 429), 2);

    redis.restart();
    assert!(redis.keys("*").is_empty(), "a restarted Redis is empty");
    for (n, gw) in gws.iter().enumerate() {
        wait_redis_path(gw, &redis, "three", &format!("again{n}")).await;
    }
    let after = round("after").await;
    assert_eq!(
        count(&after, 200),
        3,
        "cluster-wide again: {:?}",
        statuses(&after)
    );
    assert_eq!(count(&after, 429), 5);
    assert_eq!(
        redis.keys("it:rl:three:after"),
        vec!["it:rl:three:after".to_string()]
    );
    assert!(matches!(
        redis.cmd(&["GET", "it:rl:three:after"]),
        Resp::Bulk(Some(_))
    ));
    for gw in gws {
        assert!(backend_failures(gw, "fail_open").await > 0.0);
    }
}

/// Two limits with keys of their own: `a` (2 per 10 min, key `x-a`) and `b` (3 per 10 min, key
/// `x-b`).
const TWO_KEYED_LIMITS: &str = "limits:\n  - { name: a, key: \"{{ header.x-a }}\", requests: 2, per: 10m }\n  - { name: b, key: \"{{ header.x-b }}\", requests: 3, per: 10m }";

/// A request refused by one limit must not use up the budget of the other: every limit is
/// checked, and committed only if all pass.
async fn refused_requests_use_no_budget(gw: &Gateway) {
    let cl = client();
    let url = gw.url("/ab");
    let mut answers = Vec::new();
    for (a, b) in [
        ("1", "1"),
        ("1", "1"),
        ("1", "1"), // refused by a (a=1 used twice); must not use b=1
        ("2", "1"), // b=1's third
        ("3", "1"), // refused by b; must not use a=3
        ("3", "2"),
        ("3", "2"), // a=3's second
        ("3", "2"), // refused by a
    ] {
        answers.push(get(&cl, &url, &[("x-a", a), ("x-b", b)]).await);
    }
    assert_eq!(
        statuses(&answers),
        [200, 200, 429, 200, 429, 200, 200, 429],
        "a refused request must not count against the limits that passed"
    );
    answers[2].ratelimit_reset("a", 0);
    answers[4].ratelimit_reset("b", 0);
    answers[7].ratelimit_reset("a", 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commits_all_limits_or_none() {
    let redis = RedisServer::start();
    let b = echo("b").await;
    let gw = Gateway::start(&config(
        &b,
        &format!(
            "{TWO_KEYED_LIMITS}\n{}",
            redis_section(&redis, "timeout: 2s\nfailure_mode: fail_closed")
        ),
    ))
    .await;
    refused_requests_use_no_budget(&gw).await;
    assert_eq!(
        redis.keys("it:rl:*"),
        [
            "it:rl:a:1",
            "it:rl:a:2",
            "it:rl:a:3",
            "it:rl:b:1",
            "it:rl:b:2"
        ]
        .map(String::from)
        .to_vec()
    );
    assert_eq!(backend_failures(&gw, "fail_closed").await, 0.0);
}
