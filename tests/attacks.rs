//! The attack suite: what an anonymous client tried against the real binary (issue 13), each
//! as a regression test over raw sockets, so the bytes reach the gateway exactly as written.
//! Every test ends by checking that the process still serves (a panic would abort it).

mod common;

use std::time::{Duration, Instant};

use common::raw::{self, RawResponse};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const DENY_LISTENER: &str = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [main]
"#;

/// The deny chain behind one plaintext HTTP/1 listener, to `up`.
fn deny_config(up: &Upstream) -> String {
    format!("{DENY_LISTENER}{}", raw::DENY_CHAIN).replace("@UP@", &up.address())
}

async fn deny_gateway(up: &Upstream) -> Gateway {
    Gateway::start(&deny_config(up)).await
}

/// The gateway still answers on its listener and its admin API.
async fn assert_alive(gw: &Gateway) {
    let r = raw::get(gw.port, b"/still-alive").await;
    assert_eq!(r.status, 200, "the listener stopped serving: {r:?}");
    let h = raw::send(
        gw.admin_port,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(h.status, 200, "the admin API stopped serving");
}

fn upstream_path(r: &RawResponse) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["path"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn multibyte_paths_are_canonical_not_fatal() {
    let up = echo("up").await;
    let gw = deny_gateway(&up).await;
    // Raw UTF-8 next to an encoded dot: sliced at a byte offset, this aborted the process.
    for target in [
        "/中%2e".as_bytes(),
        "/中/%2e%2e/ok".as_bytes(),
        "/a/中中中%2e%2e".as_bytes(),
    ] {
        let r = raw::get(gw.port, target).await;
        assert_eq!(r.status, 200, "{}: {r:?}", String::from_utf8_lossy(target));
    }
    // What goes upstream is ASCII: raw bytes percent-encoded, the dot decoded.
    let r = raw::get(gw.port, "/中%2e".as_bytes()).await;
    assert_eq!(upstream_path(&r), "/%E4%B8%AD.");
    let r = raw::get(gw.port, "/中/%2e%2e/ok".as_bytes()).await;
    assert_eq!(upstream_path(&r), "/ok");
    // Bytes that are not UTF-8 are refused by Pingora's parser, before any of our code.
    let r = raw::get(gw.port, b"/\xff\xfe%2e").await;
    assert_eq!(r.status, 400);
    assert_alive(&gw).await;
}

#[tokio::test]
async fn malformed_hosts_are_refused_not_fatal() {
    let up = echo("up").await;
    let gw = deny_gateway(&up).await;
    for host in [
        "[", "[::1", "[zz]:80", "a:b", "u@h", "h:99999", "a b", "[::1]x",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = raw::send(gw.port, req.as_bytes()).await;
        assert_eq!(r.status, 400, "Host: {host}: {r:?}");
    }
    // A good Host is matched and templated in its canonical (lowercase, port-less) form.
    let r = raw::send(
        gw.port,
        b"GET /x HTTP/1.1\r\nHost: API.Tenant.Example:8443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["headers"]["x-seen-host"], "api.tenant.example");
    assert_alive(&gw).await;
    // `u@h` is refused by Pingora's own parser before the gateway sees it; the rest by ours.
    assert_eq!(
        gw.metric(
            "stoa_filter_rejections_total",
            &[("filter", "gateway"), ("reason", "bad_host")]
        )
        .await,
        Some(7.0)
    );
}

/// The shipped `conf/proxy.yaml` (a `{{ host }}` template on every request) survives `Host: [`.
#[tokio::test]
async fn shipped_proxy_config_survives_a_bracket_host() {
    let root = env!("CARGO_MANIFEST_DIR");
    let conf = std::fs::read_to_string(format!("{root}/conf/proxy.yaml"))
        .unwrap()
        .replace("conf/policies", &format!("{root}/conf/policies"));
    let gw = Gateway::builder()
        .config(&conf)
        .arg("--port")
        .arg("@PORT@")
        .arg("--admin-address")
        .arg("127.0.0.1:@ADMIN@")
        .wait_ready(false)
        .start()
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", gw.port)).await.is_err() {
        assert!(Instant::now() < deadline, "listener never opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = raw::send(
        gw.port,
        b"GET /api/public/x HTTP/1.1\r\nHost: [\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = raw::send(
        gw.port,
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "the process did not survive: {r:?}");
}

#[tokio::test]
async fn router_denies_cannot_be_walked_around() {
    let up = echo("up").await;
    let gw = deny_gateway(&up).await;
    for target in [
        &b"/admin"[..],
        b"//admin",
        b"///admin/x",
        b"/%61dmin",
        b"/%61%64%6D%69%6E",
        b"/admi%6e/x",
        b"/./admin",
        b"/x/../admin",
        b"/x/%2e%2e/admin",
        b"/internal",
        b"/internal/",
        b"//internal",
        b"/%69nternal",
        b"/internal/.",
    ] {
        let r = raw::get(gw.port, target).await;
        assert_eq!(
            r.status,
            403,
            "{} reached past the deny route: {r:?}",
            String::from_utf8_lossy(target)
        );
    }
    // Absolute-form: the target's own authority replaces Host, the path is canonical.
    let r = raw::send(
        gw.port,
        b"GET http://gw.test//admin HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    // A lowercase method is not a way around a `methods: [DELETE]` route: it is refused.
    let r = raw::send(
        gw.port,
        b"delete /x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(up.hits(), 0, "a denied path reached the upstream");
    // What is forwarded is the path the router judged.
    let r = raw::get(gw.port, b"/a//b/%7euser/./c%3f?q=%zz&r=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream_path(&r), "/a/b/~user/c%3F");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["query"], "q=%zz&r=1");
    assert_eq!(v["headers"]["x-seen-path"], "/a/b/~user/c%3F");
    // Encoded separators and malformed escapes are refused.
    for target in [
        &b"/a%2Fb"[..],
        b"/a%5cb",
        b"/a\\b",
        b"/a%zz",
        b"/a%",
        b"/a%00b",
    ] {
        let r = raw::get(gw.port, target).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(target));
    }
    assert_alive(&gw).await;
}

#[tokio::test]
async fn escaped_slashes_can_be_kept_and_merging_turned_off() {
    let up = echo("up").await;
    let yaml = deny_config(&up).replace(
        "    chains: [main]\n",
        "    chains: [main]\n    http: { merge_slashes: false, escaped_slashes: keep }\n",
    );
    let gw = Gateway::start(&yaml).await;
    let r = raw::get(gw.port, b"/a%2fb//c").await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream_path(&r), "/a%2Fb//c");
    // Dot segments are still resolved, so the deny still holds.
    let r = raw::get(gw.port, b"/x/../admin").await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn ambiguous_requests_are_refused() {
    let up = echo("up").await;
    let gw = deny_gateway(&up).await;
    let cases: &[(&[u8], u16)] = &[
        (
            b"GET foo:bar://host/admin HTTP/1.1\r\nHost: gw\r\n\r\n",
            400,
        ),
        (b"GET x:/admin HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
        (
            b"POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 5, 5\r\n\r\nhello",
            400,
        ),
        (
            b"POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            400,
        ),
        (
            b"POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            b"POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"TRACE / HTTP/1.1\r\nHost: gw\r\n\r\n", 405),
        (b"get / HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ];
    for (req, want) in cases {
        let r = raw::send(gw.port, req).await;
        assert_eq!(
            r.status,
            *want,
            "{}: {r:?}",
            String::from_utf8_lossy(req).escape_debug()
        );
    }
    assert_eq!(up.hits(), 0, "an ambiguous request was forwarded");
    // HTTP/1.0 without Host is valid.
    let r = raw::send(gw.port, b"GET /ok HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_alive(&gw).await;
}

const SLOW: &str = r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [main]
    http:
      header_read_timeout: 2s
      keepalive_timeout: 1s
      max_requests_per_connection: 3
      max_connections: 20
      body_idle_timeout: 1s
chains:
  main:
    - type: router
      routes:
        - { name: rest, match: { path_prefix: / }, cluster: up }
clusters:
  up:
    endpoints: ["@UP@"]
"#;

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let up = echo("up").await;
    let gw = Gateway::start(&SLOW.replace("@UP@", &up.address())).await;

    // A header dripped a byte at a time: closed at the total deadline, not kept for ever.
    let mut drip = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let started = Instant::now();
    let header =
        b"GET / HTTP/1.1\r\nHost: gw\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut cut = false;
    for b in header {
        if drip.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        if raw::closed_within(&mut drip, Duration::from_millis(250)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a dripping header was never cut off");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "cut after {took:?}"
    );
    assert_eq!(
        gw.metric(
            "stoa_downstream_connections_closed_total",
            &[("listener", "pub"), ("reason", "header_timeout")]
        )
        .await,
        Some(1.0)
    );

    // An idle keep-alive connection is closed after keepalive_timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    idle.write_all(b"GET /1 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let r = raw::read_response(&mut idle, Duration::from_secs(5)).await;
    assert_eq!(r.status, 200);
    assert!(
        raw::closed_within(&mut idle, Duration::from_secs(6)).await,
        "an idle keep-alive connection stayed open"
    );

    // At most max_requests_per_connection requests on one connection.
    let mut reuse = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let mut served = 0;
    for i in 0..5 {
        if reuse
            .write_all(format!("GET /{i} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        let r = raw::read_response(&mut reuse, Duration::from_secs(5)).await;
        if r.status != 200 {
            break;
        }
        served += 1;
    }
    assert_eq!(served, 3, "requests served on one connection");

    // A body that stops arriving ends the request once body_idle_timeout passes.
    let mut body = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    body.write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    assert!(
        raw::closed_within(&mut body, Duration::from_secs(6)).await,
        "a stalled body held the request open"
    );
    assert_eq!(up.hits(), 4, "the stalled body reached the upstream whole");

    // Beyond max_connections, new connections are closed at once (and counted); the
    // listener serves again once they go.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert!(
        raw::closed_within(&mut extra, Duration::from_secs(2)).await,
        "a connection past max_connections was served"
    );
    assert!(
        gw.metric(
            "stoa_downstream_connections_closed_total",
            &[("listener", "pub"), ("reason", "max_connections")]
        )
        .await
        .unwrap_or(0.0)
            >= 1.0
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = raw::get(gw.port, b"/again").await;
    assert_eq!(r.status, 200);
}

const CANARY: &str = r#"
admin:
  address: "127.0.0.1:@ADMIN@"
  probe_address: "127.0.0.1:@PORT2@"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: router
      routes:
        - { name: rest, match: { path_prefix: / }, cluster: up }
    - type: canary
      cluster: up
      weight: 10
clusters:
  up:
    endpoints: ["@UP@"]
"#;

async fn canary_weight(gw: &Gateway) -> f64 {
    let v: serde_json::Value = get_echo(&client(), &gw.admin_url("/canary")).await;
    v["weights"]["default"].as_f64().unwrap()
}

/// Raw admin request (a browser's or an attacker's bytes, not our client's).
async fn admin_raw(gw: &Gateway, head: &str, body: &str) -> RawResponse {
    let req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw::send(gw.admin_port, req.as_bytes()).await
}

#[tokio::test]
async fn the_admin_api_cannot_be_driven_from_a_web_page_or_without_a_token() {
    let up = echo("up").await;
    let gw = Gateway::start(&CANARY.replace("@UP@", &up.address())).await;
    let host = format!("Host: 127.0.0.1:{}", gw.admin_port);
    let body = r#"{"weight": 100}"#;
    let token = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let cases = [
        // A CORS-simple POST from a page: text/plain, a foreign Origin, no token.
        (
            format!("POST /canary HTTP/1.1\r\n{host}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain"),
            403,
        ),
        // The same with the token still has the wrong Origin.
        (
            format!("POST /canary HTTP/1.1\r\n{host}\r\nOrigin: http://evil.example\r\n{token}\r\nContent-Type: application/json"),
            403,
        ),
        // DNS rebinding: the page's own name resolving to 127.0.0.1.
        (
            format!("POST /canary HTTP/1.1\r\nHost: evil.example:{}\r\n{token}\r\nContent-Type: application/json", gw.admin_port),
            403,
        ),
        (
            format!("POST /canary HTTP/1.1\r\n{host}\r\n{token}\r\nContent-Type: text/plain"),
            415,
        ),
        (
            format!("POST /canary HTTP/1.1\r\n{host}\r\nContent-Type: application/json"),
            401,
        ),
        (
            format!("POST /canary HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {ADMIN_TOKEN}x\r\nContent-Type: application/json"),
            401,
        ),
    ];
    for (head, want) in &cases {
        let r = admin_raw(&gw, head, body).await;
        assert_eq!(r.status, *want, "{head}: {}", r.body_text());
    }
    let r = admin_raw(
        &gw,
        &format!("DELETE /shadow/report HTTP/1.1\r\n{host}"),
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    let r = admin_raw(&gw, "GET /config HTTP/1.1\r\nHost: evil.example", "").await;
    assert_eq!(r.status, 403, "a rebinding page read the config");
    assert_eq!(canary_weight(&gw).await, 10.0, "live traffic was moved");
    // The operator's call goes through.
    let r = admin_raw(
        &gw,
        &format!("POST /canary HTTP/1.1\r\n{host}\r\n{token}\r\nContent-Type: application/json"),
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(canary_weight(&gw).await, 100.0);
    // Probes need nothing, whatever the Host; the probe listener serves only them.
    let r = admin_raw(&gw, "GET /metrics HTTP/1.1\r\nHost: 10.1.2.3:9901", "").await;
    assert_eq!(r.status, 200);
    let probe = |path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 10.1.2.3\r\nConnection: close\r\n\r\n");
        let port = gw.port2;
        async move { raw::send(port, req.as_bytes()).await.status }
    };
    assert_eq!(probe("/health").await, 200);
    assert_eq!(probe("/metrics").await, 200);
    assert_eq!(probe("/config").await, 404);
    assert_eq!(probe("/canary").await, 404);
}

#[tokio::test]
async fn without_a_configured_token_state_changing_admin_calls_are_refused() {
    let up = echo("up").await;
    let gw = Gateway::builder()
        .config(&CANARY.replace("@UP@", &up.address()))
        .env("STOA_ADMIN_TOKEN", "")
        .start()
        .await;
    let r = admin_request(reqwest::Method::POST, gw.admin_url("/canary"))
        .body(r#"{"weight": 50}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("STOA_ADMIN_TOKEN"));
    assert_eq!(canary_weight(&gw).await, 10.0);
    // A token that is too short to be a secret is a config error.
    let (status, _, err) = tokio::task::spawn_blocking({
        let path = gw.config_path.display().to_string();
        move || {
            let mut cmd = gateway_command();
            cmd.env("STOA_ADMIN_TOKEN", "short")
                .args(["--check", "-c", &path]);
            let out = cmd.output().unwrap();
            (
                out.status,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    })
    .await
    .unwrap();
    assert!(!status.success());
    assert!(err.contains("at least 16 characters"), "{err}");
}

/// On a plaintext listener with h2c, Pingora waits for 24 bytes (the HTTP/2 preface) before
/// it reads anything: a client that sends fewer is held to the header deadline too.
#[tokio::test]
async fn a_short_request_on_an_h2c_listener_is_cut_off() {
    let up = echo("up").await;
    let yaml = SLOW.replace("@UP@", &up.address()).replace(
        "    chains: [main]\n",
        "    chains: [main]\n    http2: true\n",
    );
    let gw = Gateway::start(&yaml).await;
    let mut short = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    short.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert!(
        raw::closed_within(&mut short, Duration::from_secs(8)).await,
        "a request shorter than the h2 preface held its connection"
    );
    // A whole request (longer than the preface) is served as usual.
    let r = raw::get(gw.port, b"/fine").await;
    assert_eq!(r.status, 200);
}

/// Clients can make the gateway log (every request to a dead upstream is a warning): the
/// lines of one call site are capped per second, the rest counted, so no client fills a disk.
#[tokio::test]
async fn a_client_cannot_flood_the_logs() {
    let yaml = format!(
        "listeners:\n  - {{ name: pub, address: \"127.0.0.1:@PORT@\", chains: [main] }}\nchains:\n  main:\n    - type: router\n      routes: [{{ name: dead, match: {{ path_prefix: / }}, cluster: dead }}]\nclusters:\n  dead:\n    endpoints: [\"127.0.0.1:{}\"]\n    passive_ejection: {{ duration: 0s }}\n    retries: 0\n",
        closed_port()
    );
    let gw = Gateway::start(&yaml).await;
    let started = Instant::now();
    let c = client();
    for _ in 0..300 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 502);
    }
    let seconds = started.elapsed().as_secs() + 1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = gw.stderr().matches("upstream connect failed").count() as u64;
    assert!(
        lines <= 20 * (seconds + 1),
        "{lines} lines in {seconds} s for one call site"
    );
    let suppressed = gw
        .metric("stoa_log_lines_suppressed_total", &[])
        .await
        .unwrap_or(0.0);
    assert!(suppressed >= 1.0, "nothing was suppressed ({lines} lines)");
}

/// A listener's read buffer bounds what a connection holds, not what a request may be: a
/// header and a body many times its size (or with no buffer at all) are read whole.
#[tokio::test]
async fn requests_larger_than_the_read_buffer_are_served_whole() {
    let up = echo("up").await;
    for buffer in ["0", "512"] {
        let yaml = format!(
            "listeners:\n  - name: pub\n    address: \"127.0.0.1:@PORT@\"\n    chains: [main]\n    http: {{ read_buffer: {buffer} }}\nchains:\n  main:\n    - type: router\n      routes: [{{ name: all, match: {{ path_prefix: / }}, cluster: up }}]\nclusters:\n  up: {{ endpoints: [\"{}\"] }}\n",
            up.address()
        );
        let gw = Gateway::start(&yaml).await;
        let big = "v".repeat(8 * 1024);
        let body = "b".repeat(100 * 1024);
        let r = client()
            .post(gw.url("/upload"))
            .header("x-big", &big)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "read_buffer {buffer}");
        let echoed: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            echoed["headers"]["x-big"],
            big.as_str(),
            "read_buffer {buffer}"
        );
        assert_eq!(
            echoed["body"].as_str().map(str::len),
            Some(body.len()),
            "read_buffer {buffer}"
        );
    }
}
