//! What a proxy must do to headers on the way through: drop hop-by-hop
//! headers (RFC 9110 §7.6.1), add `x-forwarded-for` and `forwarded`, keep
//! credentials out of anything augur shows, and measure a header block.

use std::net::IpAddr;

use augur_predictor::headers::HOP_BY_HOP;
use augur_predictor::secret::SecretHasher;
use http::header::{CONNECTION, FORWARDED, HeaderName, UPGRADE};
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

/// Whether the listeners remove `name` themselves: a hop-by-hop header
/// other than the framing ones.
fn is_stripped(name: &HeaderName) -> bool {
    let name = name.as_str();
    HOP_BY_HOP.contains(&name) && !FRAMING.contains(&name)
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

/// The headers of `headers` a listener removes: the hop-by-hop ones and
/// those `connection` names, and `connection` itself unless `keep_connection`.
/// One pass over the headers (most messages have none of them), instead
/// of a lookup per name.
fn hop_headers(headers: &HeaderMap, keep_connection: bool) -> Vec<HeaderName> {
    let named = if headers.contains_key(CONNECTION) {
        connection_tokens(headers)
    } else {
        Vec::new()
    };
    let mut out: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let drop =
            is_stripped(name) || named.contains(name) || (*name == CONNECTION && !keep_connection);
        if drop && !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

/// Removes hop-by-hop headers from a request going upstream. A WebSocket
/// style upgrade keeps `connection: upgrade` and `upgrade`; `te: trailers`
/// is kept since it is the one value every hop must honour.
pub(crate) fn strip_request(req: &mut RequestHeader) {
    let gone = hop_headers(&req.headers, req.headers.contains_key(UPGRADE));
    if gone.is_empty() {
        return;
    }
    let te_trailers = req
        .headers
        .get(http::header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in &gone {
        req.remove_header(name);
    }
    if te_trailers {
        let _ = req.insert_header(http::header::TE, "trailers");
    }
}

/// Removes hop-by-hop headers from a response coming back.
pub(crate) fn strip_response(resp: &mut ResponseHeader) {
    let upgraded = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    for name in hop_headers(&resp.headers, upgraded) {
        resp.remove_header(&name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Appends the client to `x-forwarded-for` and `forwarded` (RFC 7239);
/// `proto` is what the client spoke to augur (`http` or `https`).
pub(crate) fn add_forwarded(req: &mut RequestHeader, client: Option<IpAddr>, proto: &'static str) {
    let Some(ip) = client else { return };
    let Forwarded {
        for_,
        forwarded,
        proto,
    } = forwarded(&req.headers, ip, proto);
    let _ = req.insert_header(X_FORWARDED_FOR, for_);
    let _ = req.insert_header(FORWARDED, forwarded);
    if let Some(proto) = proto {
        let _ = req.insert_header(X_FORWARDED_PROTO, proto);
    }
}

/// The forwarding headers a request goes upstream with.
pub(crate) struct Forwarded {
    /// `x-forwarded-for`.
    pub(crate) for_: String,
    /// `forwarded`.
    pub(crate) forwarded: String,
    /// `x-forwarded-proto`, unless the request had one.
    pub(crate) proto: Option<&'static str>,
}

impl Forwarded {
    /// Each header with its value.
    pub(crate) fn pairs(self) -> impl Iterator<Item = (HeaderName, String)> {
        [
            Some((X_FORWARDED_FOR, self.for_)),
            Some((FORWARDED, self.forwarded)),
            self.proto.map(|p| (X_FORWARDED_PROTO, p.to_string())),
        ]
        .into_iter()
        .flatten()
    }
}

/// The forwarding headers a request from `client` goes upstream with:
/// `x-forwarded-for` and `forwarded` with the client appended to what the
/// request had, and `x-forwarded-proto` unless it had one. One rule for a
/// real call and for the speculative request that stands for it.
pub(crate) fn forwarded(headers: &HeaderMap, client: IpAddr, proto: &'static str) -> Forwarded {
    let prior = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let mut for_ = String::with_capacity(48);
    if let Some(prev) = prior(&X_FORWARDED_FOR) {
        for_.push_str(prev);
        for_.push_str(", ");
    }
    push_ip(&mut for_, client);
    let mut forwarded = String::with_capacity(64);
    if let Some(prev) = prior(&FORWARDED) {
        forwarded.push_str(prev);
        forwarded.push_str(", ");
    }
    forwarded.push_str("for=");
    if client.is_ipv6() {
        forwarded.push_str("\"[");
        push_ip(&mut forwarded, client);
        forwarded.push_str("]\"");
    } else {
        push_ip(&mut forwarded, client);
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    Forwarded {
        for_,
        forwarded,
        proto: (!headers.contains_key(&X_FORWARDED_PROTO)).then_some(proto),
    }
}

/// Appends `ip` as text: an IPv4 address digit by digit (every request
/// writes one, and `fmt` costs more than the rest of the header), IPv6
/// through `Display`.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
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
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
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
