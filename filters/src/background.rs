//! The filters' background runtime: one small Tokio runtime (one worker thread, `stoa-bg`) for
//! work that must outlive a request — JWKS refreshes and the Redis connections' driver tasks —
//! so it does not depend on which listener's runtime happened to start it. Started on first
//! use, so a daemonized (forked) process starts its own.
//!
//! A second one, `idle_handle()`, runs on a thread scheduled `SCHED_IDLE`: it only gets CPU no
//! request-serving thread wants. Shadow copies run there, so mirroring uses spare CPU and never
//! takes it from the primary's traffic (when there is none to spare, copies wait, hit the
//! mirror's concurrency cap and are skipped, counted).

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

static IDLE_RUNTIME: Lazy<Runtime> = Lazy::new(|| {
    Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("stoa-idle")
        .on_thread_start(lowest_priority)
        .enable_all()
        .build()
        .expect("the idle runtime starts")
});

/// The calling thread gets CPU only when nothing else wants it (Linux `SCHED_IDLE`; elsewhere, or if
/// refused, it stays as it is).
pub fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid, zeroed param.
    unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

/// The idle runtime's handle: work that must never compete with serving requests.
pub fn idle_handle() -> &'static Handle {
    IDLE_RUNTIME.handle()
}
