//! A small load generator: one HTTP/1.1 keep-alive connection per worker,
//! latencies in an HDR histogram (microseconds).
//!
//! At a fixed rate it is open-loop and free of coordinated omission: each
//! request has an intended start time on a fixed schedule, and when the
//! server is still busy with the previous request at that time, latency
//! counts from the intended time, so a stall shows up in every request it
//! delayed.
//! Every run is bounded by a request count and a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub ok: u64,
    pub errors: u64,
    /// Responses whose body did not match what was expected.
    pub wrong: u64,
    /// The first of them: what was asked, what was expected, what came.
    pub first_wrong: Option<(String, Bytes, Bytes)>,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    /// Latencies per [`Planned::label`].
    pub by_label: std::collections::BTreeMap<&'static str, Histogram<u64>>,
}

impl Report {
    pub(crate) fn new() -> Self {
        Self {
            ok: 0,
            errors: 0,
            wrong: 0,
            first_wrong: None,
            elapsed: Duration::ZERO,
            latency_us: histogram(),
            by_label: std::collections::BTreeMap::new(),
        }
    }

    pub(crate) fn merge(&mut self, other: &Report) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.wrong += other.wrong;
        if self.first_wrong.is_none() {
            self.first_wrong.clone_from(&other.first_wrong);
        }
        let _ = self.latency_us.add(&other.latency_us);
        for (label, h) in &other.by_label {
            let _ = self.by_label.entry(label).or_insert_with(histogram).add(h);
        }
    }

    /// Completed requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// 1 µs to 60 s at 3 significant digits.
#[allow(clippy::expect_used)] // constant, valid bounds
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One request to send and, optionally, the body it must come back with.
#[derive(Debug, Clone)]
pub struct Planned {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub expect: Option<Bytes>,
    /// `GET` unless given.
    pub method: Option<&'static str>,
    /// Which endpoint it is, for per-endpoint latencies.
    pub label: &'static str,
}

impl Planned {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            headers: Vec::new(),
            expect: None,
            method: None,
            label: "",
        }
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one request on `conn` (reconnecting if it broke) and returns the
/// body, or `None` on any failure.
async fn exchange(
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    addr: SocketAddr,
    planned: &Planned,
) -> Option<Bytes> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        *conn = connect(addr).await.ok();
    }
    let sender = conn.as_mut()?;
    sender.ready().await.ok()?;
    let mut req = Request::builder()
        .method(planned.method.unwrap_or("GET"))
        .uri(planned.path.as_str())
        .header("host", addr.to_string());
    for (name, value) in &planned.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let resp = match sender.send_request(req.body(Empty::new()).ok()?).await {
        Ok(r) => r,
        Err(_) => {
            *conn = None;
            return None;
        }
    };
    let ok = resp.status().is_success();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    ok.then_some(body)
}

fn record(report: &mut Report, planned: &Planned, got: Option<Bytes>, latency: Duration) {
    match got {
        Some(body) => {
            report.ok += 1;
            if let Some(expected) = planned.expect.as_ref().filter(|e| **e != body) {
                report.wrong += 1;
                if report.first_wrong.is_none() {
                    let asked = format!("{} {}", planned.method.unwrap_or("GET"), planned.path);
                    report.first_wrong = Some((asked, expected.clone(), body.clone()));
                }
            }
            let us = (latency.as_micros() as u64).max(1);
            let _ = report.latency_us.record(us);
            let _ = report
                .by_label
                .entry(planned.label)
                .or_insert_with(histogram)
                .record(us);
        }
        None => report.errors += 1,
    }
}

/// Sends `plan` in order-ish with `concurrency` connections, each sending
/// its next request when the last one finished.
pub async fn closed_loop(addr: SocketAddr, plan: Vec<Planned>, concurrency: usize) -> Report {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (plan, next) = (plan.clone(), next.clone());
            tokio::spawn(async move {
                let mut report = Report::new();
                let mut conn = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(planned) = plan.get(i) else { break };
                    let t = Instant::now();
                    let got = exchange(&mut conn, addr, planned).await;
                    record(&mut report, planned, got, t.elapsed());
                }
                report
            })
        })
        .collect();
    collect(workers, started).await
}

/// Sends `planned` at `rate` requests per second for `duration`, spread
/// over `connections` connections.
pub async fn fixed_rate(
    addr: SocketAddr,
    planned: Planned,
    rate: u32,
    duration: Duration,
    connections: usize,
) -> Report {
    let count = (f64::from(rate) * duration.as_secs_f64()).ceil() as usize;
    fixed_rate_plan(addr, vec![planned; count.max(1)], rate, connections).await
}

/// Sends every request of `plan`, in order, at `rate` requests per second,
/// spread over `connections` connections (open loop).
pub async fn fixed_rate_plan(
    addr: SocketAddr,
    plan: Vec<Planned>,
    rate: u32,
    connections: usize,
) -> Report {
    let connections = connections.max(1);
    // Request i is due at i / rate; worker w sends requests w, w + n, ….
    let step = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let plan = Arc::new(plan);
    let started = Instant::now();
    let deadline = started + step.mul_f64(plan.len() as f64) + Duration::from_secs(5);
    let workers: Vec<_> = (0..connections)
        .map(|w| {
            let plan = plan.clone();
            tokio::spawn(async move {
                let mut report = Report::new();
                let mut conn = connect(addr).await.ok();
                let mut idle_since = Instant::now();
                for i in (w..plan.len()).step_by(connections) {
                    let intended = started + step.mul_f64(i as f64);
                    if intended > deadline {
                        break;
                    }
                    tokio::time::sleep_until(intended.into()).await;
                    // If the previous response came after this request's
                    // intended start, the wait is the server's doing and
                    // counts (no coordinated omission). If the connection
                    // was idle, lateness is the generator's timer (1 ms
                    // granularity) and does not.
                    let start = if idle_since > intended {
                        intended
                    } else {
                        Instant::now()
                    };
                    let got = exchange(&mut conn, addr, &plan[i]).await;
                    idle_since = Instant::now();
                    record(&mut report, &plan[i], got, idle_since - start);
                }
                report
            })
        })
        .collect();
    collect(workers, started).await
}

async fn collect(workers: Vec<tokio::task::JoinHandle<Report>>, started: Instant) -> Report {
    let mut total = Report::new();
    for w in workers {
        match w.await {
            Ok(r) => total.merge(&r),
            Err(_) => total.errors += 1,
        }
    }
    total.elapsed = started.elapsed();
    total
}

impl Report {
    /// The first wrong response, to say what went wrong.
    pub fn describe_first_wrong(&self) -> String {
        match &self.first_wrong {
            Some((asked, expected, got)) => format!(
                "first wrong: {asked}: expected {} got {}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(got)
            ),
            None => String::new(),
        }
    }
}
