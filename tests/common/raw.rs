//! Raw-socket HTTP/1 clients for the attack tests: bytes go out exactly as written (a client
//! library would sanitise them), and the answer is read back as status, headers and body.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed answer (or `status: 0` when the connection closed without one).
#[derive(Debug, Default, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Read one response from `stream` (Content-Length or close-delimited; chunked bodies are
/// returned raw), within `timeout`.
pub async fn read_response(stream: &mut TcpStream, timeout: Duration) -> RawResponse {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut resp = RawResponse {
                status: head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                head,
                body: Vec::new(),
            };
            let want = resp
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok());
            let mut body = buf[end + 4..].to_vec();
            while want.is_some_and(|w| body.len() < w) {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            resp.body = body;
            return resp;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return RawResponse::default(),
        }
    }
}

/// Send `request` on a new connection and read one response.
pub async fn send(port: u16, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(request).await.expect("write");
    read_response(&mut s, Duration::from_secs(10)).await
}

/// `GET <target>` with a Host header, raw.
pub async fn get(port: u16, target: &[u8]) -> RawResponse {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
    send(port, &req).await
}

/// Whether the peer closes `stream` within `within` (reads until EOF or error).
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// The attack suite's chain `main`: deny routes an attacker tries to walk around (a prefix, an
/// exact path, a method), a host route, then everything else to the upstream `@UP@`; the
/// host and path the chain saw are sent upstream as `x-seen-host` / `x-seen-path`.
pub const DENY_CHAIN: &str = r#"
chains:
  main:
    - type: headers
      request:
        set: { x-seen-host: "{{ host }}", x-seen-path: "{{ path }}" }
    - type: router
      routes:
        - name: deny-admin
          match: { path_prefix: /admin }
          respond: { status: 403, body: "denied\n" }
        - name: deny-internal
          match: { path_exact: /internal }
          respond: { status: 403, body: "denied\n" }
        - name: deny-delete
          match: { methods: [DELETE] }
          respond: { status: 403, body: "denied\n" }
        - name: tenant
          match: { host: "*.tenant.example" }
          cluster: up
        - name: rest
          match: { path_prefix: / }
          cluster: up
clusters:
  up:
    endpoints: ["@UP@"]
"#;
