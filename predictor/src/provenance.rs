//! Parameter provenance: for every slot of a call, where its value comes
//! from — a constant, a field of the inbound request, or a field of an
//! earlier response in the same context — learned by counting which
//! candidate sources held the slot's value, context after context.
//!
//! Values may also be computed: the field of the first element of a list
//! whose flag is set ([`Source::Select`]), a value with constant text
//! around it (`"user-" + id`) or written as another number (`7` as `007`)
//! ([`Source::Computed`]).

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::headers;
use crate::json::{self, escape, scalar_text as scalar};
use crate::observation::{Context, Request};
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
    /// `field` of the first element of the array at `array` (a JSON
    /// pointer) in the response to the `occurrence`-th call of `shape`
    /// whose `key` is `value`: the id of the first item with its flag set.
    Select {
        shape: ShapeId,
        occurrence: u32,
        array: String,
        key: String,
        value: String,
        field: String,
    },
    /// Another source's value written as `number` says (when given), with
    /// `prefix` before it and `suffix` after it.
    Computed {
        base: Box<Source>,
        prefix: String,
        suffix: String,
        number: Option<Number>,
    },
}

/// How a number is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Number {
    /// An integer, zero-padded to this many digits.
    Padded(u8),
    /// With this many decimals.
    Decimals(u8),
}

impl Number {
    /// `text` (a number) written this way; `None` if it is no number.
    fn write(self, text: &str) -> Option<String> {
        match self {
            Number::Padded(width) => {
                let n: i64 = text.parse().ok()?;
                Some(format!("{n:0width$}", width = usize::from(width)))
            }
            Number::Decimals(places) => {
                let x: f64 = text.parse().ok()?;
                x.is_finite()
                    .then(|| format!("{x:.places$}", places = usize::from(places)))
            }
        }
    }

    /// How `written` writes the number `plain` holds, if it is the same
    /// number written otherwise.
    fn between(plain: &str, written: &str) -> Option<Number> {
        if plain == written {
            return None;
        }
        let (a, b): (f64, f64) = (plain.parse().ok()?, written.parse().ok()?);
        if a != b || !b.is_finite() {
            return None;
        }
        let number = match written.split_once('.') {
            Some((_, decimals)) => Number::Decimals(u8::try_from(decimals.len()).ok()?),
            None if written.starts_with('0') && written.len() > 1 => {
                Number::Padded(u8::try_from(written.len()).ok()?)
            }
            None if plain.contains('.') => Number::Decimals(0),
            None => return None,
        };
        (number.write(plain).as_deref() == Some(written)).then_some(number)
    }
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
            Source::Select {
                shape,
                occurrence,
                array,
                key,
                value,
                field,
            } => write!(
                f,
                "response of shape {shape}#{occurrence} {array}: {field:?} of the first element whose {key:?} is {value:?}"
            ),
            Source::Computed {
                base,
                prefix,
                suffix,
                number,
            } => {
                write!(f, "{prefix:?} + {base}")?;
                match number {
                    Some(Number::Padded(w)) => write!(f, " padded to {w} digits")?,
                    Some(Number::Decimals(d)) => write!(f, " with {d} decimals")?,
                    None => {}
                }
                if !suffix.is_empty() {
                    write!(f, " + {suffix:?}")?;
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
            Source::Response { .. } | Source::Select { .. } => 1,
            Source::Computed { .. } => 2,
            Source::Const(_) => 3,
        }
    }
}

/// What a context has made available at some moment: its inbound request,
/// and the responses that have arrived, by (shape, occurrence).
#[derive(Debug, Default)]
pub struct Available<'a> {
    pub inbound: Option<&'a Request>,
    pub responses: Vec<(ShapeId, u32, &'a Value)>,
    /// The statuses of the calls that have been answered.
    pub statuses: Vec<(ShapeId, u32, u16)>,
}

impl<'a> Available<'a> {
    /// What `ctx` holds of its calls that `include` takes (by index; `ids`
    /// and `occurrences` name each call), with its inbound request.
    pub fn of(
        ctx: &'a Context,
        ids: &[ShapeId],
        occurrences: &[u32],
        include: impl Fn(usize) -> bool,
    ) -> Self {
        Available {
            inbound: Some(&ctx.inbound),
            responses: ctx
                .calls
                .iter()
                .enumerate()
                .filter(|(i, _)| include(*i))
                .filter_map(|(i, c)| Some((ids[i], occurrences[i], c.response.as_deref()?)))
                .collect(),
            statuses: ctx
                .calls
                .iter()
                .enumerate()
                .filter(|(i, c)| c.status != 0 && include(*i))
                .map(|(i, c)| (ids[i], occurrences[i], c.status))
                .collect(),
        }
    }

    /// What `ctx` held when its `t`-th call started: the calls before it
    /// that had been answered by then (every call, for `t` past the last).
    pub fn before(ctx: &'a Context, ids: &[ShapeId], occurrences: &[u32], t: usize) -> Self {
        match ctx.calls.get(t) {
            Some(call) => Self::of(ctx, ids, occurrences, |i| {
                i < t && ctx.calls[i].end_us() <= call.start_us
            }),
            None => Self::of(ctx, ids, occurrences, |_| true),
        }
    }
}

/// A source's value in a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The value (or its absence).
    Value(Option<String>),
    /// The source has not arrived (yet).
    Unavailable,
}

/// `field` of the first element of the array at `array` whose `key` is
/// `value`.
fn select(root: &Value, array: &str, key: &str, value: &str, field: &str) -> Option<String> {
    root.pointer(array)?
        .as_array()?
        .iter()
        .find(|item| item.get(key).and_then(scalar).as_deref() == Some(value))?
        .get(field)
        .and_then(scalar)
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
            Source::Select {
                shape,
                occurrence,
                array,
                key,
                value,
                field,
            } => self
                .responses
                .iter()
                .find(|(s, o, _)| s == shape && o == occurrence)
                .map_or(Resolved::Unavailable, |(_, _, body)| {
                    Resolved::Value(select(body, array, key, value, field))
                }),
            Source::Computed {
                base,
                prefix,
                suffix,
                number,
            } => match self.resolve(base) {
                Resolved::Value(Some(text)) => {
                    let text = match number {
                        Some(n) => n.write(&text),
                        None => Some(text),
                    };
                    Resolved::Value(text.map(|t| format!("{prefix}{t}{suffix}")))
                }
                other => other,
            },
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
            let mut selects = Selects {
                budget: MAX_SELECTS,
                found: &mut |array: &str, key: &str, value: &str, field: &str, text: String| {
                    add(
                        text,
                        Source::Select {
                            shape: *shape,
                            occurrence: *occurrence,
                            array: array.to_string(),
                            key: key.to_string(),
                            value: value.to_string(),
                            field: field.to_string(),
                        },
                    )
                },
            };
            json::walk(body, 8, max_leaves, &mut selects);
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

/// Select sources offered per document at most.
const MAX_SELECTS: usize = 256;

/// Distinct values a key may take in a list for it to select by.
const MAX_SELECT_VALUES: usize = 4;

/// Finds, in every list of objects, the fields of the first element of
/// each value of a key that takes few values (a flag, a state).
struct Selects<'f> {
    budget: usize,
    found: &'f mut dyn FnMut(&str, &str, &str, &str, String),
}

impl json::Visitor for Selects<'_> {
    fn leaf(&mut self, _: &str, _: &Value) {}

    fn array(&mut self, pointer: &str, items: &[Value]) {
        let Some(Value::Object(first)) = items.first() else {
            return;
        };
        for key in first.keys().take(16) {
            let mut values: Vec<String> = Vec::new();
            for item in items {
                let Some(v) = item.get(key).and_then(scalar) else {
                    values.clear();
                    break;
                };
                if v.len() <= 16 && !values.contains(&v) {
                    values.push(v);
                }
                if values.len() > MAX_SELECT_VALUES {
                    break;
                }
            }
            if values.is_empty() || values.len() > MAX_SELECT_VALUES {
                continue;
            }
            for value in &values {
                let Some(Value::Object(chosen)) = items
                    .iter()
                    .find(|i| i.get(key).and_then(scalar).as_ref() == Some(value))
                else {
                    continue;
                };
                for (field, v) in chosen.iter().take(16) {
                    if field == key {
                        continue;
                    }
                    let Some(text) = scalar(v) else { continue };
                    if self.budget == 0 {
                        return;
                    }
                    self.budget -= 1;
                    (self.found)(pointer, key, value, field, text);
                }
            }
        }
    }
}

/// Sources that compute `actual` from a value the context holds: the value
/// with constant text around it, or the same number written otherwise
/// (every source of such a value: the item at a position and the first
/// item with a flag may hold the same one here and not in the next
/// context). At most `max`, longest values first.
fn computed(actual: &str, index: &HashMap<String, Vec<Source>>, max: usize) -> Vec<Source> {
    let mut found: Vec<(usize, Source)> = Vec::new();
    let core = number_in(actual);
    for (value, sources) in index {
        if let Some((start, end)) = core {
            if let Some(number) = Number::between(value, &actual[start..end]) {
                for base in sources {
                    found.push((
                        value.len(),
                        Source::Computed {
                            base: Box::new(base.clone()),
                            prefix: actual[..start].to_string(),
                            suffix: actual[end..].to_string(),
                            number: Some(number),
                        },
                    ));
                }
                continue;
            }
        }
        let numeric = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
        if value == actual || (value.len() < 2 && !numeric) {
            continue;
        }
        let Some(at) = actual.find(value.as_str()) else {
            continue;
        };
        let (prefix, suffix) = (&actual[..at], &actual[at + value.len()..]);
        // A number inside a longer number is a coincidence, not a part.
        let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        if numeric && (digit(prefix.chars().last()) || digit(suffix.chars().next())) {
            continue;
        }
        if suffix.contains(value.as_str()) {
            continue;
        }
        for base in sources {
            found.push((
                value.len(),
                Source::Computed {
                    base: Box::new(base.clone()),
                    prefix: prefix.to_string(),
                    suffix: suffix.to_string(),
                    number: None,
                },
            ));
        }
    }
    found.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.to_string().cmp(&b.1.to_string()))
    });
    found.into_iter().take(max).map(|(_, s)| s).collect()
}

/// Where the first number (digits, with a fraction if any) of `text` is.
fn number_in(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let start = bytes.iter().position(u8::is_ascii_digit)?;
    let mut end = start;
    while end < bytes.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    if end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit() {
        end += 1;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
    }
    Some((start, end))
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
            Some(v) => {
                let index = index.get();
                match index.get(v) {
                    Some(direct) => direct.clone(),
                    // Not a value the context holds: maybe one computed
                    // from one.
                    None => computed(v, index, 8),
                }
            }
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
            statuses: Vec::new(),
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
    fn the_first_element_with_a_flag_set_is_selected() {
        let body = json!({"items": [
            {"id": 4, "featured": false, "state": "new"},
            {"id": 7, "featured": true, "state": "old"},
            {"id": 9, "featured": true, "state": "new"}
        ]});
        assert_eq!(
            select(&body, "/items", "featured", "true", "id"),
            Some("7".into())
        );
        assert_eq!(
            select(&body, "/items", "state", "new", "id"),
            Some("4".into())
        );
        assert_eq!(select(&body, "/items", "featured", "maybe", "id"), None);
        let avail = Available {
            inbound: None,
            responses: vec![(3, 0, &body)],
            statuses: Vec::new(),
        };
        let featured = Source::Select {
            shape: 3,
            occurrence: 0,
            array: "/items".into(),
            key: "featured".into(),
            value: "true".into(),
            field: "id".into(),
        };
        assert!(avail.index(8, 1000)["7"].contains(&featured));
        assert_eq!(avail.resolve(&featured), Resolved::Value(Some("7".into())));
    }

    #[test]
    fn computed_values_are_found_and_written_back() {
        let body = json!({"user": 7, "price": 2.5, "code": "ab"});
        let avail = Available {
            inbound: None,
            responses: vec![(1, 0, &body)],
            statuses: Vec::new(),
        };
        let index = avail.index(8, 1000);
        for actual in ["user-7", "u7.json", "007", "2.50", "x-ab-y"] {
            let found = computed(actual, &index, 4);
            assert!(
                found
                    .iter()
                    .any(|s| avail.resolve(s) == Resolved::Value(Some(actual.into()))),
                "{actual}: {found:?}"
            );
        }
        // 7 inside 17 is not the user.
        assert!(computed("17", &index, 4).is_empty());
        assert_eq!(Number::between("7", "007"), Some(Number::Padded(3)));
        assert_eq!(Number::between("2.5", "2.50"), Some(Number::Decimals(2)));
        assert_eq!(Number::between("7", "8"), None);
        assert_eq!(Number::between("7", "7"), None);
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
