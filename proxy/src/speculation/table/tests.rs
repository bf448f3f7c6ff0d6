//! The speculation table's rules, one test each.

use super::*;
use augur_predictor::secret::SecretHasher;

/// The context of the `n`-th inbound request.
fn ctx(n: u64) -> ContextId {
    ContextId {
        trace: u128::from(n),
        serial: n,
    }
}

fn key(hasher: &SecretHasher, n: u64, auth: &str, accept: &str) -> Key {
    let headers = vec![
        ("authorization".to_string(), auth.to_string()),
        ("accept".to_string(), accept.to_string()),
    ];
    Key::new(
        hasher,
        ctx(n),
        "users",
        "GET",
        "/users/7?x=1",
        &headers,
        None,
    )
}

fn info() -> Arc<Info> {
    Arc::new(Info {
        route: "GET /r".into(),
        dependency: "users".into(),
        method: "GET".into(),
        path: "/users/7".into(),
        probability: 1.0,
        sent_unix_ms: 0,
        sent: std::time::Instant::now(),
    })
}

fn stored(body: &str) -> Stored {
    Stored {
        status: 200,
        headers: Vec::new(),
        chunked: false,
        body: Bytes::from(body.to_string()),
        trailers: Vec::new(),
        prediction: augur_predictor::Prediction {
            dependency: "users".into(),
            method: "GET".into(),
            path: "/users/7".into(),
            query: Some("x=1".into()),
            headers: Vec::new(),
            body: None,
            probability: 1.0,
            expected_start_us: 0,
            expected_latency_us: 0,
            start_p90_us: 0,
            latency_p90_us: 0,
            shape: 0,
            occurrence: 0,
        },
        json: None,
        took: std::time::Duration::ZERO,
    }
}

#[test]
fn keys_differ_by_trace_and_by_every_header_that_matters() {
    let h = SecretHasher::new();
    let base = key(&h, 1, "Bearer alice", "application/json");
    assert_eq!(base, key(&h, 1, "Bearer alice", "application/json"));
    assert_ne!(
        base,
        key(&h, 2, "Bearer alice", "application/json"),
        "another request"
    );
    assert_ne!(
        base,
        key(&h, 1, "Bearer mallory", "application/json"),
        "another principal"
    );
    assert_ne!(
        base,
        key(&h, 1, "Bearer alice", "text/html"),
        "another representation"
    );
    let other_path = Key::new(&h, ctx(1), "users", "GET", "/users/8?x=1", &[], None);
    assert_ne!(
        Key::new(&h, ctx(1), "users", "GET", "/users/7?x=1", &[], None),
        other_path
    );
    assert_ne!(
        Key::new(&h, ctx(1), "users", "HEAD", "/users/7?x=1", &[], None),
        Key::new(&h, ctx(1), "users", "GET", "/users/7?x=1", &[], None)
    );
    assert!(
        !format!("{base:?}").contains("alice"),
        "a key never shows its credential"
    );
}

#[test]
fn a_response_is_served_once_and_only_to_its_own_key() {
    let h = SecretHasher::new();
    let table = SpeculationTable::new(1 << 20, 8, 0.25, Barrier::Dependency);
    table.open(ctx(1), 1);
    table.open(ctx(2), 2);
    let alice = key(&h, 1, "Bearer alice", "*/*");
    let mallory = key(&h, 1, "Bearer mallory", "*/*");
    let other_request = key(&h, 2, "Bearer alice", "*/*");
    assert!(table.begin(&alice, info(), Duration::from_millis(5)));
    assert!(
        !table.begin(&alice, info(), Duration::from_millis(5)),
        "sent once"
    );
    assert_eq!(table.complete(&alice, Some(stored("alice's")), None), None);
    assert!(matches!(
        table.claim(&mallory, &"users".into()),
        Found::Nothing
    ));
    assert!(matches!(
        table.claim(&other_request, &"users".into()),
        Found::Nothing
    ));
    match table.claim(&alice, &"users".into()) {
        Found::Done(s, _) => assert_eq!(s.body, "alice's"),
        _ => panic!("alice's own call must find it"),
    }
    assert!(
        matches!(table.claim(&alice, &"users".into()), Found::Nothing),
        "served once"
    );
    assert_eq!(table.held_bytes(), 0);
}

#[test]
fn unusable_and_unclaimed_speculations_are_counted() {
    let h = SecretHasher::new();
    let table = SpeculationTable::new(1 << 20, 1, 0.25, Barrier::Dependency);
    table.open(ctx(1), 1);
    table.open(ctx(3), 3);
    let a = key(&h, 1, "a", "*/*");
    let b = key(&h, 1, "b", "*/*");
    assert!(table.begin(&a, info(), Duration::from_millis(5)));
    assert!(
        !table.begin(&b, info(), Duration::from_millis(5)),
        "max_inflight is 1"
    );
    assert_eq!(table.complete(&a, None, None), Some(Outcome::Failed));
    assert!(
        matches!(table.claim(&a, &"users".into()), Found::Nothing),
        "a failure is never served"
    );
    assert!(table.begin(&b, info(), Duration::from_millis(5)));
    assert_eq!(table.complete(&b, Some(stored("b")), None), None);
    let closed = table.close(ctx(1));
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].1, Outcome::Wasted);
    assert_eq!(table.held_bytes(), 0, "wasted responses are dropped");
    // A speculation whose context closed before it came back.
    let c = key(&h, 3, "c", "*/*");
    assert!(
        !table.begin(&key(&h, 9, "x", "*/*"), info(), Duration::from_millis(5)),
        "context 9 is not open"
    );
    assert!(table.begin(&c, info(), Duration::from_millis(5)));
    assert!(table.close(ctx(3)).is_empty());
    assert_eq!(
        table.complete(&c, Some(stored("late")), Some(info())),
        Some(Outcome::Cancelled)
    );
    assert_eq!(table.traces(), 0);
    let outcomes: Vec<&str> = table.recent(10).iter().map(|f| f.outcome).collect();
    assert_eq!(outcomes, ["cancelled", "wasted", "failed"]);
}

#[test]
fn a_late_completion_never_reaches_a_later_request_with_the_same_trace_id() {
    let h = SecretHasher::new();
    let table = SpeculationTable::new(1 << 20, 8, 0.25, Barrier::Dependency);
    let first = ContextId {
        trace: 5,
        serial: 1,
    };
    let retry = ContextId {
        trace: 5,
        serial: 2,
    };
    let request = |context| Key::new(&h, context, "users", "GET", "/users/7", &[], None);
    table.open(first, 1);
    assert!(table.begin(&request(first), info(), Duration::from_millis(5)));
    assert!(table.close(first).is_empty());
    table.open(retry, 2);
    assert_eq!(
        table.complete(&request(first), Some(stored("first's")), Some(info())),
        Some(Outcome::Cancelled)
    );
    assert!(
        matches!(
            table.claim(&request(retry), &"users".into()),
            Found::Nothing
        ),
        "the retry's identical request finds nothing of the first's"
    );
    assert_eq!(table.held_bytes(), 0);
}

#[test]
fn a_write_discards_what_was_speculated_before_it_and_holds_back_more() {
    let h = SecretHasher::new();
    let table = SpeculationTable::new(1 << 20, 8, 0.25, Barrier::Dependency);
    table.open(ctx(1), 1);
    let get = |path: &str| Key::new(&h, ctx(1), "users", "GET", path, &[], None);
    let (done, flying) = (get("/users/1"), get("/users/2"));
    assert!(table.begin(&done, info(), Duration::from_millis(5)));
    assert!(table.begin(&flying, info(), Duration::from_millis(50)));
    assert_eq!(table.complete(&done, Some(stored("before")), None), None);
    let Found::InFlight(mut waiting, ..) = table.claim(&flying, &"users".into()) else {
        panic!("in flight");
    };
    let users: Arc<str> = "users".into();
    let discarded = table.write_started(ctx(1), &users);
    assert_eq!(discarded.len(), 2);
    assert_eq!(table.held_bytes(), 0);
    assert_eq!(
        waiting.borrow_and_update().clone().map(|r| r.is_none()),
        Some(true),
        "a call waiting on it goes upstream"
    );
    assert!(matches!(table.claim(&done, &users), Found::Nothing));
    assert_eq!(
        table.complete(&flying, Some(stored("late")), None),
        None,
        "counted when discarded"
    );
    assert!(matches!(table.claim(&flying, &users), Found::Nothing));
    let after = get("/users/3");
    assert!(
        !table.begin(&after, info(), Duration::from_millis(5)),
        "nothing begins while the write runs"
    );
    table.write_ended(ctx(1), &users);
    assert!(table.begin(&after, info(), Duration::from_millis(5)));
}

#[test]
fn an_abandoned_context_serves_nothing_and_begins_nothing_and_blames_no_one() {
    let h = SecretHasher::new();
    let table = SpeculationTable::new(1 << 20, 8, 0.0, Barrier::Dependency);
    table.open(ctx(1), 1);
    let get = |path: &str| Key::new(&h, ctx(1), "users", "GET", path, &[], None);
    let done = get("/users/1");
    assert!(table.begin(&done, info(), Duration::from_millis(5)));
    assert_eq!(table.complete(&done, Some(stored("mine")), None), None);
    assert_eq!(table.abandon(ctx(1)).len(), 1);
    assert_eq!(table.held_bytes(), 0);
    assert!(matches!(
        table.claim(&done, &"users".into()),
        Found::Nothing
    ));
    assert!(!table.begin(&get("/users/2"), info(), Duration::from_millis(5)));
    assert!(
        table.governor_states().is_empty(),
        "abandoning is no misprediction: the governor never heard of it"
    );
    assert!(table.close(ctx(1)).is_empty(), "counted once");
}
