//! The table of open contexts. A context is augur's own, one per inbound
//! request ([`ContextId`]); dependency calls find it by the trace id they
//! carry. Client trace ids can repeat (a retry sends the same
//! `traceparent`): while two inbound requests with one trace id are open,
//! calls carrying it cannot be told apart — they are [`Attached::Ambiguous`],
//! proxied and never recorded — and both contexts are marked ambiguous, so
//! neither is learned from.
//!
//! The table is sharded by trace id so that concurrent requests rarely meet
//! on a lock, and the contexts of one trace id share a shard; each shard's
//! lock is held only to insert, append or remove. It is bounded four ways:
//! open contexts by count (past it, requests go untracked), open contexts
//! by age (abandoned ones are expired by a background sweep), calls per
//! context, and the bytes of the bodies they keep (a global budget).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::records::{CallRecord, Closed, ClosedContext, InboundRecord, parse_json};
use super::{BodyBudget, Charge, ContextId, TraceKey};
use crate::clock::{micros, unix_ms};
use crate::recent::Recent;

const SHARDS: usize = 32;

struct OpenContext {
    serial: u64,
    started: Instant,
    started_unix_ms: u64,
    inbound: InboundRecord,
    calls: Vec<CallRecord>,
    calls_dropped: u32,
    /// Calls attached and not yet recorded.
    pending: u32,
    /// Set when the inbound response ended while calls were still pending:
    /// its status and duration. The last pending call closes the context.
    closing: Option<(u16, Duration)>,
    /// Another inbound request with this trace id was open at the same
    /// time: what the context recorded may be incomplete.
    ambiguous: bool,
    /// The bytes of the bodies it keeps.
    held: Charge,
}

/// The open contexts of one shard: by trace id, usually one each.
type Shard = HashMap<TraceKey, Vec<OpenContext>>;

/// What recording a call did.
#[derive(Debug)]
pub(crate) enum Recorded {
    /// There was no context (it expired).
    NoContext,
    /// The call joined its context, which stays open.
    Open,
    /// The call was the last one its context waited for: it closed.
    Closed(Closed),
}

impl Recorded {
    #[cfg(test)]
    fn joined(&self) -> bool {
        !matches!(self, Recorded::NoContext)
    }
}

/// What a dependency call carrying a trace id finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attached {
    /// The one open context of that trace id, when it started, and its
    /// route.
    Context(ContextId, Instant, Arc<str>),
    /// Several inbound requests with that trace id are open: the call
    /// cannot be told apart.
    Ambiguous,
    /// No open context has that trace id.
    None,
}

/// Why an inbound request is proxied without a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Untracked {
    /// `max_open` contexts are open already.
    Full,
}

impl Untracked {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Untracked::Full => "full",
        }
    }
}

/// A context just opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opened {
    pub(crate) id: ContextId,
    /// Another open context has its trace id.
    pub(crate) ambiguous: bool,
    /// The earlier contexts it made ambiguous (those that were not yet):
    /// what they speculated can no longer be told to be theirs.
    pub(crate) also: Vec<ContextId>,
}

impl Opened {
    /// How many contexts this open made ambiguous: itself and `also`, or
    /// none when its trace id is its own.
    pub(crate) fn made_ambiguous(&self) -> u64 {
        if self.ambiguous {
            1 + self.also.len() as u64
        } else {
            0
        }
    }
}

/// How big the table may grow.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_open: usize,
    pub(crate) max_age: Duration,
    pub(crate) max_calls: usize,
    pub(crate) history: usize,
    /// Bytes of kept bodies, over every context, at most.
    pub(crate) max_body_bytes: usize,
}

pub(crate) struct ContextTable {
    shards: Box<[Mutex<Shard>]>,
    open: AtomicUsize,
    serial: AtomicU64,
    history: Recent<Arc<ClosedContext>>,
    bodies: Arc<BodyBudget>,
    limits: Limits,
}

impl ContextTable {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            open: AtomicUsize::new(0),
            serial: AtomicU64::new(1),
            history: Recent::new(limits.history),
            bodies: BodyBudget::new(limits.max_body_bytes),
            limits,
        }
    }

    fn shard(&self, trace: TraceKey) -> &Mutex<Shard> {
        // Trace ids are random: their low bits spread well.
        &self.shards[(trace as usize) % SHARDS]
    }

    /// Runs `f` on the open context `id`, if it is still open.
    fn with<T>(&self, id: ContextId, f: impl FnOnce(&mut OpenContext) -> T) -> Option<T> {
        let mut shard = self.shard(id.trace).lock();
        Some(f(Self::find(&mut shard, id)?))
    }

    /// The open context `id` in its shard.
    fn find(shard: &mut Shard, id: ContextId) -> Option<&mut OpenContext> {
        shard
            .get_mut(&id.trace)?
            .iter_mut()
            .find(|c| c.serial == id.serial)
    }

    /// Removes the open context `id` from its shard.
    fn take(shard: &mut Shard, id: ContextId) -> Option<OpenContext> {
        let contexts = shard.get_mut(&id.trace)?;
        let at = contexts.iter().position(|c| c.serial == id.serial)?;
        let ctx = contexts.swap_remove(at);
        if contexts.is_empty() {
            shard.remove(&id.trace);
        }
        Some(ctx)
    }

    /// Opens a context for an inbound request of trace `trace`, unless the
    /// table is full.
    pub(crate) fn open(
        &self,
        trace: TraceKey,
        inbound: InboundRecord,
    ) -> Result<Opened, Untracked> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_open {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Untracked::Full);
        }
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.shard(trace).lock();
        let contexts = shard.entry(trace).or_default();
        let ambiguous = !contexts.is_empty();
        let mut also = Vec::new();
        for other in contexts.iter_mut().filter(|c| !c.ambiguous) {
            other.ambiguous = true;
            also.push(ContextId {
                trace,
                serial: other.serial,
            });
        }
        contexts.push(OpenContext {
            serial,
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            inbound,
            calls: Vec::new(),
            calls_dropped: 0,
            pending: 0,
            closing: None,
            ambiguous,
            held: Charge::default(),
        });
        Ok(Opened {
            id: ContextId { trace, serial },
            ambiguous,
            also,
        })
    }

    /// Keeps the inbound request's captured body for the learner, if the
    /// body budget allows.
    pub(crate) fn set_inbound_body(&self, id: ContextId, body: Bytes) {
        let Some(charge) = self.bodies.charge(body.len()) else {
            return;
        };
        let json = parse_json(Some(body));
        self.with(id, |ctx| {
            ctx.inbound.body = json;
            ctx.held.absorb(charge);
        });
    }

    /// Holds `bytes` of bodies for a call about to be recorded, or `None`
    /// when the budget is spent (then the call is recorded without them).
    pub(crate) fn charge_bodies(&self, bytes: usize) -> Option<Charge> {
        self.bodies.charge(bytes)
    }

    /// The body budget: bytes held now, bodies refused so far.
    pub(crate) fn bodies(&self) -> (usize, u64) {
        (self.bodies.held(), self.bodies.refused())
    }

    /// The predictor's view of the open context `id` — its inbound request
    /// with real header values and the calls recorded so far — and the
    /// microseconds since it opened.
    pub(crate) fn live(&self, id: ContextId) -> Option<(augur_predictor::Context, u64)> {
        self.with(id, |ctx| (live_view(ctx), micros(ctx.started.elapsed())))
    }

    /// Attaches a starting call carrying `trace` to the one open context of
    /// that trace id, which then stays open until the call is
    /// [recorded](Self::record).
    pub(crate) fn attach(&self, trace: TraceKey) -> Attached {
        let mut shard = self.shard(trace).lock();
        let Some(contexts) = shard.get_mut(&trace) else {
            return Attached::None;
        };
        match contexts.as_mut_slice() {
            [ctx] if ctx.closing.is_none() => {
                ctx.pending += 1;
                let id = ContextId {
                    trace,
                    serial: ctx.serial,
                };
                Attached::Context(id, ctx.started, ctx.inbound.route.clone())
            }
            [_] => Attached::None,
            _ => Attached::Ambiguous,
        }
    }

    /// Records an attached call in the context `id`. Closes the context if
    /// it was only waiting for this call.
    /// `bodies` holds the bytes of the bodies the call carries.
    pub(crate) fn record(&self, id: ContextId, call: CallRecord, bodies: Charge) -> Recorded {
        let mut shard = self.shard(id.trace).lock();
        let Some(ctx) = Self::find(&mut shard, id) else {
            return Recorded::NoContext;
        };
        if ctx.calls.len() < self.limits.max_calls {
            ctx.held.absorb(bodies);
            // Calls are recorded as they end; keep them in the order they
            // started, which is what the learner reads.
            let at = ctx
                .calls
                .partition_point(|c| c.start_offset_us <= call.start_offset_us);
            ctx.calls.insert(at, call);
        } else {
            ctx.calls_dropped = ctx.calls_dropped.saturating_add(1);
        }
        ctx.pending = ctx.pending.saturating_sub(1);
        if let (0, Some((status, duration))) = (ctx.pending, ctx.closing) {
            if let Some(ctx) = Self::take(&mut shard, id) {
                drop(shard);
                return Recorded::Closed(self.finish(id, ctx, status, duration));
            }
        }
        Recorded::Open
    }

    /// Closes the context `id` with the inbound response's status. If calls
    /// are still pending, the last of them closes it; then `None`.
    pub(crate) fn close(&self, id: ContextId, status: u16) -> Option<Closed> {
        let mut shard = self.shard(id.trace).lock();
        let ctx = Self::find(&mut shard, id)?;
        let duration = ctx.started.elapsed();
        if ctx.pending > 0 {
            ctx.closing = Some((status, duration));
            return None;
        }
        let ctx = Self::take(&mut shard, id)?;
        drop(shard);
        Some(self.finish(id, ctx, status, duration))
    }

    fn finish(
        &self,
        id: ContextId,
        mut ctx: OpenContext,
        status: u16,
        duration: Duration,
    ) -> Closed {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let inbound_body = ctx.inbound.body.take();
        ctx.inbound.raw_headers = Vec::new();
        let request_bodies = ctx
            .calls
            .iter_mut()
            .map(|c| c.request_body.take())
            .collect();
        let responses = ctx.calls.iter_mut().map(|c| c.response.take()).collect();
        let closed = Arc::new(ClosedContext {
            trace_id: format!("{:032x}", id.trace),
            started_unix_ms: ctx.started_unix_ms,
            duration_us: micros(duration),
            status,
            ambiguous: ctx.ambiguous,
            inbound: ctx.inbound,
            calls: ctx.calls,
            calls_dropped: ctx.calls_dropped,
        });
        self.history.push(closed.clone());
        Closed {
            id,
            context: closed,
            inbound_body,
            request_bodies,
            responses,
            _held: std::mem::take(&mut ctx.held),
        }
    }

    /// Drops open contexts older than `max_age`; returns them.
    pub(crate) fn expire(&self) -> Vec<ContextId> {
        let now = Instant::now();
        let mut expired = Vec::new();
        for shard in self.shards.iter() {
            shard.lock().retain(|trace, contexts| {
                contexts.retain(|c| {
                    let keep = now.duration_since(c.started) < self.limits.max_age;
                    if !keep {
                        expired.push(ContextId {
                            trace: *trace,
                            serial: c.serial,
                        });
                    }
                    keep
                });
                !contexts.is_empty()
            });
        }
        self.open.fetch_sub(expired.len(), Ordering::AcqRel);
        expired
    }

    /// The last `limit` closed contexts, newest first.
    pub(crate) fn recent(&self, limit: usize) -> Vec<Arc<ClosedContext>> {
        self.history.newest(limit)
    }

    pub(crate) fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// The predictor's view of an open context.
fn live_view(ctx: &OpenContext) -> augur_predictor::Context {
    let inbound = augur_predictor::Request {
        method: ctx.inbound.method.clone(),
        path: ctx.inbound.path.clone(),
        query: ctx.inbound.query.clone(),
        headers: ctx.inbound.raw_headers.clone(),
        body: ctx.inbound.body.clone(),
    };
    let calls = ctx
        .calls
        .iter()
        .map(|c| augur_predictor::Call {
            dependency: c.dependency.to_string(),
            request: augur_predictor::Request {
                method: c.method.clone(),
                path: c.path.clone(),
                query: c.query.clone(),
                headers: Vec::new(),
                body: None,
            },
            status: c.status,
            start_us: c.start_offset_us,
            duration_us: c.duration_us,
            response: c.response.clone(),
        })
        .collect();
    augur_predictor::Context {
        route: ctx.inbound.route.to_string(),
        inbound,
        calls,
    }
}

#[cfg(test)]
mod tests;
