//! `predictor.kind = "auto"`: the online model and a model trained offline
//! side by side, each route predicted by whichever has been right more
//! often on that route's own recent contexts.
//!
//! Every closed context is first used to test both models (what each
//! would have given as the next call, at every step of the context, before
//! learning from it), then learned from: each context is held back from
//! both models when it is scored. A route goes to the offline model only
//! once both have been scored on [`MIN_SCORED`] of its contexts and the
//! offline model's recent top-1 accuracy leads by [`MARGIN`]; it comes back
//! once the online model leads by as much (a flow that drifted after
//! training). Between the two, the route keeps the model it has: two
//! models that are close do not take turns on every context's noise.

use std::collections::HashMap;

use serde::Serialize;

use crate::provenance::Available;
use crate::sequence::{Next, SequenceModel};
use crate::shapes::{Shape, ShapeId};

/// Contexts of a route scored before the offline model may be chosen.
pub const MIN_SCORED: u32 = 8;
/// Lead in recent top-1 accuracy the offline model needs to be chosen.
pub const MARGIN: f64 = 0.02;
/// Weight of the newest context in the running accuracy.
const ALPHA: f64 = 1.0 / 16.0;

/// How both models have done on one route lately.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    /// Running top-1 accuracy of the online model's next-call guesses.
    pub online: f64,
    /// The same for the offline model.
    pub offline: f64,
    /// Contexts scored.
    pub scored: u32,
    /// Whether the offline model predicts this route.
    pub offline_chosen: bool,
}

impl Scores {
    /// Whether the offline model predicts this route.
    pub fn offline_chosen(&self) -> bool {
        self.offline_chosen
    }

    /// Chooses again after a context was scored: a model is taken only
    /// when it leads by [`MARGIN`], and kept otherwise.
    fn choose(&mut self) {
        if self.scored < MIN_SCORED {
            self.offline_chosen = false;
        } else if self.offline > self.online + MARGIN {
            self.offline_chosen = true;
        } else if self.online > self.offline + MARGIN {
            self.offline_chosen = false;
        }
    }
}

pub struct AutoModel {
    online: Box<dyn SequenceModel>,
    offline: Box<dyn SequenceModel>,
    routes: HashMap<String, Scores>,
}

impl AutoModel {
    pub fn new(online: Box<dyn SequenceModel>, offline: Box<dyn SequenceModel>) -> Self {
        Self {
            online,
            offline,
            routes: HashMap::new(),
        }
    }

    /// The scores of a route, if it was seen.
    pub fn scores(&self, route: &str) -> Option<&Scores> {
        self.routes.get(route)
    }

    fn chosen(&self, route: &str) -> &dyn SequenceModel {
        match self.routes.get(route) {
            Some(s) if s.offline_chosen() => &*self.offline,
            _ => &*self.online,
        }
    }
}

/// Share of the steps of `shapes` (each call, then the end) whose actual
/// next step was `model`'s most likely one, given what the context held
/// before each.
fn top1<'c>(
    model: &dyn SequenceModel,
    route: &str,
    shapes: &[ShapeId],
    given: &dyn Fn(usize) -> Available<'c>,
) -> f64 {
    let steps = shapes.len() + 1;
    let right = (0..steps)
        .filter(|&t| {
            let actual = shapes.get(t).map_or(Next::End, |s| Next::Call(*s));
            let next = model.next_given(route, &shapes[..t], &given(t));
            next.first().map(|(n, _)| *n) == Some(actual)
        })
        .count();
    right as f64 / steps as f64
}

impl SequenceModel for AutoModel {
    fn observe(&mut self, route: &str, shapes: &[ShapeId]) {
        self.observe_given(route, shapes, &|_| Available::default());
    }

    fn observe_given<'c>(
        &mut self,
        route: &str,
        shapes: &[ShapeId],
        given: &dyn Fn(usize) -> Available<'c>,
    ) {
        let (online, offline) = (
            top1(&*self.online, route, shapes, given),
            top1(&*self.offline, route, shapes, given),
        );
        let scores = self.routes.entry(route.to_string()).or_default();
        if scores.scored == 0 {
            (scores.online, scores.offline) = (online, offline);
        } else {
            scores.online += ALPHA * (online - scores.online);
            scores.offline += ALPHA * (offline - scores.offline);
        }
        scores.scored = scores.scored.saturating_add(1);
        scores.choose();
        self.online.observe_given(route, shapes, given);
        self.offline.observe_given(route, shapes, given);
    }

    fn next(&self, route: &str, history: &[ShapeId]) -> Vec<(Next, f64)> {
        self.chosen(route).next(route, history)
    }

    fn next_given(
        &self,
        route: &str,
        history: &[ShapeId],
        given: &Available<'_>,
    ) -> Vec<(Next, f64)> {
        self.chosen(route).next_given(route, history, given)
    }

    fn memory_bytes(&self) -> usize {
        self.online.memory_bytes()
            + self.offline.memory_bytes()
            + self.routes.keys().map(|r| r.len() + 48).sum::<usize>()
    }

    fn name(&self) -> &'static str {
        "auto"
    }

    fn shape_added(&mut self, id: ShapeId, shape: &Shape) {
        self.online.shape_added(id, shape);
        self.offline.shape_added(id, shape);
    }

    fn shape_removed(&mut self, id: ShapeId) {
        self.online.shape_removed(id);
        self.offline.shape_removed(id);
    }

    fn route_removed(&mut self, route: &str) {
        self.routes.remove(route);
        self.online.route_removed(route);
        self.offline.route_removed(route);
    }

    fn boxed_clone(&self) -> Box<dyn SequenceModel> {
        Box::new(AutoModel {
            online: self.online.boxed_clone(),
            offline: self.offline.boxed_clone(),
            routes: self.routes.clone(),
        })
    }

    fn describe(&self) -> Option<serde_json::Value> {
        let routes: serde_json::Map<String, serde_json::Value> = self
            .routes
            .iter()
            .map(|(route, s)| {
                let chosen = if s.offline_chosen() {
                    self.offline.name()
                } else {
                    self.online.name()
                };
                let why = if s.scored < MIN_SCORED {
                    format!("{} of {MIN_SCORED} contexts scored: online until then", s.scored)
                } else if s.offline_chosen() {
                    format!(
                        "{} right on {:.0}% of recent steps, online on {:.0}%",
                        self.offline.name(),
                        s.offline * 100.0,
                        s.online * 100.0
                    )
                } else {
                    format!(
                        "online right on {:.0}% of recent steps, {} on {:.0}% (a model needs a lead of {:.0} points to take the route)",
                        s.online * 100.0,
                        self.offline.name(),
                        s.offline * 100.0,
                        MARGIN * 100.0
                    )
                };
                (
                    route.clone(),
                    serde_json::json!({"chosen": chosen, "why": why, "scores": s}),
                )
            })
            .collect();
        Some(serde_json::Value::Object(routes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::{OnlineModel, OnlineSettings};

    /// A model trained offline on a long-range flow: the first call (1 or
    /// 9) decides the seventh (7 or 8), five calls of 2 between; it learns
    /// nothing more.
    #[derive(Clone)]
    struct Trained;

    impl SequenceModel for Trained {
        fn observe(&mut self, _: &str, _: &[ShapeId]) {}
        fn next(&self, _: &str, history: &[ShapeId]) -> Vec<(Next, f64)> {
            let next = match history.len() {
                0 => Next::Call(1),
                1..=5 => Next::Call(2),
                6 if history[0] == 1 => Next::Call(7),
                6 => Next::Call(8),
                _ => Next::End,
            };
            vec![(next, 1.0)]
        }
        fn memory_bytes(&self) -> usize {
            0
        }
        fn name(&self) -> &'static str {
            "trained"
        }
        fn boxed_clone(&self) -> Box<dyn SequenceModel> {
            Box::new(self.clone())
        }
    }

    fn auto() -> AutoModel {
        AutoModel::new(
            Box::new(OnlineModel::new(OnlineSettings::default())),
            Box::new(Trained),
        )
    }

    fn long_range(i: u32) -> Vec<ShapeId> {
        let first = if (i * 7 + i / 3) % 2 == 0 { 1 } else { 9 };
        let last = if first == 1 { 7 } else { 8 };
        vec![first, 2, 2, 2, 2, 2, last]
    }

    #[test]
    fn a_route_goes_to_the_offline_model_where_it_is_right_more_often() {
        let mut m = auto();
        for i in 0..MIN_SCORED - 1 {
            m.observe("r", &long_range(i));
        }
        assert!(!m.scores("r").unwrap().offline_chosen(), "too few scored");
        for i in MIN_SCORED..60 {
            m.observe("r", &long_range(i));
        }
        let s = m.scores("r").unwrap().clone();
        assert!(s.offline_chosen(), "{s:?}");
        let first = long_range(3)[0];
        assert_eq!(
            m.next("r", &long_range(3)[..6])[0].0,
            Next::Call(if first == 1 { 7 } else { 8 }),
            "the long-range call comes from the trained model"
        );
        let d = m.describe().unwrap();
        assert_eq!(d["r"]["chosen"], "trained", "{d}");
    }

    #[test]
    fn a_drifted_route_goes_back_to_the_online_model() {
        let mut m = auto();
        for i in 0..60 {
            m.observe("r", &long_range(i));
        }
        assert!(m.scores("r").unwrap().offline_chosen());
        for _ in 0..60 {
            // The flow changes: the trained model keeps saying 2.
            m.observe("r", &[1, 5, 5, 5, 5, 5, 7]);
        }
        let s = m.scores("r").unwrap();
        assert!(s.online > s.offline, "{s:?}");
        assert!(!s.offline_chosen());
        assert_eq!(m.describe().unwrap()["r"]["chosen"], "online");
        // Forgetting the route forgets its scores.
        m.route_removed("r");
        assert!(m.scores("r").is_none());
    }

    #[test]
    fn two_close_models_do_not_take_turns_on_noise() {
        let mut s = Scores {
            scored: MIN_SCORED,
            online: 0.85,
            offline: 0.90,
            ..Scores::default()
        };
        s.choose();
        assert!(s.offline_chosen(), "a lead of 5 points takes the route");
        s.offline = 0.86;
        s.choose();
        assert!(
            s.offline_chosen(),
            "a lead of 1 point is noise: the route stays"
        );
        s.online = 0.89;
        s.choose();
        assert!(
            !s.offline_chosen(),
            "the online model leads by 3 points: it takes the route back"
        );
        s.online = 0.87;
        s.choose();
        assert!(!s.offline_chosen(), "and keeps it inside the margin");
    }
}
