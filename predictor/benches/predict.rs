//! Learn and predict for a route with 10 calls, each taking its parameter
//! from the previous response, plus the inbound id and credential.
//!
//! `cargo bench -p augur-predictor --bench predict`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use augur_predictor::{Call, Context, Learner, Request, Settings};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn request(target: &str, auth: &str) -> Request {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Request {
        method: "GET".into(),
        path,
        query,
        headers: vec![("authorization".into(), auth.into())],
        body: None,
    }
}

fn context(i: u64) -> Context {
    let auth = format!("keyed:{:032x}", i % 13);
    let mut calls = Vec::new();
    let mut key = i;
    let mut now = 100;
    for step in 0..10u64 {
        let next = key * 7 + step;
        calls.push(Call {
            dependency: format!("dep{step}"),
            request: request(&format!("/s{step}/{key}?user={i}"), &auth),
            status: 200,
            start_us: now,
            duration_us: 1000,
            response: Some(
                json!({"next": next, "items": [next, next + 1], "name": format!("n{next}")}).into(),
            ),
        });
        key = next;
        now += 1050;
    }
    Context {
        route: "GET /bench/{id}".into(),
        inbound: request(&format!("/bench/{i}"), &auth),
        calls,
    }
}

fn benches(c: &mut Criterion) {
    let mut learner = Learner::new(Settings::default());
    for i in 0..200 {
        learner.learn(&context(i));
    }
    eprintln!(
        "learned 1 route of 10 calls from 200 contexts: {} bytes",
        learner.memory_bytes()
    );
    let ctx = context(1000);
    let mut at_open = ctx.clone();
    at_open.calls.clear();
    let mut halfway = ctx.clone();
    halfway.calls.truncate(5);
    assert_eq!(learner.predict(&at_open, 0, 1_000_000).len(), 1);
    assert_eq!(
        learner
            .predict(&halfway, halfway.calls[4].end_us(), 1_000_000)
            .len(),
        1
    );

    c.bench_function("online/predict at open (10-call route)", |b| {
        b.iter(|| learner.predict(black_box(&at_open), 0, 1_000_000))
    });
    c.bench_function("online/predict after 5 of 10 calls", |b| {
        b.iter(|| learner.predict(black_box(&halfway), 5000, 1_000_000))
    });
    let mut i = 2000;
    c.bench_function("online/learn one 10-call context", |b| {
        b.iter_batched(
            || {
                i += 1;
                context(i)
            },
            |ctx| learner.learn(black_box(&ctx)),
            criterion::BatchSize::SmallInput,
        )
    });
}

/// The ONNX model of the demo on the demo traces: one inference at batch 1,
/// and a whole predict (lookahead through the model plus instantiation).
#[cfg(feature = "onnx")]
fn onnx_benches(c: &mut Criterion) {
    use augur_predictor::onnx::{OnnxModel, use_runtime};
    use augur_predictor::trace;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let runtime = std::env::var_os("ORT_DYLIB_PATH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/onnxruntime/libonnxruntime.so.1.32.0"));
    use_runtime(&runtime);
    let model = match OnnxModel::load(&root.join("predictor/models/demo.onnx")) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("onnx benches skipped: {e}");
            return;
        }
    };
    let window = vec![0i64; model.window()];
    c.bench_function("onnx/one inference (batch 1, window 12, LSTM 64)", |b| {
        b.iter(|| model.run(black_box(&window), &[]).unwrap())
    });
    // The Transformer, and both networks reading fields of the context.
    for (file, name) in [
        (
            "demo-transformer",
            "onnx/one inference (batch 1, window 12, Transformer 32, 1 layer)",
        ),
        (
            "combined-lstm",
            "onnx/one inference (batch 1, window 12, LSTM 64, with fields)",
        ),
        (
            "combined-transformer",
            "onnx/one inference (batch 1, window 12, Transformer 32, with fields)",
        ),
    ] {
        match OnnxModel::load(&root.join(format!("predictor/models/{file}.onnx"))) {
            Ok(other) => {
                let window = vec![0i64; other.window()];
                let fields = vec![1.0f32; other.inputs().len()];
                c.bench_function(name, |b| {
                    b.iter(|| other.run(black_box(&window), black_box(&fields)).unwrap())
                });
            }
            Err(e) => eprintln!("{file} bench skipped: {e}"),
        }
    }
    let (records, _) = trace::read_path(&root.join("loadtests/traces/demo.jsonl")).unwrap();
    let mut learner = Learner::with_model(Settings::default(), Box::new(model));
    for r in &records[..150] {
        learner.learn(&r.context);
    }
    let mut at_open = records[200].context.clone();
    at_open.calls.clear();
    assert_eq!(learner.predict(&at_open, 0, 1_000_000).len(), 1);
    c.bench_function("onnx/predict at open (demo route, windows cached)", |b| {
        b.iter(|| learner.predict(black_box(&at_open), 0, 1_000_000))
    });
    let mut online = Learner::new(Settings::default());
    for r in &records[..150] {
        online.learn(&r.context);
    }
    c.bench_function("online/predict at open (demo route)", |b| {
        b.iter(|| online.predict(black_box(&at_open), 0, 1_000_000))
    });
}

#[cfg(not(feature = "onnx"))]
fn onnx_benches(_: &mut Criterion) {}

criterion_group!(predict, benches, onnx_benches);
criterion_main!(predict);
