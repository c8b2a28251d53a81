//! `headers` filter: add, set and remove request headers (on the way upstream) and response
//! headers (on the way to the client). Values are templates over request data. Also the list of
//! headers that carry credentials (`CREDENTIAL_HEADERS`), kept out of policy inputs (`opa`) and
//! of shadow capture's store (`uac`).
#![deny(clippy::indexing_slicing, clippy::string_slice)]

use std::collections::BTreeMap;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};

use crate::context::RequestCtx;
use crate::filter::{phase, Filter};
use crate::template::Template;

/// Headers whose values are credentials: never shown to policies (`opa`), never stored (shadow
/// capture). Lower case.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
];

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsConfig {
    /// Append a value (keeps existing values).
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Replace any existing value.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    #[serde(default)]
    pub request: HeaderOpsConfig,
    #[serde(default)]
    pub response: HeaderOpsConfig,
}

/// A header value: fixed values are built once at config load, templates per request.
enum ValueSource {
    Fixed(HeaderValue),
    Template(Template),
}

impl ValueSource {
    fn value(&self, session: &Session, ctx: &RequestCtx) -> Result<HeaderValue> {
        match self {
            ValueSource::Fixed(v) => Ok(v.clone()),
            ValueSource::Template(t) => {
                HeaderValue::from_str(&t.render(session, ctx)).map_err(|e| {
                    pingora_core::Error::because(
                        pingora_core::ErrorType::InternalError,
                        "templated header value",
                        e,
                    )
                })
            }
        }
    }
}

#[derive(Default)]
struct HeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, ValueSource)>,
    add: Vec<(HeaderName, ValueSource)>,
}

impl HeaderOps {
    fn build(cfg: &HeaderOpsConfig, side: &str) -> std::result::Result<Self, String> {
        let name = |k: &str, op: &str| {
            HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("{side}.{op}: invalid header name `{k}`"))
        };
        let tpl = |k: &str, v: &str, op: &str| -> std::result::Result<ValueSource, String> {
            let t = Template::parse(v).map_err(|e| format!("{side}.{op}.{k}: {e}"))?;
            if t.is_literal() {
                HeaderValue::from_str(v)
                    .map(ValueSource::Fixed)
                    .map_err(|_| format!("{side}.{op}.{k}: invalid header value"))
            } else {
                Ok(ValueSource::Template(t))
            }
        };
        Ok(HeaderOps {
            remove: cfg
                .remove
                .iter()
                .map(|k| name(k, "remove"))
                .collect::<std::result::Result<_, _>>()?,
            set: cfg
                .set
                .iter()
                .map(|(k, v)| Ok((name(k, "set")?, tpl(k, v, "set")?)))
                .collect::<std::result::Result<_, String>>()?,
            add: cfg
                .add
                .iter()
                .map(|(k, v)| Ok((name(k, "add")?, tpl(k, v, "add")?)))
                .collect::<std::result::Result<_, String>>()?,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

pub struct Headers {
    request: HeaderOps,
    response: HeaderOps,
}

impl Headers {
    pub fn build(cfg: &HeadersConfig) -> std::result::Result<Self, String> {
        Ok(Headers {
            request: HeaderOps::build(&cfg.request, "request")?,
            response: HeaderOps::build(&cfg.response, "response")?,
        })
    }
}

#[async_trait]
impl Filter for Headers {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn phases(&self) -> u8 {
        let mut p = 0;
        if !self.request.is_empty() {
            p |= phase::UPSTREAM_REQUEST;
        }
        if !self.response.is_empty() {
            p |= phase::RESPONSE_HEADERS;
        }
        p
    }

    fn on_upstream_request(
        &self,
        session: &Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for name in &self.request.remove {
            upstream.remove_header(name);
        }
        for (name, value) in &self.request.set {
            upstream.insert_header(name.clone(), value.value(session, ctx)?)?;
        }
        for (name, value) in &self.request.add {
            upstream.append_header(name.clone(), value.value(session, ctx)?)?;
        }
        Ok(())
    }

    fn on_response_headers(
        &self,
        session: &Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for name in &self.response.remove {
            response.remove_header(name);
        }
        for (name, value) in &self.response.set {
            response.insert_header(name.clone(), value.value(session, ctx)?)?;
        }
        for (name, value) in &self.response.add {
            response.append_header(name.clone(), value.value(session, ctx)?)?;
        }
        Ok(())
    }
}

impl crate::build::BuildFilter for Headers {
    const TYPE: &'static str = "headers";
    type Config = HeadersConfig;

    fn build(
        cfg: &HeadersConfig,
        _bctx: &mut crate::build::BuildContext,
    ) -> std::result::Result<Self, String> {
        Headers::build(cfg)
    }
}
