//! The attack suite over HTTP/2: the path and authority attacks of tests/attacks.rs sent as
//! h2 frames (h2c with prior knowledge and h2 over TLS), and the two HTTP/2 connection floods,
//! rapid reset (CVE-2023-44487) and the CONTINUATION flood (2024). The client is
//! `tests/fixtures/h2_attacks.py` (the Python `h2` package over raw sockets, attack frames
//! written by hand), run as a subprocess; it prints one JSON line. Every test ends by checking
//! that the process still serves other clients.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::raw;
use common::*;
use serde_json::Value;
use tempfile::TempDir;

const DENY_H2: &str = r#"
listeners:
  - name: h2c
    address: "127.0.0.1:@PORT@"
    chains: [main]
    http2: true
  - name: h2
    address: "127.0.0.1:@PORT2@"
    chains: [main]
    http2: true
    tls: { cert: "@CERT@", key: "@KEY@" }
"#;

/// The gateway with its h2c listener on `port` and its TLS (ALPN h2) listener on `port2`.
struct H2Gateway {
    gw: Gateway,
    _certs: TempDir,
}

async fn h2_gateway(up: &Upstream) -> H2Gateway {
    let certs_dir = TempDir::new().unwrap();
    let certs = make_certs(certs_dir.path());
    let yaml = format!("{DENY_H2}{}", raw::DENY_CHAIN)
        .replace("@UP@", &up.address())
        .replace("@CERT@", &certs.cert.display().to_string())
        .replace("@KEY@", &certs.key.display().to_string());
    H2Gateway {
        gw: Gateway::start(&yaml).await,
        _certs: certs_dir,
    }
}

/// One of the two HTTP/2 listeners.
#[derive(Clone, Copy, Debug)]
struct Listener {
    port: u16,
    tls: bool,
}

impl H2Gateway {
    fn listeners(&self) -> [Listener; 2] {
        [
            Listener {
                port: self.gw.port,
                tls: false,
            },
            Listener {
                port: self.gw.port2,
                tls: true,
            },
        ]
    }
}

/// Run `h2_attacks.py <subcommand> --port P [--tls] <args>` (bounded); its JSON line.
async fn h2_client(l: Listener, subcommand: &str, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/h2_attacks.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(subcommand)
        .arg("--port")
        .arg(l.port.to_string())
        .args(args);
    if l.tls {
        cmd.arg("--tls");
    }
    let what = format!("h2_attacks.py {subcommand} {args:?} on {l:?}");
    // Blocking: off the runtime thread, which serves the echo upstream meanwhile.
    tokio::task::spawn_blocking(move || run_json(cmd, &what, Duration::from_secs(60)))
        .await
        .unwrap()
}

fn run_json(cmd: Command, what: &str, limit: Duration) -> Value {
    let (status, stdout, stderr) = run_bounded(cmd, what, limit);
    assert!(
        !stderr.contains("No module named 'h2'"),
        "the Python h2 package is missing: run scripts/install-deps.sh"
    );
    assert!(status.success(), "{what} failed: {stdout}\n{stderr}");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}\n{stderr}"))
}

/// One GET with `:authority: gw.test` and the given `:path` (and extra headers).
async fn get(l: Listener, path: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--authority", "gw.test", "--path", path];
    args.extend_from_slice(extra);
    h2_client(l, "request", &args).await
}

fn status(v: &Value) -> u64 {
    v["status"].as_u64().unwrap_or(u64::MAX)
}

/// The path the echo upstream saw.
fn upstream_path(v: &Value) -> String {
    let body: Value =
        serde_json::from_str(v["body"].as_str().unwrap_or_default()).unwrap_or_default();
    body["path"].as_str().unwrap_or_default().to_string()
}

/// The gateway still answers: HTTP/1 on the h2c listener (a request longer than the 24-byte
/// h2 preface peek), a new HTTP/2 connection on both listeners, and the admin API.
async fn assert_alive(h2: &H2Gateway) {
    let r = raw::get(h2.gw.port, b"/ok").await;
    assert_eq!(r.status, 200, "the listener stopped serving HTTP/1: {r:?}");
    for l in h2.listeners() {
        let v = get(l, "/ok", &[]).await;
        assert_eq!(status(&v), 200, "{l:?} stopped serving HTTP/2: {v}");
    }
    let health = raw::send(
        h2.gw.admin_port,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(health.status, 200, "the admin API stopped serving");
}

#[tokio::test]
async fn h2_router_denies_cannot_be_walked_around() {
    let up = echo("up").await;
    let h2 = h2_gateway(&up).await;
    for l in h2.listeners() {
        for path in [
            "/admin",
            "//admin",
            "/%61dmin",
            "/admi%6e/x",
            "/internal",
            "/internal/",
            "//internal",
            "/%69nternal",
        ] {
            let v = get(l, path, &[]).await;
            assert_eq!(
                status(&v),
                403,
                "{path} on {l:?} reached past the deny route: {v}"
            );
            assert_eq!(v["body"], "denied\n", "{path} on {l:?}");
        }
        // A DELETE is denied by method over h2 as well.
        let v = get(l, "/x", &["--method", "DELETE"]).await;
        assert_eq!(status(&v), 403, "DELETE on {l:?}: {v}");
    }
    assert_eq!(up.hits(), 0, "a denied path reached the upstream");
    // Raw UTF-8 next to an encoded dot: served, and what goes upstream is ASCII.
    for l in h2.listeners() {
        let v = get(l, "/中%2e", &[]).await;
        assert_eq!(status(&v), 200, "{l:?}: {v}");
        assert_eq!(upstream_path(&v), "/%E4%B8%AD.", "{l:?}");
        let v = get(l, "/中/%2e%2e/ok", &[]).await;
        assert_eq!(upstream_path(&v), "/ok", "{l:?}: {v}");
    }
    assert_eq!(up.hits(), 4);
    assert_alive(&h2).await;
}

#[tokio::test]
async fn h2_malformed_authorities_are_refused() {
    let up = echo("up").await;
    let h2 = h2_gateway(&up).await;
    for l in h2.listeners() {
        // The h2 codec cannot build a URI from it: the stream is reset, the connection lives.
        let v = h2_client(l, "request", &["--authority", "[", "--path", "/x"]).await;
        assert_eq!(status(&v), 0, "`:authority: [` on {l:?} was answered: {v}");
        assert_eq!(v["reset"], "PROTOCOL_ERROR", "{l:?}: {v}");
        assert_eq!(v["goaway"], Value::Null, "{l:?}: {v}");
        // A Host that names another host than :authority (RFC 9113 §8.3.1): 400.
        let v = get(l, "/x", &["--header", "host", "evil.example"]).await;
        assert_eq!(
            status(&v),
            400,
            "host disagreeing with :authority on {l:?}: {v}"
        );
        // Neither :authority nor Host: 400.
        let v = h2_client(l, "request", &["--path", "/x"]).await;
        assert_eq!(status(&v), 400, "no authority on {l:?}: {v}");
        // A Host equal to :authority is fine, and the host the chain sees is that one.
        let v = get(l, "/x", &["--header", "host", "gw.test"]).await;
        assert_eq!(status(&v), 200, "{l:?}: {v}");
        let body: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["headers"]["x-seen-host"], "gw.test");
    }
    assert_eq!(up.hits(), 2, "a refused request reached the upstream");
    assert_alive(&h2).await;
}

#[tokio::test]
async fn h2_rapid_reset_is_cut_off() {
    let up = echo("up").await;
    let h2 = h2_gateway(&up).await;
    let mut processed = 0;
    for l in h2.listeners() {
        // 5000 HEADERS + RST_STREAM(CANCEL) pairs on a proxied route, as fast as they go.
        let v = h2_client(
            l,
            "rapid-reset",
            &[
                "--authority",
                "gw.test",
                "--path",
                "/flood",
                "--count",
                "5000",
                "--timeout",
                "20",
            ],
        )
        .await;
        assert_eq!(
            v["goaway"]["error"], "ENHANCE_YOUR_CALM",
            "no GOAWAY for a rapid reset on {l:?}: {v}"
        );
        assert_eq!(v["goaway"]["debug"], "too_many_resets", "{l:?}: {v}");
        assert_eq!(
            v["closed"], true,
            "the attacking connection stayed open: {v}"
        );
        assert_eq!(v["usable"], false, "{l:?}: {v}");
        let n = v["streams_processed"].as_u64().unwrap();
        assert!(
            n < 200,
            "{n} streams were taken before the GOAWAY on {l:?}: {v}"
        );
        processed += n as usize;
    }
    // Only streams at or below the GOAWAY's last stream id may have been forwarded.
    assert!(
        up.hits() <= processed,
        "{} flood requests reached the upstream, more than the {processed} the server took",
        up.hits()
    );
    // A few resets are not an attack: the connection goes on serving (the check above has
    // a counterpart that passes).
    for l in h2.listeners() {
        let v = h2_client(
            l,
            "rapid-reset",
            &["--authority", "gw.test", "--path", "/few", "--count", "10"],
        )
        .await;
        assert_eq!(v["goaway"], Value::Null, "{l:?}: {v}");
        assert_eq!(v["followup_status"], 200, "{l:?}: {v}");
        assert_eq!(v["usable"], true, "{l:?}: {v}");
    }
    assert_alive(&h2).await;
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let up = echo("up").await;
    let h2 = h2_gateway(&up).await;
    for l in h2.listeners() {
        // HEADERS without END_HEADERS, then up to 10,000 CONTINUATION frames of 16 KiB of
        // valid literal headers: the h2 codec stops after a handful of frames.
        let started = Instant::now();
        let v = h2_client(
            l,
            "continuation-flood",
            &[
                "--authority",
                "gw.test",
                "--path",
                "/flood",
                "--count",
                "10000",
                "--timeout",
                "20",
            ],
        )
        .await;
        assert_eq!(
            v["goaway"]["error"], "ENHANCE_YOUR_CALM",
            "no GOAWAY for a CONTINUATION flood on {l:?}: {v}"
        );
        assert_eq!(v["goaway"]["debug"], "too_many_continuations", "{l:?}: {v}");
        assert_eq!(v["goaway"]["last_stream_id"], 0, "{l:?}: {v}");
        assert_eq!(
            v["closed"], true,
            "the flooding connection stayed open: {v}"
        );
        let to_close = v["seconds_to_close"].as_f64().unwrap();
        assert!(to_close < 5.0, "closed only after {to_close}s on {l:?}");
        assert!(
            v["continuations_sent"].as_u64().unwrap() < 10000,
            "all 10,000 CONTINUATION frames were taken on {l:?}: {v}"
        );
        assert_eq!(v["stream_1_status"], 0, "{l:?}: {v}");
        assert!(started.elapsed() < Duration::from_secs(30));
        // Header-block bytes that are not HPACK end the connection at once too.
        let v = h2_client(
            l,
            "continuation-flood",
            &[
                "--authority",
                "gw.test",
                "--path",
                "/flood",
                "--garbage",
                "--timeout",
                "20",
            ],
        )
        .await;
        assert_eq!(v["goaway"]["error"], "PROTOCOL_ERROR", "{l:?}: {v}");
        assert_eq!(v["closed"], true, "{l:?}: {v}");
    }
    assert_eq!(up.hits(), 0, "a flooded header block reached the upstream");
    assert_alive(&h2).await;
}
