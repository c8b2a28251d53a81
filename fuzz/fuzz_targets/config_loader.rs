//! The config loader on arbitrary YAML: parse and validate as `--check` and a reload do, and
//! the error message (with its snippet) is produced too. Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stoa_gateway::config::GatewayConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match GatewayConfig::parse(text, None) {
        Ok(cfg) => {
            let _ = cfg.validate();
            let _ = cfg.redacted_json();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
