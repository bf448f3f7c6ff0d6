//! The chaos soak: the hotel application at a steady rate through a
//! speculating augur, plus a dependency that augur runs as a container,
//! while faults are injected in turn — a dependency killed and restarted,
//! the container killed, the Docker daemon unreachable, augur itself
//! stopped with SIGTERM and started again. Every answer is checked; every
//! failure must fall inside (or just after) a fault that could cause it;
//! at the end nothing may be left behind: no open context, no speculation
//! in flight, no container once augur has stopped.
//!
//! Dependencies and the Docker socket sit behind relays (`chaos/relay.rs`)
//! that the soak cuts and restores.

mod relay;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::app::{App, Counts};
use crate::app_demo::{augur_config, warm_up};
use crate::cli::humantime_duration;
use crate::hotel::Hotel;
use crate::load::Planned;
use crate::procs::{self, Proc, free_port, local};
use relay::{Ends, Relay};

/// The image of the container dependency (built by `scripts/images`).
const IMAGE: &str = "augur-demo:latest";
/// The service name augur labels its containers with.
const SERVICE: &str = "chaos-frontend";
/// The container dependency's answer: `serve-fast --body-bytes 64`.
const ECHO_BYTES: usize = 64;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The augur binary (default: the one built beside this program).
    #[arg(long)]
    pub augur: Option<PathBuf>,
    #[arg(long, default_value = "2m", value_parser = humantime_duration)]
    pub duration: Duration,
    /// Hotel requests per second (the container dependency gets a fifth
    /// of that on top).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Time between the starts of two faults.
    #[arg(long, default_value = "20s", value_parser = humantime_duration)]
    pub every: Duration,
    /// How long each dependency takes to answer.
    #[arg(long, default_value = "5ms", value_parser = humantime_duration)]
    pub latency: Duration,
    /// How long after a fault ends its failures are still its own
    /// (reconnects, a container's cold start).
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    pub grace: Duration,
    /// Also write the report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Hotel,
    Container,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One of the hotel's dependencies (by index) down for a while.
    DependencyDown(usize),
    /// `docker kill` of the container dependency's container.
    ContainerKilled,
    /// The Docker socket augur uses is gone for a while.
    DockerDown,
    /// augur stopped with SIGTERM, then started again.
    AugurRestart,
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::DependencyDown(i) => format!("dependency {} down", Hotel::DEPENDENCIES[i]),
            Kind::ContainerKilled => "container killed".into(),
            Kind::DockerDown => "Docker unreachable".into(),
            Kind::AugurRestart => "augur SIGTERM + restart".into(),
        }
    }

    /// Whether this fault can make a request to `target` fail.
    fn affects(self, target: Target) -> bool {
        match self {
            Kind::DependencyDown(_) => target == Target::Hotel,
            // A killed container is noticed on the call that fails; an
            // unreachable engine delays a start that a call waits for.
            Kind::ContainerKilled | Kind::DockerDown => target == Target::Container,
            Kind::AugurRestart => true,
        }
    }
}

#[derive(Debug, Clone)]
struct Fault {
    kind: Kind,
    start: Duration,
    end: Duration,
    note: String,
}

#[derive(Debug, Clone)]
enum Outcome {
    Ok,
    Wrong { asked: String, got: Bytes },
    Failed(String),
}

#[derive(Debug, Clone)]
struct Sent {
    target: Target,
    at: Duration,
    took: Duration,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    incarnation: usize,
    rss_kib: Option<u64>,
    contexts_open: f64,
    inflight: f64,
}

/// The augur under test, restarted by one fault: its config, its admin
/// address and the process (absent while restarting).
struct Augur {
    binary: PathBuf,
    dir: PathBuf,
    config: String,
    admin: SocketAddr,
    docker_host: String,
    proc: Mutex<Option<Proc>>,
    incarnation: std::sync::atomic::AtomicUsize,
}

impl Augur {
    fn start(&self) -> anyhow::Result<()> {
        let n = self
            .incarnation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let proc = procs::start_augur_with(
            &self.binary,
            &self.dir,
            &format!("augur-chaos-{n}"),
            &self.config,
            self.admin,
            None,
            &[("DOCKER_HOST", self.docker_host.as_str())],
        )?;
        *lock(&self.proc) = Some(proc);
        Ok(())
    }

    /// SIGTERM, and wait for the exit (the handle's drop).
    fn stop(&self) {
        let proc = lock(&self.proc).take();
        drop(proc);
    }

    fn rss_kib(&self) -> Option<u64> {
        lock(&self.proc).as_ref().and_then(Proc::rss_kib)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the soak and returns its report (Markdown); an error when an
/// answer was wrong, a failure had no fault to explain it, or something
/// was left behind.
pub async fn run(opts: Options) -> anyhow::Result<String> {
    let binary = procs::augur_binary(opts.augur.clone())?;
    let image = std::process::Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output();
    if !image.is_ok_and(|o| o.status.success()) {
        bail!(
            "chaos: the Docker image {IMAGE} is missing or Docker is not running; build it with scripts/images"
        );
    }
    let dir = procs::scratch("chaos")?;
    remove_containers();

    // The hotel's dependencies, each behind a relay that can be cut.
    let counts = Arc::new(Counts::new(Hotel::DEPENDENCIES.len()));
    let deps = Hotel::start_dependencies(opts.latency, counts.clone()).await?;
    let (mut relays, mut upstreams) = (Vec::new(), Vec::new());
    for target in &deps {
        let listen = local(free_port()?);
        relays.push(
            Relay::start(Ends::Tcp {
                listen,
                target: *target,
            })
            .await?,
        );
        upstreams.push(listen);
    }
    let docker_target = docker_socket()?;
    let docker_listen = dir.join("docker.sock");
    let mut docker = Relay::start(Ends::Unix {
        listen: docker_listen.clone(),
        target: docker_target,
    })
    .await?;

    let (ingress, admin, container_egress) = (
        local(free_port()?),
        local(free_port()?),
        local(free_port()?),
    );
    let egress: Vec<SocketAddr> = (0..deps.len())
        .map(|_| free_port().map(local))
        .collect::<Result<_, _>>()?;
    let frontend = Hotel::start_frontend(egress.clone()).await?;
    let mut config =
        augur_config::<Hotel>(SERVICE, ingress, admin, frontend, &egress, &upstreams, true);
    let _ = write!(
        config,
        "\n[[dependency]]\nname = \"echo\"\nlisten = \"{container_egress}\"\n[dependency.container]\nimage = \"{IMAGE}\"\nargs = [\"serve-fast\", \"--listen\", \"0.0.0.0:8080\", \"--body-bytes\", \"{ECHO_BYTES}\"]\nport = 8080\nkeep_alive = \"10m\"\nstart_timeout = \"10s\"\n"
    );
    let augur = Arc::new(Augur {
        binary,
        dir: dir.clone(),
        config,
        admin,
        docker_host: format!("unix://{}", docker_listen.display()),
        proc: Mutex::new(None),
        incarnation: 0.into(),
    });
    {
        let augur = augur.clone();
        tokio::task::spawn_blocking(move || augur.start()).await??;
    }

    let first = warm_up::<Hotel>("chaos", ingress).await?;

    eprintln!(
        "chaos: {} at {} hotel requests/s, a fault every {:?}",
        humantime(opts.duration),
        opts.rate,
        opts.every
    );
    let started = Instant::now();
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let load = tokio::spawn(generate(
        ingress,
        container_egress,
        first,
        opts.rate,
        opts.duration,
        started,
        sent.clone(),
    ));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = tokio::spawn(sample(augur.clone(), started, samples.clone()));

    // The faults, in turn, until the run's last `every`.
    let mut faults = Vec::new();
    let mut k = 0usize;
    loop {
        let at = opts.every * (k as u32 + 1);
        if at + opts.every > opts.duration {
            break;
        }
        tokio::time::sleep_until((started + at).into()).await;
        let kind = match k % 4 {
            0 => Kind::DependencyDown((k / 4) % Hotel::DEPENDENCIES.len()),
            1 => Kind::ContainerKilled,
            2 => Kind::DockerDown,
            _ => Kind::AugurRestart,
        };
        let start = started.elapsed();
        eprintln!("chaos: +{:.0}s {}", start.as_secs_f64(), kind.name());
        let note = inject(kind, &mut relays, &mut docker, &augur).await?;
        faults.push(Fault {
            kind,
            start,
            end: started.elapsed(),
            note,
        });
        k += 1;
    }

    load.await.context("the load generator panicked")?;
    sampler.abort();
    // What is left once the load has stopped and everything had time to
    // settle: open contexts are closed by their sweeper, speculations end
    // at their deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, metrics) = procs::http_get(admin, "/metrics")?;
    let contexts_left = procs::metric(&metrics, "augur_contexts_open");
    let inflight_left = procs::metric(&metrics, "augur_speculation_inflight");
    let containers_running = owned_containers().len();
    let rss_end = augur.rss_kib();
    {
        let augur = augur.clone();
        tokio::task::spawn_blocking(move || augur.stop()).await?;
    }
    let containers_left = owned_containers();
    drop(relays);
    drop(docker);

    let sent = lock(&sent).clone();
    let samples = lock(&samples).clone();
    let report = Report {
        opts: &opts,
        sent: &sent,
        faults: &faults,
        samples: &samples,
        contexts_left,
        inflight_left,
        containers_running,
        containers_left: containers_left.len(),
        prefetched_writes: counts.prefetched_writes(),
        rss_end,
    };
    let (text, problems) = report.render();
    if let Some(path) = &opts.out {
        std::fs::write(path, &text).with_context(|| format!("write {}", path.display()))?;
    }
    println!("{text}");
    if !containers_left.is_empty() {
        remove_containers();
    }
    if !problems.is_empty() {
        bail!("chaos: {}", problems.join("; "));
    }
    println!("chaos ok: no wrong answer, every failure explained by a fault, nothing left behind.");
    Ok(text)
}

fn humantime(d: Duration) -> String {
    format!("{:.0}s", d.as_secs_f64())
}

/// The Docker daemon's socket: `DOCKER_HOST` when it names one, else the
/// default.
fn docker_socket() -> anyhow::Result<PathBuf> {
    let path = match std::env::var("DOCKER_HOST") {
        Ok(host) => match host.strip_prefix("unix://") {
            Some(path) => PathBuf::from(path),
            None => {
                bail!("chaos: DOCKER_HOST={host} is not a Unix socket, which the soak must cut")
            }
        },
        Err(_) => PathBuf::from("/var/run/docker.sock"),
    };
    if !path.exists() {
        bail!("chaos: no Docker socket at {}", path.display());
    }
    Ok(path)
}

/// The ids of the containers augur runs for the soak's service.
fn owned_containers() -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=augur.service={SERVICE}"),
        ])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn remove_containers() {
    let ids = owned_containers();
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}

/// Injects one fault and returns what happened, for the report.
async fn inject(
    kind: Kind,
    relays: &mut [Relay],
    docker: &mut Relay,
    augur: &Arc<Augur>,
) -> anyhow::Result<String> {
    Ok(match kind {
        Kind::DependencyDown(i) => {
            relays[i].cut();
            tokio::time::sleep(Duration::from_secs(5)).await;
            relays[i].restore().await?;
            "refused and reset for 5 s".into()
        }
        Kind::ContainerKilled => {
            let ids = owned_containers();
            for id in &ids {
                let _ = tokio::process::Command::new("docker")
                    .args(["kill", id])
                    .output()
                    .await;
            }
            format!("{} killed", ids.len())
        }
        Kind::DockerDown => {
            docker.cut();
            tokio::time::sleep(Duration::from_secs(10)).await;
            docker.restore().await?;
            "socket gone for 10 s".into()
        }
        Kind::AugurRestart => {
            let t = Instant::now();
            let a = augur.clone();
            tokio::task::spawn_blocking(move || a.stop()).await?;
            let drained = t.elapsed();
            let a = augur.clone();
            tokio::task::spawn_blocking(move || a.start()).await??;
            format!(
                "drained and exited in {:.2} s, ready again after {:.2} s",
                drained.as_secs_f64(),
                t.elapsed().as_secs_f64()
            )
        }
    })
}

/// Sends the hotel's workload at `rate` per second and a fifth of that to
/// the container dependency, open loop, until `duration`; every request is
/// bounded by a 15 s timeout. Returns when every request has finished.
async fn generate(
    ingress: SocketAddr,
    container: SocketAddr,
    first: u64,
    rate: u32,
    duration: Duration,
    started: Instant,
    sent: Arc<Mutex<Vec<Sent>>>,
) {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let step = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let echo = Bytes::from(vec![b'x'; ECHO_BYTES]);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0u64.. {
        let due = step.mul_f64(n as f64);
        if due >= duration {
            break;
        }
        tokio::time::sleep_until((started + due).into()).await;
        let mut planned = vec![(Target::Hotel, ingress, Hotel::planned(first + n))];
        if n % 5 == 0 {
            let mut p = Planned::get(format!("/echo/{n}"));
            p.expect = Some(echo.clone());
            planned.push((Target::Container, container, p));
        }
        for (target, addr, p) in planned {
            let (client, sent) = (client.clone(), sent.clone());
            tasks.spawn(async move {
                let at = started.elapsed();
                let outcome = send(&client, addr, &p).await;
                lock(&sent).push(Sent {
                    target,
                    at,
                    took: started.elapsed() - at,
                    outcome,
                });
            });
        }
        // Reap what finished, so the set holds only what is in flight.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    p: &Planned,
) -> Outcome {
    let asked = format!("{} {}", p.method.unwrap_or("GET"), p.path);
    let mut req = hyper::Request::builder()
        .method(p.method.unwrap_or("GET"))
        .uri(format!("http://{addr}{}", p.path));
    for (name, value) in &p.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let Ok(req) = req.body(Empty::new()) else {
        return Outcome::Failed("bad request".into());
    };
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            let text = format!("{e:?}");
            if text.contains("ConnectionRefused") {
                "connection refused".to_string()
            } else if e.is_connect() {
                "connect error".to_string()
            } else {
                "connection closed".to_string()
            }
        })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|_| "body cut".to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(Duration::from_secs(15), exchange).await {
        Err(_) => Outcome::Failed("no answer in 15 s".into()),
        Ok(Err(why)) => Outcome::Failed(why),
        Ok(Ok((status, _))) if !status.is_success() => Outcome::Failed(format!("status {status}")),
        Ok(Ok((_, body))) => match &p.expect {
            Some(expected) if *expected != body => Outcome::Wrong { asked, got: body },
            _ => Outcome::Ok,
        },
    }
}

/// augur's memory and tables every 5 s.
async fn sample(augur: Arc<Augur>, started: Instant, samples: Arc<Mutex<Vec<Sample>>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let a = augur.clone();
        let got = tokio::task::spawn_blocking(move || {
            let metrics = procs::http_get(a.admin, "/metrics").ok()?.1;
            Some((
                a.rss_kib(),
                procs::metric(&metrics, "augur_contexts_open"),
                procs::metric(&metrics, "augur_speculation_inflight"),
                a.incarnation.load(std::sync::atomic::Ordering::Relaxed),
            ))
        })
        .await;
        if let Ok(Some((rss_kib, contexts_open, inflight, incarnation))) = got {
            lock(&samples).push(Sample {
                at: started.elapsed(),
                incarnation,
                rss_kib,
                contexts_open,
                inflight,
            });
        }
    }
}

struct Report<'a> {
    opts: &'a Options,
    sent: &'a [Sent],
    faults: &'a [Fault],
    samples: &'a [Sample],
    contexts_left: f64,
    inflight_left: f64,
    containers_running: usize,
    containers_left: usize,
    prefetched_writes: u64,
    rss_end: Option<u64>,
}

impl Report<'_> {
    /// The fault that explains a failed request: one that can affect its
    /// target and overlaps it, its window stretched by the grace period.
    fn blame(&self, s: &Sent) -> Option<usize> {
        self.faults.iter().position(|f| {
            f.kind.affects(s.target)
                && s.at <= f.end + self.opts.grace
                && s.at + s.took + Duration::from_millis(100) >= f.start
        })
    }

    fn render(&self) -> (String, Vec<String>) {
        let mut out = String::new();
        let mut problems = Vec::new();
        let mut blamed = vec![Vec::<&str>::new(); self.faults.len()];
        let mut unexplained = Vec::new();
        let (mut wrong, mut first_wrong) = (0, None);
        let mut totals = [(0u64, 0u64, 0u64); 2];
        for s in self.sent {
            let t = &mut totals[usize::from(s.target == Target::Container)];
            t.0 += 1;
            match &s.outcome {
                Outcome::Ok => t.1 += 1,
                Outcome::Wrong { asked, got } => {
                    wrong += 1;
                    first_wrong.get_or_insert((asked.clone(), got.clone()));
                }
                Outcome::Failed(why) => {
                    t.2 += 1;
                    match self.blame(s) {
                        Some(i) => blamed[i].push(why),
                        None => unexplained.push(s),
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "Hotel at {} req/s through a speculating augur, the container dependency at {} req/s, {} in all; a fault every {} s; failures count against a fault from its start to {} s after its end.\n",
            self.opts.rate,
            self.opts.rate / 5,
            humantime(self.opts.duration),
            self.opts.every.as_secs_f64(),
            self.opts.grace.as_secs_f64()
        );
        let _ = writeln!(out, "| target | sent | answered right | failed | wrong |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for (name, t) in ["hotel (ingress)", "container dependency (egress)"]
            .iter()
            .zip(totals)
        {
            let _ = writeln!(out, "| {name} | {} | {} | {} | - |", t.0, t.1, t.2);
        }
        let _ = writeln!(out, "| all | | | | {wrong} |");
        let _ = writeln!(
            out,
            "\n| at | fault | what happened | failures it explains (why) |"
        );
        let _ = writeln!(out, "|---:|---|---|---|");
        for (f, whys) in self.faults.iter().zip(&blamed) {
            let _ = writeln!(
                out,
                "| +{:.0} s | {} | {} | {} |",
                f.start.as_secs_f64(),
                f.kind.name(),
                f.note,
                reasons(whys)
            );
        }
        let _ = writeln!(
            out,
            "\nFailures no fault explains: {}{}",
            unexplained.len(),
            unexplained
                .first()
                .map(|s| format!(
                    " (first at +{:.1} s, {:?}: {:?})",
                    s.at.as_secs_f64(),
                    s.target,
                    s.outcome
                ))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "\n| at | augur run | resident MiB | contexts open | speculations in flight |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
        let every = (self.samples.len() / 12).max(1);
        for s in self.samples.iter().step_by(every) {
            let _ = writeln!(
                out,
                "| +{:.0} s | {} | {} | {} | {} |",
                s.at.as_secs_f64(),
                s.incarnation,
                s.rss_kib
                    .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
                s.contexts_open,
                s.inflight
            );
        }
        let _ = writeln!(
            out,
            "\nLeft behind: {} open contexts and {} speculations in flight 3 s after the load stopped (resident {}); {} container(s) running then, {} left after augur stopped; {} speculated writes.",
            self.contexts_left,
            self.inflight_left,
            self.rss_end
                .map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            self.containers_running,
            self.containers_left,
            self.prefetched_writes
        );
        if wrong > 0 {
            let (asked, got) = first_wrong.unwrap_or_default();
            problems.push(format!(
                "{wrong} wrong answers (first: {asked} got {:?})",
                String::from_utf8_lossy(&got)
            ));
        }
        if !unexplained.is_empty() {
            problems.push(format!("{} failures no fault explains", unexplained.len()));
        }
        if self.contexts_left > 0.0 || self.inflight_left > 0.0 {
            problems.push("contexts or speculations left open".into());
        }
        if self.containers_left > 0 {
            problems.push(format!(
                "{} containers left after augur stopped",
                self.containers_left
            ));
        }
        if self.prefetched_writes > 0 {
            problems.push("a write was speculated".into());
        }
        (out, problems)
    }
}

/// `3 × connection refused, 1 × status 502`.
fn reasons(whys: &[&str]) -> String {
    if whys.is_empty() {
        return "none".into();
    }
    let mut counted: std::collections::BTreeMap<&str, usize> = Default::default();
    for w in whys {
        *counted.entry(w).or_default() += 1;
    }
    counted
        .iter()
        .map(|(w, n)| format!("{n} × {w}"))
        .collect::<Vec<_>>()
        .join(", ")
}
