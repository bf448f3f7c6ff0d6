//! The ONNX sequence model: an LSTM (or any model with the same inputs and
//! outputs) trained offline by `predictor/train/train.py`, run through ONNX
//! Runtime. This is the only module that touches `ort`.
//!
//! The model takes `tokens` (int64, `[batch, window]`: the route, a start
//! marker and the shapes so far, left-padded) and gives `probs` (float,
//! `[batch, vocab]`: the next token) and `log_latency` (float, `[batch, 1]`).
//! Its vocabulary travels in the model's metadata under `augur.vocab`.
//! A model may also take `features` (float, `[batch, n]`): fields of what
//! the context holds, listed in its metadata under `augur.features` and
//! read by [`features::encode`], as when its training data was written.
//!
//! ONNX Runtime is loaded at run time from `ORT_DYLIB_PATH` (or the system's
//! `libonnxruntime.so`); a missing library, an unreadable or corrupt model,
//! or one of the wrong shape is a [`ModelError`], never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use serde::Deserialize;

use crate::features::{self, Input, Test};
use crate::gate::Feature;
use crate::provenance::Available;
use crate::sequence::{Next, SequenceModel};
use crate::shapes::{Shape, ShapeId};

const PAD: i64 = 0;
const START: i64 = 1;
const END: i64 = 2;
const UNK: i64 = 3;

/// Why a model could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(
        "cannot load ONNX Runtime from {path}: {reason} (set ORT_DYLIB_PATH to libonnxruntime.so.1.32.0)"
    )]
    Runtime { path: PathBuf, reason: String },
    #[error("cannot read model {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("model {path} is not a valid ONNX model: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("model {path} has the wrong shape: {reason}")]
    Shape { path: PathBuf, reason: String },
    #[error("model run failed: {0}")]
    Run(String),
}

/// The vocabulary stored in the model's metadata.
#[derive(Debug, Deserialize)]
struct Vocab {
    window: usize,
    routes: Vec<String>,
    shapes: Vec<String>,
}

static RUNTIME_PATH: OnceLock<PathBuf> = OnceLock::new();

/// Uses the ONNX Runtime library at `path` rather than `ORT_DYLIB_PATH`;
/// only before the first model is loaded.
pub fn use_runtime(path: &Path) {
    let _ = RUNTIME_PATH.set(path.to_path_buf());
}

/// Loads ONNX Runtime and builds its environment once per process; later
/// calls get the first outcome.
fn runtime() -> Result<&'static Environment, ModelError> {
    static LOADED: OnceLock<Result<Environment, (PathBuf, String)>> = OnceLock::new();
    let outcome = LOADED.get_or_init(|| {
        let path: PathBuf = RUNTIME_PATH.get().cloned().unwrap_or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map_or_else(|| "libonnxruntime.so".into(), PathBuf::from)
        });
        let builder = ort::init_from(&path).map_err(|e| (path.clone(), e.to_string()))?;
        builder
            .with_name("augur")
            .build()
            .map_err(|e| (path, e.to_string()))
    });
    outcome
        .as_ref()
        .map_err(|(path, reason)| ModelError::Runtime {
            path: path.clone(),
            reason: reason.clone(),
        })
}

/// Distributions computed, by window of tokens and the features' bits.
type Distributions = HashMap<(Vec<i64>, Vec<u32>), Arc<[f32]>>;

#[derive(Clone)]
pub struct OnnxModel {
    /// The network, shared by every copy of the model.
    session: Arc<Mutex<Session>>,
    window: usize,
    vocab_size: usize,
    routes: HashMap<String, i64>,
    shape_tokens: HashMap<String, i64>,
    /// Token of the vocabulary's first shape.
    shape_offset: usize,
    /// The fields the network reads beside the tokens (none: it takes no
    /// `features` input).
    inputs: Arc<[Input]>,
    /// Each input's feature under the learner's shape ids (`None` while
    /// its shape has none).
    resolved: Vec<(Option<Feature>, Test)>,
    /// Token of each shape id the learner has named.
    by_id: HashMap<ShapeId, i64>,
    /// Shape id of each token the learner has named.
    by_token: HashMap<i64, ShapeId>,
    /// Distributions already computed, by window: the model is a pure
    /// function of it, and a route's few histories recur.
    cache: Arc<Mutex<Distributions>>,
}

/// Windows whose distributions are kept at most; the cache starts over
/// when full.
const CACHE: usize = 4096;

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("window", &self.window)
            .field("vocab_size", &self.vocab_size)
            .finish_non_exhaustive()
    }
}

impl OnnxModel {
    /// Loads and checks a model: it must carry its vocabulary, take
    /// `tokens` and give `probs` of the vocabulary's size.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let environment = runtime()?;
        let invalid = |reason: String| ModelError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let shape = |reason: String| ModelError::Shape {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| ModelError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let session = Session::builder(environment)
            .and_then(|b| {
                b.with_optimization_level(GraphOptimizationLevel::All)
                    .map_err(Into::into)
            })
            .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
            .and_then(|mut b| b.commit_from_memory(&bytes))
            .map_err(|e| invalid(e.to_string()))?;
        let vocab: Vocab = {
            let meta = session.metadata().map_err(|e| invalid(e.to_string()))?;
            let text = meta.custom("augur.vocab").ok_or_else(|| {
                invalid(
                    "no augur.vocab in its metadata (train it with predictor/train/train.py)"
                        .into(),
                )
            })?;
            serde_json::from_str(&text).map_err(|e| invalid(format!("augur.vocab: {e}")))?
        };
        let inputs: Vec<Input> = {
            let meta = session.metadata().map_err(|e| invalid(e.to_string()))?;
            match meta.custom("augur.features") {
                Some(text) => serde_json::from_str(&text)
                    .map_err(|e| invalid(format!("augur.features: {e}")))?,
                None => Vec::new(),
            }
        };
        let takes_features = session.inputs().iter().any(|o| o.name() == "features");
        if takes_features == inputs.is_empty() {
            return Err(shape(if takes_features {
                "it takes features but lists none in augur.features".into()
            } else {
                format!(
                    "augur.features lists {} fields but it has no input named \"features\"",
                    inputs.len()
                )
            }));
        }
        for (name, kind) in [
            ("tokens", "input"),
            ("probs", "output"),
            ("log_latency", "output"),
        ] {
            let outlets = if kind == "input" {
                session.inputs()
            } else {
                session.outputs()
            };
            if !outlets.iter().any(|o| o.name() == name) {
                return Err(shape(format!("no {kind} named {name:?}")));
            }
        }
        if vocab.window == 0 || vocab.window > 256 {
            return Err(shape(format!(
                "window {} is out of range 1..=256",
                vocab.window
            )));
        }
        let offset = 4;
        let routes = vocab
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), (offset + i) as i64))
            .collect();
        let shape_offset = offset + vocab.routes.len();
        let shape_tokens = vocab
            .shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), (shape_offset + i) as i64))
            .collect();
        let mut model = Self {
            session: Arc::new(Mutex::new(session)),
            window: vocab.window,
            vocab_size: shape_offset + vocab.shapes.len(),
            routes,
            shape_tokens,
            shape_offset,
            resolved: Vec::new(),
            inputs: inputs.into(),
            by_id: HashMap::new(),
            by_token: HashMap::new(),
            cache: Arc::new(Mutex::new(HashMap::new())),
        };
        model.resolve();
        // One run proves the shapes line up.
        let (probs, _) = model
            .run(&vec![PAD; model.window], &vec![0.0; model.inputs.len()])
            .map_err(|e| shape(e.to_string()))?;
        if probs.len() != model.vocab_size {
            return Err(shape(format!(
                "probs has {} classes, its vocabulary {}",
                probs.len(),
                model.vocab_size
            )));
        }
        model.by_id.shrink_to_fit();
        Ok(model)
    }

    /// Runs one window with its features (as many as the model's
    /// `inputs`; none for a model that takes none): the next-token
    /// distribution and the log latency.
    pub fn run(&self, tokens: &[i64], features: &[f32]) -> Result<(Vec<f32>, f32), ModelError> {
        let run = |e: ort::Error| ModelError::Run(e.to_string());
        if features.len() != self.inputs.len() {
            return Err(ModelError::Run(format!(
                "{} features given, the model reads {}",
                features.len(),
                self.inputs.len()
            )));
        }
        let tokens = Tensor::from_array(([1usize, tokens.len()], tokens.to_vec())).map_err(run)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| ModelError::Run("session lock poisoned".into()))?;
        let outputs = if self.inputs.is_empty() {
            session.run(ort::inputs!["tokens" => tokens])
        } else {
            let features =
                Tensor::from_array(([1usize, features.len()], features.to_vec())).map_err(run)?;
            session.run(ort::inputs!["tokens" => tokens, "features" => features])
        }
        .map_err(run)?;
        let (_, probs) = outputs["probs"]
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let (_, latency) = outputs["log_latency"]
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::Run(e.to_string()))?;
        Ok((probs.to_vec(), latency.first().copied().unwrap_or(0.0)))
    }

    /// The window of tokens for a route and history.
    pub fn window_for(&self, route: &str, history: &[ShapeId]) -> Option<Vec<i64>> {
        let route = *self.routes.get(route)?;
        let mut seq = Vec::with_capacity(history.len() + 2);
        seq.push(route);
        seq.push(START);
        seq.extend(
            history
                .iter()
                .map(|id| self.by_id.get(id).copied().unwrap_or(UNK)),
        );
        let tail = &seq[seq.len().saturating_sub(self.window)..];
        let mut window = vec![PAD; self.window - tail.len()];
        window.extend_from_slice(tail);
        Some(window)
    }

    pub fn window(&self) -> usize {
        self.window
    }

    /// The fields the model reads beside the call history.
    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// The numbers of the model's fields in `given`.
    pub fn features_in(&self, given: &Available<'_>) -> Vec<f32> {
        features::encode(&self.resolved, given)
    }

    /// Names each input's shape by the learner's id for it, after the
    /// learner named or forgot a shape.
    fn resolve(&mut self) {
        let (offset, by_token) = (self.shape_offset, &self.by_token);
        self.resolved = self
            .inputs
            .iter()
            .map(|input| {
                let id = |k: usize| by_token.get(&((offset + k) as i64)).copied();
                (input.field.feature(id), input.test.clone())
            })
            .collect();
        if let Ok(mut cache) = self.cache.lock() {
            // Windows and features now map differently: forget them.
            cache.clear();
        }
    }

    /// The next-token distribution of a window and its features, from the
    /// cache or a run.
    fn distribution(&self, window: Vec<i64>, features: Vec<f32>) -> Option<Arc<[f32]>> {
        let key = (window, features.iter().map(|f| f.to_bits()).collect());
        if let Some(hit) = self.cache.lock().ok()?.get(&key) {
            return Some(hit.clone());
        }
        let (probs, _) = self.run(&key.0, &features).ok()?;
        let probs: Arc<[f32]> = probs.into();
        let mut cache = self.cache.lock().ok()?;
        if cache.len() >= CACHE {
            cache.clear();
        }
        cache.insert(key, probs.clone());
        Some(probs)
    }
}

impl SequenceModel for OnnxModel {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn boxed_clone(&self) -> Box<dyn SequenceModel> {
        Box::new(self.clone())
    }

    /// Trained offline: closed contexts teach it nothing.
    fn observe(&mut self, _route: &str, _shapes: &[ShapeId]) {}

    fn next(&self, route: &str, history: &[ShapeId]) -> Vec<(Next, f64)> {
        self.next_given(route, history, &Available::default())
    }

    fn next_given(
        &self,
        route: &str,
        history: &[ShapeId],
        given: &Available<'_>,
    ) -> Vec<(Next, f64)> {
        let Some(window) = self.window_for(route, history) else {
            return Vec::new();
        };
        let Some(probs) = self.distribution(window, self.features_in(given)) else {
            return Vec::new();
        };
        let mut out: Vec<(Next, f64)> = probs
            .iter()
            .enumerate()
            .filter_map(|(token, p)| {
                let next = if token as i64 == END {
                    Next::End
                } else {
                    Next::Call(*self.by_token.get(&(token as i64))?)
                };
                (*p > 0.001).then_some((next, f64::from(*p)))
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    fn memory_bytes(&self) -> usize {
        // The session's own memory is ONNX Runtime's; count the tables.
        (self.routes.len() + self.shape_tokens.len() + self.inputs.len() * 2) * 64
            + self.by_id.len() * 16
            + self.by_token.len() * 16
    }

    fn shape_added(&mut self, id: ShapeId, shape: &Shape) {
        let token = self
            .shape_tokens
            .get(&shape.to_string())
            .copied()
            .unwrap_or(UNK);
        self.by_id.insert(id, token);
        if token != UNK {
            self.by_token.insert(token, id);
        }
        self.resolve();
    }

    fn shape_removed(&mut self, id: ShapeId) {
        if let Some(token) = self.by_id.remove(&id) {
            if self.by_token.get(&token) == Some(&id) {
                self.by_token.remove(&token);
            }
        }
        self.resolve();
    }
}
