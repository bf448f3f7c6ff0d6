//! `augur`: the command line. Each subcommand is a few lines that hand off
//! to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: glibc's malloc and free were a tenth of the proxy's CPU time
/// in the pass-through profile (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// augur: a sidecar HTTP reverse proxy that learns which dependency calls a
/// service makes and makes them happen earlier.
#[derive(Parser)]
#[command(name = "augur", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy: the ingress listener in front of the service, one
    /// egress listener per dependency, and the admin listener. Stops on
    /// SIGTERM or SIGINT after draining in-flight requests.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate configuration files. Prints a one-line summary per valid
    /// file; for an invalid one, every problem with its key path. Exits
    /// non-zero if any file is invalid.
    CheckConfig {
        /// The files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Replay trace files (JSON Lines, as `predictor.trace_log` writes
    /// them) through a fresh predictor, in order, and print as JSON how
    /// well it would have predicted: next_call_top1,
    /// speculation_precision, speculation_recall, hidden_latency_fraction,
    /// predict_us_p50/p99. Bad lines are reported and skipped.
    Eval {
        /// Trace files, replayed in the order given.
        #[arg(required = true)]
        traces: Vec<PathBuf>,
        /// `online` (learns as it replays) or `onnx:PATH`.
        #[arg(long, default_value = "online")]
        model: String,
        /// Share of contexts learned from before measuring (default: 0 for
        /// online, which learns as it goes; 0.5 for onnx, which learns
        /// parameter rules and timings from that share).
        #[arg(long)]
        train_fraction: Option<f64>,
        /// Probability at or above which a prediction is speculated.
        #[arg(long, default_value_t = 0.8)]
        confidence: f64,
        /// How far ahead a call may be expected and still be speculated.
        #[arg(long, default_value = "200ms", value_parser = parse_duration)]
        horizon: std::time::Duration,
        /// Contexts a parameter rule must hold in before it is used.
        #[arg(long, default_value_t = 3)]
        min_observations: u32,
    },
    /// Write the call sequences of trace files as JSON: the training data
    /// of `predictor/train/train.py`.
    ExportSequences {
        #[arg(required = true)]
        traces: Vec<PathBuf>,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { files } => check_config(&files),
        Command::Eval {
            traces,
            model,
            train_fraction,
            confidence,
            horizon,
            min_observations,
        } => eval(augur_proxy::offline::EvalArgs {
            traces,
            model,
            train_fraction,
            confidence,
            horizon,
            min_observations,
        }),
        Command::ExportSequences { traces } => print_json(
            "export-sequences",
            augur_proxy::offline::export(&traces),
            false,
        ),
    }
}

/// Prints a command's result as JSON (exit 0), or its error (exit 2).
fn print_json<T: serde::Serialize>(
    command: &str,
    result: anyhow::Result<T>,
    pretty: bool,
) -> ExitCode {
    let value = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("augur {command}: {e:#}");
            return ExitCode::from(2);
        }
    };
    let text = if pretty {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    };
    match text {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("augur {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    augur_proxy::init_logs();
    let config = match augur_config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("augur: invalid configuration {}:", path.display());
            for line in e.lines() {
                eprintln!("  {line}");
            }
            return ExitCode::from(2);
        }
    };
    match augur_proxy::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("augur: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn eval(args: augur_proxy::offline::EvalArgs) -> ExitCode {
    print_json("eval", augur_proxy::offline::run(&args), true)
}

fn check_config(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for path in files {
        match augur_config::load(path) {
            Ok(config) => println!("{}: ok: {}", path.display(), config.summary()),
            Err(e) => {
                failed = true;
                for line in e.lines() {
                    println!("{}: {line}", path.display());
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
