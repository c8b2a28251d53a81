//! Graceful drain: the process's lifecycle beyond Pingora's. On SIGTERM the gateway first
//! drains for `server.drain_period` (`/ready` answers 503 "draining" while every listener
//! keeps serving, so a load balancer or a Kubernetes Service takes the instance out of rotation
//! before anything is refused), then Pingora's graceful shutdown runs (listeners close,
//! requests in flight get `grace_period` and `graceful_shutdown_timeout`). SIGINT during the
//! drain still shuts down at once; SIGQUIT (graceful upgrade) does not drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether the gateway is draining (a SIGTERM was received).
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Pingora's shutdown signal watch with a drain period before a graceful terminate.
pub struct DrainingSignalWatch {
    pub drain_period: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignalWatch {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut upgrade), Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("cannot watch the shutdown signals; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = upgrade.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
            _ = terminate.recv() => {}
        }
        if self.drain_period.is_zero() {
            return ShutdownSignal::GracefulTerminate;
        }
        DRAINING.store(true, Ordering::Relaxed);
        info!(
            drain_period = ?self.drain_period,
            "SIGTERM received: draining (/ready answers 503, listeners keep serving)"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.drain_period) => {
                info!("drain period over: shutting down gracefully");
                ShutdownSignal::GracefulTerminate
            }
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
        }
    }
}
