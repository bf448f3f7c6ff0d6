//! Bounded capture of JSON bodies for the learner: a copy of the chunks as
//! they stream through, abandoned as soon as it would pass the limit, so
//! the proxy never buffers a body to forward it and never holds more than
//! the limit per body.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;

#[derive(Debug, Default)]
pub(crate) struct Capture {
    buf: Option<BytesMut>,
    limit: usize,
}

/// Whether a content type is JSON (`application/json`, `…+json`).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| t == "application/json" || t.ends_with("+json"))
}

impl Capture {
    /// Starts capturing a body with these headers, if it is JSON and not
    /// announced as larger than `limit`.
    pub(crate) fn start(headers: &HeaderMap, limit: usize) -> Self {
        let length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let wanted = limit > 0 && is_json(headers) && length.is_none_or(|n| n <= limit);
        Self {
            buf: wanted.then(|| BytesMut::with_capacity(length.unwrap_or(1024).min(limit))),
            limit,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        if let Some(buf) = &mut self.buf {
            if buf.len() + chunk.len() > self.limit {
                self.buf = None;
            } else {
                buf.extend_from_slice(chunk);
            }
        }
    }

    /// The whole body, if it was captured in full.
    pub(crate) fn finish(&mut self) -> Option<Bytes> {
        self.buf.take().map(BytesMut::freeze)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str, len: Option<usize>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
        if let Some(n) = len {
            h.insert(http::header::CONTENT_LENGTH, n.into());
        }
        h
    }

    #[test]
    fn json_is_captured_within_the_limit_only() {
        let mut c = Capture::start(&headers("application/json; charset=utf-8", None), 8);
        c.push(b"{\"a\":");
        c.push(b"1}");
        assert_eq!(c.finish().as_deref(), Some(&b"{\"a\":1}"[..]));

        let mut c = Capture::start(&headers("application/problem+json", None), 8);
        c.push(b"{\"a\":\"long\"}");
        assert_eq!(c.finish(), None, "over the limit mid-stream");

        assert_eq!(
            Capture::start(&headers("application/json", Some(9)), 8).finish(),
            None
        );
        assert_eq!(
            Capture::start(&headers("text/html", None), 8).finish(),
            None
        );
    }
}
