//! Admin endpoints a filter serves on the admin listener (the canary weights, the shadow
//! report, the `/uac` contracts): the `AdminEndpoint` trait, the request it is given and the
//! reply it returns. A filter registers its endpoint while it is built
//! (`BuildContext::register_admin`); the endpoint serves while that config version does. The
//! admin listener keeps deciding who may call (Host, Origin, body type, the admin token).

use async_trait::async_trait;
use serde_json::Value;

/// One admin request, as the admin listener read it (the body is bounded there).
pub struct AdminRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// Header names lower case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl AdminRequest<'_> {
    /// A request header's value (names are compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::exchange::header(self.headers, name)
    }

    /// A query parameter's decoded value; empty counts as absent.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    }
}

/// An endpoint's answer.
pub struct AdminReply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl AdminReply {
    /// A JSON answer on one line.
    pub fn json(status: u16, v: &Value) -> Self {
        AdminReply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    /// A JSON answer, pretty-printed (for reports people read).
    pub fn pretty(status: u16, v: &Value) -> Self {
        AdminReply {
            body: serde_json::to_vec_pretty(v).unwrap_or_default(),
            ..Self::json(status, &Value::Null)
        }
    }

    /// `{"error": message, "status": status}`.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(
            status,
            &serde_json::json!({ "error": message, "status": status }),
        )
    }

    /// An answer without a body (204).
    pub fn empty(status: u16) -> Self {
        AdminReply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

#[async_trait]
pub trait AdminEndpoint: Send + Sync {
    /// The path served: the endpoint gets `path` itself and everything under `path/`.
    fn path(&self) -> &'static str;

    /// Whether the endpoint authenticates its callers itself (then the admin token is not
    /// asked for; Host, Origin and body checks still apply).
    fn authenticates_callers(&self) -> bool {
        false
    }

    async fn handle(&self, req: &AdminRequest<'_>) -> AdminReply;
}

/// Whether `endpoint` serves `path` (the path itself or below it).
pub fn serves(endpoint: &dyn AdminEndpoint, path: &str) -> bool {
    let own = endpoint.path();
    path.strip_prefix(own)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
