//! Hostile clients and hostile traffic against a speculating augur in
//! front of the hotel application.
//!
//! * `slowloris`: hundreds of connections that send nothing, or a byte at
//!   a time (of a header, of a body), or sit idle after one request — on
//!   the ingress and on every egress listener — while the demo runs at a
//!   fixed rate; the demo is measured before, during and after.
//! * `junk-routes`: a million requests over tens of thousands of junk
//!   paths, each with a dependency call of its own, beside the demo's
//!   traffic; augur's memory is sampled as it goes, then the demo's routes
//!   must still be learned and speculated.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::{self, App, Counts, Outbound};
use crate::app_demo::{augur_config, speculated, warm_up};
use crate::cli::humantime_duration;
use crate::hotel::Hotel;
use crate::load::{self, Planned, Report};
use crate::procs::{self, Proc, free_port, local};
use crate::server::{self, respond};

/// A speculating augur in front of the hotel application, warmed up.
struct Rig {
    ingress: SocketAddr,
    admin: SocketAddr,
    egress: Vec<SocketAddr>,
    deps: Vec<SocketAddr>,
    proc: Proc,
    counts: Arc<Counts>,
    /// The workload's next request after the warm-up.
    next: u64,
}

impl Rig {
    /// Starts the dependencies, the frontend (wrapped by the junk frontend
    /// when `junk`), and augur from `binary`; warms it up.
    async fn start(
        binary: &Path,
        name: &str,
        latency: Duration,
        junk: bool,
    ) -> anyhow::Result<Rig> {
        let dir = procs::scratch(name)?;
        let counts = Arc::new(Counts::new(Hotel::DEPENDENCIES.len()));
        let deps = Hotel::start_dependencies(latency, counts.clone()).await?;
        let (ingress, admin) = (local(free_port()?), local(free_port()?));
        let egress: Vec<SocketAddr> = (0..deps.len())
            .map(|_| free_port().map(local))
            .collect::<Result<_, _>>()?;
        let mut frontend = Hotel::start_frontend(egress.clone()).await?;
        if junk {
            frontend = start_junk_frontend(frontend, egress[0]).await?;
        }
        let config =
            augur_config::<Hotel>("frontend", ingress, admin, frontend, &egress, &deps, true);
        let proc = tokio::task::block_in_place(|| {
            procs::start_augur(binary, &dir, name, &config, admin, None)
        })?;
        let next = warm_up::<Hotel>(name, ingress).await?;
        Ok(Rig {
            ingress,
            admin,
            egress,
            deps,
            proc,
            counts,
            next,
        })
    }

    /// The workload's next `n` requests.
    fn take(&mut self, n: u64) -> Vec<Planned> {
        let plan = (self.next..self.next + n).map(Hotel::planned).collect();
        self.next += n;
        plan
    }

    fn metrics(&self) -> anyhow::Result<String> {
        let (status, text) = procs::http_get(self.admin, "/metrics")?;
        if status != 200 {
            bail!("augur's /metrics answered {status}");
        }
        Ok(text)
    }

    fn speculated(&self) -> anyhow::Result<f64> {
        speculated(self.admin)
    }

    fn rss_mib(&self) -> Option<f64> {
        self.proc.rss_kib().map(|k| k as f64 / 1024.0)
    }
}

/// The series of Prometheus text whose name starts with `prefix`, by their
/// full name with labels.
fn series(text: &str, prefix: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn quantile_ms(r: &Report, q: f64) -> f64 {
    if r.latency_us.is_empty() {
        return f64::NAN;
    }
    r.ms(q)
}

// ---------------------------------------------------------------- slowloris

#[derive(Debug, Clone, clap::Args)]
pub struct SlowlorisOptions {
    /// The augur binary (default: the one built beside this program).
    #[arg(long)]
    pub augur: Option<PathBuf>,
    /// Hotel requests per second in each phase.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// How long each phase (calm or under attack) measures.
    #[arg(long, default_value = "20s", value_parser = humantime_duration)]
    pub phase: Duration,
    /// Hostile connections on the ingress listener.
    #[arg(long, default_value_t = 400)]
    pub connections: usize,
    /// Hostile connections on each egress listener.
    #[arg(long, default_value_t = 40)]
    pub egress_connections: usize,
    /// The pace of the trickling connections: one byte this often.
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    pub trickle: Duration,
    /// How long each dependency takes to answer.
    #[arg(long, default_value = "5ms", value_parser = humantime_duration)]
    pub latency: Duration,
    /// Attacked phases, each between two calm ones.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The largest rise of the demo's p99 under attack (all attacked
    /// phases together), in percent of its p99 in all calm phases together,
    /// that passes.
    #[arg(long, default_value_t = 10.0)]
    pub p99_limit: f64,
    /// Also write the report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What a hostile connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Attack {
    /// Connects and sends nothing.
    Silent,
    /// Sends a request header one byte at a time, never ending it.
    HeaderTrickle,
    /// Sends a whole header announcing a large body, then the body one
    /// byte at a time.
    BodyTrickle,
    /// Sends one request, reads the answer, then keeps the connection
    /// open and sends nothing more.
    IdleAfterRequest,
}

impl Attack {
    const ALL: [Attack; 4] = [
        Attack::Silent,
        Attack::HeaderTrickle,
        Attack::BodyTrickle,
        Attack::IdleAfterRequest,
    ];

    fn name(self) -> &'static str {
        match self {
            Attack::Silent => "silent",
            Attack::HeaderTrickle => "header, a byte at a time",
            Attack::BodyTrickle => "body, a byte at a time",
            Attack::IdleAfterRequest => "idle after one request",
        }
    }

    /// What the connection sends at once, and then a byte at a time.
    fn script(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Attack::Silent => (b"", b""),
            Attack::HeaderTrickle => (
                b"GET /slow HTTP/1.1\r\nhost: augur\r\n",
                b"x-slow: drip\r\n",
            ),
            Attack::BodyTrickle => (
                b"POST /slow HTTP/1.1\r\nhost: augur\r\ncontent-type: text/plain\r\ncontent-length: 1000000\r\n\r\n",
                b"drip",
            ),
            Attack::IdleAfterRequest => (
                b"GET /slow?lat=1&lon=2 HTTP/1.1\r\nhost: augur\r\n\r\n",
                b"",
            ),
        }
    }
}

/// How a hostile connection ended: the status lines augur sent on it and
/// whether it was closed or reset.
#[derive(Debug, Default, Clone)]
struct Tally {
    opened: u64,
    connect_failed: u64,
    /// `"408, closed"`, `"closed"`, … → how many.
    endings: BTreeMap<String, u64>,
    longest_held: Duration,
}

type Tallies = Arc<Mutex<BTreeMap<(&'static str, Attack), Tally>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One hostile client: connects, holds the connection as `attack` says
/// until augur ends it, and connects again, until the run ends (the task
/// is aborted).
async fn hostile(
    listener: &'static str,
    addr: SocketAddr,
    attack: Attack,
    trickle: Duration,
    tallies: Tallies,
) {
    // Spread over the ramp-up: hundreds of connections opened (and so cut
    // by the same timeout) in the same millisecond measure a burst, not
    // slow clients.
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..2000))).await;
    loop {
        let started = Instant::now();
        let conn =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await;
        let Ok(Ok(stream)) = conn else {
            lock(&tallies)
                .entry((listener, attack))
                .or_default()
                .connect_failed += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        lock(&tallies).entry((listener, attack)).or_default().opened += 1;
        let ending = hold(stream, attack, trickle).await;
        {
            let mut tallies = lock(&tallies);
            let tally = tallies.entry((listener, attack)).or_default();
            *tally.endings.entry(ending).or_default() += 1;
            tally.longest_held = tally.longest_held.max(started.elapsed());
        }
        // Not a tight loop if augur refuses at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds one connection until augur closes or resets it; says how it
/// ended (`"408, closed"`).
async fn hold(mut stream: tokio::net::TcpStream, attack: Attack, trickle: Duration) -> String {
    let (opening, drip) = attack.script();
    let (mut rx, mut tx) = stream.split();
    let mut statuses = Vec::<String>::new();
    let mut seen = Vec::<u8>::new();
    if tx.write_all(opening).await.is_err() {
        return "reset".into();
    }
    let first = trickle.mul_f64(fastrand::f64());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, trickle);
    let mut next = 0usize;
    let mut buf = vec![0u8; 4096];
    let end = loop {
        tokio::select! {
            got = rx.read(&mut buf) => match got {
                Ok(0) => break "closed",
                Err(_) => break "reset",
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    // Status lines, as they arrive (bodies are small).
                    while let Some(at) = find(&seen, b"HTTP/1.1 ") {
                        let line = &seen[at + 9..];
                        if line.len() < 3 {
                            break;
                        }
                        statuses.push(String::from_utf8_lossy(&line[..3]).into_owned());
                        seen.drain(..at + 12);
                    }
                }
            },
            _ = tick.tick(), if !drip.is_empty() => {
                if tx.write_all(&drip[next % drip.len()..][..1]).await.is_err() {
                    break "reset";
                }
                next += 1;
            }
        }
    };
    statuses.push(end.to_string());
    statuses.join(", ")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The hostile clients, on a thread and a runtime of their own, so that
/// they take no turn from the demo's application in this process.
struct Attackers {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Attackers {
    fn start(
        targets: Vec<(&'static str, SocketAddr, usize)>,
        trickle: Duration,
        tallies: Tallies,
    ) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("slowloris".into()).spawn(
            move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let mut attackers = tokio::task::JoinSet::new();
                    for (listener, addr, count) in targets {
                        for i in 0..count {
                            let attack = Attack::ALL[i % Attack::ALL.len()];
                            attackers.spawn(hostile(
                                listener,
                                addr,
                                attack,
                                trickle,
                                tallies.clone(),
                            ));
                        }
                    }
                    let _ = stopped.await;
                    attackers.shutdown().await;
                });
                Ok(())
            },
        )?;
        Ok(Self { stop, thread })
    }

    /// Closes every hostile connection (blocking).
    fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the slowloris thread panicked"))?
    }
}

struct Phase {
    name: &'static str,
    report: Report,
    speculated: f64,
    /// CPU seconds augur used during the phase.
    augur_cpu: Option<f64>,
}

/// Runs the slowloris test and returns its report (Markdown); an error if
/// a request of the demo failed or was answered wrong, or its p99 rose past
/// the limit under attack.
pub async fn slowloris(opts: SlowlorisOptions) -> anyhow::Result<String> {
    let binary = procs::augur_binary(opts.augur.clone())?;
    let mut rig = Rig::start(&binary, "augur-slowloris", opts.latency, false).await?;
    let per_phase = (f64::from(opts.rate) * opts.phase.as_secs_f64()).ceil() as u64;
    let measure = |rig: &mut Rig, name: &'static str| {
        let plan = rig.take(per_phase);
        let (ingress, rate) = (rig.ingress, opts.rate);
        let before = (rig.speculated(), rig.proc.cpu_seconds());
        async move {
            eprintln!("slowloris: {name}: {} requests at {rate}/s", plan.len());
            let report = load::fixed_rate_plan(ingress, plan, rate, 16).await;
            (name, report, before)
        }
    };
    let phase = |rig: &Rig, (name, report, (spec, cpu)): (&'static str, Report, _)| {
        let spec: anyhow::Result<f64> = spec;
        let cpu: Option<f64> = cpu;
        Ok::<_, anyhow::Error>(Phase {
            name,
            speculated: rig.speculated()? - spec?,
            augur_cpu: rig.proc.cpu_seconds().zip(cpu).map(|(b, a)| b - a),
            report,
        })
    };
    let closed_before = series(&rig.metrics()?, "augur_downstream_closed_total");

    // The attack: every kind of hostile connection on the ingress and on
    // every egress listener, established before the demo is measured.
    let mut targets: Vec<(&'static str, SocketAddr, usize)> =
        vec![("ingress", rig.ingress, opts.connections)];
    for (name, addr) in Hotel::DEPENDENCIES.iter().zip(&rig.egress) {
        targets.push((name, *addr, opts.egress_connections));
    }
    let hostile_total: usize = targets.iter().map(|t| t.2).sum();
    let tallies: Tallies = Arc::default();

    // Calm and attacked phases in turn, calm first and last, so that a
    // drift of the machine falls on both sides.
    let mut phases = Vec::new();
    let (mut held, mut rss_attack) = (BTreeMap::new(), None);
    for round in 0..=opts.rounds {
        let measured = measure(&mut rig, "calm").await;
        phases.push(phase(&rig, measured)?);
        if round == opts.rounds {
            break;
        }
        eprintln!("slowloris: {hostile_total} hostile connections opening");
        let attack = Attackers::start(targets.clone(), opts.trickle, tallies.clone())?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let measuring = measure(&mut rig, "under attack");
        let (admin, half) = (rig.admin, opts.phase / 2);
        let sampled = tokio::spawn(async move {
            // augur's own count of open client connections, half way.
            tokio::time::sleep(half).await;
            tokio::task::spawn_blocking(move || procs::http_get(admin, "/metrics"))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|(_, text)| series(&text, "augur_downstream_connections"))
                .unwrap_or_default()
        });
        let measured = measuring.await;
        phases.push(phase(&rig, measured)?);
        held = sampled.await.unwrap_or_default();
        rss_attack = rig.rss_mib();
        tokio::task::spawn_blocking(move || attack.stop()).await??;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let tallies = lock(&tallies).clone();
    let closed_after = series(&rig.metrics()?, "augur_downstream_closed_total");
    let writes = rig.counts.prefetched_writes();

    // The report.
    let mut out = String::new();
    let _ = writeln!(
        out,
        "The hotel demo at {} req/s through a speculating augur, {:.0} s phases: calm, then {} rounds of under attack and calm again. The attack: {hostile_total} hostile connections ({} on the ingress, {} on each of the {} egress listeners; a quarter each silent, a header a byte every {:?}, a body a byte every {:?}, idle after one request), opened over 2 s and re-opened whenever augur ends them, from a thread of their own, measured from 3 s after the first opened; augur's default downstream limits.\n",
        opts.rate,
        opts.phase.as_secs_f64(),
        opts.rounds,
        opts.connections,
        opts.egress_connections,
        rig.egress.len(),
        opts.trickle,
        opts.trickle
    );
    let _ = writeln!(
        out,
        "| phase | requests | p50 ms | p90 ms | p99 ms | max ms | failed | wrong | answered by speculation | augur CPU s |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &phases {
        let r = &p.report;
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} | {} |",
            p.name,
            r.ok + r.errors,
            quantile_ms(r, 0.5),
            quantile_ms(r, 0.9),
            quantile_ms(r, 0.99),
            quantile_ms(r, 1.0),
            r.errors,
            r.wrong,
            p.speculated,
            p.augur_cpu.map_or("-".into(), |c| format!("{c:.2}"))
        );
    }
    let pooled = |name: &str| {
        let mut all = Report::new();
        for p in phases.iter().filter(|p| p.name == name) {
            all.merge(&p.report);
        }
        all
    };
    let (calm, attacked) = (pooled("calm"), pooled("under attack"));
    let change = (quantile_ms(&attacked, 0.99) / quantile_ms(&calm, 0.99) - 1.0) * 100.0;
    let _ = writeln!(
        out,
        "\nAll calm phases together: p50 {:.2} ms, p99 {:.2} ms; all attacked phases together: p50 {:.2} ms, p99 {:.2} ms: **p99 {change:+.1}%** under attack (limit +{:.0}%).",
        quantile_ms(&calm, 0.5),
        quantile_ms(&calm, 0.99),
        quantile_ms(&attacked, 0.5),
        quantile_ms(&attacked, 0.99),
        opts.p99_limit
    );
    let _ = writeln!(
        out,
        "\n| listener | attack | connections opened | how augur ended them | still open at the end | longest held of those ended |"
    );
    let _ = writeln!(out, "|---|---|---:|---|---:|---:|");
    for ((listener, attack), t) in &tallies {
        let ended: u64 = t.endings.values().sum();
        let endings = if t.endings.is_empty() {
            "-".to_string()
        } else {
            t.endings
                .iter()
                .map(|(how, n)| format!("{n} × {how}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let failed = if t.connect_failed > 0 {
            format!(" ({} connects failed)", t.connect_failed)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {listener} | {} | {}{failed} | {endings} | {} | {} |",
            attack.name(),
            t.opened,
            t.opened.saturating_sub(ended),
            if ended == 0 {
                "-".to_string()
            } else {
                format!("{:.1} s", t.longest_held.as_secs_f64())
            }
        );
    }
    let _ = writeln!(
        out,
        "\naugur's counts: open client connections half way through the attack: {}; connections it closed during the run: {}; resident memory under attack {}.",
        describe_series(&held, |_| true),
        describe_series(&delta(&closed_before, &closed_after), |v| v > 0.0),
        rss_attack.map_or("-".into(), |m| format!("{m:.1} MiB"))
    );

    let mut problems = Vec::new();
    for p in &phases {
        if p.report.errors > 0 || p.report.wrong > 0 {
            problems.push(format!(
                "{}: {} failed and {} wrong; {}",
                p.name,
                p.report.errors,
                p.report.wrong,
                p.report.describe_first_wrong()
            ));
        }
    }
    if change.is_nan() || change > opts.p99_limit {
        problems.push(format!(
            "the p99 rose {change:+.1}% under attack (limit +{:.0}%)",
            opts.p99_limit
        ));
    }
    if writes > 0 {
        problems.push(format!("{writes} writes were speculated"));
    }
    finish(out, &opts.out, problems, "slowloris")
}

/// Writes the report, prints it and turns problems into an error.
fn finish(
    out: String,
    path: &Option<PathBuf>,
    problems: Vec<String>,
    name: &str,
) -> anyhow::Result<String> {
    if let Some(path) = path {
        std::fs::write(path, &out).with_context(|| format!("write {}", path.display()))?;
    }
    println!("{out}");
    if !problems.is_empty() {
        bail!("{name}: {}", problems.join("; "));
    }
    println!("{name} ok");
    Ok(out)
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// `ingress 412, geo 40` from `name{listener="ingress"} 412` and so on:
/// the label values and the numbers.
fn describe_series(s: &BTreeMap<String, f64>, keep: impl Fn(f64) -> bool) -> String {
    let shown: Vec<String> = s
        .iter()
        .filter(|(_, v)| keep(**v))
        .map(|(k, v)| {
            let labels = k
                .split_once('{')
                .map_or("", |(_, l)| l.trim_end_matches('}'));
            let values: Vec<&str> = labels
                .split(',')
                .filter_map(|kv| Some(kv.split_once('=')?.1.trim_matches('"')))
                .collect();
            format!("{} {v}", values.join("/"))
        })
        .collect();
    if shown.is_empty() {
        "none".into()
    } else {
        shown.join(", ")
    }
}

// ---------------------------------------------------------------- junk routes

#[derive(Debug, Clone, clap::Args)]
pub struct JunkOptions {
    /// The augur binary (default: the one built beside this program).
    #[arg(long)]
    pub augur: Option<PathBuf>,
    /// Requests in all (junk and the demo's).
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: u64,
    /// Distinct junk paths, taken in turn.
    #[arg(long, default_value_t = 50_000)]
    pub paths: u64,
    /// One request in this many is the demo's; the rest are junk.
    #[arg(long, default_value_t = 10)]
    pub demo_every: u64,
    /// Sample augur's memory and tables after every this many requests.
    #[arg(long, default_value_t = 50_000)]
    pub sample_every: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// How long each dependency takes to answer.
    #[arg(long, default_value = "1ms", value_parser = humantime_duration)]
    pub latency: Duration,
    /// Demo requests before and after the junk, to compare how many
    /// speculation answered.
    #[arg(long, default_value_t = 3000)]
    pub demo_requests: u64,
    /// Also write the report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A frontend in front of the hotel's: `GET /junk/{word}` calls the geo
/// dependency at `/{word}/x` (a path of its own for every word; geo answers
/// by the query), passing `traceparent` on as a service does; everything
/// else is forwarded to the hotel frontend.
async fn start_junk_frontend(hotel: SocketAddr, geo: SocketAddr) -> anyhow::Result<SocketAddr> {
    let client = app::outbound();
    let addr = server::serve(local(0), move |req: Request<Incoming>| {
        let client = client.clone();
        async move {
            let answer = match req.uri().path().strip_prefix("/junk/") {
                Some(word) => {
                    let url = format!("http://{geo}/{word}/x?lat=1&lon=2");
                    app::call(&client, &req, &["traceparent"], "GET", url, None).await
                }
                None => forward(&client, req, hotel).await,
            };
            match answer {
                Ok((status, headers, body)) => {
                    let kind = headers
                        .get(hyper::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/octet-stream")
                        .to_string();
                    respond(status, &kind, body)
                }
                Err(e) => respond(502, "text/plain", format!("{e:#}\n")),
            }
        }
    })
    .await?;
    Ok(addr)
}

/// Forwards a request to `to` as it came (method, target, headers, body).
async fn forward(
    client: &Outbound,
    req: Request<Incoming>,
    to: SocketAddr,
) -> anyhow::Result<(u16, http::HeaderMap, Bytes)> {
    let (parts, body) = req.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://{to}{target}"));
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST {
            out = out.header(name, value);
        }
    }
    let body = body.collect().await?.to_bytes();
    let resp = client.request(out.body(Full::new(body))?).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

/// The `i`-th junk word: five letters from g to z (never an identifier to
/// the route normaliser, so every word is a route of its own).
fn word(mut i: u64) -> String {
    let mut w = String::with_capacity(5);
    for _ in 0..5 {
        w.push(char::from(b'g' + (i % 20) as u8));
        i /= 20;
    }
    w
}

struct JunkSample {
    requests: u64,
    elapsed: Duration,
    rss_mib: Option<f64>,
    routes: usize,
    demo_routes: usize,
    evicted: BTreeMap<String, f64>,
}

/// The routes augur's model holds, from `/debug/model`.
fn model_routes(admin: SocketAddr) -> anyhow::Result<BTreeSet<String>> {
    let (status, body) = procs::http_get(admin, "/debug/model")?;
    if status != 200 {
        bail!("/debug/model answered {status}");
    }
    let model: serde_json::Value =
        serde_json::from_str(&body).context("/debug/model is not JSON")?;
    Ok(model["routes"]
        .as_object()
        .map(|routes| routes.keys().cloned().collect())
        .unwrap_or_default())
}

fn is_junk(route: &str) -> bool {
    route.contains("/junk/")
}

/// Runs the junk-routes test and returns its report (Markdown); an error
/// if an answer was wrong or failed, a demo route was forgotten, or
/// speculation stopped answering the demo.
pub async fn junk_routes(opts: JunkOptions) -> anyhow::Result<String> {
    let binary = procs::augur_binary(opts.augur.clone())?;
    let mut rig = Rig::start(&binary, "augur-junk", opts.latency, true).await?;
    let (status, geo) = procs::http_get(rig.deps[0], "/x?lat=1&lon=2")?;
    if status != 200 {
        bail!("junk-routes: geo answered {status} to the junk call");
    }
    let junk_answer = Bytes::from(geo);

    let demo_phase = |rig: &mut Rig, name: &str| {
        let plan = rig.take(opts.demo_requests);
        let (ingress, concurrency) = (rig.ingress, opts.concurrency.min(8));
        eprintln!("junk-routes: {name}: {} demo requests", plan.len());
        async move { load::closed_loop(ingress, plan, concurrency).await }
    };
    let before_spec = rig.speculated()?;
    let demo_before = demo_phase(&mut rig, "before the junk").await;
    let speculated_before = rig.speculated()? - before_spec;
    let routes_before = model_routes(rig.admin)?;
    let demo_routes: BTreeSet<String> = routes_before
        .iter()
        .filter(|r| !is_junk(r))
        .cloned()
        .collect();

    let started = Instant::now();
    let mut samples = Vec::new();
    let (mut errors, mut wrong, mut first_wrong) = (0u64, 0u64, String::new());
    let mut sent = 0u64;
    while sent < opts.requests {
        let chunk = opts.sample_every.max(1).min(opts.requests - sent);
        let mut plan = Vec::with_capacity(chunk as usize);
        for n in sent..sent + chunk {
            if n % opts.demo_every.max(1) == 0 {
                plan.extend(rig.take(1));
            } else {
                let mut p = Planned::get(format!("/junk/{}", word(n % opts.paths.max(1))));
                p.expect = Some(junk_answer.clone());
                p.label = "junk";
                plan.push(p);
            }
        }
        let r = load::closed_loop(rig.ingress, plan, opts.concurrency).await;
        errors += r.errors;
        wrong += r.wrong;
        if first_wrong.is_empty() {
            first_wrong = r.describe_first_wrong();
        }
        sent += chunk;
        let routes = model_routes(rig.admin)?;
        let metrics = rig.metrics()?;
        let mut evicted = series(&metrics, "augur_learner_evictions_total");
        evicted.extend(series(&metrics, "augur_metric_routes_evicted_total"));
        let sample = JunkSample {
            requests: sent,
            elapsed: started.elapsed(),
            rss_mib: rig.rss_mib(),
            routes: routes.len(),
            demo_routes: routes.iter().filter(|r| demo_routes.contains(*r)).count(),
            evicted,
        };
        eprintln!(
            "junk-routes: {} requests, {:.0} s, resident {} MiB, {} routes ({} of the demo's {}), {errors} failed, {wrong} wrong",
            sample.requests,
            sample.elapsed.as_secs_f64(),
            sample.rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
            sample.routes,
            sample.demo_routes,
            demo_routes.len()
        );
        samples.push(sample);
    }

    let before_spec = rig.speculated()?;
    let demo_after = demo_phase(&mut rig, "after the junk").await;
    let speculated_after = rig.speculated()? - before_spec;
    let routes_after = model_routes(rig.admin)?;
    let forgotten: Vec<&String> = demo_routes.difference(&routes_after).collect();
    let writes = rig.counts.prefetched_writes();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} requests through a speculating augur in front of the hotel demo: one in {} the demo's, the rest `GET /junk/{{word}}` over {} words taken in turn, each a route of its own with a dependency call (`geo /{{word}}/x`) of its own; {} in flight, dependencies answering in {:?}; {:.0} s in all.\n",
        sent,
        opts.demo_every,
        opts.paths,
        opts.concurrency,
        opts.latency,
        started.elapsed().as_secs_f64()
    );
    let evicted_names: BTreeSet<&String> = samples.iter().flat_map(|s| s.evicted.keys()).collect();
    let _ = write!(
        out,
        "| requests | seconds | resident MiB | routes learned | of the demo's {} |",
        demo_routes.len()
    );
    for name in &evicted_names {
        let _ = write!(out, " {} |", short_series(name));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|{}",
        "---:|".repeat(evicted_names.len())
    );
    for s in &samples {
        let _ = write!(
            out,
            "| {} | {:.0} | {} | {} | {} |",
            s.requests,
            s.elapsed.as_secs_f64(),
            s.rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
            s.routes,
            s.demo_routes
        );
        for name in &evicted_names {
            let _ = write!(out, " {} |", s.evicted.get(*name).copied().unwrap_or(0.0));
        }
        let _ = writeln!(out);
    }
    let growth = resident_growth(&samples);
    let _ = writeln!(
        out,
        "\nResident memory over the second half of the run: {}.",
        growth.map_or("not judged (fewer than 8 samples)".into(), |g| format!(
            "{g:+.1}%"
        ))
    );
    let _ = writeln!(
        out,
        "\nThe demo alone, {} requests before the junk and {} after: answered by speculation {} before and {} after; p50 {:.2} / {:.2} ms; demo routes forgotten: {}; failed {} / {}, wrong {} / {}; during the junk {errors} failed and {wrong} wrong; speculated writes {writes}.",
        demo_before.ok + demo_before.errors,
        demo_after.ok + demo_after.errors,
        speculated_before,
        speculated_after,
        quantile_ms(&demo_before, 0.5),
        quantile_ms(&demo_after, 0.5),
        if forgotten.is_empty() {
            "none".to_string()
        } else {
            format!("{forgotten:?}")
        },
        demo_before.errors,
        demo_after.errors,
        demo_before.wrong,
        demo_after.wrong
    );

    let mut problems = Vec::new();
    for (name, r) in [("before", &demo_before), ("after", &demo_after)] {
        if r.errors > 0 || r.wrong > 0 {
            problems.push(format!(
                "the demo {name} the junk: {} failed, {} wrong; {}",
                r.errors,
                r.wrong,
                r.describe_first_wrong()
            ));
        }
    }
    if errors > 0 || wrong > 0 {
        problems.push(format!(
            "{errors} failed and {wrong} wrong during the junk; {first_wrong}"
        ));
    }
    if !forgotten.is_empty() {
        problems.push(format!("demo routes forgotten: {forgotten:?}"));
    }
    if speculated_after < speculated_before * 0.5 {
        problems.push(format!(
            "speculation answered {speculated_after} demo calls after the junk, {speculated_before} before"
        ));
    }
    if growth.is_some_and(|g| g > 10.0) {
        problems.push(format!(
            "resident memory grew {:+.1}% over the second half",
            growth.unwrap_or_default()
        ));
    }
    if writes > 0 {
        problems.push(format!("{writes} writes were speculated"));
    }
    finish(out, &opts.out, problems, "junk-routes")
}

/// How much resident memory grew from the middle sample to the last, in
/// percent; `None` with fewer than 8 samples.
fn resident_growth(samples: &[JunkSample]) -> Option<f64> {
    if samples.len() < 8 {
        return None;
    }
    let mid = samples[samples.len() / 2 - 1].rss_mib?;
    let last = samples.last()?.rss_mib?;
    Some((last / mid - 1.0) * 100.0)
}

/// `learner evictions (routes)` from `augur_learner_evictions_total{table="routes"}`.
fn short_series(name: &str) -> String {
    let (metric, labels) = name.split_once('{').unwrap_or((name, ""));
    let metric = metric
        .trim_start_matches("augur_")
        .trim_end_matches("_total")
        .replace('_', " ");
    let values: Vec<&str> = labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|kv| Some(kv.split_once('=')?.1.trim_matches('"')))
        .collect();
    if values.is_empty() {
        metric
    } else {
        format!("{metric} ({})", values.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_words_are_distinct_routes_of_their_own() {
        let words: BTreeSet<String> = (0..50_000).map(word).collect();
        assert_eq!(words.len(), 50_000);
        for w in words.iter().take(1000) {
            let path = format!("/junk/{w}");
            assert_eq!(augur_predictor::shape::path_template(&path), path);
        }
    }

    #[test]
    fn series_are_read_with_their_labels() {
        let text = "# HELP x\nfoo_total{a=\"b\"} 3\nfoo_total{a=\"c\"} 4.5\nfoobar 1\n";
        let s = series(text, "foo_total");
        assert_eq!(s.len(), 2);
        assert_eq!(s["foo_total{a=\"c\"}"], 4.5);
        assert_eq!(describe_series(&s, |v| v > 3.0), "c 4.5");
        assert_eq!(
            short_series("augur_learner_evictions_total{table=\"routes\"}"),
            "learner evictions (routes)"
        );
    }
}
