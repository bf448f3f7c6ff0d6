//! Sending one speculative request: the HTTP client, the request written
//! out from its prediction (with `sec-purpose: prefetch`), and what of the
//! response may be kept for the real call.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use augur_predictor::Prediction;
use augur_predictor::headers::KeyHeaders;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;

use super::plan::is_safe;
use super::table::Stored;
use crate::context::Json;
use crate::http::client::{H2c, H2cError, Pooled, pooled};
use crate::http::tls::UpstreamTls;
use crate::http::traceparent::{self, TraceParent};
use crate::http::{capture, headers};
use augur_config::Protocol;

/// The largest speculative response kept; larger ones are not served.
const MAX_RESPONSE: usize = 1 << 20;

/// The client every speculative request goes through: pooled, keep-alive,
/// no Nagle; HTTP/2 with prior knowledge to a dependency whose real calls
/// go so (`protocol = "h2c"`); a dependency that speaks TLS has its own
/// pool ([`UpstreamTls`]), with its real calls' settings.
pub(super) struct Client {
    http: Pooled<HttpConnector>,
    h2c: H2c,
    /// Answers are parsed for the learner only when JSON and at most this
    /// long, as a real call's are captured.
    json_limit: usize,
}

impl Client {
    pub(super) fn new(json_limit: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            http: pooled(connector),
            h2c: H2c::default(),
            json_limit,
        }
    }

    /// Sends `p` to `addr`; `Ok(None)` when its answer must not be served
    /// (not 2xx, `no-store`, a `vary` on a header the key does not hold,
    /// too large, or framed by closing the connection, which cannot be
    /// replayed exactly).
    ///
    /// A write (a method that is not safe) is different: once sent it has
    /// run, so whatever came back is its real call's answer — any status,
    /// whatever caching headers say, a close-framed body given a length —
    /// and an error says whether the request may have reached the
    /// dependency ([`Failed::sent`]).
    ///
    /// The request goes out as the real call would from `caller` (the
    /// service's address as the egress sees it): the predicted headers,
    /// the forwarding headers augur adds to a real call, and augur's own
    /// `sec-purpose: prefetch` and `traceparent`.
    pub(super) async fn fetch(
        &self,
        p: &Prediction,
        (addr, tls, protocol): (SocketAddr, Option<&UpstreamTls>, Protocol),
        caller: Option<IpAddr>,
        tp: TraceParent,
        key_headers: &KeyHeaders,
    ) -> Result<Option<Stored>, Failed> {
        let started = std::time::Instant::now();
        let h2 = protocol == Protocol::H2c;
        let mut req = request(p, addr, caller, tp).map_err(Failed::unsent)?;
        // A connection that could not be made carried nothing; the client
        // resends by itself only what it never wrote.
        let pooled = |e: hyper_util::client::legacy::Error| Failed {
            sent: !e.is_connect(),
            why: e.into(),
        };
        let resp = match tls {
            Some(tls) => tls
                .speculation_client()
                .request(req)
                .await
                .map_err(pooled)?,
            None if h2 => {
                as_h2(&mut req, addr).map_err(Failed::unsent)?;
                self.h2c.send(addr, req).await.map_err(|e| Failed {
                    sent: matches!(e, H2cError::Send(_)),
                    why: e.into(),
                })?
            }
            None => self.http.request(req).await.map_err(pooled)?,
        };
        let status = resp.status();
        let mut headers = resp.headers().clone();
        let collected = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| Failed::sent(anyhow::anyhow!("reading the response: {e}")))?;
        let trailers = collected
            .trailers()
            .map(headers::end_to_end)
            .unwrap_or_default();
        let body = collected.to_bytes();
        // HTTP/2 frames every body; without a length, the real call reaches
        // an HTTP/1 service chunked (pingora), and so does this answer.
        let chunked = if h2 {
            !headers.contains_key(http::header::CONTENT_LENGTH)
        } else {
            headers::is_chunked(&headers)
        };
        let framed = chunked
            || headers.contains_key(http::header::CONTENT_LENGTH)
            || p.method == "HEAD"
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED;
        let write = !is_safe(&p.method);
        if !write
            && (!status.is_success()
                || !framed
                || no_store(&headers)
                || varies_beyond(&headers, key_headers))
        {
            return Ok(None);
        }
        if !framed {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let json: Option<Json> = (capture::is_json(&headers) && body.len() <= self.json_limit)
            .then(|| serde_json::from_slice(&body).ok().map(Arc::new))
            .flatten();
        Ok(Some(Stored {
            status: status.as_u16(),
            headers: headers::end_to_end(&headers),
            chunked,
            body,
            trailers,
            prediction: p.clone(),
            json,
            took: started.elapsed(),
        }))
    }
}

/// A speculative request that got no answer.
#[derive(Debug)]
pub(super) struct Failed {
    /// It may have reached the dependency (and, for a write, run).
    pub(super) sent: bool,
    pub(super) why: anyhow::Error,
}

impl Failed {
    fn unsent(why: anyhow::Error) -> Self {
        Self { sent: false, why }
    }

    fn sent(why: anyhow::Error) -> Self {
        Self { sent: true, why }
    }
}

/// The request `p` as the real call would send it from `caller`.
fn request(
    p: &Prediction,
    addr: SocketAddr,
    caller: Option<IpAddr>,
    tp: TraceParent,
) -> anyhow::Result<http::Request<Full<Bytes>>> {
    let uri = format!("http://{addr}{}", path_and_query(p));
    let mut sent = HeaderMap::new();
    for (name, value) in &p.headers {
        sent.append(HeaderName::from_bytes(name.as_bytes())?, value.parse()?);
    }
    if let Some(ip) = caller {
        // The egress listener is plain HTTP, as the real call came.
        for (name, value) in headers::forwarded(&sent, ip, "http").pairs() {
            sent.insert(name, value.parse()?);
        }
    }
    sent.insert("sec-purpose", HeaderValue::from_static("prefetch"));
    sent.insert(traceparent::HEADER, tp.header_value());
    let body = match &p.body {
        Some(b) => {
            if !sent.contains_key(http::header::CONTENT_TYPE) {
                sent.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let mut req = http::Request::builder()
        .method(p.method.as_str())
        .uri(uri)
        .body(Full::new(body))?;
    *req.headers_mut() = sent;
    Ok(req)
}

/// `req` as pingora sends its real call to an h2c upstream: HTTP/2, its
/// `:authority` the `Host` the service sent (the address without one), and
/// no `host` header.
fn as_h2(req: &mut http::Request<Full<Bytes>>, addr: SocketAddr) -> anyhow::Result<()> {
    let host = req.headers_mut().remove(http::header::HOST);
    let authority = match host.as_ref().and_then(|h| h.to_str().ok()) {
        Some(host) => host.to_string(),
        None => addr.to_string(),
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_string();
    *req.uri_mut() = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()?;
    *req.version_mut() = http::Version::HTTP_2;
    Ok(())
}

/// The request target of a prediction: path, and query when it has one.
pub(super) fn path_and_query(p: &Prediction) -> String {
    match &p.query {
        Some(q) => format!("{}?{q}", p.path),
        None => p.path.clone(),
    }
}

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

/// A `vary` on a header that is not part of the key (an ignored one) means
/// the real request might get another answer.
fn varies_beyond(headers: &http::HeaderMap, key_headers: &KeyHeaders) -> bool {
    headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .any(|h| h == "*" || !key_headers.matters(&h))
}
