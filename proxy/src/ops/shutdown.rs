//! Shutdown on SIGTERM or SIGINT: stop accepting (pingora does this when
//! told the shutdown is graceful), let in-flight requests finish, flush
//! telemetry, and exit — all within `proxy.shutdown_timeout`.
//!
//! pingora's own graceful path sleeps a fixed grace period even when idle;
//! the drain thread here exits as soon as nothing is in flight instead, and
//! pingora's longer grace period is only the fallback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};

use super::lifecycle::Lifecycle;
use super::telemetry::Telemetry;
use crate::containers::pool::ContainerPool;

/// Waits for a signal, then drains: what it needs to know and to stop.
pub(crate) struct Drain {
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) telemetry: Arc<Telemetry>,
    /// The pools to close, and `service.name` whose containers to remove.
    pub(crate) pools: Vec<Arc<ContainerPool>>,
    pub(crate) service: String,
    pub(crate) timeout: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; augur will not drain on shutdown");
            return std::future::pending().await;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name}: draining for at most {:?}", self.timeout);
        self.lifecycle.start_draining();
        let drain = Drain {
            lifecycle: self.lifecycle.clone(),
            telemetry: self.telemetry.clone(),
            pools: self.pools.clone(),
            service: self.service.clone(),
            timeout: self.timeout,
        };
        std::thread::spawn(move || drain.drain());
        ShutdownSignal::GracefulTerminate
    }
}

impl Drain {
    /// Waits for in-flight requests (leaving time to flush telemetry),
    /// stops the containers, flushes, and exits the process.
    fn drain(&self) {
        let started = Instant::now();
        let timeout = self.timeout;
        let flush_budget = (timeout / 3).min(Duration::from_secs(1));
        let drain_until = started + timeout.saturating_sub(flush_budget);
        // Let the listeners see the shutdown before counting what is left.
        std::thread::sleep(Duration::from_millis(20));
        while self.lifecycle.inflight() > 0 && Instant::now() < drain_until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = self.lifecycle.inflight();
        if left > 0 {
            tracing::warn!("{left} requests still in flight at the shutdown deadline");
        }
        if !self.pools.is_empty() {
            for pool in &self.pools {
                pool.close();
            }
            crate::containers::remove_owned(&self.service, CONTAINER_REMOVAL);
        }
        let remaining = timeout.saturating_sub(started.elapsed());
        self.telemetry
            .shutdown(remaining.max(Duration::from_millis(100)));
        tracing::info!("stopped after {:?}", started.elapsed());
        std::process::exit(0);
    }
}

/// How long removing the containers at shutdown may take.
const CONTAINER_REMOVAL: Duration = Duration::from_secs(5);
