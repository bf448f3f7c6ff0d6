//! The container benchmark: a bursty workload over scale-to-zero
//! dependencies that augur runs as containers, under four policies —
//! scale to zero with no prestart, a fixed keep-alive, the adaptive
//! keep-alive, and prediction-driven prestart. For each: the share of
//! dependency calls that waited for a cold start, inbound p50/p99, and the
//! container-seconds used.
//!
//! The application: `GET /order/{id}` calls `catalog` (a static
//! dependency, slow: a search), then `pricing` and `tax`, which run as
//! containers of `augur-demo:latest` that take `--startup` to start
//! listening (an application's start-up) on top of Docker's own start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::cli::humantime_duration;
use crate::procs::{self, free_port, local};
use crate::server::{self, respond};

pub(crate) const IMAGE: &str = "augur-demo:latest";
pub(crate) const CONTAINER_DEPS: [&str; 2] = ["pricing", "tax"];

/// The bursty workload and the application, shared with the sidecars
/// benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct Workload {
    /// Bursts measured per run (after the warm-up bursts).
    #[arg(long, default_value_t = 10)]
    pub bursts: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup_bursts: usize,
    /// Requests per burst, `spacing` apart.
    #[arg(long, default_value_t = 6)]
    pub burst_size: usize,
    #[arg(long, default_value = "200ms", value_parser = humantime_duration)]
    pub spacing: Duration,
    /// Shortest idle gap between bursts (gaps are uniform up to the
    /// longest).
    #[arg(long, default_value = "8s", value_parser = humantime_duration)]
    pub gap_min: Duration,
    /// Longest idle gap between bursts.
    #[arg(long, default_value = "14s", value_parser = humantime_duration)]
    pub gap_max: Duration,
    /// How long `catalog` takes.
    #[arg(long, default_value = "1500ms", value_parser = humantime_duration)]
    pub catalog: Duration,
    /// How long the containers' application takes to start listening.
    #[arg(long, default_value = "800ms", value_parser = humantime_duration)]
    pub startup: Duration,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

impl Workload {
    /// The `[[dependency]]` of one container dependency of the application.
    pub(crate) fn container_dep(
        &self,
        name: &str,
        listen: SocketAddr,
        keep_alive: &str,
        prestart: bool,
        more: &str,
    ) -> String {
        format!(
            "\n[[dependency]]\nname = \"{name}\"\nlisten = \"{listen}\"\n[dependency.container]\nimage = \"{IMAGE}\"\nargs = [\"serve-fast\", \"--listen\", \"0.0.0.0:8080\", \"--body-bytes\", \"64\", \"--latency\", \"5ms\", \"--startup\", \"{}ms\"]\nport = 8080\nkeep_alive = \"{keep_alive}\"\nprestart = {prestart}\n{more}",
            self.startup.as_millis(),
        )
    }

    /// The warm-up bursts over `addrs`, each followed by its idle gap.
    pub(crate) async fn warm_up(&self, addrs: &[SocketAddr], rng: &mut fastrand::Rng) {
        for _ in 0..self.warmup_bursts {
            burst(addrs, self.burst_size, self.spacing).await;
            gap(rng, self.gap_min, self.gap_max).await;
        }
    }

    /// The measured bursts over `addrs`, idle gaps between them.
    pub(crate) async fn measure(
        &self,
        addrs: &[SocketAddr],
        rng: &mut fastrand::Rng,
    ) -> anyhow::Result<Measured> {
        let began = Instant::now();
        let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
        let mut errors = 0;
        for i in 0..self.bursts {
            for result in burst(addrs, self.burst_size, self.spacing).await {
                match result {
                    Ok(d) => latency.record(d.as_micros() as u64)?,
                    Err(_) => errors += 1,
                }
            }
            if i + 1 < self.bursts {
                gap(rng, self.gap_min, self.gap_max).await;
            }
        }
        Ok(Measured {
            latency,
            errors,
            took: began.elapsed(),
        })
    }

    /// The line that opens a table: the workload in words.
    pub(crate) fn describe(&self) -> String {
        format!(
            "bursts of {} requests {} ms apart, idle gaps {}–{} s, {} warm-up + {} measured bursts per run; catalog {} ms, container app start-up {} ms",
            self.burst_size,
            self.spacing.as_millis(),
            self.gap_min.as_secs_f64(),
            self.gap_max.as_secs_f64(),
            self.warmup_bursts,
            self.bursts,
            self.catalog.as_millis(),
            self.startup.as_millis(),
        )
    }
}

/// What the measured bursts gave.
pub(crate) struct Measured {
    /// Inbound latencies, in µs.
    pub(crate) latency: Histogram<u64>,
    pub(crate) errors: u64,
    pub(crate) took: Duration,
}

impl Measured {
    /// The latency quantile `q`, in ms.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The augur binary (default: the one built beside this program).
    #[arg(long)]
    pub augur: Option<PathBuf>,
    #[command(flatten)]
    pub workload: Workload,
    /// Fixed keep-alives to compare, comma separated.
    #[arg(long, default_value = "5s,15s", value_parser = humantime_duration, value_delimiter = ',')]
    pub fixed_keep_alive: Vec<Duration>,
    /// The keep-alive of the prestart policy.
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    pub prestart_keep_alive: Duration,
    /// Only the policies whose names start with these (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// One policy: its name and the container settings it implies.
struct Policy {
    name: String,
    keep_alive: String,
    prestart: bool,
}

#[derive(Debug)]
struct Row {
    policy: String,
    calls: f64,
    cold_waits: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    container_seconds: f64,
    starts: String,
    measured: Duration,
    /// The keep-alive windows augur ended with, per dependency.
    windows: String,
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    require_image()?;
    let augur = procs::augur_binary(opts.augur.clone())?;
    let mut policies = vec![Policy {
        name: "scale to zero, no prestart".into(),
        keep_alive: "0s".into(),
        prestart: false,
    }];
    for fixed in &opts.fixed_keep_alive {
        policies.push(Policy {
            name: format!("fixed keep-alive {} s", fixed.as_secs_f64()),
            keep_alive: format!("{}ms", fixed.as_millis()),
            prestart: false,
        });
    }
    policies.push(Policy {
        name: "adaptive keep-alive".into(),
        keep_alive: "adaptive".into(),
        prestart: false,
    });
    policies.push(Policy {
        name: format!(
            "prestart (keep-alive {} s)",
            opts.prestart_keep_alive.as_secs_f64()
        ),
        keep_alive: format!("{}ms", opts.prestart_keep_alive.as_millis()),
        prestart: true,
    });
    let catalog = serve_catalog(opts.workload.catalog).await?;
    let mut rows = Vec::new();
    for policy in &policies {
        if !opts.only.is_empty()
            && !opts
                .only
                .iter()
                .any(|o| policy.name.starts_with(o.as_str()))
        {
            continue;
        }
        eprintln!("containers bench: {} …", policy.name);
        rows.push(measure(&augur, policy, catalog, &opts).await?);
    }
    Ok(table(&rows, &opts))
}

/// One replica of the application: its frontend, and augur in front of it
/// (ports and configuration).
pub(crate) struct Replica {
    pub(crate) ingress: u16,
    pub(crate) admin: SocketAddr,
    pub(crate) service: String,
    egress: [SocketAddr; 3],
    frontend: SocketAddr,
    catalog: SocketAddr,
}

impl Replica {
    /// A frontend on ports of its own, for the service `service` (by
    /// default one named after its ingress port).
    pub(crate) async fn new(catalog: SocketAddr, service: Option<String>) -> anyhow::Result<Self> {
        let ingress = free_port()?;
        let admin = local(free_port()?);
        let egress = [
            local(free_port()?),
            local(free_port()?),
            local(free_port()?),
        ];
        let frontend = serve_frontend(egress).await?;
        Ok(Self {
            ingress,
            admin,
            service: service.unwrap_or_else(|| format!("bench-{ingress}")),
            egress,
            frontend,
            catalog,
        })
    }

    /// augur's configuration: catalog static, the container dependencies
    /// kept `keep_alive`, prestarted or not, with `more` in their section.
    pub(crate) fn config(
        &self,
        workload: &Workload,
        keep_alive: &str,
        prestart: bool,
        more: &str,
    ) -> String {
        let (ingress, admin, frontend, catalog) =
            (self.ingress, self.admin, self.frontend, self.catalog);
        let mut config = format!(
            "[service]\nname = \"{}\"\nlisten = \"127.0.0.1:{ingress}\"\nupstream = \"{frontend}\"\n\n[admin]\nlisten = \"{admin}\"\n\n[[dependency]]\nname = \"catalog\"\nlisten = \"{}\"\nupstream = \"{catalog}\"\n",
            self.service, self.egress[0]
        );
        for (name, listen) in CONTAINER_DEPS.iter().zip(&self.egress[1..]) {
            config.push_str(&workload.container_dep(name, *listen, keep_alive, prestart, more));
        }
        config
    }
}

/// The demo image the container dependencies run, or an error that says
/// how to build it.
pub(crate) fn require_image() -> anyhow::Result<()> {
    let found = std::process::Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        bail!("the Docker image {IMAGE} is missing: run scripts/images first");
    }
    Ok(())
}

pub(crate) async fn serve_catalog(latency: Duration) -> anyhow::Result<SocketAddr> {
    server::serve(local(0), move |_req: Request<Incoming>| async move {
        tokio::time::sleep(latency).await;
        respond(200, "application/json", "{\"items\":[1,2,3]}")
    })
    .await
    .map_err(Into::into)
}

/// The frontend: catalog, then pricing, then tax, each through augur.
async fn serve_frontend(egress: [SocketAddr; 3]) -> anyhow::Result<SocketAddr> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    server::serve(local(0), move |req: Request<Incoming>| {
        let client = client.clone();
        async move {
            let id = req.uri().path().trim_start_matches("/order/").to_string();
            for (addr, path) in egress.iter().zip(["items", "price", "tax"]) {
                let url = format!("http://{addr}/{path}/{id}");
                if let Err(e) = crate::demo::call(&client, &req, &url).await {
                    return respond(502, "text/plain", format!("frontend: {e}\n"));
                }
            }
            respond(200, "text/plain", "ordered\n")
        }
    })
    .await
    .map_err(Into::into)
}

async fn measure(
    binary: &std::path::Path,
    policy: &Policy,
    catalog: SocketAddr,
    opts: &Options,
) -> anyhow::Result<Row> {
    let dir = procs::scratch("containers-bench")?;
    let replica = Replica::new(catalog, None).await?;
    let (ingress, admin) = (replica.ingress, replica.admin);
    let config = replica.config(&opts.workload, &policy.keep_alive, policy.prestart, "");
    let slug: String = policy
        .name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let proc = procs::start_augur(binary, &dir, &slug, &config, admin, None)?;
    let addr = local(ingress);
    let mut rng = fastrand::Rng::with_seed(opts.workload.seed);
    // Warm-up: the model learns the route, the adaptive policy its gaps.
    opts.workload.warm_up(&[addr], &mut rng).await;
    let before = scrape(admin)?;
    let run = opts.workload.measure(&[addr], &mut rng).await?;
    let after = scrape(admin)?;
    let windows = match procs::http_get(admin, "/debug/containers") {
        Ok((200, body)) => describe_windows(&body),
        _ => String::new(),
    };
    drop(proc);
    let delta = |prefix: &str| metric_sum(&after, prefix) - metric_sum(&before, prefix);
    let mut calls = 0.0;
    let mut container_seconds = 0.0;
    let mut starts = Vec::new();
    for dep in CONTAINER_DEPS {
        // Every outcome: answered from speculation or sent upstream.
        calls += delta(&format!(
            "augur_dependency_calls_total{{dependency=\"{dep}\","
        ));
        container_seconds += delta(&format!(
            "augur_container_seconds_total{{dependency=\"{dep}\"}}"
        ));
    }
    let cold_waits = delta("augur_cold_start_wait_seconds_count ");
    for reason in ["cold", "prestart", "prewarm", "scale"] {
        let n: f64 = CONTAINER_DEPS
            .iter()
            .map(|dep| {
                delta(&format!(
                    "augur_container_starts_total{{dependency=\"{dep}\",reason=\"{reason}\"}}"
                ))
            })
            .sum();
        if n > 0.0 {
            starts.push(format!("{n} {reason}"));
        }
    }
    Ok(Row {
        policy: policy.name.clone(),
        calls,
        cold_waits,
        p50_ms: run.ms(0.5),
        p99_ms: run.ms(0.99),
        errors: run.errors,
        container_seconds,
        starts: if starts.is_empty() {
            "none".into()
        } else {
            starts.join(", ")
        },
        measured: run.took,
        windows,
    })
}

/// "pricing: hold 0.41 s, pre-warm 7.15 s, keep-alive 18.1 s; …" from
/// `/debug/containers`.
fn describe_windows(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    let Some(deps) = v["dependencies"].as_array() else {
        return String::new();
    };
    deps.iter()
        .map(|d| {
            let secs = |k: &str| {
                d[k].as_f64()
                    .map_or("—".to_string(), |s| format!("{s:.2} s"))
            };
            format!(
                "{}: hold {}, pre-warm {}, keep-alive {} ({} gaps seen, start {})",
                d["dependency"].as_str().unwrap_or("?"),
                secs("hold_seconds"),
                secs("prewarm_seconds"),
                secs("keep_alive_seconds"),
                d["idle_gaps_seen"],
                secs("start_seconds"),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One burst: `size` requests `spacing` apart, taking turns over `addrs`
/// (the replicas of a service behind a load balancer); their latencies.
async fn burst(
    addrs: &[SocketAddr],
    size: usize,
    spacing: Duration,
) -> Vec<anyhow::Result<Duration>> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut tasks = Vec::new();
    for i in 0..size {
        if i > 0 {
            tokio::time::sleep(spacing).await;
        }
        let addr = addrs[i % addrs.len()];
        let client = client.clone();
        let id = fastrand::u32(1..1_000_000);
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let req = Request::get(format!("http://{addr}/order/{id}")).body(Empty::new())?;
            let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
                .await
                .context("no answer within 60 s")??;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            if !status.is_success() {
                bail!("status {status}");
            }
            Ok(began.elapsed())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.into())));
    }
    out
}

async fn gap(rng: &mut fastrand::Rng, min: Duration, max: Duration) {
    let (lo, hi) = (min.as_millis() as u64, max.as_millis() as u64);
    let ms = if hi > lo { rng.u64(lo..=hi) } else { lo };
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

pub(crate) fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = procs::http_get(admin, "/metrics")?;
    if status != 200 {
        bail!("augur /metrics answered {status}");
    }
    Ok(body)
}

/// The sum of every series of `prefix` (a metric name and the start of
/// its labels) in Prometheus text.
pub(crate) fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix(prefix)?
                .rsplit(' ')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

fn table(rows: &[Row], opts: &Options) -> String {
    let mut out = format!("{}.\n\n", capitalized(&opts.workload.describe()));
    out.push_str("| policy | container calls | waited for a cold start | inbound p50 | inbound p99 | errors | container-seconds | starts | measured |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---|---:|\n");
    for r in rows {
        let share = if r.calls > 0.0 {
            100.0 * r.cold_waits / r.calls
        } else {
            0.0
        };
        out.push_str(&format!(
            "| {} | {} | {} ({share:.1}%) | {:.0} ms | {:.0} ms | {} | {:.1} | {} | {:.0} s |\n",
            r.policy,
            r.calls,
            r.cold_waits,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.container_seconds,
            r.starts,
            r.measured.as_secs_f64()
        ));
    }
    out.push_str("\nKeep-alive windows at the end of each run:\n\n");
    for r in rows {
        out.push_str(&format!("* {}: {}\n", r.policy, r.windows));
    }
    out
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}
