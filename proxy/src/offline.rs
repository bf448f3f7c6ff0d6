//! `augur eval`: replays trace files through a fresh learner and reports,
//! as JSON, how well it would have predicted and speculated.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use augur_predictor::eval::{EvalReport, EvalSettings, evaluate};
use augur_predictor::{Context, Learner, Settings, trace};

/// What `augur eval` was asked.
#[derive(Debug, Clone)]
pub struct EvalArgs {
    pub traces: Vec<PathBuf>,
    /// `online`, or `onnx:PATH`.
    pub model: String,
    /// Share of contexts learned from before measuring; by default none for
    /// the online model (it learns as it goes) and half for ONNX.
    pub train_fraction: Option<f64>,
    pub confidence: f64,
    pub horizon: Duration,
    pub min_observations: u32,
}

/// Reads trace files in order; bad lines go to stderr with file and line.
pub fn read_traces(paths: &[PathBuf]) -> anyhow::Result<Vec<Context>> {
    let mut contexts: Vec<Context> = Vec::new();
    for path in paths {
        let (records, errors) = trace::read_path(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        for e in &errors {
            eprintln!("{}:{}: skipped: {}", path.display(), e.line, e.error);
        }
        contexts.extend(records.into_iter().map(|r| r.context));
    }
    if contexts.is_empty() {
        bail!("no contexts in {} trace file(s)", paths.len());
    }
    Ok(contexts)
}

/// `augur export-sequences`: the training data of an offline model.
pub fn export(paths: &[PathBuf]) -> anyhow::Result<augur_predictor::dataset::Dataset> {
    Ok(augur_predictor::dataset::dataset(&read_traces(paths)?))
}

/// Reads every trace (bad lines go to stderr with file and line number),
/// replays them in order and returns the report.
pub fn run(args: &EvalArgs) -> anyhow::Result<EvalReport> {
    let fraction = args
        .train_fraction
        .unwrap_or(if args.model == "online" { 0.0 } else { 0.5 });
    if !(0.0..=1.0).contains(&fraction) {
        bail!("--train-fraction must be within 0..=1, not {fraction}");
    }
    let settings = Settings {
        min_observations: args.min_observations,
        ..Settings::default()
    };
    let (mut learner, online) = match args.model.as_str() {
        "online" => (Learner::new(settings), true),
        other => match other.strip_prefix("onnx:") {
            Some(path) => {
                let model = augur_predictor::onnx::OnnxModel::load(std::path::Path::new(path))?;
                (Learner::with_model(settings, Box::new(model)), false)
            }
            None => bail!("--model must be \"online\" or \"onnx:PATH\", not {other:?}"),
        },
    };
    let contexts = read_traces(&args.traces)?;
    let eval = EvalSettings {
        confidence: args.confidence,
        horizon_us: u64::try_from(args.horizon.as_micros()).unwrap_or(u64::MAX),
        learn_online: online,
        train: (contexts.len() as f64 * fraction).round() as usize,
    };
    Ok(evaluate(&mut learner, &args.model, &contexts, &eval))
}
