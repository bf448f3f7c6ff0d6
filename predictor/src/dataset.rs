//! Call sequences for training an offline model: every context's shapes,
//! named as the learner names them, with their latencies and, at each step,
//! the numbers of a few fields of what the context held (see
//! [`features`]). `augur export-sequences` writes this as JSON for
//! `predictor/train/train.py`.
//!
//! [`features`]: crate::features

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::features::{self, Field, Input, Step};
use crate::gate;
use crate::learner::occurrences;
use crate::observation::Context;
use crate::provenance::Available;
use crate::shapes::{ShapeId, Shapes};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    /// Route names; sequences refer to them by index.
    pub routes: Vec<String>,
    /// Shape names (as `Shape`'s `Display`); sequences refer to them by index.
    pub shapes: Vec<String>,
    /// The fields every step's `features` reads, in order.
    #[serde(default)]
    pub features: Vec<Input>,
    pub sequences: Vec<Sequence>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sequence {
    pub route: usize,
    pub shapes: Vec<usize>,
    pub latencies_us: Vec<u64>,
    /// Before each call and at the end (one more row than calls): the
    /// numbers of the dataset's `features` in what the context held.
    #[serde(default)]
    pub features: Vec<Vec<f32>>,
}

/// How many fields to choose, and from which contexts.
#[derive(Debug, Clone, Copy)]
pub struct FeatureChoice {
    /// Fields at most (0: none).
    pub inputs: usize,
    /// Chosen from the first this many contexts only (the part a model
    /// trains on), so that a measure on the rest is fair.
    pub from: usize,
}

/// Leaves of a JSON body read per response, as the learner's default.
const MAX_LEAVES: usize = 2000;

/// The sequences of `contexts`. Path templates are learned from all of them
/// first, so each call is named as a learner that saw them all names it.
pub fn dataset(contexts: &[Context], choice: FeatureChoice) -> Dataset {
    let mut shapes = Shapes::default();
    for ctx in contexts {
        for call in &ctx.calls {
            shapes.classify_for(&call.dependency, &call.request, &ctx.inbound);
        }
    }
    let mut routes: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    // The vocabulary index of each shape id, and the id of each index.
    let mut index: HashMap<ShapeId, usize> = HashMap::new();
    let mut ids_of: Vec<ShapeId> = Vec::new();
    let mut ids: Vec<Vec<ShapeId>> = Vec::with_capacity(contexts.len());
    let mut sequences = Vec::with_capacity(contexts.len());
    for ctx in contexts {
        let route = index_of(&mut routes, &ctx.route);
        let mut seq = Sequence {
            route,
            shapes: Vec::with_capacity(ctx.calls.len()),
            latencies_us: Vec::with_capacity(ctx.calls.len()),
            features: Vec::new(),
        };
        let mut ctx_ids = Vec::with_capacity(ctx.calls.len());
        for call in &ctx.calls {
            let id = shapes.classify(&call.dependency, &call.request, false);
            let name = shapes
                .info(id)
                .map(|i| i.shape.to_string())
                .unwrap_or_default();
            let i = index_of(&mut names, &name);
            if ids_of.len() <= i {
                ids_of.push(id);
            }
            index.entry(id).or_insert(i);
            seq.shapes.push(i);
            seq.latencies_us.push(call.duration_us);
            ctx_ids.push(id);
        }
        ids.push(ctx_ids);
        sequences.push(seq);
    }

    let mut steps = Vec::new();
    let mut groups: HashMap<(usize, Option<usize>), u32> = HashMap::new();
    for ((ctx, ctx_ids), seq) in contexts.iter().zip(&ids).zip(&sequences).take(choice.from) {
        let occurrences = occurrences(ctx_ids);
        for t in 0..=ctx.calls.len() {
            let given = Available::before(ctx, ctx_ids, &occurrences, t);
            let last = t.checked_sub(1).map(|p| seq.shapes[p]);
            let next = groups.len() as u32;
            steps.push(Step {
                group: *groups.entry((seq.route, last)).or_insert(next),
                label: seq.shapes.get(t).map_or(u32::MAX, |s| *s as u32),
                values: gate::features(&given, MAX_LEAVES)
                    .into_iter()
                    .filter_map(|(f, v)| Some((Field::of(&f, |id| index.get(&id).copied())?, v)))
                    .collect(),
            });
        }
    }
    let inputs = features::select(&steps, choice.inputs);
    if !inputs.is_empty() {
        let resolved: Vec<_> = inputs
            .iter()
            .map(|i| {
                let feature = i.field.feature(|k| ids_of.get(k).copied());
                (feature, i.test.clone())
            })
            .collect();
        for ((ctx, ctx_ids), seq) in contexts.iter().zip(&ids).zip(&mut sequences) {
            let occurrences = occurrences(ctx_ids);
            seq.features = (0..=ctx.calls.len())
                .map(|t| {
                    let given = Available::before(ctx, ctx_ids, &occurrences, t);
                    features::encode(&resolved, &given)
                })
                .collect();
        }
    }
    Dataset {
        routes,
        shapes: names,
        features: inputs,
        sequences,
    }
}

fn index_of(list: &mut Vec<String>, name: &str) -> usize {
    match list.iter().position(|n| n == name) {
        Some(i) => i,
        None => {
            list.push(name.to_string());
            list.len() - 1
        }
    }
}
