//! Shutdown on SIGTERM or SIGINT, in order, all within
//! `proxy.shutdown_timeout`:
//!
//! 1. `/readyz` answers 503 and the ingress stops accepting
//!    (`server/stages.rs`): no new work reaches the service.
//! 2. The egress listeners keep serving until the service has had no
//!    inbound request in flight and made no call for `proxy.drain_grace`:
//!    a service still finishing its work, or draining its own queue after
//!    the same SIGTERM, can reach its dependencies (the sidecar that exits
//!    first breaks its service's shutdown otherwise). Then pingora is told,
//!    and they stop accepting too.
//! 3. In-flight requests finish, augur's containers are removed, telemetry
//!    is flushed, and the process exits.
//!
//! pingora's own graceful path sleeps a fixed grace period even when idle;
//! the drain thread here exits as soon as nothing is in flight instead, and
//! pingora's longer grace period is only the fallback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};

use super::access::AccessLog;
use super::lifecycle::Lifecycle;
use super::telemetry::Telemetry;
use crate::learning::Learning;

/// How long augur waits at shutdown for the learner to learn what is
/// queued and save the state.
const LEARNER_STOP: Duration = Duration::from_secs(2);
use crate::containers::pool::ContainerPool;

/// Waits for a signal, then drains: what it needs to know and to stop.
#[derive(Clone)]
pub(crate) struct Drain {
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) access: Arc<AccessLog>,
    /// Learns what is queued and saves the state before augur exits.
    pub(crate) learning: Arc<Learning>,
    /// The pools to close, and `service.name` whose containers to remove.
    pub(crate) pools: Vec<Arc<ContainerPool>>,
    /// The swarm to take this sidecar's demands off.
    pub(crate) swarm: Option<Arc<crate::containers::docker::swarm::SwarmBackend>>,
    pub(crate) service: String,
    pub(crate) timeout: Duration,
    /// How long the service must be quiet before the egress listeners
    /// close; `None` when there are none.
    pub(crate) grace: Option<Duration>,
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
        let started = Instant::now();
        let flush_budget = (self.timeout / 3).min(Duration::from_secs(1));
        let deadline = started + self.timeout.saturating_sub(flush_budget);
        self.lifecycle.start_draining();
        match self.grace {
            Some(grace) => {
                tracing::info!(
                    "{name}: ingress closed; the egress listeners serve until the service has been quiet for {grace:?} (at most {:?})",
                    self.timeout
                );
                if self.lifecycle.quiet_for(grace, deadline).await {
                    tracing::info!(
                        "the service has been quiet for {grace:?}: closing the egress listeners"
                    );
                } else {
                    tracing::warn!(
                        "the service was still busy at the shutdown deadline: closing the egress listeners"
                    );
                }
            }
            None => tracing::info!("{name}: draining for at most {:?}", self.timeout),
        }
        let drain = self.clone();
        std::thread::spawn(move || drain.drain(started, deadline));
        ShutdownSignal::GracefulTerminate
    }
}

impl Drain {
    /// Waits for in-flight requests (leaving time to flush telemetry),
    /// stops the containers, flushes, and exits the process.
    fn drain(&self, started: Instant, deadline: Instant) {
        // Let the listeners see the shutdown before counting what is left.
        std::thread::sleep(Duration::from_millis(20));
        while self.lifecycle.inflight() > 0 && Instant::now() < deadline {
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
        if let Some(swarm) = &self.swarm {
            crate::containers::withdraw(swarm, CONTAINER_REMOVAL);
        }
        if !self.learning.stop(LEARNER_STOP) {
            tracing::warn!(
                "the learner did not finish within {LEARNER_STOP:?}: the saved state may miss the last contexts"
            );
        }
        self.access.flush(Duration::from_millis(200));
        let remaining = self.timeout.saturating_sub(started.elapsed());
        self.telemetry
            .shutdown(remaining.max(Duration::from_millis(100)));
        tracing::info!("stopped after {:?}", started.elapsed());
        std::process::exit(0);
    }
}

/// How long removing the containers at shutdown may take.
const CONTAINER_REMOVAL: Duration = Duration::from_secs(5);
