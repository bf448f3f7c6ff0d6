//! Parameter provenance: for every slot of a call, where its value comes
//! from — a constant, a field of the inbound request, or a field of an
//! earlier response in the same context — learned by counting which
//! candidate sources held the slot's value, context after context.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::headers;
use crate::json::{self, escape, scalar_text as scalar};
use crate::observation::Request;
use crate::shapes::{ShapeId, Slot};

/// Where a slot's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Source {
    /// Always this value (`None`: the header or key is always absent).
    Const(Option<String>),
    /// A segment of the inbound path.
    InboundPath(usize),
    /// A query value of the inbound request.
    InboundQuery(String),
    /// A header of the inbound request (absent when it is absent).
    InboundHeader(String),
    /// A field of the inbound JSON body, by JSON pointer.
    InboundBody(String),
    /// A field of the response to the `occurrence`-th call of `shape`, by
    /// JSON pointer. A `*` in the pointer stands for every element of an
    /// array, joined with `join`.
    Response {
        shape: ShapeId,
        occurrence: u32,
        pointer: String,
        join: Option<Join>,
    },
}

/// How a list becomes one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Join {
    /// `1,2,3`
    Comma,
    /// `1%2C2%2C3`, as a URL-encoding client sends it.
    EncodedComma,
}

impl Join {
    pub fn separator(self) -> &'static str {
        match self {
            Join::Comma => ",",
            Join::EncodedComma => "%2C",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Const(Some(v)) => write!(f, "const {v:?}"),
            Source::Const(None) => write!(f, "absent"),
            Source::InboundPath(i) => write!(f, "inbound path[{i}]"),
            Source::InboundQuery(k) => write!(f, "inbound query.{k}"),
            Source::InboundHeader(h) => write!(f, "inbound header.{h}"),
            Source::InboundBody(p) => write!(f, "inbound body{p}"),
            Source::Response {
                shape,
                occurrence,
                pointer,
                join,
            } => {
                write!(f, "response of shape {shape}#{occurrence} {pointer}")?;
                if let Some(j) = join {
                    write!(f, " joined by {:?}", j.separator())?;
                }
                Ok(())
            }
        }
    }
}

impl Source {
    /// Order of preference between equally trusted rules: values known
    /// earliest first, constants last (they do not generalize).
    fn rank(&self) -> u8 {
        match self {
            Source::InboundPath(_)
            | Source::InboundQuery(_)
            | Source::InboundHeader(_)
            | Source::InboundBody(_) => 0,
            Source::Response { .. } => 1,
            Source::Const(_) => 2,
        }
    }
}

/// What a context has made available at some moment: its inbound request,
/// and the responses that have arrived, by (shape, occurrence).
#[derive(Debug, Default)]
pub struct Available<'a> {
    pub inbound: Option<&'a Request>,
    pub responses: Vec<(ShapeId, u32, &'a Value)>,
}

/// A source's value in a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The value (or its absence).
    Value(Option<String>),
    /// The source has not arrived (yet).
    Unavailable,
}

/// Looks up a pointer with `*` wildcards, joining what the wildcard spans.
fn lookup(root: &Value, pointer: &str, join: Option<Join>) -> Option<String> {
    match (pointer.split_once("/*"), join) {
        (Some((array, rest)), Some(join)) => {
            let items = root.pointer(array)?.as_array()?;
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|item| {
                    if rest.is_empty() {
                        scalar(item)
                    } else {
                        item.pointer(rest).and_then(scalar)
                    }
                })
                .collect();
            Some(parts?.join(join.separator()))
        }
        (None, None) => root.pointer(pointer).and_then(scalar),
        _ => None,
    }
}

impl Available<'_> {
    pub fn resolve(&self, source: &Source) -> Resolved {
        let inbound = |f: &dyn Fn(&Request) -> Option<String>| match self.inbound {
            Some(req) => Resolved::Value(f(req)),
            None => Resolved::Unavailable,
        };
        match source {
            Source::Const(v) => Resolved::Value(v.clone()),
            Source::InboundPath(i) => inbound(&|r| r.segments().nth(*i).map(str::to_string)),
            Source::InboundQuery(k) => inbound(&|r| {
                r.query_pairs()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.to_string())
            }),
            Source::InboundHeader(h) => inbound(&|r| r.header(h).map(str::to_string)),
            Source::InboundBody(p) => {
                inbound(&|r| r.body.as_ref().and_then(|b| b.pointer(p)).and_then(scalar))
            }
            Source::Response {
                shape,
                occurrence,
                pointer,
                join,
            } => self
                .responses
                .iter()
                .find(|(s, o, _)| s == shape && o == occurrence)
                .map_or(Resolved::Unavailable, |(_, _, body)| {
                    Resolved::Value(lookup(body, pointer, *join))
                }),
        }
    }

    /// Every source with a value, by that value (at most `per_value`
    /// sources each, at most `max_leaves` leaves per JSON document).
    pub fn index(&self, per_value: usize, max_leaves: usize) -> HashMap<String, Vec<Source>> {
        let mut index: HashMap<String, Vec<Source>> = HashMap::new();
        let mut add = |value: String, source: Source| {
            let list = index.entry(value).or_default();
            if list.len() < per_value {
                list.push(source);
            }
        };
        if let Some(req) = self.inbound {
            for (i, s) in req.segments().enumerate() {
                add(s.to_string(), Source::InboundPath(i));
            }
            for (k, v) in req.query_pairs() {
                add(v.to_string(), Source::InboundQuery(k.to_string()));
            }
            for (h, v) in &req.headers {
                add(v.clone(), Source::InboundHeader(h.clone()));
            }
            if let Some(body) = &req.body {
                leaves(body, max_leaves, &mut |pointer, value, join| {
                    if join.is_none() {
                        add(value, Source::InboundBody(pointer));
                    }
                });
            }
        }
        for (shape, occurrence, body) in &self.responses {
            leaves(body, max_leaves, &mut |pointer, value, join| {
                add(
                    value,
                    Source::Response {
                        shape: *shape,
                        occurrence: *occurrence,
                        pointer,
                        join,
                    },
                )
            });
        }
        index
    }
}

/// Calls `f` with every scalar leaf (pointer, text) of `root`, and for each
/// array the joined forms of its scalars (`/a/*`) or of one field of its
/// objects (`/a/*/id`).
fn leaves(root: &Value, max: usize, f: &mut dyn FnMut(String, String, Option<Join>)) {
    json::walk(root, 8, max, &mut Leaves(f));
}

struct Leaves<'f>(&'f mut dyn FnMut(String, String, Option<Join>));

impl json::Visitor for Leaves<'_> {
    fn leaf(&mut self, pointer: &str, value: &Value) {
        if let Some(text) = scalar(value) {
            (self.0)(pointer.to_string(), text, None);
        }
    }

    fn array(&mut self, pointer: &str, items: &[Value]) {
        if items.is_empty() {
            return;
        }
        let mut emit = |suffix: String, parts: Vec<String>| {
            for join in [Join::Comma, Join::EncodedComma] {
                (self.0)(
                    format!("{pointer}/*{suffix}"),
                    parts.join(join.separator()),
                    Some(join),
                );
            }
        };
        if let Some(parts) = items.iter().map(scalar).collect::<Option<Vec<_>>>() {
            emit(String::new(), parts);
        } else if let Some(Value::Object(first)) = items.first() {
            for key in first.keys().take(16) {
                let parts: Option<Vec<String>> =
                    items.iter().map(|i| i.get(key).and_then(scalar)).collect();
                if let Some(parts) = parts {
                    emit(format!("/{}", escape(key)), parts);
                }
            }
        }
    }
}

/// The sources of a context by value ([`Available::index`]), built the
/// first time a slot looks for new sources: a slot whose rule has held
/// every time lately looks for none, so a settled route builds none.
#[derive(Debug)]
pub struct Index<'a> {
    avail: &'a Available<'a>,
    max_leaves: usize,
    built: Option<HashMap<String, Vec<Source>>>,
}

impl<'a> Index<'a> {
    pub fn new(avail: &'a Available<'a>, max_leaves: usize) -> Self {
        Self {
            avail,
            max_leaves,
            built: None,
        }
    }

    fn get(&mut self) -> &HashMap<String, Vec<Source>> {
        let (avail, max) = (self.avail, self.max_leaves);
        self.built.get_or_insert_with(|| avail.index(8, max))
    }
}

/// How one candidate rule has fared.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub source: Source,
    /// Contexts in which it held.
    pub support: u32,
    /// Its last outcomes, newest in bit 0 (1: held).
    outcomes: u16,
    /// How many outcomes `outcomes` holds (at most 16).
    seen: u8,
}

impl Rule {
    fn new(source: Source) -> Self {
        Self {
            source,
            support: 0,
            outcomes: 0,
            seen: 0,
        }
    }

    fn record(&mut self, held: bool) {
        self.outcomes = (self.outcomes << 1) | u16::from(held);
        self.seen = (self.seen + 1).min(16);
        if held {
            self.support += 1;
        }
    }

    /// Share of its recent outcomes that held.
    pub fn precision(&self) -> f64 {
        if self.seen == 0 {
            return 0.0;
        }
        let mask = if self.seen >= 16 {
            u16::MAX
        } else {
            (1u16 << self.seen) - 1
        };
        f64::from((self.outcomes & mask).count_ones()) / f64::from(self.seen)
    }

    /// Held in each of its last sixteen contexts.
    fn settled(&self) -> bool {
        self.seen >= 16 && self.outcomes == u16::MAX
    }

    /// Trusted: held in at least `min_observations` contexts, in each of the
    /// last few, and in nearly all of the last sixteen.
    pub fn trusted(&self, min_observations: u32) -> bool {
        let recent = u32::from(self.seen.min(4));
        let last = self.outcomes & ((1u16 << recent) - 1);
        self.support >= min_observations && last.count_ones() == recent && self.precision() >= 0.9
    }
}

/// Candidate rules kept per slot at most.
const RULES_PER_SLOT: usize = 12;

/// The rules of every slot of one (route, shape, occurrence).
#[derive(Debug, Default, Clone, Serialize)]
pub struct SlotRules {
    pub slots: Vec<(Slot, Vec<Rule>)>,
}

impl SlotRules {
    /// Scores each rule of `slot` against `actual` in `avail`, and adds the
    /// sources that hold now as new candidates, unless a rule has held in
    /// each of its last sixteen contexts (the first time one fails, the
    /// search for others starts again).
    pub fn observe(
        &mut self,
        slot: &Slot,
        actual: Option<String>,
        avail: &Available<'_>,
        index: &mut Index<'_>,
    ) {
        let pos = match self.slots.iter().position(|(s, _)| s == slot) {
            Some(p) => p,
            None => {
                self.slots.push((slot.clone(), Vec::new()));
                self.slots.len() - 1
            }
        };
        let rules = &mut self.slots[pos].1;
        for rule in rules.iter_mut() {
            let held = avail.resolve(&rule.source) == Resolved::Value(actual.clone());
            rule.record(held);
        }
        if rules.iter().any(Rule::settled) {
            return;
        }
        let credential = matches!(slot, Slot::Header(h) if headers::is_credential(h));
        let mut candidates: Vec<Source> = match &actual {
            Some(v) => index.get().get(v).cloned().unwrap_or_default(),
            None => Vec::new(),
        };
        // A credential is never learned as a constant: it would be kept.
        if !credential || actual.is_none() {
            candidates.push(Source::Const(actual.clone()));
        }
        for source in candidates {
            if rules.iter().any(|r| r.source == source) {
                continue;
            }
            let mut rule = Rule::new(source);
            rule.record(true);
            if rules.len() >= RULES_PER_SLOT {
                // Make room by dropping the weakest rule, if it is weaker.
                let weakest = rules.iter().enumerate().min_by(|a, b| {
                    a.1.precision()
                        .total_cmp(&b.1.precision())
                        .then(a.1.support.cmp(&b.1.support))
                });
                match weakest {
                    Some((i, w)) if w.precision() < 1.0 => {
                        rules.swap_remove(i);
                    }
                    _ => continue,
                }
            }
            rules.push(rule);
        }
    }

    /// The best trusted rule of each slot, or `None` if a slot has none.
    pub fn best<'a>(
        &'a self,
        slots: &'a [Slot],
        min_observations: u32,
    ) -> Option<Vec<(&'a Slot, &'a Source)>> {
        slots
            .iter()
            .map(|slot| {
                let (_, rules) = self.slots.iter().find(|(s, _)| s == slot)?;
                let best = rules
                    .iter()
                    .filter(|r| r.trusted(min_observations))
                    .min_by(|a, b| {
                        b.precision()
                            .total_cmp(&a.precision())
                            .then(a.source.rank().cmp(&b.source.rank()))
                            .then(b.support.cmp(&a.support))
                    })?;
                Some((slot, &best.source))
            })
            .collect()
    }

    pub fn memory_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|(_, rules)| 48 + rules.len() * 96)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_joins_and_numbers_resolve() {
        let body =
            json!({"hotels": [{"id": 7, "name": "a/b"}, {"id": 9, "name": "c"}], "first": "x"});
        assert_eq!(lookup(&body, "/hotels/0/id", None), Some("7".into()));
        assert_eq!(
            lookup(&body, "/hotels/*/id", Some(Join::Comma)),
            Some("7,9".into())
        );
        assert_eq!(
            lookup(&body, "/hotels/*/id", Some(Join::EncodedComma)),
            Some("7%2C9".into())
        );
        assert_eq!(lookup(&body, "/hotels", None), None);
        let avail = Available {
            inbound: None,
            responses: vec![(3, 0, &body)],
        };
        let index = avail.index(8, 1000);
        assert!(index["7,9"].contains(&Source::Response {
            shape: 3,
            occurrence: 0,
            pointer: "/hotels/*/id".into(),
            join: Some(Join::Comma)
        }));
        assert!(
            index["a/b"].iter().any(
                |s| matches!(s, Source::Response { pointer, .. } if pointer == "/hotels/0/name")
            )
        );
    }

    #[test]
    fn rules_earn_trust_and_lose_it() {
        let mut r = Rule::new(Source::InboundPath(0));
        for _ in 0..3 {
            r.record(true);
        }
        assert!(r.trusted(3));
        assert!(!r.trusted(4));
        r.record(false);
        assert!(!r.trusted(3), "a recent failure drops trust");
    }
}
