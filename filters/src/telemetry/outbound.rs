//! HTTP calls the gateway makes itself on behalf of a request (tool backends, external OPA,
//! JWKS and OIDC discovery, mirror copies): each gets a client span, child of the request's
//! span, with the HTTP client semantic conventions (`http.request.method`, `server.address`,
//! `server.port`, `url.full` without user info or query, `http.response.status_code`), and
//! carries that span's context in its headers. Without a parent span the call is sent as it is.
//! `url_without_credentials` is the one form in which a URL is recorded, here and in logs.

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use super::SpanRef;

/// Send `builder`'s request inside a client span of `parent` (named `purpose`, e.g. "opa"), with
/// the trace context in its headers. The span covers the time to the answer's headers.
pub async fn send(
    builder: reqwest::RequestBuilder,
    parent: Option<&SpanRef>,
    purpose: &'static str,
) -> reqwest::Result<reqwest::Response> {
    let Some(parent) = parent else {
        return builder.send().await;
    };
    let (client, request) = builder.build_split();
    let mut request = request?;
    let method = request.method().as_str().to_string();
    let url = request.url();
    let span = parent.child(method.clone(), SpanKind::Client, || {
        let mut attrs = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("stoa.call", purpose),
        ];
        attrs.push(KeyValue::new(
            "url.full",
            url_without_credentials(url.as_str()),
        ));
        if let Some(host) = url.host_str() {
            attrs.push(KeyValue::new("server.address", host.to_string()));
        }
        if let Some(port) = url.port_or_known_default() {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
        attrs
    });
    for (name, value) in span.headers() {
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
            request.headers_mut().insert(name, value);
        }
    }
    let result = client.execute(request).await;
    match &result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.fail(status.to_string(), String::new());
            }
        }
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "request"
            };
            span.fail(kind, e.to_string());
        }
    }
    result
}

/// A URL as it may be recorded (span attributes, log lines): no user info, no query, no
/// fragment, since any of them may carry a secret.
pub fn url_without_credentials(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or("");
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::url_without_credentials;

    #[test]
    fn recorded_urls_lose_their_credentials() {
        assert_eq!(
            url_without_credentials("http://user:pw@candidate:8080/base?token=x#f"),
            "http://candidate:8080/base"
        );
        assert_eq!(url_without_credentials("http://c:1"), "http://c:1");
        assert_eq!(url_without_credentials("http://a@b@c/x"), "http://c/x");
        assert_eq!(url_without_credentials("not a url?q"), "not a url");
    }
}
