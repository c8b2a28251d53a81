//! The filters' background runtime: one small Tokio runtime (one worker thread, `stoa-bg`) for
//! work that must outlive a request — JWKS refreshes and the Redis connections' driver tasks —
//! so it does not depend on which listener's runtime happened to start it. Started on first
//! use, so a daemonized (forked) process starts its own.

use once_cell::sync::Lazy;
use tokio::runtime::{Builder, Handle, Runtime};

static RUNTIME: Lazy<Runtime> = Lazy::new(|| {
    Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("stoa-bg")
        .enable_all()
        .build()
        .expect("the background runtime starts")
});

/// The background runtime's handle (spawn onto it, or `enter()` it to create I/O objects).
pub fn handle() -> &'static Handle {
    RUNTIME.handle()
}
