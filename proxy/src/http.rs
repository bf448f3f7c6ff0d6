//! The request path: one pingora `ProxyHttp` per listener kind.
//! `ingress.rs` fronts the service (every inbound request opens a context);
//! `egress.rs` fronts one dependency (a call joins its context and may be
//! answered from speculation). Their phases hand off to the small modules
//! beside them: `request.rs` reads a request, `headers.rs` fixes headers
//! on the way through, `capture.rs` copies JSON bodies for the learner,
//! `traceparent.rs` parses W3C trace context, `upstream.rs` holds a
//! resolved peer, `failure.rs` decides what a client sees when proxying
//! fails, `downstream.rs` bounds how many clients a listener holds and
//! how long each may take, and `listeners.rs` serves every listener from
//! one pingora service.

pub(crate) mod capture;
pub(crate) mod client;
pub(crate) mod downstream;
pub(crate) mod egress;
pub(crate) mod failure;
pub(crate) mod headers;
pub(crate) mod ingress;
pub(crate) mod listeners;
pub(crate) mod names;
pub(crate) mod request;
pub(crate) mod tls;
pub(crate) mod traceparent;
pub(crate) mod upstream;

#[cfg(test)]
mod fuzz_tests;

use std::sync::Arc;

use augur_predictor::secret::SecretHasher;

use crate::context::{Closed, ContextTable};
use crate::learning::Learning;
use crate::ops::access::AccessLog;
use crate::ops::lifecycle::{Inflight, Lifecycle, Side};
use crate::ops::metrics::Metrics;
use crate::ops::telemetry::Telemetry;
use crate::speculation::Speculation;

/// What both listeners work with, built once at start-up.
pub(crate) struct Common {
    pub(crate) contexts: Arc<ContextTable>,
    pub(crate) speculation: Arc<Speculation>,
    pub(crate) learning: Arc<Learning>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) access: Arc<AccessLog>,
    /// Keys the hashes that stand for credentials.
    pub(crate) hasher: SecretHasher,
    /// Lowercase header names whose values are credentials.
    pub(crate) redact: Vec<String>,
    /// Largest request header block accepted before answering 431.
    pub(crate) max_header_size: usize,
    /// Largest JSON body captured for the learner.
    pub(crate) body_limit: usize,
    /// How long clients may take.
    pub(crate) clients: downstream::Limits,
}

impl Common {
    /// A context has closed: its unused speculations are wasted, and the
    /// learner gets it — unless it shared its trace id with another inbound
    /// request, which leaves what it recorded in doubt.
    fn context_closed(&self, closed: Closed) {
        self.speculation.close(closed.id);
        if !closed.context.ambiguous {
            self.learning.submit(closed);
        }
    }

    fn inflight(&self, side: Side) -> Inflight {
        self.lifecycle.inflight_guard(side)
    }
}
