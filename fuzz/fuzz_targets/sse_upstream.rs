//! An upstream MCP server's SSE stream, split into arbitrary chunks, through the event parser
//! the federation uses (eventsource-stream) and the JSON-RPC handling of each event's data.
#![no_main]
use eventsource_stream::Eventsource;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
        .split(|&b| b == 0xff)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let mut events = futures::stream::iter(chunks).eventsource();
    futures::executor::block_on(async {
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            if let Ok(message) = serde_json::from_str::<serde_json::Value>(&event.data) {
                let _ = stoa_filters::mcp::jsonrpc::classify(&message);
                let _ = stoa_filters::mcp::upstream::is_response(&message);
            }
        }
    });
});
