//! `augur eval`: replays trace files through a fresh learner and reports,
//! as JSON, how well it would have predicted and speculated.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use augur_predictor::eval::{EvalReport, EvalSettings, evaluate};
use augur_predictor::{Context, Learner, Settings, trace};

/// What `augur eval` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Trace files, replayed in the order given.
    #[arg(required = true)]
    pub traces: Vec<PathBuf>,
    /// `online` (learns as it replays) or `onnx:PATH`.
    #[arg(long, default_value = "online")]
    pub model: String,
    /// Share of contexts learned from before measuring (default: 0 for
    /// online, which learns as it goes; 0.5 for onnx, which learns
    /// parameter rules and timings from that share).
    #[arg(long)]
    pub train_fraction: Option<f64>,
    /// Probability at or above which a prediction is speculated.
    #[arg(long, default_value_t = 0.8)]
    pub confidence: f64,
    /// How far ahead a call may be expected and still be speculated.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub horizon: Duration,
    /// Contexts a parameter rule must hold in before it is used.
    #[arg(long, default_value_t = 3)]
    pub min_observations: u32,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
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
        horizon_us: crate::clock::micros(args.horizon),
        learn_online: online,
        train: (contexts.len() as f64 * fraction).round() as usize,
    };
    Ok(evaluate(&mut learner, &args.model, &contexts, &eval))
}
