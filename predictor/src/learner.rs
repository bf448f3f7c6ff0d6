//! The learner: everything the predictor knows, fed with closed contexts
//! and asked, at any moment of a live context, which calls are coming —
//! fully written out, with how likely and how soon.

use std::collections::HashMap;

use serde::Serialize;

use crate::gate::{self, Gate};
use crate::headers::KeyHeaders;
use crate::lru::Lru;
use crate::observation::{Call, Context};
use crate::provenance::{Available, Index, Resolved, SlotRules};
use crate::sequence::{OnlineModel, OnlineSettings, SequenceModel, lookahead};
use crate::shapes::{ShapeId, Shapes, Slot};
use crate::timing::CallTiming;

/// How the learner behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Contexts in which a provenance rule must have held before it is used.
    pub min_observations: u32,
    /// Calls looked ahead at most.
    pub max_depth: usize,
    /// Paths less likely than this are not followed.
    pub min_path: f64,
    /// Occurrences of one shape per context that get their own rules.
    pub max_occurrences: u32,
    /// (shape, occurrence) entries per route at most; past it, the least
    /// recently seen are forgotten.
    pub max_entries_per_route: usize,
    /// Routes at most; past it, the least recently seen are forgotten.
    pub max_routes: usize,
    /// Call shapes at most; past it, the least recently seen are forgotten.
    pub max_shapes: usize,
    /// JSON leaves indexed per document at most.
    pub max_leaves: usize,
    /// The request headers that are part of a call's identity.
    pub key_headers: KeyHeaders,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_observations: 3,
            max_depth: 12,
            min_path: 0.02,
            max_occurrences: 32,
            max_entries_per_route: 512,
            max_routes: 1000,
            max_shapes: crate::shapes::DEFAULT_MAX_SHAPES,
            max_leaves: 2000,
            key_headers: KeyHeaders::default(),
        }
    }
}

/// A call the learner expects, written out in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub dependency: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The headers that matter, sorted by name.
    pub headers: Vec<(String, String)>,
    /// The JSON body, for calls that send one.
    pub body: Option<serde_json::Value>,
    pub probability: f64,
    /// Expected start, in microseconds from the inbound request's arrival.
    pub expected_start_us: u64,
    /// The start by which it has been made in nine contexts out of ten.
    pub start_p90_us: u64,
    /// Its latency: the median of its recent calls.
    pub expected_latency_us: u64,
    /// Its latency's 90th percentile.
    pub latency_p90_us: u64,
    pub shape: ShapeId,
    pub occurrence: u32,
}

impl Prediction {
    /// Whether `call` is exactly this request: method, path, query and the
    /// headers that matter (`key`).
    pub fn matches(&self, call: &Call, key: &KeyHeaders) -> bool {
        let req = &call.request;
        call.dependency == self.dependency
            && req.method == self.method
            && req.path == self.path
            && req.query.as_deref().filter(|q| !q.is_empty()) == self.query.as_deref()
            && key.select(&req.headers) == self.headers
            && req.body.as_deref() == self.body.as_ref()
    }
}

impl Prediction {
    /// Whether two predictions are the same request.
    pub fn matches_prediction(&self, other: &Prediction) -> bool {
        self.dependency == other.dependency
            && self.method == other.method
            && self.path == other.path
            && self.query == other.query
            && self.headers == other.headers
            && self.body == other.body
    }
}

/// What is known of one (shape, occurrence) of a route: where its
/// parameters come from and when it starts.
#[derive(Debug, Default, Clone)]
struct CallState {
    rules: SlotRules,
    timing: CallTiming,
    /// What decides whether the call is made, when it is not always.
    gate: Gate,
}

#[derive(Debug, Clone)]
struct RouteState {
    calls: Lru<(ShapeId, u32), CallState>,
}

/// What the learner forgot to stay within its bounds, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Evictions {
    pub routes: u64,
    pub shapes: u64,
    /// Path positions whose segment values were being counted.
    pub positions: u64,
    /// (shape, occurrence) entries of routes.
    pub calls: u64,
}

pub struct Learner {
    settings: Settings,
    shapes: Shapes,
    model: Box<dyn SequenceModel>,
    routes: Lru<String, RouteState>,
    /// Entries of evicted routes, which their maps no longer count.
    calls_evicted_before: u64,
}

/// A copy to predict from while the original goes on learning.
impl Clone for Learner {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings.clone(),
            shapes: self.shapes.clone(),
            model: self.model.boxed_clone(),
            routes: self.routes.clone(),
            calls_evicted_before: self.calls_evicted_before,
        }
    }
}

impl Learner {
    /// A learner with the online sequence model.
    pub fn new(settings: Settings) -> Self {
        Self::with_model(
            settings,
            Box::new(OnlineModel::new(OnlineSettings::default())),
        )
    }

    /// A learner with another sequence model (the ONNX one).
    pub fn with_model(settings: Settings, model: Box<dyn SequenceModel>) -> Self {
        Self {
            shapes: Shapes::new(settings.key_headers.clone(), settings.max_shapes),
            routes: Lru::new(settings.max_routes),
            settings,
            model,
            calls_evicted_before: 0,
        }
    }

    /// What was forgotten to stay within bounds.
    pub fn evictions(&self) -> Evictions {
        let (shapes, positions) = self.shapes.evicted();
        Evictions {
            routes: self.routes.evicted(),
            shapes,
            positions,
            calls: self.calls_evicted_before
                + self.routes.values().map(|r| r.calls.evicted()).sum::<u64>(),
        }
    }

    /// Shapes known now.
    pub fn shape_count(&self) -> usize {
        self.shapes.len()
    }

    pub fn shapes(&self) -> &Shapes {
        &self.shapes
    }

    /// The request headers that are part of a call's identity.
    pub fn key_headers(&self) -> &KeyHeaders {
        &self.settings.key_headers
    }

    /// Learns from one closed context.
    ///
    /// A context without calls on a route not known yet teaches nothing
    /// (there is nothing to predict on it), so a scan of paths that call
    /// nothing leaves the learner as it was.
    pub fn learn(&mut self, ctx: &Context) {
        if ctx.calls.is_empty() && !self.routes.contains_key(ctx.route.as_str()) {
            return;
        }
        let mut ids: Vec<ShapeId> = Vec::with_capacity(ctx.calls.len());
        for c in &ctx.calls {
            let new_from = self.shapes.next_id();
            let id = self
                .shapes
                .classify_for(&c.dependency, &c.request, &ctx.inbound);
            for gone in self.shapes.take_evicted() {
                self.model.shape_removed(gone);
            }
            if self.shapes.next_id() != new_from {
                if let Some(info) = self.shapes.info(id) {
                    self.model.shape_added(id, &info.shape);
                }
            }
            ids.push(id);
        }
        let occurrences = occurrences(&ids);
        let settings = &self.settings;
        let mut evicted = Vec::new();
        let route = self.routes.get_or_insert_with(
            ctx.route.clone(),
            || RouteState {
                calls: Lru::new(settings.max_entries_per_route),
            },
            &mut evicted,
        );
        for (j, call) in ctx.calls.iter().enumerate() {
            if occurrences[j] >= settings.max_occurrences {
                continue;
            }
            let key = (ids[j], occurrences[j]);
            let state = route
                .calls
                .get_or_insert_with(key, CallState::default, &mut Vec::new());
            state.timing.add(call.start_us, call.duration_us);

            let avail = Available::before(ctx, &ids, &occurrences, j);
            let Some(info) = self.shapes.info(ids[j]) else {
                continue;
            };
            let mut index = Index::new(&avail, settings.max_leaves);
            for slot in info.slots() {
                let actual = slot.value_in(&call.request);
                state.rules.observe(&slot, actual, &avail, &mut index);
            }
            state.gate.observe(
                true,
                &avail,
                &mut || gate::features(&avail, settings.max_leaves),
                settings.min_observations,
            );
        }
        // The calls this route made before and not this time: what the
        // context held by its end decided that.
        let made: Vec<(ShapeId, u32)> = ids
            .iter()
            .copied()
            .zip(occurrences.iter().copied())
            .collect();
        let all = Available::before(ctx, &ids, &occurrences, ctx.calls.len());
        for (key, state) in route.calls.iter_mut() {
            if !made.contains(key) {
                state.gate.observe(
                    false,
                    &all,
                    &mut || gate::features(&all, settings.max_leaves),
                    settings.min_observations,
                );
            }
        }
        for (name, gone) in evicted {
            self.calls_evicted_before += gone.calls.evicted();
            self.model.route_removed(&name);
        }
        self.model.observe_given(&ctx.route, &ids, &|t| {
            Available::before(ctx, &ids, &occurrences, t)
        });
    }

    /// The calls expected in `live` (a context still open: its inbound
    /// request and the calls so far, with the responses that arrived),
    /// `elapsed_us` after it opened, that should start within `horizon_us`
    /// and can be written out in full now.
    pub fn predict(&self, live: &Context, elapsed_us: u64, horizon_us: u64) -> Vec<Prediction> {
        let Some(route) = self.routes.get(&live.route) else {
            return Vec::new();
        };
        let mut history = Vec::with_capacity(live.calls.len());
        for call in &live.calls {
            match self.shapes.lookup(&call.dependency, &call.request) {
                Some(id) => history.push(id),
                // An unknown call: the model cannot say what follows it.
                None => return Vec::new(),
            }
        }
        let occurrences = occurrences(&history);
        let avail = Available::of(live, &history, &occurrences, |i| {
            live.calls[i].response.is_some()
        });
        let expected = lookahead(
            &*self.model,
            &live.route,
            &history,
            &avail,
            self.settings.max_depth,
            self.settings.min_path,
        );
        let mut out = Vec::new();
        for mut e in expected {
            let key = (e.shape, e.occurrence);
            let call = route.calls.get(&key);
            // What the context holds may decide the call either way.
            if let Some(p) =
                call.and_then(|c| c.gate.decide(&avail, self.settings.min_observations))
            {
                if p < self.settings.min_path {
                    continue;
                }
                e.probability = p;
            }
            let timing = call.map(|c| &c.timing);
            let start = timing
                .and_then(|t| t.start_us.get())
                .map_or(elapsed_us, |s| s as u64);
            if start > elapsed_us.saturating_add(horizon_us) {
                continue;
            }
            let (Some(info), Some(rules)) = (self.shapes.info(e.shape), call.map(|c| &c.rules))
            else {
                continue;
            };
            let slots = info.slots();
            let Some(best) = rules.best(&slots, self.settings.min_observations) else {
                continue;
            };
            let mut path_values = Vec::new();
            let mut query_values: Vec<(&str, String)> = Vec::new();
            let mut header_values = Vec::new();
            let mut body_values: Vec<(String, String)> = Vec::new();
            let mut complete = true;
            for (slot, source) in best {
                let Resolved::Value(value) = avail.resolve(source) else {
                    complete = false;
                    break;
                };
                match (slot, value) {
                    (Slot::Path(i), Some(v)) => path_values.push((*i, v)),
                    (Slot::Query(k), Some(v)) => query_values.push((k, v)),
                    (Slot::Header(h), Some(v)) => header_values.push((h.clone(), v)),
                    (Slot::Header(_), None) => {}
                    (Slot::Body(p), Some(v)) => body_values.push((p.clone(), v)),
                    // A path segment or query key that is absent: the call
                    // would not have this shape.
                    _ => {
                        complete = false;
                        break;
                    }
                }
            }
            if !complete {
                continue;
            }
            header_values.sort();
            let query = (!info.query_order.is_empty()).then(|| {
                info.query_order
                    .iter()
                    .map(|k| {
                        let v = query_values
                            .iter()
                            .find(|(q, _)| q == k)
                            .map_or("", |(_, v)| v.as_str());
                        format!("{k}={v}")
                    })
                    .collect::<Vec<_>>()
                    .join("&")
            });
            out.push(Prediction {
                dependency: info.shape.dependency.clone(),
                method: info.shape.method.clone(),
                path: Shapes::fill(&info.shape.template, &path_values),
                query,
                headers: header_values,
                body: info.fill_body(&body_values),
                probability: e.probability,
                expected_start_us: start,
                start_p90_us: timing
                    .and_then(|t| t.starts.quantile(0.9))
                    .unwrap_or(start)
                    .max(start),
                expected_latency_us: timing.and_then(|t| t.durations.quantile(0.5)).unwrap_or(0),
                latency_p90_us: timing.and_then(|t| t.durations.quantile(0.9)).unwrap_or(0),
                shape: e.shape,
                occurrence: e.occurrence,
            });
        }
        out
    }

    /// What the learner holds for each route, for `/debug/model`.
    pub fn describe(&self) -> serde_json::Value {
        let routes: serde_json::Map<String, serde_json::Value> = self
            .routes
            .iter()
            .map(|(name, state)| {
                let mut calls: Vec<_> = state.calls.iter().collect();
                calls.sort_by_key(|((shape, occ), call)| {
                    let start = call.timing.start_us.get().unwrap_or(0.0);
                    (start as u64, *shape, *occ)
                });
                let calls: Vec<serde_json::Value> = calls
                    .into_iter()
                    .map(|((shape, occ), call)| {
                        let (timing, rules) = (Some(&call.timing), &call.rules);
                        serde_json::json!({
                            "shape": self.shapes.info(*shape).map(|i| i.shape.to_string()),
                            "occurrence": occ,
                            "expected_start_us": timing.and_then(|t| t.start_us.get()),
                            "expected_latency_us": timing.and_then(|t| t.duration_us.get()),
                            "latency_p50_us": timing.and_then(|t| t.durations.quantile(0.5)),
                            "latency_p90_us": timing.and_then(|t| t.durations.quantile(0.9)),
                            "decided_by": call.gate.decision(self.settings.min_observations).map(|d| serde_json::json!({
                                "feature": self.describe_feature(&d.feature),
                                "test": d.test,
                                "made_when": d.made_when,
                                "support": d.support,
                            })),
                            "slots": rules.slots.iter().map(|(slot, rules)| {
                                let mut rules: Vec<_> = rules.iter().collect();
                                rules.sort_by_key(|r| std::cmp::Reverse(r.support));
                                serde_json::json!({
                                    "slot": slot.to_string(),
                                    "rules": rules.iter().take(3).map(|r| serde_json::json!({
                                        "source": self.describe_source(&r.source),
                                        "support": r.support,
                                        "precision": r.precision(),
                                        "trusted": r.trusted(self.settings.min_observations),
                                    })).collect::<Vec<_>>(),
                                })
                            }).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                (name.clone(), serde_json::Value::Array(calls))
            })
            .collect();
        serde_json::json!({
            "model": self.model.name(),
            "model_by_route": self.model.describe(),
            "routes": routes,
            "memory_bytes": self.memory_bytes(),
        })
    }

    /// A source in words, naming the shape of a response source.
    fn describe_source(&self, source: &crate::provenance::Source) -> String {
        use crate::provenance::{Number, Source};
        match source {
            Source::Response {
                shape,
                occurrence,
                pointer,
                join,
            } => {
                let joined = join.map_or(String::new(), |j| {
                    format!(", joined by {:?}", j.separator())
                });
                format!(
                    "response of {} at {pointer}{joined}",
                    self.call_name(*shape, *occurrence)
                )
            }
            Source::Select {
                shape,
                occurrence,
                array,
                key,
                value,
                field,
            } => format!(
                "response of {}: {field:?} of the first element of {array} whose {key:?} is {value:?}",
                self.call_name(*shape, *occurrence)
            ),
            Source::Computed {
                base,
                prefix,
                suffix,
                number,
            } => {
                let written = match number {
                    Some(Number::Padded(w)) => format!(" padded to {w} digits"),
                    Some(Number::Decimals(d)) => format!(" with {d} decimals"),
                    None => String::new(),
                };
                format!(
                    "{prefix:?} + ({}){written} + {suffix:?}",
                    self.describe_source(base)
                )
            }
            other => other.to_string(),
        }
    }

    /// A call of a shape in words: `GET users /users/{}`, and which of
    /// several.
    fn call_name(&self, shape: ShapeId, occurrence: u32) -> String {
        let name = self
            .shapes
            .info(shape)
            .map_or_else(|| format!("shape {shape}"), |i| i.shape.to_string());
        if occurrence > 0 {
            format!("{name} (call {} of it)", occurrence + 1)
        } else {
            name
        }
    }

    /// A gate's feature in words, naming shapes.
    fn describe_feature(&self, feature: &crate::gate::Feature) -> String {
        use crate::gate::Feature;
        let name = |shape: &ShapeId, occurrence: &u32| self.call_name(*shape, *occurrence);
        match feature {
            Feature::Value(source) => self.describe_source(source),
            Feature::Status { shape, occurrence } => {
                format!("status of {}", name(shape, occurrence))
            }
            Feature::Length {
                shape,
                occurrence,
                pointer,
            } => format!(
                "length of {pointer} in the response of {}",
                name(shape, occurrence)
            ),
            Feature::Any {
                shape,
                occurrence,
                array,
                key,
                value,
            } => format!(
                "some element of {array} in the response of {} has {key:?} = {value:?}",
                name(shape, occurrence)
            ),
        }
    }

    /// Rough bytes held: shapes, sequence model, rules and timings.
    pub fn memory_bytes(&self) -> usize {
        let routes: usize = self
            .routes
            .iter()
            .map(|(name, s)| {
                name.len()
                    + s.calls
                        .values()
                        .map(|c| 96 + c.rules.memory_bytes() + c.gate.memory_bytes())
                        .sum::<usize>()
            })
            .sum();
        self.shapes.memory_bytes() + self.model.memory_bytes() + routes
    }

    /// The sequence model's distribution of what follows `history`.
    pub fn next(&self, route: &str, history: &[ShapeId]) -> Vec<(crate::sequence::Next, f64)> {
        self.model.next(route, history)
    }

    /// The sequence model's most likely next step after `history`, the
    /// shapes of `ctx`'s first `t` calls, knowing what `ctx` held when its
    /// `t`-th call started (nothing, if a call of those is of a shape not
    /// known).
    pub fn next_top1(
        &self,
        ctx: &Context,
        history: &[ShapeId],
        t: usize,
    ) -> Option<crate::sequence::Next> {
        let ids: Option<Vec<ShapeId>> = ctx.calls[..t.min(ctx.calls.len())]
            .iter()
            .map(|c| self.shapes.lookup(&c.dependency, &c.request))
            .collect();
        let given = match &ids {
            Some(ids) => Available::before(ctx, ids, &occurrences(ids), t),
            None => Available::default(),
        };
        self.model
            .next_given(&ctx.route, history, &given)
            .first()
            .map(|(n, _)| *n)
    }

    /// Whether `route` has been learned: only then does [`predict`]
    /// return anything for it, or [`learn`] take a context of it that made
    /// no calls.
    ///
    /// [`predict`]: Self::predict
    /// [`learn`]: Self::learn
    pub fn knows_route(&self, route: &str) -> bool {
        self.routes.contains_key(route)
    }

    pub fn route_count(&self) -> usize {
        self.routes.len()
    }
}

/// For each call, how many calls of the same shape came before it.
pub fn occurrences(ids: &[ShapeId]) -> Vec<u32> {
    let mut seen: HashMap<ShapeId, u32> = HashMap::new();
    ids.iter()
        .map(|id| {
            let n = seen.entry(*id).or_insert(0);
            *n += 1;
            *n - 1
        })
        .collect()
}
