//! A real OpenTelemetry collector for the tracing tests: `rotel` (a Rust collector shipped as
//! the PyPI wheel `rotel`, installed by the test command), receiving OTLP over HTTP and gRPC on
//! 127.0.0.1 and printing every span it receives (`--debug-log traces --debug-log-verbosity
//! detailed`, exported to a blackhole), which the tests read back.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Collector {
    child: Child,
    out: tempfile::NamedTempFile,
    pub http_port: u16,
    pub grpc_port: u16,
}

/// The `rotel-agent` binary inside the installed wheel.
fn rotel_binary() -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("python3 runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && std::path::Path::new(&path).exists(),
        "rotel is not installed (the test command installs it with pip): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

impl Collector {
    pub async fn start() -> Collector {
        let (http_port, grpc_port) = (super::free_port(), super::free_port());
        let out = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(rotel_binary())
            .args([
                "start",
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{http_port}"),
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{grpc_port}"),
                "--debug-log",
                "traces",
                "--debug-log-verbosity",
                "detailed",
                "--exporter",
                "blackhole",
                "--batch-timeout",
                "50ms",
            ])
            .stdout(out.reopen().unwrap())
            .stderr(out.reopen().unwrap())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .spawn()
            .expect("rotel-agent starts");
        let c = Collector {
            child,
            out,
            http_port,
            grpc_port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [http_port, grpc_port] {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "rotel did not listen: {}",
                    c.output()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        c
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Everything the collector printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.out.path()).unwrap_or_default()
    }

    /// The spans received so far, each as the block of lines rotel printed for it.
    pub fn spans(&self) -> Vec<String> {
        let text = self.output();
        let mut spans = Vec::new();
        for block in text.split("Span #").skip(1) {
            // a span's block ends where the next resource or scope begins
            let end = ["ResourceSpans #", "ScopeSpans #"]
                .iter()
                .filter_map(|m| block.find(m))
                .min()
                .unwrap_or(block.len());
            spans.push(block[..end].to_string());
        }
        spans
    }

    /// Wait until a span satisfying `pred` arrives (bounded); its block of lines.
    pub async fn wait_span(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| pred(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no span {what} reached the collector; it printed:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A field of a rotel span block (`Trace ID`, `Parent ID`, `ID`, `Name`, `Kind`).
pub fn field(span: &str, name: &str) -> String {
    span.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}
