//! The ingress listener: fronts the service. Every inbound request is
//! classified into a route, opens an execution context under its trace id,
//! and reaches the service with a `traceparent` naming augur's span.

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

use super::capture::Capture;
use super::traceparent::{self, TraceParent};
use super::upstream::Target;
use super::{Common, downstream, failure, headers, request};
use crate::context::{ContextId, InboundRecord};
use crate::ops::access::Entry;
use crate::ops::lifecycle::{Inflight, Side};
use crate::ops::telemetry::{self, MaybeSpan};

#[derive(Clone)]
pub(crate) struct Ingress {
    pub(crate) common: Arc<Common>,
    pub(crate) target: Target,
    /// What clients speak to the listener: `http`, or `https` with
    /// `service.listen_tls` (for `x-forwarded-proto`).
    pub(crate) scheme: &'static str,
}

pub(crate) struct InboundCtx {
    started: Instant,
    route: Option<Arc<str>>,
    /// The request's context, when it has one.
    context: Option<ContextId>,
    /// The `traceparent` the service receives.
    traceparent: Option<TraceParent>,
    span: MaybeSpan,
    /// The JSON request body, copied for the learner while it streams.
    body: Capture,
    /// Where the request was sent, once it was.
    upstream: Option<std::net::SocketAddr>,
    _inflight: Inflight,
}

#[async_trait]
impl ProxyHttp for Ingress {
    type CTX = InboundCtx;

    fn new_ctx(&self) -> InboundCtx {
        InboundCtx {
            started: Instant::now(),
            route: None,
            context: None,
            traceparent: None,
            span: None,
            body: Capture::default(),
            upstream: None,
            _inflight: self.common.inflight(Side::Inbound),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut InboundCtx) -> Result<bool> {
        let common = &*self.common;
        downstream::header_read(session, &common.clients);
        if request::reject_invalid(session, common.max_header_size).await? {
            return Ok(true);
        }
        let req = session.req_header();
        let route: Arc<str> = request::route(req).into();
        let parent = request::traceparent(req);
        let (span, tp) = common.telemetry.start(SpanKind::Server, parent, || {
            let attributes = vec![
                KeyValue::new("http.request.method", req.method.to_string()),
                KeyValue::new("url.path", req.uri.path().to_string()),
                KeyValue::new("http.route", route.to_string()),
            ];
            (route.to_string(), attributes)
        });
        // The headers as they came are kept only for speculation to fill
        // parameters from, so only when the route can be speculated for.
        let speculates = common.speculation.speculates(&route);
        let inbound = InboundRecord {
            method: req.method.to_string(),
            path: req.uri.path().to_string(),
            query: req.uri.query().map(str::to_string),
            route: route.clone(),
            headers: headers::recorded(&req.headers, &common.redact, &common.hasher, |n| {
                n != traceparent::HEADER
            }),
            body: None,
            raw_headers: if speculates {
                headers::pairs(&req.headers, |_| true)
            } else {
                Vec::new()
            },
        };
        match common.contexts.open(tp.trace_id, inbound) {
            Ok(opened) => {
                ctx.context = Some(opened.id);
                ctx.body = Capture::start(&req.headers, common.body_limit);
                if opened.ambiguous {
                    // Its calls cannot be told from another's: nothing is
                    // speculated for it, and what the other speculated is
                    // abandoned (not a misprediction: the governor does
                    // not count it).
                    common
                        .metrics
                        .contexts_ambiguous
                        .inc_by(opened.made_ambiguous());
                    for other in &opened.also {
                        common.speculation.abandon(*other);
                    }
                } else if speculates {
                    common.speculation.open(opened.id, tp);
                }
            }
            Err(why) => common
                .metrics
                .contexts_untracked
                .with_label_values(&[why.as_str()])
                .inc(),
        }
        ctx.route = Some(route);
        ctx.traceparent = Some(tp);
        ctx.span = span;
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut InboundCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body.push(chunk);
        }
        if end_of_stream {
            if let (Some(key), Some(captured)) = (ctx.context, ctx.body.finish()) {
                self.common.contexts.set_inbound_body(key, captured);
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _: &mut Session, ctx: &mut InboundCtx) -> Result<Box<HttpPeer>> {
        let (peer, addr) = self.target.next_peer().map_err(failure::unresolved)?;
        ctx.upstream = Some(addr);
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut InboundCtx,
    ) -> Result<()> {
        headers::strip_request(upstream);
        headers::add_forwarded(upstream, request::client_ip(session), self.scheme);
        if let Some(tp) = ctx.traceparent {
            upstream.insert_header(traceparent::HEADER, tp.header_value())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _: &mut Session,
        response: &mut ResponseHeader,
        _: &mut InboundCtx,
    ) -> Result<()> {
        headers::strip_response(response);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _: &mut Session,
        _: &HttpPeer,
        _: &mut InboundCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.target.failed_to_connect(e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut InboundCtx,
    ) -> FailToProxy {
        failure::respond(session, e, &self.target, ctx.upstream).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut InboundCtx) {
        downstream::answered(session);
        let Some(route) = ctx.route.take() else {
            return;
        };
        let status = request::final_status(session, e);
        if let Some(key) = ctx.context.take() {
            if let Some(closed) = self.common.contexts.close(key, status) {
                self.common.context_closed(closed);
            }
        }
        let elapsed = ctx.started.elapsed();
        self.common.metrics.inbound(&route, status, elapsed);
        if self.common.access.enabled() {
            self.common.access.write(&Entry {
                kind: "inbound",
                trace_id: ctx.traceparent.map(|t| t.trace_id),
                route: Some(&route),
                dependency: None,
                method: session.req_header().method.as_str(),
                status,
                outcome: None,
                latency: elapsed,
                bytes: session.body_bytes_sent() as u64,
                lead: None,
            });
        }
        telemetry::finish(&mut ctx.span, status, Vec::new);
    }
}
