//! `augur`: the command line. Each subcommand is a few lines that hand off
//! to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: glibc's malloc and free were a tenth of the proxy's CPU time
/// in the pass-through profile (BENCHMARKS.md). Built without transparent
/// huge pages (`no_thp`): with them, its arenas held 2 MiB pages of which
/// a few KiB were used, 10 of an idle augur's 18 MiB.
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
    Eval(augur_proxy::offline::EvalArgs),
    /// What a running augur is doing, per route and per dependency, over
    /// a window (two scrapes of its /metrics): request rate, success rate,
    /// p50/p99 latency, and for dependencies the share answered from
    /// speculation (AHEAD), the latency it hid per call (HIDDEN), the
    /// extra upstream requests it cost (EXTRA) and the containers running.
    Stat(augur_proxy::stat::StatArgs),
    /// Make a saved state (`predictor.state`) from trace files: each
    /// route's last contexts, learned by a new augur before its first
    /// request, so that it speculates from that request on.
    Learn(augur_proxy::offline::LearnArgs),
    /// Write the trace suite: one JSON Lines trace per class of difficulty
    /// (chains, branches decided by a response or the inbound request,
    /// long-range dependence, fan-out, computed parameters, drift,
    /// interleaving), seeded, for `augur eval`.
    Suite(augur_proxy::offline::SuiteArgs),
    /// Write the call sequences of trace files as JSON: the training data
    /// of `predictor/train/train.py`.
    ExportSequences(augur_proxy::offline::ExportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { files } => check_config(&files),
        Command::Eval(args) => eval(args),
        Command::Stat(args) => match augur_proxy::stat::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("augur stat: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Learn(args) => match augur_proxy::offline::learn(&args) {
            Ok((contexts, routes)) => {
                println!(
                    "{}: {contexts} contexts of {routes} routes for service {:?}",
                    args.out.display(),
                    args.service
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("augur learn: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Suite(args) => match augur_proxy::offline::suite(&args) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("augur suite: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::ExportSequences(args) => print_json(
            "export-sequences",
            augur_proxy::offline::export(&args),
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
    let format = config.log.format;
    augur_proxy::init_logs(format);
    for o in &config.overrides {
        tracing::info!("{} set by {}", o.key, o.variable);
    }
    match augur_proxy::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match format {
                augur_config::LogFormat::Text => eprintln!("augur: {e:#}"),
                augur_config::LogFormat::Json => tracing::error!("{e:#}"),
            }
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
            Ok(config) => {
                println!("{}: ok: {}", path.display(), config.summary());
                for o in &config.overrides {
                    println!("{}: {} set by {}", path.display(), o.key, o.variable);
                }
            }
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
