//! A client of one upstream MCP server, at the level of JSON-RPC messages (relayed as
//! `serde_json::Value`s, so fields the gateway does not know pass through untouched): the
//! `initialize` handshake, requests whose answer is JSON or an SSE stream that carries related
//! messages (progress, logging, sampling…) before the response, notifications and responses
//! sent back, the server's own stream of unrelated messages, and `DELETE` at the end. Speaks
//! Streamable HTTP and the 2024-11-05 HTTP+SSE transport.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
/// The id of the gateway's own `initialize` request.
const INIT_ID: &str = "stoa-init";

/// Which transport an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Streamable HTTP (2025-03-26 and later): one endpoint for POST, GET and DELETE.
    StreamableHttp,
    /// The 2024-11-05 HTTP+SSE transport: GET opens the stream, which names the POST endpoint.
    Sse,
}

/// Where an upstream server is and how to talk to it.
pub struct Endpoint {
    pub name: String,
    pub url: Url,
    pub transport: Transport,
    /// Sent with every request (credentials for the upstream, for example).
    pub headers: HeaderMap,
    /// The longest a request may take, answer included.
    pub timeout: Duration,
    pub client: reqwest::Client,
}

/// Where the messages an upstream sends on its own go (notifications, server-to-client
/// requests).
pub type MessageSink = Arc<dyn Fn(Value) + Send + Sync>;

#[derive(Debug)]
pub enum UpstreamError {
    /// The upstream no longer knows the session (404): initialize a new one.
    Expired,
    /// Unreachable, refused, timed out or not speaking MCP.
    Failed(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Expired => f.write_str("the upstream session expired"),
            UpstreamError::Failed(why) => f.write_str(why),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Failed(e.to_string())
}

/// Aborts its task when dropped (a session's stream readers end with the session; work for a
/// client that went away stops).
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A request of a legacy-transport session waiting for its response on the stream.
struct Waiting {
    /// The request's id, as JSON text.
    id: String,
    /// Its progress token, as JSON text, if it asked for progress.
    progress_token: Option<String>,
    answer: oneshot::Sender<Value>,
    /// Where the messages about it go.
    related: MessageSink,
}

/// The requests of a legacy-transport session waiting for their response on the stream.
#[derive(Default)]
struct Pending {
    waiting: Mutex<Vec<Waiting>>,
}

impl Pending {
    /// Route one message from the stream: a response to its waiting request, progress to the
    /// request with its token, anything else to the oldest waiting request's sink (it most
    /// likely belongs to that call), or to `idle`.
    fn dispatch(&self, message: Value, idle: &MessageSink) {
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if is_response(&message) {
            let id = message.get("id").map(Value::to_string).unwrap_or_default();
            if let Some(at) = waiting.iter().position(|w| w.id == id) {
                let _ = waiting.remove(at).answer.send(message);
            }
            return;
        }
        let token = message["params"].get("progressToken").map(Value::to_string);
        let owner = token
            .and_then(|t| {
                waiting
                    .iter()
                    .find(|w| w.progress_token.as_ref() == Some(&t))
            })
            .or(waiting.first());
        match owner {
            Some(w) => (w.related)(message),
            None => {
                drop(waiting);
                idle(message)
            }
        }
    }
}

enum Link {
    Streamable {
        session_id: Option<String>,
    },
    Sse {
        post_url: Url,
        pending: Arc<Pending>,
    },
}

/// One MCP session with an upstream server.
pub struct UpstreamSession {
    endpoint: Arc<Endpoint>,
    link: Link,
    /// The version the upstream answered `initialize` with.
    pub protocol_version: String,
    /// The upstream's `initialize` result (capabilities, serverInfo, instructions).
    pub init_result: Value,
    _reader: Option<AbortOnDrop>,
}

/// A response (or error) rather than a request or notification.
pub fn is_response(message: &Value) -> bool {
    message.get("method").is_none()
        && message.get("id").is_some()
        && (message.get("result").is_some() || message.get("error").is_some())
}

impl UpstreamSession {
    /// Open a session: `initialize` (offering `version` and the client's `capabilities`),
    /// `notifications/initialized`, then the server's stream, whose messages go to `on_message`.
    pub async fn open(
        endpoint: Arc<Endpoint>,
        version: &str,
        capabilities: Value,
        on_message: MessageSink,
    ) -> Result<Self, UpstreamError> {
        let init = json!({
            "jsonrpc": "2.0",
            "id": INIT_ID,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": capabilities,
                "clientInfo": {"name": "stoa-gateway", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let timeout = endpoint.timeout;
        let opening = async {
            match endpoint.transport {
                Transport::StreamableHttp => {
                    Self::open_streamable(endpoint, init, on_message).await
                }
                Transport::Sse => Self::open_sse(endpoint, init, on_message).await,
            }
        };
        tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| failed("initialize timed out"))?
    }

    async fn open_streamable(
        endpoint: Arc<Endpoint>,
        init: Value,
        on_message: MessageSink,
    ) -> Result<Self, UpstreamError> {
        let mut session = UpstreamSession {
            endpoint,
            link: Link::Streamable { session_id: None },
            protocol_version: String::new(),
            init_result: Value::Null,
            _reader: None,
        };
        let resp = session.post(&init).await?;
        let session_id = resp
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answer = read_answer(resp, &json!(INIT_ID), &on_message).await?;
        session.accept_init(answer)?;
        session.link = Link::Streamable {
            session_id: session_id.clone(),
        };
        session
            .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        // The server's stream of messages unrelated to a request (optional: 405 when not offered).
        let endpoint = session.endpoint.clone();
        let version = session.protocol_version.clone();
        let task = crate::background::handle().spawn(async move {
            let mut last_event_id: Option<String> = None;
            loop {
                let mut req = endpoint
                    .client
                    .get(endpoint.url.clone())
                    .headers(endpoint.headers.clone())
                    .header(ACCEPT, "text/event-stream")
                    .header(VERSION_HEADER, &version);
                if let Some(id) = &session_id {
                    req = req.header(SESSION_HEADER, id);
                }
                if let Some(last) = &last_event_id {
                    req = req.header("last-event-id", last);
                }
                let Ok(resp) = req.send().await else { break };
                if !resp.status().is_success() {
                    break;
                }
                let mut events = resp.bytes_stream().eventsource();
                while let Some(Ok(ev)) = events.next().await {
                    if !ev.id.is_empty() {
                        last_event_id = Some(ev.id.clone());
                    }
                    if let Ok(message) = serde_json::from_str::<Value>(&ev.data) {
                        on_message(message);
                    }
                }
                // The stream ended (the server may close it at will): reopen, resuming.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        session._reader = Some(AbortOnDrop(task.abort_handle()));
        Ok(session)
    }

    async fn open_sse(
        endpoint: Arc<Endpoint>,
        init: Value,
        on_message: MessageSink,
    ) -> Result<Self, UpstreamError> {
        let resp = endpoint
            .client
            .get(endpoint.url.clone())
            .headers(endpoint.headers.clone())
            .header(ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(failed)?;
        if !resp.status().is_success() {
            return Err(failed(format!(
                "GET {}: HTTP {}",
                endpoint.url,
                resp.status()
            )));
        }
        let mut events = resp.bytes_stream().eventsource();
        // The first event names the endpoint for our POSTs.
        let post_url = loop {
            match events.next().await {
                Some(Ok(ev)) if ev.event == "endpoint" => {
                    break endpoint
                        .url
                        .join(ev.data.trim())
                        .map_err(|e| failed(format!("bad endpoint event: {e}")))?;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(failed(e)),
                None => return Err(failed("the SSE stream ended before its endpoint event")),
            }
        };
        let pending = Arc::new(Pending::default());
        let reader_pending = pending.clone();
        let task = crate::background::handle().spawn(async move {
            while let Some(Ok(ev)) = events.next().await {
                if let Ok(message) = serde_json::from_str::<Value>(&ev.data) {
                    reader_pending.dispatch(message, &on_message);
                }
            }
            // The stream is the session: when it ends, waiting requests fail.
            reader_pending
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        });
        let mut session = UpstreamSession {
            endpoint,
            link: Link::Sse { post_url, pending },
            protocol_version: String::new(),
            init_result: Value::Null,
            _reader: Some(AbortOnDrop(task.abort_handle())),
        };
        let ignore: MessageSink = Arc::new(|_| {});
        let answer = session.request(init, &ignore).await?;
        session.accept_init(answer)?;
        session
            .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(session)
    }

    fn accept_init(&mut self, answer: Value) -> Result<(), UpstreamError> {
        let Some(result) = answer.get("result") else {
            return Err(failed(format!(
                "initialize refused: {}",
                answer.get("error").cloned().unwrap_or(Value::Null)
            )));
        };
        self.protocol_version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or("2024-11-05")
            .to_string();
        self.init_result = result.clone();
        Ok(())
    }

    /// The upstream's capabilities (`initialize` result).
    pub fn capabilities(&self) -> &Value {
        &self.init_result["capabilities"]
    }

    /// POST one message; the response before its body is read.
    async fn post(&self, message: &Value) -> Result<reqwest::Response, UpstreamError> {
        let (url, session_id) = match &self.link {
            Link::Streamable { session_id } => (&self.endpoint.url, session_id.as_deref()),
            Link::Sse { post_url, .. } => (post_url, None),
        };
        let mut req = self
            .endpoint
            .client
            .post(url.clone())
            .headers(self.endpoint.headers.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .body(message.to_string());
        if let Some(id) = session_id {
            req = req.header(SESSION_HEADER, id);
        }
        if !self.protocol_version.is_empty() {
            req = req.header(VERSION_HEADER, &self.protocol_version);
        }
        let resp = req.send().await.map_err(failed)?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND if session_id.is_some() => Err(UpstreamError::Expired),
            s => {
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(200).collect();
                Err(failed(format!("HTTP {s}: {body}")))
            }
        }
    }

    /// Send a request and wait for its response; messages the upstream sends meanwhile about
    /// it (progress, logging, sampling…) go to `related`.
    pub async fn request(
        &self,
        message: Value,
        related: &MessageSink,
    ) -> Result<Value, UpstreamError> {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let exchange = async {
            match &self.link {
                Link::Streamable { .. } => {
                    let resp = self.post(&message).await?;
                    read_answer(resp, &id, related).await
                }
                Link::Sse { pending, .. } => {
                    let (tx, rx) = oneshot::channel();
                    let key = id.to_string();
                    let progress_token = message["params"]["_meta"]
                        .get("progressToken")
                        .map(Value::to_string);
                    pending
                        .waiting
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Waiting {
                            id: key.clone(),
                            progress_token,
                            answer: tx,
                            related: related.clone(),
                        });
                    let sent = self.post(&message).await;
                    let answer = match sent {
                        Ok(_) => rx
                            .await
                            .map_err(|_| failed("the upstream's SSE stream ended")),
                        Err(e) => Err(e),
                    };
                    pending
                        .waiting
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .retain(|w| w.id != key);
                    answer
                }
            }
        };
        tokio::time::timeout(self.endpoint.timeout, exchange)
            .await
            .map_err(|_| failed(format!("no answer within {:?}", self.endpoint.timeout)))?
    }

    /// Send a notification, or a response to one of the upstream's requests.
    pub async fn send(&self, message: Value) -> Result<(), UpstreamError> {
        tokio::time::timeout(self.endpoint.timeout, self.post(&message))
            .await
            .map_err(|_| failed("timed out"))?
            .map(drop)
    }

    /// End the session (Streamable HTTP's `DELETE`; the legacy stream just closes).
    pub async fn close(&self) {
        if let Link::Streamable {
            session_id: Some(id),
        } = &self.link
        {
            let _ = self
                .endpoint
                .client
                .delete(self.endpoint.url.clone())
                .headers(self.endpoint.headers.clone())
                .header(SESSION_HEADER, id)
                .header(VERSION_HEADER, &self.protocol_version)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
        }
    }
}

/// The answer to a POSTed request: a JSON body, or an SSE stream whose messages before the
/// response (the one with `id`) go to `related`.
async fn read_answer(
    resp: reqwest::Response,
    id: &Value,
    related: &MessageSink,
) -> Result<Value, UpstreamError> {
    let is_stream = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if !is_stream {
        let body: Value = resp.json().await.map_err(failed)?;
        let answer = match body {
            Value::Array(batch) => batch.into_iter().find(|m| m.get("id") == Some(id)),
            single => Some(single),
        };
        // Only a response to this request will do (anything else is not MCP).
        return answer
            .filter(|m| is_response(m) && m.get("id") == Some(id))
            .ok_or_else(|| failed("the answer is not a JSON-RPC response to the request"));
    }
    let mut events = resp.bytes_stream().eventsource();
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(failed)?;
        let Ok(message) = serde_json::from_str::<Value>(&ev.data) else {
            continue;
        };
        if is_response(&message) && message.get("id") == Some(id) {
            return Ok(message);
        }
        related(message);
    }
    Err(failed("the answer stream ended without a response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_stream_messages_go_to_the_waiting_request_or_idle() {
        let pending = Pending::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (seen_idle, seen_call) = (seen.clone(), seen.clone());
        let idle: MessageSink = Arc::new(move |m| {
            seen_idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(("idle", m))
        });
        let call: MessageSink = Arc::new(move |m| {
            seen_call
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(("call", m))
        });
        pending.dispatch(json!({"method": "notifications/message"}), &idle);
        let seen_other = seen.clone();
        let other: MessageSink = Arc::new(move |m| {
            seen_other
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(("other", m))
        });
        let (tx, mut rx) = oneshot::channel();
        let (other_tx, _other_rx) = oneshot::channel();
        for (id, token, answer, related) in [
            ("7", None, tx, call),
            ("8", Some("\"t8\""), other_tx, other),
        ] {
            pending
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Waiting {
                    id: id.into(),
                    progress_token: token.map(str::to_string),
                    answer,
                    related,
                });
        }
        pending.dispatch(json!({"method": "notifications/message"}), &idle);
        pending.dispatch(
            json!({"method": "notifications/progress", "params": {"progressToken": "t8"}}),
            &idle,
        );
        pending.dispatch(json!({"jsonrpc": "2.0", "id": 7, "result": {}}), &idle);
        assert_eq!(rx.try_recv().unwrap()["id"], 7);
        let seen = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let who: Vec<&str> = seen.iter().map(|(w, _)| *w).collect();
        assert_eq!(who, vec!["idle", "call", "other"]);
        assert_eq!(
            pending
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len(),
            1
        );
    }
}
