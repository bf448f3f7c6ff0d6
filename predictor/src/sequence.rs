//! Sequence models: P(next call shape | route, shapes so far). The online
//! model here learns from every closed context with no training step; the
//! ONNX model implements the same [`SequenceModel`] trait.

use std::collections::{HashMap, VecDeque};

use crate::provenance::Available;
use crate::shapes::{Shape, ShapeId};

/// What comes after a history: another call, or the end of the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Next {
    Call(ShapeId),
    End,
}

/// A model of call sequences per route.
pub trait SequenceModel: Send + Sync {
    /// Learns one closed context's sequence of shapes.
    fn observe(&mut self, route: &str, shapes: &[ShapeId]);

    /// The distribution of what follows `history` on `route`, most likely
    /// first; empty when the model knows nothing of the route.
    fn next(&self, route: &str, history: &[ShapeId]) -> Vec<(Next, f64)>;

    /// The same, knowing what the context holds (its inbound request, the
    /// responses that have arrived): a model that reads only the history
    /// ignores it.
    fn next_given(
        &self,
        route: &str,
        history: &[ShapeId],
        _given: &Available<'_>,
    ) -> Vec<(Next, f64)> {
        self.next(route, history)
    }

    /// Learns one closed context, with what it held before each step
    /// (`given(t)`: before its `t`-th call, or by its end for `t` =
    /// `shapes.len()`), computed only for a model that asks.
    fn observe_given<'c>(
        &mut self,
        route: &str,
        shapes: &[ShapeId],
        _given: &dyn Fn(usize) -> Available<'c>,
    ) {
        self.observe(route, shapes);
    }

    /// Rough bytes held, for reporting.
    fn memory_bytes(&self) -> usize;

    /// What kind of model this is, for reports.
    fn name(&self) -> &'static str;

    /// Tells the model the name of a shape id when the learner first sees
    /// it (a model trained offline knows shapes by name, not by id).
    fn shape_added(&mut self, _id: ShapeId, _shape: &Shape) {}

    /// Tells the model the learner forgot a shape: its id names nothing now.
    fn shape_removed(&mut self, _id: ShapeId) {}

    /// Tells the model the learner forgot a route: what the model holds
    /// for it may go.
    fn route_removed(&mut self, _route: &str) {}

    /// A copy that learns on its own from here (what it cannot copy, such
    /// as a trained network's weights, it may share).
    fn boxed_clone(&self) -> Box<dyn SequenceModel>;

    /// What the model has to say of itself for `/debug/model`, by route
    /// (which model `auto` chose, and why); nothing by default.
    fn describe(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Settings of the online model.
#[derive(Debug, Clone)]
pub struct OnlineSettings {
    /// Longest history the model conditions on.
    pub order: usize,
    /// Observations a history needs before it is used instead of a shorter one.
    pub min_support: f64,
    /// Outcomes remembered per history to detect a change of behaviour.
    pub window: usize,
    /// Total-variation distance between the window and the long-run counts
    /// above which the long-run counts are replaced by the window.
    pub change_distance: f64,
    /// Histories kept per route at most.
    pub max_nodes: usize,
}

impl Default for OnlineSettings {
    fn default() -> Self {
        Self {
            order: 3,
            min_support: 2.0,
            window: 8,
            change_distance: 0.5,
            max_nodes: 4096,
        }
    }
}

/// The counts of what followed one history. A history is followed by a
/// handful of outcomes at most, so they are a short list in key order, not
/// a map.
#[derive(Debug, Default, Clone)]
struct Node {
    counts: Vec<(Next, f64)>,
    total: f64,
    recent: VecDeque<Next>,
}

impl Node {
    fn count_mut(&mut self, next: Next) -> &mut f64 {
        let i = match self.counts.binary_search_by(|(k, _)| k.cmp(&next)) {
            Ok(i) => i,
            Err(i) => {
                self.counts.insert(i, (next, 0.0));
                i
            }
        };
        &mut self.counts[i].1
    }

    fn update(&mut self, next: Next, s: &OnlineSettings) {
        *self.count_mut(next) += 1.0;
        self.total += 1.0;
        self.recent.push_back(next);
        if self.recent.len() > s.window {
            self.recent.pop_front();
        }
        // The window's outcomes are all among the counts', so with one
        // outcome counted the two cannot differ.
        if self.counts.len() > 1
            && self.recent.len() == s.window
            && self.distance_to_recent() > s.change_distance
        {
            // Behaviour changed: forget what no longer holds.
            self.counts.clear();
            for i in 0..self.recent.len() {
                let n = self.recent[i];
                *self.count_mut(n) += 1.0;
            }
            self.total = self.recent.len() as f64;
        }
    }

    /// Total-variation distance between the recent window and the counts
    /// (every outcome of the window is among the counts).
    fn distance_to_recent(&self) -> f64 {
        let w = self.recent.len() as f64;
        let total = self.total.max(1.0);
        self.counts
            .iter()
            .map(|(k, c)| {
                let share = self.recent.iter().filter(|n| *n == k).count() as f64 / w;
                (c / total - share).abs()
            })
            .sum::<f64>()
            / 2.0
    }

    fn distribution(&self) -> Vec<(Next, f64)> {
        let mut out: Vec<(Next, f64)> = self
            .counts
            .iter()
            .map(|(n, c)| (*n, c / self.total))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

/// Marks the start of a context in histories, so "first call" is not
/// confused with "any call".
const START: ShapeId = ShapeId::MAX;

fn with_start(shapes: &[ShapeId]) -> Vec<ShapeId> {
    let mut seq = Vec::with_capacity(shapes.len() + 1);
    seq.push(START);
    seq.extend_from_slice(shapes);
    seq
}

/// A variable-order Markov model with back-off: it conditions on the
/// longest recent history (up to `order` calls) that it has seen often
/// enough, else on a shorter one. Each history also watches its last few
/// outcomes and starts over when they disagree with the long run, so a
/// changed call sequence is learned within a few contexts while stable
/// branch probabilities keep their full history.
#[derive(Debug, Default, Clone)]
pub struct OnlineModel {
    settings: OnlineSettings,
    routes: HashMap<String, HashMap<Vec<ShapeId>, Node>>,
}

impl OnlineModel {
    pub fn new(settings: OnlineSettings) -> Self {
        Self {
            settings,
            routes: HashMap::new(),
        }
    }

    /// Routes known, with the number of histories each holds.
    pub fn routes(&self) -> impl Iterator<Item = (&str, usize)> {
        self.routes.iter().map(|(r, n)| (r.as_str(), n.len()))
    }
}

impl SequenceModel for OnlineModel {
    fn name(&self) -> &'static str {
        "online"
    }

    fn boxed_clone(&self) -> Box<dyn SequenceModel> {
        Box::new(self.clone())
    }

    fn observe(&mut self, route: &str, shapes: &[ShapeId]) {
        let s = &self.settings;
        if !self.routes.contains_key(route) {
            self.routes.insert(route.to_string(), HashMap::new());
        }
        let Some(nodes) = self.routes.get_mut(route) else {
            return;
        };
        let seq = with_start(shapes);
        for i in 1..=seq.len() {
            let next = seq.get(i).map_or(Next::End, |id| Next::Call(*id));
            for k in 0..=s.order.min(i) {
                let key = &seq[i - k..i];
                let full = nodes.len() >= s.max_nodes;
                if let Some(node) = nodes.get_mut(key) {
                    node.update(next, s);
                } else if !full {
                    let mut node = Node::default();
                    node.update(next, s);
                    nodes.insert(key.to_vec(), node);
                }
            }
        }
    }

    fn route_removed(&mut self, route: &str) {
        self.routes.remove(route);
    }

    fn next(&self, route: &str, history: &[ShapeId]) -> Vec<(Next, f64)> {
        let Some(nodes) = self.routes.get(route) else {
            return Vec::new();
        };
        let seq = with_start(history);
        for k in (0..=self.settings.order.min(seq.len())).rev() {
            let key = &seq[seq.len() - k..];
            if let Some(node) = nodes.get(key) {
                if node.total >= self.settings.min_support || k == 0 {
                    return node.distribution();
                }
            }
        }
        Vec::new()
    }

    fn memory_bytes(&self) -> usize {
        self.routes
            .iter()
            .map(|(r, nodes)| {
                r.len()
                    + nodes
                        .iter()
                        .map(|(k, n)| 64 + k.len() * 4 + n.counts.len() * 32 + n.recent.len() * 8)
                        .sum::<usize>()
            })
            .sum()
    }
}

/// A call expected within the lookahead: its shape, which occurrence of
/// that shape in the context it would be, and the probability that it
/// happens.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub shape: ShapeId,
    pub occurrence: u32,
    pub probability: f64,
    /// Calls between now and this one on the most likely path.
    pub depth: usize,
}

/// Everything `model` expects after `history`, looking up to `max_depth`
/// calls ahead along paths more likely than `min_path`. The probability of
/// a call sums every path on which it first appears.
pub fn lookahead(
    model: &dyn SequenceModel,
    route: &str,
    history: &[ShapeId],
    given: &Available<'_>,
    max_depth: usize,
    min_path: f64,
) -> Vec<Expected> {
    let mut found: HashMap<(ShapeId, u32), (f64, usize)> = HashMap::new();
    let mut path = history.to_vec();
    walk(
        model,
        route,
        given,
        &mut path,
        history.len(),
        1.0,
        max_depth,
        min_path,
        &mut found,
    );
    let mut out: Vec<Expected> = found
        .into_iter()
        .map(|((shape, occurrence), (probability, depth))| Expected {
            shape,
            occurrence,
            probability: probability.min(1.0),
            depth,
        })
        .collect();
    out.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then(a.depth.cmp(&b.depth))
    });
    out
}

#[allow(clippy::too_many_arguments)]
fn walk(
    model: &dyn SequenceModel,
    route: &str,
    given: &Available<'_>,
    path: &mut Vec<ShapeId>,
    base: usize,
    prob: f64,
    max_depth: usize,
    min_path: f64,
    found: &mut HashMap<(ShapeId, u32), (f64, usize)>,
) {
    let depth = path.len() - base;
    if depth >= max_depth {
        return;
    }
    for (next, p) in model.next_given(route, path, given) {
        let Next::Call(shape) = next else { continue };
        let q = prob * p;
        if q < min_path {
            continue;
        }
        // Prefixes ending in the k-th occurrence of a shape are disjoint
        // events, so their probabilities add up.
        let occurrence = path.iter().filter(|s| **s == shape).count() as u32;
        let entry = found.entry((shape, occurrence)).or_insert((0.0, depth));
        entry.0 += q;
        entry.1 = entry.1.min(depth);
        path.push(shape);
        walk(
            model, route, given, path, base, q, max_depth, min_path, found,
        );
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> OnlineModel {
        OnlineModel::new(OnlineSettings::default())
    }

    #[test]
    fn a_fixed_chain_is_certain() {
        let mut m = model();
        for _ in 0..3 {
            m.observe("r", &[1, 2, 3]);
        }
        assert_eq!(m.next("r", &[]), [(Next::Call(1), 1.0)]);
        assert_eq!(m.next("r", &[1, 2]), [(Next::Call(3), 1.0)]);
        assert_eq!(m.next("r", &[1, 2, 3]), [(Next::End, 1.0)]);
        let ahead = lookahead(&m, "r", &[], &Available::default(), 5, 0.01);
        let shapes: Vec<_> = ahead.iter().map(|e| (e.shape, e.probability)).collect();
        assert_eq!(shapes, [(1, 1.0), (2, 1.0), (3, 1.0)]);
    }

    #[test]
    fn parallel_fan_out_is_certain_in_either_order() {
        let mut m = model();
        for i in 0..40 {
            if i % 2 == 0 {
                m.observe("r", &[1, 2, 3])
            } else {
                m.observe("r", &[1, 3, 2])
            }
        }
        let ahead = lookahead(&m, "r", &[1], &Available::default(), 4, 0.01);
        for shape in [2, 3] {
            let e = ahead.iter().find(|e| e.shape == shape).unwrap();
            assert!((e.probability - 1.0).abs() < 1e-9, "{e:?}");
        }
    }

    #[test]
    fn loops_count_occurrences() {
        let mut m = model();
        for _ in 0..5 {
            m.observe("r", &[1, 2, 2, 2, 3]);
        }
        let ahead = lookahead(&m, "r", &[1], &Available::default(), 6, 0.01);
        let twos: Vec<_> = ahead
            .iter()
            .filter(|e| e.shape == 2)
            .map(|e| e.occurrence)
            .collect();
        assert_eq!(twos.len(), 3, "{ahead:?}");
    }

    #[test]
    fn a_changed_sequence_is_learned_within_a_few_contexts() {
        let mut m = model();
        for _ in 0..200 {
            m.observe("r", &[1, 2]);
        }
        let mut switched_after = None;
        for i in 1..=20 {
            m.observe("r", &[1, 3]);
            if switched_after.is_none()
                && m.next("r", &[1]).first().map(|n| n.0) == Some(Next::Call(3))
            {
                switched_after = Some(i);
            }
        }
        assert!(switched_after.is_some_and(|i| i <= 8), "{switched_after:?}");
    }
}
