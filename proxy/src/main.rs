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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { files } => check_config(&files),
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    augur_proxy::telemetry::init_logs();
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
    match augur_proxy::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("augur: {e:#}");
            ExitCode::FAILURE
        }
    }
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
