//! Upstream servers (axum) on 127.0.0.1: the HTTP echo server (with `/health`, a WebSocket
//! echo, delays and hit counters) and an SSE server whose second event waits for the test.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A running upstream server; its task is aborted on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    pub id: String,
    /// Requests served (not counting `/health`).
    pub hits: Arc<AtomicUsize>,
    /// `/health` requests served.
    pub health_hits: Arc<AtomicUsize>,
    /// What `/health` answers: 200 when true, 500 when false.
    pub healthy: Arc<AtomicBool>,
    /// How long `/health` waits before answering (ms).
    pub health_delay_ms: Arc<AtomicU64>,
    /// TLS servers: the SNI of each accepted connection.
    pub sni: Arc<Mutex<Vec<Option<String>>>>,
    pub(super) task: JoinHandle<()>,
}

impl Upstream {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// `127.0.0.1:port`, as written in cluster endpoints.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    pub fn set_healthy(&self, on: bool) {
        self.healthy.store(on, Ordering::SeqCst);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
pub(super) struct EchoState {
    id: String,
    pub(super) hits: Arc<AtomicUsize>,
    pub(super) health_hits: Arc<AtomicUsize>,
    pub(super) healthy: Arc<AtomicBool>,
    pub(super) health_delay_ms: Arc<AtomicU64>,
}

/// The echo answer: what the upstream saw. Header values of repeated headers are joined by ", ".
async fn echo_handler(
    axum::extract::State(st): axum::extract::State<EchoState>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    if parts.uri.path() == "/health" {
        st.health_hits.fetch_add(1, Ordering::SeqCst);
        let delay = st.health_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        return if st.healthy.load(Ordering::SeqCst) {
            (StatusCode::OK, "ok").into_response()
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, "unhealthy").into_response()
        };
    }
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    // Counted once the whole body is in, before any delay.
    st.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(ms) = parts
        .headers
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if parts.headers.contains_key("x-no-echo") {
        let mut resp = axum::Json(serde_json::json!({ "server_id": st.id })).into_response();
        resp.headers_mut()
            .insert("x-upstream-id", st.id.parse().unwrap());
        return resp;
    }
    let json = serde_json::json!({
        "server_id": st.id,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers_json(&parts.headers),
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = axum::Json(json).into_response();
    let h = resp.headers_mut();
    h.insert("x-upstream-id", st.id.parse().unwrap());
    h.insert("x-internal-secret", "upstream-internal".parse().unwrap());
    h.insert("x-multi", "upstream".parse().unwrap());
    resp
}

fn headers_json(h: &HeaderMap) -> serde_json::Value {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        map.entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    serde_json::to_value(map).unwrap()
}

pub(super) fn echo_router(st: EchoState) -> Router {
    Router::new()
        .route("/ws", get(ws_echo))
        .fallback(echo_handler)
        .with_state(st)
}

async fn ws_echo(ws: WebSocketUpgrade) -> Response {
    use axum::extract::ws::Message;
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(format!("echo: {}", t.as_str()).into()),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

pub(super) fn new_state(id: &str) -> EchoState {
    EchoState {
        id: id.to_string(),
        hits: Arc::new(AtomicUsize::new(0)),
        health_hits: Arc::new(AtomicUsize::new(0)),
        healthy: Arc::new(AtomicBool::new(true)),
        health_delay_ms: Arc::new(AtomicU64::new(0)),
    }
}

/// An HTTP echo server (also: `/health` toggled by `healthy`, `/ws` WebSocket echo, a delay
/// before answering when the request has `x-delay-ms`, and a short answer without the echo
/// when it has `x-no-echo`).
pub async fn echo(id: &str) -> Upstream {
    echo_on(id, 0).await
}

/// Like `echo`, on a given port (0: any).
pub async fn echo_on(id: &str, port: u16) -> Upstream {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().unwrap();
    let st = new_state(id);
    let up = Upstream {
        addr,
        id: id.to_string(),
        hits: st.hits.clone(),
        health_hits: st.health_hits.clone(),
        healthy: st.healthy.clone(),
        health_delay_ms: st.health_delay_ms.clone(),
        sni: Arc::new(Mutex::new(Vec::new())),
        task: tokio::spawn(async move {
            let _ = axum::serve(listener, echo_router(st)).await;
        }),
    };
    up
}

/// An SSE upstream: `GET /events` sends `data: first`, then waits until `release` is notified
/// (at most 20 s), then sends `data: second` and ends. `finished` is set once the stream ends.
pub struct SseUpstream {
    pub addr: SocketAddr,
    pub release: Arc<Notify>,
    pub finished: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for SseUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn sse() -> SseUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(Notify::new());
    let finished = Arc::new(AtomicBool::new(false));
    let (r, f) = (release.clone(), finished.clone());
    let app = Router::new().route(
        "/events",
        get(move || {
            let (release, finished) = (r.clone(), f.clone());
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
                tokio::spawn(async move {
                    let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                    let _ = tokio::time::timeout(Duration::from_secs(20), release.notified()).await;
                    let _ = tx.send(Bytes::from_static(b"data: second\n\n")).await;
                    finished.store(true, Ordering::SeqCst);
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .header("cache-control", "no-cache")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    SseUpstream {
        addr,
        release,
        finished,
        task,
    }
}
