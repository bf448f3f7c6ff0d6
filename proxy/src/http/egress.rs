//! An egress listener: fronts one dependency. A call that carries the
//! `traceparent` of an open context is recorded in it and may be answered
//! from speculation (`hit`, `coalesced`) or sent upstream (`miss`); any
//! other call is proxied the same way and counted as `bypass`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};

use super::capture::Capture;
use super::traceparent::{self, TraceParent};
use super::{Common, downstream, failure, headers, request};
use crate::clock::micros;
use crate::context::{
    Attached, CallOutcome, CallRecord, Charge, ContextId, Json, Recorded, parse_json,
};
use crate::dependency::{Dependency, Lease, Purpose};
use crate::ops::access::Entry;
use crate::ops::lifecycle::{Inflight, Side};
use crate::ops::telemetry::{self, MaybeSpan};
use crate::speculation::{Key, Stored, is_safe};

#[derive(Clone)]
pub(crate) struct Egress {
    pub(crate) common: Arc<Common>,
    pub(crate) dependency: Arc<Dependency>,
}

pub(crate) struct CallCtx {
    started: Instant,
    /// Set once the request header was read and accepted.
    accepted: bool,
    /// The context this call belongs to, with the time it opened.
    context: Option<(ContextId, Instant)>,
    /// The `traceparent` sent upstream, when the call came with one.
    traceparent: Option<TraceParent>,
    /// The route of the context's inbound request.
    route: Option<Arc<str>>,
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
    /// The instance the call went to, given back when the call ends.
    lease: Option<Lease>,
    /// How long the call waited for a container to start.
    cold_wait: Duration,
    /// Set when a speculation answered the call: `hit` or `coalesced`.
    served: Option<(CallOutcome, Option<Json>)>,
    /// How long before the call the speculation that answered it was
    /// sent.
    lead: Option<Duration>,
    /// The call has side effects and holds speculation back in its context
    /// until it ends.
    write: bool,
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
            route: None,
            span: None,
            headers: Vec::new(),
            response_bytes: 0,
            finished: None,
            request_body: Capture::default(),
            response: Capture::default(),
            served: None,
            lead: None,
            write: false,
            lease: None,
            cold_wait: Duration::ZERO,
            _inflight: self.common.inflight(Side::Call),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut CallCtx) -> Result<bool> {
        let common = &*self.common;
        downstream::header_read(session, &common.clients);
        if request::reject_invalid(session, common.max_header_size).await? {
            return Ok(true);
        }
        let req = session.req_header();
        let parent = request::traceparent(req);
        ctx.context = match parent.map(|p| common.contexts.attach(p.trace_id)) {
            Some(Attached::Context(id, started, route)) => {
                ctx.route = Some(route);
                Some((id, started))
            }
            Some(Attached::Ambiguous) => {
                common.metrics.calls_ambiguous.inc();
                None
            }
            Some(Attached::None) | None => None,
        };
        let name = self.dependency.name();
        let (span, tp) = common.telemetry.start(SpanKind::Client, parent, || {
            let attributes = vec![
                KeyValue::new("augur.dependency", name.to_string()),
                KeyValue::new("http.request.method", req.method.to_string()),
                KeyValue::new("url.path", req.uri.path().to_string()),
            ];
            (format!("{} {name}", req.method), attributes)
        });
        ctx.span = span;
        ctx.traceparent = parent.map(|_| tp);
        ctx.accepted = true;
        let Some((context, _)) = ctx.context else {
            return Ok(false);
        };
        common.speculation.saw_caller(request::client_ip(session));
        let key_headers = common.speculation.key_headers();
        ctx.write = !is_safe(req.method.as_str());
        ctx.request_body = Capture::start(&req.headers, common.body_limit);
        ctx.headers = headers::recorded(&req.headers, &common.redact, &common.hasher, |n| {
            key_headers.matters(n)
        });
        let answered = self.answer_from_speculation(session, context, ctx).await;
        if ctx.write {
            // A write orders the reads after it: nothing speculated before
            // it answers them. (Its own speculation, when it answered it,
            // is spent by now.)
            common
                .speculation
                .write_started(context, self.dependency.name());
        }
        answered
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
        if let Some(previous) = ctx.lease.take() {
            // A retry: the last instance did not take the call.
            previous.failed().await;
        }
        let lease = self
            .dependency
            .lease(Purpose::Call)
            .await
            .map_err(failure::no_instance)?;
        if let Some(waited) = lease.cold_wait() {
            ctx.cold_wait += waited;
            self.common
                .metrics
                .cold_start_wait
                .observe(waited.as_secs_f64());
        }
        let peer = self.dependency.peer(&lease);
        ctx.lease = Some(lease);
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut CallCtx,
    ) -> Result<()> {
        headers::strip_request(upstream);
        headers::add_forwarded(upstream, request::client_ip(session), "http");
        if let Some(tp) = ctx.traceparent {
            upstream.insert_header(traceparent::HEADER, tp.header_value())?;
        }
        self.dependency.series().upstream(false);
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
            ctx.response = Capture::start(&response.headers, self.common.body_limit);
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

    fn fail_to_connect(
        &self,
        _: &mut Session,
        _: &HttpPeer,
        _: &mut CallCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.dependency.target().failed_to_connect(e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut CallCtx,
    ) -> FailToProxy {
        let target = self.dependency.target();
        let addr = ctx.lease.as_ref().map(Lease::addr);
        let unanswered =
            matches!(e.esource(), pingora::ErrorSource::Upstream) && failure::status_of(e) == 502;
        if unanswered {
            // The instance did not answer: replace it (nothing for a
            // static address).
            if let Some(lease) = ctx.lease.take() {
                lease.failed().await;
            }
        }
        failure::respond(session, e, target, addr).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut CallCtx) {
        downstream::answered(session);
        ctx.lease = None;
        if let (true, Some((context, _))) = (ctx.write, ctx.context) {
            self.common
                .speculation
                .write_ended(context, self.dependency.name());
        }
        if !ctx.accepted {
            return;
        }
        let elapsed = ctx
            .finished
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(ctx.started);
        let status = request::final_status(session, e);
        let outcome = self.record(session, ctx, status, elapsed);
        let name = self.dependency.name();
        if self.common.access.enabled() {
            self.common.access.write(&Entry {
                kind: "call",
                trace_id: ctx.traceparent.map(|t| t.trace_id),
                route: ctx.route.as_deref(),
                dependency: Some(name),
                method: session.req_header().method.as_str(),
                status,
                outcome: Some(outcome.as_str()),
                latency: elapsed,
                bytes: ctx.response_bytes,
                lead: ctx.lead,
            });
        }
        self.dependency.series().call(outcome, status, elapsed);
        // Each read and write is bounded by the dependency's timeout, but
        // a call as a whole should not outlast connect + timeout (plus a
        // cold start it waited for): one that does is a stall to find.
        let target = self.dependency.target();
        let bound = target.connect_timeout + target.timeout + ctx.cold_wait;
        if elapsed > bound {
            self.common
                .metrics
                .dependency_overdue(name, outcome.as_str());
            tracing::warn!(
                dependency = %name,
                outcome = outcome.as_str(),
                "a call took {elapsed:?}, past its dependency's connect_timeout + timeout ({bound:?})"
            );
        }
        telemetry::finish(&mut ctx.span, status, || {
            vec![KeyValue::new("augur.outcome", outcome.as_str())]
        });
    }
}

impl Egress {
    /// Answers a call of an open context from its speculation, when one
    /// was sent for exactly this request. A write's body is read first
    /// (whole, when it is announced and small; pingora keeps it for
    /// upstream) so that an opted-in write is answered by its speculation
    /// and runs once. Anything else — no speculation, a failed one, a body
    /// that cannot be read so — goes upstream.
    async fn answer_from_speculation(
        &self,
        session: &mut Session,
        context: ContextId,
        ctx: &mut CallCtx,
    ) -> Result<bool> {
        let speculation = &self.common.speculation;
        if !speculation.enabled() {
            return Ok(false);
        }
        let req = session.req_header();
        let matchable =
            ctx.write && speculation.sent(context, self.dependency.name(), req.method.as_str());
        let body = match (request::has_body(req), matchable) {
            (false, _) => None,
            (true, false) => return Ok(false),
            (true, true) => match request::read_small_body(session).await? {
                Some(body) => Some(body),
                None => return Ok(false),
            },
        };
        // The key holds the body as text; one that is not UTF-8 is not
        // matched.
        let text = match body.as_deref().map(std::str::from_utf8) {
            Some(Ok(text)) => Some(text),
            Some(Err(_)) => return Ok(false),
            None => None,
        };
        let req = session.req_header();
        let wanted = headers::pairs(&req.headers, |n| speculation.key_headers().matters(n));
        let path_and_query = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let name = self.dependency.name();
        let key = Key::new(
            speculation.hasher(),
            context,
            name,
            req.method.as_str(),
            path_and_query,
            &wanted,
            text,
        );
        let answer = match speculation.answer(&key, name).await {
            Ok(Some(answer)) => answer,
            Ok(None) => return Ok(false),
            Err(sent) => return Err(failure::sent_write(sent)),
        };
        if let Some(body) = &body {
            // It never reaches upstream, so the learner gets it here.
            ctx.request_body.push(body);
        }
        // The call ends before the service can see the answer and start
        // its next call, as an upstream answer's does.
        ctx.finished = Some(Instant::now());
        serve(session, &answer.stored).await?;
        ctx.response_bytes = answer.stored.body.len() as u64;
        ctx.served = Some((answer.outcome, answer.stored.json.clone()));
        ctx.lead = answer
            .sent
            .map(|sent| ctx.started.saturating_duration_since(sent));
        if let Some(lead) = ctx.lead {
            self.dependency
                .series()
                .hidden(lead.min(answer.stored.took));
        }
        Ok(true)
    }

    /// Records the call in its context, if it has one that is still open,
    /// and speculates on what it made predictable. Returns how the call
    /// was answered.
    fn record(
        &self,
        session: &Session,
        ctx: &mut CallCtx,
        status: u16,
        elapsed: std::time::Duration,
    ) -> CallOutcome {
        let Some((key, opened)) = ctx.context else {
            return CallOutcome::Bypass;
        };
        let (served_by, served_json) = match ctx.served.take() {
            Some((how, json)) => (how, json),
            None => (CallOutcome::Miss, None),
        };
        // The bodies are kept for the learner only within the budget; a
        // served answer's was parsed already (and is shared).
        let request_body = ctx.request_body.finish();
        let response = served_json
            .is_none()
            .then(|| ctx.response.finish())
            .flatten();
        let bytes = request_body.as_ref().map_or(0, Bytes::len)
            + response.as_ref().map_or(0, Bytes::len)
            + served_json
                .as_ref()
                .map_or(0, |_| ctx.response_bytes as usize);
        let (held, request_body, response) = match self.common.contexts.charge_bodies(bytes) {
            Some(held) => (
                held,
                parse_json(request_body),
                served_json.or_else(|| parse_json(response)),
            ),
            None => (Charge::default(), None, None),
        };
        let req = session.req_header();
        let call = CallRecord {
            dependency: self.dependency.name().clone(),
            method: req.method.to_string(),
            path: req.uri.path().to_string(),
            query: req.uri.query().map(str::to_string),
            headers: std::mem::take(&mut ctx.headers),
            status,
            outcome: served_by,
            start_offset_us: micros(ctx.started.saturating_duration_since(opened)),
            duration_us: micros(elapsed),
            response_bytes: ctx.response_bytes,
            request_body,
            response,
        };
        // The context stays open for an attached call; it is gone only if
        // it expired meanwhile.
        match self.common.contexts.record(key, call, held) {
            Recorded::NoContext => CallOutcome::Bypass,
            Recorded::Open => {
                // What this call answered may make the next predictable.
                let flags = ctx.traceparent.map_or(1, |t| t.flags);
                self.common.speculation.run(key, flags);
                served_by
            }
            Recorded::Closed(closed) => {
                self.common.context_closed(closed);
                served_by
            }
        }
    }
}

/// Writes a speculative response to the service as the dependency sent it:
/// its status, every end-to-end header (`content-length` too), and its
/// framing — chunked if it was, no body for HEAD, 204 and 304 (pingora
/// writes none for them) — and its trailers.
async fn serve(session: &mut Session, stored: &Stored) -> Result<()> {
    let mut resp = ResponseHeader::build(stored.status, Some(stored.headers.len() + 1))?;
    for (name, value) in &stored.headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    if stored.chunked {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    // HTTP/1 carries none here, as pingora drops them from real calls.
    let trailers = !stored.trailers.is_empty() && session.is_http2();
    let bodiless = stored.body.is_empty() && !trailers;
    session
        .write_response_header(Box::new(resp), bodiless)
        .await?;
    if !bodiless {
        session
            .write_response_body(Some(stored.body.clone()), !trailers)
            .await?;
    }
    if trailers {
        let mut map = http::HeaderMap::with_capacity(stored.trailers.len());
        for (name, value) in &stored.trailers {
            map.append(name.clone(), value.clone());
        }
        session.write_response_trailers(map).await?;
    }
    Ok(())
}
