//! The process's lifecycle as the listeners, the admin API and shutdown see
//! it: requests in flight on each side, ready, draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The ingress: a request to the service.
    Inbound,
    /// An egress listener: the service calling a dependency.
    Call,
}

/// In-flight requests, readiness and draining.
pub(crate) struct Lifecycle {
    inbound: AtomicUsize,
    calls: AtomicUsize,
    /// Requests started on either side, ever: a change says the service
    /// did something, however briefly.
    started: AtomicU64,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Turns true when shutdown begins: the ingress stops accepting.
    closing: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            inbound: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            closing: watch::Sender::new(false),
        }
    }
}

/// How often the drain looks at what is in flight.
const POLL: Duration = Duration::from_millis(5);

impl Lifecycle {
    /// Counts a request in flight on `side` until the guard drops.
    pub(crate) fn inflight_guard(self: &Arc<Self>, side: Side) -> Inflight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.counter(side).fetch_add(1, Ordering::AcqRel);
        Inflight(self.clone(), side)
    }

    fn counter(&self, side: Side) -> &AtomicUsize {
        match side {
            Side::Inbound => &self.inbound,
            Side::Call => &self.calls,
        }
    }

    /// Requests in flight on both sides.
    pub(crate) fn inflight(&self) -> usize {
        self.inbound.load(Ordering::Acquire) + self.calls.load(Ordering::Acquire)
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Shutdown begins: not ready any more, and the ingress closes.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.closing.send_replace(true);
    }

    /// Turns true when shutdown begins.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Waits until nothing has been in flight on either side, and nothing
    /// started, for `grace`, or until `deadline`; says which came first.
    pub(crate) async fn quiet_for(&self, grace: Duration, deadline: Instant) -> bool {
        let mut seen = self.started.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        loop {
            let now = Instant::now();
            let started = self.started.load(Ordering::Relaxed);
            if started != seen || self.inflight() > 0 {
                seen = started;
                quiet_since = now;
            } else if now.duration_since(quiet_since) >= grace {
                return true;
            }
            if now >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// One request in flight; see [`Lifecycle::inflight_guard`].
pub(crate) struct Inflight(Arc<Lifecycle>, Side);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.counter(self.1).fetch_sub(1, Ordering::AcqRel);
    }
}
