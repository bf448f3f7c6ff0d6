//! Speculation: when a context opens and whenever it learns something new
//! (a call's response, real or speculative), ask the model what comes next,
//! prestart what needs a container, and send what passes the gates; a real
//! call then finds its answer here, done or in flight.
//!
//! [`Speculation`] is the handle the request path holds. `plan.rs` is the
//! gates (pure), `send.rs` the client, `table.rs` every speculation from
//! prediction to outcome with the responses held for their real calls, and
//! `governor.rs` pauses speculation where it keeps being wasted; `key.rs`
//! is what identifies a request.

mod governor;
mod key;
mod plan;
mod send;
mod table;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use augur_predictor::headers::KeyHeaders;
use augur_predictor::secret::SecretHasher;
use augur_predictor::{Call, Prediction, Request};
use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use crate::clock::unix_ms;
use crate::context::{CallOutcome, ContextId, ContextTable};
use crate::dependency::{Dependency, Purpose};
use crate::http::failure::SentWrite;
use crate::http::traceparent::{TraceParent, fresh_id64};
use crate::learning::Learning;
use crate::ops::metrics::Metrics;
use crate::ops::telemetry::{self, MaybeSpan, Telemetry};
pub(crate) use key::Key;
pub(crate) use plan::{Barrier, RouteRule, Settings, is_safe};
pub(crate) use table::Stored;
use table::{Found, Info, SpeculationTable};

/// How far ahead a predicted call to a container dependency starts its
/// container.
const PRESTART_HORIZON_US: u64 = 30_000_000;

/// How much longer than its dependency's timeout a real write waits for
/// the answer of its speculation (which that timeout bounds).
const WRITE_PATIENCE: Duration = Duration::from_secs(1);

/// What became of one speculation
/// (`augur_speculations_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Used,
    Wasted,
    Failed,
    Cancelled,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Used => "used",
            Outcome::Wasted => "wasted",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// What speculation works with, built once at start-up.
pub(crate) struct Parts {
    pub(crate) settings: Settings,
    /// `cache.capacity`, `speculation.max_inflight`, `max_waste_ratio`.
    pub(crate) capacity_bytes: u64,
    pub(crate) max_inflight: usize,
    pub(crate) max_waste_ratio: f64,
    pub(crate) dependencies: Vec<Arc<Dependency>>,
    pub(crate) contexts: Arc<ContextTable>,
    pub(crate) learning: Arc<Learning>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) hasher: SecretHasher,
    pub(crate) key_headers: KeyHeaders,
    /// `predictor.max_body_capture`: the largest answer parsed for the
    /// learner, as for a real call.
    pub(crate) body_limit: usize,
}

pub(crate) struct Speculation {
    settings: Settings,
    table: SpeculationTable,
    dependencies: HashMap<Arc<str>, Arc<Dependency>>,
    client: send::Client,
    contexts: Arc<ContextTable>,
    learning: Arc<Learning>,
    metrics: Arc<Metrics>,
    telemetry: Arc<Telemetry>,
    hasher: SecretHasher,
    key_headers: KeyHeaders,
    /// How far ahead predictions look: the horizon, or further when a
    /// container may need starting.
    ahead_us: u64,
    /// The service's address as the egress listeners see it (`None`
    /// inside: not an IP), once a call has shown it: speculative requests
    /// carry the forwarding headers a real call from it gets.
    caller: parking_lot::Mutex<Option<Option<IpAddr>>>,
}

/// The answer a write sent ahead gets when its request may have reached
/// the dependency but no response came back: the status a proxy gives for
/// that (502, or 504 past the timeout), since sending it again could run
/// it twice.
fn unknown_write(p: &Prediction, dependency: &str, status: u16, why: &str) -> Stored {
    let body = Bytes::from(format!(
        "augur: dependency \"{dependency}\" {why}; the write was sent ahead and is not sent again\n"
    ));
    tracing::warn!(
        "speculative write {} {dependency} {}: {why}; its real call gets {status}",
        p.method,
        p.path
    );
    Stored {
        status,
        headers: vec![
            (
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(body.len()),
            ),
        ],
        chunked: false,
        trailers: Vec::new(),
        body,
        prediction: p.clone(),
        json: None,
        took: std::time::Duration::ZERO,
    }
}

/// A real call answered from speculation.
pub(crate) struct Answer {
    pub(crate) stored: Arc<Stored>,
    /// `Hit` or `Coalesced`.
    pub(crate) outcome: CallOutcome,
    /// When the speculation was sent.
    pub(crate) sent: Option<std::time::Instant>,
}

impl Speculation {
    pub(crate) fn new(parts: Parts) -> Arc<Self> {
        let containers = parts.dependencies.iter().any(|d| d.containers().is_some());
        let horizon = parts.settings.horizon_us;
        Arc::new(Self {
            ahead_us: if containers {
                horizon.max(PRESTART_HORIZON_US)
            } else {
                horizon
            },
            table: SpeculationTable::new(
                parts.capacity_bytes,
                parts.max_inflight,
                parts.max_waste_ratio,
                parts.settings.barrier,
            ),
            dependencies: parts
                .dependencies
                .into_iter()
                .map(|d| (d.name().clone(), d))
                .collect(),
            settings: parts.settings,
            client: send::Client::new(parts.body_limit),
            contexts: parts.contexts,
            learning: parts.learning,
            metrics: parts.metrics,
            telemetry: parts.telemetry,
            hasher: parts.hasher,
            key_headers: parts.key_headers,
            caller: parking_lot::Mutex::new(None),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// A dependency call came from `caller` (the service, as the egress
    /// sees it).
    pub(crate) fn saw_caller(&self, caller: Option<IpAddr>) {
        let mut known = self.caller.lock();
        if *known != Some(caller) {
            *known = Some(caller);
        }
    }

    /// The headers that are part of a request's key.
    pub(crate) fn key_headers(&self) -> &KeyHeaders {
        &self.key_headers
    }

    /// Whether an inbound request on `route` is to be speculated for:
    /// speculation is on and the model knows the route. Asked once, when
    /// the request arrives; a context that is not is never [`open`]ed
    /// here, and costs nothing more.
    ///
    /// [`open`]: Self::open
    pub(crate) fn speculates(&self, route: &str) -> bool {
        self.enabled() && self.learning.knows(route)
    }

    /// Starts keeping speculations for an inbound request that just opened
    /// its context (one that [`speculates`](Self::speculates)), and
    /// speculates what its route predicts.
    pub(crate) fn open(self: &Arc<Self>, context: ContextId, tp: TraceParent) {
        if !self.enabled() {
            return;
        }
        self.table.open(context, tp.parent_id);
        self.run(context, tp.flags);
    }

    /// Predicts for the open context `context` and acts on what passes the
    /// gates. Cheap when nothing is predicted; never blocks.
    pub(crate) fn run(self: &Arc<Self>, context: ContextId, flags: u8) {
        if !self.enabled() || !self.table.is_open(context) {
            return;
        }
        let Some((mut live, elapsed)) = self.contexts.live(context) else {
            return;
        };
        let Some(methods) = self.settings.methods_for(&live.route) else {
            return;
        };
        // Speculative responses that no real call has taken yet count as
        // calls already made, so chains go on without waiting for the
        // service.
        let mut done = self.table.done_for(context);
        done.sort_by_key(|(_, s)| s.prediction.expected_start_us);
        live.calls
            .extend(done.iter().map(|(_, stored)| virtual_call(stored)));
        let predicted = self.learning.predict(&live, elapsed, self.ahead_us);
        for p in &predicted {
            let Some(dep) = self.dependencies.get(p.dependency.as_str()) else {
                continue;
            };
            let facts = plan::Facts {
                containers: dep.containers().is_some(),
            };
            let decision = plan::decide(p, elapsed, &self.settings, methods, facts);
            if let Some(due) = decision.prestart_in {
                dep.prestart_for(p.probability, due);
            }
            if decision.send
                && !plan::past_a_write(p, &predicted, self.settings.barrier)
                && dep.takes_speculation()
                && self.table.allows(&live.route, &p.dependency)
            {
                self.send(context, flags, &live.route, p.clone(), dep);
            }
        }
    }

    /// Registers `p` in the table and sends it, unless the table refuses
    /// it (known already, not open, `max_inflight`) or no instance is free.
    fn send(
        self: &Arc<Self>,
        context: ContextId,
        flags: u8,
        route: &str,
        p: Prediction,
        dep: &Arc<Dependency>,
    ) {
        let body = p.body.as_ref().map(serde_json::Value::to_string);
        let key = Key::new(
            &self.hasher,
            context,
            &p.dependency,
            &p.method,
            &send::path_and_query(&p),
            &p.headers,
            body.as_deref(),
        );
        // A real call waits for this speculation as long as the call itself
        // takes nine times in ten (its recent latencies' 90th percentile),
        // and a little more, then goes upstream.
        // A write, once sent, has run: its real call waits for its answer
        // as long as the speculation itself may take (the dependency's
        // timeout), and a little longer.
        let patience = if plan::is_safe(&p.method) {
            plan::patience(&p).min(dep.timeout())
        } else {
            dep.timeout() + WRITE_PATIENCE
        };
        let info = Arc::new(Info {
            route: route.into(),
            dependency: dep.name().clone(),
            method: p.method.clone(),
            path: p.path.clone(),
            probability: p.probability,
            sent_unix_ms: unix_ms(),
            sent: Instant::now(),
        });
        if !self.table.begin(&key, info.clone(), patience) {
            return;
        }
        let span = self.span(context, flags, &p);
        let this = self.clone();
        let dep = dep.clone();
        tokio::spawn(async move { this.fetch(key, p, dep, span, info).await });
    }

    /// A span of its own for a speculative request, in the inbound
    /// request's trace and linked to its span, with the `traceparent` that
    /// goes with the request.
    fn span(&self, context: ContextId, flags: u8, p: &Prediction) -> (MaybeSpan, TraceParent) {
        let inbound = self.table.inbound_span(context).map(|span| TraceParent {
            trace_id: context.trace,
            parent_id: span,
            flags,
        });
        let (span, tp) = self
            .telemetry
            .start_linked(SpanKind::Client, inbound, inbound, || {
                let attributes = vec![
                    KeyValue::new("augur.dependency", p.dependency.clone()),
                    KeyValue::new("augur.speculative", true),
                    KeyValue::new("augur.probability", p.probability),
                    KeyValue::new("http.request.method", p.method.clone()),
                    KeyValue::new("url.path", p.path.clone()),
                ];
                (
                    format!("prefetch {} {}", p.method, p.dependency),
                    attributes,
                )
            });
        let tp = match inbound {
            Some(_) => tp,
            None => TraceParent {
                trace_id: context.trace,
                parent_id: fresh_id64(),
                flags,
            },
        };
        (span, tp)
    }

    /// Sends one registered speculation, publishes its result, and chains
    /// on a servable answer.
    async fn fetch(
        self: Arc<Self>,
        key: Key,
        p: Prediction,
        dep: Arc<Dependency>,
        (mut span, tp): (MaybeSpan, TraceParent),
        info: Arc<Info>,
    ) {
        // Only a speculation that is really sent takes an instance; one
        // whose caller is not known yet cannot be sent as the real call
        // would be.
        let caller = *self.caller.lock();
        let lease = match caller {
            Some(_) => dep.lease(Purpose::Speculation).await.ok(),
            None => None,
        };
        let stored = match lease {
            Some(lease) => {
                dep.series().upstream(true);
                let sent = self.client.fetch(
                    &p,
                    (
                        lease.addr(),
                        dep.target().tls.as_ref(),
                        dep.target().protocol,
                    ),
                    caller.flatten(),
                    tp,
                    &self.key_headers,
                );
                let write = !plan::is_safe(&p.method);
                match tokio::time::timeout(dep.timeout(), sent).await {
                    Ok(Ok(stored)) => stored,
                    Ok(Err(e)) if write && e.sent => Some(unknown_write(
                        &p,
                        dep.name(),
                        502,
                        &format!("failed: {:#}", e.why),
                    )),
                    Ok(Err(e)) => {
                        tracing::debug!(
                            "speculative {} {} {}: {:#}",
                            p.method,
                            dep.name(),
                            p.path,
                            e.why
                        );
                        None
                    }
                    Err(_) if write => Some(unknown_write(
                        &p,
                        dep.name(),
                        504,
                        &format!("did not answer within {:?}", dep.timeout()),
                    )),
                    Err(_) => None,
                }
            }
            // The instance went between the check and now.
            None => None,
        };
        let servable = stored.is_some();
        let status = stored.as_ref().map_or(0, |s| s.status);
        telemetry::finish(&mut span, status, || {
            vec![KeyValue::new("augur.servable", servable)]
        });
        if let Some(outcome) = self.table.complete(&key, stored, Some(info)) {
            self.count(dep.name(), outcome);
        }
        if servable {
            self.run(key.context, tp.flags);
        }
    }

    /// Whether `context` sent a speculative `method` request to
    /// `dependency`: only then is a real write's body read to match it.
    pub(crate) fn sent(&self, context: ContextId, dependency: &str, method: &str) -> bool {
        self.table.sent(context, dependency, method)
    }

    /// Keys the hashes in speculation keys: a real call's key must be made
    /// with it to find its speculation.
    pub(crate) fn hasher(&self) -> &SecretHasher {
        &self.hasher
    }

    /// The answer for a real call of `key`, when a speculation was sent for
    /// exactly this request: at once if it completed, awaited (with the
    /// patience it was sent with) if in flight. `Err` when the call is a
    /// write that was sent ahead and cannot be answered: it must fail
    /// rather than run a second time.
    pub(crate) async fn answer(
        &self,
        key: &Key,
        dependency: &Arc<str>,
    ) -> Result<Option<Answer>, SentWrite> {
        let (stored, outcome, sent) = match self.table.claim(key, dependency) {
            Found::Nothing => return Ok(None),
            Found::SentWrite => return Err(SentWrite),
            Found::Done(stored, sent) => (stored, CallOutcome::Hit, sent),
            Found::InFlight(mut rx, until, sent) => {
                let waited =
                    tokio::time::timeout_at(until.into(), rx.wait_for(Option::is_some)).await;
                let stored = match waited {
                    Ok(Ok(value)) => value.clone().flatten(),
                    _ => None,
                };
                let Some(stored) = stored else {
                    // Failed, discarded or late: a write that may have run
                    // is not sent again.
                    return if self.table.write_sent(key) {
                        Err(SentWrite)
                    } else {
                        Ok(None)
                    };
                };
                self.table.used(key);
                (stored, CallOutcome::Coalesced, sent)
            }
        };
        self.count(dependency, Outcome::Used);
        Ok(Some(Answer {
            stored,
            outcome,
            sent,
        }))
    }

    /// A call with side effects to `dependency` starts in `context`: what
    /// was speculated before it and may not see it is discarded (counted
    /// wasted, and in `augur_speculations_discarded_total`), and nothing
    /// it reaches is speculated until [`write_ended`](Self::write_ended).
    /// The write's own speculation, if it was sent and answered it, is
    /// spent already.
    pub(crate) fn write_started(&self, context: ContextId, dependency: &Arc<str>) {
        for discarded in self.table.write_started(context, dependency) {
            self.count(&discarded, Outcome::Wasted);
            self.metrics
                .speculations_discarded
                .with_label_values(&[&*discarded])
                .inc();
        }
    }

    /// The write [`write_started`](Self::write_started) announced has
    /// ended.
    pub(crate) fn write_ended(&self, context: ContextId, dependency: &Arc<str>) {
        self.table.write_ended(context, dependency);
    }

    /// Another inbound request with `context`'s trace id opened: its calls
    /// can no longer be told to be its own, so nothing speculated for it
    /// answers them, and nothing more is (counted `cancelled`; not held
    /// against the route by the governor).
    pub(crate) fn abandon(&self, context: ContextId) {
        for dependency in self.table.abandon(context) {
            self.count(&dependency, Outcome::Cancelled);
        }
    }

    /// Drops what was speculated for a context that closed or expired,
    /// counting what was never used.
    pub(crate) fn close(&self, context: ContextId) {
        for (dependency, outcome) in self.table.close(context) {
            self.count(&dependency, outcome);
        }
    }

    fn count(&self, dependency: &str, outcome: Outcome) {
        self.metrics
            .speculations
            .with_label_values(&[dependency, outcome.as_str()])
            .inc();
    }

    /// What `/debug/speculations` shows: the last `limit` outcomes.
    pub(crate) fn report(&self, limit: usize) -> serde_json::Value {
        serde_json::json!({
            "enabled": self.enabled(),
            "inflight": self.table.inflight(),
            "held_bytes": self.table.held_bytes(),
            "governor": self.table.governor_states(),
            "recent": self.table.recent(limit),
        })
    }

    /// Bytes held, requests in flight, open traces: for the gauges.
    pub(crate) fn gauges(&self) -> (u64, usize, usize) {
        (
            self.table.held_bytes(),
            self.table.inflight(),
            self.table.traces(),
        )
    }
}

/// A completed speculation as a call of the live context.
fn virtual_call(stored: &Stored) -> Call {
    let p = &stored.prediction;
    Call {
        dependency: p.dependency.clone(),
        request: Request {
            method: p.method.clone(),
            path: p.path.clone(),
            query: p.query.clone(),
            headers: Vec::new(),
            body: None,
        },
        status: stored.status,
        start_us: p.expected_start_us,
        duration_us: p.expected_latency_us,
        response: stored.json.clone(),
    }
}
