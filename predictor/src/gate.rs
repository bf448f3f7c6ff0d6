//! Gates: what decides whether a call is made. The sequence model knows
//! that a route calls `B` after `A` in 40% of its contexts; a gate learns
//! *which* 40% — the contexts where `A`'s answer had an item with its flag
//! set, where `A` answered 200, where its list was not empty, where a
//! number passed a threshold, where the inbound request carried a value.
//!
//! Each (route, call) whose call is not always made keeps a small decision
//! list: candidate tests (a feature equal to a value) and splits (a number
//! above or below a threshold), each with its counts of agreement with
//! whether the call was made. A test or split that held in every recent
//! context, with support on both sides, decides the call's probability
//! once its feature is known; until then the sequence model's holds.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::json::{self, scalar_text as scalar};
use crate::provenance::{Available, Resolved, Source};
use crate::shapes::ShapeId;

/// A value of a context that may decide a call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Feature {
    /// A field of the inbound request or of a response (no joined lists).
    Value(Source),
    /// The status of the response to the `occurrence`-th call of `shape`.
    Status { shape: ShapeId, occurrence: u32 },
    /// How many elements the array at `pointer` of that response has.
    Length {
        shape: ShapeId,
        occurrence: u32,
        pointer: String,
    },
    /// Whether some element of the array at `array` has `key` = `value`.
    Any {
        shape: ShapeId,
        occurrence: u32,
        array: String,
        key: String,
        value: String,
    },
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Feature::Value(source) => write!(f, "{source}"),
            Feature::Status { shape, occurrence } => {
                write!(f, "status of shape {shape}#{occurrence}")
            }
            Feature::Length {
                shape,
                occurrence,
                pointer,
            } => write!(f, "length of shape {shape}#{occurrence} {pointer}"),
            Feature::Any {
                shape,
                occurrence,
                array,
                key,
                value,
            } => write!(
                f,
                "some element of shape {shape}#{occurrence} {array} has {key:?} = {value:?}"
            ),
        }
    }
}

impl Feature {
    /// The feature's value in `avail` as text (`Some(None)`: absent);
    /// `None` while what it reads has not arrived.
    pub fn read(&self, avail: &Available<'_>) -> Option<Option<String>> {
        let response = |shape: &ShapeId, occurrence: &u32| {
            avail
                .responses
                .iter()
                .find(|(s, o, _)| s == shape && o == occurrence)
                .map(|(_, _, body)| *body)
        };
        match self {
            Feature::Value(source) => match avail.resolve(source) {
                Resolved::Value(v) => Some(v),
                Resolved::Unavailable => None,
            },
            Feature::Status { shape, occurrence } => avail
                .statuses
                .iter()
                .find(|(s, o, _)| s == shape && o == occurrence)
                .map(|(_, _, status)| Some(status.to_string())),
            Feature::Length {
                shape,
                occurrence,
                pointer,
            } => response(shape, occurrence).map(|body| {
                body.pointer(pointer)
                    .and_then(Value::as_array)
                    .map(|a| a.len().to_string())
            }),
            Feature::Any {
                shape,
                occurrence,
                array,
                key,
                value,
            } => response(shape, occurrence).map(|body| {
                let any = body.pointer(array).and_then(Value::as_array).map(|items| {
                    items
                        .iter()
                        .any(|i| i.get(key).and_then(scalar).as_deref() == Some(value))
                });
                any.map(|b| b.to_string())
            }),
        }
    }

    /// Order in which candidates are admitted when room is short: what
    /// most often decides a branch first.
    fn priority(&self, value: Option<&str>) -> u8 {
        let flag = matches!(value, Some("true" | "false"));
        match self {
            Feature::Status { .. } | Feature::Any { .. } => 0,
            Feature::Length { .. } => 1,
            Feature::Value(_) if flag => 1,
            Feature::Value(
                Source::InboundPath(_) | Source::InboundQuery(_) | Source::InboundHeader(_),
            ) => 2,
            Feature::Value(_) if value.is_some_and(|v| v.len() <= 16) => 3,
            Feature::Value(_) => 4,
        }
    }
}

/// Every feature `avail` holds, with its value, for new candidates: inbound
/// path segments, query values, headers and body fields; each response's
/// status, scalar fields, list lengths and, for lists of objects, which
/// values their few-valued keys take.
pub fn features(avail: &Available<'_>, max_leaves: usize) -> Vec<(Feature, Option<String>)> {
    let mut out = Vec::new();
    if let Some(req) = avail.inbound {
        for (i, s) in req.segments().enumerate() {
            out.push((Feature::Value(Source::InboundPath(i)), Some(s.to_string())));
        }
        for (k, v) in req.query_pairs() {
            let source = Source::InboundQuery(k.to_string());
            out.push((Feature::Value(source), Some(v.to_string())));
        }
        for (h, v) in &req.headers {
            let source = Source::InboundHeader(h.clone());
            out.push((Feature::Value(source), Some(v.clone())));
        }
        if let Some(body) = &req.body {
            let mut leaves = Leaves::default();
            json::walk(body, 8, max_leaves, &mut leaves);
            for (pointer, value) in leaves.scalars {
                out.push((Feature::Value(Source::InboundBody(pointer)), Some(value)));
            }
        }
    }
    for (shape, occurrence, status) in &avail.statuses {
        let (shape, occurrence) = (*shape, *occurrence);
        out.push((
            Feature::Status { shape, occurrence },
            Some(status.to_string()),
        ));
    }
    for (shape, occurrence, body) in &avail.responses {
        let (shape, occurrence) = (*shape, *occurrence);
        let mut leaves = Leaves::default();
        json::walk(body, 8, max_leaves, &mut leaves);
        for (pointer, value) in leaves.scalars {
            let source = Source::Response {
                shape,
                occurrence,
                pointer,
                join: None,
            };
            out.push((Feature::Value(source), Some(value)));
        }
        for (pointer, len) in leaves.lengths {
            let feature = Feature::Length {
                shape,
                occurrence,
                pointer,
            };
            out.push((feature, Some(len.to_string())));
        }
        for (array, key, value) in leaves.keyed {
            let feature = Feature::Any {
                shape,
                occurrence,
                array,
                key,
                value,
            };
            out.push((feature, Some("true".to_string())));
        }
    }
    out
}

/// Distinct values a key of a list may take to be tested.
const MAX_KEY_VALUES: usize = 4;

#[derive(Default)]
struct Leaves {
    scalars: Vec<(String, String)>,
    lengths: Vec<(String, usize)>,
    /// (array, key, value) for the few-valued keys of lists of objects.
    keyed: Vec<(String, String, String)>,
}

impl json::Visitor for Leaves {
    fn leaf(&mut self, pointer: &str, value: &Value) {
        if let Some(text) = scalar(value) {
            self.scalars.push((pointer.to_string(), text));
        }
    }

    fn array(&mut self, pointer: &str, items: &[Value]) {
        self.lengths.push((pointer.to_string(), items.len()));
        let Some(Value::Object(first)) = items.first() else {
            return;
        };
        for key in first.keys().take(16) {
            let mut values: Vec<String> = Vec::new();
            for item in items {
                match item.get(key).and_then(scalar) {
                    Some(v) if v.len() <= 16 => {
                        if !values.contains(&v) {
                            values.push(v);
                        }
                    }
                    _ => {
                        values.clear();
                        break;
                    }
                }
                if values.len() > MAX_KEY_VALUES {
                    break;
                }
            }
            if values.len() <= MAX_KEY_VALUES {
                for v in values {
                    self.keyed.push((pointer.to_string(), key.clone(), v));
                }
            }
        }
    }
}

/// Candidate tests kept per call at most.
const MAX_TESTS: usize = 32;
/// Candidate splits kept per call at most.
const MAX_SPLITS: usize = 16;
/// Agreement a test or split needs over its recent outcomes.
const MIN_PRECISION: f64 = 0.97;

/// "The feature is `value`", and how it has agreed with the call being made.
#[derive(Debug, Clone, Serialize)]
struct Test {
    feature: Feature,
    value: Option<String>,
    /// Contexts by (test true, call made): [tt, tf, ft, ff].
    counts: [u32; 4],
    /// Recent outcomes, newest in bit 0 (1: the test agreed with the call).
    agreed: u32,
    seen: u8,
}

impl Test {
    fn record(&mut self, truth: bool, made: bool) {
        let i = match (truth, made) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        };
        self.counts[i] = self.counts[i].saturating_add(1);
        self.agreed = (self.agreed << 1) | u32::from(truth == made);
        self.seen = self.seen.saturating_add(1).min(32);
    }

    /// Whether the call is made when the test holds (`true`) or when it
    /// does not (`false`), if one of the two is nearly always so.
    fn polarity(&self) -> Option<bool> {
        let recent = u32::from(self.seen.min(32));
        if recent == 0 {
            return None;
        }
        let mask = if recent >= 32 {
            u32::MAX
        } else {
            (1u32 << recent) - 1
        };
        let agree = f64::from((self.agreed & mask).count_ones()) / f64::from(recent);
        if agree >= MIN_PRECISION {
            Some(true)
        } else if 1.0 - agree >= MIN_PRECISION {
            Some(false)
        } else {
            None
        }
    }

    /// How well it decides: (trusted, contexts on the weaker side).
    fn strength(&self, min_observations: u32) -> Option<u32> {
        let [tt, tf, ft, ff] = self.counts;
        let weaker = match self.polarity()? {
            true => tt.min(ff),
            false => tf.min(ft),
        };
        (weaker >= min_observations).then_some(weaker)
    }

    /// The probability the call is made, given the test's truth.
    fn probability(&self, truth: bool) -> f64 {
        let [tt, tf, ft, ff] = self.counts.map(f64::from);
        let (made, all) = if truth { (tt, tt + tf) } else { (ft, ft + ff) };
        if all > 0.0 { made / all } else { 0.5 }
    }
}

/// The values a numeric feature took when the call was made and when not.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Range {
    min: f64,
    max: f64,
    n: u32,
}

impl Range {
    fn add(&mut self, x: f64) {
        if self.n == 0 {
            (self.min, self.max) = (x, x);
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.n = self.n.saturating_add(1);
    }
}

/// "The feature is above (or below) a threshold": learned from the ranges
/// the feature took on each side, started over when they overlap.
#[derive(Debug, Clone, Serialize)]
struct Split {
    feature: Feature,
    made: Range,
    not: Range,
    /// Times the ranges overlapped and were started over.
    resets: u32,
}

impl Split {
    fn record(&mut self, x: f64, made: bool) {
        if made {
            self.made.add(x);
        } else {
            self.not.add(x);
        }
        let (m, n) = (self.made, self.not);
        if m.n > 0 && n.n > 0 && m.min <= n.max && n.min <= m.max {
            // No threshold separates them (any more): start over from this.
            self.resets += 1;
            (self.made, self.not) = (Range::default(), Range::default());
            if made {
                self.made.add(x);
            } else {
                self.not.add(x);
            }
        }
    }

    /// The threshold and whether the call is made above it, once both
    /// sides have support.
    fn threshold(&self, min_observations: u32) -> Option<(f64, bool)> {
        let (m, n) = (self.made, self.not);
        if m.n < min_observations || n.n < min_observations {
            return None;
        }
        if m.min > n.max {
            Some(((m.min + n.max) / 2.0, true))
        } else if m.max < n.min {
            Some(((m.max + n.min) / 2.0, false))
        } else {
            None
        }
    }
}

/// What a gate has learned of one call of a route.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Gate {
    /// Recent contexts of the route, newest in bit 0 (1: the call was made).
    presence: u32,
    seen: u8,
    tests: Vec<Test>,
    splits: Vec<Split>,
}

/// What decides a call, for `/debug/model`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub feature: Feature,
    /// `= "value"`, `> 12.5` or `< 12.5`.
    pub test: String,
    /// The call is made when the test holds (or when it does not).
    pub made_when: bool,
    pub support: u32,
}

impl Gate {
    /// Whether the call was left out in a recent context: only then is
    /// there anything to decide.
    fn varies(&self) -> bool {
        let recent = u32::from(self.seen.min(32));
        let mask = if recent >= 32 {
            u32::MAX
        } else {
            (1u32 << recent) - 1
        };
        (self.presence & mask).count_ones() < recent
    }

    /// Learns from one context of the route: whether the call was `made`,
    /// with what the context held before it (`avail`). `candidates` gives
    /// the context's features when the gate looks for new ones.
    pub fn observe(
        &mut self,
        made: bool,
        avail: &Available<'_>,
        candidates: &mut dyn FnMut() -> Vec<(Feature, Option<String>)>,
        min_observations: u32,
    ) {
        self.presence = (self.presence << 1) | u32::from(made);
        self.seen = self.seen.saturating_add(1).min(32);
        if !self.varies() {
            return;
        }
        // Several tests read one feature: read each once.
        let mut readings: HashMap<Feature, Option<Option<String>>> = HashMap::new();
        for test in &mut self.tests {
            let reading = match readings.get(&test.feature) {
                Some(r) => r.clone(),
                None => {
                    let r = test.feature.read(avail);
                    readings.insert(test.feature.clone(), r.clone());
                    r
                }
            };
            if let Some(value) = reading {
                test.record(value == test.value, made);
            }
        }
        for split in &mut self.splits {
            if let Some(Some(x)) = split.feature.read(avail) {
                if let Ok(x) = x.parse::<f64>() {
                    if x.is_finite() {
                        split.record(x, made);
                    }
                }
            }
        }
        if self.settled(min_observations) {
            return;
        }
        let mut found = candidates();
        found.sort_by_key(|(f, v)| f.priority(v.as_deref()));
        for (feature, value) in found {
            let numeric = value
                .as_deref()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|x| x.is_finite());
            if let Some(x) = numeric {
                self.admit_split(&feature, x, made);
            }
            if !matches!(feature, Feature::Length { .. }) {
                self.admit_test(feature, value, made);
            }
        }
    }

    /// A decision that has held in each of its last 32 contexts: no
    /// need to look for others.
    fn settled(&self, min_observations: u32) -> bool {
        self.tests
            .iter()
            .any(|t| t.seen >= 32 && (t.agreed == u32::MAX || t.agreed == 0))
            && self.decision(min_observations).is_some()
    }

    fn admit_test(&mut self, feature: Feature, value: Option<String>, made: bool) {
        if self
            .tests
            .iter()
            .any(|t| t.feature == feature && t.value == value)
        {
            return;
        }
        if self.tests.len() >= MAX_TESTS {
            // Room only from a test that has failed to decide.
            let weakest = self
                .tests
                .iter()
                .enumerate()
                .filter(|(_, t)| t.seen >= 2 && t.polarity().is_none())
                .min_by_key(|(_, t)| t.counts.iter().sum::<u32>());
            match weakest {
                Some((i, _)) => {
                    self.tests.swap_remove(i);
                }
                None => return,
            }
        }
        let mut test = Test {
            feature,
            value,
            counts: [0; 4],
            agreed: 0,
            seen: 0,
        };
        // Admitted from this context, where it holds.
        test.record(true, made);
        self.tests.push(test);
    }

    fn admit_split(&mut self, feature: &Feature, x: f64, made: bool) {
        if self.splits.iter().any(|s| &s.feature == feature) {
            return;
        }
        if self.splits.len() >= MAX_SPLITS {
            let worst = self
                .splits
                .iter()
                .enumerate()
                .filter(|(_, s)| s.resets > 0)
                .max_by_key(|(_, s)| s.resets);
            match worst {
                Some((i, _)) => {
                    self.splits.swap_remove(i);
                }
                None => return,
            }
        }
        let mut split = Split {
            feature: feature.clone(),
            made: Range::default(),
            not: Range::default(),
            resets: 0,
        };
        split.record(x, made);
        self.splits.push(split);
    }

    /// The probability the call is made in `avail`, when a trusted test or
    /// split can tell; `None` when none can (yet).
    pub fn decide(&self, avail: &Available<'_>, min_observations: u32) -> Option<f64> {
        match self.best(min_observations)? {
            Best::Test(t) => {
                let value = t.feature.read(avail)?;
                Some(t.probability(value == t.value))
            }
            Best::Split(s, threshold, above) => {
                let x: f64 = t_number(s.feature.read(avail)?)?;
                Some(if (x > threshold) == above { 1.0 } else { 0.0 })
            }
        }
    }

    fn best(&self, min_observations: u32) -> Option<Best<'_>> {
        if !self.varies() {
            return None;
        }
        let test = self
            .tests
            .iter()
            .filter_map(|t| Some((t.strength(min_observations)?, t)))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| rank(b.1).cmp(&rank(a.1))));
        let split = self
            .splits
            .iter()
            .filter_map(|s| {
                let (t, above) = s.threshold(min_observations)?;
                Some((s.made.n.min(s.not.n), s, t, above))
            })
            .max_by_key(|(support, ..)| *support);
        match (test, split) {
            (Some((ts, _)), Some((ss, s, th, above))) if ss > ts => Some(Best::Split(s, th, above)),
            (Some((_, t)), _) => Some(Best::Test(t)),
            (None, Some((_, s, th, above))) => Some(Best::Split(s, th, above)),
            (None, None) => None,
        }
    }

    /// What decides the call now, if anything does.
    pub fn decision(&self, min_observations: u32) -> Option<Decision> {
        Some(match self.best(min_observations)? {
            Best::Test(t) => {
                let [tt, tf, ft, ff] = t.counts;
                let made_when = t.polarity() == Some(true);
                Decision {
                    feature: t.feature.clone(),
                    test: match &t.value {
                        Some(v) => format!("= {v:?}"),
                        None => "absent".to_string(),
                    },
                    made_when,
                    support: if made_when { tt + ff } else { tf + ft },
                }
            }
            Best::Split(s, threshold, above) => Decision {
                feature: s.feature.clone(),
                test: format!("> {threshold}"),
                made_when: above,
                support: s.made.n + s.not.n,
            },
        })
    }

    pub fn memory_bytes(&self) -> usize {
        48 + self.tests.len() * 160 + self.splits.len() * 160
    }
}

enum Best<'a> {
    Test(&'a Test),
    /// The split, its threshold, and whether the call is made above it.
    Split(&'a Split, f64, bool),
}

/// Between equally supported tests, the simplest: a status or a list's
/// contents before a field's value.
fn rank(t: &Test) -> u8 {
    t.feature.priority(t.value.as_deref())
}

fn t_number(value: Option<String>) -> Option<f64> {
    value?.parse::<f64>().ok().filter(|x| x.is_finite())
}

#[cfg(test)]
mod tests;
