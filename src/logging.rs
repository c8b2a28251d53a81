//! Application logs through `tracing`: JSON lines on stderr when stderr is not a terminal,
//! human-readable otherwise. Pingora's own `log` records are captured too. Request-scoped lines
//! carry `request_id`; no credential header or token value is ever a field.
//!
//! The level filter can be replaced at run time (`set_level`, served by the admin API's
//! `PUT /logging`); `level` says which one is in force.
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

/// The filter as given (before Pingora's crates are quietened), and the handle that replaces
/// the one in force.
struct LevelControl {
    given: Mutex<String>,
    replace: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
}

static LEVEL: once_cell::sync::OnceCell<LevelControl> = once_cell::sync::OnceCell::new();

/// The `EnvFilter` for a level or filter directive: Pingora logs whole request headers
/// (Authorization, Cookie) at debug level, and at info it narrates its own start-up with source
/// paths, so its crates stay at warn unless the filter names them explicitly (the gateway's
/// own start-up line says where it listens).
fn env_filter(level: &str) -> Result<EnvFilter, String> {
    let directives = if level.contains("pingora") {
        level.to_string()
    } else {
        format!("{level},pingora_proxy=warn,pingora_core=warn,pingora_load_balancing=warn")
    };
    EnvFilter::try_new(directives).map_err(|e| format!("not a log level or filter: {e}"))
}

/// The level or filter in force, as it was given.
pub fn level() -> Option<String> {
    LEVEL.get().map(|c| {
        c.given
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    })
}

/// Replace the level filter in force (`info`, `debug`, `warn,stoa_filters::mcp=debug`...).
pub fn set_level(level: &str) -> Result<(), String> {
    let level = level.trim();
    if level.is_empty() || level.len() > 1024 {
        return Err("a level or filter of 1 to 1024 bytes is required".into());
    }
    let control = LEVEL.get().ok_or("logging is not initialised")?;
    (control.replace)(env_filter(level)?)?;
    *control
        .given
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = level.to_string();
    Ok(())
}

pub fn init(level: &str) {
    let (filter, given) = match env_filter(level) {
        Ok(f) => (f, level.to_string()),
        Err(_) => (
            env_filter("info").expect("info is valid"),
            "info".to_string(),
        ),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LEVEL.set(LevelControl {
        given: Mutex::new(given),
        replace: Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
    });
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
