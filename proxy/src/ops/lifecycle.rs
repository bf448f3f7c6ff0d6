//! The process's lifecycle as the listeners, the admin API and shutdown see
//! it: requests in flight, ready, draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// In-flight requests, readiness and draining.
#[derive(Default)]
pub(crate) struct Lifecycle {
    inflight: AtomicUsize,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    /// Counts a request in flight until the guard drops.
    pub(crate) fn inflight_guard(self: &Arc<Self>) -> Inflight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        Inflight(self.clone())
    }

    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
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

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// One request in flight; see [`Lifecycle::inflight_guard`].
pub(crate) struct Inflight(Arc<Lifecycle>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
