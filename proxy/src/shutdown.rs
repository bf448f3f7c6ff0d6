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

use crate::state::Shared;

pub struct Drain {
    pub shared: Arc<Shared>,
    pub timeout: Duration,
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
        self.shared.start_draining();
        let shared = self.shared.clone();
        let timeout = self.timeout;
        std::thread::spawn(move || drain(&shared, timeout));
        ShutdownSignal::GracefulTerminate
    }
}

/// Waits for in-flight requests (leaving time to flush telemetry), flushes,
/// and exits the process.
fn drain(shared: &Shared, timeout: Duration) {
    let started = Instant::now();
    let flush_budget = (timeout / 3).min(Duration::from_secs(1));
    let drain_until = started + timeout.saturating_sub(flush_budget);
    // Let the listeners see the shutdown before counting what is left.
    std::thread::sleep(Duration::from_millis(20));
    while shared.inflight() > 0 && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let left = shared.inflight();
    if left > 0 {
        tracing::warn!("{left} requests still in flight at the shutdown deadline");
    }
    if !shared.pools.is_empty() {
        for pool in &shared.pools {
            pool.close();
        }
        crate::server::stop_containers(&shared.service);
    }
    let remaining = timeout.saturating_sub(started.elapsed());
    shared
        .telemetry
        .shutdown(remaining.max(Duration::from_millis(100)));
    tracing::info!("stopped after {:?}", started.elapsed());
    std::process::exit(0);
}
