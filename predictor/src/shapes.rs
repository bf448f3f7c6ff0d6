//! Call shapes: a dependency, a method, a path template and the query keys,
//! with the parts that vary taken out as slots. Shapes are learned: a path
//! segment is a slot when it looks like an identifier (number, UUID, hex,
//! long token) or when, under the same prefix, it has taken many distinct
//! values (`/users/alice`, `/users/bob`, …).

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::headers::KeyHeaders;
use crate::json;
use crate::lru::Lru;
use crate::observation::Request;
use crate::shape::is_identifier;

/// A shape's number in its [`Shapes`] table; never reused for another
/// shape while the table lives (an evicted shape's number stays unknown).
pub type ShapeId = u32;

/// Shapes kept by default; past it, the least recently seen are forgotten.
pub const DEFAULT_MAX_SHAPES: usize = 10_000;

/// Path positions (a prefix under which segments are counted) kept per
/// shape allowed.
const POSITIONS_PER_SHAPE: usize = 4;

/// Headers that matter recorded per shape at most; a call with another is
/// still proxied, it is only never predicted.
const MAX_HEADERS_PER_SHAPE: usize = 32;

/// Distinct values under one prefix that make a position a slot.
const DISTINCT_FOR_SLOT: usize = 8;

/// Inbound values shorter than this do not make a segment a slot by
/// equality (too likely to match by chance: `v1`, `en`).
const MIN_CARRIED: usize = 3;

/// The text of a path slot in a template.
pub const SLOT: &str = "{}";

/// What a call looks like with its varying parts taken out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Shape {
    pub dependency: String,
    pub method: String,
    /// The path with slots as `{}`.
    pub template: String,
    /// Query keys, sorted and deduplicated (their values are slots).
    pub query_keys: Vec<String>,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.dependency, self.method, self.template)?;
        if !self.query_keys.is_empty() {
            write!(f, "?{}", self.query_keys.join("&"))?;
        }
        Ok(())
    }
}

/// One varying part of a call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Slot {
    /// The path segment at this index (0 is the first after `/`).
    Path(usize),
    /// The value of this query key.
    Query(String),
    /// This header's value, or its absence.
    Header(String),
    /// The JSON request body's field at this pointer.
    Body(String),
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Path(i) => write!(f, "path[{i}]"),
            Slot::Query(k) => write!(f, "query.{k}"),
            Slot::Header(h) => write!(f, "header.{h}"),
            Slot::Body(p) => write!(f, "body{p}"),
        }
    }
}

impl Slot {
    /// The slot's value in `req`: `None` for an absent header or query key.
    pub fn value_in(&self, req: &Request) -> Option<String> {
        match self {
            Slot::Path(i) => req.segments().nth(*i).map(str::to_string),
            Slot::Query(k) => req
                .query_pairs()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.to_string()),
            Slot::Header(h) => req.header(h).map(str::to_string),
            Slot::Body(p) => req
                .body
                .as_ref()
                .and_then(|b| b.pointer(p))
                .and_then(json::scalar_text),
        }
    }
}

/// What is known about one shape beyond its key.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeInfo {
    pub shape: Shape,
    /// Query keys in the order calls last sent them.
    pub query_order: Vec<String>,
    /// Headers that matter and were seen on this shape.
    pub headers: Vec<String>,
    /// The JSON body calls of this shape last sent: its scalar fields are
    /// slots, and a prediction fills them in.
    pub body: Option<Value>,
}

impl ShapeInfo {
    pub fn slots(&self) -> Vec<Slot> {
        let mut slots: Vec<Slot> = self
            .shape
            .template
            .strip_prefix('/')
            .unwrap_or(&self.shape.template)
            .split('/')
            .enumerate()
            .filter(|(_, s)| *s == SLOT)
            .map(|(i, _)| Slot::Path(i))
            .collect();
        slots.extend(self.query_order.iter().cloned().map(Slot::Query));
        slots.extend(self.headers.iter().cloned().map(Slot::Header));
        if let Some(body) = &self.body {
            let mut pointers = Pointers(Vec::new());
            json::walk(body, 16, MAX_BODY_SLOTS, &mut pointers);
            slots.extend(pointers.0.into_iter().map(Slot::Body));
        }
        slots
    }

    /// The body template with each field at a slot's pointer replaced by
    /// its value, keeping the template's type where the value fits it.
    pub fn fill_body(&self, values: &[(String, String)]) -> Option<Value> {
        let mut body = self.body.clone()?;
        for (pointer, text) in values {
            if let Some(field) = body.pointer_mut(pointer) {
                *field = typed_like(field, text);
            }
        }
        Some(body)
    }
}

/// A path's template: each segment that looks like an identifier, or that
/// `learned` says varies under its prefix, becomes [`SLOT`].
fn template_with(path: &str, mut learned: impl FnMut(&str, &str) -> bool) -> String {
    let mut prefix = String::new();
    for segment in path.strip_prefix('/').unwrap_or(path).split('/') {
        let slot = learned(&prefix, segment) || is_identifier(segment);
        prefix.push('/');
        prefix.push_str(if slot { SLOT } else { segment });
    }
    if prefix.is_empty() {
        "/".into()
    } else {
        prefix
    }
}

/// Body fields that become slots, at most this many per shape.
const MAX_BODY_SLOTS: usize = 64;

struct Pointers(Vec<String>);

impl json::Visitor for Pointers {
    fn leaf(&mut self, pointer: &str, _: &Value) {
        self.0.push(pointer.to_string());
    }
}

/// `text` as a JSON value of the same type as `like` when it parses as one.
fn typed_like(like: &Value, text: &str) -> Value {
    match like {
        Value::Number(_) | Value::Bool(_) | Value::Null => serde_json::from_str::<Value>(text)
            .ok()
            .filter(|v| !v.is_string() && !v.is_object() && !v.is_array())
            .unwrap_or_else(|| Value::String(text.to_string())),
        _ => Value::String(text.to_string()),
    }
}

#[derive(Debug, Default, Clone)]
struct Position {
    distinct: HashSet<String>,
    slot: bool,
}

/// Every shape seen recently, and what was learned about which segments
/// vary; both bounded, forgetting the least recently seen.
#[derive(Debug, Clone)]
pub struct Shapes {
    ids: HashMap<Shape, ShapeId>,
    infos: Lru<ShapeId, ShapeInfo>,
    next_id: ShapeId,
    /// Shapes evicted and not yet [taken](Self::take_evicted).
    gone: Vec<ShapeId>,
    /// Per (dependency, method, prefix template): values seen.
    positions: Lru<(String, String, String), Position>,
    /// Which request headers are part of a shape.
    key_headers: KeyHeaders,
}

impl Default for Shapes {
    fn default() -> Self {
        Self::new(KeyHeaders::default(), DEFAULT_MAX_SHAPES)
    }
}

impl Shapes {
    /// A table of at most `max_shapes` shapes.
    pub fn new(key_headers: KeyHeaders, max_shapes: usize) -> Self {
        Self {
            ids: HashMap::new(),
            infos: Lru::new(max_shapes),
            next_id: 0,
            gone: Vec::new(),
            positions: Lru::new(max_shapes.saturating_mul(POSITIONS_PER_SHAPE)),
            key_headers,
        }
    }

    pub fn info(&self, id: ShapeId) -> Option<&ShapeInfo> {
        self.infos.get(&id)
    }

    /// Shapes and path positions forgotten to stay within bounds.
    pub fn evicted(&self) -> (u64, u64) {
        (self.infos.evicted(), self.positions.evicted())
    }

    /// The shapes evicted since the last call: their ids name nothing now.
    pub fn take_evicted(&mut self) -> Vec<ShapeId> {
        std::mem::take(&mut self.gone)
    }

    /// The number the next new shape gets: a classification that returns
    /// one at least this large made a new shape.
    pub fn next_id(&self) -> ShapeId {
        self.next_id
    }

    pub fn len(&self) -> usize {
        self.infos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// The shape of a call, learning from it when `learn` is set.
    pub fn classify(&mut self, dependency: &str, req: &Request, learn: bool) -> ShapeId {
        self.classify_with(dependency, req, learn, &[])
    }

    /// The shape of a call made for `inbound`, learning from it: a path
    /// segment equal to a value the inbound request carried (a path
    /// segment, a query value, a header) varies with it, so it is a slot at
    /// once rather than after eight distinct values — a user name
    /// taken from an `x-user` header is a parameter, not a name.
    pub fn classify_for(&mut self, dependency: &str, req: &Request, inbound: &Request) -> ShapeId {
        let mut values: Vec<&str> = inbound.segments().collect();
        values.extend(inbound.query_pairs().map(|(_, v)| v));
        values.extend(inbound.headers.iter().map(|(_, v)| v.as_str()));
        values.retain(|v| v.len() >= MIN_CARRIED);
        self.classify_with(dependency, req, true, &values)
    }

    fn classify_with(
        &mut self,
        dependency: &str,
        req: &Request,
        learn: bool,
        carried: &[&str],
    ) -> ShapeId {
        let template = self.template(dependency, &req.method, &req.path, learn, carried);
        let mut query_order: Vec<String> = Vec::new();
        for (k, _) in req.query_pairs() {
            if !query_order.iter().any(|q| q == k) {
                query_order.push(k.to_string());
            }
        }
        let mut query_keys = query_order.clone();
        query_keys.sort();
        let shape = Shape {
            dependency: dependency.to_string(),
            method: req.method.clone(),
            template,
            query_keys,
        };
        let seen: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| self.key_headers.matters(n))
            .map(|(n, _)| n.clone())
            .collect();
        let id = match self.ids.get(&shape) {
            Some(id) => *id,
            None => {
                let id = self.next_id;
                // `ShapeId::MAX` marks a context's start in sequences.
                self.next_id = self.next_id.wrapping_add(1) % ShapeId::MAX;
                self.ids.insert(shape.clone(), id);
                let mut evicted = Vec::new();
                self.infos.get_or_insert_with(
                    id,
                    || ShapeInfo {
                        shape,
                        query_order: query_order.clone(),
                        headers: Vec::new(),
                        body: None,
                    },
                    &mut evicted,
                );
                for (gone, info) in evicted {
                    self.ids.remove(&info.shape);
                    self.gone.push(gone);
                }
                id
            }
        };
        if learn {
            if let Some(info) = self.infos.get_mut(&id) {
                info.query_order = query_order;
                info.body = req
                    .body
                    .as_deref()
                    .filter(|b| b.is_object() || b.is_array())
                    .cloned();
                for h in seen {
                    if !info.headers.contains(&h) && info.headers.len() < MAX_HEADERS_PER_SHAPE {
                        info.headers.push(h);
                        info.headers.sort();
                    }
                }
            }
        }
        id
    }

    /// The shape a call would have, without learning from it.
    pub fn lookup(&self, dependency: &str, req: &Request) -> Option<ShapeId> {
        let template = self.template_known(dependency, &req.method, &req.path);
        let mut query_keys: Vec<String> = req.query_pairs().map(|(k, _)| k.to_string()).collect();
        query_keys.sort();
        query_keys.dedup();
        self.ids
            .get(&Shape {
                dependency: dependency.to_string(),
                method: req.method.clone(),
                template,
                query_keys,
            })
            .copied()
    }

    fn template(
        &mut self,
        dependency: &str,
        method: &str,
        path: &str,
        learn: bool,
        carried: &[&str],
    ) -> String {
        if !learn {
            return self.template_known(dependency, method, path);
        }
        template_with(path, |prefix, segment| {
            let key = (
                dependency.to_string(),
                method.to_string(),
                prefix.to_string(),
            );
            let pos = self
                .positions
                .get_or_insert_with(key, Position::default, &mut Vec::new());
            if !pos.slot && carried.contains(&segment) {
                pos.slot = true;
                pos.distinct.clear();
            }
            if !pos.slot && pos.distinct.len() < DISTINCT_FOR_SLOT {
                pos.distinct.insert(segment.to_string());
                if pos.distinct.len() >= DISTINCT_FOR_SLOT {
                    pos.slot = true;
                    pos.distinct.clear();
                }
            }
            pos.slot
        })
    }

    fn template_known(&self, dependency: &str, method: &str, path: &str) -> String {
        template_with(path, |prefix, _| {
            let key = (
                dependency.to_string(),
                method.to_string(),
                prefix.to_string(),
            );
            self.positions.get(&key).is_some_and(|p| p.slot)
        })
    }

    /// Fills a template's slots, in order, with `values`.
    pub fn fill(template: &str, values: &[(usize, String)]) -> String {
        let mut out = String::new();
        for (i, segment) in template
            .strip_prefix('/')
            .unwrap_or(template)
            .split('/')
            .enumerate()
        {
            out.push('/');
            match values.iter().find(|(p, _)| *p == i) {
                Some((_, v)) if segment == SLOT => out.push_str(v),
                _ => out.push_str(segment),
            }
        }
        out
    }

    /// Rough bytes held, for reporting.
    pub fn memory_bytes(&self) -> usize {
        let infos: usize = self
            .infos
            .values()
            .map(|i| 128 + i.shape.template.len() * 2 + i.shape.dependency.len() * 2)
            .sum();
        let positions: usize = self
            .positions
            .iter()
            .map(|(k, p)| 96 + k.2.len() + p.distinct.iter().map(|d| d.len() + 32).sum::<usize>())
            .sum();
        infos + positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        Request {
            method: "GET".into(),
            path,
            query,
            ..Request::default()
        }
    }

    #[test]
    fn identifiers_are_slots_at_once() {
        let mut s = Shapes::default();
        let a = s.classify("users", &get("/users/42"), true);
        let b = s.classify("users", &get("/users/7"), true);
        assert_eq!(a, b);
        assert_eq!(s.info(a).unwrap().shape.template, "/users/{}");
    }

    #[test]
    fn names_become_slots_once_they_vary_enough() {
        let mut s = Shapes::default();
        let names = [
            "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
        ];
        let ids: Vec<_> = names
            .iter()
            .map(|n| s.classify("u", &get(&format!("/users/{n}")), true))
            .collect();
        assert_ne!(ids[0], ids[1], "two names are two endpoints");
        assert_eq!(s.info(ids[8]).unwrap().shape.template, "/users/{}");
        assert_eq!(s.lookup("u", &get("/users/zoe")), Some(ids[8]));
        // A few endpoint names under one prefix stay names.
        for n in ["profile", "settings", "avatar"] {
            let id = s.classify("u", &get(&format!("/me/{n}")), true);
            assert_eq!(s.info(id).unwrap().shape.template, format!("/me/{n}"));
        }
    }

    #[test]
    fn query_keys_are_part_of_the_shape_and_values_are_slots() {
        let mut s = Shapes::default();
        let a = s.classify("p", &get("/posts?user=1&limit=10"), true);
        let b = s.classify("p", &get("/posts?limit=5&user=2"), true);
        let c = s.classify("p", &get("/posts?user=3"), true);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let slots = s.info(a).unwrap().slots();
        assert_eq!(
            slots,
            [Slot::Query("limit".into()), Slot::Query("user".into())]
        );
        assert_eq!(
            Slot::Query("user".into()).value_in(&get("/posts?user=3")),
            Some("3".into())
        );
    }

    #[test]
    fn templates_fill_back() {
        assert_eq!(
            Shapes::fill("/users/{}/posts/{}", &[(1, "7".into()), (3, "9".into())]),
            "/users/7/posts/9"
        );
    }

    #[test]
    fn a_segment_the_inbound_request_carried_is_a_slot_at_once() {
        let mut s = Shapes::default();
        let inbound = |user: &str| Request {
            method: "GET".into(),
            path: "/me".into(),
            headers: vec![("x-user".into(), user.into())],
            ..Request::default()
        };
        let alice = s.classify_for("accounts", &get("/accounts/alice"), &inbound("alice"));
        let bob = s.classify_for("accounts", &get("/accounts/bob"), &inbound("bob"));
        assert_eq!(alice, bob, "one shape, the user a slot");
        assert_eq!(s.info(alice).unwrap().shape.template, "/accounts/{}");
        // A constant segment that the inbound request does not carry stays.
        let settings = s.classify_for("accounts", &get("/settings/alice"), &inbound("bob"));
        assert_eq!(s.info(settings).unwrap().shape.template, "/settings/alice");
    }
}
