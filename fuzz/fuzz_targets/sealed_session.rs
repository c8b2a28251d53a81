//! The sealed `Mcp-Session-Id`: opening any client-supplied string never panics, and nothing
//! but what the sealer made opens.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stoa_filters::mcp::session::SessionSealer;

fuzz_target!(|data: &[u8]| {
    let sealer = SessionSealer::new(b"fuzz-session-secret-0123456789ab", Duration::from_secs(60));
    let Ok(id) = std::str::from_utf8(data) else {
        return;
    };
    assert!(sealer.open(id).is_err(), "a forged session id opened");
    let sealed = sealer.seal("2025-06-18", Some(&serde_json::json!({ "x": id })));
    assert!(sealer.open(&sealed).is_ok());
});
