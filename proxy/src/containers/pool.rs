//! One dependency's containers: started on the first call (a cold start
//! every waiting call shares), ahead of a predicted call (prestart), or
//! before the next call is due (adaptive keep-alive's pre-warm); balanced by
//! least in flight and scaled up when every instance is busy; replaced when
//! one stops answering; stopped when idle past the keep-alive.
//!
//! This file is the pool and how calls lease its instances; `start.rs`
//! starts one and waits for readiness, `upkeep.rs` is everything timed
//! (prestart, keep-alive, pre-warm, eviction, stats), `report.rs` what the
//! admin API and the metrics show.

mod report;
mod start;
#[cfg(test)]
mod tests;
mod upkeep;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use augur_predictor::timing::Recent;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::backend::{Backend, ResourceError, Spec, Usage, short};
use super::capacity::{Capacity, Full, Room, Tenant};
use super::keepalive::IdleGaps;

pub(crate) use report::Gauges;

/// Why a call got no instance.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PoolError {
    #[error("cannot start a container: {0}")]
    Start(ResourceError),
    #[error("no container was ready within {0:?}")]
    Timeout(Duration),
    #[error("no room for a container: {0}")]
    Capacity(Full),
    #[error("the last start failed ({0}); retrying in {1:?}")]
    BackingOff(Box<PoolError>, Duration),
    #[error("augur is shutting down")]
    Stopping,
    /// For a speculation, which never waits for a start.
    #[error("no instance is ready")]
    NoneReady,
}

/// How long idle instances are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeepAlive {
    Fixed(Duration),
    /// Learned from idle gaps; `fallback` until there are enough.
    Adaptive {
        fallback: Duration,
    },
}

/// When a started container counts as ready.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    Tcp,
    /// It answers `GET path` with any HTTP status.
    Http(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) min_instances: usize,
    pub(crate) max_instances: usize,
    pub(crate) keep_alive: KeepAlive,
    /// How long a call waits for a cold start.
    pub(crate) start_timeout: Duration,
    /// How long a prestarted instance may wait for its call before it is
    /// stopped as waste (the speculation horizon plus grace).
    pub(crate) prestart_grace: Duration,
    /// Calls in flight per instance above which another one starts.
    pub(crate) target_inflight: usize,
    pub(crate) probe: Probe,
    pub(crate) criticality: f64,
    /// Whether predicted calls start instances ahead of need.
    pub(crate) prestart: bool,
}

/// Why an instance was started (`augur_container_starts_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Reason {
    /// A call found nothing ready and waited.
    Cold,
    /// A call was predicted; the value is probability × criticality.
    Prestart(f64),
    /// Adaptive keep-alive expects the next call soon.
    Prewarm,
    /// Every instance was busy.
    Scale,
    /// Fewer than `min_instances` were running.
    Minimum,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Cold => "cold",
            Reason::Prestart(_) => "prestart",
            Reason::Prewarm => "prewarm",
            Reason::Scale => "scale",
            Reason::Minimum => "min",
        }
    }
}

/// An idle instance is worth this share of its dependency's criticality
/// when room is needed; an unused prestart is worth its prediction.
const IDLE_WORTH: f64 = 0.5;
/// Back-off after a failed start: from the first value, doubling, at most
/// the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(8));
/// A CPU-limited instance using this share of its limit counts as busy.
const BUSY_CPU: f64 = 0.9;
/// Docker stats samples of a dependency's instances before what they use
/// (the 90th percentile, plus [`HEADROOM`]) replaces their limits in the
/// room a new instance holds.
const USAGE_SAMPLES: usize = 8;
/// Head-room over the predicted use.
const HEADROOM: f64 = 1.25;
/// Docker's smallest memory limit: no instance holds less.
const MIN_MEMORY: u64 = 6 << 20;

struct Instance {
    id: String,
    addr: SocketAddr,
    inflight: usize,
    last_used: Instant,
    started: Instant,
    /// Started ahead of a predicted call worth this much, and not used by
    /// a call yet.
    unused_prestart: Option<f64>,
    usage: Option<Usage>,
    /// What it holds of the global limits.
    room: Room,
}

type StartWatch = watch::Receiver<Option<Result<(), PoolError>>>;

/// A start denied for want of room is not tried again (for anything but a
/// call) before this.
const DENIED_PAUSE: Duration = Duration::from_secs(1);

struct State {
    ready: Vec<Instance>,
    /// A start calls may wait for.
    starting: Option<StartWatch>,
    /// Scale-up starts under way (calls use the ready instances meanwhile).
    scaling: usize,
    stopping: bool,
    /// Since when nothing has been in flight (the start of an idle gap).
    idle_since: Option<Instant>,
    /// The idle period a pre-warm was started for.
    prewarmed_for: Option<Instant>,
    gaps: IdleGaps,
    /// After a failed start: no new start before this, and why.
    retry: Option<(Instant, PoolError)>,
    backoff: Duration,
    /// How long starts take (container created to ready), smoothed.
    start_time: Duration,
    /// Seconds run by containers that have stopped.
    stopped_seconds: f64,
    /// A prestart waiting for its moment.
    scheduled: Option<Instant>,
    /// What the engine was last told: calls in flight or not.
    in_use: bool,
    /// What instances used, per Docker stats sample: memory in KiB, CPU in
    /// thousandths of a core.
    memory_kib: Recent,
    cpu_milli: Recent,
    /// A cold start is waiting for room under the global limit.
    awaiting_room: bool,
    /// After a start was denied room: no speculative start before this.
    denied_until: Option<Instant>,
}

impl State {
    /// Instances ready or on their way.
    fn running(&self) -> usize {
        self.ready.len() + self.scaling + usize::from(self.starting.is_some())
    }

    /// Whether work other than a call should not start an instance now:
    /// the last start failed or was denied room a moment ago.
    fn holding_back(&self, now: Instant) -> bool {
        self.retry.as_ref().is_some_and(|(at, _)| now < *at)
            || self.denied_until.is_some_and(|at| now < at)
    }
}

/// How long before a call a start must begin: starts vary, so half again
/// the measured time.
pub(crate) fn lead(start_time: Duration) -> Duration {
    start_time.mul_f64(1.5)
}

/// Metrics a pool counts into (labelled `dependency` first, then
/// `reason` where they have one).
pub(crate) struct PoolMetrics {
    pub(crate) starts: prometheus::IntCounterVec,
    pub(crate) denied: prometheus::IntCounterVec,
    pub(crate) wasted_prestarts: prometheus::IntCounter,
    pub(crate) evictions: prometheus::IntCounter,
}

pub(crate) struct ContainerPool {
    spec: Spec,
    limits: Limits,
    backend: Arc<dyn Backend>,
    capacity: Arc<Capacity>,
    state: Mutex<State>,
    metrics: PoolMetrics,
}

/// An instance a call may use; give it back with [`ContainerPool::release`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acquired {
    pub(crate) addr: SocketAddr,
    /// How long the call waited for a cold start, if it did.
    pub(crate) cold_wait: Option<Duration>,
}

impl ContainerPool {
    pub(crate) fn new(
        spec: Spec,
        limits: Limits,
        backend: Arc<dyn Backend>,
        capacity: Arc<Capacity>,
        metrics: PoolMetrics,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            spec,
            limits,
            backend,
            capacity: capacity.clone(),
            state: Mutex::new(State {
                ready: Vec::new(),
                starting: None,
                scaling: 0,
                stopping: false,
                idle_since: None,
                prewarmed_for: None,
                gaps: IdleGaps::default(),
                retry: None,
                backoff: BACKOFF.0,
                start_time: Duration::from_secs(1),
                stopped_seconds: 0.0,
                scheduled: None,
                in_use: false,
                memory_kib: Recent::default(),
                cpu_milli: Recent::default(),
                awaiting_room: false,
                denied_until: None,
            }),
            metrics,
        });
        let tenant: Arc<dyn Tenant> = pool.clone();
        capacity.register(Arc::downgrade(&tenant));
        pool
    }

    pub(crate) fn dependency(&self) -> &str {
        &self.spec.dependency
    }

    /// The idle-gap histogram, as the saved state keeps it.
    pub(crate) fn saved_gaps(&self) -> Vec<u32> {
        self.state.lock().gaps.to_saved()
    }

    /// Takes a saved idle-gap histogram (from the last run); false if it
    /// is not one this build reads.
    pub(crate) fn restore_gaps(&self, saved: &[u32]) -> bool {
        match IdleGaps::from_saved(saved) {
            Some(gaps) => {
                self.state.lock().gaps = gaps;
                true
            }
            None => false,
        }
    }

    /// What the dependency's instances are predicted to use (the 90th
    /// percentile of their Docker stats samples), once seen enough.
    fn predicted(state: &State) -> Option<Usage> {
        if state.memory_kib.len() < USAGE_SAMPLES {
            return None;
        }
        Some(Usage {
            memory_bytes: state.memory_kib.quantile(0.9)? << 10,
            cpu_cores: state.cpu_milli.quantile(0.9)? as f64 / 1000.0,
        })
    }

    /// What a new instance holds of the global limits: its `memory` and
    /// `cpus` limits, or less once its dependency's instances have been
    /// seen to use less (their predicted use with [`HEADROOM`]). The limits
    /// still bound each container; the room is what it is expected to
    /// take, as a Kubernetes request is to a limit.
    fn room(&self) -> Room {
        let predicted = Self::predicted(&self.state.lock());
        let memory = self.spec.memory.map_or(0, |limit| match predicted {
            Some(p) => limit.min(((p.memory_bytes as f64 * HEADROOM) as u64).max(MIN_MEMORY)),
            None => limit,
        });
        let cpus = self.spec.cpus.map_or(0.0, |limit| match predicted {
            Some(p) => limit.min((p.cpu_cores * HEADROOM).max(0.01)),
            None => limit,
        });
        Room { memory, cpus }
    }

    /// Tells the engine when this sidecar's use of the dependency begins
    /// (`busy`) or ends: on the change only, not on every call.
    fn tell_use(&self, state: &mut State, busy: bool) {
        if state.in_use != busy {
            state.in_use = busy;
            self.backend
                .note_use(&self.spec, busy, crate::clock::unix_ms());
        }
    }

    /// The dependency's idle gap that ends at `end`, this sidecar's having
    /// begun at `since`: shorter when another sidecar sharing the
    /// dependency used it in between.
    fn idle_gap(&self, since: Instant, end: Instant) -> Duration {
        let since = match self.backend.others_last_use(&self.spec) {
            Some(ms) => {
                let ago = crate::clock::unix_ms().saturating_sub(ms);
                Instant::now()
                    .checked_sub(Duration::from_millis(ago))
                    .map_or(since, |other| other.max(since))
            }
            None => since,
        };
        end.saturating_duration_since(since)
    }

    /// A ready instance, starting one (shared with every other waiting call)
    /// when there is none.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Acquired, PoolError> {
        let got = self.acquire_or_start().await;
        if got.is_err() {
            let mut state = self.state.lock();
            if state.ready.iter().all(|i| i.inflight == 0) {
                // The call that said so is not in flight after all.
                self.tell_use(&mut state, false);
            }
        }
        got
    }

    async fn acquire_or_start(self: &Arc<Self>) -> Result<Acquired, PoolError> {
        let began = Instant::now();
        let deadline = began + self.limits.start_timeout;
        let mut waited = false;
        let mut arrived = false;
        let mut ours = false;
        loop {
            let mut watch = {
                let mut state = self.state.lock();
                if state.stopping {
                    return Err(PoolError::Stopping);
                }
                if !arrived {
                    arrived = true;
                    if let Some(since) = state.idle_since.take() {
                        let gap = self.idle_gap(since, began);
                        state.gaps.record(gap);
                    }
                    self.tell_use(&mut state, true);
                }
                if let Some(lease) = self.lease(&mut state) {
                    return Ok(Acquired {
                        cold_wait: waited.then(|| began.elapsed()),
                        ..lease
                    });
                }
                match &state.starting {
                    Some(w) => w.clone(),
                    None => {
                        if let Some((at, why)) = &state.retry {
                            let now = Instant::now();
                            if now < *at {
                                return Err(PoolError::BackingOff(
                                    Box::new(why.clone()),
                                    *at - now,
                                ));
                            }
                        }
                        ours = true;
                        self.begin(&mut state, Reason::Cold)
                    }
                }
            };
            waited = true;
            let outcome =
                tokio::time::timeout_at(deadline.into(), watch.wait_for(Option::is_some)).await;
            match outcome {
                Ok(Ok(result)) => match result.clone() {
                    // A prestart or pre-warm found no room at its priority:
                    // a call's own start outranks what is idle, or waits.
                    Some(Err(PoolError::Capacity(_))) if !ours => {}
                    Some(Err(e)) => return Err(e),
                    _ => {}
                },
                Ok(Err(_)) | Err(_) => {
                    // Say why: a start still waiting for room is not slow.
                    if self.state.lock().awaiting_room {
                        return Err(PoolError::Capacity(self.capacity.full()));
                    }
                    return Err(PoolError::Timeout(self.limits.start_timeout));
                }
            }
        }
    }

    /// Whether an instance is ready (a speculation is sent only then).
    pub(crate) fn has_ready(&self) -> bool {
        !self.state.lock().ready.is_empty()
    }

    /// A ready instance for a speculative request, without starting one;
    /// give it back with [`ContainerPool::release`].
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<SocketAddr> {
        let mut state = self.state.lock();
        if state.stopping || state.ready.is_empty() {
            return None;
        }
        // To the containers a speculative request is a request like any
        // other: it ends an idle gap, and the call it stands for is served
        // from it rather than from the instance.
        if let Some(since) = state.idle_since.take() {
            let gap = self.idle_gap(since, Instant::now());
            state.gaps.record(gap);
        }
        self.tell_use(&mut state, true);
        self.lease(&mut state).map(|lease| lease.addr)
    }

    /// The ready instance with the fewest calls in flight, scaling up when
    /// even that one is busy.
    fn lease(self: &Arc<Self>, state: &mut State) -> Option<Acquired> {
        let instance = state.ready.iter_mut().min_by_key(|i| i.inflight)?;
        instance.inflight += 1;
        instance.unused_prestart = None;
        instance.last_used = Instant::now();
        let addr = instance.addr;
        let busy = instance.inflight > self.limits.target_inflight
            || self.spec.cpus.is_some_and(|cpus| {
                instance.inflight > 1
                    && instance
                        .usage
                        .is_some_and(|u| u.cpu_cores >= cpus * BUSY_CPU)
            });
        if busy
            && state.scaling == 0
            && state.running() < self.limits.max_instances
            && !state.holding_back(Instant::now())
        {
            self.begin(state, Reason::Scale);
        }
        Some(Acquired {
            addr,
            cold_wait: None,
        })
    }

    /// Gives a lease back.
    pub(crate) fn release(&self, addr: SocketAddr) {
        let went_idle = {
            let mut state = self.state.lock();
            let now = Instant::now();
            let mut went_idle = false;
            if let Some(i) = state.ready.iter_mut().find(|i| i.addr == addr) {
                i.inflight = i.inflight.saturating_sub(1);
                i.last_used = now;
                went_idle = i.inflight == 0;
            }
            if state.ready.iter().all(|i| i.inflight == 0) {
                state.idle_since = Some(now);
                self.tell_use(&mut state, false);
            }
            went_idle
        };
        // A call waiting for room may displace this one now.
        if went_idle {
            self.capacity.wake();
        }
    }

    /// The instance at `addr` did not answer: take it out and remove it;
    /// the next call starts another.
    pub(crate) async fn failed(&self, addr: SocketAddr) {
        let gone = {
            let mut state = self.state.lock();
            let at = state.ready.iter().position(|i| i.addr == addr);
            at.map(|at| state.ready.remove(at))
        };
        if let Some(instance) = gone {
            tracing::warn!(
                "dependency {:?}: container {} stopped answering; replacing it",
                self.spec.dependency,
                short(&instance.id)
            );
            self.stop_instance(&instance.id, instance.started, instance.room)
                .await;
        }
    }

    /// Starts nothing more (shutdown): a start under way stops what it
    /// started; the containers themselves are removed by label.
    pub(crate) fn close(&self) {
        self.state.lock().stopping = true;
    }
}
