//! augur's prediction library: it learns, from closed execution contexts,
//! which dependency calls a route makes, in what order, with which
//! parameters and how long each takes; and it answers, at any moment of a
//! live context, which calls are coming, written out in full.
//!
//! It is a pure library: no I/O besides reading trace files it is handed,
//! no async runtime, no configuration crate. Start with [`learner`]: a
//! [`Learner`] is fed [`Context`]s with [`Learner::learn`] and asked with
//! [`Learner::predict`]. Underneath, [`shapes`] names calls by their shape,
//! [`sequence`] models what follows what, [`provenance`] learns where each
//! parameter comes from, [`trace`] reads and writes trace files, and
//! [`eval`] replays them offline.

pub mod auto;
pub mod dataset;
pub mod eval;
pub mod features;
pub mod gate;
pub mod headers;
pub mod json;
pub mod learner;
pub mod lru;
pub mod observation;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod provenance;
pub mod secret;
pub mod sequence;
pub mod shape;
pub mod shapes;
pub mod state;
pub mod suite;
pub mod timing;
pub mod trace;

pub use learner::{Learner, Prediction, Settings};
pub use observation::{Call, Context, Json, Request};
