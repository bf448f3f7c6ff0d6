//! The context table: joining, bounds, ambiguity, closing.

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
        max_body_bytes: 1 << 20,
    }
}

/// Opens a context of `trace` that nothing else shares.
fn open(t: &ContextTable, trace: TraceKey) -> ContextId {
    let opened = t.open(trace, inbound()).unwrap();
    assert_eq!(opened.made_ambiguous(), 0);
    opened.id
}

fn attached(t: &ContextTable, trace: TraceKey) -> ContextId {
    match t.attach(trace) {
        Attached::Context(id, ..) => id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn calls_join_their_own_context() {
    let t = ContextTable::new(limits());
    let one = open(&t, 1);
    let two = open(&t, 2);
    assert_eq!(attached(&t, 1), one);
    assert_eq!(attached(&t, 2), two);
    assert_eq!(t.attach(3), Attached::None);
    assert!(t.record(one, call("a"), Charge::default()).joined());
    assert!(t.record(two, call("b"), Charge::default()).joined());
    let gone = ContextId {
        trace: 3,
        serial: 99,
    };
    assert!(!t.record(gone, call("c"), Charge::default()).joined());
    let closed = t.close(one, 200).unwrap();
    assert_eq!(closed.context.calls.len(), 1);
    assert_eq!(&*closed.context.calls[0].dependency, "a");
    assert_eq!(closed.responses, [Some(Arc::new(serde_json::json!({})))]);
    assert!(
        closed.context.calls[0].response.is_none(),
        "bodies leave the history"
    );
    assert_eq!(t.open_count(), 1);
}

#[test]
fn bounded_by_count_calls_and_history() {
    let t = ContextTable::new(limits());
    let one = open(&t, 1);
    let two = open(&t, 2);
    assert_eq!(t.open(3, inbound()), Err(Untracked::Full));
    for _ in 0..5 {
        t.record(one, call("a"), Charge::default());
    }
    let c = t.close(one, 200).unwrap().context;
    assert_eq!((c.calls.len(), c.calls_dropped), (2, 3));
    t.close(two, 200);
    let four = open(&t, 4);
    t.close(four, 500);
    let recent = t.recent(10);
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0].status, 500);
    assert_eq!(t.open_count(), 0);
}

#[test]
fn a_repeated_trace_id_makes_its_calls_ambiguous_and_both_contexts_unlearnable() {
    let t = ContextTable::new(Limits {
        max_open: 8,
        ..limits()
    });
    let first = open(&t, 7);
    let retry = t.open(7, inbound()).unwrap();
    assert_eq!(retry.made_ambiguous(), 2, "the retry and the first");
    assert_eq!(retry.also, [first]);
    assert_ne!(retry.id, first, "every inbound request has its own");
    assert_eq!(t.attach(7), Attached::Ambiguous);
    let third = t.open(7, inbound()).unwrap();
    assert_eq!(third.made_ambiguous(), 1, "the others were already");
    assert!(third.also.is_empty());
    for id in [retry.id, third.id] {
        assert!(t.close(id, 200).unwrap().context.ambiguous);
    }
    // Alone again, the first takes its calls, but is not learned from.
    assert_eq!(attached(&t, 7), first);
    t.record(first, call("a"), Charge::default());
    let closed = t.close(first, 200).unwrap();
    assert!(closed.context.ambiguous);
    assert_eq!(closed.context.calls.len(), 1);
    // A trace id used again later is a fresh start.
    let later = open(&t, 7);
    assert!(!t.close(later, 200).unwrap().context.ambiguous);
    assert_eq!(t.open_count(), 0);
}

#[test]
fn calls_are_kept_in_the_order_they_started() {
    let t = ContextTable::new(limits());
    let id = open(&t, 1);
    let at = |dep: &str, start: u64| CallRecord {
        start_offset_us: start,
        ..call(dep)
    };
    t.record(id, at("second", 20), Charge::default());
    t.record(id, at("first", 10), Charge::default());
    let closed = t.close(id, 200).unwrap();
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
    let id = open(&t, 1);
    attached(&t, 1);
    attached(&t, 1);
    assert!(t.close(id, 200).is_none(), "two calls still pending");
    assert_eq!(
        t.attach(1),
        Attached::None,
        "a closing context takes no new calls"
    );
    assert_eq!(t.open_count(), 1);
    assert!(matches!(
        t.record(id, call("a"), Charge::default()),
        Recorded::Open
    ));
    assert!(t.recent(10).is_empty());
    assert!(matches!(
        t.record(id, call("b"), Charge::default()),
        Recorded::Closed(_)
    ));
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
    let id = open(&t, 1);
    assert_eq!(t.expire(), [id]);
    assert_eq!(t.open_count(), 0);
    assert!(t.close(id, 200).is_none());
}
