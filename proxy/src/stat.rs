//! `augur stat`: what a running augur is doing, per route and per
//! dependency, as `linkerd viz stat` shows a workload — read from two
//! scrapes of its `/metrics`, a window apart, so every figure is over that
//! window: request rate, success rate, p50 and p99 latency (interpolated
//! in the histogram's buckets, as Prometheus' `histogram_quantile` does),
//! and for dependencies the share answered from speculation, the latency
//! it hid per call, the extra upstream requests it cost, and the
//! containers running.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// What `augur stat` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct StatArgs {
    /// augur's admin listener.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: String,
    /// The window the figures are taken over.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// Print a table every window until interrupted.
    #[arg(long)]
    pub watch: bool,
}

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Prints the table (every window with `--watch`).
pub fn run(args: &StatArgs) -> anyhow::Result<()> {
    if args.window.is_zero() {
        bail!("--window must be more than zero");
    }
    let addr = args
        .admin
        .to_socket_addrs()
        .with_context(|| format!("invalid admin address {:?}", args.admin))?
        .next()
        .with_context(|| format!("{:?} resolves to no address", args.admin))?;
    let mut before = Samples::parse(&scrape(addr)?);
    loop {
        std::thread::sleep(args.window);
        let after = Samples::parse(&scrape(addr)?);
        let table = render(&before, &after, args.window);
        if args.watch {
            println!(
                "{}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
        }
        print!("{table}");
        if !args.watch {
            return Ok(());
        }
        println!();
        before = after;
    }
}

/// `GET /metrics`: the body, read to its length (or to the end of its
/// chunks), within [`SCRAPE_TIMEOUT`] per read.
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let fail =
        |e: std::io::Error| anyhow::anyhow!("cannot reach augur's admin listener at {addr}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT).map_err(fail)?;
    stream
        .set_read_timeout(Some(SCRAPE_TIMEOUT))
        .map_err(fail)?;
    stream
        .set_write_timeout(Some(SCRAPE_TIMEOUT))
        .map_err(fail)?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: augur\r\nConnection: close\r\n\r\n")
        .map_err(fail)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).map_err(fail)?;
        if n == 0 || raw.len() > MAX_METRICS {
            bail!("{addr} did not answer HTTP");
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        bail!(
            "{addr}/metrics answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .map(str::to_string)
    };
    let length = header("content-length").and_then(|l| l.parse::<usize>().ok());
    let chunked = header("transfer-encoding").is_some_and(|t| t.contains("chunked"));
    let mut body = raw.split_off(head_end);
    loop {
        let done = match length {
            Some(length) => body.len() >= length,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done || body.len() > MAX_METRICS {
            break;
        }
        let n = stream.read(&mut buf).map_err(fail)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    if chunked {
        body = dechunk(&body).with_context(|| format!("{addr} sent a malformed chunked body"))?;
    }
    if let Some(length) = length {
        body.truncate(length);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The most of `/metrics` read.
const MAX_METRICS: usize = 64 << 20;

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// A sample's labels, in the order given.
type Labels = Vec<(String, String)>;

/// One scrape: each sample by metric name, with its labels.
#[derive(Debug, Default)]
struct Samples(BTreeMap<String, Vec<(Labels, f64)>>);

impl Samples {
    /// Prometheus text; lines that do not parse are skipped.
    fn parse(text: &str) -> Self {
        let mut samples = Samples::default();
        for line in text.lines() {
            if let Some((name, labels, value)) = sample(line) {
                samples.0.entry(name).or_default().push((labels, value));
            }
        }
        samples
    }

    /// The sum of `name`'s samples whose labels include every one of
    /// `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.0.get(name).map_or(0.0, |samples| {
            samples
                .iter()
                .filter(|(labels, _)| has(labels, want))
                .map(|(_, v)| v)
                .sum()
        })
    }

    /// Every value of label `label` in `name`'s samples.
    fn values(&self, name: &str, label: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .0
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|(labels, _)| get(labels, label).map(str::to_string))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A histogram's buckets (upper bound, cumulative count) over the
    /// samples matching `want`, summed across their other labels.
    fn buckets(&self, name: &str, want: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let mut by_bound: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (labels, v) in self.0.get(&format!("{name}_bucket")).into_iter().flatten() {
            if !has(labels, want) {
                continue;
            }
            let Some(le) = get(labels, "le").and_then(|le| le.parse::<f64>().ok()) else {
                continue;
            };
            let entry = by_bound.entry(le.to_bits()).or_insert((le, 0.0));
            entry.1 += v;
        }
        let mut out: Vec<(f64, f64)> = by_bound.into_values().collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

fn has(labels: &[(String, String)], want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| get(labels, k) == Some(*v))
}

fn get<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `name{k="v",…} value` (a timestamp after the value is ignored).
fn sample(line: &str) -> Option<(String, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[inner.len() - chars.as_str().len()..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// The `q` quantile of the observations between two scrapes of a
/// histogram, `None` without any.
fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, n)| *n);
            (le, (n - was).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let share = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// The two tables, from scrapes `window` apart.
fn render(before: &Samples, after: &Samples, window: Duration) -> String {
    let secs = window.as_secs_f64();
    let delta = |name: &str, want: &[(&str, &str)]| {
        (after.sum(name, want) - before.sum(name, want)).max(0.0)
    };
    let latency = |name: &str, want: &[(&str, &str)], q: f64| {
        quantile(q, &before.buckets(name, want), &after.buckets(name, want))
    };
    let mut out = String::new();

    let mut rows = Vec::new();
    for route in after.values("augur_inbound_requests_total", "route") {
        let want = [("route", route.as_str())];
        let n = delta("augur_inbound_requests_total", &want);
        let errors = delta("augur_inbound_errors_total", &want);
        let d = "augur_inbound_request_duration_seconds";
        rows.push((
            n,
            vec![
                route.clone(),
                format!("{:.1}", n / secs),
                percent((n > 0.0).then(|| 1.0 - errors / n)),
                time(latency(d, &want, 0.5)),
                time(latency(d, &want, 0.99)),
            ],
        ));
    }
    table(&mut out, &["ROUTE", "RPS", "SUCCESS", "P50", "P99"], rows);
    out.push('\n');

    let mut rows = Vec::new();
    for dep in after.values("augur_dependency_calls_total", "dependency") {
        let want = [("dependency", dep.as_str())];
        let calls = "augur_dependency_calls_total";
        let n = delta(calls, &want);
        let errors = delta("augur_dependency_call_errors_total", &want);
        let ahead = delta(calls, &[("dependency", &dep), ("outcome", "hit")])
            + delta(calls, &[("dependency", &dep), ("outcome", "coalesced")]);
        let upstream = delta("augur_upstream_requests_total", &want);
        let hidden = delta("augur_speculation_hidden_seconds_total", &want);
        let d = "augur_dependency_call_duration_seconds";
        let containers = after
            .values("augur_containers", "dependency")
            .contains(&dep);
        rows.push((
            n,
            vec![
                dep.clone(),
                format!("{:.1}", n / secs),
                percent((n > 0.0).then(|| 1.0 - errors / n)),
                time(latency(d, &want, 0.5)),
                time(latency(d, &want, 0.99)),
                percent((n > 0.0).then(|| ahead / n)),
                time((n > 0.0).then(|| hidden / n)),
                if n > 0.0 {
                    format!("{:+.1}%", (upstream - n) / n * 100.0)
                } else {
                    "-".into()
                },
                if containers {
                    format!("{}", after.sum("augur_containers", &want))
                } else {
                    "-".into()
                },
            ],
        ));
    }
    table(
        &mut out,
        &[
            "DEPENDENCY",
            "RPS",
            "SUCCESS",
            "P50",
            "P99",
            "AHEAD",
            "HIDDEN",
            "EXTRA",
            "CONTAINERS",
        ],
        rows,
    );
    out
}

/// Rows by traffic, busiest first; the first column left-aligned, the
/// rest right-aligned.
fn table(out: &mut String, header: &[&str], mut rows: Vec<(f64, Vec<String>)>) {
    rows.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1[0].cmp(&b.1[0])));
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows.into_iter().map(|(_, r)| r))
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == 0 {
                let _ = write!(line, "{cell:<w$}", w = widths[i]);
            } else {
                let _ = write!(line, "  {cell:>w$}", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn percent(share: Option<f64>) -> String {
    share.map_or("-".into(), |s| format!("{:.2}%", s * 100.0))
}

/// Seconds as a short duration: `850µs`, `3.1ms`, `1.25s`.
fn time(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 0.001 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(dechunk(b"5\r\nab"), None);
        assert_eq!(dechunk(b"zz\r\n"), None);
    }

    #[test]
    fn samples_parse_with_labels_escapes_and_infinities() {
        let text = "# HELP x y\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"uote\\\\\"} 3\nplain 4.5 1700000000\nh_bucket{le=\"+Inf\"} 7\nbroken{a=\"1 2\n";
        let s = Samples::parse(text);
        assert_eq!(s.sum("x_total", &[("b", "q\"uote\\")]), 3.0);
        assert_eq!(s.sum("plain", &[]), 4.5);
        assert_eq!(s.buckets("h", &[]), vec![(f64::INFINITY, 7.0)]);
        assert!(!s.0.contains_key("broken"));
    }

    #[test]
    fn quantiles_interpolate_within_the_window_only() {
        let before = [
            (0.001, 10.0),
            (0.01, 10.0),
            (0.1, 10.0),
            (f64::INFINITY, 10.0),
        ];
        // 100 new observations: 50 under 1 ms, 40 more under 10 ms, 10
        // more under 100 ms.
        let after = [
            (0.001, 60.0),
            (0.01, 100.0),
            (0.1, 110.0),
            (f64::INFINITY, 110.0),
        ];
        assert_eq!(quantile(0.5, &before, &after), Some(0.001));
        let p99 = quantile(0.99, &before, &after).unwrap();
        assert!((p99 - 0.091).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.5, &after, &after), None);
        // Past the last finite bound: that bound.
        let tail = [(0.001, 0.0), (f64::INFINITY, 5.0)];
        assert_eq!(quantile(0.99, &[], &tail), Some(0.001));
    }

    #[test]
    fn the_tables_show_rates_success_latency_and_speculation() {
        let before = Samples::parse("");
        let after = Samples::parse(
            r#"augur_inbound_requests_total{route="GET /p/{id}"} 20
augur_inbound_errors_total{route="GET /p/{id}"} 1
augur_inbound_request_duration_seconds_bucket{route="GET /p/{id}",le="0.005"} 20
augur_inbound_request_duration_seconds_bucket{route="GET /p/{id}",le="+Inf"} 20
augur_dependency_calls_total{dependency="users",outcome="hit"} 15
augur_dependency_calls_total{dependency="users",outcome="miss"} 5
augur_dependency_call_duration_seconds_bucket{dependency="users",outcome="hit",le="0.001"} 15
augur_dependency_call_duration_seconds_bucket{dependency="users",outcome="hit",le="0.01"} 15
augur_dependency_call_duration_seconds_bucket{dependency="users",outcome="hit",le="+Inf"} 15
augur_dependency_call_duration_seconds_bucket{dependency="users",outcome="miss",le="0.001"} 0
augur_dependency_call_duration_seconds_bucket{dependency="users",outcome="miss",le="0.01"} 5
augur_dependency_call_duration_seconds_bucket{dependency="users",outcome="miss",le="+Inf"} 5
augur_upstream_requests_total{dependency="users",kind="real"} 5
augur_upstream_requests_total{dependency="users",kind="speculative"} 16
augur_speculation_hidden_seconds_total{dependency="users"} 0.06
augur_containers{dependency="users",state="idle"} 2
"#,
        );
        let text = render(&before, &after, Duration::from_secs(2));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ROUTE", "RPS", "SUCCESS", "P50", "P99"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["GET", "/p/{id}", "10.0", "95.00%", "2.5ms", "5.0ms"]
        );
        assert_eq!(
            lines[4].split_whitespace().collect::<Vec<_>>(),
            [
                "users", "10.0", "100.00%", "667µs", "9.6ms", "75.00%", "3.0ms", "+5.0%", "2"
            ]
        );
    }
}
