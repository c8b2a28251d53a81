//! Application logs through `tracing`: JSON lines on stderr when stderr is not a terminal,
//! human-readable otherwise. Pingora's own `log` records are captured too. Request-scoped lines
//! carry `request_id`; no credential header or token value is ever a field.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(level: &str) {
    // Pingora logs whole request headers (Authorization, Cookie) at debug level: keep its
    // proxy and connection modules at info unless the user's filter names them explicitly.
    let level = if level.contains("pingora") {
        level.to_string()
    } else {
        format!("{level},pingora_proxy=info,pingora_core=info")
    };
    let filter = EnvFilter::try_new(&level)
        .or_else(|_| EnvFilter::try_new("info"))
        .expect("the info filter is valid");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
    if let Err(e) = result {
        eprintln!("stoa-gateway: cannot initialise logging: {e}");
    }
}
