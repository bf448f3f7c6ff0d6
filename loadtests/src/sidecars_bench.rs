//! The container benchmark's bursty workload driven through several
//! sidecars — the replicas of one service, each with its augur, requests
//! taking turns over them as behind a load balancer — with the container
//! dependencies (a) run by each sidecar on the local engine, its own, and
//! (b) one Swarm service per dependency that every sidecar scales.
//!
//! What it costs is measured from the engine, the same way for both: the
//! dependency containers running (local containers, or the swarm tasks'
//! containers) are sampled every 250 ms; container-seconds is their count
//! integrated over the measured bursts, and "containers started" the
//! distinct ones seen. A sidecar's own `augur_container_seconds_total`
//! would count a shared task once per sidecar holding it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::cli::humantime_duration;
use crate::containers_bench::{
    CONTAINER_DEPS, Replica, Workload, metric_sum, require_image, scrape, serve_catalog,
};
use crate::procs::{self, free_port, local};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The augur binary (default: the one built beside this program).
    #[arg(long)]
    pub augur: Option<PathBuf>,
    /// Sidecars (replicas of the service).
    #[arg(long, default_value_t = 2)]
    pub sidecars: usize,
    /// Engines to compare, comma separated: `docker` (each sidecar its own
    /// containers), `swarm` (one shared service per dependency).
    #[arg(long, default_value = "docker,swarm", value_delimiter = ',')]
    pub engines: Vec<String>,
    /// Policies, comma separated: `cold` (keep-alive 0, no prestart) and
    /// `prestart` (keep-alive `--prestart-keep-alive`, prestart on).
    #[arg(long, default_value = "cold,prestart", value_delimiter = ',')]
    pub policies: Vec<String>,
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    pub prestart_keep_alive: Duration,
    #[command(flatten)]
    pub workload: Workload,
}

#[derive(Debug)]
struct Row {
    engine: String,
    policy: String,
    calls: f64,
    cold_waits: f64,
    waited_seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    container_seconds: f64,
    started: usize,
    measured: Duration,
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    require_image()?;
    if opts.sidecars == 0 {
        bail!("--sidecars must be at least 1");
    }
    for e in &opts.engines {
        if e != "docker" && e != "swarm" {
            bail!("unknown engine {e:?} (docker or swarm)");
        }
    }
    for p in &opts.policies {
        if p != "cold" && p != "prestart" {
            bail!("unknown policy {p:?} (cold or prestart)");
        }
    }
    let augur = procs::augur_binary(opts.augur.clone())?;
    let swarm = if opts.engines.iter().any(|e| e == "swarm") {
        Some(Swarm::join()?)
    } else {
        None
    };
    let catalog = serve_catalog(opts.workload.catalog).await?;
    let mut rows = Vec::new();
    for policy in &opts.policies {
        for engine in &opts.engines {
            eprintln!("sidecars bench: {engine}, {policy} …");
            rows.push(measure(&augur, engine, policy, catalog, &opts).await?);
        }
    }
    drop(swarm);
    Ok(table(&rows, &opts))
}

/// The single-node swarm the bench runs on: made here (and left at the
/// end) unless the engine is in one already.
struct Swarm {
    made: bool,
}

impl Swarm {
    fn join() -> anyhow::Result<Swarm> {
        if docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).trim() == "active" {
            return Ok(Swarm { made: false });
        }
        let out = std::process::Command::new("docker")
            .args(["swarm", "init", "--advertise-addr", "127.0.0.1"])
            .output()?;
        if !out.status.success() {
            bail!(
                "docker swarm init: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Swarm { made: true })
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.made {
            docker(&["swarm", "leave", "--force"]);
        }
    }
}

fn docker(args: &[&str]) -> String {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Samples the running containers that carry one of `labels` (as
/// `key=value`) until stopped: container-seconds and the distinct
/// containers seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(f64, usize)>,
}

impl Sampler {
    fn start(labels: Vec<String>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut seconds = 0.0;
            let mut last = Instant::now();
            let mut running = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let out = docker(&[
                    "ps",
                    "--no-trunc",
                    "--format",
                    "{{.ID}} augur.service={{.Label \"augur.service\"}} com.docker.swarm.service.name={{.Label \"com.docker.swarm.service.name\"}}",
                ]);
                let now = Instant::now();
                seconds += running as f64 * (now - last).as_secs_f64();
                last = now;
                running = 0;
                for line in out.lines() {
                    let mut words = line.split(' ');
                    let id = words.next().unwrap_or_default();
                    if words.any(|w| labels.iter().any(|l| l == w)) {
                        running += 1;
                        seen.insert(id.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            seconds += running as f64 * last.elapsed().as_secs_f64();
            (seconds, seen.len())
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> (f64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0.0, 0))
    }
}

async fn measure(
    binary: &std::path::Path,
    engine: &str,
    policy: &str,
    catalog: SocketAddr,
    opts: &Options,
) -> anyhow::Result<Row> {
    let dir = procs::scratch("sidecars-bench")?;
    let base = format!("sidecars{}", free_port()?);
    let (keep_alive, prestart) = match policy {
        "cold" => ("0s".to_string(), false),
        _ => (format!("{}ms", opts.prestart_keep_alive.as_millis()), true),
    };
    let mut procs_ = Vec::new();
    let mut ingresses = Vec::new();
    let mut admins = Vec::new();
    let mut labels = Vec::new();
    for i in 0..opts.sidecars {
        // On a swarm every replica is the same service (so its sidecars
        // share the dependency services); on one engine each sidecar's
        // containers are its own.
        let service = if engine == "swarm" {
            base.clone()
        } else {
            format!("{base}-{i}")
        };
        let replica = Replica::new(catalog, Some(service.clone())).await?;
        let (ingress, admin) = (replica.ingress, replica.admin);
        let config = replica.config(
            &opts.workload,
            &keep_alive,
            prestart,
            &format!("engine = \"{engine}\"\nstart_timeout = \"60s\"\n"),
        );
        for name in CONTAINER_DEPS {
            if engine == "swarm" && i == 0 {
                labels.push(format!(
                    "com.docker.swarm.service.name=augur-{service}-{name}"
                ));
            }
        }
        if engine == "docker" {
            labels.push(format!("augur.service={service}"));
        }
        procs_.push(procs::start_augur(
            binary,
            &dir,
            &format!("{engine}-{policy}-{i}"),
            &config,
            admin,
            None,
        )?);
        ingresses.push(local(ingress));
        admins.push(admin);
    }
    let mut rng = fastrand::Rng::with_seed(opts.workload.seed);
    opts.workload.warm_up(&ingresses, &mut rng).await;
    let before: Vec<String> = admins
        .iter()
        .map(|a| scrape(*a))
        .collect::<Result<_, _>>()?;
    let sampler = Sampler::start(labels);
    let run = opts.workload.measure(&ingresses, &mut rng).await?;
    let (container_seconds, started) = sampler.finish();
    let after: Vec<String> = admins
        .iter()
        .map(|a| scrape(*a))
        .collect::<Result<_, _>>()?;
    drop(procs_);
    if engine == "swarm" {
        for dep in CONTAINER_DEPS {
            docker(&["service", "rm", &format!("augur-{base}-{dep}")]);
        }
    }
    let delta = |prefix: &str| -> f64 {
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| metric_sum(a, prefix) - metric_sum(b, prefix))
            .sum()
    };
    let calls: f64 = CONTAINER_DEPS
        .iter()
        .map(|dep| {
            delta(&format!(
                "augur_dependency_calls_total{{dependency=\"{dep}\","
            ))
        })
        .sum();
    Ok(Row {
        engine: engine.to_string(),
        policy: policy.to_string(),
        calls,
        cold_waits: delta("augur_cold_start_wait_seconds_count "),
        waited_seconds: delta("augur_cold_start_wait_seconds_sum "),
        p50_ms: run.ms(0.5),
        p99_ms: run.ms(0.99),
        errors: run.errors,
        container_seconds,
        started,
        measured: run.took,
    })
}

fn table(rows: &[Row], opts: &Options) -> String {
    let mut out = format!(
        "{} sidecars (requests taking turns over them), {}; `cold` = keep-alive 0 and no prestart, `prestart` = keep-alive {} s and prestart.\n\n",
        opts.sidecars,
        opts.workload.describe(),
        opts.prestart_keep_alive.as_secs_f64(),
    );
    out.push_str("| dependencies | policy | container calls | waited for a start | seconds waited | inbound p50 | inbound p99 | errors | container-seconds | containers started | measured |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let engine = if r.engine == "swarm" {
            "one swarm service, shared"
        } else {
            "each sidecar its own (local)"
        };
        out.push_str(&format!(
            "| {engine} | {} | {} | {} | {:.1} | {:.0} ms | {:.0} ms | {} | {:.1} | {} | {:.0} s |\n",
            r.policy,
            r.calls,
            r.cold_waits,
            r.waited_seconds,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.container_seconds,
            r.started,
            r.measured.as_secs_f64(),
        ));
    }
    out
}
