//! The predictor on generated traces with known structure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod flows;
mod json_walk;
#[cfg(feature = "onnx")]
mod onnx;
mod robust;
mod suite;

use augur_predictor::eval::{EvalReport, EvalSettings, evaluate};
use augur_predictor::headers::KeyHeaders;
use augur_predictor::sequence::Next;
use augur_predictor::{Context, Learner, Settings};
use flows::*;
use serde_json::json;

fn online() -> EvalSettings {
    EvalSettings {
        confidence: 0.8,
        horizon_us: 1_000_000,
        learn_online: true,
        train: 0,
    }
}

/// Learns `warmup` contexts, then replays and measures the rest.
fn run(contexts: &[Context], warmup: usize) -> (Learner, EvalReport) {
    let mut learner = Learner::new(Settings::default());
    for c in &contexts[..warmup] {
        learner.learn(c);
    }
    let report = evaluate(&mut learner, "online", &contexts[warmup..], &online());
    (learner, report)
}

fn many(n: usize, seed: u64, f: fn(&mut Rng) -> Context) -> Vec<Context> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| f(&mut rng)).collect()
}

#[test]
fn deterministic_chains_are_predicted_after_five_contexts() {
    for (name, flow) in [
        ("profile", profile as fn(&mut Rng) -> Context),
        ("search", search),
        ("order", order),
    ] {
        let contexts = many(200, 7, flow);
        let (_, r) = run(&contexts, 5);
        assert!(r.speculation_precision >= 0.99, "{name}: {r:#?}");
        assert!(r.speculation_recall >= 0.95, "{name}: {r:#?}");
        assert!(r.next_call_top1 >= 0.99, "{name}: {r:#?}");
        assert!(r.hidden_latency_fraction > 0.0, "{name}: {r:#?}");
    }
}

#[test]
fn hidden_latency_is_what_speculation_takes_off_the_critical_path() {
    // Three calls in a row, each needing only the inbound id: all can be
    // sent at opening, so each hides as much of itself as had elapsed
    // before it started.
    let mut rng = Rng::new(31);
    let make = |rng: &mut Rng| {
        let id = rng.below(10_000);
        Builder::new("GET /s/{id}", request("GET", &format!("/s/{id}"), &[]))
            .call(
                "a",
                request("GET", &format!("/a/{id}"), &[]),
                1000,
                json!({}),
            )
            .call(
                "b",
                request("GET", &format!("/b/{id}"), &[]),
                1000,
                json!({}),
            )
            .call(
                "c",
                request("GET", &format!("/c/{id}"), &[]),
                1000,
                json!({}),
            )
            .done()
    };
    let contexts: Vec<Context> = (0..50).map(|_| make(&mut rng)).collect();
    let (_, r) = run(&contexts, 5);
    // Starts at 100, 1150 and 2200 µs: hidden 100 + 1000 + 1000 of 3000.
    assert!(
        (r.hidden_latency_fraction - 2100.0 / 3000.0).abs() < 1e-9,
        "{r:#?}"
    );
    assert_eq!(r.speculation_recall, 1.0);
}

#[test]
fn parameters_come_from_responses_joined_lists_path_query_header_and_body() {
    let mut rng = Rng::new(3);
    let mut learner = Learner::new(Settings::default());
    for _ in 0..5 {
        learner.learn(&search(&mut rng));
        learner.learn(&order(&mut rng));
    }
    // search: at opening only geo is known; rates needs geo's answer.
    let ctx = search(&mut rng);
    let mut live = ctx.clone();
    live.calls.clear();
    let at_open = learner.predict(&live, 0, 1_000_000);
    assert_eq!(at_open.len(), 1, "{at_open:#?}");
    assert_eq!(at_open[0].path, "/nearby");
    assert_eq!(at_open[0].query, ctx.calls[0].request.query);
    live.calls.push(ctx.calls[0].clone());
    let after_geo = learner.predict(&live, ctx.calls[0].end_us(), 1_000_000);
    assert!(
        after_geo
            .iter()
            .any(|p| p.matches(&ctx.calls[1], &KeyHeaders::default())),
        "rates from the joined ids: {after_geo:#?}"
    );
    assert!(
        after_geo
            .iter()
            .any(|p| p.matches(&ctx.calls[2], &KeyHeaders::default())),
        "profile of the first hotel: {after_geo:#?}"
    );
    // order: item from the JSON body, tenant from a header, the credential
    // copied, accept a constant.
    let ctx = order(&mut rng);
    let mut live = ctx.clone();
    live.calls.clear();
    let p = learner.predict(&live, 0, 1_000_000);
    assert_eq!(p.len(), 1);
    assert!(
        p[0].matches(&ctx.calls[0], &KeyHeaders::default()),
        "{p:#?} vs {:#?}",
        ctx.calls[0]
    );
}

#[test]
fn call_bodies_are_predicted_field_by_field() {
    // POST /checkout {"cart": N}: quote the cart, then pay the quoted total
    // for that cart in a JSON body, with a constant currency.
    let mut rng = Rng::new(37);
    let make = |rng: &mut Rng| {
        let cart = rng.below(100_000);
        let total = 10 + rng.below(500);
        let mut inbound = request("POST", "/checkout", &[("content-type", "application/json")]);
        inbound.body = Some(json!({"cart": cart}).into());
        let mut pay = request("POST", "/payments", &[("content-type", "application/json")]);
        pay.body = Some(
            json!({"cart": cart, "amount": total, "currency": "EUR", "meta": {"retry": false}})
                .into(),
        );
        Builder::new("POST /checkout", inbound)
            .call(
                "quotes",
                request("GET", &format!("/quotes/{cart}"), &[]),
                500,
                json!({"cart": cart, "total": total}),
            )
            .call("payments", pay, 800, json!({"ok": true}))
            .done()
    };
    let mut learner = Learner::new(Settings::default());
    for _ in 0..5 {
        learner.learn(&make(&mut rng));
    }
    let ctx = make(&mut rng);
    let mut live = ctx.clone();
    live.calls.truncate(1);
    let p = learner.predict(&live, ctx.calls[0].end_us(), 1_000_000);
    let pay = p
        .iter()
        .find(|p| p.dependency == "payments")
        .expect("payments predicted");
    assert!(
        pay.matches(&ctx.calls[1], &KeyHeaders::default()),
        "{pay:#?} vs {:#?}",
        ctx.calls[1].request
    );
    let body = pay.body.as_ref().unwrap();
    assert!(
        body["amount"].is_number() && body["cart"].is_number() && body["meta"]["retry"] == false,
        "{body}"
    );
    // Before the quote arrives, the amount is unknown: no prediction.
    live.calls[0].response = None;
    assert!(
        learner
            .predict(&live, ctx.calls[0].start_us, 1_000_000)
            .iter()
            .all(|p| p.dependency != "payments")
    );
}

#[test]
fn nothing_is_predicted_for_a_slot_of_unknown_provenance() {
    // The session id is fresh in every call: no source holds it.
    let mut rng = Rng::new(5);
    let mut learner = Learner::new(Settings::default());
    let make = |rng: &mut Rng| {
        let id = rng.below(1000);
        Builder::new("GET /x/{id}", request("GET", &format!("/x/{id}"), &[]))
            .call(
                "a",
                request("GET", &format!("/a/{id}?nonce={}", rng.next()), &[]),
                100,
                json!({}),
            )
            .done()
    };
    for _ in 0..50 {
        learner.learn(&make(&mut rng));
    }
    let mut live = make(&mut rng);
    live.calls.clear();
    assert!(learner.predict(&live, 0, 1_000_000).is_empty());
    // And a credential that no source holds is never guessed.
    let make = |rng: &mut Rng| {
        let id = rng.below(1000);
        Builder::new("GET /y/{id}", request("GET", &format!("/y/{id}"), &[]))
            .call(
                "b",
                request(
                    "GET",
                    &format!("/b/{id}"),
                    &[("authorization", &token(rng.next()))],
                ),
                100,
                json!({}),
            )
            .done()
    };
    for _ in 0..50 {
        learner.learn(&make(&mut rng));
    }
    let mut live = make(&mut rng);
    live.calls.clear();
    assert!(learner.predict(&live, 0, 1_000_000).is_empty());
}

#[test]
fn branch_probabilities_are_learned_within_005() {
    let mut rng = Rng::new(11);
    let mut learner = Learner::new(Settings::default());
    for _ in 0..500 {
        let id = rng.below(1000);
        let mut b = Builder::new("GET /b/{id}", request("GET", &format!("/b/{id}"), &[]));
        b.call(
            "a",
            request("GET", &format!("/a/{id}"), &[]),
            100,
            json!({}),
        );
        if rng.chance(0.7) {
            b.call(
                "left",
                request("GET", &format!("/l/{id}"), &[]),
                100,
                json!({}),
            );
        } else if rng.chance(2.0 / 3.0) {
            b.call(
                "right",
                request("GET", &format!("/r/{id}"), &[]),
                100,
                json!({}),
            );
        }
        learner.learn(&b.done());
    }
    let a = learner
        .shapes()
        .lookup("a", &request("GET", "/a/1", &[]))
        .unwrap();
    let dist = learner.next("GET /b/{id}", &[a]);
    let p = |shape: Option<u32>| {
        dist.iter()
            .find(|(n, _)| match (n, shape) {
                (Next::Call(s), Some(x)) => *s == x,
                (Next::End, None) => true,
                _ => false,
            })
            .map_or(0.0, |(_, p)| *p)
    };
    let left = learner
        .shapes()
        .lookup("left", &request("GET", "/l/1", &[]));
    let right = learner
        .shapes()
        .lookup("right", &request("GET", "/r/1", &[]));
    assert!((p(left) - 0.7).abs() < 0.05, "{dist:?}");
    assert!((p(right) - 0.2).abs() < 0.05, "{dist:?}");
    assert!((p(None) - 0.1).abs() < 0.05, "{dist:?}");
}

#[test]
fn optional_calls_and_fan_out_keep_what_is_certain_certain() {
    let mut rng = Rng::new(13);
    let make = |rng: &mut Rng| {
        let id = rng.below(1000);
        let mut b = Builder::new("GET /o/{id}", request("GET", &format!("/o/{id}"), &[]));
        b.call(
            "a",
            request("GET", &format!("/a/{id}"), &[]),
            100,
            json!({}),
        );
        if rng.chance(0.5) {
            b.call(
                "maybe",
                request("GET", &format!("/m/{id}"), &[]),
                100,
                json!({}),
            );
        }
        let (x, y) = (
            (
                "x",
                request("GET", &format!("/x/{id}"), &[]),
                300,
                json!({}),
            ),
            (
                "y",
                request("GET", &format!("/y/{id}"), &[]),
                200,
                json!({}),
            ),
        );
        if rng.chance(0.5) {
            b.parallel(vec![x, y])
        } else {
            b.parallel(vec![y, x])
        };
        b.call(
            "z",
            request("GET", &format!("/z/{id}"), &[]),
            100,
            json!({}),
        );
        b.done()
    };
    let contexts: Vec<Context> = (0..300).map(|_| make(&mut rng)).collect();
    let (learner, r) = run(&contexts, 20);
    // x, y and z are certain; maybe is not, and is not sent at 0.8.
    assert!(r.speculation_precision >= 0.99, "{r:#?}");
    let certain_share = 3.0 / 4.5; // of the 4.5 calls per context on average
    assert!(r.speculation_recall >= certain_share * 0.95, "{r:#?}");
    let mut live = make(&mut rng);
    live.calls.truncate(1);
    let ahead = learner.predict(&live, live.calls[0].end_us(), 1_000_000);
    for dep in ["x", "y", "z"] {
        let p = ahead
            .iter()
            .find(|p| p.dependency == dep)
            .unwrap_or_else(|| panic!("{dep}: {ahead:#?}"));
        assert!(p.probability > 0.99, "{p:?}");
    }
    let maybe = ahead.iter().find(|p| p.dependency == "maybe").unwrap();
    assert!((maybe.probability - 0.5).abs() < 0.1, "{maybe:?}");
}

#[test]
fn a_changed_rule_is_learned_within_20_contexts() {
    let mut rng = Rng::new(17);
    let mut contexts = many(250, 17, profile);
    // Halfway, posts starts taking the user's numeric id instead of uid.
    for _ in 0..60 {
        let mut c = profile(&mut rng);
        let id = c.calls[0].response.as_ref().unwrap()["id"].clone();
        c.calls[1].request.query = Some(format!("user={id}&limit=10"));
        contexts.push(c);
    }
    let mut learner = Learner::new(Settings::default());
    for c in &contexts[..250] {
        learner.learn(c);
    }
    let mut hits_after = Vec::new();
    for (i, c) in contexts[250..].iter().enumerate() {
        let mut live = c.clone();
        live.calls.truncate(1);
        let p = learner.predict(&live, c.calls[0].end_us(), 1_000_000);
        if p.iter()
            .any(|p| p.matches(&c.calls[1], &KeyHeaders::default()))
        {
            hits_after.push(i);
        }
        learner.learn(c);
    }
    let first = *hits_after.first().expect("never adapted");
    assert!(first <= 20, "adapted after {first} contexts");
    assert!(hits_after.len() >= 60 - 21, "{hits_after:?}");
}

#[test]
fn noisy_contexts_do_not_break_precision() {
    let mut rng = Rng::new(23);
    let mut contexts = Vec::new();
    for _ in 0..400 {
        let mut c = profile(&mut rng);
        if rng.chance(0.1) {
            let at = rng.below(c.calls.len() as u64 + 1) as usize;
            let start = if at == 0 {
                50
            } else {
                c.calls[at - 1].end_us() + 10
            };
            c.calls.insert(
                at,
                augur_predictor::Call {
                    dependency: ["audit", "cache", "flags"][rng.below(3) as usize].into(),
                    request: request("GET", &format!("/noise/{}", rng.next()), &[]),
                    status: 200,
                    start_us: start,
                    duration_us: 30,
                    response: Some(json!({"n": rng.next()}).into()),
                },
            );
        }
        contexts.push(c);
    }
    let (_, r) = run(&contexts, 5);
    assert!(r.speculation_precision >= 0.97, "{r:#?}");
    assert!(r.speculation_recall >= 0.85, "{r:#?}");
}

#[test]
fn memory_per_route_is_bounded() {
    let mut learner = Learner::new(Settings::default());
    let mut rng = Rng::new(29);
    for c in many(2000, 29, profile) {
        learner.learn(&c);
    }
    let after_2000 = learner.memory_bytes();
    for _ in 0..2000 {
        learner.learn(&profile(&mut rng));
    }
    assert_eq!(learner.route_count(), 1);
    assert!(
        learner.memory_bytes() <= after_2000 + 1024,
        "{} -> {}",
        after_2000,
        learner.memory_bytes()
    );
    assert!(after_2000 < 64 * 1024, "{after_2000} bytes for one route");
}

/// A flood of junk — routes and call shapes never seen twice — displaces
/// other junk, not a route that keeps being used: the real route is still
/// predicted, every table stays within its cap, and what was forgotten is
/// counted.
#[test]
fn a_junk_flood_evicts_junk_not_the_route_in_use() {
    let settings = Settings {
        max_routes: 64,
        max_shapes: 256,
        max_entries_per_route: 16,
        ..Settings::default()
    };
    let mut learner = Learner::new(settings);
    let mut rng = Rng::new(31);
    for c in many(50, 31, profile) {
        learner.learn(&c);
    }
    for i in 0..20_000u64 {
        if i % 50 == 0 {
            learner.learn(&profile(&mut rng));
        }
        // A route that calls nothing teaches nothing and is not kept.
        let empty = Builder::new(
            &format!("GET /scan/x{i}y"),
            request("GET", &format!("/scan/x{i}y"), &[]),
        )
        .done();
        learner.learn(&empty);
        // One that calls a dependency with query keys never seen again.
        let mut b = Builder::new(
            &format!("GET /junk/j{i}k"),
            request("GET", &format!("/junk/j{i}k"), &[]),
        );
        for n in 0..3 {
            b.call(
                "junk",
                request("GET", &format!("/static?k{i}x{n}=1"), &[]),
                10,
                json!({}),
            );
        }
        learner.learn(&b.done());
        assert!(learner.route_count() <= 64);
        assert!(learner.shape_count() <= 256);
    }
    let e = learner.evictions();
    assert!(
        e.routes > 10_000 && e.shapes > 50_000 && e.calls == 0,
        "{e:?}"
    );
    assert!(
        !learner.describe()["routes"]
            .as_object()
            .unwrap()
            .keys()
            .any(|r| r.starts_with("GET /scan/"))
    );
    let live = profile(&mut rng);
    let mut partial = live.clone();
    partial.calls.truncate(1);
    let predicted = learner.predict(&partial, partial.calls[0].end_us(), 1_000_000);
    assert!(
        predicted
            .iter()
            .any(|p| p.matches(&live.calls[1], learner.key_headers())),
        "the real route is still predicted after the flood: {predicted:?}"
    );
    assert!(
        learner.memory_bytes() < 4 << 20,
        "{}",
        learner.memory_bytes()
    );
}
