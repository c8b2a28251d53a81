//! Any JSON body through the JSON-RPC classifier and the 2026-07-28 revision's envelope check
//! and request isolation, as the `mcp` filter runs them on a client's POST: never a panic.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stoa_filters::mcp::{jsonrpc, stateless};

fuzz_target!(|data: &[u8]| {
    let (body, header) = match data.iter().position(|&b| b == 0) {
        Some(i) => data.split_at(i),
        None => (data, &b""[..]),
    };
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let _ = jsonrpc::classify(&message);
    let _ = stoa_filters::mcp::upstream::is_response(&message);
    let text = String::from_utf8_lossy(header.get(1..).unwrap_or_default());
    let mut parts = text.split('\n');
    let routing = stateless::RoutingHeaders {
        version: parts.next().unwrap_or("2026-07-28").to_string(),
        method: parts.next().map(str::to_string),
        name: parts.next().map(str::to_string),
    };
    if let Ok(Some(request)) = stateless::check(message.clone(), &routing) {
        let sink: stoa_filters::mcp::upstream::MessageSink = Arc::new(|_| {});
        let (isolated, sink, _id) = stateless::isolate(request.message, &sink, Some("info"));
        sink(isolated);
    }
    let _ = stateless::check(message, &routing);
});
