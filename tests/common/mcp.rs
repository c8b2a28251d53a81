//! MCP test clients: the official Python and TypeScript SDKs run as subprocesses (scripts in
//! `tests/fixtures/`), raw JSON-RPC over HTTP for the error paths, and the Python SDK's
//! upstream MCP server (`tests/fixtures/mcp_upstream.py`) as a child process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{client, free_port};

/// Run the Python SDK client; its JSON output.
pub fn python_client(url: &str, scenario: &str, args: &[&str]) -> Value {
    python_client_as(None, url, scenario, args)
}

/// Run the Python SDK client sending `Authorization: Bearer <bearer>`; its JSON output.
pub fn python_client_as(bearer: Option<&str>, url: &str, scenario: &str, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_client.py");
    let mut cmd = Command::new("python3");
    if let Some(b) = bearer {
        cmd.env("MCP_BEARER", b);
    }
    cmd.arg(script).arg(url).arg(scenario).args(args);
    run_client(cmd)
}

/// Run an SDK client to its end; the JSON document it printed.
pub fn run_client(mut cmd: Command) -> Value {
    let out = cmd
        .output()
        .expect("the client runs (the test command installs the SDKs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK client failed: {stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Run the TypeScript SDK client; its JSON output.
pub fn typescript_client(url: &str, args: &[&str]) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ts/mcp_client.mjs"
    );
    let mut cmd = Command::new("node");
    // Node 20 has its WebSocket client behind a flag (later versions accept and ignore it).
    cmd.arg("--experimental-websocket")
        .arg(script)
        .arg(url)
        .args(args);
    run_client(cmd)
}

/// POST one JSON-RPC body (raw text) with optional session and extra headers.
pub async fn post(
    url: &str,
    body: &str,
    session: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut rb = client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(s) = session {
        rb = rb.header("mcp-session-id", s);
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.text().await.unwrap())
}

pub fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `initialize` at `version`: the negotiated version and the session id.
pub async fn initialize(url: &str, version: &str) -> (String, String) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})
    .to_string();
    let (status, headers, text) = post(url, &body, None, &[]).await;
    assert_eq!(status, 200, "{text}");
    let v = json_of(&text);
    let session = headers["mcp-session-id"].to_str().unwrap().to_string();
    (
        v["result"]["protocolVersion"].as_str().unwrap().to_string(),
        session,
    )
}

/// An upstream MCP server written with the official Python SDK (killed on drop).
pub struct McpUpstream {
    pub port: u16,
    pub transport: &'static str,
    child: Child,
}

impl McpUpstream {
    /// Start `tests/fixtures/mcp_upstream.py` (`streamable` or `sse`) named `name`; waits for
    /// its `READY` line.
    pub fn start(name: &str, transport: &'static str) -> Self {
        Self::start_on(free_port(), name, transport, &[])
    }

    pub fn start_on(port: u16, name: &str, transport: &'static str, extra: &[&str]) -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mcp_upstream.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args([
                "--port",
                &port.to_string(),
                "--transport",
                transport,
                "--name",
                name,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (the test command installs the SDK)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match lines.next() {
                Some(Ok(line)) if line.trim() == "READY" => break,
                Some(Ok(_)) => {}
                _ => panic!("the upstream MCP server `{name}` did not start"),
            }
            assert!(
                Instant::now() < deadline,
                "upstream `{name}` start timed out"
            );
        }
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        McpUpstream {
            port,
            transport,
            child,
        }
    }

    /// Its MCP endpoint (`/mcp`, or `/sse` for the old transport).
    pub fn url(&self) -> String {
        let path = if self.transport == "sse" {
            "sse"
        } else {
            "mcp"
        };
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for McpUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}
