//! One dependency's containers: started on the first call (a cold start
//! every waiting call shares), ahead of a predicted call (prestart), or
//! before the next call is due (adaptive keep-alive's pre-warm); balanced by
//! least in flight and scaled up when every instance is busy; replaced when
//! one stops answering; stopped when idle past the keep-alive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::capacity::{self, Capacity, Full};
use super::keepalive::{IdleGaps, Windows};
use super::{Backend, ResourceError, Spec, Started, Usage, short};

/// Why a call got no instance.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
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
}

/// How long idle instances are kept.
#[derive(Debug, Clone, Copy)]
pub enum KeepAlive {
    Fixed(Duration),
    /// Learned from idle gaps; `fallback` until there are enough.
    Adaptive {
        fallback: Duration,
    },
}

/// When a started container counts as ready.
#[derive(Debug, Clone)]
pub enum Probe {
    Tcp,
    /// It answers `GET path` with any HTTP status.
    Http(String),
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub min_instances: usize,
    pub max_instances: usize,
    pub keep_alive: KeepAlive,
    /// How long a call waits for a cold start.
    pub start_timeout: Duration,
    /// How long a prestarted instance may wait for its call before it is
    /// stopped as waste (the speculation horizon plus grace).
    pub prestart_grace: Duration,
    /// Calls in flight per instance above which another one starts.
    pub target_inflight: usize,
    pub probe: Probe,
    pub criticality: f64,
    /// Whether predicted calls start instances ahead of need.
    pub prestart: bool,
}

/// Why an instance was started (`augur_container_starts_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
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
pub fn lead(start_time: Duration) -> Duration {
    start_time.mul_f64(1.5)
}

/// Metrics a pool counts into (labelled `dependency` first, then
/// `reason` where they have one).
pub struct PoolMetrics {
    pub starts: prometheus::IntCounterVec,
    pub denied: prometheus::IntCounterVec,
    pub wasted_prestarts: prometheus::IntCounter,
    pub evictions: prometheus::IntCounter,
}

pub struct ContainerPool {
    spec: Spec,
    limits: Limits,
    backend: Arc<dyn Backend>,
    capacity: Arc<Capacity>,
    state: Mutex<State>,
    metrics: PoolMetrics,
}

/// An instance a call may use; give it back with [`ContainerPool::release`].
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub addr: SocketAddr,
    /// How long the call waited for a cold start, if it did.
    pub cold_wait: Option<Duration>,
}

/// What `/debug/containers` and the metrics show of a pool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub dependency: String,
    pub ready: usize,
    pub starting: usize,
    pub inflight: usize,
    pub keep_alive: String,
    pub hold_seconds: Option<f64>,
    pub prewarm_seconds: Option<f64>,
    pub keep_alive_seconds: f64,
    pub idle_gaps_seen: u32,
    pub start_seconds: f64,
    pub instances: Vec<InstanceSnapshot>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceSnapshot {
    pub id: String,
    pub addr: SocketAddr,
    pub inflight: usize,
    pub age_seconds: f64,
    pub idle_seconds: f64,
    pub unused_prestart: bool,
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<u64>,
}

impl ContainerPool {
    pub fn new(
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
                awaiting_room: false,
                denied_until: None,
            }),
            metrics,
        });
        capacity.register(&pool);
        pool
    }

    pub fn dependency(&self) -> &str {
        &self.spec.dependency
    }

    /// What one instance counts against the global memory limit.
    fn memory(&self) -> u64 {
        self.spec.memory.unwrap_or(0)
    }

    /// Whether a prestart would start an instance now.
    fn may_prestart(&self, state: &State) -> bool {
        self.limits.prestart
            && !state.stopping
            && state.ready.is_empty()
            && state.starting.is_none()
            && !state.holding_back(Instant::now())
    }

    /// Starts an instance ahead of a call predicted with `probability`,
    /// unless one is ready or starting. Returns whether it did.
    pub fn prestart(self: &Arc<Self>, probability: f64) -> bool {
        let mut state = self.state.lock();
        if !self.may_prestart(&state) {
            return false;
        }
        self.begin(
            &mut state,
            Reason::Prestart(probability * self.limits.criticality),
        );
        true
    }

    /// Prestarts so an instance is ready when a call predicted with
    /// `probability` is due in `due`: now if starting takes about that
    /// long, later otherwise. One later prestart is kept, the earliest.
    pub fn prestart_for(self: &Arc<Self>, probability: f64, due: Duration) {
        let mut state = self.state.lock();
        if !self.may_prestart(&state) {
            return;
        }
        let lead = lead(state.start_time) + Duration::from_millis(100);
        let Some(wait) = due.checked_sub(lead).filter(|w| !w.is_zero()) else {
            self.begin(
                &mut state,
                Reason::Prestart(probability * self.limits.criticality),
            );
            return;
        };
        let at = Instant::now() + wait;
        if state.scheduled.is_some_and(|t| t <= at) {
            return;
        }
        state.scheduled = Some(at);
        drop(state);
        let pool = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let mine = {
                let mut state = pool.state.lock();
                let mine = state.scheduled == Some(at);
                if mine {
                    state.scheduled = None;
                }
                mine
            };
            if mine {
                pool.prestart(probability);
            }
        });
    }

    /// Starts an instance in the background and returns what tells when it
    /// is ready. Calls wait for any start but a scale-up (they have ready
    /// instances meanwhile).
    fn begin(self: &Arc<Self>, state: &mut State, reason: Reason) -> StartWatch {
        let (tx, rx) = watch::channel(None);
        if reason == Reason::Scale {
            state.scaling += 1;
        } else {
            state.starting = Some(rx.clone());
        }
        tokio::spawn(self.clone().start(tx, reason));
        rx
    }

    /// A ready instance, starting one (shared with every other waiting call)
    /// when there is none.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, PoolError> {
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
                        state.gaps.record(began.duration_since(since));
                    }
                }
                if let Some(lease) = self.lease(&mut state) {
                    return Ok(Lease {
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
                        return Err(PoolError::Capacity(Full(self.capacity.describe())));
                    }
                    return Err(PoolError::Timeout(self.limits.start_timeout));
                }
            }
        }
    }

    /// Whether an instance is ready (a speculation is sent only then).
    pub fn has_ready(&self) -> bool {
        !self.state.lock().ready.is_empty()
    }

    /// A ready instance for a speculative request, without starting one;
    /// give it back with [`ContainerPool::release`].
    pub fn try_acquire(self: &Arc<Self>) -> Option<SocketAddr> {
        let mut state = self.state.lock();
        if state.stopping || state.ready.is_empty() {
            return None;
        }
        // To the containers a speculative request is a request like any
        // other: it ends an idle gap, and the call it stands for is served
        // from it rather than from the instance.
        if let Some(since) = state.idle_since.take() {
            state.gaps.record(since.elapsed());
        }
        self.lease(&mut state).map(|lease| lease.addr)
    }

    /// The ready instance with the fewest calls in flight, scaling up when
    /// even that one is busy.
    fn lease(self: &Arc<Self>, state: &mut State) -> Option<Lease> {
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
        Some(Lease {
            addr,
            cold_wait: None,
        })
    }

    /// Starts one instance and waits until it is ready.
    async fn start(
        self: Arc<Self>,
        tx: watch::Sender<Option<Result<(), PoolError>>>,
        reason: Reason,
    ) {
        let began = Instant::now();
        let result = self.start_instance(reason).await;
        {
            let mut state = self.state.lock();
            if reason == Reason::Scale {
                state.scaling -= 1;
            } else {
                state.starting = None;
            }
            match &result {
                Ok(()) => {
                    let took = began.elapsed();
                    state.start_time = (state.start_time * 3 + took) / 4;
                    state.retry = None;
                    state.backoff = BACKOFF.0;
                }
                // No room is not the engine's fault: no back-off, but no
                // speculative start again for a moment (a call still may).
                Err(PoolError::Capacity(_)) => {
                    state.denied_until = Some(Instant::now() + DENIED_PAUSE);
                }
                Err(e) => {
                    state.retry = Some((Instant::now() + state.backoff, e.clone()));
                    state.backoff = (state.backoff * 2).min(BACKOFF.1);
                }
            }
        }
        if let Err(e) = &result {
            match e {
                PoolError::Capacity(_) => {
                    self.metrics
                        .denied
                        .with_label_values(&[&self.spec.dependency, reason.label()])
                        .inc();
                    tracing::debug!("dependency {:?}: {e}", self.spec.dependency);
                }
                _ => tracing::warn!("dependency {:?}: {e}", self.spec.dependency),
            }
        }
        tx.send_replace(Some(result));
    }

    async fn start_instance(&self, reason: Reason) -> Result<(), PoolError> {
        let priority = match reason {
            Reason::Cold => capacity::CALL,
            Reason::Prestart(value) => value,
            Reason::Prewarm | Reason::Scale | Reason::Minimum => self.limits.criticality,
        };
        let memory = self.memory();
        let deadline = Instant::now() + self.limits.start_timeout;
        // Only a call's start waits for room; its callers are told why.
        let cold = reason == Reason::Cold;
        if cold {
            self.state.lock().awaiting_room = true;
        }
        let room = self.capacity.reserve(memory, priority, deadline).await;
        if cold {
            self.state.lock().awaiting_room = false;
        }
        room.map_err(PoolError::Capacity)?;
        self.metrics
            .starts
            .with_label_values(&[&self.spec.dependency, reason.label()])
            .inc();
        let now = Instant::now();
        let started = match self.backend.start(&self.spec).await {
            Ok(started) => started,
            Err(e) => {
                self.capacity.release(memory);
                return Err(PoolError::Start(e));
            }
        };
        if let Err(e) = self.ready(&started).await {
            self.stop_instance(&started.id, now).await;
            return Err(e);
        }
        let instance = Instance {
            id: started.id,
            addr: started.addr,
            inflight: 0,
            last_used: Instant::now(),
            started: now,
            unused_prestart: match reason {
                Reason::Prestart(value) => Some(value),
                _ => None,
            },
            usage: None,
        };
        let refused = {
            let mut state = self.state.lock();
            if state.stopping {
                Some(instance)
            } else {
                state.ready.push(instance);
                None
            }
        };
        match refused {
            Some(instance) => {
                self.stop_instance(&instance.id, now).await;
                Err(PoolError::Stopping)
            }
            None => Ok(()),
        }
    }

    /// Waits until the instance passes its readiness probe. For HTTP, a TCP
    /// connect is not enough: Docker's port proxy accepts connections
    /// before the process listens.
    async fn ready(&self, started: &Started) -> Result<(), PoolError> {
        let deadline = Instant::now() + self.limits.start_timeout;
        while Instant::now() < deadline {
            let probe = async {
                match &self.limits.probe {
                    Probe::Tcp => tokio::net::TcpStream::connect(started.addr).await.is_ok(),
                    Probe::Http(path) => answers_http(started.addr, path).await,
                }
            };
            // A process that does not listen yet fails fast (the port proxy
            // closes the connection); one that listens may answer slowly.
            let patience = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(5));
            if let Ok(true) = tokio::time::timeout(patience, probe).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(PoolError::Timeout(self.limits.start_timeout))
    }

    /// Stops a container, gives its room back and counts its seconds.
    async fn stop_instance(&self, id: &str, started: Instant) {
        if let Err(e) = self.backend.stop(id).await {
            tracing::warn!("{e}");
        }
        self.capacity.release(self.memory());
        self.state.lock().stopped_seconds += started.elapsed().as_secs_f64();
    }

    /// Gives a lease back.
    pub fn release(&self, addr: SocketAddr) {
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
    pub async fn failed(&self, addr: SocketAddr) {
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
            self.stop_instance(&instance.id, instance.started).await;
        }
    }

    /// The keep-alive windows in force now.
    fn windows(&self, state: &State) -> Windows {
        match self.limits.keep_alive {
            KeepAlive::Fixed(keep_alive) => Windows {
                hold: Duration::ZERO,
                prewarm: Duration::ZERO,
                keep_alive,
            },
            KeepAlive::Adaptive { fallback } => {
                state.gaps.windows(state.start_time).unwrap_or(Windows {
                    hold: Duration::ZERO,
                    prewarm: Duration::ZERO,
                    keep_alive: fallback,
                })
            }
        }
    }

    /// Periodic upkeep: stops instances past their keep-alive (or, with a
    /// pre-warm window, as soon as the dependency goes idle), prestarted
    /// ones no call used within the grace, and pre-warms an instance just
    /// before the next call is expected. Keeps `min_instances`.
    pub async fn maintain(self: &Arc<Self>) {
        let stopped: Vec<Instance> = {
            let mut state = self.state.lock();
            if state.stopping {
                return;
            }
            let now = Instant::now();
            let windows = self.windows(&state);
            let idle_for = state.idle_since.map(|since| now.duration_since(since));
            let lead = lead(state.start_time);
            let mut out = Vec::new();
            while state.ready.len() > self.limits.min_instances {
                let Some(at) = state.ready.iter().position(|i| {
                    let idle = now.duration_since(i.last_used);
                    if i.inflight > 0 {
                        return false;
                    }
                    if i.unused_prestart.is_some() {
                        return idle >= self.limits.prestart_grace;
                    }
                    // A pre-warmed instance belongs to the idle period.
                    let idle = idle_for.unwrap_or(idle);
                    let before_prewarm = !windows.prewarm.is_zero()
                        && idle_for
                            .is_some_and(|f| f >= windows.hold && f + lead < windows.prewarm);
                    before_prewarm || idle >= windows.keep_alive
                }) else {
                    break;
                };
                let instance = state.ready.remove(at);
                if instance.unused_prestart.is_some() {
                    self.metrics.wasted_prestarts.inc();
                }
                out.push(instance);
            }
            // Keep min_instances running (one start at a time).
            if state.running() < self.limits.min_instances
                && state.starting.is_none()
                && !state.holding_back(now)
            {
                self.begin(&mut state, Reason::Minimum);
            }
            // Pre-warm once per idle period, just before the window opens.
            if let (Some(since), Some(idle)) = (state.idle_since, idle_for) {
                let due = !windows.prewarm.is_zero()
                    && idle + lead >= windows.prewarm
                    && idle < windows.keep_alive
                    && state.prewarmed_for != Some(since)
                    && state.ready.is_empty()
                    && state.starting.is_none()
                    && !state.holding_back(now);
                if due {
                    state.prewarmed_for = Some(since);
                    self.begin(&mut state, Reason::Prewarm);
                }
            }
            out
        };
        for instance in stopped {
            let pool = self.clone();
            tokio::spawn(async move { pool.stop_instance(&instance.id, instance.started).await });
        }
    }

    /// The idle instance worth least (its id and worth), for making room:
    /// never one of `min_instances`, never one with a call in flight.
    pub fn idle_value(&self) -> Option<(f64, String)> {
        let state = self.state.lock();
        if state.stopping || state.ready.len() <= self.limits.min_instances {
            return None;
        }
        state
            .ready
            .iter()
            .filter(|i| i.inflight == 0)
            .map(|i| {
                let worth = i
                    .unused_prestart
                    .unwrap_or(self.limits.criticality * IDLE_WORTH);
                (worth, i.id.clone())
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// Stops the instance `id` to make room, if it is still idle.
    pub async fn evict(&self, id: &str) -> bool {
        let gone = {
            let mut state = self.state.lock();
            let at = state
                .ready
                .iter()
                .position(|i| i.id == id && i.inflight == 0)
                .filter(|_| state.ready.len() > self.limits.min_instances);
            at.map(|at| state.ready.remove(at))
        };
        let Some(instance) = gone else {
            return false;
        };
        tracing::info!(
            "dependency {:?}: stopping idle container {} to make room",
            self.spec.dependency,
            short(&instance.id)
        );
        if instance.unused_prestart.is_some() {
            self.metrics.wasted_prestarts.inc();
        }
        self.metrics.evictions.inc();
        self.stop_instance(&instance.id, instance.started).await;
        true
    }

    /// Reads Docker stats for every running instance, all at once (each
    /// takes about a second: Docker samples twice).
    pub async fn poll_stats(&self) {
        let ids: Vec<String> = self
            .state
            .lock()
            .ready
            .iter()
            .map(|i| i.id.clone())
            .collect();
        let reads = ids.into_iter().map(|id| async move {
            let usage = self.backend.stats(&id).await;
            (id, usage)
        });
        for (id, usage) in futures_util::future::join_all(reads).await {
            match usage {
                Ok(usage) => {
                    let mut state = self.state.lock();
                    if let Some(i) = state.ready.iter_mut().find(|i| i.id == id) {
                        i.usage = Some(usage);
                    }
                }
                Err(e) => tracing::debug!("{e}"),
            }
        }
    }

    /// Starts nothing more (shutdown): a start under way stops what it
    /// started; the containers themselves are removed by label.
    pub fn close(&self) {
        self.state.lock().stopping = true;
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.state.lock();
        let now = Instant::now();
        let windows = self.windows(&state);
        Snapshot {
            dependency: self.spec.dependency.clone(),
            ready: state.ready.len(),
            starting: state.scaling + usize::from(state.starting.is_some()),
            inflight: state.ready.iter().map(|i| i.inflight).sum(),
            keep_alive: match self.limits.keep_alive {
                KeepAlive::Fixed(_) => "fixed".into(),
                KeepAlive::Adaptive { .. } => "adaptive".into(),
            },
            hold_seconds: (!windows.prewarm.is_zero()).then_some(windows.hold.as_secs_f64()),
            prewarm_seconds: (!windows.prewarm.is_zero()).then_some(windows.prewarm.as_secs_f64()),
            keep_alive_seconds: windows.keep_alive.as_secs_f64(),
            idle_gaps_seen: state.gaps.samples(),
            start_seconds: state.start_time.as_secs_f64(),
            instances: state
                .ready
                .iter()
                .map(|i| InstanceSnapshot {
                    id: short(&i.id).to_string(),
                    addr: i.addr,
                    inflight: i.inflight,
                    age_seconds: now.duration_since(i.started).as_secs_f64(),
                    idle_seconds: now.duration_since(i.last_used).as_secs_f64(),
                    unused_prestart: i.unused_prestart.is_some(),
                    cpu_cores: i.usage.map(|u| u.cpu_cores),
                    memory_bytes: i.usage.map(|u| u.memory_bytes),
                })
                .collect(),
        }
    }

    /// What the metrics show of the pool, read under one lock.
    pub fn gauges(&self) -> Gauges {
        let state = self.state.lock();
        let idle = state.ready.iter().filter(|i| i.inflight == 0).count();
        let running: f64 = state
            .ready
            .iter()
            .map(|i| i.started.elapsed().as_secs_f64())
            .sum();
        let (cpu_cores, memory_bytes) = state
            .ready
            .iter()
            .filter_map(|i| i.usage)
            .fold((0.0, 0), |(c, m), u| (c + u.cpu_cores, m + u.memory_bytes));
        Gauges {
            starting: state.scaling + usize::from(state.starting.is_some()),
            busy: state.ready.len() - idle,
            idle,
            container_seconds: state.stopped_seconds + running,
            cpu_cores,
            memory_bytes,
        }
    }
}

/// A pool's metrics (see [`ContainerPool::gauges`]).
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub starting: usize,
    pub busy: usize,
    pub idle: usize,
    /// Seconds every container has run, stopped or running.
    pub container_seconds: f64,
    /// At the last Docker stats poll.
    pub cpu_cores: f64,
    pub memory_bytes: u64,
}

/// Whether `addr` answers `GET path` with an HTTP response (any status).
async fn answers_http(addr: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let probe =
        format!("GET {path} HTTP/1.1\r\nhost: augur-readiness\r\nconnection: close\r\n\r\n");
    if stream.write_all(probe.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await.is_ok() && &head == b"HTTP/"
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use prometheus::{IntCounter, IntCounterVec, Opts};

    use super::*;

    /// Containers as bound local sockets: ready for a TCP probe at once.
    #[derive(Default)]
    struct Fake {
        running: Mutex<HashMap<String, tokio::net::TcpListener>>,
        next: AtomicUsize,
        /// What stats report, in thousandths of a core.
        cpu: AtomicUsize,
    }

    #[async_trait]
    impl Backend for Fake {
        async fn start(&self, _spec: &Spec) -> Result<Started, ResourceError> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let id = format!("fake{:08}", self.next.fetch_add(1, Ordering::SeqCst));
            self.running.lock().insert(id.clone(), listener);
            Ok(Started { id, addr })
        }
        async fn stop(&self, id: &str) -> Result<(), ResourceError> {
            self.running.lock().remove(id);
            Ok(())
        }
        async fn owned(&self, _service: &str) -> Result<Vec<String>, ResourceError> {
            Ok(self.running.lock().keys().cloned().collect())
        }
        async fn stats(&self, _id: &str) -> Result<Usage, ResourceError> {
            Ok(Usage {
                cpu_cores: self.cpu.load(Ordering::SeqCst) as f64 / 1000.0,
                memory_bytes: 32 << 20,
            })
        }
    }

    fn metrics() -> PoolMetrics {
        let vec = |n: &str| IntCounterVec::new(Opts::new(n, n), &["dependency", "reason"]).unwrap();
        PoolMetrics {
            starts: vec("starts"),
            denied: vec("denied"),
            wasted_prestarts: IntCounter::new("wasted", "wasted").unwrap(),
            evictions: IntCounter::new("evictions", "evictions").unwrap(),
        }
    }

    fn pool(
        name: &str,
        criticality: f64,
        keep_alive: KeepAlive,
        backend: &Arc<Fake>,
        capacity: &Arc<Capacity>,
    ) -> Arc<ContainerPool> {
        let spec = Spec {
            service: "test".into(),
            dependency: name.into(),
            image: "none".into(),
            args: Vec::new(),
            port: 1,
            cpus: None,
            memory: None,
        };
        let limits = Limits {
            min_instances: 0,
            max_instances: 4,
            keep_alive,
            start_timeout: Duration::from_millis(300),
            prestart_grace: Duration::from_millis(200),
            target_inflight: 8,
            probe: Probe::Tcp,
            criticality,
            prestart: true,
        };
        ContainerPool::new(spec, limits, backend.clone(), capacity.clone(), metrics())
    }

    const FIXED: KeepAlive = KeepAlive::Fixed(Duration::from_secs(60));

    async fn settle(pool: &ContainerPool) {
        for _ in 0..100 {
            if pool.state.lock().starting.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_prestart_displaces_only_idle_work_worth_less() {
        let backend = Arc::new(Fake::default());
        let capacity = Capacity::new(1, None);
        let critical = pool("critical", 1.0, FIXED, &backend, &capacity);
        let minor = pool("minor", 0.2, FIXED, &backend, &capacity);
        let lease = minor.acquire().await.unwrap();
        minor.release(lease.addr);
        // minor idle is worth 0.2 × 0.5 = 0.1; a prestart of critical at
        // probability 0.9 is worth 0.9: it takes the room.
        assert!(critical.prestart(0.9));
        settle(&critical).await;
        assert_eq!(critical.snapshot().ready, 1);
        assert_eq!(minor.snapshot().ready, 0);
        assert_eq!(minor.metrics.evictions.get(), 1, "the victim counts it");
        // critical's unused prestart is worth 0.9; minor's prestart is worth
        // at most 0.2: denied, and nothing is stopped.
        assert!(minor.prestart(1.0));
        settle(&minor).await;
        assert_eq!(critical.snapshot().ready, 1);
        assert_eq!(minor.snapshot().ready, 0);
        assert_eq!(
            minor
                .metrics
                .denied
                .with_label_values(&["minor", "prestart"])
                .get(),
            1
        );
        // A real call outranks everything idle.
        let lease = minor.acquire().await.unwrap();
        assert_eq!(critical.snapshot().ready, 0);
        assert_eq!(
            critical.metrics.wasted_prestarts.get(),
            1,
            "displaced unused"
        );
        assert_eq!(capacity.used().0, 1);
        // With minor's only instance busy, a real call for critical waits
        // its start_timeout and is told why.
        let err = critical.acquire().await.unwrap_err();
        assert!(err.to_string().contains("at capacity"), "{err}");
        minor.release(lease.addr);
        assert_eq!(backend.running.lock().len(), 1);
    }

    #[tokio::test]
    async fn a_prestart_no_call_uses_is_stopped_after_the_grace_as_waste() {
        let backend = Arc::new(Fake::default());
        let capacity = Capacity::new(4, None);
        let p = pool("p", 1.0, FIXED, &backend, &capacity);
        assert!(p.prestart(0.95));
        settle(&p).await;
        assert!(!p.prestart(0.95), "one at a time");
        p.maintain().await;
        assert_eq!(p.snapshot().ready, 1, "kept within the grace");
        tokio::time::sleep(Duration::from_millis(250)).await;
        p.maintain().await;
        assert_eq!(p.snapshot().ready, 0);
        assert_eq!(p.metrics.wasted_prestarts.get(), 1);
        // One used is not waste.
        assert!(p.prestart(0.95));
        settle(&p).await;
        let lease = p.acquire().await.unwrap();
        assert!(lease.cold_wait.is_none());
        p.release(lease.addr);
        tokio::time::sleep(Duration::from_millis(250)).await;
        p.maintain().await;
        assert_eq!(
            p.snapshot().ready,
            1,
            "a used instance lives its keep-alive"
        );
        assert_eq!(p.metrics.wasted_prestarts.get(), 1);
    }

    #[tokio::test]
    async fn adaptive_keep_alive_stops_at_once_and_prewarms_before_the_next_call() {
        let backend = Arc::new(Fake::default());
        let capacity = Capacity::new(4, None);
        let fallback = Duration::from_secs(60);
        let p = pool(
            "p",
            1.0,
            KeepAlive::Adaptive { fallback },
            &backend,
            &capacity,
        );
        let lease = p.acquire().await.unwrap();
        p.release(lease.addr);
        p.maintain().await;
        assert_eq!(p.snapshot().ready, 1, "the fallback keeps it");
        // Calls have come every 20–24 s.
        {
            let mut state = p.state.lock();
            state.start_time = Duration::from_millis(500);
            for i in 0..30 {
                state.gaps.record(Duration::from_secs(20 + i % 5));
            }
        }
        let w = p.windows(&p.state.lock());
        assert!(w.prewarm > Duration::from_secs(10), "{w:?}");
        p.maintain().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(p.snapshot().ready, 0, "stopped as soon as idle");
        // Just before the pre-warm window opens, one starts.
        let since = Instant::now() - (w.prewarm - Duration::from_millis(500));
        p.state.lock().idle_since = Some(since);
        p.maintain().await;
        settle(&p).await;
        assert_eq!(p.snapshot().ready, 1);
        assert_eq!(
            p.metrics.starts.with_label_values(&["p", "prewarm"]).get(),
            1
        );
        p.maintain().await;
        assert_eq!(p.snapshot().ready, 1, "kept for the window");
        // The next call finds it ready.
        let lease = p.acquire().await.unwrap();
        assert!(lease.cold_wait.is_none());
        p.release(lease.addr);
    }

    #[tokio::test]
    async fn an_instance_near_its_cpu_limit_counts_as_busy() {
        let backend = Arc::new(Fake::default());
        backend.cpu.store(950, Ordering::SeqCst); // 0.95 cores
        let capacity = Capacity::new(4, None);
        let template = pool("t", 1.0, FIXED, &backend, &capacity);
        let mut spec = template.spec.clone();
        spec.cpus = Some(1.0);
        let p = ContainerPool::new(
            spec,
            template.limits.clone(),
            backend.clone(),
            capacity.clone(),
            metrics(),
        );
        let a = p.acquire().await.unwrap();
        p.poll_stats().await;
        assert_eq!(p.gauges().cpu_cores, 0.95);
        // Two in flight is far below target_inflight (8), but the instance
        // uses 95% of its CPU limit: another starts.
        let b = p.acquire().await.unwrap();
        for _ in 0..100 {
            if p.snapshot().ready == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(p.snapshot().ready, 2);
        assert_eq!(p.metrics.starts.with_label_values(&["t", "scale"]).get(), 1);
        // The next call goes to the new, idle instance.
        let c = p.acquire().await.unwrap();
        assert_ne!(c.addr, a.addr);
        for lease in [a, b, c] {
            p.release(lease.addr);
        }
    }

    #[tokio::test]
    async fn min_instances_are_started_and_kept() {
        let backend = Arc::new(Fake::default());
        let capacity = Capacity::new(4, None);
        let template = pool(
            "t",
            1.0,
            KeepAlive::Fixed(Duration::ZERO),
            &backend,
            &capacity,
        );
        let mut limits = template.limits.clone();
        limits.min_instances = 2;
        let p = ContainerPool::new(
            template.spec.clone(),
            limits,
            backend.clone(),
            capacity.clone(),
            metrics(),
        );
        for _ in 0..4 {
            p.maintain().await;
            settle(&p).await;
        }
        assert_eq!(p.snapshot().ready, 2);
        assert_eq!(p.metrics.starts.with_label_values(&["t", "min"]).get(), 2);
        assert!(
            p.idle_value().is_none(),
            "never displaced below the minimum"
        );
        let lease = p.acquire().await.unwrap();
        p.release(lease.addr);
        p.maintain().await;
        assert_eq!(
            p.snapshot().ready,
            2,
            "a zero keep-alive stops none of them"
        );
    }

    #[tokio::test]
    async fn a_failed_start_backs_off_with_the_error() {
        struct Down;
        #[async_trait]
        impl Backend for Down {
            async fn start(&self, _spec: &Spec) -> Result<Started, ResourceError> {
                Err(ResourceError {
                    operation: "connect",
                    subject: "local engine".into(),
                    reason: "no daemon".into(),
                })
            }
            async fn stop(&self, _id: &str) -> Result<(), ResourceError> {
                Ok(())
            }
            async fn owned(&self, _service: &str) -> Result<Vec<String>, ResourceError> {
                Ok(Vec::new())
            }
            async fn stats(&self, _id: &str) -> Result<Usage, ResourceError> {
                unreachable!()
            }
        }
        let capacity = Capacity::new(4, None);
        let fake = Arc::new(Fake::default());
        let p = pool("p", 1.0, FIXED, &fake, &capacity);
        let down = ContainerPool::new(
            p.spec.clone(),
            p.limits.clone(),
            Arc::new(Down),
            capacity.clone(),
            metrics(),
        );
        let first = down.acquire().await.unwrap_err();
        assert!(first.to_string().contains("no daemon"), "{first}");
        let began = Instant::now();
        let second = down.acquire().await.unwrap_err();
        assert!(
            began.elapsed() < Duration::from_millis(50),
            "no wait while backing off"
        );
        assert!(second.to_string().contains("retrying in"), "{second}");
        assert_eq!(capacity.used().0, 0, "a failed start holds no room");
    }
}
