//! Feeding the learner: closed contexts go, through a bounded queue, to one
//! background thread that turns them into the predictor's observations,
//! learns from them and appends them to the trace log. The request path
//! only enqueues; when the queue is full a context is dropped and counted,
//! never waited for.
//!
//! The hand-off is batched: the thread takes everything queued at once,
//! then sleeps [`BATCH_WINDOW`] before it looks again, so under load a
//! request pays for a lock and a push, never for waking a thread; only the
//! first context after the thread went idle wakes it. A context with
//! nothing to teach (no calls, on a route the learner does not know, no
//! trace log to write) is not handed over at all.
//!
//! The request path predicts from a snapshot the thread publishes (a copy
//! of the learner, behind an `Arc`): when the queue runs dry, and every
//! [`PUBLISH_EVERY`] under load. No lock is held while learning; readers
//! only clone the `Arc`.
//!
//! With `predictor.state`, the thread also keeps each route's last
//! [`SAVED_PER_ROUTE`] contexts and writes them as the saved state
//! ([`augur_predictor::state`]) every [`SAVE_EVERY`] when it learned
//! something, and when augur stops; augur learns them again at start.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use augur_predictor::learner::Evictions;
use augur_predictor::lru::Lru;
use augur_predictor::trace::Record;
use augur_predictor::{Call, Context, Learner, Request};
use parking_lot::{Mutex, RwLock};

use crate::context::Closed;
use crate::ops::metrics::Metrics;

/// Closed contexts waiting for the learner at most.
const QUEUE: usize = 4096;

/// How long the thread lets contexts gather after a batch before it takes
/// the next one.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Under steady load, what was learned is published at least this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(10);

/// Contexts kept per route for the saved state.
pub(crate) const SAVED_PER_ROUTE: usize = 32;
/// Routes kept for the saved state; past it, the least recently seen go.
const SAVED_ROUTES: usize = 128;
/// The state is saved at least this often while something is learned.
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// Where what was learned is saved, and for which service.
#[derive(Clone)]
pub(crate) struct Saving {
    pub(crate) path: PathBuf,
    pub(crate) service: String,
    /// What the rest of augur saves beside the contexts (the containers'
    /// idle-gap histograms), asked for at each save.
    pub(crate) extra: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
}

/// The learner as the request path sees it: the last published copy.
type Published = Arc<RwLock<Arc<Learner>>>;

pub(crate) struct Learning {
    queue: Arc<Queue>,
    /// The learner thread, woken by the first context after it went idle.
    thread: Thread,
    published: Published,
    /// Every context is handed over, to be written to the trace log.
    logging: bool,
    metrics: Arc<Metrics>,
}

/// The contexts waiting for the learner thread.
#[derive(Default)]
struct Queue {
    pending: Mutex<Vec<Closed>>,
    /// Set by the thread before it parks with nothing to do; the first
    /// context queued after that clears it and unparks the thread.
    idle: AtomicBool,
    /// Set when [`Learning`] is stopped or dropped: the thread learns
    /// what is queued, flushes the log, saves the state and ends.
    stopped: AtomicBool,
    /// Set by the thread as it ends.
    ended: AtomicBool,
}

impl Learning {
    /// Starts the learner thread. A trace log that cannot be opened is an
    /// error now, not a silent loss later.
    ///
    /// `saving`, when set, is where the state goes, and `restored` the
    /// contexts the learner was given from the last one (kept until newer
    /// ones replace them).
    pub(crate) fn start(
        learner: Learner,
        trace_log: Option<&Path>,
        saving: Option<(Saving, Vec<Context>)>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let log = trace_log.map(TraceLog::open).transpose()?;
        let logging = log.is_some();
        let published: Published = Arc::new(RwLock::new(Arc::new(learner.clone())));
        let queue = Arc::new(Queue::default());
        let (shared, counted, taken) = (published.clone(), metrics.clone(), queue.clone());
        let state = saving.map(|(saving, restored)| StateWriter::new(saving, restored));
        let handle = std::thread::Builder::new()
            .name("augur-learner".into())
            .spawn(move || {
                run(&taken, learner, &shared, log, state, &counted);
                taken.ended.store(true, Ordering::Release);
            })
            .context("cannot start the learner thread")?;
        Ok(Self {
            queue,
            thread: handle.thread().clone(),
            published,
            logging,
            metrics,
        })
    }

    /// What the model predicts for a live context `elapsed_us` into it,
    /// looking `ahead_us` ahead.
    pub(crate) fn predict(
        &self,
        live: &Context,
        elapsed_us: u64,
        ahead_us: u64,
    ) -> Vec<augur_predictor::Prediction> {
        let started = std::time::Instant::now();
        let predicted = self.snapshot().predict(live, elapsed_us, ahead_us);
        self.metrics
            .prediction
            .observe(started.elapsed().as_secs_f64());
        predicted
    }

    /// Whether the model knows `route`: only then can it predict a call
    /// for it, or learn from a context of it without calls.
    pub(crate) fn knows(&self, route: &str) -> bool {
        self.published.read().knows_route(route)
    }

    /// What the model has learned, for `/debug/model`.
    pub(crate) fn describe(&self) -> serde_json::Value {
        self.snapshot().describe()
    }

    /// The last published learner.
    fn snapshot(&self) -> Arc<Learner> {
        self.published.read().clone()
    }

    /// Hands a closed context to the learner without waiting; one with
    /// nothing to teach is dropped here.
    pub(crate) fn submit(&self, closed: Closed) {
        if !self.logging
            && closed.context.calls.is_empty()
            && !self.knows(&closed.context.inbound.route)
        {
            return;
        }
        let mut pending = self.queue.pending.lock();
        if pending.len() >= QUEUE {
            drop(pending);
            self.metrics.learner_dropped.inc();
            return;
        }
        pending.push(closed);
        drop(pending);
        if self.queue.idle.swap(false, Ordering::AcqRel) {
            self.thread.unpark();
        }
    }
}

impl Learning {
    /// Stops the thread once it has learned what is queued, flushed the
    /// trace log and saved the state; waits for that at most `within`.
    pub(crate) fn stop(&self, within: Duration) -> bool {
        self.queue.stopped.store(true, Ordering::Release);
        self.thread.unpark();
        let deadline = Instant::now() + within;
        while !self.queue.ended.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

impl Drop for Learning {
    fn drop(&mut self) {
        self.queue.stopped.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// The recent contexts of each route, and when they were last saved.
struct StateWriter {
    saving: Saving,
    routes: Lru<String, VecDeque<Context>>,
    changed: bool,
    saved: Instant,
    /// The last failure said, so a failing disk is logged once.
    failing: Option<String>,
}

impl StateWriter {
    fn new(saving: Saving, restored: Vec<Context>) -> Self {
        let mut writer = Self {
            saving,
            routes: Lru::new(SAVED_ROUTES),
            changed: false,
            saved: Instant::now(),
            failing: None,
        };
        for ctx in restored {
            writer.keep(ctx);
        }
        writer.changed = false;
        writer
    }

    fn keep(&mut self, ctx: Context) {
        let kept =
            self.routes
                .get_or_insert_with(ctx.route.clone(), VecDeque::new, &mut Vec::new());
        if kept.len() >= SAVED_PER_ROUTE {
            kept.pop_front();
        }
        kept.push_back(ctx);
        self.changed = true;
    }

    /// Saves if something was learned since the last save and `force` or
    /// [`SAVE_EVERY`] has passed.
    /// (Containers learn their idle gaps without the learner: at the
    /// forced save at shutdown the state is written whatever changed.)
    fn save(&mut self, force: bool) {
        if !(force || self.changed && self.saved.elapsed() >= SAVE_EVERY) {
            return;
        }
        let contexts: Vec<&Context> = self.routes.values().flatten().collect();
        let path = &self.saving.path;
        match augur_predictor::state::write_path(
            path,
            &self.saving.service,
            crate::clock::unix_ms(),
            &contexts,
            (self.saving.extra)(),
        ) {
            Ok(()) => {
                if self.failing.take().is_some() {
                    tracing::info!("predictor: saving the state to {} again", path.display());
                }
                self.changed = false;
            }
            Err(e) => {
                let text = e.to_string();
                if self.failing.as_deref() != Some(text.as_str()) {
                    tracing::warn!(
                        "predictor: cannot save the state to {}: {text}",
                        path.display()
                    );
                    self.failing = Some(text);
                }
            }
        }
        self.saved = Instant::now();
    }
}

/// The learner thread: learns each batch of closed contexts, writes them
/// to the trace log, and publishes what it learned for the request path —
/// when the queue runs dry, and at least every [`PUBLISH_EVERY`] under
/// load, so a copy is made at most about that often.
fn run(
    queue: &Queue,
    mut learner: Learner,
    published: &RwLock<Arc<Learner>>,
    mut log: Option<TraceLog>,
    mut state: Option<StateWriter>,
    metrics: &Metrics,
) {
    let mut unpublished = 0u64;
    let mut evictions = Evictions::default();
    let mut last_published = Instant::now();
    let mut batch = Vec::new();
    loop {
        std::mem::swap(&mut *queue.pending.lock(), &mut batch);
        let dry = batch.is_empty();
        for closed in batch.drain(..) {
            let ctx = observation(&closed);
            learner.learn(&ctx);
            unpublished += 1;
            if let Some(state) = &mut state {
                if !ctx.calls.is_empty() {
                    state.keep(ctx.clone());
                }
            }
            if let Some(l) = &mut log {
                let c = &closed.context;
                l.append(&Record::new(
                    Some(c.trace_id.clone()),
                    c.status,
                    c.duration_us,
                    ctx,
                ));
            }
        }
        if unpublished > 0 && (dry || last_published.elapsed() >= PUBLISH_EVERY) {
            *published.write() = Arc::new(learner.clone());
            metrics.learner_contexts.inc_by(unpublished);
            let now = learner.evictions();
            metrics.observe_learner(
                learner.route_count(),
                learner.shape_count(),
                &evictions,
                &now,
            );
            evictions = now;
            unpublished = 0;
            last_published = Instant::now();
        }
        if let Some(state) = &mut state {
            state.save(false);
        }
        if !dry {
            std::thread::sleep(BATCH_WINDOW);
            continue;
        }
        // Idle: make what was written durable, then wait to be woken.
        if let Some(l) = &mut log {
            l.flush();
        }
        let stopping = queue.stopped.load(Ordering::Acquire);
        if let Some(state) = &mut state {
            state.save(stopping);
        }
        if stopping {
            return;
        }
        queue.idle.store(true, Ordering::Release);
        // A context queued before the flag was up did not wake the thread.
        if !queue.pending.lock().is_empty() {
            queue.idle.store(false, Ordering::Release);
            continue;
        }
        std::thread::park();
        queue.idle.store(false, Ordering::Release);
    }
}

/// The predictor's view of a closed context.
pub(crate) fn observation(closed: &Closed) -> Context {
    let c = &closed.context;
    let inbound = Request {
        method: c.inbound.method.clone(),
        path: c.inbound.path.clone(),
        query: c.inbound.query.clone(),
        headers: c.inbound.headers.clone(),
        body: closed.inbound_body.clone(),
    };
    let calls = c
        .calls
        .iter()
        .enumerate()
        .map(|(i, call)| Call {
            dependency: call.dependency.to_string(),
            request: Request {
                method: call.method.clone(),
                path: call.path.clone(),
                query: call.query.clone(),
                headers: call.headers.clone(),
                body: closed.request_bodies.get(i).cloned().flatten(),
            },
            status: call.status,
            start_us: call.start_offset_us,
            duration_us: call.duration_us,
            response: closed.responses.get(i).cloned().flatten(),
        })
        .collect();
    Context {
        route: c.inbound.route.to_string(),
        inbound,
        calls,
    }
}

/// The JSON Lines trace log (`predictor.trace_log`).
struct TraceLog {
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl TraceLog {
    fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the trace log {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(file)),
        })
    }

    fn append(&mut self, record: &Record) {
        let result = self
            .out
            .as_mut()
            .map(|out| writeln!(out, "{}", record.to_line()));
        if let Some(Err(e)) = result {
            self.fail(&e);
        }
    }

    fn flush(&mut self) {
        if let Some(Err(e)) = self.out.as_mut().map(BufWriter::flush) {
            self.fail(&e);
        }
    }

    /// A write error stops the log (once, loudly) and nothing else.
    fn fail(&mut self, e: &std::io::Error) {
        tracing::error!(
            "trace log {}: {e}; no more contexts will be written to it",
            self.path.display()
        );
        self.out = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use augur_predictor::learner::Settings;

    use super::*;
    use crate::context::{
        CallOutcome, CallRecord, Charge, ContextTable, InboundRecord, Limits, Recorded,
    };

    fn table() -> ContextTable {
        ContextTable::new(Limits {
            max_open: 10_000,
            max_age: Duration::from_secs(60),
            max_calls: 8,
            history: 4,
            max_body_bytes: 1 << 20,
        })
    }

    /// A closed context of `route`, with one call to `users` or none.
    fn closed(t: &ContextTable, trace: u128, route: &str, calls: bool) -> Closed {
        let inbound = InboundRecord {
            method: "GET".into(),
            path: "/a".into(),
            query: None,
            route: route.into(),
            headers: Vec::new(),
            body: None,
            raw_headers: Vec::new(),
        };
        let id = t.open(trace, inbound).unwrap().id;
        if calls {
            let call = CallRecord {
                dependency: "users".into(),
                method: "GET".into(),
                path: "/users/1".into(),
                query: None,
                headers: Vec::new(),
                status: 200,
                outcome: CallOutcome::Miss,
                start_offset_us: 10,
                duration_us: 100,
                response_bytes: 2,
                request_body: None,
                response: None,
            };
            assert!(matches!(
                t.record(id, call, Charge::default()),
                Recorded::Open
            ));
        }
        t.close(id, 200).unwrap()
    }

    /// Waits (at most 5 s) until the learner counted `n` contexts, then
    /// a little longer to see it does not count more.
    fn learned(metrics: &Metrics, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.learner_contexts.get() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(PUBLISH_EVERY * 3);
        assert_eq!(metrics.learner_contexts.get(), n);
    }

    #[test]
    fn every_context_with_something_to_teach_is_learned_and_the_rest_is_not_handed_over() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let learning = Learning::start(
            Learner::new(Settings::default()),
            None,
            None,
            metrics.clone(),
        )
        .unwrap();
        let t = table();
        // No calls on a route the learner does not know: nothing to teach.
        for trace in 1..=3 {
            learning.submit(closed(&t, trace, "GET /a", false));
        }
        learned(&metrics, 0);
        assert!(!learning.knows("GET /a"));
        // A burst, taken in batches: every one is learned.
        for trace in 10..510 {
            learning.submit(closed(&t, trace, "GET /a", true));
        }
        learned(&metrics, 500);
        assert!(learning.knows("GET /a"));
        // Now the route is known, a context without calls teaches it too.
        learning.submit(closed(&t, 600, "GET /a", false));
        learned(&metrics, 501);
        // After the thread went idle, one context wakes it.
        std::thread::sleep(Duration::from_millis(50));
        learning.submit(closed(&t, 700, "GET /b", true));
        learned(&metrics, 502);
        assert_eq!(metrics.learner_dropped.get(), 0);
    }

    #[test]
    fn with_a_trace_log_every_context_is_written() {
        let dir = std::env::temp_dir().join(format!("augur-learning-{}", std::process::id()));
        let path = dir.join("trace.jsonl");
        let metrics = Arc::new(Metrics::new().unwrap());
        let learning = Learning::start(
            Learner::new(Settings::default()),
            Some(&path),
            None,
            metrics.clone(),
        )
        .unwrap();
        let t = table();
        for trace in 1..=5 {
            learning.submit(closed(&t, trace, "GET /quiet", false));
        }
        learned(&metrics, 5);
        // Dropping it ends the thread, which flushes the log first.
        drop(learning);
        let deadline = Instant::now() + Duration::from_secs(5);
        let lines = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let n = text.lines().count();
            if n == 5 || Instant::now() > deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(lines, 5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
