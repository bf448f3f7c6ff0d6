use serde_json::{Value, json};

use super::*;

/// A context's view with one response (shape 1) and its status.
fn view(body: &Value, status: u16) -> Available<'_> {
    Available {
        inbound: None,
        responses: vec![(1, 0, body)],
        statuses: vec![(1, 0, status)],
    }
}

/// Learns one context: the response `body` came, and the call was `made`.
fn learn(gate: &mut Gate, body: &Value, status: u16, made: bool) {
    let avail = view(body, status);
    gate.observe(made, &avail, &mut || features(&avail, 2000), 3);
}

/// xorshift: seeded test data.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn items(seed: &mut u64) -> (Value, bool) {
    let list: Vec<Value> = (0..3 + rng(seed) % 3)
        .map(|k| json!({"id": rng(seed) % 100_000, "featured": rng(seed) % 6 == 0, "n": k}))
        .collect();
    let any = list.iter().any(|i| i["featured"] == json!(true));
    (json!({"items": list, "request": rng(seed) % 1000}), any)
}

#[test]
fn a_flag_in_a_list_decides_the_call_and_nothing_else_does() {
    let mut gate = Gate::default();
    let mut seed = 7;
    for _ in 0..60 {
        let (body, any) = items(&mut seed);
        learn(&mut gate, &body, 200, any);
    }
    let decision = gate.decision(3).expect("a decision");
    assert_eq!(
        decision.feature,
        Feature::Any {
            shape: 1,
            occurrence: 0,
            array: "/items".into(),
            key: "featured".into(),
            value: "true".into(),
        },
        "{decision:?}"
    );
    let with = json!({"items": [{"id": 1, "featured": false}, {"id": 2, "featured": true}]});
    let without = json!({"items": [{"id": 1, "featured": false}]});
    assert_eq!(gate.decide(&view(&with, 200), 3), Some(1.0));
    assert_eq!(gate.decide(&view(&without, 200), 3), Some(0.0));
    // Until the response it reads has come, the gate cannot tell.
    let nothing = Available::default();
    assert_eq!(gate.decide(&nothing, 3), None);
}

#[test]
fn a_status_decides_either_way() {
    let mut gate = Gate::default();
    let mut seed = 3;
    for _ in 0..40 {
        let found = rng(&mut seed) % 3 != 0;
        let status = if found { 200 } else { 404 };
        let body = json!({"id": rng(&mut seed) % 10_000});
        // The call is made when the earlier one was NOT found.
        learn(&mut gate, &body, status, !found);
    }
    let decision = gate.decision(3).expect("a decision");
    assert!(
        matches!(decision.feature, Feature::Status { .. }),
        "{decision:?}"
    );
    let body = json!({"id": 1});
    assert_eq!(gate.decide(&view(&body, 404), 3), Some(1.0));
    assert_eq!(gate.decide(&view(&body, 200), 3), Some(0.0));
}

#[test]
fn a_threshold_is_learned_and_learned_again_when_it_moves() {
    let mut gate = Gate::default();
    let mut seed = 11;
    let mut run = |gate: &mut Gate, cut: u64, n: usize| {
        for _ in 0..n {
            let score = rng(&mut seed) % 101;
            let body = json!({"score": score, "id": rng(&mut seed) % 100_000});
            learn(gate, &body, 200, score > cut);
        }
    };
    run(&mut gate, 50, 80);
    let decide = |gate: &Gate, score: u64| {
        let body = json!({"score": score, "id": 1});
        gate.decide(&view(&body, 200), 3)
    };
    assert_eq!(decide(&gate, 80), Some(1.0));
    assert_eq!(decide(&gate, 20), Some(0.0));
    run(&mut gate, 70, 120);
    assert_eq!(decide(&gate, 90), Some(1.0));
    assert_eq!(decide(&gate, 60), Some(0.0), "{:?}", gate.decision(3));
}

#[test]
fn a_call_always_made_keeps_no_candidates() {
    let mut gate = Gate::default();
    let mut seed = 5;
    for _ in 0..50 {
        let (body, _) = items(&mut seed);
        learn(&mut gate, &body, 200, true);
    }
    assert!(gate.tests.is_empty() && gate.splits.is_empty());
    assert_eq!(gate.decision(3), None);
    let (body, _) = items(&mut seed);
    assert_eq!(gate.decide(&view(&body, 200), 3), None);
}

#[test]
fn candidates_stay_bounded_when_nothing_decides() {
    let mut gate = Gate::default();
    let mut seed = 9;
    for _ in 0..300 {
        let leaves: serde_json::Map<String, Value> = (0..40)
            .map(|k| (format!("f{k}"), json!(rng(&mut seed) % 7)))
            .collect();
        let made = rng(&mut seed) % 2 == 0;
        learn(&mut gate, &Value::Object(leaves), 200, made);
    }
    assert!(gate.tests.len() <= MAX_TESTS);
    assert!(gate.splits.len() <= MAX_SPLITS);
    assert_eq!(gate.decision(3), None, "random data decides nothing");
}
