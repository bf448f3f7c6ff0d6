//! Call sequences for training an offline model: every context's shapes,
//! named as the learner names them, with their latencies. `augur
//! export-sequences` writes this as JSON for `predictor/train/train.py`.

use serde::{Deserialize, Serialize};

use crate::observation::Context;
use crate::shapes::Shapes;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    /// Route names; sequences refer to them by index.
    pub routes: Vec<String>,
    /// Shape names (as `Shape`'s `Display`); sequences refer to them by index.
    pub shapes: Vec<String>,
    pub sequences: Vec<Sequence>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sequence {
    pub route: usize,
    pub shapes: Vec<usize>,
    pub latencies_us: Vec<u64>,
}

/// The sequences of `contexts`. Path templates are learned from all of them
/// first, so each call is named as a learner that saw them all names it.
pub fn dataset(contexts: &[Context]) -> Dataset {
    let mut shapes = Shapes::default();
    for ctx in contexts {
        for call in &ctx.calls {
            shapes.classify_for(&call.dependency, &call.request, &ctx.inbound);
        }
    }
    let mut routes: Vec<String> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut sequences = Vec::with_capacity(contexts.len());
    for ctx in contexts {
        let route = index_of(&mut routes, &ctx.route);
        let mut seq = Sequence {
            route,
            shapes: Vec::with_capacity(ctx.calls.len()),
            latencies_us: Vec::with_capacity(ctx.calls.len()),
        };
        for call in &ctx.calls {
            let id = shapes.classify(&call.dependency, &call.request, false);
            let name = shapes
                .info(id)
                .map(|i| i.shape.to_string())
                .unwrap_or_default();
            seq.shapes.push(index_of(&mut names, &name));
            seq.latencies_us.push(call.duration_us);
        }
        sequences.push(seq);
    }
    Dataset {
        routes,
        shapes: names,
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
