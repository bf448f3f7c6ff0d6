//! The admin listener: `/healthz`, `/readyz`, `/metrics` and `/debug/*`.
//! Bound to loopback by default; it reads shared state and never blocks the
//! proxy listeners.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::lifecycle::Lifecycle;
use super::metrics::Metrics;
use crate::containers::capacity::Capacity;
use crate::containers::pool::ContainerPool;
use crate::context::ContextTable;
use crate::learning::Learning;
use crate::speculation::Speculation;

/// Closed contexts returned by `/debug/contexts` when no limit is given.
const DEFAULT_LIMIT: usize = 20;

/// What the admin API reads.
pub(crate) struct Admin {
    pub(crate) contexts: Arc<ContextTable>,
    pub(crate) speculation: Arc<Speculation>,
    pub(crate) learning: Arc<Learning>,
    pub(crate) pools: Vec<Arc<ContainerPool>>,
    pub(crate) capacity: Arc<Capacity>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// Every proxy listener, for readiness.
    pub(crate) listeners: Vec<SocketAddr>,
    /// The effective configuration (the file with the environment's
    /// overrides applied, defaults filled in, secrets redacted).
    pub(crate) config: serde_json::Value,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        let query = req.uri.query().unwrap_or("").to_string();
        match req.uri.path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz().await,
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics(),
            ),
            "/debug/config" => json(&self.config),
            "/debug/containers" => json(&self.containers()),
            "/debug/model" => json(&self.learning.describe()),
            "/debug/speculations" => match limit(&query) {
                Ok(n) => json(&self.speculation.report(n)),
                Err(msg) => text(StatusCode::BAD_REQUEST, &msg),
            },
            "/debug/contexts" => match limit(&query) {
                Ok(n) => json(&self.contexts.recent(n)),
                Err(msg) => text(StatusCode::BAD_REQUEST, &msg),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz /readyz /metrics /debug/config /debug/contexts?limit=N /debug/containers /debug/model /debug/speculations?limit=N\n",
            ),
        }
    }
}

impl Admin {
    /// The metrics, with the gauges that mirror other state set first.
    fn metrics(&self) -> Vec<u8> {
        let m = &self.metrics;
        m.observe_tables(
            self.contexts.open_count(),
            self.contexts.bodies(),
            self.speculation.gauges(),
        );
        for pool in &self.pools {
            m.observe_pool(pool.dependency(), &pool.gauges());
        }
        m.render()
    }

    fn containers(&self) -> serde_json::Value {
        let (containers, held) = self.capacity.used();
        let pools: Vec<_> = self.pools.iter().map(|p| p.snapshot()).collect();
        serde_json::json!({
            "capacity": {
                "containers": containers,
                "max_containers": self.capacity.max_containers(),
                "memory_bytes": held.memory,
                "max_memory_bytes": self.capacity.max_memory(),
                "cpus": held.cpus,
                "max_cpus": self.capacity.max_cpus(),
            },
            "dependencies": pools,
        })
    }

    /// Ready once every proxy listener accepts connections; not ready again
    /// once shutdown has begun.
    async fn readyz(&self) -> Response<Vec<u8>> {
        if self.lifecycle.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        if !self.lifecycle.is_ready() {
            for addr in &self.listeners {
                let probe = connectable(*addr);
                let ok = tokio::time::timeout(
                    Duration::from_millis(250),
                    tokio::net::TcpStream::connect(probe),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                if !ok {
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("listener {addr} is not accepting yet\n"),
                    );
                }
            }
            self.lifecycle.set_ready();
        }
        text(StatusCode::OK, "ready\n")
    }
}

/// An address to connect to for reaching a listener bound to `addr`.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

fn limit(query: &str) -> Result<usize, String> {
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("limit=") {
            return v
                .parse::<usize>()
                .map_err(|_| format!("invalid limit {v:?}: expected a whole number\n"));
        }
    }
    Ok(DEFAULT_LIMIT)
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    reply(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn json<T: serde::Serialize>(value: &T) -> Response<Vec<u8>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode: {e}\n"),
        ),
    }
}
