//! `augur-loadtests`: the demo and the benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use augur_loadtests::cli::humantime_duration;
use augur_loadtests::hotel::Hotel;
use augur_loadtests::shop::Shop;
use augur_loadtests::{
    app_demo, bench, chaos, containers_bench, demo, fuzz_http, hostile, server, settings_bench,
    sidecars_bench, transport,
};
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
    /// The demo: an application — the hotel reservation (7 dependencies),
    /// the shop (5, written to be hard on speculation), or both — run
    /// direct, through augur passing through, and through augur
    /// speculating; checks every answer and prints one table each.
    Demo {
        #[command(flatten)]
        opts: app_demo::Options,
        /// Which application: `hotel`, `shop`, or `both` (one after the
        /// other).
        #[arg(long, default_value = "both", value_parser = ["hotel", "shop", "both"])]
        app: String,
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
    /// pingora's settings one at a time: the bare pingora proxy with
    /// augur's settings and with each one changed (upstream timeouts,
    /// keep-alive pool, listener buffers), in rounds. Prints a Markdown
    /// table.
    BenchSettings {
        #[command(flatten)]
        opts: settings_bench::SettingsOptions,
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
    /// The container benchmark's bursty workload through several sidecars
    /// (replicas of one service), their container dependencies each
    /// sidecar's own on the local engine, or one Swarm service per
    /// dependency that every sidecar scales. Prints a Markdown table.
    BenchSidecars {
        #[command(flatten)]
        opts: sidecars_bench::Options,
        /// Also write the table to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Hostile HTTP/1.1 over raw sockets against augur: a catalogue of
    /// malformed requests, smuggling attempts, bad chunks, oversized headers,
    /// pipelines and early closes, then seeded random mutations until
    /// `--duration`. Exits non-zero on any finding.
    FuzzHttp {
        /// How long to send mutations after the catalogue.
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        duration: Duration,
        /// The mutations' seed (random when absent; printed either way).
        #[arg(long)]
        seed: Option<u64>,
        /// The augur binary (default: the one built beside this program).
        #[arg(long)]
        augur: Option<PathBuf>,
        /// At most this many cases in all.
        #[arg(long, default_value_t = 1_000_000)]
        max_cases: usize,
    },
    /// The chaos soak: the hotel demo and a container dependency at a
    /// steady rate while dependencies, the container, the Docker daemon and
    /// augur itself fail in turn. Prints sent / answered / failed (and the
    /// fault behind each failure) / wrong, memory over time, and what was
    /// left behind; exits non-zero on a wrong answer, an unexplained
    /// failure or a leftover.
    Chaos {
        #[command(flatten)]
        opts: chaos::Options,
    },
    /// Slow clients: the hotel demo at a fixed rate, measured before,
    /// during and after hundreds of silent and trickling connections on
    /// augur's ingress and egress listeners. Exits non-zero if a demo
    /// request failed or its p99 rose past the limit.
    Slowloris {
        #[command(flatten)]
        opts: hostile::SlowlorisOptions,
    },
    /// Junk routes: a million requests over tens of thousands of junk
    /// paths beside the hotel demo's traffic; augur's memory sampled as it
    /// goes, then the demo's routes checked still learned and speculated.
    JunkRoutes {
        #[command(flatten)]
        opts: hostile::JunkOptions,
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
        /// Also serve over TLS here, with `--cert` and `--key` (PEM).
        #[arg(long, requires_all = ["cert", "key"])]
        tls_listen: Option<SocketAddr>,
        #[arg(long)]
        cert: Option<std::path::PathBuf>,
        #[arg(long)]
        key: Option<std::path::PathBuf>,
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

/// The demo's options for one application: with several, each writes its
/// own trace log (`trace.jsonl` → `trace-shop.jsonl`).
fn per_app(opts: &app_demo::Options, name: &str, several: bool) -> app_demo::Options {
    let mut opts = opts.clone();
    if let (true, Some(path)) = (several, &opts.trace) {
        let stem = path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let file = match path.extension() {
            Some(ext) => format!("{stem}-{name}.{}", ext.to_string_lossy()),
            None => format!("{stem}-{name}"),
        };
        opts.trace = Some(path.with_file_name(file));
    }
    opts
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
            Command::Demo { opts, app } => {
                let both = app == "both";
                if both || app == "hotel" {
                    app_demo::run::<Hotel>(&per_app(&opts, "hotel", both)).await?;
                }
                if both || app == "shop" {
                    app_demo::run::<Shop>(&per_app(&opts, "shop", both)).await?;
                }
                Ok(())
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
            Command::BenchSettings { opts, out } => {
                emit(&settings_bench::run(opts).await?, out.as_deref())
            }
            Command::BenchContainers { opts, out } => {
                emit(&containers_bench::run(opts).await?, out.as_deref())
            }
            Command::BenchSidecars { opts, out } => {
                emit(&sidecars_bench::run(opts).await?, out.as_deref())
            }
            Command::FuzzHttp {
                duration,
                seed,
                augur,
                max_cases,
            } => {
                fuzz_http::run(fuzz_http::Options {
                    duration,
                    seed,
                    augur,
                    max_cases,
                })
                .await
            }
            Command::Chaos { opts } => chaos::run(opts).await.map(drop),
            Command::Slowloris { opts } => hostile::slowloris(opts).await.map(drop),
            Command::JunkRoutes { opts } => hostile::junk_routes(opts).await.map(drop),
            Command::ServeFast {
                listen,
                body_bytes,
                startup,
                latency,
                tls_listen,
                cert,
                key,
            } => {
                tokio::time::sleep(startup).await;
                let body = bytes::Bytes::from(vec![b'x'; body_bytes]);
                let handler = move |_req| {
                    let body = body.clone();
                    async move {
                        if !latency.is_zero() {
                            tokio::time::sleep(latency).await;
                        }
                        server::respond(200, "application/octet-stream", body)
                    }
                };
                if let (Some(at), Some(cert), Some(key)) = (tls_listen, cert, key) {
                    let config = transport::server_config_from(&cert, &key)?;
                    server::serve_tls(at, config, handler.clone()).await?;
                }
                server::serve(listen, handler).await?;
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
