//! Prometheus metrics, named as the README's Admin API section lists
//! them. One registry per process, rendered as text on the admin listener.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::containers::pool::Gauges;

/// Distinct route labels kept at most; later routes are counted as `other`
/// so a scan of random paths cannot grow the registry without bound.
const MAX_ROUTES: usize = 1000;

/// Latency buckets in seconds, from 100 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

pub(crate) struct Metrics {
    registry: Registry,
    routes: RwLock<HashSet<Arc<str>>>,
    pub(crate) inbound_requests: IntCounterVec,
    pub(crate) inbound_duration: HistogramVec,
    pub(crate) dependency_calls: IntCounterVec,
    pub(crate) dependency_duration: HistogramVec,
    pub(crate) upstream_requests: IntCounterVec,
    pub(crate) speculations: IntCounterVec,
    pub(crate) speculations_discarded: IntCounterVec,
    pub(crate) contexts_open: IntGauge,
    pub(crate) contexts_untracked: IntCounterVec,
    pub(crate) contexts_expired: prometheus::IntCounter,
    pub(crate) contexts_ambiguous: prometheus::IntCounter,
    pub(crate) calls_ambiguous: prometheus::IntCounter,
    pub(crate) container_starts: IntCounterVec,
    pub(crate) container_starts_denied: IntCounterVec,
    pub(crate) container_evictions: IntCounterVec,
    pub(crate) container_seconds: prometheus::CounterVec,
    pub(crate) container_cpu: prometheus::GaugeVec,
    pub(crate) container_memory: prometheus::GaugeVec,
    pub(crate) prestarts_wasted: IntCounterVec,
    pub(crate) cold_start_wait: prometheus::Histogram,
    pub(crate) containers: prometheus::IntGaugeVec,
    pub(crate) speculation_held_bytes: IntGauge,
    pub(crate) speculation_inflight: IntGauge,
    pub(crate) speculation_traces: IntGauge,
    pub(crate) learner_contexts: prometheus::IntCounter,
    pub(crate) learner_dropped: prometheus::IntCounter,
}

impl Metrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let contexts_open = IntGauge::new("augur_contexts_open", "Execution contexts open now")?;
        registry.register(Box::new(contexts_open.clone()))?;
        let plain_counter =
            |name: &str, help: &str| -> Result<prometheus::IntCounter, prometheus::Error> {
                let c = prometheus::IntCounter::new(name, help)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let contexts_expired = plain_counter(
            "augur_contexts_expired_total",
            "Open contexts dropped because they outlived contexts.max_age",
        )?;
        let contexts_ambiguous = plain_counter(
            "augur_contexts_ambiguous_total",
            "Inbound requests that shared their trace id with another open one: their calls cannot be told apart, so none is answered from speculation or learned from",
        )?;
        let calls_ambiguous = plain_counter(
            "augur_calls_ambiguous_total",
            "Dependency calls whose trace id belonged to several open inbound requests: proxied, never answered from speculation, not recorded",
        )?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let cold_start_wait = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "augur_cold_start_wait_seconds",
                "How long calls waited for a container to start",
            )
            .buckets(BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(cold_start_wait.clone()))?;
        let containers = prometheus::IntGaugeVec::new(
            Opts::new(
                "augur_containers",
                "Containers augur runs, by dependency and state",
            ),
            &["dependency", "state"],
        )?;
        registry.register(Box::new(containers.clone()))?;
        let container_seconds = prometheus::CounterVec::new(
            Opts::new(
                "augur_container_seconds_total",
                "Seconds containers have run (what they cost), by dependency",
            ),
            &["dependency"],
        )?;
        registry.register(Box::new(container_seconds.clone()))?;
        let float_gauge =
            |name: &str, help: &str| -> Result<prometheus::GaugeVec, prometheus::Error> {
                let g = prometheus::GaugeVec::new(Opts::new(name, help), &["dependency"])?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let container_cpu = float_gauge(
            "augur_container_cpu_cores",
            "CPU the dependency's containers use, in cores (Docker stats)",
        )?;
        let container_memory = float_gauge(
            "augur_container_memory_bytes",
            "Memory the dependency's containers use, in bytes (Docker stats)",
        )?;
        let speculation_held_bytes = gauge(
            "augur_speculation_held_bytes",
            "Bytes of speculative responses held for their real calls",
        )?;
        let speculation_inflight = gauge(
            "augur_speculation_inflight",
            "Speculative requests in flight",
        )?;
        let speculation_traces = gauge(
            "augur_speculation_traces",
            "Open inbound requests with speculation state",
        )?;
        let learner_contexts = plain_counter(
            "augur_learner_contexts_total",
            "Closed contexts the predictor learned from",
        )?;
        let learner_dropped = plain_counter(
            "augur_learner_dropped_total",
            "Closed contexts not learned from because the learner's queue was full",
        )?;
        Ok(Self {
            inbound_requests: counter(
                "augur_inbound_requests_total",
                "Inbound requests by route (method and path template)",
                &["route"],
            )?,
            inbound_duration: histogram(
                "augur_inbound_request_duration_seconds",
                "Inbound request duration, from request header to the end of the response",
                &["route"],
            )?,
            dependency_calls: counter(
                "augur_dependency_calls_total",
                "Calls the service made to a dependency, by how augur answered them",
                &["dependency", "outcome"],
            )?,
            dependency_duration: histogram(
                "augur_dependency_call_duration_seconds",
                "Dependency call duration as the service saw it",
                &["dependency", "outcome"],
            )?,
            upstream_requests: counter(
                "augur_upstream_requests_total",
                "Requests augur sent to a dependency, real or speculative",
                &["dependency", "kind"],
            )?,
            speculations: counter(
                "augur_speculations_total",
                "Speculative requests by what became of them",
                &["dependency", "outcome"],
            )?,
            speculations_discarded: counter(
                "augur_speculations_discarded_total",
                "Speculations discarded because a call with side effects started in their request before they were used (also counted wasted)",
                &["dependency"],
            )?,
            contexts_untracked: counter(
                "augur_contexts_untracked_total",
                "Inbound requests proxied without an execution context, by reason",
                &["reason"],
            )?,
            contexts_open,
            contexts_expired,
            contexts_ambiguous,
            calls_ambiguous,
            container_starts: counter(
                "augur_container_starts_total",
                "Containers started, by dependency and reason (cold: a call waited; prestart: ahead of a predicted call; prewarm: adaptive keep-alive expects a call; scale: every instance was busy)",
                &["dependency", "reason"],
            )?,
            container_starts_denied: counter(
                "augur_container_starts_denied_total",
                "Starts given up for want of capacity, by dependency and reason",
                &["dependency", "reason"],
            )?,
            container_evictions: counter(
                "augur_container_evictions_total",
                "Idle containers stopped to make room for work worth more",
                &["dependency"],
            )?,
            container_seconds,
            container_cpu,
            container_memory,
            prestarts_wasted: counter(
                "augur_container_prestarts_wasted_total",
                "Containers started ahead of a predicted call that no call used in time",
                &["dependency"],
            )?,
            cold_start_wait,
            containers,
            speculation_held_bytes,
            speculation_inflight,
            speculation_traces,
            learner_contexts,
            learner_dropped,
            routes: RwLock::new(HashSet::new()),
            registry,
        })
    }

    /// The label for `route`, or `other` once [`MAX_ROUTES`] are known.
    pub(crate) fn route_label(&self, route: &Arc<str>) -> Arc<str> {
        if let Some(known) = self.routes.read().get(route) {
            return known.clone();
        }
        let mut routes = self.routes.write();
        if routes.len() < MAX_ROUTES {
            routes.insert(route.clone());
            route.clone()
        } else {
            Arc::from("other")
        }
    }

    pub(crate) fn inbound(&self, route: &Arc<str>, elapsed: Duration) {
        let label = self.route_label(route);
        self.inbound_requests.with_label_values(&[&*label]).inc();
        self.inbound_duration
            .with_label_values(&[&*label])
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn dependency_call(&self, dependency: &str, outcome: &str, elapsed: Duration) {
        self.dependency_calls
            .with_label_values(&[dependency, outcome])
            .inc();
        self.dependency_duration
            .with_label_values(&[dependency, outcome])
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the gauges that mirror the context and speculation tables,
    /// before a scrape.
    pub(crate) fn observe_tables(
        &self,
        contexts_open: usize,
        (held_bytes, inflight, traces): (u64, usize, usize),
    ) {
        self.contexts_open.set(contexts_open as i64);
        self.speculation_held_bytes.set(held_bytes as i64);
        self.speculation_inflight.set(inflight as i64);
        self.speculation_traces.set(traces as i64);
    }

    /// Sets the gauges that mirror a dependency's containers, before a
    /// scrape.
    pub(crate) fn observe_pool(&self, dependency: &str, g: &Gauges) {
        for (state, n) in [("starting", g.starting), ("busy", g.busy), ("idle", g.idle)] {
            self.containers
                .with_label_values(&[dependency, state])
                .set(n as i64);
        }
        let seconds = self.container_seconds.with_label_values(&[dependency]);
        if g.container_seconds > seconds.get() {
            seconds.inc_by(g.container_seconds - seconds.get());
        }
        self.container_cpu
            .with_label_values(&[dependency])
            .set(g.cpu_cores);
        self.container_memory
            .with_label_values(&[dependency])
            .set(g.memory_bytes as f64);
    }

    /// Prometheus text exposition format.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a metric that fails to
        // encode is left out rather than failing the scrape.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
