//! `body_limit` filter: refuses request bodies larger than `max_size` with 413, from the
//! `Content-Length` header up front or, for chunked bodies, as soon as the streamed total passes it.

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};

use crate::context::RequestCtx;
use crate::filter::{phase, Filter, FilterAction, LocalResponse};
use crate::units::ByteSize;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BodyLimitConfig {
    pub max_size: ByteSize,
}

pub struct BodyLimit {
    max: u64,
}

/// Bytes of request body seen so far (kept in the request context).
#[derive(Clone)]
struct BodySeen(u64);

impl BodyLimit {
    pub fn build(cfg: &BodyLimitConfig) -> std::result::Result<Self, String> {
        Ok(BodyLimit {
            max: cfg.max_size.0,
        })
    }
}

#[async_trait]
impl Filter for BodyLimit {
    fn name(&self) -> &'static str {
        "body_limit"
    }

    fn phases(&self) -> u8 {
        phase::REQUEST | phase::REQUEST_BODY
    }

    async fn on_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(len) = declared {
            if len > self.max {
                ctx.reject("body_limit", "too_large");
                // The body is not read; the connection must not be reused.
                session.set_keepalive(None);
                return Ok(FilterAction::Respond(LocalResponse::json_error(
                    413,
                    &format!(
                        "request body of {len} bytes exceeds the limit of {} bytes",
                        self.max
                    ),
                )));
            }
        }
        Ok(FilterAction::Continue)
    }

    async fn on_request_body(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(chunk) = body else { return Ok(()) };
        let seen = match ctx.extensions.get_mut::<BodySeen>() {
            Some(s) => {
                s.0 += chunk.len() as u64;
                s.0
            }
            None => {
                ctx.extensions.insert(BodySeen(chunk.len() as u64));
                chunk.len() as u64
            }
        };
        if seen > self.max {
            ctx.reject("body_limit", "too_large");
            session.set_keepalive(None);
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                format!("request body exceeds the limit of {} bytes", self.max),
            ));
        }
        Ok(())
    }
}

impl crate::build::BuildFilter for BodyLimit {
    const TYPE: &'static str = "body_limit";
    type Config = BodyLimitConfig;

    fn build(
        cfg: &BodyLimitConfig,
        _bctx: &mut crate::build::BuildContext,
    ) -> std::result::Result<Self, String> {
        BodyLimit::build(cfg)
    }
}
