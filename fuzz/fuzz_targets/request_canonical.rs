//! A whole request header (method, target, Host, framing headers) as the gateway canonicalises
//! it before any filter: never a panic; what it accepts has an ASCII origin-form path that the
//! router can match and a Host the template variable can read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;
use stoa_filters::request_target::{canonicalize, PathOptions};

fuzz_target!(|data: &[u8]| {
    // Layout: method \n target \n (name: value \n)*
    let mut lines = data.split(|&b| b == b'\n');
    let (Some(method), Some(target)) = (lines.next(), lines.next()) else {
        return;
    };
    let Ok(method) = std::str::from_utf8(method) else {
        return;
    };
    let Ok(mut req) = RequestHeader::build(method, target, None) else {
        return;
    };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value.get(1..).unwrap_or_default()),
        ) else {
            continue;
        };
        let _ = req.append_header(name, value);
    }
    if canonicalize(&mut req, &PathOptions::default()).is_ok() {
        assert!(req.uri.path().starts_with('/'));
        assert!(req.uri.path().is_ascii());
        let _ = stoa_filters::template::request_host(&req);
    }
});
