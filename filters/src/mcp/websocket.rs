//! MCP over WebSocket (`ws_path`, default `/ws`; subprotocol `mcp`, as the TypeScript SDK's
//! `WebSocketClientTransport` speaks it): each text frame carries one JSON-RPC message, both
//! ways. One connection is one session: it starts with `initialize`, and everything the server
//! says on its own (list changes, what federated upstreams send) arrives as frames on the same
//! connection; messages are handled concurrently, so a client can answer an upstream's sampling
//! request while the call that caused it is still running. Ping frames at the SSE keep-alive
//! interval keep idle connections open.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::http::{http_error, Reply};
use super::jsonrpc::{self, INVALID_REQUEST, PARSE_ERROR};
use super::server::{Caller, McpCore};
use super::upstream::MessageSink;
use crate::filter::{FilterAction, LocalUpgrade};

/// The WebSocket handshake's answer headers for a request, or why it is not one (400/426).
pub(super) fn handshake(req: &pingora_http::RequestHeader) -> Result<Vec<(String, String)>, Reply> {
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let upgrade = header("upgrade").eq_ignore_ascii_case("websocket");
    if req.method != http::Method::GET || !upgrade {
        let mut r = http_error(
            426,
            INVALID_REQUEST,
            "this endpoint speaks WebSocket: send GET with Upgrade: websocket",
        );
        r.headers.push(("upgrade".into(), "websocket".into()));
        return Err(r);
    }
    let key = header("sec-websocket-key");
    if key.is_empty() || header("sec-websocket-version") != "13" {
        return Err(http_error(
            400,
            INVALID_REQUEST,
            "missing Sec-WebSocket-Key or Sec-WebSocket-Version: 13",
        ));
    }
    let mut headers = vec![
        ("upgrade".to_string(), "websocket".to_string()),
        ("connection".to_string(), "Upgrade".to_string()),
        (
            "sec-websocket-accept".to_string(),
            derive_accept_key(key.as_bytes()),
        ),
    ];
    let offers_mcp = header("sec-websocket-protocol")
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case("mcp"));
    if offers_mcp {
        headers.push(("sec-websocket-protocol".into(), "mcp".into()));
    }
    Ok(headers)
}

impl McpCore {
    /// Take the connection over and serve MCP on it (`caller` is who opened it).
    pub(super) fn websocket(
        self: &Arc<Self>,
        headers: Vec<(String, String)>,
        caller: Caller,
    ) -> FilterAction {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let core = self.clone();
        tokio::spawn(async move { core.serve_websocket(ours, caller).await });
        FilterAction::Upgrade(LocalUpgrade {
            headers,
            io: theirs,
        })
    }

    async fn serve_websocket(self: Arc<Self>, io: tokio::io::DuplexStream, mut caller: Caller) {
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(self.max_body as usize);
        config.max_frame_size = Some(self.max_body as usize);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let (mut frames_out, mut frames_in) = ws.split();
        let (out, mut outgoing) = mpsc::channel::<Message>(1024);
        let writer = tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if frames_out.send(frame).await.is_err() {
                    break;
                }
            }
            let _ = frames_out.close().await;
        });
        // Server notifications about a call (progress, logging…) are offered without waiting;
        // a client too slow to take them misses them (counted). Replies are never dropped: they
        // wait for room, and while they wait no more frames are read (backpressure).
        let notify: MessageSink = {
            let out = out.clone();
            Arc::new(move |m: Value| {
                if out.try_send(Message::text(m.to_string())).is_err() {
                    crate::mcp::metrics::METRICS
                        .mcp_dropped
                        .with_label_values(&["notification"])
                        .inc();
                }
            })
        };
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let mut server_stream: Option<tokio::task::JoinHandle<()>> = None;
        while let Some(Ok(frame)) = frames_in.next().await {
            let text = match frame {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                Message::Close(_) => break,
                _ => continue,
            };
            let message: Value = match serde_json::from_str(&text) {
                Ok(m) => m,
                Err(e) => {
                    let error =
                        jsonrpc::error(Value::Null, PARSE_ERROR, &format!("parse error: {e}"));
                    if reply(&out, error).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            if message.get("method").and_then(Value::as_str) == Some("initialize") {
                let reply = self.handle_initialize(&message, Some(&caller.session_id));
                if let Some(version) = reply
                    .body
                    .as_ref()
                    .and_then(|b| b["result"]["protocolVersion"].as_str())
                {
                    caller.version = version.to_string();
                    caller.capabilities = self
                        .state
                        .unsealed_capabilities
                        .get(&caller.session_id)
                        .unwrap_or(Value::Null);
                    if server_stream.is_none() {
                        server_stream = Some(self.forward_server_stream(&caller, out.clone()));
                    }
                }
                if let Some(body) = reply.body {
                    if self::reply(&out, body).await.is_err() {
                        break;
                    }
                }
                continue;
            }
            if caller.version.is_empty() {
                let id = message.get("id").cloned().unwrap_or(Value::Null);
                if message.get("id").is_some()
                    && reply(
                        &out,
                        jsonrpc::error(id, INVALID_REQUEST, "initialize first"),
                    )
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            if message.is_array() {
                let error = jsonrpc::error(
                    Value::Null,
                    INVALID_REQUEST,
                    "send one JSON-RPC message per frame",
                );
                if reply(&out, error).await.is_err() {
                    break;
                }
                continue;
            }
            // At most MAX_IN_FLIGHT requests at once per connection: the next frame is read
            // when one finishes. Responses and notifications take no slot (a request waiting
            // for the client's answer to a sampling request must be able to hear it).
            let is_request = message.get("method").is_some() && message.get("id").is_some();
            let permit = if is_request {
                match in_flight.clone().acquire_owned().await {
                    Ok(p) => Some(p),
                    Err(_) => break,
                }
            } else {
                None
            };
            let (core, caller, notify, out) =
                (self.clone(), caller.clone(), notify.clone(), out.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Some(answer) = core.handle_message(&message, &caller, &notify).await {
                    let _ = reply(&out, answer).await;
                }
            });
        }
        // The connection is the session: it ends with it.
        if let Some(task) = server_stream {
            task.abort();
        }
        self.state
            .hub
            .close(&caller.stream_path, &caller.session_id);
        self.state
            .unsealed_capabilities
            .invalidate(&caller.session_id);
        if let Some(fed) = self.federation.clone() {
            fed.close_client(&caller.session_id).await;
        }
        // The writer ends (closing the connection) once every sender is gone.
        drop((out, notify));
        let _ = writer.await;
    }

    /// What the server says on its own to this session (`streams::HUB`), as frames; its
    /// keep-alive comments become pings.
    fn forward_server_stream(
        &self,
        caller: &Caller,
        out: mpsc::Sender<Message>,
    ) -> tokio::task::JoinHandle<()> {
        let mut events = self.state.hub.open(
            &caller.stream_path,
            &caller.session_id,
            None,
            self.sse_keepalive,
        );
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                for frame in frames_of(&event) {
                    if out.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        })
    }
}

/// An SSE event of the stream hub as WebSocket frames: its data lines as text, a comment
/// (keep-alive) as a ping.
fn frames_of(event: &Bytes) -> Vec<Message> {
    let text = String::from_utf8_lossy(event);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    if data.is_empty() {
        if text.starts_with(": keep-alive") {
            return vec![Message::Ping(Bytes::new())];
        }
        return Vec::new();
    }
    vec![Message::text(data.join("\n"))]
}

/// Calls one WebSocket connection may have in flight before it stops reading frames.
const MAX_IN_FLIGHT: usize = 64;

/// Queue a JSON-RPC message for the client, waiting for room (an error: the writer is gone).
async fn reply(
    out: &mpsc::Sender<Message>,
    message: Value,
) -> Result<(), mpsc::error::SendError<Message>> {
    out.send(Message::text(message.to_string())).await
}

/// A fresh id for a WebSocket session (never sent to the client).
pub(super) fn session_id() -> String {
    format!("ws-{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_events_become_frames() {
        let ev = Bytes::from("id: 3\ndata: {\"a\":1}\n\n");
        assert_eq!(frames_of(&ev), vec![Message::text("{\"a\":1}")]);
        assert_eq!(
            frames_of(&Bytes::from_static(b": keep-alive\n\n")),
            vec![Message::Ping(Bytes::new())]
        );
        assert!(frames_of(&Bytes::from_static(b": stream open\n\n")).is_empty());
    }
}
