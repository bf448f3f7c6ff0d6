//! `augur-loadtests`: the demo and the benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use augur_loadtests::cli::humantime_duration;
use augur_loadtests::{bench, containers_bench, demo, server};
use clap::{Parser, Subcommand};

/// augur's demo topology, load generator and benchmarks.
#[derive(Parser)]
#[command(name = "augur-loadtests", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The demo: a hotel-reservation application (7 dependencies) run
    /// direct, through augur passing through, and through augur
    /// speculating; checks every answer and prints one table.
    Demo {
        #[arg(long)]
        augur: Option<PathBuf>,
        /// Requests per second in each measured run.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        duration: Duration,
        /// Warm-up requests per endpoint, at most.
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        /// How long each dependency takes to answer.
        #[arg(long, default_value = "5ms", value_parser = humantime_duration)]
        latency: Duration,
        /// Have the speculating augur write its trace log here.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Run only the speculating mode (a soak: it reports augur's memory).
        #[arg(long)]
        only_speculating: bool,
    },
    /// A tour of what augur records: a frontend with two dependencies;
    /// prints augur's counters, contexts and what it learned.
    Tour {
        /// The augur binary (default: the one built beside this program).
        #[arg(long)]
        augur: Option<PathBuf>,
        #[arg(long, default_value_t = 300)]
        requests: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// How long each dependency takes to answer.
        #[arg(long, default_value = "2ms", value_parser = humantime_duration)]
        latency: Duration,
        /// Have augur write its trace log here.
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// The pass-through benchmark: direct, augur, nginx and haproxy in one
    /// run. Prints a Markdown table.
    BenchPassthrough {
        #[command(flatten)]
        opts: bench::BenchOptions,
        /// Also write the table to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The container benchmark: a bursty workload over scale-to-zero
    /// container dependencies under four policies (scale to zero, fixed
    /// keep-alive, adaptive keep-alive, prestart). Prints a Markdown table.
    BenchContainers {
        #[command(flatten)]
        opts: containers_bench::Options,
        /// Also write the table to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Serve a fixed body as fast as possible (the benchmarks' upstream).
    ServeFast {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1024)]
        body_bytes: usize,
        /// Wait this long before listening (an application's start-up).
        #[arg(long, default_value = "0s", value_parser = humantime_duration)]
        startup: Duration,
        /// Take this long to answer each request.
        #[arg(long, default_value = "0s", value_parser = humantime_duration)]
        latency: Duration,
    },
    /// Serve one role of the tour's application (the docker-compose demo).
    Serve {
        #[command(subcommand)]
        role: Role,
    },
}

#[derive(Subcommand)]
enum Role {
    /// `GET /profile/{id}`: calls users, then posts.
    Frontend {
        #[arg(long)]
        listen: SocketAddr,
        /// Where to call users (augur's egress listener).
        #[arg(long)]
        users: SocketAddr,
        /// Where to call posts (augur's egress listener).
        #[arg(long)]
        posts: SocketAddr,
    },
    /// `GET /users/{id}`.
    Users {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "2ms", value_parser = humantime_duration)]
        latency: Duration,
    },
    /// `GET /posts?feed=f{id}`.
    Posts {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "2ms", value_parser = humantime_duration)]
        latency: Duration,
    },
}

/// Prints a result table, and writes it to `out` when given.
fn emit(table: &str, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    println!("{table}");
    if let Some(path) = out {
        std::fs::write(path, table).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Runs until SIGTERM or SIGINT: a server in a container is PID 1, which
/// the kernel does not stop for an unhandled SIGTERM.
async fn until_stopped() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Demo {
                augur,
                rate,
                duration,
                warmup,
                latency,
                trace,
                only_speculating,
            } => {
                augur_loadtests::hotel_demo::run(augur_loadtests::hotel_demo::Options {
                    augur,
                    rate,
                    duration,
                    warmup_per_route: warmup,
                    latency,
                    trace,
                    only_speculating,
                })
                .await
            }
            Command::Tour {
                augur,
                requests,
                concurrency,
                latency,
                trace,
            } => {
                demo::run(demo::DemoOptions {
                    augur,
                    requests,
                    concurrency,
                    latency,
                    trace,
                })
                .await
            }
            Command::BenchPassthrough { opts, out } => {
                emit(&bench::run(opts).await?, out.as_deref())
            }
            Command::BenchContainers { opts, out } => {
                emit(&containers_bench::run(opts).await?, out.as_deref())
            }
            Command::ServeFast {
                listen,
                body_bytes,
                startup,
                latency,
            } => {
                tokio::time::sleep(startup).await;
                let body = bytes::Bytes::from(vec![b'x'; body_bytes]);
                server::serve(listen, move |_req| {
                    let body = body.clone();
                    async move {
                        if !latency.is_zero() {
                            tokio::time::sleep(latency).await;
                        }
                        server::respond(200, "application/octet-stream", body)
                    }
                })
                .await?;
                until_stopped().await
            }
            Command::Serve { role } => {
                let at = match role {
                    Role::Frontend {
                        listen,
                        users,
                        posts,
                    } => demo::serve_frontend(listen, users, posts).await?,
                    Role::Users { listen, latency } => demo::serve_users(listen, latency).await?,
                    Role::Posts { listen, latency } => demo::serve_posts(listen, latency).await?,
                };
                eprintln!("serving on {at}");
                until_stopped().await
            }
        }
    })
}
