//! State shared by every listener: the context table, the learner, metrics,
//! telemetry, and the counters that shutdown and readiness watch. Each part
//! guards itself; `Shared` only holds them together behind one `Arc`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use augur_predictor::secret::SecretHasher;

use crate::context::Closed;
use crate::context::ContextTable;
use crate::learning::Learning;
use crate::metrics::Metrics;
use crate::prefetch::Prefetcher;
use crate::telemetry::Telemetry;

pub struct Shared {
    pub contexts: ContextTable,
    pub learning: Learning,
    pub prefetch: Prefetcher,
    /// `service.name`, which labels the containers augur runs.
    pub service: String,
    /// Container pools of the dependencies augur runs.
    pub pools: Vec<Arc<crate::resources::pool::ContainerPool>>,
    /// The limit over all of them.
    pub capacity: Arc<crate::resources::capacity::Capacity>,
    pub metrics: Metrics,
    pub telemetry: Telemetry,
    /// Keys the hashes that stand for credentials.
    pub hasher: SecretHasher,
    /// Lowercase header names whose values are credentials.
    pub redact: Vec<String>,
    /// Largest request header block accepted before answering 431.
    pub max_header_size: usize,
    /// Largest JSON body captured for the learner.
    pub body_limit: usize,
    /// Every proxy listener, for readiness.
    pub listeners: Vec<SocketAddr>,
    pub lifecycle: Lifecycle,
}

/// In-flight requests, readiness and draining.
#[derive(Default)]
pub struct Lifecycle {
    inflight: AtomicUsize,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Shared {
    /// A context has closed: its unused speculations are wasted, and the
    /// learner gets it.
    pub fn context_closed(&self, closed: Closed) {
        self.forget_speculations(closed.trace);
        self.learning.submit(closed);
    }

    /// Drops what was speculated for a context that closed or expired,
    /// counting what was never used.
    pub fn forget_speculations(&self, trace: crate::context::TraceKey) {
        for (dependency, outcome) in self.prefetch.table.close(trace) {
            self.metrics
                .speculations
                .with_label_values(&[&*dependency, outcome.as_str()])
                .inc();
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn inflight_guard(self: &Arc<Self>) -> Inflight {
        self.lifecycle.inflight.fetch_add(1, Ordering::AcqRel);
        Inflight(self.clone())
    }

    pub fn inflight(&self) -> usize {
        self.lifecycle.inflight.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.lifecycle.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    pub fn set_ready(&self) {
        self.lifecycle.ready.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.lifecycle.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.lifecycle.draining.store(true, Ordering::Release);
    }
}

/// One request in flight; see [`Shared::inflight_guard`].
pub struct Inflight(Arc<Shared>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.lifecycle.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
