//! The demo: an application (the hotel, the shop) driven three ways in one
//! run — direct, through augur passing through, through augur speculating
//! — every response checked, with one table of what each cost.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use crate::app::{App, Counts};
use crate::cli::humantime_duration;
use crate::load::{self, Planned, Report};
use crate::procs::{self, Proc, free_port, local};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The augur binary (default: the one built beside this program).
    #[arg(long)]
    pub augur: Option<PathBuf>,
    /// Requests per second in each measured run.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    pub duration: Duration,
    /// Warm-up requests per endpoint, at most.
    #[arg(long = "warmup", default_value_t = 50)]
    pub warmup_per_route: usize,
    /// How long each dependency takes to answer.
    #[arg(long, default_value = "5ms", value_parser = humantime_duration)]
    pub latency: Duration,
    /// Have the speculating augur write its trace log here (with several
    /// applications, the application's name goes before the extension).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Run only the speculating mode (a soak: it reports augur's memory).
    #[arg(long)]
    pub only_speculating: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    PassThrough,
    Speculating,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::PassThrough => "augur pass-through",
            Mode::Speculating => "augur speculating",
        }
    }
}

struct Run {
    report: Report,
    real: u64,
    prefetch: u64,
    prefetched_writes: u64,
    speculated_calls: f64,
    /// (dependency, kind of call) → (real, prefetch) requests received.
    kinds: BTreeMap<(usize, String), (u64, u64)>,
}

/// The warm-up: the workload's first requests, at most `per_route` of each
/// endpoint. Returns them and where the measured run starts.
pub(crate) fn warmup<A: App>(per_route: usize) -> (Vec<Planned>, u64) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut n = 0;
    while n < 10_000 {
        let p = A::planned(n);
        n += 1;
        let count = seen.entry(p.label).or_insert(0);
        if *count < per_route {
            *count += 1;
            out.push(p);
        } else if seen.values().all(|c| *c >= per_route.min(10)) && out.len() >= per_route {
            break;
        }
    }
    (out, n)
}

/// Sends application `A`'s warm-up to `target` (4 at a time) and returns
/// where its workload goes on; an error naming `who` if an answer failed
/// or was wrong.
pub(crate) async fn warm_up<A: App>(who: &str, target: SocketAddr) -> anyhow::Result<u64> {
    let (warm, next) = warmup::<A>(50);
    eprintln!("{who}: warming up ({} requests)", warm.len());
    let w = load::closed_loop(target, warm, 4).await;
    if w.errors > 0 || w.wrong > 0 {
        bail!(
            "{who}: the warm-up saw {} errors and {} wrong answers; {}",
            w.errors,
            w.wrong,
            w.describe_first_wrong()
        );
    }
    Ok(next)
}

/// Runs the demo of application `A`.
pub async fn run<A: App>(opts: &Options) -> anyhow::Result<()> {
    let binary = procs::augur_binary(opts.augur.clone())?;
    let dir = procs::scratch(A::NAME)?;
    let counts = Arc::new(Counts::new(A::DEPENDENCIES.len()));
    let (warm, first) = warmup::<A>(opts.warmup_per_route);
    let measured = (f64::from(opts.rate) * opts.duration.as_secs_f64()) as u64;
    let plan: Vec<Planned> = (first..first + measured).map(A::planned).collect();
    println!(
        "{}: {} dependencies answering in {:?}; warm-up {} requests (at most {} per endpoint), then {} requests at {}/s",
        A::NAME,
        A::DEPENDENCIES.len(),
        opts.latency,
        warm.len(),
        opts.warmup_per_route,
        plan.len(),
        opts.rate
    );

    if !A::TRANSPORTS.is_empty() {
        let how: Vec<String> = A::TRANSPORTS
            .iter()
            .map(|(name, t)| match t {
                crate::app::Transport::Tls => format!("{name} behind TLS"),
                crate::app::Transport::H2c => format!("{name} over h2c"),
            })
            .collect();
        println!(
            "{}: augur reaches {} (the rest over HTTP/1)",
            A::NAME,
            how.join(", ")
        );
    }
    let mut runs = Vec::new();
    let modes: &[Mode] = if opts.only_speculating {
        &[Mode::Speculating]
    } else {
        &[Mode::Direct, Mode::PassThrough, Mode::Speculating]
    };
    for (i, &mode) in modes.iter().enumerate() {
        println!("[{}/3] {}: starting", i + 1, mode.name());
        // Fresh dependencies for each mode: what one mode's writes did
        // is not another's starting point.
        let deps = A::start_dependencies(opts.latency, counts.clone()).await?;
        let (target, augur, admin) = match mode {
            Mode::Direct => (A::start_frontend(deps.clone()).await?, None, None),
            _ => {
                let (target, proc, admin) =
                    start_augur::<A>(&binary, &dir, &deps, mode, opts.trace.as_ref()).await?;
                (target, Some(proc), Some(admin))
            }
        };
        if let Some(rss) = augur.as_ref().and_then(Proc::rss_kib) {
            println!(
                "[{}/3] {}: augur resident memory idle: {:.1} MiB",
                i + 1,
                mode.name(),
                rss as f64 / 1024.0
            );
        }
        println!(
            "[{}/3] {}: warming up ({} requests)",
            i + 1,
            mode.name(),
            warm.len()
        );
        let w = load::closed_loop(target, warm.clone(), 4).await;
        if w.errors > 0 || w.wrong > 0 {
            bail!(
                "{}: warm-up saw {} errors and {} wrong responses; {}",
                mode.name(),
                w.errors,
                w.wrong,
                w.describe_first_wrong()
            );
        }
        counts.reset();
        let speculated_before = match admin {
            Some(admin) => speculated(admin)?,
            None => 0.0,
        };
        println!(
            "[{}/3] {}: measuring ({} requests at {}/s)",
            i + 1,
            mode.name(),
            plan.len(),
            opts.rate
        );
        let report = load::fixed_rate_plan(target, plan.clone(), opts.rate, 16).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let speculated_calls = match admin {
            Some(admin) => speculated(admin)? - speculated_before,
            None => 0.0,
        };
        runs.push((
            mode,
            Run {
                real: counts.real_total(),
                prefetch: counts.prefetch_total(),
                prefetched_writes: counts.prefetched_writes(),
                speculated_calls,
                kinds: counts.kinds(),
                report,
            },
        ));
        if let Some(proc) = augur {
            if mode == Mode::Speculating {
                if let Some(admin) = admin {
                    let (_, metrics) = procs::http_get(admin, "/metrics")?;
                    let shown = [
                        "augur_speculations_total",
                        "augur_speculation_",
                        "augur_contexts_open",
                        "augur_learner_dropped",
                    ];
                    for line in metrics
                        .lines()
                        .filter(|l| shown.iter().any(|p| l.starts_with(p)))
                    {
                        println!("    {line}");
                    }
                    if let Some(rss) = proc.rss_kib() {
                        println!(
                            "    augur resident memory under the demo: {:.1} MiB",
                            rss as f64 / 1024.0
                        );
                    }
                }
            }
            drop(proc);
        }
    }
    if runs.len() < 3 {
        let r = &runs[0].1;
        println!(
            "\n{} requests at {:.0}/s: {} wrong, {} errors, {} speculated writes, {} dependency requests ({} speculative)",
            r.report.ok + r.report.errors,
            r.report.rps(),
            r.report.wrong,
            r.report.errors,
            r.prefetched_writes,
            r.real + r.prefetch,
            r.prefetch
        );
        return Ok(());
    }
    println!("\n{}", table::<A>(&runs, opts.latency));
    let failed: Vec<String> = runs
        .iter()
        .filter(|(_, r)| r.report.wrong > 0 || r.report.errors > 0 || r.prefetched_writes > 0)
        .map(|(m, r)| {
            format!(
                "{}: {} wrong, {} errors, {} speculated writes; {}",
                m.name(),
                r.report.wrong,
                r.report.errors,
                r.prefetched_writes,
                r.report.describe_first_wrong()
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    println!("demo ok: every response was right in every mode, and no write was speculated.");
    Ok(())
}

/// Dependency calls augur answered from speculation (hit or coalesced).
pub(crate) fn speculated(admin: SocketAddr) -> anyhow::Result<f64> {
    let (_, metrics) = procs::http_get(admin, "/metrics")?;
    Ok(metrics
        .lines()
        .filter(|l| {
            l.starts_with("augur_dependency_calls_total")
                && (l.contains("outcome=\"hit\"") || l.contains("outcome=\"coalesced\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn start_augur<A: App>(
    binary: &std::path::Path,
    dir: &std::path::Path,
    deps: &[SocketAddr],
    mode: Mode,
    trace: Option<&PathBuf>,
) -> anyhow::Result<(SocketAddr, Proc, SocketAddr)> {
    let (ingress, admin) = (local(free_port()?), local(free_port()?));
    let egress: Vec<SocketAddr> = (0..deps.len())
        .map(|_| free_port().map(local))
        .collect::<Result<_, _>>()?;
    let frontend = A::start_frontend(egress.clone()).await?;
    let speculate = mode == Mode::Speculating;
    let (upstreams, extras) = crate::transport::reach::<A>(dir, deps).await?;
    let mut config = augur_config_with::<A>(
        ("frontend", ingress, admin, frontend),
        &egress,
        &upstreams,
        &extras,
        speculate,
    );
    if let (true, Some(path)) = (speculate, trace) {
        let path = std::path::absolute(path)?;
        let _ = std::fs::remove_file(&path);
        let _ = writeln!(
            config,
            "\n[predictor]\ntrace_log = {:?}",
            path.display().to_string()
        );
    }
    let name = if speculate {
        "augur-speculating"
    } else {
        "augur-passthrough"
    };
    let proc = tokio::task::block_in_place(|| {
        procs::start_augur(binary, dir, name, &config, admin, None)
    })?;
    Ok((ingress, proc, admin))
}

/// augur's config in front of application `A`: the service `name` on
/// `ingress` forwarding to `frontend`, the admin API on `admin`, and each
/// dependency listening on `egress` and forwarding to `upstreams` (in
/// [`App::DEPENDENCIES`] order). Sections may be appended.
pub(crate) fn augur_config<A: App>(
    name: &str,
    ingress: SocketAddr,
    admin: SocketAddr,
    frontend: SocketAddr,
    egress: &[SocketAddr],
    upstreams: &[SocketAddr],
    speculate: bool,
) -> String {
    let plain = vec![String::new(); upstreams.len()];
    augur_config_with::<A>(
        (name, ingress, admin, frontend),
        egress,
        upstreams,
        &plain,
        speculate,
    )
}

/// [`augur_config`] with more TOML lines for each dependency (its
/// protocol, its TLS table: [`crate::transport::reach`]).
pub(crate) fn augur_config_with<A: App>(
    (name, ingress, admin, frontend): (&str, SocketAddr, SocketAddr, SocketAddr),
    egress: &[SocketAddr],
    upstreams: &[SocketAddr],
    extras: &[String],
    speculate: bool,
) -> String {
    let mut config = format!(
        "[service]\nname = \"{name}\"\nlisten = \"{ingress}\"\nupstream = \"{frontend}\"\n\n[admin]\nlisten = \"{admin}\"\n\n[speculation]\nenabled = {speculate}\n"
    );
    let deps = A::DEPENDENCIES
        .iter()
        .zip(egress)
        .zip(upstreams)
        .zip(extras);
    for (((name, listen), upstream), extra) in deps {
        let _ = write!(
            config,
            "\n[[dependency]]\nname = \"{name}\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n{extra}"
        );
    }
    config
}

fn ms(r: &Report, label: &str, q: f64) -> f64 {
    r.by_label
        .get(label)
        .map_or(f64::NAN, |h| h.value_at_quantile(q) as f64 / 1000.0)
}

fn table<A: App>(runs: &[(Mode, Run)], latency: Duration) -> String {
    let mut out = String::new();
    let labels: Vec<&str> = runs[0].1.report.by_label.keys().copied().collect();
    let _ = writeln!(
        out,
        "| endpoint | direct p50 / p90 / p99 ms | pass-through p50 / p90 / p99 ms | speculating p50 / p90 / p99 ms | oracle p50 ms | speculating vs pass-through p50 | vs oracle |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let direct = &runs[0].1.report;
    for label in &labels {
        let cells: Vec<String> = runs
            .iter()
            .map(|(_, r)| {
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    ms(&r.report, label, 0.5),
                    ms(&r.report, label, 0.9),
                    ms(&r.report, label, 0.99)
                )
            })
            .collect();
        // Oracle: direct p50 with the dependency time cut to the critical path.
        let (critical, total) = A::oracle(label, latency);
        let oracle = ms(direct, label, 0.5) - (total - critical).as_secs_f64() * 1000.0;
        let (pass, spec) = (
            ms(&runs[1].1.report, label, 0.5),
            ms(&runs[2].1.report, label, 0.5),
        );
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {oracle:.2} | {:+.0}% | {:+.0}% |",
            cells[0],
            cells[1],
            cells[2],
            (spec / pass - 1.0) * 100.0,
            (spec / oracle - 1.0) * 100.0
        );
    }
    let _ = writeln!(
        out,
        "\n| mode | throughput req/s | dependency requests | of which speculative | extra vs direct | answered by speculation | wrong responses | errors | speculated writes |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let base = runs[0].1.real + runs[0].1.prefetch;
    for (mode, r) in runs {
        let total = r.real + r.prefetch;
        let _ = writeln!(
            out,
            "| {} | {:.0} | {total} | {} | {:+.1}% | {:.0} | {} | {} | {} |",
            mode.name(),
            r.report.rps(),
            r.prefetch,
            (total as f64 / base.max(1) as f64 - 1.0) * 100.0,
            r.speculated_calls,
            r.report.wrong,
            r.report.errors,
            r.prefetched_writes
        );
    }
    let _ = writeln!(
        out,
        "\n| call | made (direct) | reached the dependency as a real call, speculating | speculative requests | answered ahead |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let speculating = &runs[2].1.kinds;
    for ((dep, kind), (made, _)) in &runs[0].1.kinds {
        let (real, prefetch) = speculating
            .get(&(*dep, kind.clone()))
            .copied()
            .unwrap_or_default();
        let name = A::DEPENDENCIES.get(*dep).copied().unwrap_or("?");
        let _ = writeln!(
            out,
            "| {name} {kind} | {made} | {real} | {prefetch} | {:.0}% |",
            (1.0 - real as f64 / (*made).max(1) as f64) * 100.0
        );
    }
    let _ = writeln!(
        out,
        "\noracle: the direct p50 with each endpoint's dependency time cut to its critical path (calls that only need the inbound request or the same earlier response run side by side)."
    );
    out
}
