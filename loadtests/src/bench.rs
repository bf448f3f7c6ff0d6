//! The pass-through benchmark: one fast upstream (1 KiB bodies), measured
//! directly and through each proxy in the same run — augur as ingress only,
//! augur as ingress + egress (two hops through one augur process, as a
//! sidecar's request and its dependency call see it), nginx and haproxy
//! configured equivalently (one worker, upstream keep-alive, no logging).
//!
//! Each proxy is pinned to CPU 1 and the load to CPU 0 when `taskset` is
//! there, so "per core" means the proxy's one core. Fixed-rate runs use
//! this crate's open-loop generator; saturation uses `wrk`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cli::humantime_duration;
use crate::load::{self, Planned};
use crate::procs::{self, Proc, free_port, local};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// The augur binary (default: the one built beside this program).
    #[arg(long)]
    pub augur: Option<PathBuf>,
    /// Length of each measured run.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    pub duration: Duration,
    /// Fixed request rates to measure, comma separated.
    #[arg(long, default_value = "1000,5000", value_delimiter = ',')]
    pub rates: Vec<u32>,
    #[arg(long, default_value_t = 1024)]
    pub body_bytes: usize,
    /// Measure only direct and augur.
    #[arg(long)]
    pub skip_peers: bool,
    /// Leave out the rows with an HTTPS and an h2c upstream.
    #[arg(long)]
    pub plain_only: bool,
}

/// How a proxy reaches the upstream.
#[derive(Clone, Copy)]
enum Link<'a> {
    Plain,
    /// TLS to the upstream's TLS port, verified against this CA for the
    /// name [`TLS_NAME`].
    Https(&'a Path),
    /// HTTP/2 with prior knowledge.
    H2c,
}

const TLS_NAME: &str = "bench.test";

impl Link<'_> {
    /// What a row's name says of it.
    fn suffix(self) -> &'static str {
        match self {
            Link::Plain => "",
            Link::Https(_) => ", HTTPS upstream",
            Link::H2c => ", h2c upstream",
        }
    }

    /// What a log or config file's name says of it.
    fn tag(self) -> &'static str {
        match self {
            Link::Plain => "",
            Link::Https(_) => "-https",
            Link::H2c => "-h2c",
        }
    }
}

/// One row of the results.
struct Row {
    name: String,
    /// (rate, achieved rps, p50 ms, p99 ms, p99.9 ms, errors) per fixed rate.
    fixed: Vec<(u32, f64, f64, f64, f64, u64)>,
    /// CPU seconds the proxy (with its child processes) used per 10 000
    /// requests answered, per fixed rate; none for direct.
    cpu_per_10k: Vec<Option<f64>>,
    /// (rps, p50 ms, p99 ms) from wrk.
    saturated: Option<(f64, f64, f64)>,
    /// The proxy's resident memory after its runs, MiB.
    rss_mib: Option<f64>,
}

pub(crate) const PROXY_CPU: &str = "1";
pub(crate) const LOAD_CPU: &str = "0";

pub async fn run(opts: BenchOptions) -> anyhow::Result<String> {
    let binary = procs::augur_binary(opts.augur.clone())?;
    let dir = procs::scratch("bench")?;
    let me = std::env::current_exe()?;
    let ca = crate::transport::Ca::new(&dir)?;
    let (upstream, tls_upstream, _upstream) = start_upstreams(&me, &dir, opts.body_bytes, &ca)?;

    let mut targets: Vec<(String, SocketAddr, Option<Proc>)> =
        vec![("direct".into(), upstream, None)];
    match start_bare_pingora(&me, &dir, upstream, &[]) {
        Ok((addr, proc)) => targets.push(("bare pingora".into(), addr, Some(proc))),
        Err(e) => eprintln!("bare pingora skipped: {e:#}"),
    }
    // Two listeners of one bare pingora in a chain on one thread: the
    // floor under augur's two-hop rows.
    let hop = local(free_port()?).to_string();
    match start_bare_pingora(&me, &dir, upstream, &["--hop", &hop]) {
        Ok((addr, proc)) => targets.push(("bare pingora (2 hops)".into(), addr, Some(proc))),
        Err(e) => eprintln!("bare pingora (2 hops) skipped: {e:#}"),
    }
    let (addr, proc) = start_augur_ingress(&binary, &dir, upstream, Link::Plain)?;
    targets.push(("augur (ingress)".into(), addr, Some(proc)));
    let (addr, proc) = start_augur_chain(&binary, &dir, upstream, true)?;
    targets.push(("augur (ingress + egress, 2 hops)".into(), addr, Some(proc)));
    // The same two hops without speculation: there the ingress request
    // predicts its egress call, so each request is also a speculative one
    // that the real call joins.
    let (addr, proc) = start_augur_chain(&binary, &dir, upstream, false)?;
    targets.push(("augur (2 hops, speculation off)".into(), addr, Some(proc)));
    if !opts.skip_peers {
        if procs::which("nginx") {
            let (addr, proc) = start_nginx(&dir, upstream, Link::Plain)?;
            targets.push(("nginx 1 worker".into(), addr, Some(proc)));
        } else {
            eprintln!("nginx not found: skipped (apt-get install nginx)");
        }
        if procs::which("haproxy") {
            let (addr, proc) = start_haproxy(&dir, upstream, Link::Plain)?;
            targets.push(("haproxy 1 thread".into(), addr, Some(proc)));
        } else {
            eprintln!("haproxy not found: skipped (apt-get install haproxy)");
        }
    }
    if !opts.plain_only {
        // nginx proxies HTTP/1.x only (grpc_pass aside): no h2c row.
        for link in [Link::Https(&ca.file), Link::H2c] {
            let to = match link {
                Link::Https(_) => tls_upstream,
                _ => upstream,
            };
            let (addr, proc) = start_augur_ingress(&binary, &dir, to, link)?;
            targets.push((
                format!("augur (ingress){}", link.suffix()),
                addr,
                Some(proc),
            ));
            if opts.skip_peers {
                continue;
            }
            if matches!(link, Link::Https(_)) && procs::which("nginx") {
                let (addr, proc) = start_nginx(&dir, to, link)?;
                targets.push((format!("nginx 1 worker{}", link.suffix()), addr, Some(proc)));
            }
            if procs::which("haproxy") {
                let (addr, proc) = start_haproxy(&dir, to, link)?;
                targets.push((
                    format!("haproxy 1 thread{}", link.suffix()),
                    addr,
                    Some(proc),
                ));
            }
        }
    }

    let planned = Planned::get("/bench");
    let mut rows = Vec::new();
    for (name, addr, proc) in &targets {
        eprintln!("==> {name} at {addr}");
        // Warm connections and pools.
        load::fixed_rate(*addr, planned.clone(), 1000, Duration::from_secs(1), 16).await;
        let mut fixed = Vec::new();
        let mut cpu_per_10k = Vec::new();
        for &rate in &opts.rates {
            let conns = (rate as usize / 200).clamp(8, 64);
            let before = proc.as_ref().and_then(Proc::tree_cpu_seconds);
            let r = load::fixed_rate(*addr, planned.clone(), rate, opts.duration, conns).await;
            let after = proc.as_ref().and_then(Proc::tree_cpu_seconds);
            let cpu = before
                .zip(after)
                .filter(|_| r.ok > 0)
                .map(|(b, a)| (a - b) / r.ok as f64 * 10_000.0);
            eprintln!(
                "    {rate} req/s: p50 {:.3} ms, p99 {:.3} ms, {} errors{}",
                r.ms(0.5),
                r.ms(0.99),
                r.errors,
                cpu.map(|c| format!(", {c:.3} CPU s per 10k requests"))
                    .unwrap_or_default()
            );
            fixed.push((rate, r.rps(), r.ms(0.5), r.ms(0.99), r.ms(0.999), r.errors));
            cpu_per_10k.push(cpu);
        }
        let saturated = if procs::which("wrk") {
            let s = tokio::task::block_in_place(|| wrk(*addr, opts.duration, Wrk::KeepAlive))?;
            eprintln!(
                "    saturated: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
                s.0, s.1, s.2
            );
            Some(s)
        } else {
            eprintln!("    wrk not found: saturation skipped (apt-get install wrk)");
            None
        };
        let rss_mib = proc
            .as_ref()
            .and_then(Proc::rss_kib)
            .map(|k| k as f64 / 1024.0);
        rows.push(Row {
            name: name.clone(),
            fixed,
            cpu_per_10k,
            saturated,
            rss_mib,
        });
    }
    Ok(table(&rows, &opts))
}

fn table(rows: &[Row], opts: &BenchOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}, {}: {} s per run, {} B bodies, proxies pinned to CPU {PROXY_CPU}, load and upstream to CPU {LOAD_CPU}\n",
        procs::utc_now(),
        procs::machine(),
        opts.duration.as_secs(),
        opts.body_bytes
    );
    let mut header = String::from("| target |");
    let mut rule = String::from("|---|");
    for rate in &opts.rates {
        let _ = write!(
            header,
            " {rate}/s p50 ms | {rate}/s p99 ms | {rate}/s p99.9 ms |"
        );
        rule.push_str("---:|---:|---:|");
    }
    for rate in &opts.rates {
        let _ = write!(header, " {rate}/s CPU s per 10k |");
        rule.push_str("---:|");
    }
    header.push_str(" saturated req/s | sat. p50 ms | sat. p99 ms | RSS MiB |");
    rule.push_str("---:|---:|---:|---:|");
    let _ = writeln!(out, "{header}\n{rule}");
    for row in rows {
        let _ = write!(out, "| {} |", row.name);
        for (_, _, p50, p99, p999, errors) in &row.fixed {
            let mark = if *errors > 0 {
                format!(" ({errors} err)")
            } else {
                String::new()
            };
            let _ = write!(out, " {p50:.3} | {p99:.3}{mark} | {p999:.3} |");
        }
        for cpu in &row.cpu_per_10k {
            let _ = write!(out, " {} |", or_dash(*cpu, 3));
        }
        match row.saturated {
            Some((rps, p50, p99)) => {
                let _ = write!(out, " {rps:.0} | {p50:.3} | {p99:.3} |");
            }
            None => out.push_str(" - | - | - |"),
        }
        let _ = writeln!(out, " {} |", or_dash(row.rss_mib, 1));
    }
    ratios(&mut out, rows);
    floor(&mut out, rows);
    // Added latency per hop at each fixed rate, against direct.
    if let Some(direct) = rows.first() {
        let _ = writeln!(out, "\nAdded p99 per hop (ms), against direct:\n");
        for row in rows.iter().skip(1) {
            let hops = if row.name.contains("2 hops") {
                2.0
            } else {
                1.0
            };
            let added: Vec<String> = row
                .fixed
                .iter()
                .zip(&direct.fixed)
                .map(|(r, d)| format!("{}/s: {:.3}", r.0, (r.3 - d.3) / hops))
                .collect();
            let _ = writeln!(out, "* {}: {}", row.name, added.join(", "));
        }
    }
    out
}

/// Each proxy against nginx: saturated throughput (two hops against
/// nginx's one), and CPU per request at each fixed rate.
fn ratios(out: &mut String, rows: &[Row]) {
    let Some(plain) = rows.iter().find(|r| r.name == "nginx 1 worker") else {
        return;
    };
    let _ = writeln!(
        out,
        "\nAgainst nginx with the same upstream (plain nginx where none: h2c) (saturated req/s ratio; CPU per request ratio at each rate):\n"
    );
    for row in rows
        .iter()
        .filter(|r| r.proxies() && !r.name.starts_with("nginx"))
    {
        let link = row.name.find(", ").map_or("", |i| &row.name[i..]);
        let nginx = rows
            .iter()
            .find(|r| r.name == format!("nginx 1 worker{link}"))
            .unwrap_or(plain);
        ratio_line(out, row, nginx);
    }
}

/// `* ROW (against OTHER): saturated X×; CPU 1000/s Y×, …`.
fn ratio_line(out: &mut String, row: &Row, other: &Row) {
    let saturated = row
        .saturated
        .zip(other.saturated)
        .map_or_else(|| "-".into(), |(r, o)| format!("{:.2}×", r.0 / o.0));
    let cpu: Vec<String> = row
        .cpu_per_10k
        .iter()
        .zip(&other.cpu_per_10k)
        .zip(&row.fixed)
        .map(|((r, o), f)| match r.zip(*o) {
            Some((r, o)) if o > 0.0 => format!("{}/s {:.2}×", f.0, r / o),
            _ => format!("{}/s -", f.0),
        })
        .collect();
    let _ = writeln!(
        out,
        "* {} (against {}): saturated {saturated}; CPU {}",
        row.name,
        other.name,
        cpu.join(", ")
    );
}

/// Each plain augur row against the bare pingora with as many hops: what
/// augur costs beyond the pingora it is built on.
fn floor(out: &mut String, rows: &[Row]) {
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let (Some(one), two) = (find("bare pingora"), find("bare pingora (2 hops)")) else {
        return;
    };
    let _ = writeln!(
        out,
        "\nAgainst the bare pingora with as many hops (saturated req/s ratio; CPU per request ratio at each rate):\n"
    );
    for row in rows
        .iter()
        .filter(|r| r.name.starts_with("augur") && !r.name.contains("upstream)"))
    {
        let Some(bare) = (if row.name.contains("2 hops") {
            two
        } else {
            Some(one)
        }) else {
            continue;
        };
        ratio_line(out, row, bare);
    }
}

impl Row {
    fn proxies(&self) -> bool {
        self.name != "direct"
    }
}

fn or_dash(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// The benchmarks' upstream (`serve-fast`, `body_bytes` bodies), pinned
/// beside the load.
pub(crate) fn start_upstream(
    me: &Path,
    dir: &Path,
    body_bytes: usize,
) -> anyhow::Result<(SocketAddr, Proc)> {
    let upstream = local(free_port()?);
    let mut cmd = procs::command(me, Some(LOAD_CPU));
    cmd.args([
        "serve-fast",
        "--listen",
        &upstream.to_string(),
        "--body-bytes",
        &body_bytes.to_string(),
    ]);
    let proc = procs::start("upstream", cmd, &dir.join("upstream.log"), &[upstream])?;
    Ok((upstream, proc))
}

/// The upstream of [`run`]: in the clear, and over TLS with a certificate
/// for [`TLS_NAME`] signed by `ca`, from one process.
fn start_upstreams(
    me: &Path,
    dir: &Path,
    body_bytes: usize,
    ca: &crate::transport::Ca,
) -> anyhow::Result<(SocketAddr, SocketAddr, Proc)> {
    let (plain, tls) = (local(free_port()?), local(free_port()?));
    let (cert, key) = ca.leaf_files(TLS_NAME)?;
    let mut cmd = procs::command(me, Some(LOAD_CPU));
    cmd.args(["serve-fast", "--listen", &plain.to_string()])
        .args(["--body-bytes", &body_bytes.to_string()])
        .args(["--tls-listen", &tls.to_string()])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key);
    let proc = procs::start("upstream", cmd, &dir.join("upstream.log"), &[plain, tls])?;
    Ok((plain, tls, proc))
}

/// `bare-pingora` beside this program, with `args` added to its flags.
pub(crate) fn start_bare_pingora(
    me: &Path,
    dir: &Path,
    upstream: SocketAddr,
    args: &[&str],
) -> anyhow::Result<(SocketAddr, Proc)> {
    let binary = me.with_file_name("bare-pingora");
    if !binary.is_file() {
        bail!(
            "{} not found (cargo build --release -p augur-loadtests)",
            binary.display()
        );
    }
    let listen = local(free_port()?);
    let mut cmd = procs::command(&binary, Some(PROXY_CPU));
    cmd.args([
        "--listen",
        &listen.to_string(),
        "--upstream",
        &upstream.to_string(),
    ]);
    cmd.args(args);
    let log = dir.join(format!(
        "bare-pingora{}.log",
        args.join("").replace([':', '.', '-'], "_")
    ));
    let proc = procs::start("bare-pingora", cmd, &log, &[listen])?;
    Ok((listen, proc))
}

fn start_augur_ingress(
    binary: &Path,
    dir: &Path,
    upstream: SocketAddr,
    link: Link<'_>,
) -> anyhow::Result<(SocketAddr, Proc)> {
    let (listen, admin) = (local(free_port()?), local(free_port()?));
    let how = match link {
        Link::Plain => String::new(),
        Link::H2c => "protocol = \"h2c\"\n".to_string(),
        Link::Https(ca) => format!(
            "[service.tls]\nsni = \"{TLS_NAME}\"\nca_file = {:?}\n",
            ca.display().to_string()
        ),
    };
    let config = format!(
        "[service]\nname = \"bench\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n{how}\n[admin]\nlisten = \"{admin}\"\n\n[proxy]\nthreads = 1\n"
    );
    let proc = procs::start_augur(
        binary,
        dir,
        &format!("augur-ingress{}", link.tag()),
        &config,
        admin,
        Some(PROXY_CPU),
    )?;
    Ok((listen, proc))
}

fn start_augur_chain(
    binary: &Path,
    dir: &Path,
    upstream: SocketAddr,
    speculate: bool,
) -> anyhow::Result<(SocketAddr, Proc)> {
    let (listen, egress, admin) = (
        local(free_port()?),
        local(free_port()?),
        local(free_port()?),
    );
    let config = format!(
        "[service]\nname = \"bench\"\nlisten = \"{listen}\"\nupstream = \"{egress}\"\n\n[admin]\nlisten = \"{admin}\"\n\n[proxy]\nthreads = 1\n\n[speculation]\nenabled = {speculate}\n\n[[dependency]]\nname = \"upstream\"\nlisten = \"{egress}\"\nupstream = \"{upstream}\"\n"
    );
    let name = if speculate {
        "augur-chain"
    } else {
        "augur-chain-plain"
    };
    let proc = procs::start_augur(binary, dir, name, &config, admin, Some(PROXY_CPU))?;
    Ok((listen, proc))
}

fn start_nginx(
    dir: &Path,
    upstream: SocketAddr,
    link: Link<'_>,
) -> anyhow::Result<(SocketAddr, Proc)> {
    let listen = local(free_port()?);
    let prefix = dir.join(format!("nginx{}", link.tag()));
    std::fs::create_dir_all(prefix.join("logs"))?;
    let (scheme, tls) = match link {
        Link::Https(ca) => (
            "https",
            format!(
                "      proxy_ssl_verify on;\n      proxy_ssl_trusted_certificate {};\n      proxy_ssl_name {TLS_NAME};\n      proxy_ssl_server_name on;\n      proxy_ssl_session_reuse on;\n",
                ca.display()
            ),
        ),
        _ => ("http", String::new()),
    };
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n  upstream up {{ server {upstream}; keepalive 128; }}\n  server {{\n    listen {listen} reuseport;\n    keepalive_requests 1000000;\n    location / {{\n      proxy_pass {scheme}://up;\n{tls}      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_buffering on;\n    }}\n  }}\n}}\n",
        prefix = prefix.display()
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new(resolve("nginx")?);
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&path);
    let proc = procs::start(
        "nginx",
        with_taskset(cmd, "nginx")?,
        &dir.join(format!("nginx{}.log", link.tag())),
        &[listen],
    )?;
    Ok((listen, proc))
}

fn start_haproxy(
    dir: &Path,
    upstream: SocketAddr,
    link: Link<'_>,
) -> anyhow::Result<(SocketAddr, Proc)> {
    let listen = local(free_port()?);
    let how = match link {
        Link::Plain => String::new(),
        Link::H2c => " proto h2".to_string(),
        Link::Https(ca) => format!(
            " ssl verify required ca-file {} sni str({TLS_NAME})",
            ca.display()
        ),
    };
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n  option forwardfor\nfrontend f\n  bind {listen}\n  default_backend b\nbackend b\n  server s1 {upstream}{how}\n"
    );
    let path = dir.join(format!("haproxy{}.cfg", link.tag()));
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new(resolve("haproxy")?);
    cmd.arg("-db").arg("-f").arg(&path);
    let proc = procs::start(
        "haproxy",
        with_taskset(cmd, "haproxy")?,
        &dir.join(format!("haproxy{}.log", link.tag())),
        &[listen],
    )?;
    Ok((listen, proc))
}

/// Re-wraps `cmd` (a plain command) under `taskset -c PROXY_CPU`.
fn with_taskset(cmd: Command, name: &str) -> anyhow::Result<Command> {
    if !procs::which("taskset") {
        return Ok(cmd);
    }
    let mut wrapped = Command::new("taskset");
    wrapped
        .args(["-c", PROXY_CPU])
        .arg(resolve(name)?)
        .args(cmd.get_args());
    Ok(wrapped)
}

fn resolve(program: &str) -> anyhow::Result<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found"))
}

/// How wrk's connections are used.
#[derive(Clone, Copy)]
pub(crate) enum Wrk {
    /// Each connection kept alive for the whole run.
    KeepAlive,
    /// `Connection: close` on every request: a new connection each.
    NewConnections,
}

/// Saturation with wrk: 1 thread, 32 connections. Returns (rps, p50, p99).
pub(crate) fn wrk(
    addr: SocketAddr,
    duration: Duration,
    mode: Wrk,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut cmd = Command::new("taskset");
    if !procs::which("taskset") {
        cmd = Command::new("wrk");
    } else {
        cmd.args(["-c", LOAD_CPU, "wrk"]);
    }
    let out = cmd
        .args(["-t1", "-c32", "--latency"])
        .args(match mode {
            Wrk::KeepAlive => &[][..],
            Wrk::NewConnections => &["-H", "Connection: close"][..],
        })
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg(format!("http://{addr}/bench"))
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Requests/sec in wrk output")?;
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(|v| parse_wrk_time(v.trim())))
            .flatten()
            .unwrap_or(f64::NAN)
    };
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("    wrk reported errors:\n{text}");
    }
    Ok((rps, pct("50%"), pct("99%")))
}

/// wrk prints `1.23ms`, `456.00us` or `1.01s`; returns milliseconds.
fn parse_wrk_time(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_times_parse_to_ms() {
        assert_eq!(super::parse_wrk_time("456.00us"), Some(0.456));
        assert_eq!(super::parse_wrk_time("1.50ms"), Some(1.5));
        assert_eq!(super::parse_wrk_time("2.00s"), Some(2000.0));
        assert_eq!(super::parse_wrk_time("x"), None);
    }
}
