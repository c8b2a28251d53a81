//! HTTP calls the gateway makes itself on behalf of a request (tool backends, external OPA,
//! JWKS and OIDC discovery, mirror copies): each gets a client span, child of the request's
//! span, with the HTTP client semantic conventions (`http.request.method`, `server.address`,
//! `server.port`, `url.full` without its query, `http.response.status_code`), and carries that
//! span's context in its headers. Without a parent span the call is sent as it is.

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
        if let Some(host) = url.host_str() {
            // no user info and no query: either may carry a secret
            let full = match url.port() {
                Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
                None => format!("{}://{host}{}", url.scheme(), url.path()),
            };
            attrs.push(KeyValue::new("url.full", full));
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
