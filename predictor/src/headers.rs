//! Which request headers are part of a call's identity. Every header is,
//! but those on the ignore list: tracing and request ids that change on
//! every call without changing the answer, and the headers each hop sets
//! for itself (hop-by-hop, framing, augur's own `sec-purpose`). A header
//! that is part of the identity is learned and predicted like a path or
//! query slot; a call with one that cannot be predicted is not speculated.

/// Hop-by-hop headers (RFC 9110 §7.6.1, with the legacy `keep-alive` and
/// `proxy-connection`): each hop sets its own, so they are never part of a
/// call's identity, and a proxy never passes them on as they came.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers left out of a call's identity by default, besides
/// [`HOP_BY_HOP`].
pub const IGNORED: [&str; 7] = [
    // Tracing and request ids (W3C, Zipkin single header, common ids).
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-request-id",
    // Framing: the body itself is part of the identity.
    "content-length",
    // augur's mark on a speculative request.
    "sec-purpose",
];

/// Header name prefixes left out by default (Zipkin's multi-header B3).
pub const IGNORED_PREFIXES: [&str; 1] = ["x-b3-"];

/// Headers whose values are credentials: hashed before the predictor sees
/// them, never learned as constants.
pub const CREDENTIALS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// The headers that are part of a call's identity in one deployment:
/// every header but [`IGNORED`], [`HOP_BY_HOP`], [`IGNORED_PREFIXES`] and the
/// deployment's own ignored ones, except those it keeps explicitly.
/// Passed in by whoever builds the learner; nothing is global.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHeaders {
    ignore: Vec<String>,
    keep: Vec<String>,
}

impl KeyHeaders {
    /// The default ignore list, plus `ignore`, less `keep` (any case).
    pub fn new(ignore: &[String], keep: &[String]) -> Self {
        let lower = |list: &[String]| list.iter().map(|n| n.to_ascii_lowercase()).collect();
        Self {
            ignore: lower(ignore),
            keep: lower(keep),
        }
    }

    /// Whether the lowercase header `name` is part of a call's identity.
    pub fn matters(&self, name: &str) -> bool {
        if self.keep.iter().any(|h| h == name) {
            return true;
        }
        !(IGNORED.contains(&name)
            || HOP_BY_HOP.contains(&name)
            || IGNORED_PREFIXES.iter().any(|p| name.starts_with(p))
            || self.ignore.iter().any(|h| h == name))
    }

    /// The headers that matter, sorted by name.
    pub fn select(&self, headers: &[(String, String)]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| self.matters(n))
            .cloned()
            .collect();
        out.sort();
        out
    }
}

pub fn is_credential(name: &str) -> bool {
    CREDENTIALS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_matters_but_the_ignored_ones() {
        let plain = KeyHeaders::default();
        for name in ["x-tenant", "accept", "authorization", "host", "user-agent"] {
            assert!(plain.matters(name), "{name}");
        }
        for name in [
            "traceparent",
            "x-b3-traceid",
            "content-length",
            "sec-purpose",
        ] {
            assert!(!plain.matters(name), "{name}");
        }
        let own = KeyHeaders::new(&["X-Nonce".to_string()], &["x-request-id".to_string()]);
        assert!(!own.matters("x-nonce"), "a deployment ignores its own");
        assert!(own.matters("x-request-id"), "and keeps what it must");
        let pairs = vec![
            ("x-tenant".to_string(), "a".to_string()),
            ("traceparent".to_string(), "00-…".to_string()),
            ("accept".to_string(), "*/*".to_string()),
        ];
        assert_eq!(
            plain.select(&pairs),
            [
                ("accept".to_string(), "*/*".to_string()),
                ("x-tenant".to_string(), "a".to_string())
            ]
        );
    }
}
