//! The prefetch manager: when a context opens and whenever it learns
//! something new (a call's response, real or speculative), ask the learner
//! what comes next and send what passes the gates — probability at or above
//! `speculation.confidence`, a method in `speculation.methods`, a dependency
//! that allows it, room in `max_inflight` — with `sec-purpose: prefetch`.
//! Responses land in the speculation table for the real call to find.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use augur_predictor::{Call, Prediction, Request};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::context::{Json, TraceKey};
use crate::resources::pool::ContainerPool;
use crate::speculation::{Info, Key, Speculations, Stored};
use crate::state::Shared;
use crate::traceparent::{TraceParent, fresh_id64};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// How far ahead a predicted call to a container dependency starts its
/// container.
const PRESTART_HORIZON_US: u64 = 30_000_000;

/// The largest speculative response kept; larger ones are not served.
const MAX_RESPONSE: usize = 1 << 20;

/// Where and how a dependency may be speculated on.
#[derive(Clone)]
pub struct Dependency {
    pub at: Upstream,
    pub timeout: Duration,
    pub speculate: bool,
}

/// Where a speculative request goes.
#[derive(Clone)]
pub enum Upstream {
    Static(SocketAddr),
    /// A ready instance of the pool, if there is one: a speculation never
    /// waits for a cold start (the prestart covers that).
    Containers(Arc<ContainerPool>),
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub enabled: bool,
    pub confidence: f64,
    pub horizon_us: u64,
    pub methods: Vec<String>,
    /// Per-route overrides (`[[route]]`), by route name.
    pub routes: HashMap<String, RouteRule>,
}

/// A route's own speculation settings.
#[derive(Debug, Clone)]
pub struct RouteRule {
    pub speculate: bool,
    /// Replaces `methods` for this route.
    pub methods: Option<Vec<String>>,
}

pub struct Prefetcher {
    pub settings: Settings,
    pub table: Speculations,
    dependencies: HashMap<String, Dependency>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Prefetcher {
    pub fn new(
        settings: Settings,
        table: Speculations,
        dependencies: HashMap<String, Dependency>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            settings,
            table,
            dependencies,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }
}

/// Predicts for the open context of `trace` and sends what passes the
/// gates. Cheap when nothing is predicted; never blocks.
pub fn run(shared: &Arc<Shared>, trace: TraceKey, flags: u8) {
    let prefetch = &shared.prefetch;
    if !prefetch.settings.enabled {
        return;
    }
    let Some((mut live, elapsed)) = shared.contexts.live(trace) else {
        return;
    };
    let rule = prefetch.settings.routes.get(&live.route);
    if rule.is_some_and(|r| !r.speculate) {
        return;
    }
    let methods = rule
        .and_then(|r| r.methods.as_ref())
        .unwrap_or(&prefetch.settings.methods);
    // Speculative responses that no real call has taken yet count as calls
    // already made, so chains go on without waiting for the service.
    let mut done = prefetch.table.done_for(trace);
    done.sort_by_key(|(_, s)| s.prediction.expected_start_us);
    for (_, stored) in &done {
        live.calls.push(virtual_call(stored));
    }
    // Containers take a while to start: look further ahead for them.
    let horizon = prefetch.settings.horizon_us;
    let ahead = if shared.pools.is_empty() {
        horizon
    } else {
        horizon.max(PRESTART_HORIZON_US)
    };
    let predictions = shared
        .learning
        .learner
        .read()
        .predict(&live, elapsed, ahead);
    for p in predictions {
        if p.probability < prefetch.settings.confidence {
            continue;
        }
        let Some(dep) = prefetch.dependencies.get(&p.dependency) else {
            continue;
        };
        // A container dependency with nothing running gets one started in
        // time for the call, whatever the method: starting it sends the
        // call nothing.
        if let Upstream::Containers(pool) = &dep.at {
            let due = p.expected_start_us.saturating_sub(elapsed);
            pool.prestart_for(p.probability, Duration::from_micros(due));
        }
        if !methods.contains(&p.method) || p.expected_start_us > elapsed.saturating_add(horizon) {
            continue;
        }
        if !dep.speculate || !prefetch.table.governor.allows(&live.route, &p.dependency) {
            continue;
        }
        // A speculation never waits for a container: none ready, none sent.
        if let Upstream::Containers(pool) = &dep.at {
            if !pool.has_ready() {
                continue;
            }
        }
        let key = Key::new(
            &shared.hasher,
            trace,
            &p.dependency,
            &p.method,
            &path_and_query(&p),
            &p.headers,
            p.body.as_ref(),
        );
        // A real call waits for this speculation about as long as the call
        // itself is expected to take, then goes upstream.
        let patience = Duration::from_micros(p.expected_latency_us.saturating_mul(2))
            + Duration::from_millis(5);
        let info = Arc::new(Info {
            route: live.route.as_str().into(),
            dependency: p.dependency.as_str().into(),
            method: p.method.clone(),
            path: p.path.clone(),
            probability: p.probability,
            sent_unix_ms: unix_ms(),
            sent: std::time::Instant::now(),
        });
        if !prefetch
            .table
            .begin(&key, info.clone(), patience.min(dep.timeout))
        {
            continue;
        }
        // Only a speculation that is really sent takes an instance.
        let addr = match &dep.at {
            Upstream::Static(addr) => *addr,
            Upstream::Containers(pool) => match pool.try_acquire() {
                Some(addr) => addr,
                None => {
                    // The instance went between the check and now.
                    prefetch.table.complete(&key, None, None);
                    continue;
                }
            },
        };
        shared
            .metrics
            .upstream_requests
            .with_label_values(&[p.dependency.as_str(), "speculative"])
            .inc();
        // A span of its own, in the inbound request's trace and linked to
        // its span; its traceparent goes with the request.
        let inbound = prefetch.table.inbound_span(trace).map(|span| TraceParent {
            trace_id: trace,
            parent_id: span,
            flags,
        });
        let (span, tp) = shared
            .telemetry
            .start_linked(SpanKind::Client, inbound, inbound, || {
                let attributes = vec![
                    KeyValue::new("augur.dependency", p.dependency.clone()),
                    KeyValue::new("augur.speculative", true),
                    KeyValue::new("augur.probability", p.probability),
                    KeyValue::new("http.request.method", p.method.clone()),
                    KeyValue::new("url.path", p.path.clone()),
                ];
                (
                    format!("prefetch {} {}", p.method, p.dependency),
                    attributes,
                )
            });
        let tp = if inbound.is_some() {
            tp
        } else {
            TraceParent {
                trace_id: trace,
                parent_id: fresh_id64(),
                flags,
            }
        };
        let to = Destination {
            addr,
            timeout: dep.timeout,
            pool: match &dep.at {
                Upstream::Containers(pool) => Some(pool.clone()),
                Upstream::Static(_) => None,
            },
        };
        tokio::spawn(send(shared.clone(), key, p, to, tp, info, span));
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn path_and_query(p: &Prediction) -> String {
    match &p.query {
        Some(q) => format!("{}?{q}", p.path),
        None => p.path.clone(),
    }
}

/// A completed speculation as a call of the live context.
fn virtual_call(stored: &Stored) -> Call {
    let p = &stored.prediction;
    Call {
        dependency: p.dependency.clone(),
        request: Request {
            method: p.method.clone(),
            path: p.path.clone(),
            query: p.query.clone(),
            headers: Vec::new(),
            body: None,
        },
        status: stored.status,
        start_us: p.expected_start_us,
        duration_us: p.expected_latency_us,
        response: stored.json.as_deref().cloned(),
    }
}

/// Where one speculative request goes.
struct Destination {
    addr: SocketAddr,
    timeout: Duration,
    /// The pool that lent `addr`, to give it back.
    pool: Option<Arc<ContainerPool>>,
}

async fn send(
    shared: Arc<Shared>,
    key: Key,
    p: Prediction,
    to: Destination,
    tp: TraceParent,
    info: Arc<Info>,
    mut span: crate::telemetry::MaybeSpan,
) {
    let dependency = p.dependency.clone();
    let result =
        tokio::time::timeout(to.timeout, fetch(&shared.prefetch.client, &p, to.addr, tp)).await;
    if let Some(pool) = &to.pool {
        pool.release(to.addr);
    }
    let stored = match result {
        Ok(Ok(Some(stored))) => Some(stored),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::debug!("speculative {} {} {}: {e}", p.method, dependency, p.path);
            None
        }
        Err(_) => None,
    };
    let servable = stored.is_some();
    let status = stored.as_ref().map_or(0, |s| s.status);
    crate::telemetry::finish(&mut span, status, || {
        vec![KeyValue::new("augur.servable", servable)]
    });
    if let Some(outcome) = shared.prefetch.table.complete(&key, stored, Some(info)) {
        shared
            .metrics
            .speculations
            .with_label_values(&[dependency.as_str(), outcome.as_str()])
            .inc();
    }
    if servable {
        run(&shared, key.trace, tp.flags);
    }
}

/// Sends one speculative request; `Ok(None)` when its answer must not be
/// served (not 2xx, `no-store`, a `vary` on a header the key does not
/// hold, too large).
async fn fetch(
    client: &Client<HttpConnector, Full<Bytes>>,
    p: &Prediction,
    addr: SocketAddr,
    tp: TraceParent,
) -> anyhow::Result<Option<Stored>> {
    let uri = format!("http://{addr}{}", path_and_query(p));
    let mut req = http::Request::builder().method(p.method.as_str()).uri(uri);
    for (name, value) in &p.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    req = req
        .header("sec-purpose", "prefetch")
        .header(crate::traceparent::HEADER, tp.to_string());
    let body = match &p.body {
        Some(b) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let resp = client.request(req.body(Full::new(body))?).await?;
    let status = resp.status();
    let servable_status = status.is_success();
    let headers = resp.headers().clone();
    let body = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the response: {e}"))?
        .to_bytes();
    if !servable_status || no_store(&headers) || varies_beyond_key(&headers) {
        return Ok(None);
    }
    let json: Option<Json> = serde_json::from_slice(&body).ok().map(Arc::new);
    let kept = headers
        .iter()
        .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    Ok(Some(Stored {
        status: status.as_u16(),
        headers: kept,
        body,
        prediction: p.clone(),
        json,
    }))
}

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn no_store(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
        })
}

/// A `vary` on anything but the headers that are part of the key means the
/// real request might get another answer.
fn varies_beyond_key(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .any(|h| h == "*" || !augur_predictor::headers::matters(&h))
}
