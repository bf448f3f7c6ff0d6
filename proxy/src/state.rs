//! State shared by every listener: the context table, metrics, telemetry,
//! and the counters that shutdown and readiness watch. Each part guards
//! itself; `Shared` only holds them together behind one `Arc`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::context::ContextTable;
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;

pub struct Shared {
    pub contexts: ContextTable,
    pub metrics: Metrics,
    pub telemetry: Telemetry,
    /// Lowercase header names whose values are never shown.
    pub redact: Vec<String>,
    /// Largest request header block accepted before answering 431.
    pub max_header_size: usize,
    /// Every proxy listener, for readiness.
    pub listeners: Vec<SocketAddr>,
    inflight: AtomicUsize,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Shared {
    pub fn new(
        contexts: ContextTable,
        metrics: Metrics,
        telemetry: Telemetry,
        redact: Vec<String>,
        max_header_size: usize,
        listeners: Vec<SocketAddr>,
    ) -> Self {
        Self {
            contexts,
            metrics,
            telemetry,
            redact,
            max_header_size,
            listeners,
            inflight: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn inflight_guard(self: &Arc<Self>) -> Inflight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        Inflight(self.clone())
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// One request in flight; see [`Shared::inflight_guard`].
pub struct Inflight(Arc<Shared>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
