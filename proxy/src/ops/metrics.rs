//! Prometheus metrics, named as the README's Admin API section lists
//! them. One registry per process, rendered as text on the admin listener.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::containers::pool::Gauges;
use crate::context::CallOutcome;

/// Distinct route labels kept at most, so that a scan of random paths
/// cannot grow the registry without bound: past it, the series of the
/// routes seen least recently are removed (a route that comes back starts
/// its counters again, which Prometheus reads as a counter reset).
const MAX_ROUTES: usize = 1000;

/// Latency buckets in seconds, from 100 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Prediction-time buckets in seconds, from 1 µs to 10 ms (the online
/// model takes microseconds, an ONNX one tens of them).
const PREDICTION_BUCKETS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.01,
];

/// A dependency's series (`augur_dependency_calls_total`,
/// `augur_dependency_duration_seconds` by outcome, and
/// `augur_upstream_requests_total`), resolved once.
pub(crate) struct CallSeries {
    calls: [prometheus::IntCounter; CallOutcome::ALL.len()],
    duration: [prometheus::Histogram; CallOutcome::ALL.len()],
    real: prometheus::IntCounter,
    speculative: prometheus::IntCounter,
    errors: prometheus::IntCounter,
    hidden: prometheus::Counter,
}

/// An answer that counts against the success rate, as Linkerd and Envoy
/// count one: a 5xx, or none at all (0).
fn failed(status: u16) -> bool {
    status >= 500 || status == 0
}

impl CallSeries {
    /// A call that ended with `outcome` and `status` after `elapsed`.
    pub(crate) fn call(&self, outcome: CallOutcome, status: u16, elapsed: Duration) {
        let i = outcome.index();
        self.calls[i].inc();
        self.duration[i].observe(elapsed.as_secs_f64());
        if failed(status) {
            self.errors.inc();
        }
    }

    /// A call answered from speculation was spared `hidden` of its
    /// dependency's latency.
    pub(crate) fn hidden(&self, hidden: Duration) {
        self.hidden.inc_by(hidden.as_secs_f64());
    }

    /// A request sent upstream: for a real call, or a speculative one.
    pub(crate) fn upstream(&self, speculative: bool) {
        if speculative {
            self.speculative.inc();
        } else {
            self.real.inc();
        }
    }
}

/// A route label's series, resolved once for all its requests.
#[derive(Clone)]
struct RouteSeries {
    /// The epoch the route was last used in.
    used: Arc<AtomicU64>,
    requests: prometheus::IntCounter,
    duration: prometheus::Histogram,
    errors: prometheus::IntCounter,
}

impl RouteSeries {
    fn record(&self, status: u16, elapsed: Duration) {
        self.requests.inc();
        self.duration.observe(elapsed.as_secs_f64());
        if failed(status) {
            self.errors.inc();
        }
    }

    fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    /// Each route label's series, resolved once, with the epoch it was
    /// last used in (an epoch ends at each new route).
    routes: RwLock<HashMap<Arc<str>, RouteSeries>>,
    epoch: AtomicU64,
    pub(crate) routes_evicted: prometheus::IntCounter,
    inbound_requests: IntCounterVec,
    inbound_duration: HistogramVec,
    inbound_errors: IntCounterVec,
    dependency_calls: IntCounterVec,
    dependency_errors: IntCounterVec,
    hidden: prometheus::CounterVec,
    dependency_overdue: IntCounterVec,
    dependency_duration: HistogramVec,
    upstream_requests: IntCounterVec,
    pub(crate) speculations: IntCounterVec,
    pub(crate) speculations_discarded: IntCounterVec,
    pub(crate) contexts_open: IntGauge,
    pub(crate) contexts_untracked: IntCounterVec,
    pub(crate) contexts_expired: prometheus::IntCounter,
    pub(crate) contexts_ambiguous: prometheus::IntCounter,
    pub(crate) calls_ambiguous: prometheus::IntCounter,
    pub(crate) access_log_dropped: prometheus::IntCounter,
    pub(crate) container_starts: IntCounterVec,
    pub(crate) container_starts_denied: IntCounterVec,
    pub(crate) container_evictions: IntCounterVec,
    pub(crate) container_seconds: prometheus::CounterVec,
    pub(crate) container_cpu: prometheus::GaugeVec,
    pub(crate) container_memory: prometheus::GaugeVec,
    pub(crate) prestarts_wasted: IntCounterVec,
    pub(crate) cold_start_wait: prometheus::Histogram,
    pub(crate) prediction: prometheus::Histogram,
    pub(crate) containers: prometheus::IntGaugeVec,
    pub(crate) speculation_held_bytes: IntGauge,
    pub(crate) speculation_inflight: IntGauge,
    pub(crate) speculation_traces: IntGauge,
    pub(crate) learner_contexts: prometheus::IntCounter,
    pub(crate) learner_dropped: prometheus::IntCounter,
    pub(crate) swarm_conflicts: prometheus::IntCounter,
    pub(crate) learner_evictions: IntCounterVec,
    pub(crate) learner_routes: IntGauge,
    pub(crate) learner_shapes: IntGauge,
    pub(crate) context_body_bytes: IntGauge,
    pub(crate) context_bodies_refused: prometheus::IntCounter,
    pub(crate) downstream_connections: prometheus::IntGaugeVec,
    pub(crate) downstream_closed: IntCounterVec,
    pub(crate) dns_resolutions: IntCounterVec,
    pub(crate) dns_failing: prometheus::IntGaugeVec,
    pub(crate) upstream_addresses: prometheus::IntGaugeVec,
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
        let access_log_dropped = plain_counter(
            "augur_access_log_dropped_total",
            "Access log lines dropped because the writer was behind (the request went on; only its line is lost)",
        )?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let plain_histogram = |name: &str,
                               help: &str,
                               buckets: &[f64]|
         -> Result<prometheus::Histogram, prometheus::Error> {
            let h = prometheus::Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let cold_start_wait = plain_histogram(
            "augur_cold_start_wait_seconds",
            "How long calls waited for a container to start",
            BUCKETS,
        )?;
        let prediction = plain_histogram(
            "augur_prediction_seconds",
            "How long one prediction took on the request path (the model's predict for an open context)",
            PREDICTION_BUCKETS,
        )?;
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
        let hidden = prometheus::CounterVec::new(
            Opts::new(
                "augur_speculation_hidden_seconds_total",
                "Dependency latency the service did not wait for because speculation answered its calls: per call, the speculative request's duration, up to how long before the call it was sent",
            ),
            &["dependency"],
        )?;
        registry.register(Box::new(hidden.clone()))?;
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
        let swarm_conflicts = plain_counter(
            "augur_swarm_conflicts_total",
            "Writes of a swarm service's demand that lost to another sidecar's write and were retried",
        )?;
        let learner_routes = gauge("augur_learner_routes", "Routes the learner holds")?;
        let learner_shapes = gauge("augur_learner_shapes", "Call shapes the learner holds")?;
        let context_body_bytes = gauge(
            "augur_context_body_bytes",
            "Bytes of captured bodies held for the learner (open contexts and those waiting to be learned from)",
        )?;
        let context_bodies_refused = plain_counter(
            "augur_context_bodies_refused_total",
            "Captured bodies not kept for the learner because contexts.max_body_bytes was reached",
        )?;
        let routes_evicted = plain_counter(
            "augur_metric_routes_evicted_total",
            "Route labels removed from the inbound metrics to stay within 1000 (least recently seen first)",
        )?;
        let downstream_connections = prometheus::IntGaugeVec::new(
            Opts::new(
                "augur_downstream_connections",
                "Client connections open, by listener (ingress, egress NAME)",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(downstream_connections.clone()))?;
        let gauge_vec = |name: &str,
                         help: &str,
                         labels: &[&str]|
         -> Result<prometheus::IntGaugeVec, prometheus::Error> {
            let g = prometheus::IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let dns_failing = gauge_vec(
            "augur_dns_failing",
            "1 while an upstream host name does not resolve and augur keeps sending to its last good addresses (or, with none yet, answers 502)",
            &["host"],
        )?;
        let upstream_addresses = gauge_vec(
            "augur_upstream_addresses",
            "Addresses an upstream host name resolves to now (requests are spread over all of them)",
            &["host"],
        )?;
        Ok(Self {
            dns_resolutions: counter(
                "augur_dns_resolutions_total",
                "Resolutions of upstream host names, by host and result (ok or failed)",
                &["host", "result"],
            )?,
            dns_failing,
            upstream_addresses,
            learner_evictions: counter(
                "augur_learner_evictions_total",
                "Entries the learner forgot to stay within its bounds (least recently seen first), by table",
                &["table"],
            )?,
            downstream_closed: counter(
                "augur_downstream_closed_total",
                "Client connections augur closed, by listener and reason (limit: the listener held proxy.max_connections; header_timeout: the request header did not arrive within proxy.header_timeout; idle: no request within proxy.idle_timeout; protocol: an HTTP/1 client on a listener that takes only h2c)",
                &["listener", "reason"],
            )?,
            learner_routes,
            learner_shapes,
            context_body_bytes,
            context_bodies_refused,
            routes_evicted,
            downstream_connections,
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
            inbound_errors: counter(
                "augur_inbound_errors_total",
                "Inbound requests answered with a 5xx or not at all, by route (the success rate's complement)",
                &["route"],
            )?,
            dependency_errors: counter(
                "augur_dependency_call_errors_total",
                "Dependency calls answered with a 5xx or not at all, by dependency, however augur answered them",
                &["dependency"],
            )?,
            hidden,
            dependency_calls: counter(
                "augur_dependency_calls_total",
                "Calls the service made to a dependency, by how augur answered them",
                &["dependency", "outcome"],
            )?,
            dependency_overdue: counter(
                "augur_dependency_overdue_total",
                "Dependency calls that took longer than the dependency's connect_timeout plus timeout (plus any cold-start wait): stalls",
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
            access_log_dropped,
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
            prediction,
            containers,
            speculation_held_bytes,
            speculation_inflight,
            speculation_traces,
            learner_contexts,
            learner_dropped,
            swarm_conflicts,
            routes: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            registry,
        })
    }

    /// Counts an inbound request on `route` that took `elapsed`.
    pub(crate) fn inbound(&self, route: &Arc<str>, status: u16, elapsed: Duration) {
        if let Some(series) = self.routes.read().get(route) {
            series
                .used
                .store(self.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
            series.record(status, elapsed);
            return;
        }
        self.new_route(route).record(status, elapsed);
    }

    /// The series of a route not seen (or forgotten) before; a new one
    /// past [`MAX_ROUTES`] first removes the series of the sixteenth used
    /// least recently.
    fn new_route(&self, route: &Arc<str>) -> RouteSeries {
        let mut routes = self.routes.write();
        if let Some(series) = routes.get(route) {
            return series.clone();
        }
        if routes.len() >= MAX_ROUTES {
            let mut epochs: Vec<u64> = routes.values().map(RouteSeries::used).collect();
            let n = (MAX_ROUTES / 16).max(1).min(epochs.len());
            let (_, cutoff, _) = epochs.select_nth_unstable(n - 1);
            let cutoff = *cutoff;
            routes.retain(|label, series| {
                let keep = series.used() > cutoff;
                if !keep {
                    let _ = self.inbound_requests.remove_label_values(&[label]);
                    let _ = self.inbound_duration.remove_label_values(&[label]);
                    let _ = self.inbound_errors.remove_label_values(&[label]);
                    self.routes_evicted.inc();
                }
                keep
            });
        }
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let series = RouteSeries {
            used: Arc::new(AtomicU64::new(epoch)),
            requests: self.inbound_requests.with_label_values(&[&**route]),
            duration: self.inbound_duration.with_label_values(&[&**route]),
            errors: self.inbound_errors.with_label_values(&[&**route]),
        };
        routes.insert(route.clone(), series.clone());
        series
    }

    /// Sets the learner's gauges and counts what it forgot since `before`.
    pub(crate) fn observe_learner(
        &self,
        routes: usize,
        shapes: usize,
        before: &augur_predictor::learner::Evictions,
        now: &augur_predictor::learner::Evictions,
    ) {
        self.learner_routes.set(routes as i64);
        self.learner_shapes.set(shapes as i64);
        for (table, was, is) in [
            ("routes", before.routes, now.routes),
            ("shapes", before.shapes, now.shapes),
            ("positions", before.positions, now.positions),
            ("calls", before.calls, now.calls),
        ] {
            if is > was {
                self.learner_evictions
                    .with_label_values(&[table])
                    .inc_by(is - was);
            }
        }
    }

    /// A dependency call that outlasted its dependency's connect_timeout
    /// plus timeout (plus any cold-start wait).
    pub(crate) fn dependency_overdue(&self, dependency: &str, outcome: &str) {
        self.dependency_overdue
            .with_label_values(&[dependency, outcome])
            .inc();
    }

    /// A dependency's per-call series, resolved once when it is set up so
    /// that a call looks no label up.
    pub(crate) fn call_series(&self, dependency: &str) -> CallSeries {
        CallSeries {
            calls: CallOutcome::ALL.map(|o| {
                self.dependency_calls
                    .with_label_values(&[dependency, o.as_str()])
            }),
            duration: CallOutcome::ALL.map(|o| {
                self.dependency_duration
                    .with_label_values(&[dependency, o.as_str()])
            }),
            real: self
                .upstream_requests
                .with_label_values(&[dependency, "real"]),
            speculative: self
                .upstream_requests
                .with_label_values(&[dependency, "speculative"]),
            errors: self.dependency_errors.with_label_values(&[dependency]),
            hidden: self.hidden.with_label_values(&[dependency]),
        }
    }

    /// Sets the gauges that mirror the context and speculation tables,
    /// before a scrape.
    pub(crate) fn observe_tables(
        &self,
        contexts_open: usize,
        (body_bytes, bodies_refused): (usize, u64),
        (held_bytes, inflight, traces): (u64, usize, usize),
    ) {
        self.contexts_open.set(contexts_open as i64);
        self.context_body_bytes.set(body_bytes as i64);
        let counted = self.context_bodies_refused.get();
        if bodies_refused > counted {
            self.context_bodies_refused.inc_by(bodies_refused - counted);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_past_the_cap_evict_the_least_recently_used() {
        let m = Metrics::new().unwrap();
        let kept: Arc<str> = Arc::from("GET /kept");
        let tick = Duration::from_millis(1);
        for i in 0..3 * MAX_ROUTES {
            let junk: Arc<str> = Arc::from(format!("GET /junk{i}"));
            m.inbound(&junk, 200, tick);
            m.inbound(&kept, 200, tick);
        }
        let text = String::from_utf8(m.render()).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("augur_inbound_requests_total{"))
            .count();
        assert!(series <= MAX_ROUTES, "{series} route series");
        assert!(
            text.contains(&format!(
                "augur_inbound_requests_total{{route=\"GET /kept\"}} {}",
                3 * MAX_ROUTES
            )),
            "a route in use keeps its series and its count"
        );
        assert!(
            !text.contains("route=\"GET /junk0\""),
            "the oldest junk went"
        );
        assert!(m.routes_evicted.get() >= (2 * MAX_ROUTES) as u64);
    }
}
