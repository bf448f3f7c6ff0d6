//! An egress listener: fronts one dependency. A call that carries the
//! `traceparent` of an open context is recorded in it (`miss`: augur went
//! upstream for it); any other call is proxied the same way and counted as
//! `bypass`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};

use crate::capture::Capture;
use crate::context::{CallRecord, Json, Recorded, TraceKey, micros, parse_json};
use crate::resources::pool::ContainerPool;
use crate::speculation::{Found, Key, Stored};
use crate::state::{Inflight, Shared};
use crate::telemetry::{self, MaybeSpan};
use crate::traceparent::{self, TraceParent};
use crate::upstream::Target;
use crate::{failure, headers, prefetch, request};

/// How a dependency call was answered.
pub mod outcome {
    /// From a completed speculation.
    pub const HIT: &str = "hit";
    /// By joining a speculation still in flight.
    pub const COALESCED: &str = "coalesced";
    /// augur went upstream for it.
    pub const MISS: &str = "miss";
    /// Not part of any context.
    pub const BYPASS: &str = "bypass";
}

pub struct Egress {
    pub shared: Arc<Shared>,
    pub target: Target,
    /// The dependency's containers, when augur runs them.
    pub pool: Option<Arc<ContainerPool>>,
}

pub struct CallCtx {
    started: Instant,
    /// Set once the request header was read and accepted.
    accepted: bool,
    /// The context this call belongs to, with the time it opened.
    context: Option<(TraceKey, Instant)>,
    /// The `traceparent` sent upstream, when the call came with one.
    traceparent: Option<TraceParent>,
    span: MaybeSpan,
    /// The request headers that matter, recorded when the call joins a
    /// context.
    headers: Vec<(String, String)>,
    response_bytes: u64,
    /// When the last byte of the response came from upstream (before it
    /// is written to the service, so the service can never have started
    /// its next call earlier).
    finished: Option<Instant>,
    /// The JSON request body, copied for the learner while it streams.
    request_body: Capture,
    /// The JSON response, copied for the learner while it streams.
    response: Capture,
    /// The container instance the call went to.
    lease: Option<std::net::SocketAddr>,
    /// Why no container could take the call.
    pool_error: Option<String>,
    /// Set when a speculation answered the call: `hit` or `coalesced`.
    served: Option<(&'static str, Option<Json>)>,
    _inflight: Inflight,
}

#[async_trait]
impl ProxyHttp for Egress {
    type CTX = CallCtx;

    fn new_ctx(&self) -> CallCtx {
        CallCtx {
            started: Instant::now(),
            accepted: false,
            context: None,
            traceparent: None,
            span: None,
            headers: Vec::new(),
            response_bytes: 0,
            finished: None,
            request_body: Capture::default(),
            response: Capture::default(),
            served: None,
            lease: None,
            pool_error: None,
            _inflight: self.shared.inflight_guard(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut CallCtx) -> Result<bool> {
        if request::reject_oversized(session, self.shared.max_header_size).await? {
            return Ok(true);
        }
        let req = session.req_header();
        let parent = request::traceparent(req);
        ctx.context = parent.and_then(|p| {
            let started = self.shared.contexts.attach(p.trace_id)?;
            Some((p.trace_id, started))
        });
        let (span, tp) = self.shared.telemetry.start(SpanKind::Client, parent, || {
            let attributes = vec![
                KeyValue::new("augur.dependency", self.target.name.to_string()),
                KeyValue::new("http.request.method", req.method.to_string()),
                KeyValue::new("url.path", req.uri.path().to_string()),
            ];
            (format!("{} {}", req.method, self.target.name), attributes)
        });
        ctx.span = span;
        ctx.traceparent = parent.map(|_| tp);
        if ctx.context.is_some() {
            ctx.request_body = Capture::start(&req.headers, self.shared.body_limit);
            ctx.headers = headers::recorded(
                &req.headers,
                &self.shared.redact,
                &self.shared.hasher,
                augur_predictor::headers::matters,
            );
        }
        ctx.accepted = true;
        if let Some((trace, _)) = ctx.context {
            return self.answer_from_speculation(session, trace, ctx).await;
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _: &mut Session,
        body: &mut Option<Bytes>,
        _: bool,
        ctx: &mut CallCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.request_body.push(chunk);
        }
        Ok(())
    }

    async fn upstream_peer(&self, _: &mut Session, ctx: &mut CallCtx) -> Result<Box<HttpPeer>> {
        let Some(pool) = &self.pool else {
            return Ok(self.target.peer());
        };
        if let Some(previous) = ctx.lease.take() {
            // A retry: the last instance did not take the call.
            pool.release(previous);
            pool.failed(previous).await;
        }
        match pool.acquire().await {
            Ok(lease) => {
                if let Some(waited) = lease.cold_wait {
                    self.shared
                        .metrics
                        .cold_start_wait
                        .observe(waited.as_secs_f64());
                }
                ctx.lease = Some(lease.addr);
                Ok(self.target.peer_at(lease.addr))
            }
            Err(e) => {
                ctx.pool_error = Some(e.to_string());
                Error::e_explain(pingora::ErrorType::HTTPStatus(503), e.to_string())
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut CallCtx,
    ) -> Result<()> {
        headers::strip_request(upstream);
        headers::add_forwarded(upstream, request::client_ip(session));
        if let Some(tp) = ctx.traceparent {
            upstream.insert_header(traceparent::HEADER, tp.to_string())?;
        }
        self.shared
            .metrics
            .upstream_requests
            .with_label_values(&[&*self.target.name, "real"])
            .inc();
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut CallCtx,
    ) -> Result<()> {
        headers::strip_response(response);
        if ctx.context.is_some() {
            ctx.response = Capture::start(&response.headers, self.shared.body_limit);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut CallCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(b) = body {
            ctx.response_bytes += b.len() as u64;
            ctx.response.push(b);
        }
        if end_of_stream {
            ctx.finished = Some(Instant::now());
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut CallCtx,
    ) -> FailToProxy {
        if let (Some(pool), Some(addr)) = (&self.pool, ctx.lease) {
            if matches!(e.esource(), pingora::ErrorSource::Upstream) && failure::status_of(e) == 502
            {
                // The instance did not answer: replace it.
                ctx.lease = None;
                pool.release(addr);
                pool.failed(addr).await;
            }
        }
        match &ctx.pool_error {
            Some(reason) => {
                failure::respond_with(
                    session,
                    503,
                    &format!("augur: {}: {reason}\n", self.target.label),
                )
                .await
            }
            None => failure::respond(session, e, &self.target).await,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut CallCtx) {
        if let (Some(pool), Some(addr)) = (&self.pool, ctx.lease.take()) {
            pool.release(addr);
        }
        if !ctx.accepted {
            return;
        }
        let elapsed = ctx
            .finished
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(ctx.started);
        let status = request::final_status(session, e);
        let mut outcome = outcome::BYPASS;
        let (served_by, served_json) = match ctx.served.take() {
            Some((how, json)) => (Some(how), json),
            None => (None, None),
        };
        if let Some((key, opened)) = ctx.context {
            let req = session.req_header();
            let call = CallRecord {
                dependency: self.target.name.clone(),
                method: req.method.to_string(),
                path: req.uri.path().to_string(),
                query: req.uri.query().map(str::to_string),
                headers: std::mem::take(&mut ctx.headers),
                status,
                outcome: served_by.unwrap_or(outcome::MISS),
                start_offset_us: micros(ctx.started.saturating_duration_since(opened)),
                duration_us: micros(elapsed),
                response_bytes: ctx.response_bytes,
                request_body: parse_json(ctx.request_body.finish()),
                response: served_json.or_else(|| parse_json(ctx.response.finish())),
            };
            // The context stays open for an attached call; it is gone only
            // if it expired meanwhile.
            match self.shared.contexts.record(key, call) {
                Recorded::NoContext => {}
                Recorded::Open => {
                    outcome = served_by.unwrap_or(outcome::MISS);
                    // What this call answered may make the next predictable.
                    let flags = ctx.traceparent.map_or(1, |t| t.flags);
                    prefetch::run(&self.shared, key, flags);
                }
                Recorded::Closed(closed) => {
                    outcome = served_by.unwrap_or(outcome::MISS);
                    self.shared.context_closed(closed);
                }
            }
        }
        self.shared
            .metrics
            .dependency_call(&self.target.name, outcome, elapsed);
        telemetry::finish(&mut ctx.span, status, || {
            vec![KeyValue::new("augur.outcome", outcome)]
        });
    }
}

impl Egress {
    /// Answers a call of an open context from its speculation, when one
    /// was sent for exactly this request: served at once if it completed,
    /// awaited (up to the dependency's timeout) if in flight. Anything else
    /// — no speculation, a failed one, a call with a body — goes upstream.
    async fn answer_from_speculation(
        &self,
        session: &mut Session,
        trace: TraceKey,
        ctx: &mut CallCtx,
    ) -> Result<bool> {
        let prefetch = &self.shared.prefetch;
        let req = session.req_header();
        let has_body = req.headers.contains_key(http::header::CONTENT_LENGTH)
            && req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0")
            || req.headers.contains_key(http::header::TRANSFER_ENCODING);
        if !prefetch.enabled() || has_body {
            return Ok(false);
        }
        let wanted: Vec<(String, String)> = req
            .headers
            .iter()
            .filter(|(n, _)| augur_predictor::headers::matters(n.as_str()))
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let path_and_query = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let key = Key::new(
            &self.shared.hasher,
            trace,
            &self.target.name,
            req.method.as_str(),
            path_and_query,
            &wanted,
            None,
        );
        let (stored, how) = match prefetch.table.claim(&key, &self.target.name) {
            Found::Nothing => return Ok(false),
            Found::Done(stored) => (stored, outcome::HIT),
            Found::InFlight(mut rx, until) => {
                let waited =
                    tokio::time::timeout_at(until.into(), rx.wait_for(Option::is_some)).await;
                let result = match waited {
                    Ok(Ok(value)) => value.clone().flatten(),
                    _ => None,
                };
                match result {
                    Some(stored) => {
                        prefetch.table.used(&key);
                        (stored, outcome::COALESCED)
                    }
                    None => return Ok(false),
                }
            }
        };
        self.shared
            .metrics
            .speculations
            .with_label_values(&[&*self.target.name, "used"])
            .inc();
        // The call ends before the service can see the answer and start
        // its next call, as an upstream answer's does.
        ctx.finished = Some(Instant::now());
        serve(session, &stored).await?;
        ctx.response_bytes = stored.body.len() as u64;
        ctx.served = Some((how, stored.json.clone()));
        Ok(true)
    }
}

/// Writes a speculative response to the service as the dependency sent it.
async fn serve(session: &mut Session, stored: &Stored) -> Result<()> {
    let mut resp = ResponseHeader::build(stored.status, Some(stored.headers.len() + 1))?;
    for (name, value) in &stored.headers {
        if name != http::header::CONTENT_LENGTH {
            resp.append_header(name.clone(), value.clone())?;
        }
    }
    resp.insert_header(http::header::CONTENT_LENGTH, stored.body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(stored.body.clone()), true)
        .await?;
    Ok(())
}
