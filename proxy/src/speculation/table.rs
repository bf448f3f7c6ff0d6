//! The speculation table: every speculative request from prediction to
//! outcome, and the responses that came back, held for the one inbound
//! request they were fetched for.
//!
//! Entries are keyed by [`Key`] (`key.rs`): a response is only ever served
//! to a real call of the same inbound request that asks for exactly the
//! same thing — never across principals, never across requests. Completed
//! responses live in a quick_cache bounded by the bytes really held;
//! requests in flight are bounded by `speculation.max_inflight`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(test)]
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use quick_cache::Weighter;
use tokio::sync::watch;

use super::Outcome;
use super::governor::Governor;
use super::key::Key;
use super::plan::{Barrier, is_safe};
use crate::clock::micros;
use crate::context::{ContextId, Json};
use crate::recent::Recent;

/// A speculative response, as it came back.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) status: u16,
    /// Every end-to-end header as the dependency sent it, `content-length`
    /// included.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// The dependency sent the body chunked: it reaches the service
    /// chunked too.
    pub(crate) chunked: bool,
    pub(crate) body: Bytes,
    /// Trailers after the body (HTTP/2: gRPC's `grpc-status`), served as
    /// they came.
    pub(crate) trailers: Vec<(HeaderName, HeaderValue)>,
    /// The prediction it was sent for, to chain further predictions on its
    /// response.
    pub(crate) prediction: augur_predictor::Prediction,
    /// The body parsed as JSON, when it is JSON.
    pub(crate) json: Option<Json>,
    /// How long the speculative request took, sent to last byte.
    pub(crate) took: std::time::Duration,
}

impl Stored {
    /// Bytes held: body, headers, and a fixed overhead.
    fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .chain(&self.trailers)
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers + 128) as u64
    }
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Key, Arc<Stored>> for ByBytes {
    fn weight(&self, _: &Key, value: &Arc<Stored>) -> u64 {
        value.weight()
    }
}

/// What a real call finds for its key.
pub(crate) enum Found {
    /// A completed, servable response: serve it. With when it was sent.
    Done(Arc<Stored>, Option<std::time::Instant>),
    /// The speculative request is in flight: wait on it, at most until
    /// the instant given (its expected latency, with slack), then go
    /// upstream rather than pay for a speculation that hangs.
    InFlight(
        watch::Receiver<Option<Option<Arc<Stored>>>>,
        std::time::Instant,
        Option<std::time::Instant>,
    ),
    /// Nothing usable: go upstream.
    Nothing,
    /// A write was sent ahead for this call and its answer cannot be
    /// served (its outcome is unknown, or a write before it discarded it):
    /// the call must fail, never go upstream — the write ran already.
    SentWrite,
}

enum State {
    /// Sent; the sender publishes `Some(Some(response))` or `Some(None)`;
    /// real calls wait for it until the instant given.
    InFlight(
        watch::Sender<Option<Option<Arc<Stored>>>>,
        std::time::Instant,
    ),
    /// Came back and is held in the cache.
    Done,
    /// Came back unusable (error, non-2xx, no-store, too large).
    Failed,
    /// A real call of this key is on its way: do not speculate it.
    Real,
    /// Served to its real call.
    Used,
    /// Sent before a write in its context that it may not see: never
    /// served to a call that starts after the write.
    Discarded,
}

struct Entry {
    state: State,
    dependency: Arc<str>,
    /// What was sent, for the history; `None` for a real call's marker.
    info: Option<Arc<Info>>,
}

impl Entry {
    /// A speculative request with side effects: once sent, its real call
    /// never goes upstream (it would run twice), and its answer is held
    /// outside the cache, where room can never evict it.
    fn is_write(&self) -> bool {
        self.info.as_ref().is_some_and(|i| !is_safe(&i.method))
    }
}

/// A speculation as `/debug/speculations` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Info {
    pub(crate) route: Arc<str>,
    pub(crate) dependency: Arc<str>,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) probability: f64,
    pub(crate) sent_unix_ms: u64,
    #[serde(skip)]
    pub(crate) sent: std::time::Instant,
}

/// A speculation that reached its outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Finished {
    #[serde(flatten)]
    pub(crate) info: Info,
    pub(crate) outcome: &'static str,
    /// From sending to the outcome.
    pub(crate) after_us: u64,
}

/// Finished speculations kept for `/debug/speculations`.
const HISTORY: usize = 256;

/// The speculations of one open context.
#[derive(Default)]
struct Open {
    entries: HashMap<Key, Entry>,
    /// The answers of the speculative writes that are done, until their
    /// real calls take them (never evicted: see [`Entry::is_write`]).
    answers: HashMap<Key, Arc<Stored>>,
    /// Writes in flight, by dependency: while one runs, no speculation to
    /// what it may change begins.
    writes: Vec<(Arc<str>, u32)>,
    /// Its calls can no longer be told from another request's: nothing
    /// begins.
    abandoned: bool,
}

impl Open {
    /// Whether a write in flight holds back speculation to `dependency`.
    fn held_back(&self, dependency: &str, barrier: Barrier) -> bool {
        self.writes
            .iter()
            .any(|(d, n)| *n > 0 && barrier.reaches(d, dependency))
    }
}

pub(crate) struct SpeculationTable {
    governor: Governor,
    history: Recent<Finished>,
    entries: Mutex<HashMap<ContextId, Open>>,
    barrier: Barrier,
    /// The inbound span of each open context, for linking speculative spans.
    spans: Mutex<HashMap<ContextId, u64>>,
    responses: quick_cache::sync::Cache<Key, Arc<Stored>, ByBytes>,
    inflight: AtomicUsize,
    max_inflight: usize,
}

impl SpeculationTable {
    pub(crate) fn new(
        capacity_bytes: u64,
        max_inflight: usize,
        max_waste_ratio: f64,
        barrier: Barrier,
    ) -> Self {
        Self {
            barrier,
            governor: Governor::new(max_waste_ratio),
            history: Recent::new(HISTORY),
            entries: Mutex::new(HashMap::new()),
            spans: Mutex::new(HashMap::new()),
            responses: quick_cache::sync::Cache::with_weighter(
                1024,
                capacity_bytes.max(1),
                ByBytes,
            ),
            inflight: AtomicUsize::new(0),
            max_inflight,
        }
    }

    /// Starts keeping speculations for an inbound request that just
    /// opened. Only an open context takes speculations, so one that races
    /// its context's close can never bring the context back.
    pub(crate) fn open(&self, context: ContextId, inbound_span: u64) {
        self.entries.lock().entry(context).or_default();
        self.spans.lock().insert(context, inbound_span);
    }

    /// Whether `context` was opened here and has not closed.
    pub(crate) fn is_open(&self, context: ContextId) -> bool {
        self.entries.lock().contains_key(&context)
    }

    /// The span of the inbound request of an open context.
    pub(crate) fn inbound_span(&self, context: ContextId) -> Option<u64> {
        self.spans.lock().get(&context).copied()
    }

    /// Registers a speculation about to be sent, unless its context is not
    /// open, its key is known already, a write in its context holds it
    /// back, or `max_inflight` are in flight.
    pub(crate) fn begin(&self, key: &Key, info: Arc<Info>, patience: std::time::Duration) -> bool {
        let mut entries = self.entries.lock();
        let Some(open) = entries.get_mut(&key.context) else {
            return false;
        };
        if open.abandoned
            || open.entries.contains_key(key)
            || open.held_back(&info.dependency, self.barrier)
        {
            return false;
        }
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= self.max_inflight {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let (tx, _) = watch::channel(None);
        open.entries.insert(
            key.clone(),
            Entry {
                state: State::InFlight(tx, std::time::Instant::now() + patience),
                dependency: info.dependency.clone(),
                info: Some(info),
            },
        );
        true
    }

    /// Publishes a speculation's result: `Some` when servable. Returns
    /// `Failed` for an unusable one, `Cancelled` when the context has gone
    /// meanwhile, or `None` when it now waits for its real call.
    pub(crate) fn complete(
        &self,
        key: &Key,
        result: Option<Stored>,
        info_of_cancelled: Option<Arc<Info>>,
    ) -> Option<Outcome> {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        let result = result.map(Arc::new);
        let mut entries = self.entries.lock();
        let Some((answers, entry)) = entries.get_mut(&key.context).and_then(|o| {
            let Open {
                entries, answers, ..
            } = o;
            Some((answers, entries.get_mut(key)?))
        }) else {
            drop(entries);
            self.finished(info_of_cancelled, Outcome::Cancelled);
            return Some(Outcome::Cancelled);
        };
        // Discarded by a write meanwhile: counted then, kept from everyone.
        if matches!(entry.state, State::Discarded) {
            return None;
        }
        let State::InFlight(tx, _) = std::mem::replace(&mut entry.state, State::Failed) else {
            return Some(Outcome::Cancelled);
        };
        let info = entry.info.clone();
        let write = entry.is_write();
        match &result {
            Some(stored) if write => {
                entry.state = State::Done;
                answers.insert(key.clone(), stored.clone());
            }
            Some(stored) => {
                self.responses.insert(key.clone(), stored.clone());
                entry.state = State::Done;
            }
            None => entry.state = State::Failed,
        }
        // Waiting real calls get the response (or learn there is none).
        tx.send_replace(Some(result.clone()));
        drop(entries);
        if result.is_none() {
            self.finished(info, Outcome::Failed);
            return Some(Outcome::Failed);
        }
        None
    }

    /// A call with side effects to `dependency` starts in `context`: what
    /// was speculated before it, within the barrier's reach, may not see
    /// it, so none of it answers a call from now on (calls waiting for one
    /// still in flight go upstream), and no speculation there begins until
    /// the write ends. Returns what it discarded, by dependency.
    pub(crate) fn write_started(&self, context: ContextId, dependency: &Arc<str>) -> Vec<Arc<str>> {
        let mut entries = self.entries.lock();
        let Some(open) = entries.get_mut(&context) else {
            return Vec::new();
        };
        match open.writes.iter_mut().find(|(d, _)| d == dependency) {
            Some((_, n)) => *n += 1,
            None => open.writes.push((dependency.clone(), 1)),
        }
        let discarded = self.discard(open, |d| self.barrier.reaches(dependency, d));
        drop(entries);
        discarded
            .into_iter()
            .map(|(dependency, info)| {
                self.finished(info, Outcome::Wasted);
                dependency
            })
            .collect()
    }

    /// Another inbound request with the same trace id opened: nothing
    /// speculated for `context` may answer a call any more, and nothing
    /// more begins. Returns what it dropped, by dependency; none of it is
    /// held against the governor (no prediction was wrong).
    pub(crate) fn abandon(&self, context: ContextId) -> Vec<Arc<str>> {
        let mut entries = self.entries.lock();
        let Some(open) = entries.get_mut(&context) else {
            return Vec::new();
        };
        open.abandoned = true;
        let dropped = self.discard(open, |_| true);
        drop(entries);
        dropped
            .into_iter()
            .map(|(dependency, info)| {
                self.history_only(info, Outcome::Cancelled);
                dependency
            })
            .collect()
    }

    /// Discards the speculations of `open` to the dependencies `reached`
    /// names that could still answer a call: calls waiting for one in
    /// flight go upstream, held responses are dropped. Returns them.
    fn discard(
        &self,
        open: &mut Open,
        reached: impl Fn(&str) -> bool,
    ) -> Vec<(Arc<str>, Option<Arc<Info>>)> {
        let mut discarded = Vec::new();
        for (key, entry) in &mut open.entries {
            if !reached(&entry.dependency) {
                continue;
            }
            match std::mem::replace(&mut entry.state, State::Discarded) {
                State::InFlight(tx, _) => {
                    tx.send_replace(Some(None));
                }
                State::Done => {
                    self.responses.remove(key);
                    open.answers.remove(key);
                }
                other => {
                    entry.state = other;
                    continue;
                }
            }
            discarded.push((entry.dependency.clone(), entry.info.clone()));
        }
        discarded
    }

    /// The write to `dependency` that [`write_started`](Self::write_started)
    /// announced has ended: speculation there may begin again.
    pub(crate) fn write_ended(&self, context: ContextId, dependency: &Arc<str>) {
        if let Some(open) = self.entries.lock().get_mut(&context) {
            if let Some((_, n)) = open.writes.iter_mut().find(|(d, _)| d == dependency) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Whether `context` sent a speculative `method` request to
    /// `dependency` (a real call of that kind may be its match).
    pub(crate) fn sent(&self, context: ContextId, dependency: &str, method: &str) -> bool {
        self.entries.lock().get(&context).is_some_and(|open| {
            open.entries.values().any(|e| {
                e.info
                    .as_ref()
                    .is_some_and(|i| &*i.dependency == dependency && i.method == method)
            })
        })
    }

    /// Whether the governor lets `route` speculate on `dependency` now.
    pub(crate) fn allows(&self, route: &str, dependency: &str) -> bool {
        self.governor.allows(route, dependency)
    }

    /// The governor's view of every (route, dependency), for `/debug`.
    pub(crate) fn governor_states(&self) -> Vec<super::governor::State> {
        self.governor.states()
    }

    /// Records an outcome in the history and with the governor.
    fn finished(&self, info: Option<Arc<Info>>, outcome: Outcome) {
        if let Some(info) = &info {
            self.governor.record(&info.route, &info.dependency, outcome);
        }
        self.history_only(info, outcome);
    }

    /// Records an outcome in the history only.
    fn history_only(&self, info: Option<Arc<Info>>, outcome: Outcome) {
        let Some(info) = info else { return };
        self.history.push(Finished {
            after_us: micros(info.sent.elapsed()),
            outcome: outcome.as_str(),
            info: (*info).clone(),
        });
    }

    /// The last finished speculations, newest first.
    pub(crate) fn recent(&self, limit: usize) -> Vec<Finished> {
        self.history.newest(limit)
    }

    /// What a real call of `key` finds. A found response is taken: it is
    /// served once. Nothing found marks the key as a real call on its way.
    pub(crate) fn claim(&self, key: &Key, dependency: &Arc<str>) -> Found {
        let mut entries = self.entries.lock();
        let Some(open) = entries.get_mut(&key.context) else {
            return Found::Nothing;
        };
        match open.entries.get_mut(key) {
            Some(entry) => match &entry.state {
                State::InFlight(tx, until) => {
                    Found::InFlight(tx.subscribe(), *until, entry.info.as_ref().map(|i| i.sent))
                }
                State::Done => {
                    let write = entry.is_write();
                    let stored = if write {
                        open.answers.remove(key)
                    } else {
                        self.responses.remove(key).map(|(_, stored)| stored)
                    };
                    match stored {
                        Some(stored) => {
                            entry.state = State::Used;
                            let info = entry.info.clone();
                            drop(entries);
                            let sent = info.as_ref().map(|i| i.sent);
                            self.finished(info, Outcome::Used);
                            Found::Done(stored, sent)
                        }
                        // Evicted for room: it was wasted.
                        None if !write => {
                            entry.state = State::Real;
                            Found::Nothing
                        }
                        None => Found::SentWrite,
                    }
                }
                State::Discarded if entry.is_write() => Found::SentWrite,
                State::Failed | State::Real | State::Used | State::Discarded => Found::Nothing,
            },
            None => {
                open.entries.insert(
                    key.clone(),
                    Entry {
                        state: State::Real,
                        dependency: dependency.clone(),
                        info: None,
                    },
                );
                Found::Nothing
            }
        }
    }

    /// Whether `key` is a write that was sent ahead and may have run: its
    /// real call must not go upstream. (One that failed before it was
    /// sent, or never was, is not.)
    pub(crate) fn write_sent(&self, key: &Key) -> bool {
        self.entries
            .lock()
            .get(&key.context)
            .and_then(|o| o.entries.get(key))
            .is_some_and(|e| e.is_write() && !matches!(e.state, State::Failed | State::Real))
    }

    /// Marks a coalesced speculation as used and drops its held response.
    pub(crate) fn used(&self, key: &Key) {
        let mut entries = self.entries.lock();
        let mut info = None;
        if let Some(open) = entries.get_mut(&key.context) {
            open.answers.remove(key);
            if let Some(entry) = open.entries.get_mut(key) {
                entry.state = State::Used;
                info = entry.info.clone();
            }
        }
        drop(entries);
        self.responses.remove(key);
        self.finished(info, Outcome::Used);
    }

    /// Completed speculations of a context not used yet, with their response,
    /// for chained prediction.
    pub(crate) fn done_for(&self, context: ContextId) -> Vec<(Key, Arc<Stored>)> {
        let entries = self.entries.lock();
        let Some(open) = entries.get(&context) else {
            return Vec::new();
        };
        open.entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Done))
            .filter_map(|(k, _)| {
                let stored = open
                    .answers
                    .get(k)
                    .cloned()
                    .or_else(|| self.responses.get(k))?;
                Some((k.clone(), stored))
            })
            .collect()
    }

    /// Forgets a closed context's speculations; returns the outcome of each
    /// that was never used, by dependency.
    pub(crate) fn close(&self, context: ContextId) -> Vec<(Arc<str>, Outcome)> {
        self.spans.lock().remove(&context);
        let Some(open) = self.entries.lock().remove(&context) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, entry) in open.entries {
            match entry.state {
                State::Done => {
                    self.responses.remove(&key);
                    self.finished(entry.info, Outcome::Wasted);
                    out.push((entry.dependency, Outcome::Wasted));
                }
                // Counted as cancelled when its response comes back.
                State::InFlight(..)
                | State::Failed
                | State::Real
                | State::Used
                | State::Discarded => {}
            }
        }
        out
    }

    /// Bytes of responses held now.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.responses.weight()
    }

    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Open contexts with speculations, for bounding memory.
    pub(crate) fn traces(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests;
