//! What a demo application is to the demo driver (`app_demo.rs`): its
//! dependencies, its frontend, its workload with the exact answer each
//! request must get, and the fastest each endpoint could be. The hotel
//! application (`hotel.rs`) and the shop (`shop.rs`) are the two.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::load::Planned;
use crate::procs::local;
use crate::server::{self, Body, respond};

/// How augur reaches a dependency besides plain HTTP/1
/// ([`crate::transport::reach`] sets it up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `protocol = "h2c"`.
    H2c,
    /// TLS to a terminator in front of the dependency.
    Tls,
}

/// A demo application.
pub trait App {
    /// Its name in the demo's output.
    const NAME: &'static str;
    /// Its dependencies, by name, in the order the frontend takes them.
    const DEPENDENCIES: &'static [&'static str];
    /// How augur reaches each dependency listed here (plain HTTP/1 for
    /// the others); the frontend calls augur, or them directly, in HTTP/1.
    const TRANSPORTS: &'static [(&'static str, Transport)] = &[];

    /// Starts the dependencies, each answering after `latency`; returns
    /// their addresses in [`Self::DEPENDENCIES`] order.
    fn start_dependencies(
        latency: Duration,
        counts: Arc<Counts>,
    ) -> impl Future<Output = anyhow::Result<Vec<SocketAddr>>> + Send;

    /// Starts the frontend, calling its dependencies at `deps` (direct, or
    /// augur's egress listeners).
    fn start_frontend(
        deps: Vec<SocketAddr>,
    ) -> impl Future<Output = anyhow::Result<SocketAddr>> + Send;

    /// The `n`-th request of the workload (a request and its exact answer).
    fn planned(n: u64) -> Planned;

    /// For an endpoint: its dependency time on the critical path if every
    /// call ran as soon as its inputs existed, and in all.
    fn oracle(label: &str, latency: Duration) -> (Duration, Duration);
}

/// Requests each dependency received: real ones and `sec-purpose:
/// prefetch` ones, by dependency and by kind of call (dependency, method
/// and first path segment), and prefetches with side effects (which must
/// never happen).
#[derive(Debug)]
pub struct Counts {
    real: Vec<AtomicU64>,
    prefetch: Vec<AtomicU64>,
    prefetched_writes: AtomicU64,
    /// (dependency, `GET /promos`) → (real, prefetch).
    kinds: Mutex<BTreeMap<(usize, String), (u64, u64)>>,
}

impl Counts {
    pub fn new(dependencies: usize) -> Self {
        let zeros = || (0..dependencies).map(|_| AtomicU64::new(0)).collect();
        Self {
            real: zeros(),
            prefetch: zeros(),
            prefetched_writes: AtomicU64::new(0),
            kinds: Mutex::default(),
        }
    }

    fn count(&self, dep: usize, req: &Request<Incoming>) {
        let prefetch = req
            .headers()
            .get("sec-purpose")
            .is_some_and(|v| v == "prefetch");
        let slot = if prefetch {
            &self.prefetch[dep]
        } else {
            &self.real[dep]
        };
        slot.fetch_add(1, Ordering::Relaxed);
        let first = req.uri().path().split('/').nth(1).unwrap_or("");
        let kind = format!("{} /{first}", req.method());
        if let Ok(mut kinds) = self.kinds.lock() {
            let entry = kinds.entry((dep, kind)).or_default();
            if prefetch {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
        let safe = matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE");
        if prefetch && !safe {
            self.prefetched_writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn real_total(&self) -> u64 {
        self.real.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn prefetch_total(&self) -> u64 {
        self.prefetch
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Speculative requests with side effects (POST, PUT, …) received.
    pub fn prefetched_writes(&self) -> u64 {
        self.prefetched_writes.load(Ordering::Relaxed)
    }

    /// (dependency, kind) → (real, prefetch) requests so far.
    pub fn kinds(&self) -> BTreeMap<(usize, String), (u64, u64)> {
        self.kinds.lock().map(|k| k.clone()).unwrap_or_default()
    }

    pub fn reset(&self) {
        for c in self.real.iter().chain(&self.prefetch) {
            c.store(0, Ordering::Relaxed);
        }
        self.prefetched_writes.store(0, Ordering::Relaxed);
        if let Ok(mut kinds) = self.kinds.lock() {
            kinds.clear();
        }
    }
}

/// Starts dependency number `index`: it counts each request, waits
/// `latency`, then answers with `answer`.
pub async fn dependency<F, Fut>(
    index: usize,
    latency: Duration,
    counts: &Arc<Counts>,
    answer: F,
) -> anyhow::Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let counts = counts.clone();
    let addr = server::serve(local(0), move |req: Request<Incoming>| {
        counts.count(index, &req);
        let answer = answer.clone();
        async move {
            tokio::time::sleep(latency).await;
            answer(req).await
        }
    })
    .await?;
    Ok(addr)
}

/// A JSON answer.
pub fn json(body: String) -> Response<Body> {
    respond(200, "application/json", body)
}

/// A deterministic mix of two numbers (splitmix64's finaliser).
pub fn mix(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9E3779B97F4A7C15) ^ b.wrapping_add(0x632BE59BD9B4E019);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58476D1CE4E5B9);
    x ^ (x >> 29)
}

/// A query parameter's raw value.
pub fn query<'a>(q: Option<&'a str>, key: &str) -> Option<&'a str> {
    q?.split('&')
        .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
}

/// A frontend's client to its dependencies.
pub type Outbound = Client<HttpConnector, Full<Bytes>>;

pub fn outbound() -> Outbound {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One call of a frontend: passes on the inbound request's headers named in
/// `passed` (as a service passes on `traceparent` and its caller's
/// credential), sends `body` as JSON when there is one; a non-2xx answer is
/// an error. Returns the status, headers and body.
pub async fn call(
    client: &Outbound,
    inbound: &Request<Incoming>,
    passed: &[&str],
    method: &str,
    url: String,
    body: Option<String>,
) -> anyhow::Result<(u16, http::HeaderMap, Bytes)> {
    let mut out = Request::builder().method(method).uri(&url);
    for name in passed {
        if let Some(v) = inbound.headers().get(*name) {
            out = out.header(*name, v);
        }
    }
    if body.is_some() {
        out = out.header("content-type", "application/json");
    }
    let resp = client
        .request(out.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
        .await?;
    let status = resp.status();
    if !status.is_success() {
        anyhow::bail!("{method} {url}: {status}");
    }
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status.as_u16(), headers, body))
}

/// A body as text.
pub fn text(b: &Bytes) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}
