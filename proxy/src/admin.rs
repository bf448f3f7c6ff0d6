//! The admin listener: `/healthz`, `/readyz`, `/metrics` and `/debug/*`.
//! Bound to loopback by default; it reads shared state and never blocks the
//! proxy listeners.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::state::Shared;

/// Closed contexts returned by `/debug/contexts` when no limit is given.
const DEFAULT_LIMIT: usize = 20;

pub struct Admin {
    pub shared: Arc<Shared>,
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
            "/metrics" => {
                self.shared.metrics.observe_state(&self.shared);
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.shared.metrics.render(),
                )
            }
            "/debug/containers" => {
                let (containers, memory) = self.shared.capacity.used();
                let pools: Vec<_> = self.shared.pools.iter().map(|p| p.snapshot()).collect();
                json(&serde_json::json!({
                    "capacity": {
                        "containers": containers,
                        "max_containers": self.shared.capacity.max_containers(),
                        "memory_bytes": memory,
                        "max_memory_bytes": self.shared.capacity.max_memory(),
                    },
                    "dependencies": pools,
                }))
            }
            "/debug/model" => json(&self.shared.learning.learner.read().describe()),
            "/debug/speculations" => match limit(&query) {
                Ok(n) => {
                    let table = &self.shared.prefetch.table;
                    json(&serde_json::json!({
                        "enabled": self.shared.prefetch.enabled(),
                        "inflight": table.inflight(),
                        "held_bytes": table.held_bytes(),
                        "governor": table.governor.states(),
                        "recent": table.recent(n),
                    }))
                }
                Err(msg) => text(StatusCode::BAD_REQUEST, &msg),
            },
            "/debug/contexts" => match limit(&query) {
                Ok(n) => json(&self.shared.contexts.recent(n)),
                Err(msg) => text(StatusCode::BAD_REQUEST, &msg),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz /readyz /metrics /debug/contexts?limit=N /debug/containers /debug/model /debug/speculations?limit=N\n",
            ),
        }
    }
}

impl Admin {
    /// Ready once every proxy listener accepts connections; not ready again
    /// once shutdown has begun.
    async fn readyz(&self) -> Response<Vec<u8>> {
        if self.shared.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        if !self.shared.is_ready() {
            for addr in &self.shared.listeners {
                let probe = crate::server::connectable(*addr);
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
            self.shared.set_ready();
        }
        text(StatusCode::OK, "ready\n")
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
