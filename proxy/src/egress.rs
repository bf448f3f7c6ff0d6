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
use crate::context::{CallRecord, Recorded, TraceKey, micros};
use crate::state::{Inflight, Shared};
use crate::telemetry::{self, MaybeSpan};
use crate::traceparent::{self, TraceParent};
use crate::upstream::Target;
use crate::{failure, headers, request};

/// How a dependency call was answered.
pub mod outcome {
    pub const MISS: &str = "miss";
    pub const BYPASS: &str = "bypass";
}

pub struct Egress {
    pub shared: Arc<Shared>,
    pub target: Target,
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

    async fn upstream_peer(&self, _: &mut Session, _: &mut CallCtx) -> Result<Box<HttpPeer>> {
        Ok(self.target.peer())
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
        _: &mut CallCtx,
    ) -> FailToProxy {
        failure::respond(session, e, &self.target).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut CallCtx) {
        if !ctx.accepted {
            return;
        }
        let elapsed = ctx
            .finished
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(ctx.started);
        let status = request::final_status(session, e);
        let mut outcome = outcome::BYPASS;
        if let Some((key, opened)) = ctx.context {
            let req = session.req_header();
            let call = CallRecord {
                dependency: self.target.name.clone(),
                method: req.method.to_string(),
                path: req.uri.path().to_string(),
                query: req.uri.query().map(str::to_string),
                headers: std::mem::take(&mut ctx.headers),
                status,
                outcome: outcome::MISS,
                start_offset_us: micros(ctx.started.saturating_duration_since(opened)),
                duration_us: micros(elapsed),
                response_bytes: ctx.response_bytes,
                request_body: ctx.request_body.finish(),
                response: ctx.response.finish(),
            };
            // The context stays open for an attached call; it is gone only
            // if it expired meanwhile.
            match self.shared.contexts.record(key, call) {
                Recorded::NoContext => {}
                Recorded::Open => outcome = outcome::MISS,
                Recorded::Closed(closed) => {
                    outcome = outcome::MISS;
                    self.shared.learning.submit(closed);
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
