//! The 2024-11-05 HTTP+SSE transport (`legacy_sse`): `GET sse_path` opens a session and its
//! stream, whose first event names `messages_path?session_id=…`; each POST there is handled and
//! answered as an event on that stream, the POST itself getting 202. This transport speaks
//! 2024-11-05 only, whatever the client asks.

use std::sync::Arc;

use bytes::Bytes;
use pingora_core::Result;
use pingora_proxy::Session;
use serde_json::{json, Value};

use super::http::{http_error, sse_answer, Reply};
use super::jsonrpc::{self, INVALID_REQUEST};
use super::server::McpCore;
use crate::context::RequestCtx;
use crate::filter::FilterAction;

/// The legacy HTTP+SSE transport speaks this version only.
const LEGACY_VERSION: &str = "2024-11-05";

impl McpCore {
    /// Legacy transport, `GET sse_path`: a new session and its stream, whose first event is
    /// the `endpoint` to POST messages to.
    pub(super) fn legacy_open(&self, sse_path: &str, messages_path: &str) -> FilterAction {
        let id = self.sealer.seal(LEGACY_VERSION, None);
        let first = Bytes::from(format!(
            "event: endpoint\ndata: {messages_path}?session_id={id}\n\n"
        ));
        sse_answer(
            self.state
                .hub
                .open_with(sse_path, &id, None, self.sse_keepalive, first),
        )
    }

    /// Legacy transport, `POST messages_path?session_id=…`: the message is handled here and
    /// its answer sent as an event on the session's stream; the POST itself gets 202.
    pub(super) async fn legacy_post(
        self: &Arc<Self>,
        session: &mut Session,
        ctx: &RequestCtx,
        sse_path: &str,
    ) -> Result<Reply> {
        let req = session.req_header();
        let id = form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "session_id")
            .map(|(_, v)| v.into_owned());
        let Some(id) = id else {
            return Ok(http_error(400, INVALID_REQUEST, "missing session_id"));
        };
        if self.sealer.open(&id).is_err() {
            return Ok(http_error(404, INVALID_REQUEST, "unknown session"));
        }
        let capabilities = self
            .state
            .unsealed_capabilities
            .get(&id)
            .unwrap_or(Value::Null);
        let caller = self.caller(
            ctx,
            req,
            id,
            LEGACY_VERSION.to_string(),
            capabilities,
            sse_path,
        );
        let mut message = match self.read_message(session).await? {
            Ok(m) => m,
            Err(refusal) => return Ok(refusal),
        };
        let reply = if message.get("method").and_then(Value::as_str) == Some("initialize") {
            // This transport speaks its own version, whatever the client asked.
            if let Some(p) = message.get_mut("params").and_then(Value::as_object_mut) {
                p.insert("protocolVersion".into(), json!(LEGACY_VERSION));
            }
            self.handle_initialize(&message, Some(&caller.session_id))
                .body
        } else if message.is_array() {
            Some(jsonrpc::error(
                Value::Null,
                INVALID_REQUEST,
                "JSON-RPC batches are not part of protocol version 2024-11-05",
            ))
        } else {
            // Answered on the stream, so the POST is accepted at once: the client's next POSTs
            // (its answer to a sampling request the call needs, say) are not held up behind it.
            let core = self.clone();
            tokio::spawn(async move {
                let related = core.stream_sink(&caller);
                if let Some(reply) = core.handle_message(&message, &caller, &related).await {
                    related(reply);
                }
            });
            return Ok(Reply::accepted());
        };
        if let Some(reply) = reply {
            self.state.hub.publish(sse_path, &caller.session_id, &reply);
        }
        Ok(Reply::accepted())
    }
}
