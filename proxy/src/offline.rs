//! `augur eval`: replays trace files through a fresh learner and reports,
//! as JSON, how well it would have predicted and speculated. `augur suite`
//! writes the generated trace suite it is measured on.

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
    /// `online` (learns as it replays), `onnx:PATH`, or `auto:PATH` (both,
    /// each route to the one right more often on it lately; learns as it
    /// replays).
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

/// What `augur export-sequences` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    #[arg(required = true)]
    pub traces: Vec<PathBuf>,
    /// Fields of the context (inbound request, responses) a network reads
    /// beside the call history, chosen by what they tell of the next call
    /// (0: none).
    #[arg(long, default_value_t = 32)]
    pub features: usize,
    /// Choose the fields from this first share of the contexts only (the
    /// share a model trains on).
    #[arg(long, default_value_t = 1.0)]
    pub train_fraction: f64,
}

/// `augur export-sequences`: the training data of an offline model.
pub fn export(args: &ExportArgs) -> anyhow::Result<augur_predictor::dataset::Dataset> {
    if !(0.0..=1.0).contains(&args.train_fraction) {
        bail!(
            "--train-fraction must be within 0..=1, not {}",
            args.train_fraction
        );
    }
    let contexts = read_traces(&args.traces)?;
    let choice = augur_predictor::dataset::FeatureChoice {
        inputs: args.features,
        from: (contexts.len() as f64 * args.train_fraction).round() as usize,
    };
    Ok(augur_predictor::dataset::dataset(&contexts, choice))
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
        other => match (other.strip_prefix("onnx:"), other.strip_prefix("auto:")) {
            (Some(path), _) => {
                let model = augur_predictor::onnx::OnnxModel::load(std::path::Path::new(path))?;
                (Learner::with_model(settings, Box::new(model)), false)
            }
            // The online model and the ONNX one, each route to the one
            // that has been right more often on it: learns as it replays.
            (_, Some(path)) => {
                let model = augur_predictor::onnx::OnnxModel::load(std::path::Path::new(path))?;
                let online = augur_predictor::sequence::OnlineModel::new(
                    augur_predictor::sequence::OnlineSettings::default(),
                );
                let auto = augur_predictor::auto::AutoModel::new(Box::new(online), Box::new(model));
                (Learner::with_model(settings, Box::new(auto)), true)
            }
            _ => bail!("--model must be \"online\", \"onnx:PATH\" or \"auto:PATH\", not {other:?}"),
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

/// What `augur suite` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// The folder to write `CLASS.jsonl` into (made if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Contexts per class.
    #[arg(long, default_value_t = 1000)]
    pub contexts: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Only these classes (comma separated); all by default.
    #[arg(long, value_delimiter = ',')]
    pub class: Vec<String>,
}

/// `augur suite`: writes one trace file per class of the suite; returns
/// the files written.
pub fn suite(args: &SuiteArgs) -> anyhow::Result<Vec<PathBuf>> {
    use augur_predictor::suite::{Class, generate};
    use std::io::Write as _;
    let classes: Vec<Class> = if args.class.is_empty() {
        Class::ALL.to_vec()
    } else {
        args.class
            .iter()
            .map(|name| {
                Class::from_name(name).ok_or_else(|| {
                    let known: Vec<&str> = Class::ALL.iter().map(|c| c.name()).collect();
                    anyhow::anyhow!("unknown class {name:?} (known: {})", known.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    std::fs::create_dir_all(&args.out)
        .map_err(|e| anyhow::anyhow!("cannot make {}: {e}", args.out.display()))?;
    let mut written = Vec::new();
    for class in classes {
        let path = args.out.join(format!("{}.jsonl", class.name()));
        let file = std::fs::File::create(&path)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for (i, context) in generate(class, args.contexts, args.seed)
            .into_iter()
            .enumerate()
        {
            let duration = context.calls.iter().map(|c| c.end_us()).max().unwrap_or(0) + 200;
            let id = Some(format!("{:032x}", (args.seed << 32) + i as u64));
            let record = trace::Record::new(id, 200, duration, context);
            writeln!(out, "{}", record.to_line())?;
        }
        out.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// What `augur learn` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct LearnArgs {
    /// Trace files, in the order they were written.
    #[arg(required = true)]
    pub traces: Vec<PathBuf>,
    /// The state file to write (`predictor.state` of the augur that will
    /// read it).
    #[arg(long)]
    pub out: PathBuf,
    /// `service.name` of that augur: a state names the service it is for.
    #[arg(long)]
    pub service: String,
}

/// `augur learn`: a saved state made from trace files — each route's last
/// contexts, as a running augur keeps them — so a new replica starts warm.
/// Returns (contexts, routes) written.
pub fn learn(args: &LearnArgs) -> anyhow::Result<(usize, usize)> {
    use std::collections::{HashMap, VecDeque};
    let contexts = read_traces(&args.traces)?;
    let mut routes: HashMap<&str, VecDeque<&Context>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for c in contexts.iter().filter(|c| !c.calls.is_empty()) {
        let kept = routes.entry(c.route.as_str()).or_insert_with(|| {
            order.push(c.route.as_str());
            VecDeque::new()
        });
        if kept.len() >= crate::learning::SAVED_PER_ROUTE {
            kept.pop_front();
        }
        kept.push_back(c);
    }
    let kept: Vec<&Context> = order
        .iter()
        .filter_map(|r| routes.get(r))
        .flatten()
        .copied()
        .collect();
    if kept.is_empty() {
        bail!("no context with dependency calls in the traces: nothing to learn");
    }
    let none = serde_json::Value::Null;
    augur_predictor::state::write_path(
        &args.out,
        &args.service,
        crate::clock::unix_ms(),
        &kept,
        none,
    )
    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", args.out.display()))?;
    Ok((kept.len(), order.len()))
}
