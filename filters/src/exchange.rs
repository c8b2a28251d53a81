//! One request/response exchange recorded as it passes through a chain, for the filters that
//! look at it after the client was answered (`mirror` copies it, `shadow_capture` stores it):
//! method, path and query, headers, and both bodies up to a size, past which the bodies are
//! dropped and the exchange marked too large.

use bytes::Bytes;

use crate::filter::phase;

/// The phases a filter recording the whole exchange runs in.
pub const EXCHANGE_PHASES: u8 = phase::REQUEST
    | phase::REQUEST_BODY
    | phase::RESPONSE_HEADERS
    | phase::RESPONSE_BODY
    | phase::LOGGING;

#[derive(Default)]
pub struct Exchange {
    pub method: String,
    pub path_and_query: String,
    /// Request headers (names lower case).
    pub headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    /// The response status (0 until the response headers passed).
    pub status: u16,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub too_large: bool,
}

impl Exchange {
    /// An exchange starting with the request head.
    pub fn of_request(req: &pingora_http::RequestHeader) -> Self {
        Exchange {
            method: req.method.as_str().to_string(),
            path_and_query: req
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            headers: header_pairs(req.headers.iter()),
            ..Exchange::default()
        }
    }

    /// A body chunk kept unless the whole exceeds `max` (then both bodies are dropped).
    pub fn keep(&mut self, response: bool, chunk: &Bytes, max: usize) {
        if self.too_large {
            return;
        }
        let buf = if response {
            &mut self.response_body
        } else {
            &mut self.request_body
        };
        if buf.len() + chunk.len() > max {
            self.too_large = true;
            self.request_body.clear();
            self.response_body.clear();
        } else {
            buf.extend_from_slice(chunk);
        }
    }

    /// The response head.
    pub fn respond(&mut self, response: &pingora_http::ResponseHeader) {
        self.status = response.status.as_u16();
        self.response_headers = header_pairs(response.headers.iter());
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        self.path_and_query.split('?').next().unwrap_or("")
    }

    /// The query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.path_and_query.split_once('?').map(|(_, q)| q)
    }
}

/// Header pairs with text values (names lower case, as `http` keeps them).
pub fn header_pairs<'a>(
    headers: impl Iterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)>,
) -> Vec<(String, String)> {
    headers
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The first value of a header in `pairs` (names lower case).
pub fn header<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_over_the_limit_are_dropped() {
        let mut c = Exchange::default();
        c.keep(false, &Bytes::from_static(b"12345"), 8);
        assert_eq!((c.request_body.len(), c.too_large), (5, false));
        c.keep(true, &Bytes::from_static(b"123456789"), 8);
        assert!(c.too_large && c.request_body.is_empty() && c.response_body.is_empty());
    }
}
