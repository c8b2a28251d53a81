//! The `Filter` trait: one hook per proxy phase, all optional. Request phases run in the order
//! the chain declares them; response phases run in reverse. A filter may answer a request
//! itself (`FilterAction::Respond`), which stops the request phase and never reaches upstream.

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use crate::context::RequestCtx;

/// What the request phase of a filter decided.
pub enum FilterAction {
    /// Go on with the next filter.
    Continue,
    /// Answer the client now; later filters and the upstream are skipped.
    Respond(LocalResponse),
    /// Answer the client now with a body streamed as it is produced (an SSE stream): chunks are
    /// written and flushed as they arrive; the response ends when every sender is dropped, or
    /// when the client goes away (writes fail, and the receiver is dropped so senders see it).
    Stream(LocalStream),
    /// Switch protocols (101 with these headers) and hand the connection to the filter: the
    /// client's bytes are written to `io` and what the filter writes to its end of `io` goes to
    /// the client, until either side closes (a WebSocket the filter serves itself).
    Upgrade(LocalUpgrade),
}

/// A connection the filter takes over (see `FilterAction::Upgrade`).
pub struct LocalUpgrade {
    pub headers: Vec<(String, String)>,
    pub io: tokio::io::DuplexStream,
}

/// A streamed local response (see `FilterAction::Stream`).
pub struct LocalStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: tokio::sync::mpsc::Receiver<Bytes>,
}

/// A response produced by the gateway itself (static route, preflight, 404, 413, ...).
#[derive(Clone, Debug)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl LocalResponse {
    pub fn new(status: u16) -> Self {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A JSON error body `{"error": message, "status": status}`.
    pub fn json_error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message, "status": status }).to_string();
        LocalResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Which phases a filter implements; the chain only calls the hooks a filter declares.
pub mod phase {
    pub const REQUEST: u8 = 1;
    pub const REQUEST_BODY: u8 = 1 << 1;
    pub const UPSTREAM_REQUEST: u8 = 1 << 2;
    pub const RESPONSE_HEADERS: u8 = 1 << 3;
    pub const RESPONSE_BODY: u8 = 1 << 4;
    pub const LOGGING: u8 = 1 << 5;
}

#[async_trait]
pub trait Filter: Send + Sync {
    /// The filter's `type:` name, used in logs and metrics.
    fn name(&self) -> &'static str;

    /// The phases this filter implements (a mask of `phase::*`).
    fn phases(&self) -> u8;

    /// This filter's config version is now serving (at start-up, after a reload): start any
    /// background work, such as fetching keys. Runs on the control plane's runtime.
    fn activate(&self) {}

    /// Why this filter cannot serve yet (`/ready` answers 503 with it), or `None`: e.g. a `jwt`
    /// filter whose signing keys have not been fetched once.
    fn not_ready(&self) -> Option<String> {
        None
    }

    /// Request headers have arrived. Runs in declared order.
    async fn on_request(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        Ok(FilterAction::Continue)
    }

    /// A piece of the request body (not the whole body) is about to go upstream.
    async fn on_request_body(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        Ok(())
    }

    /// The request header that will be sent upstream.
    fn on_upstream_request(
        &self,
        _session: &Session,
        _upstream: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        Ok(())
    }

    /// The response header about to go to the client (upstream or local). Runs in reverse order.
    fn on_response_headers(
        &self,
        _session: &Session,
        _response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        Ok(())
    }

    /// A piece of the response body on its way to the client. Must not block or buffer unboundedly.
    fn on_response_body(
        &self,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        Ok(())
    }

    /// The request is finished (successfully or not); `status` is what the client got (0: none).
    fn on_logging(&self, _session: &Session, _ctx: &RequestCtx, _status: u16) {}
}
