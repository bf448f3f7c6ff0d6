//! Offline evaluation: replay closed contexts in order, as if live, and
//! measure what the learner would have done. At each moment the proxy would
//! ask (the context opening, each call starting, each response arriving)
//! the learner predicts; predictions at or above the confidence are taken
//! as speculations, sent at once and answered in the real call's time.

use std::time::Instant;

use serde::Serialize;

use crate::learner::{Learner, Prediction};
use crate::observation::{Call, Context};
use crate::sequence::Next;

#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub confidence: f64,
    pub horizon_us: u64,
    /// Learn from each context after replaying it (the online model). When
    /// false, only the first `train` contexts are learned from and the rest
    /// are replayed without learning.
    pub learn_online: bool,
    /// Contexts learned from before the replay is measured: not measured
    /// themselves, for either kind of model.
    pub train: usize,
}

/// What a replay measured.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub contexts: usize,
    pub calls: usize,
    /// Contexts and calls measured (all of them online; the test part offline).
    pub measured_contexts: usize,
    pub measured_calls: usize,
    /// Share of calls whose shape was the model's most likely next one.
    pub next_call_top1: f64,
    /// Speculations that matched a later real call exactly, over all sent.
    pub speculation_precision: f64,
    /// Real calls answered by a speculation sent before they started.
    pub speculation_recall: f64,
    /// Share of dependency latency that those speculations would have taken
    /// off the critical path.
    pub hidden_latency_fraction: f64,
    pub speculations: u64,
    pub predict_calls: u64,
    pub predict_us_p50: f64,
    pub predict_us_p99: f64,
    pub routes: usize,
    pub memory_bytes: usize,
}

#[derive(Default)]
struct Tally {
    calls: usize,
    top1: usize,
    sent: u64,
    used: u64,
    hit_calls: usize,
    hidden_us: f64,
    total_us: f64,
    predict_ns: Vec<u64>,
}

/// Replays `contexts` through `learner`.
pub fn evaluate(
    learner: &mut Learner,
    model: &str,
    contexts: &[Context],
    settings: &EvalSettings,
) -> EvalReport {
    let mut tally = Tally::default();
    let mut measured_contexts = 0;
    for (i, ctx) in contexts.iter().enumerate() {
        let training = i < settings.train;
        if !training {
            measured_contexts += 1;
            replay(learner, ctx, settings, &mut tally);
        }
        if settings.learn_online || training {
            learner.learn(ctx);
        }
    }
    tally.predict_ns.sort_unstable();
    let pct = |q: f64| -> f64 {
        if tally.predict_ns.is_empty() {
            return 0.0;
        }
        let i = ((tally.predict_ns.len() as f64 - 1.0) * q).round() as usize;
        tally.predict_ns[i] as f64 / 1000.0
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    EvalReport {
        model: model.to_string(),
        contexts: contexts.len(),
        calls: contexts.iter().map(|c| c.calls.len()).sum(),
        measured_contexts,
        measured_calls: tally.calls,
        next_call_top1: ratio(tally.top1 as f64, tally.calls as f64),
        speculation_precision: ratio(tally.used as f64, tally.sent as f64),
        speculation_recall: ratio(tally.hit_calls as f64, tally.calls as f64),
        hidden_latency_fraction: ratio(tally.hidden_us, tally.total_us),
        speculations: tally.sent,
        predict_calls: tally.predict_ns.len() as u64,
        predict_us_p50: pct(0.5),
        predict_us_p99: pct(0.99),
        routes: learner.route_count(),
        memory_bytes: learner.memory_bytes(),
    }
}

/// A speculation in flight or done: what was sent, and when.
struct Sent {
    prediction: Prediction,
    at_us: u64,
    used: bool,
}

fn replay(learner: &Learner, ctx: &Context, settings: &EvalSettings, tally: &mut Tally) {
    // The moments the proxy asks: opening, each call's start and end.
    let mut moments: Vec<u64> = vec![0];
    for c in &ctx.calls {
        moments.push(c.start_us);
        moments.push(c.end_us());
    }
    moments.sort_unstable();
    moments.dedup();

    let mut sent: Vec<Sent> = Vec::new();
    for &t in &moments {
        let live = live_at(ctx, t);
        let started = Instant::now();
        let predictions = learner.predict(&live, t, settings.horizon_us);
        tally.predict_ns.push(started.elapsed().as_nanos() as u64);
        for p in predictions {
            if p.probability < settings.confidence {
                continue;
            }
            if sent.iter().any(|s| s.prediction.matches_prediction(&p)) {
                continue;
            }
            sent.push(Sent {
                prediction: p,
                at_us: t,
                used: false,
            });
        }
    }

    let mut history = Vec::new();
    for (j, call) in ctx.calls.iter().enumerate() {
        tally.calls += 1;
        tally.total_us += call.duration_us as f64;
        // Top-1 of the sequence model before this call.
        if let Some(actual) = learner.shapes().lookup(&call.dependency, &call.request) {
            if learner.next_top1(ctx, &history, j) == Some(Next::Call(actual)) {
                tally.top1 += 1;
            }
            history.push(actual);
        } else {
            history.clear();
            // An unseen shape breaks the history for the rest of the context.
            for c in &ctx.calls[..=j] {
                if let Some(id) = learner.shapes().lookup(&c.dependency, &c.request) {
                    history.push(id);
                }
            }
        }
        // Was it speculated before it started?
        if let Some(s) = sent.iter_mut().find(|s| {
            !s.used && s.at_us <= call.start_us && s.prediction.matches(call, learner.key_headers())
        }) {
            s.used = true;
            tally.hit_calls += 1;
            tally.hidden_us += (call.start_us - s.at_us).min(call.duration_us) as f64;
        }
    }
    tally.sent += sent.len() as u64;
    tally.used += sent.iter().filter(|s| s.used).count() as u64;
}

/// The context as the proxy sees it `t` µs after it opened: the calls that
/// have started, with the responses that have arrived.
fn live_at(ctx: &Context, t: u64) -> Context {
    Context {
        route: ctx.route.clone(),
        inbound: ctx.inbound.clone(),
        calls: ctx
            .calls
            .iter()
            .filter(|c| c.start_us <= t)
            .map(|c| Call {
                response: if c.end_us() <= t {
                    c.response.clone()
                } else {
                    None
                },
                ..c.clone()
            })
            .collect(),
    }
}
