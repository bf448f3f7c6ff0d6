//! Property tests for what reads bytes off the network: `traceparent`
//! parsing, the route of a request, and body capture. Case counts come from
//! `PROPTEST_CASES` (a long run:
//! `PROPTEST_CASES=1000000 cargo test --release -p augur-proxy --lib fuzz_tests`);
//! the defaults keep each target to a few seconds in a debug build.

use augur_predictor::shape::{SLOT, path_template};
use http::HeaderMap;
use pingora::http::RequestHeader;
use proptest::prelude::*;

use super::capture::Capture;
use super::request::route;
use super::traceparent::TraceParent;

/// `default` cases, unless `PROPTEST_CASES` says otherwise.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- traceparent ----

/// A valid `traceparent` of any version but `ff`, as its parts and its
/// text.
fn valid_traceparent() -> impl Strategy<Value = (TraceParent, String)> {
    (
        0u8..0xff,
        1..=u128::MAX,
        1..=u64::MAX,
        any::<u8>(),
        "(-[ -~]{0,20})?",
    )
        .prop_map(|(version, trace_id, parent_id, flags, tail)| {
            let tp = TraceParent {
                trace_id,
                parent_id,
                flags,
            };
            // Only later versions may carry more fields.
            let tail = if version == 0 { "" } else { &tail };
            (
                tp,
                format!("{version:02x}-{trace_id:032x}-{parent_id:016x}-{flags:02x}{tail}"),
            )
        })
}

/// A valid `traceparent` with one byte changed, or random bytes that look
/// almost like one.
fn near_traceparent() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_traceparent(),
        any::<prop::sample::Index>(),
        any::<u8>(),
    )
        .prop_map(|((_, text), at, byte)| {
            let mut bytes = text.into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            bytes
        })
}

/// What every parse must satisfy: a parsed value has non-zero ids and
/// formats to a version-00 header that parses back to itself.
fn check_traceparent(bytes: &[u8]) -> Option<TraceParent> {
    let tp = TraceParent::parse(bytes)?;
    assert!(tp.trace_id != 0 && tp.parent_id != 0, "{tp:?}");
    let text = tp.to_string();
    assert_eq!(text.len(), 55, "{text}");
    assert!(text.starts_with("00-"), "{text}");
    assert_eq!(TraceParent::parse(text.as_bytes()), Some(tp), "{text}");
    // A version-00 header is already in the one form it formats to.
    if bytes.starts_with(b"00-") {
        assert_eq!(text.as_bytes(), bytes);
    }
    Some(tp)
}

proptest! {
    #![proptest_config(cases(4096))]

    #[test]
    fn traceparent_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        check_traceparent(&bytes);
    }

    #[test]
    fn traceparent_near_misses_round_trip_when_they_parse(bytes in near_traceparent()) {
        check_traceparent(&bytes);
    }

    #[test]
    fn valid_traceparents_always_parse((tp, text) in valid_traceparent()) {
        prop_assert_eq!(check_traceparent(text.as_bytes()), Some(tp), "{}", text);
    }

    /// Hex must be lowercase: upper-casing any id digit that is a letter
    /// rejects the header.
    #[test]
    fn uppercase_hex_is_rejected((_, text) in valid_traceparent(), pick in any::<prop::sample::Index>()) {
        let mut bytes = text.into_bytes();
        let letters: Vec<usize> = (3..55).filter(|&i| bytes[i].is_ascii_lowercase()).collect();
        if !letters.is_empty() {
            let at = letters[pick.index(letters.len())];
            bytes[at] = bytes[at].to_ascii_uppercase();
            prop_assert_eq!(TraceParent::parse(&bytes), None);
        }
    }
}

// ---- the route of a request ----

/// A method token as RFC 9110 allows it.
fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
            .prop_map(str::to_string),
        1 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}",
    ]
}

/// A path of names and identifiers (numbers, UUIDs, hex, tokens) with
/// what the parser lets through around them.
fn structured_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        "[a-z]{1,10}",
        "[0-9]{1,20}",
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[0-9a-f]{6,40}",
        "[A-Za-z0-9_-]{14,24}",
        "[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,12}",
        Just(String::new()),
    ];
    (
        proptest::collection::vec(segment, 0..12),
        "(\\?[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,20})?",
    )
        .prop_map(|(segments, query)| format!("/{}{query}", segments.join("/")))
}

/// The route's properties: `METHOD template`, the template made segment
/// by segment from the path (each kept or a slot), a fixed point, and
/// never longer than the path by more than a slot per segment.
fn check_route(req: &RequestHeader) -> String {
    let got = route(req);
    let method = req.method.as_str();
    let path = req.uri.path();
    let template = got
        .strip_prefix(method)
        .and_then(|r| r.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{got:?} does not start with {method:?}"));
    let (from, to): (Vec<&str>, Vec<&str>) =
        (path.split('/').collect(), template.split('/').collect());
    assert_eq!(from.len(), to.len(), "{path:?} -> {template:?}");
    for (f, t) in from.iter().zip(&to) {
        assert!(
            f == t || (*t == SLOT && !f.is_empty()),
            "{f:?} -> {t:?} in {path:?}"
        );
    }
    assert!(template.len() <= path.len() + (SLOT.len() - 1) * from.len());
    assert_eq!(path_template(template), template, "not a fixed point");
    got
}

proptest! {
    #![proptest_config(cases(2048))]

    #[test]
    fn route_of_arbitrary_targets_never_panics(
        method in method(),
        target in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Ok(req) = RequestHeader::build(method.as_str(), &target, None) {
            check_route(&req);
        }
    }

    #[test]
    fn route_of_paths_is_a_segment_wise_template(method in method(), path in structured_path()) {
        let req = RequestHeader::build(method.as_str(), path.as_bytes(), None)
            .map_err(|e| TestCaseError::fail(format!("{path:?}: {e}")))?;
        let got = check_route(&req);
        // The query never changes the route.
        let bare = path.split('?').next().unwrap_or_default();
        let without = RequestHeader::build(method.as_str(), bare.as_bytes(), None)
            .map_err(|e| TestCaseError::fail(format!("{bare:?}: {e}")))?;
        prop_assert_eq!(route(&without), got);
    }

    /// The absolute form names the same route as the origin form.
    #[test]
    fn absolute_form_has_the_origin_forms_route(path in structured_path()) {
        let origin = RequestHeader::build("GET", path.as_bytes(), None)
            .map_err(|e| TestCaseError::fail(format!("{path:?}: {e}")))?;
        let absolute = format!("http://example.test:8080{path}");
        let absolute = RequestHeader::build("GET", absolute.as_bytes(), None)
            .map_err(|e| TestCaseError::fail(format!("{absolute:?}: {e}")))?;
        prop_assert_eq!(route(&absolute), route(&origin));
    }
}

// ---- body capture ----

fn json_headers(content_length: Option<usize>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(n) = content_length {
        h.insert(http::header::CONTENT_LENGTH, n.into());
    }
    h
}

fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..16)
}

proptest! {
    #![proptest_config(cases(2048))]

    /// Whatever the chunking, the capture is the whole body when it fits
    /// the limit and nothing when it does not.
    #[test]
    fn capture_is_the_whole_body_within_the_limit_or_nothing(
        limit in 0usize..2048,
        chunks in chunks(),
        announce in any::<bool>(),
    ) {
        let body: Vec<u8> = chunks.concat();
        let mut capture = Capture::start(&json_headers(announce.then_some(body.len())), limit);
        for chunk in &chunks {
            capture.push(chunk);
        }
        let got = capture.finish();
        if limit > 0 && body.len() <= limit {
            prop_assert_eq!(got.as_deref(), Some(&body[..]));
        } else {
            prop_assert_eq!(got, None);
        }
        prop_assert_eq!(capture.finish(), None, "finish hands the body over once");
    }

    /// An announced length is not trusted: a body longer than announced is
    /// still dropped once past the limit, and one announced past the limit
    /// is never started.
    #[test]
    fn capture_ignores_a_lying_content_length(
        limit in 1usize..1024,
        announced in any::<usize>(),
        chunks in chunks(),
    ) {
        let body: Vec<u8> = chunks.concat();
        let mut capture = Capture::start(&json_headers(Some(announced)), limit);
        for chunk in &chunks {
            capture.push(chunk);
        }
        let got = capture.finish();
        if let Some(b) = &got {
            prop_assert!(b.len() <= limit);
            prop_assert_eq!(&b[..], &body[..]);
        }
        prop_assert_eq!(got.is_some(), announced <= limit && body.len() <= limit);
    }

    /// Any content type and length bytes: no panic, and only JSON is kept.
    #[test]
    fn capture_start_takes_any_header_bytes(
        content_type in proptest::collection::vec(any::<u8>(), 0..64),
        length in proptest::collection::vec(any::<u8>(), 0..24),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut h = HeaderMap::new();
        let ct = http::HeaderValue::from_bytes(&content_type);
        let json = ct.as_ref().is_ok_and(|v| {
            v.to_str().is_ok_and(|s| {
                let t = s.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                t == "application/json" || t.ends_with("+json")
            })
        });
        if let Ok(v) = ct {
            h.insert(http::header::CONTENT_TYPE, v);
        }
        if let Ok(v) = http::HeaderValue::from_bytes(&length) {
            h.insert(http::header::CONTENT_LENGTH, v);
        }
        let mut capture = Capture::start(&h, 1024);
        capture.push(&body);
        let got = capture.finish();
        prop_assert!(got.is_none() || json, "captured a non-JSON body");
        if let Some(b) = got {
            prop_assert_eq!(&b[..], &body[..]);
        }
    }
}
