//! pingora's settings, one at a time: the bare pingora proxy
//! (`bare-pingora`, the floor under augur in `bench-passthrough`) run with
//! augur's settings and then with one of them changed, in rounds that
//! visit every variant in turn (each round starting one later), so a drift of the machine falls on all of
//! them alike. Each variant is measured at a fixed rate (CPU seconds per
//! 10 000 requests and p99), saturated with keep-alive connections and
//! with a new connection per request (what a per-connection cost shows
//! in), and by the resident memory each idle keep-alive connection holds.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;

use crate::bench::{self, Wrk};
use crate::cli::humantime_duration;
use crate::load::{self, Planned};
use crate::procs::{self, Proc};

#[derive(Debug, Clone, clap::Args)]
pub struct SettingsOptions {
    /// Length of each measured run.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    pub duration: Duration,
    /// How many times every variant is measured.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The fixed request rate.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Idle keep-alive connections opened to measure memory per connection.
    #[arg(long, default_value_t = 500)]
    pub idle_connections: usize,
    #[arg(long, default_value_t = 1024)]
    pub body_bytes: usize,
    /// Measure only the variants whose name contains this (augur's
    /// settings are always measured, as the reference).
    #[arg(long)]
    pub only: Option<String>,
}

/// One setting changed from augur's: its name, and `bare-pingora`'s flags
/// for it.
struct Variant {
    name: &'static str,
    args: &'static [&'static str],
}

const fn variant(name: &'static str, args: &'static [&'static str]) -> Variant {
    Variant { name, args }
}

const VARIANTS: &[Variant] = &[
    variant(
        "augur's settings (4 KiB read buffer, 1460 B write buffer, pool 1024, upstream timeouts)",
        &[],
    ),
    variant("no upstream read/write timeouts", &["--no-timeouts"]),
    variant("upstream pool 128 (pingora's default)", &["--pool", "128"]),
    variant(
        "read buffer 64 KiB (pingora's default)",
        &["--read-buffer", "65536"],
    ),
    variant("read buffer 16 KiB", &["--read-buffer", "16384"]),
    variant("no read buffer", &["--read-buffer", "0"]),
    variant("no write buffer", &["--write-buffer", "0"]),
    variant("write buffer 16 KiB", &["--write-buffer", "16384"]),
];

/// What one variant measured in one round.
#[derive(Clone, Copy, Default)]
struct Sample {
    cpu_per_10k: f64,
    p99_ms: f64,
    saturated: f64,
    saturated_new_connections: f64,
    kib_per_idle_connection: f64,
    rss_mib: f64,
}

pub async fn run(opts: SettingsOptions) -> anyhow::Result<String> {
    let dir = procs::scratch("bench-settings")?;
    let me = std::env::current_exe()?;
    let (upstream, _upstream) = bench::start_upstream(&me, &dir, opts.body_bytes)?;
    let variants: Vec<&Variant> = VARIANTS
        .iter()
        .enumerate()
        .filter(|(i, v)| {
            *i == 0
                || opts
                    .only
                    .as_ref()
                    .is_none_or(|o| v.name.contains(o.as_str()))
        })
        .map(|(_, v)| v)
        .collect();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 1..=opts.rounds.max(1) {
        // Each round starts one variant later, so that none is always the
        // first measured (on a machine still settling) or the last.
        for k in 0..variants.len() {
            let i = (k + round - 1) % variants.len();
            let variant = variants[i];
            eprintln!("==> round {round}: {}", variant.name);
            let (addr, proc) = bench::start_bare_pingora(&me, &dir, upstream, variant.args)?;
            let sample = measure(addr, &proc, &opts).await?;
            eprintln!(
                "    {:.3} CPU s per 10k, p99 {:.3} ms, saturated {:.0} / {:.0} new connections, {:.1} KiB per idle connection",
                sample.cpu_per_10k,
                sample.p99_ms,
                sample.saturated,
                sample.saturated_new_connections,
                sample.kib_per_idle_connection
            );
            samples[i].push(sample);
        }
    }
    Ok(table(&variants, &samples, &opts))
}

async fn measure(addr: SocketAddr, proc: &Proc, opts: &SettingsOptions) -> anyhow::Result<Sample> {
    let planned = Planned::get("/bench");
    load::fixed_rate(addr, planned.clone(), 1000, Duration::from_secs(1), 16).await;
    let conns = (opts.rate as usize / 200).clamp(8, 64);
    let before = proc.tree_cpu_seconds();
    let r = load::fixed_rate(addr, planned, opts.rate, opts.duration, conns).await;
    let after = proc.tree_cpu_seconds();
    anyhow::ensure!(
        r.ok > 0 && r.errors == 0,
        "{} errors at {}/s",
        r.errors,
        opts.rate
    );
    let cpu_per_10k = before
        .zip(after)
        .map(|(b, a)| (a - b) / r.ok as f64 * 10_000.0)
        .context("no CPU time from /proc")?;
    let keep_alive =
        tokio::task::block_in_place(|| bench::wrk(addr, opts.duration, Wrk::KeepAlive))?;
    let new_connections =
        tokio::task::block_in_place(|| bench::wrk(addr, opts.duration, Wrk::NewConnections))?;
    let kib_per_idle_connection =
        tokio::task::block_in_place(|| idle_cost(addr, proc, opts.idle_connections))?;
    Ok(Sample {
        cpu_per_10k,
        p99_ms: r.ms(0.99),
        saturated: keep_alive.0,
        saturated_new_connections: new_connections.0,
        kib_per_idle_connection,
        rss_mib: proc.rss_kib().unwrap_or(0) as f64 / 1024.0,
    })
}

/// Resident memory per idle keep-alive connection: `n` connections each
/// make one request and stay open.
fn idle_cost(addr: SocketAddr, proc: &Proc, n: usize) -> anyhow::Result<f64> {
    std::thread::sleep(Duration::from_millis(300));
    let before = proc.rss_kib().context("no RSS from /proc")?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(one_request(addr)?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = proc.rss_kib().context("no RSS from /proc")?;
    drop(held);
    Ok(after.saturating_sub(before) as f64 / n.max(1) as f64)
}

/// A connection that has made one request and read its whole answer.
fn one_request(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).context("read the answer")?;
        anyhow::ensure!(n > 0, "closed before answering");
        got.extend_from_slice(&chunk[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .context("an answer without content-length")?;
            if got.len() >= end + 4 + length {
                return Ok(stream);
            }
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn table(variants: &[&Variant], samples: &[Vec<Sample>], opts: &SettingsOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}, {}: bare pingora, {} rounds of {} s runs, {} B bodies, {} idle connections; proxy pinned to CPU {}, load and upstream to CPU {}\n",
        procs::utc_now(),
        procs::machine(),
        opts.rounds,
        opts.duration.as_secs(),
        opts.body_bytes,
        opts.idle_connections,
        bench::PROXY_CPU,
        bench::LOAD_CPU,
    );
    let _ = writeln!(
        out,
        "Medians over the rounds; in brackets, against augur's settings.\n\n\
         | setting | CPU s per 10k at {rate}/s | p99 ms at {rate}/s | saturated req/s | saturated, new connection per request | KiB per idle connection | RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|",
        rate = opts.rate
    );
    let pick = |s: &[Sample], f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
    // Each column: its value, its decimals, and whether it is compared
    // with augur's settings.
    type Column = (fn(&Sample) -> f64, usize, bool);
    let columns: [Column; 6] = [
        (|s| s.cpu_per_10k, 3, true),
        (|s| s.p99_ms, 3, false),
        (|s| s.saturated, 0, true),
        (|s| s.saturated_new_connections, 0, true),
        (|s| s.kib_per_idle_connection, 1, true),
        (|s| s.rss_mib, 1, false),
    ];
    let base: Vec<f64> = columns.iter().map(|c| pick(&samples[0], c.0)).collect();
    for (row, (variant, s)) in variants.iter().zip(samples).enumerate() {
        let _ = write!(out, "| {} |", variant.name);
        for ((value, decimals, compared), base) in columns.iter().zip(&base) {
            let v = pick(s, *value);
            if row == 0 || !compared || *base == 0.0 {
                let _ = write!(out, " {v:.decimals$} |");
            } else {
                let change = (v / base - 1.0) * 100.0;
                let _ = write!(out, " {v:.decimals$} ({change:+.0}%) |");
            }
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\nEvery round (CPU s per 10k / saturated req/s / new-connection req/s / KiB per idle connection):\n"
    );
    for (variant, s) in variants.iter().zip(samples) {
        let rounds: Vec<String> = s
            .iter()
            .map(|x| {
                format!(
                    "{:.3} / {:.0} / {:.0} / {:.1}",
                    x.cpu_per_10k,
                    x.saturated,
                    x.saturated_new_connections,
                    x.kib_per_idle_connection
                )
            })
            .collect();
        let _ = writeln!(out, "* {}: {}", variant.name, rounds.join("; "));
    }
    out
}
