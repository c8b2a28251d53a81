//! Application logs through `tracing`: JSON lines on stderr when stderr is not a terminal,
//! human-readable otherwise. Pingora's own `log` records are captured too. Request-scoped lines
//! carry `request_id`; no credential header or token value is ever a field.
//!
//! Warnings and errors are rate-limited per call site (`MAX_LINES_PER_SECOND`, the rest dropped
//! and counted in `stoa_log_lines_suppressed_total`): clients can make the gateway log (slow
//! clients cut off, upstream failures), and must not be able to fill its disk with it.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Warning and error lines each call site may write per second.
const MAX_LINES_PER_SECOND: u32 = 20;

/// Lines dropped by the rate limit (rendered by `/metrics`).
pub static LINES_SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// `(second, lines)` per call site in the current second.
static WINDOWS: once_cell::sync::Lazy<Mutex<HashMap<usize, (u64, u32)>>> =
    once_cell::sync::Lazy::new(Default::default);
static EPOCH: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);

/// Whether a warning or error from `site` may be written now.
fn within_rate(site: usize) -> bool {
    let now = EPOCH.elapsed().as_secs();
    let mut windows = WINDOWS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (second, lines) = windows.entry(site).or_insert((now, 0));
    if *second != now {
        *second = now;
        *lines = 0;
    }
    *lines += 1;
    if *lines > MAX_LINES_PER_SECOND {
        LINES_SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

pub fn init(level: &str) {
    // Pingora logs whole request headers (Authorization, Cookie) at debug level, and at info
    // it narrates its own start-up with source paths: keep its crates at warn unless the
    // user's filter names them explicitly (the gateway's own start-up line says where it
    // listens).
    let level = if level.contains("pingora") {
        level.to_string()
    } else {
        format!("{level},pingora_proxy=warn,pingora_core=warn,pingora_load_balancing=warn")
    };
    let filter = EnvFilter::try_new(&level)
        .or_else(|_| EnvFilter::try_new("info"))
        .expect("the info filter is valid");
    // Dynamic: evaluated for every event (a plain `filter_fn` is cached per call site).
    let rate = dynamic_filter_fn(|meta, _| {
        !meta.is_event()
            || *meta.level() > tracing::Level::WARN
            || within_rate(meta as *const _ as usize)
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = if std::io::stderr().is_terminal() {
        fmt.boxed()
    } else {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed()
    };
    let result = tracing_subscriber::registry()
        .with(layer.with_filter(rate).with_filter(filter))
        .try_init();
    if let Err(e) = result {
        eprintln!("stoa-gateway: cannot initialise logging: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_site_gets_its_own_budget_per_second() {
        let (a, b) = (usize::MAX - 1, usize::MAX - 2);
        let allowed = (0..100).filter(|_| within_rate(a)).count();
        assert!(allowed as u32 <= MAX_LINES_PER_SECOND, "{allowed}");
        assert!(allowed >= 1);
        assert!(within_rate(b), "another call site keeps its budget");
    }
}
