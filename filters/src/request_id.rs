//! `request_id` filter: propagates a well-formed incoming `X-Request-Id` (or the configured
//! header) or generates a UUIDv4, sends it upstream and echoes it on the response.
#![deny(clippy::indexing_slicing, clippy::string_slice)]

use async_trait::async_trait;
use http::HeaderName;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};

use crate::context::RequestCtx;
use crate::filter::{phase, Filter, FilterAction};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    #[serde(default = "default_header")]
    pub header: String,
    /// Trust and reuse an incoming id (when well formed); `false` always generates.
    #[serde(default = "yes")]
    pub propagate: bool,
    /// Echo the id on the response.
    #[serde(default = "yes")]
    pub response: bool,
}

fn default_header() -> String {
    "x-request-id".into()
}
fn yes() -> bool {
    true
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        RequestIdConfig {
            header: default_header(),
            propagate: true,
            response: true,
        }
    }
}

pub struct RequestId {
    header: HeaderName,
    propagate: bool,
    response: bool,
}

impl RequestId {
    pub fn build(cfg: &RequestIdConfig) -> std::result::Result<Self, String> {
        let header = HeaderName::from_bytes(cfg.header.as_bytes())
            .map_err(|_| format!("header: invalid header name `{}`", cfg.header))?;
        Ok(RequestId {
            header,
            propagate: cfg.propagate,
            response: cfg.response,
        })
    }
}

/// A fresh request id.
pub fn generate_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Incoming ids are reused only when short and made of visible ASCII (no log injection).
fn acceptable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 128 && id.iter().all(|b| b.is_ascii_graphic())
}

#[async_trait]
impl Filter for RequestId {
    fn name(&self) -> &'static str {
        "request_id"
    }

    fn phases(&self) -> u8 {
        phase::REQUEST | phase::UPSTREAM_REQUEST | phase::RESPONSE_HEADERS
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let incoming = session
            .req_header()
            .headers
            .get(&self.header)
            .map(|v| v.as_bytes())
            .filter(|v| self.propagate && acceptable(v));
        ctx.request_id = match incoming {
            Some(v) => String::from_utf8_lossy(v).into_owned(),
            None => generate_request_id(),
        };
        Ok(FilterAction::Continue)
    }

    fn on_upstream_request(
        &self,
        _session: &Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream.insert_header(self.header.clone(), ctx.request_id.as_str())
    }

    fn on_response_headers(
        &self,
        _session: &Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if self.response && !ctx.request_id.is_empty() {
            response.insert_header(self.header.clone(), ctx.request_id.as_str())?;
        }
        Ok(())
    }
}

impl crate::build::BuildFilter for RequestId {
    const TYPE: &'static str = "request_id";
    type Config = RequestIdConfig;

    fn build(
        cfg: &RequestIdConfig,
        _bctx: &mut crate::build::BuildContext,
    ) -> std::result::Result<Self, String> {
        RequestId::build(cfg)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    #[test]
    fn acceptable_ids() {
        assert!(super::acceptable(b"abc-123"));
        assert!(!super::acceptable(b"has space"));
        assert!(!super::acceptable(b"new\nline"));
        assert!(!super::acceptable(&[b'a'; 200]));
    }
}
