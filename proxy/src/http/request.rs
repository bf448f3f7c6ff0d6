//! Reading what a request says, for both listeners: its route, its trace
//! context, its client, and how it ended.

use std::net::IpAddr;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, Result};

use super::traceparent::{self, TraceParent};

/// `METHOD /path/{id}/template`: the route an inbound request belongs to.
pub(crate) fn route(req: &RequestHeader) -> String {
    let template = augur_predictor::shape::path_template(req.uri.path());
    format!("{} {}", req.method, template)
}

/// The request's `traceparent`, when it has a valid one.
pub(crate) fn traceparent(req: &RequestHeader) -> Option<TraceParent> {
    req.headers
        .get(traceparent::HEADER)
        .and_then(|v| TraceParent::parse(v.as_bytes()))
}

/// Whether the request announces a body: a non-zero `content-length`, or
/// any `transfer-encoding`.
pub(crate) fn has_body(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers.contains_key(http::header::TRANSFER_ENCODING)
}

/// The largest request body read whole to match a write to its
/// speculation: pingora's retry buffer, which keeps it for upstream.
const SMALL_BODY: usize = 64 * 1024;

/// Reads a request body whole, keeping it for upstream, when its length is
/// announced and at most [`SMALL_BODY`]; `None` (nothing read) otherwise.
pub(crate) async fn read_small_body(session: &mut Session) -> Result<Option<Bytes>> {
    let req = session.req_header();
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let small = length.is_some_and(|n| n <= SMALL_BODY)
        && !req.headers.contains_key(http::header::TRANSFER_ENCODING);
    if !small {
        return Ok(None);
    }
    session.enable_retry_buffering();
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

pub(crate) fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The status the client got: the written response's, else the one the
/// error maps to, else 0 (the client went away first).
pub(crate) fn final_status(session: &Session, e: Option<&Error>) -> u16 {
    session
        .response_written()
        .map(|r| r.status.as_u16())
        .or_else(|| e.map(super::failure::status_of))
        .unwrap_or(0)
}

/// Answers and closes the connection when the request is one no server
/// may act on: 431 when its header block is larger than `limit`, 400 when
/// an HTTP/1.1 request has no `Host` or more than one (RFC 9112 §3.2).
/// Returns whether it did.
pub(crate) async fn reject_invalid(session: &mut Session, limit: usize) -> Result<bool> {
    let req = session.req_header();
    let size = super::headers::request_header_size(req);
    let hosts = req.headers.get_all(http::header::HOST).iter().count();
    let (status, why) = if size > limit {
        (
            431,
            format!("request header block of {size} bytes is over the limit of {limit}"),
        )
    } else if req.version == http::Version::HTTP_11 && hosts != 1 {
        (
            400,
            format!("an HTTP/1.1 request needs one Host header, not {hosts}"),
        )
    } else {
        return Ok(false);
    };
    session.set_keepalive(None);
    session
        .respond_error_with_body(status, Bytes::from(format!("augur: {why}\n")))
        .await?;
    Ok(true)
}
