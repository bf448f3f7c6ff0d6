//! What a proxy must do to headers on the way through: drop hop-by-hop
//! headers (RFC 9110 §7.6.1), add `x-forwarded-for` and `forwarded`, keep
//! credentials out of anything augur shows, and measure a header block.

use std::net::IpAddr;

use augur_predictor::headers::HOP_BY_HOP;
use augur_predictor::secret::SecretHasher;
use http::header::{CONNECTION, HeaderName, UPGRADE};
use http::{HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Hop-by-hop headers the proxy listeners leave to the framing layer:
/// pingora re-frames bodies itself (`transfer-encoding`), and an upgrade
/// keeps `connection` and `upgrade`.
const FRAMING: [&str; 3] = ["connection", "transfer-encoding", "upgrade"];

/// The end-to-end headers of a message, as a proxy passes them on: every
/// header but the hop-by-hop ones and those its `connection` names.
pub(crate) fn end_to_end(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let named = connection_tokens(headers);
    headers
        .iter()
        .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()) && !named.contains(n))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// Whether the body is sent chunked (`transfer-encoding` ending in
/// `chunked`).
pub(crate) fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
}

/// The hop-by-hop headers the listeners remove themselves.
fn stripped() -> impl Iterator<Item = &'static str> {
    HOP_BY_HOP.into_iter().filter(|n| !FRAMING.contains(n))
}

/// Names listed in `Connection` (except `upgrade`/`close`/`keep-alive`, which are
/// handled by the framing layer), lowercased.
fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "upgrade" && t != "close" && t != "keep-alive")
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers from a request going upstream. A WebSocket
/// style upgrade keeps `connection: upgrade` and `upgrade`; `te: trailers`
/// is kept since it is the one value every hop must honour.
pub(crate) fn strip_request(req: &mut RequestHeader) {
    for name in connection_tokens(&req.headers) {
        req.remove_header(&name);
    }
    let te_trailers = req
        .headers
        .get(http::header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in stripped() {
        req.remove_header(name);
    }
    if te_trailers {
        let _ = req.insert_header(http::header::TE, "trailers");
    }
    if !req.headers.contains_key(UPGRADE) {
        req.remove_header(&CONNECTION);
    }
}

/// Removes hop-by-hop headers from a response coming back.
pub(crate) fn strip_response(resp: &mut ResponseHeader) {
    for name in connection_tokens(&resp.headers) {
        resp.remove_header(&name);
    }
    for name in stripped() {
        resp.remove_header(name);
    }
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        resp.remove_header(&CONNECTION);
    }
}

/// Appends the client to `x-forwarded-for` and `forwarded` (RFC 7239);
/// `proto` is what the client spoke to augur (`http` or `https`).
pub(crate) fn add_forwarded(req: &mut RequestHeader, client: Option<IpAddr>, proto: &str) {
    let Some(ip) = client else { return };
    for (name, value) in forwarded(&req.headers, ip, proto) {
        let _ = req.insert_header(name, value);
    }
}

/// The forwarding headers a request from `client` goes upstream with:
/// `x-forwarded-for` and `forwarded` with the client appended to what the
/// request had, and `x-forwarded-proto` unless it had one. One rule for a
/// real call and for the speculative request that stands for it.
pub(crate) fn forwarded(
    headers: &HeaderMap,
    client: IpAddr,
    proto: &str,
) -> Vec<(&'static str, String)> {
    let prior = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let xff = match prior("x-forwarded-for") {
        Some(prev) => format!("{prev}, {client}"),
        None => client.to_string(),
    };
    let node = match client {
        IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
    };
    let fwd = match prior("forwarded") {
        Some(prev) => format!("{prev}, {node}"),
        None => node,
    };
    let mut out = vec![("x-forwarded-for", xff), ("forwarded", fwd)];
    if !headers.contains_key("x-forwarded-proto") {
        out.push(("x-forwarded-proto", proto.to_string()));
    }
    out
}

/// How long `value` is written out, without writing it anywhere.
fn displayed_len(value: &impl std::fmt::Display) -> usize {
    struct Count(usize);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = std::fmt::write(&mut count, format_args!("{value}"));
    count.0
}

/// Size of a request header block as it came on the wire (request line,
/// each `name: value\r\n`, the blank line), close enough for a limit.
pub(crate) fn request_header_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + displayed_len(&req.uri) + 12;
    req.headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
        + 2
}

/// Header names and values as text, in arrival order; `keep` chooses
/// them by name.
pub(crate) fn pairs(headers: &HeaderMap, keep: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| keep(name.as_str()))
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), text)
        })
        .collect()
}

/// Header names and values as augur records them: the values of `redact`
/// (credentials) replaced by a keyed hash, so equal credentials can be told
/// apart from different ones but never read; `keep` chooses the headers.
pub(crate) fn recorded(
    headers: &HeaderMap,
    redact: &[String],
    hasher: &SecretHasher,
    keep: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    let mut out = pairs(headers, keep);
    for (name, value) in &mut out {
        if redact.iter().any(|r| r == name) {
            *value = hasher.hash(value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn a_header_block_is_measured_as_written() {
        for uri in ["/", "/a/b?c=d&e", "http://example.com:8080/x?y"] {
            let r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
            assert_eq!(displayed_len(&r.uri), r.uri.to_string().len(), "{uri}");
        }
        let r = req(&[("host", "a"), ("x-long", "0123456789")]);
        // The request line (method, target, 12 for the rest), each
        // `name: value\r\n`, the blank line.
        assert_eq!(
            request_header_size(&r),
            (3 + 1 + 12) + (4 + 1 + 4) + (6 + 10 + 4) + 2
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut r = req(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("x-kept", "yes"),
        ]);
        strip_request(&mut r);
        let mut names: Vec<_> = r.headers.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-kept"]);
        assert_eq!(r.headers["te"], "trailers");
    }

    #[test]
    fn upgrades_keep_connection_upgrade() {
        let mut r = req(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_request(&mut r);
        assert!(r.headers.contains_key("connection"));
        assert!(r.headers.contains_key("upgrade"));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut r = req(&[("x-forwarded-for", "10.0.0.1")]);
        add_forwarded(&mut r, Some("127.0.0.1".parse().unwrap()), "http");
        assert_eq!(r.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(r.headers["forwarded"], "for=127.0.0.1;proto=http");
        let mut r = req(&[]);
        add_forwarded(&mut r, Some("::1".parse().unwrap()), "http");
        assert_eq!(r.headers["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn credentials_are_recorded_as_keyed_hashes() {
        let hasher = SecretHasher::new();
        let r = req(&[
            ("authorization", "Bearer s3cret"),
            ("accept", "*/*"),
            ("x-other", "1"),
        ]);
        let shown = recorded(&r.headers, &["authorization".to_string()], &hasher, |n| {
            n != "x-other"
        });
        assert_eq!(shown.len(), 2);
        let auth = &shown.iter().find(|(n, _)| n == "authorization").unwrap().1;
        assert!(auth.starts_with("keyed:") && !auth.contains("s3cret"));
        assert_eq!(*auth, hasher.hash("Bearer s3cret"));
        assert!(shown.contains(&("accept".into(), "*/*".into())));
    }
}
