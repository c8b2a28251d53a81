//! The HTTP side of the `mcp` filter: routing a request to its transport (Streamable HTTP,
//! the legacy HTTP+SSE one, WebSocket), the `Origin` check against DNS rebinding, the
//! Streamable HTTP endpoint itself (POST of messages and batches, answered as JSON or as an SSE
//! stream; GET of the server's stream; DELETE of a session; POSTs of the stateless revision),
//! and building replies (`Reply`, HTTP errors, SSE answers).

use std::sync::Arc;

use bytes::Bytes;
use pingora_core::Result;
use pingora_proxy::Session;
use serde_json::{json, Value};

use super::dispatch::{PROTOCOL_VERSIONS, RATE_LIMITED};
use super::jsonrpc::{self, INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR};
use super::server::{Caller, McpCore};
use super::session::SessionError;
use super::state::session_key;
use super::stateless::{self, MODERN_VERSION};
use super::upstream::MessageSink;
use super::websocket;
use crate::context::RequestCtx;
use crate::filter::{FilterAction, LocalResponse, LocalStream};

pub(super) const SESSION_HEADER: &str = "mcp-session-id";
pub(super) const VERSION_HEADER: &str = "mcp-protocol-version";

/// A reply to one POST: status, JSON body (none for 202) and headers.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: Option<Value>,
    pub(super) headers: Vec<(String, String)>,
}

impl Reply {
    pub(super) fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }
    pub(super) fn accepted() -> Self {
        Reply {
            status: 202,
            body: None,
            headers: Vec::new(),
        }
    }
    pub(super) fn into_local(self) -> LocalResponse {
        let mut resp = LocalResponse::new(self.status);
        resp.headers = self.headers;
        if let Some(body) = self.body {
            resp.headers
                .push(("content-type".into(), "application/json".into()));
            resp.body = Bytes::from(body.to_string());
        }
        resp
    }
}

/// A protocol error answered with an HTTP status and a JSON-RPC error without id.
pub(super) fn http_error(status: u16, code: i64, message: &str) -> Reply {
    Reply::json(status, jsonrpc::error(Value::Null, code, message))
}

/// A localhost `Origin` (any port, either scheme): always allowed.
fn is_local_origin(origin: &str) -> bool {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let Some(rest) = rest else { return false };
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().map(|h| format!("[{h}]")),
        None => rest.split(':').next().map(str::to_string),
    };
    matches!(host.as_deref(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

/// An SSE stream as the answer (either transport).
pub(super) fn sse_answer(body: tokio::sync::mpsc::Receiver<Bytes>) -> FilterAction {
    FilterAction::Stream(LocalStream {
        status: 200,
        headers: vec![
            ("content-type".into(), "text/event-stream".into()),
            ("cache-control".into(), "no-cache".into()),
            ("x-accel-buffering".into(), "no".into()),
        ],
        body,
    })
}

/// One message as an SSE event (of a POST's answer stream).
fn sse_data(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

/// What a POST gets: one reply, or an SSE stream of related messages and then the reply.
enum Answer {
    Reply(Reply),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

/// What a relayed request's handler sends back: messages related to it, then its reply.
enum Piece {
    Related(Value),
    Final(Value),
}

/// How a relayed request is answered (see `McpCore::answer_relayed`).
enum Relayed {
    /// Its reply, with nothing before it.
    Reply(Value),
    /// Related messages came first: the SSE stream of them and then the reply.
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
    /// The handler ended without a reply.
    Nothing,
}

impl McpCore {
    pub(super) async fn on_request(
        self: &Arc<Self>,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let req = session.req_header();
        let path = req.uri.path();
        let legacy = self.legacy.as_ref().and_then(|(sse, messages)| {
            if path == sse {
                Some(true)
            } else if path == messages {
                Some(false)
            } else {
                None
            }
        });
        let is_ws = self.ws_path.as_deref() == Some(path);
        if path != self.path && legacy.is_none() && !is_ws {
            return Ok(FilterAction::Continue);
        }
        if let Some(origin) = req.headers.get("origin").and_then(|v| v.to_str().ok()) {
            if !self.origin_allowed(origin) {
                ctx.reject("mcp", "origin");
                return Ok(FilterAction::Respond(
                    http_error(403, INVALID_REQUEST, "Origin not allowed").into_local(),
                ));
            }
        }
        let method = req.method.clone();
        if is_ws {
            return Ok(match websocket::handshake(req) {
                Ok(headers) => {
                    let ws_path = self.ws_path.clone().unwrap_or_default();
                    let caller = self.caller(
                        ctx,
                        req,
                        websocket::session_id(),
                        String::new(),
                        Value::Null,
                        &ws_path,
                    );
                    self.websocket(headers, caller)
                }
                Err(refusal) => {
                    ctx.reject("mcp", "protocol");
                    FilterAction::Respond(refusal.into_local())
                }
            });
        }
        if let (Some(is_stream), Some((sse, messages))) = (legacy, &self.legacy) {
            let reply = match (is_stream, method.as_str()) {
                (true, "GET") => return Ok(self.legacy_open(sse, messages)),
                (false, "POST") => self.legacy_post(session, ctx, sse).await?,
                _ => {
                    let mut r = http_error(405, INVALID_REQUEST, "method not allowed");
                    let allow = if is_stream { "GET" } else { "POST" };
                    r.headers.push(("allow".into(), allow.into()));
                    r
                }
            };
            if reply.status >= 400 {
                ctx.reject("mcp", "protocol");
            }
            return Ok(FilterAction::Respond(reply.into_local()));
        }
        let session_id = req
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let stateless = req
            .headers
            .get(VERSION_HEADER)
            .is_some_and(|v| v.as_bytes() == MODERN_VERSION.as_bytes());
        let reply = match method.as_str() {
            // The stateless revision has no sessions to stream to or end.
            "GET" | "DELETE" if stateless => {
                let mut r = http_error(
                    405,
                    INVALID_REQUEST,
                    "the 2026-07-28 revision takes POST only",
                );
                r.headers.push(("allow".into(), "POST".into()));
                r
            }
            "POST" => match self.post(session, ctx).await? {
                Answer::Reply(reply) => reply,
                Answer::Stream(events) => return Ok(sse_answer(events)),
            },
            "DELETE" => match session_id.as_deref() {
                None => http_error(400, INVALID_REQUEST, "missing Mcp-Session-Id header"),
                Some(id) => match self.sealer.open(id) {
                    Ok(_) => {
                        self.sealer.terminate(id);
                        self.state.hub.close(&self.path, id);
                        self.state.active_sessions.invalidate(&session_key(id));
                        if let Some(fed) = self.federation.clone() {
                            let id = id.to_string();
                            crate::background::handle()
                                .spawn(async move { fed.close_client(&id).await });
                        }
                        Reply {
                            status: 204,
                            body: None,
                            headers: Vec::new(),
                        }
                    }
                    Err(_) => http_error(404, INVALID_REQUEST, "unknown session"),
                },
            },
            "GET" if self.get_stream => {
                let req = session.req_header();
                let accept = req
                    .headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let last_event_id = req
                    .headers
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match session_id.as_deref().map(|id| (id, self.sealer.open(id))) {
                    _ if !accept.contains("text/event-stream") => http_error(
                        406,
                        INVALID_REQUEST,
                        "Accept must include text/event-stream",
                    ),
                    None => http_error(400, INVALID_REQUEST, "missing Mcp-Session-Id header"),
                    Some((_, Err(_))) => http_error(404, INVALID_REQUEST, "unknown session"),
                    Some((id, Ok(_))) => {
                        return Ok(sse_answer(self.state.hub.open(
                            &self.path,
                            id,
                            last_event_id,
                            self.sse_keepalive,
                        )));
                    }
                }
            }
            _ => {
                let (allow, why) = if self.get_stream {
                    ("GET, POST, DELETE", "this endpoint takes GET (the server's stream), POST (messages) and DELETE (end a session)")
                } else {
                    ("POST, DELETE", "this endpoint takes POST (messages) and DELETE (end a session); it offers no GET stream")
                };
                let mut r = http_error(405, INVALID_REQUEST, why);
                r.headers.push(("allow".into(), allow.into()));
                r
            }
        };
        if reply.status >= 400 {
            ctx.reject("mcp", "protocol");
        }
        Ok(FilterAction::Respond(reply.into_local()))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        is_local_origin(origin)
            || self
                .allowed_origins
                .iter()
                .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }

    /// Read the whole body as JSON; the refusal when it exceeds `max_body` (413) or is not
    /// JSON (-32700).
    pub(super) async fn read_message(
        &self,
        session: &mut Session,
    ) -> Result<std::result::Result<Value, Reply>> {
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if (body.len() + chunk.len()) as u64 > self.max_body {
                return Ok(Err(http_error(
                    413,
                    INVALID_REQUEST,
                    &format!("the request body exceeds {} bytes", self.max_body),
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(serde_json::from_slice(&body)
            .map_err(|e| http_error(400, PARSE_ERROR, &format!("parse error: {e}"))))
    }

    async fn post(self: &Arc<Self>, session: &mut Session, ctx: &RequestCtx) -> Result<Answer> {
        let req = session.req_header();
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let accept = header("accept").map(|a| a.to_ascii_lowercase());
        if let Some(a) = &accept {
            if !(a.contains("application/json") || a.contains("*/*") || a.contains("application/*"))
            {
                return Ok(Answer::Reply(http_error(
                    406,
                    INVALID_REQUEST,
                    "Accept must include application/json",
                )));
            }
        }
        let accepts_stream = accept.is_some_and(|a| a.contains("text/event-stream"));
        if let Some(ct) = header("content-type") {
            if !ct.to_ascii_lowercase().starts_with("application/json") {
                return Ok(Answer::Reply(http_error(
                    415,
                    INVALID_REQUEST,
                    "Content-Type must be application/json",
                )));
            }
        }
        let session_id = header(SESSION_HEADER);
        let version_header = header(VERSION_HEADER);
        if let Some(v) = version_header
            .as_ref()
            .filter(|v| !PROTOCOL_VERSIONS.contains(&v.as_str()))
        {
            // Not a handshake revision: the stateless one (or a version nobody speaks).
            let routing = stateless::RoutingHeaders {
                version: v.clone(),
                method: header("mcp-method"),
                name: header("mcp-name"),
            };
            return self
                .post_stateless(session, ctx, routing, accepts_stream)
                .await;
        }
        let message = match self.read_message(session).await? {
            Ok(m) => m,
            Err(refusal) => return Ok(Answer::Reply(refusal)),
        };
        // `initialize` opens a session; everything else needs one.
        let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
        if is_initialize {
            return Ok(Answer::Reply(self.handle_initialize(&message, None)));
        }
        let Some(id) = session_id else {
            return Ok(Answer::Reply(http_error(
                400,
                INVALID_REQUEST,
                "missing Mcp-Session-Id header (initialize first)",
            )));
        };
        let state = match self.sealer.open(&id) {
            Ok(s) => s,
            Err(e) => {
                let why = match e {
                    SessionError::Unknown => "unknown session",
                    SessionError::Expired => "session expired",
                    SessionError::Terminated => "session terminated",
                };
                return Ok(Answer::Reply(http_error(
                    404,
                    INVALID_REQUEST,
                    &format!("{why}: initialize a new one"),
                )));
            }
        };
        if let Some(v) = &version_header {
            if *v != state.protocol_version {
                return Ok(Answer::Reply(http_error(
                    400,
                    INVALID_REQUEST,
                    &format!(
                        "MCP-Protocol-Version `{v}` is not this session's `{}`",
                        state.protocol_version
                    ),
                )));
            }
        }
        let caller = self.caller(
            ctx,
            session.req_header(),
            id,
            state.protocol_version,
            state.client_capabilities,
            &self.path,
        );
        let version = caller.version.as_str();
        match message {
            Value::Array(batch) => {
                if version != "2025-03-26" {
                    return Ok(Answer::Reply(Reply::json(
                        400,
                        jsonrpc::error(
                            Value::Null,
                            INVALID_REQUEST,
                            &format!("JSON-RPC batches are not part of protocol version {version}"),
                        ),
                    )));
                }
                if batch.is_empty() {
                    return Ok(Answer::Reply(Reply::json(
                        400,
                        jsonrpc::error(Value::Null, INVALID_REQUEST, "empty batch"),
                    )));
                }
                if batch.len() > self.max_batch {
                    return Ok(Answer::Reply(Reply::json(
                        400,
                        jsonrpc::error(
                            Value::Null,
                            INVALID_REQUEST,
                            &format!(
                                "a batch of {} messages is more than max_batch ({})",
                                batch.len(),
                                self.max_batch
                            ),
                        ),
                    )));
                }
                // The HTTP request was counted once; every further request in it counts too.
                let requests = batch
                    .iter()
                    .filter(|m| m.get("method").is_some() && m.get("id").is_some())
                    .count();
                if !crate::rate_limit::charge_extra(ctx, requests.saturating_sub(1)).await {
                    return Ok(Answer::Reply(Reply::json(
                        429,
                        jsonrpc::error(
                            Value::Null,
                            RATE_LIMITED,
                            "rate limit exceeded: each request of a batch counts",
                        ),
                    )));
                }
                let related = self.stream_sink(&caller);
                let mut replies = Vec::new();
                for m in &batch {
                    if let Some(r) = self.handle_message(m, &caller, &related).await {
                        replies.push(r);
                    }
                }
                Ok(Answer::Reply(if replies.is_empty() {
                    Reply::accepted()
                } else {
                    Reply::json(200, Value::Array(replies))
                }))
            }
            // A request relayed to an upstream may bring messages before its answer (progress,
            // logging, sampling…): those make the answer an SSE stream (see `answer_relayed`).
            single if accepts_stream && self.relays(&single) => Ok(
                match self.answer_relayed(single, caller, |reply| reply).await {
                    Relayed::Reply(reply) => Answer::Reply(Reply::json(200, reply)),
                    Relayed::Stream(events) => Answer::Stream(events),
                    Relayed::Nothing => Answer::Reply(Reply::accepted()),
                },
            ),
            single => {
                let related = self.stream_sink(&caller);
                Ok(Answer::Reply(
                    match self.handle_message(&single, &caller, &related).await {
                        Some(reply) => Reply::json(200, reply),
                        None => Reply::accepted(),
                    },
                ))
            }
        }
    }

    /// Answer one relayed request: its reply alone (as `finish` makes it) when nothing comes
    /// before it, so the client gets one `application/json` answer on a connection it keeps;
    /// an SSE stream as soon as a related message (progress, logging, sampling…) comes first,
    /// carrying those messages and then the reply. A client that goes away, before or during
    /// the stream, cancels the request.
    async fn answer_relayed(
        self: &Arc<Self>,
        message: Value,
        caller: Caller,
        finish: impl FnOnce(Value) -> Value + Send + 'static,
    ) -> Relayed {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(1024);
        let events = tx.clone();
        let related: MessageSink = Arc::new(move |m: Value| {
            let _ = events.try_send(Piece::Related(m));
        });
        let core = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                reply = core.handle_message(&message, &caller, &related) => {
                    if let Some(reply) = reply {
                        let _ = tx.send(Piece::Final(finish(reply))).await;
                    }
                }
                _ = tx.closed() => {}
            }
        });
        let first = match rx.recv().await {
            None => return Relayed::Nothing,
            Some(Piece::Final(reply)) => return Relayed::Reply(reply),
            Some(Piece::Related(m)) => m,
        };
        let (out, body) = tokio::sync::mpsc::channel::<Bytes>(1024);
        tokio::spawn(async move {
            let mut next = Some(Piece::Related(first));
            while let Some(piece) = next.take() {
                let (message, last) = match piece {
                    Piece::Related(m) => (m, false),
                    Piece::Final(m) => (m, true),
                };
                if out.send(sse_data(&message)).await.is_err() || last {
                    break;
                }
                // The client closing the stream drops `rx`, which cancels the request.
                next = tokio::select! {
                    piece = rx.recv() => piece,
                    _ = out.closed() => None,
                };
            }
        });
        Relayed::Stream(body)
    }

    /// A POST of the stateless 2026-07-28 revision (see `stateless`).
    async fn post_stateless(
        self: &Arc<Self>,
        session: &mut Session,
        ctx: &RequestCtx,
        routing: stateless::RoutingHeaders,
        accepts_stream: bool,
    ) -> Result<Answer> {
        let message = match self.read_message(session).await? {
            Ok(m) => m,
            Err(refusal) => return Ok(Answer::Reply(refusal)),
        };
        let request = match stateless::check(message, &routing) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Answer::Reply(Reply::accepted())),
            Err((status, body)) => {
                self.count("other", "", "error");
                return Ok(Answer::Reply(Reply::json(status, body)));
            }
        };
        let method = request.method.clone();
        if method == "server/discover" {
            self.count("server/discover", "", "ok");
            let result = stateless::discover(&self.server_name, self.capabilities(true));
            return Ok(Answer::Reply(Reply::json(
                200,
                jsonrpc::result(request.id, result),
            )));
        }
        let mut caller = self.caller(
            ctx,
            session.req_header(),
            String::new(),
            MODERN_VERSION.into(),
            json!({}),
            &self.path,
        );
        caller.stateless = true;
        caller.log_level = request.log_level;
        let reply = if accepts_stream && self.relays(&request.message) {
            let finish = {
                let method = method.clone();
                move |reply| stateless::finish(&method, reply)
            };
            match self.answer_relayed(request.message, caller, finish).await {
                Relayed::Reply(reply) => reply,
                Relayed::Stream(events) => return Ok(Answer::Stream(events)),
                Relayed::Nothing => jsonrpc::error(request.id, INTERNAL_ERROR, "no reply"),
            }
        } else {
            // Without a stream, what the upstream says meanwhile has nowhere to go.
            let nowhere: MessageSink = Arc::new(|_| {});
            let reply = self
                .handle_message(&request.message, &caller, &nowhere)
                .await
                .unwrap_or_else(|| jsonrpc::error(request.id, INTERNAL_ERROR, "no reply"));
            stateless::finish(&method, reply)
        };
        let status = reply["error"]["code"]
            .as_i64()
            .map(stateless::status_of)
            .unwrap_or(200);
        Ok(Answer::Reply(Reply::json(status, reply)))
    }

    /// The sink of related messages when the answer is not a stream: the client's server stream.
    pub(super) fn stream_sink(&self, caller: &Caller) -> MessageSink {
        let (path, session) = (caller.stream_path.clone(), caller.session_id.clone());
        let state = self.state.clone();
        Arc::new(move |m: Value| state.hub.publish(&path, &session, &m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::server::core_for_test;

    #[test]
    fn local_origins() {
        assert!(is_local_origin("http://localhost:3000"));
        assert!(is_local_origin("http://127.0.0.1"));
        assert!(is_local_origin("https://[::1]:8443"));
        assert!(!is_local_origin("http://evil.example"));
        assert!(!is_local_origin("http://localhost.evil.example"));
        assert!(!is_local_origin("null"));
        assert!(is_local_origin("http://localhost"));
        assert!(is_local_origin("https://localhost:8443"));
        assert!(is_local_origin("http://[::1]"));
        assert!(!is_local_origin("http://127.0.0.1.evil.example"));
        assert!(!is_local_origin("http://127.0.0.2:3000"));
        assert!(!is_local_origin("http://[::2]:3000"));
        assert!(!is_local_origin("ws://localhost:3000"));
        assert!(!is_local_origin("localhost:3000"));
        assert!(!is_local_origin(""));
    }

    #[test]
    fn allowed_origins() {
        let core = core_for_test(json!({"allowed_origins": ["https://app.example"]}));
        assert!(core.origin_allowed("https://app.example"));
        assert!(core.origin_allowed("HTTPS://APP.EXAMPLE"));
        assert!(core.origin_allowed("http://localhost:5173"));
        assert!(!core.origin_allowed("https://app.example:444"));
        assert!(!core.origin_allowed("https://evil.example"));
        assert!(!core.origin_allowed("null"));
        let any = core_for_test(json!({"allowed_origins": ["*"]}));
        assert!(any.origin_allowed("https://evil.example"));
        assert!(any.origin_allowed("null"));
        let none = core_for_test(json!({}));
        assert!(!none.origin_allowed("https://app.example"));
    }

    #[test]
    fn replies_become_local_responses() {
        let r = Reply::json(200, json!({"a": 1})).into_local();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers,
            [("content-type".to_string(), "application/json".to_string())]
        );
        assert_eq!(&r.body[..], br#"{"a":1}"#);
        let r = Reply::accepted().into_local();
        assert_eq!(r.status, 202);
        assert!(r.headers.is_empty() && r.body.is_empty());
        let mut refused = http_error(405, INVALID_REQUEST, "method not allowed");
        refused.headers.push(("allow".into(), "POST".into()));
        let r = refused.into_local();
        assert_eq!(r.status, 405);
        assert_eq!(r.headers[0], ("allow".to_string(), "POST".to_string()));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": INVALID_REQUEST, "message": "method not allowed"}})
        );
    }

    #[test]
    fn sse_events_and_answers() {
        assert_eq!(
            sse_data(&json!({"id": 1})),
            Bytes::from_static(b"event: message\ndata: {\"id\":1}\n\n")
        );
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let FilterAction::Stream(stream) = sse_answer(rx) else {
            panic!("an SSE answer is a stream");
        };
        assert_eq!(stream.status, 200);
        assert!(stream
            .headers
            .contains(&("content-type".to_string(), "text/event-stream".to_string())));
        assert!(stream
            .headers
            .contains(&("cache-control".to_string(), "no-cache".to_string())));
    }
}
