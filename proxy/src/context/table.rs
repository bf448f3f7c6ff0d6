//! The table of open contexts, by trace id.
//!
//! The table is sharded so that concurrent requests rarely meet on a lock;
//! each shard's lock is held only to insert, append or remove. It is bounded
//! three ways: open contexts by count (past it, requests go untracked),
//! open contexts by age (abandoned ones are expired by a background sweep),
//! and calls per context.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::TraceKey;
use super::records::{CallRecord, Closed, ClosedContext, InboundRecord, parse_json};
use crate::clock::{micros, unix_ms};
use crate::recent::Recent;

const SHARDS: usize = 32;

struct OpenContext {
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
}

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

/// Why an inbound request is proxied without a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Untracked {
    /// `max_open` contexts are open already.
    Full,
    /// Another inbound request with the same trace id is still open.
    Duplicate,
}

impl Untracked {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Untracked::Full => "full",
            Untracked::Duplicate => "duplicate_trace",
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
}

pub(crate) struct ContextTable {
    shards: Box<[Mutex<HashMap<TraceKey, OpenContext>>]>,
    open: AtomicUsize,
    history: Recent<Arc<ClosedContext>>,
    limits: Limits,
}

impl ContextTable {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            open: AtomicUsize::new(0),
            history: Recent::new(limits.history),
            limits,
        }
    }

    fn shard(&self, key: TraceKey) -> &Mutex<HashMap<TraceKey, OpenContext>> {
        // Trace ids are random: their low bits spread well.
        &self.shards[(key as usize) % SHARDS]
    }

    /// Opens a context for `key`, unless the table is full or the trace is
    /// open already.
    pub(crate) fn open(&self, key: TraceKey, inbound: InboundRecord) -> Result<(), Untracked> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_open {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Untracked::Full);
        }
        let mut shard = self.shard(key).lock();
        if shard.contains_key(&key) {
            drop(shard);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Untracked::Duplicate);
        }
        shard.insert(
            key,
            OpenContext {
                started: Instant::now(),
                started_unix_ms: unix_ms(),
                inbound,
                calls: Vec::new(),
                calls_dropped: 0,
                pending: 0,
                closing: None,
            },
        );
        Ok(())
    }

    /// Keeps the inbound request's captured body for the learner.
    pub(crate) fn set_inbound_body(&self, key: TraceKey, body: Bytes) {
        let json = parse_json(Some(body));
        if let Some(ctx) = self.shard(key).lock().get_mut(&key) {
            ctx.inbound.body = json;
        }
    }

    /// The predictor's view of the open context of `key` — its inbound
    /// request with real header values and the calls recorded so far — and
    /// the microseconds since it opened.
    pub(crate) fn live(&self, key: TraceKey) -> Option<(augur_predictor::Context, u64)> {
        let shard = self.shard(key).lock();
        let ctx = shard.get(&key)?;
        let inbound = augur_predictor::Request {
            method: ctx.inbound.method.clone(),
            path: ctx.inbound.path.clone(),
            query: ctx.inbound.query.clone(),
            headers: ctx.inbound.raw_headers.clone(),
            body: ctx.inbound.body.as_deref().cloned(),
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
                response: c.response.as_deref().cloned(),
            })
            .collect();
        let live = augur_predictor::Context {
            route: ctx.inbound.route.to_string(),
            inbound,
            calls,
        };
        Some((live, micros(ctx.started.elapsed())))
    }

    /// Attaches a starting call to the open context of `key`, which then
    /// stays open until the call is [recorded](Self::record). Returns when
    /// the context started, or `None` when there is no open context.
    pub(crate) fn attach(&self, key: TraceKey) -> Option<Instant> {
        let mut shard = self.shard(key).lock();
        let ctx = shard.get_mut(&key).filter(|c| c.closing.is_none())?;
        ctx.pending += 1;
        Some(ctx.started)
    }

    /// Records an attached call in the context of `key`; false when the
    /// context is gone (expired). Closes the context if it was only waiting
    /// for this call.
    pub(crate) fn record(&self, key: TraceKey, call: CallRecord) -> Recorded {
        let mut shard = self.shard(key).lock();
        let Some(ctx) = shard.get_mut(&key) else {
            return Recorded::NoContext;
        };
        if ctx.calls.len() < self.limits.max_calls {
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
            if let Some(ctx) = shard.remove(&key) {
                drop(shard);
                return Recorded::Closed(self.finish(key, ctx, status, duration));
            }
        }
        Recorded::Open
    }

    /// Closes the context of `key` with the inbound response's status. If
    /// calls are still pending, the last of them closes it; then `None`.
    pub(crate) fn close(&self, key: TraceKey, status: u16) -> Option<Closed> {
        let mut shard = self.shard(key).lock();
        let ctx = shard.get_mut(&key)?;
        let duration = ctx.started.elapsed();
        if ctx.pending > 0 {
            ctx.closing = Some((status, duration));
            return None;
        }
        let ctx = shard.remove(&key)?;
        drop(shard);
        Some(self.finish(key, ctx, status, duration))
    }

    fn finish(
        &self,
        key: TraceKey,
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
            trace_id: format!("{key:032x}"),
            started_unix_ms: ctx.started_unix_ms,
            duration_us: micros(duration),
            status,
            inbound: ctx.inbound,
            calls: ctx.calls,
            calls_dropped: ctx.calls_dropped,
        });
        self.history.push(closed.clone());
        Closed {
            trace: key,
            context: closed,
            inbound_body,
            request_bodies,
            responses,
        }
    }

    /// Drops open contexts older than `max_age`; returns their trace ids.
    pub(crate) fn expire(&self) -> Vec<TraceKey> {
        let now = Instant::now();
        let mut expired = Vec::new();
        for shard in self.shards.iter() {
            shard.lock().retain(|key, c| {
                let keep = now.duration_since(c.started) < self.limits.max_age;
                if !keep {
                    expired.push(*key);
                }
                keep
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::CallOutcome;

    fn inbound() -> InboundRecord {
        InboundRecord {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            route: "GET /".into(),
            headers: Vec::new(),
            body: None,
            raw_headers: Vec::new(),
        }
    }

    fn call(dep: &str) -> CallRecord {
        CallRecord {
            dependency: dep.into(),
            method: "GET".into(),
            path: "/x".into(),
            query: None,
            headers: Vec::new(),
            status: 200,
            outcome: CallOutcome::Miss,
            start_offset_us: 0,
            duration_us: 1,
            response_bytes: 0,
            request_body: None,
            response: Some(Arc::new(serde_json::json!({}))),
        }
    }

    fn limits() -> Limits {
        Limits {
            max_open: 2,
            max_age: Duration::from_secs(60),
            max_calls: 2,
            history: 2,
        }
    }

    #[test]
    fn calls_join_their_own_context() {
        let t = ContextTable::new(limits());
        t.open(1, inbound()).unwrap();
        t.open(2, inbound()).unwrap();
        assert!(t.attach(1).is_some() && t.attach(2).is_some());
        assert!(t.attach(3).is_none());
        assert!(t.record(1, call("a")).joined());
        assert!(t.record(2, call("b")).joined());
        assert!(!t.record(3, call("c")).joined());
        let one = t.close(1, 200).unwrap();
        assert_eq!(one.context.calls.len(), 1);
        assert_eq!(&*one.context.calls[0].dependency, "a");
        assert_eq!(one.responses, [Some(Arc::new(serde_json::json!({})))]);
        assert!(
            one.context.calls[0].response.is_none(),
            "bodies leave the history"
        );
        assert_eq!(t.open_count(), 1);
    }

    #[test]
    fn bounded_by_count_calls_and_history() {
        let t = ContextTable::new(limits());
        t.open(1, inbound()).unwrap();
        assert_eq!(t.open(1, inbound()), Err(Untracked::Duplicate));
        t.open(2, inbound()).unwrap();
        assert_eq!(t.open(3, inbound()), Err(Untracked::Full));
        for _ in 0..5 {
            t.record(1, call("a"));
        }
        let c = t.close(1, 200).unwrap().context;
        assert_eq!((c.calls.len(), c.calls_dropped), (2, 3));
        t.close(2, 200);
        t.open(4, inbound()).unwrap();
        t.close(4, 500);
        let recent = t.recent(10);
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].status, 500);
        assert_eq!(t.open_count(), 0);
    }

    #[test]
    fn calls_are_kept_in_the_order_they_started() {
        let t = ContextTable::new(limits());
        t.open(1, inbound()).unwrap();
        let at = |dep: &str, start: u64| CallRecord {
            start_offset_us: start,
            ..call(dep)
        };
        t.record(1, at("second", 20));
        t.record(1, at("first", 10));
        let closed = t.close(1, 200).unwrap();
        let deps: Vec<&str> = closed
            .context
            .calls
            .iter()
            .map(|c| &*c.dependency)
            .collect();
        assert_eq!(deps, ["first", "second"]);
    }

    #[test]
    fn a_context_waits_for_its_pending_calls_before_closing() {
        let t = ContextTable::new(limits());
        t.open(1, inbound()).unwrap();
        t.attach(1).unwrap();
        t.attach(1).unwrap();
        assert!(t.close(1, 200).is_none(), "two calls still pending");
        assert!(
            t.attach(1).is_none(),
            "a closing context takes no new calls"
        );
        assert_eq!(t.open_count(), 1);
        assert!(matches!(t.record(1, call("a")), Recorded::Open));
        assert!(t.recent(10).is_empty());
        assert!(matches!(t.record(1, call("b")), Recorded::Closed(_)));
        let closed = t.recent(10);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].status, closed[0].calls.len()), (200, 2));
        assert_eq!(t.open_count(), 0);
    }

    #[test]
    fn old_contexts_expire() {
        let t = ContextTable::new(Limits {
            max_age: Duration::ZERO,
            ..limits()
        });
        t.open(1, inbound()).unwrap();
        assert_eq!(t.expire(), [1]);
        assert_eq!(t.open_count(), 0);
        assert!(t.close(1, 200).is_none());
    }
}
