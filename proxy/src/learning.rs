//! Feeding the learner: closed contexts go, through a bounded queue, to one
//! background thread that turns them into the predictor's observations,
//! learns from them and appends them to the trace log. The request path
//! only enqueues; when the queue is full a context is dropped and counted,
//! never waited for.
//!
//! The request path predicts from a snapshot the thread publishes (a copy
//! of the learner, behind an `Arc`): at once when the queue runs dry, every
//! [`PUBLISH_EVERY`] under load. No lock is held while learning; readers
//! only clone the `Arc`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use augur_predictor::learner::Evictions;
use augur_predictor::trace::Record;
use augur_predictor::{Call, Context, Learner, Request};
use parking_lot::RwLock;

use crate::context::Closed;
use crate::ops::metrics::Metrics;

/// Closed contexts waiting for the learner at most.
const QUEUE: usize = 4096;

/// Under steady load, what was learned is published at least this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(10);

/// The learner as the request path sees it: the last published copy.
type Published = Arc<RwLock<Arc<Learner>>>;

pub(crate) struct Learning {
    tx: SyncSender<Closed>,
    published: Published,
    metrics: Arc<Metrics>,
}

impl Learning {
    /// Starts the learner thread. A trace log that cannot be opened is an
    /// error now, not a silent loss later.
    pub(crate) fn start(
        learner: Learner,
        trace_log: Option<&Path>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let log = trace_log.map(TraceLog::open).transpose()?;
        let published: Published = Arc::new(RwLock::new(Arc::new(learner.clone())));
        let (tx, rx) = sync_channel(QUEUE);
        let shared = published.clone();
        let counted = metrics.clone();
        std::thread::Builder::new()
            .name("augur-learner".into())
            .spawn(move || run(rx, learner, &shared, log, &counted))
            .context("cannot start the learner thread")?;
        Ok(Self {
            tx,
            published,
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
        self.snapshot().predict(live, elapsed_us, ahead_us)
    }

    /// What the model has learned, for `/debug/model`.
    pub(crate) fn describe(&self) -> serde_json::Value {
        self.snapshot().describe()
    }

    /// The last published learner.
    fn snapshot(&self) -> Arc<Learner> {
        self.published.read().clone()
    }

    /// Hands a closed context to the learner without waiting.
    pub(crate) fn submit(&self, closed: Closed) {
        match self.tx.try_send(closed) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.learner_dropped.inc();
            }
        }
    }
}

/// The learner thread: learns each closed context, writes it to the trace
/// log, and publishes what it learned for the request path — at once when
/// nothing else is waiting, at most every [`PUBLISH_EVERY`] under load, so
/// a copy is made at most that often.
fn run(
    rx: Receiver<Closed>,
    mut learner: Learner,
    published: &RwLock<Arc<Learner>>,
    mut log: Option<TraceLog>,
    metrics: &Metrics,
) {
    let mut unpublished = 0u64;
    let mut evictions = Evictions::default();
    let mut last_published = Instant::now();
    loop {
        let next = if unpublished > 0 {
            match rx.recv_timeout(PUBLISH_EVERY.saturating_sub(last_published.elapsed())) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            // Idle: make what was written durable, then wait.
            if let Some(l) = &mut log {
                l.flush();
            }
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        };
        if unpublished > 0 && (next.is_none() || last_published.elapsed() >= PUBLISH_EVERY) {
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
        let Some(closed) = next else { continue };
        let ctx = observation(&closed);
        learner.learn(&ctx);
        unpublished += 1;
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
