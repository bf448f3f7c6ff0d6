//! What the fuzzer sends: a fixed catalogue of hostile requests, each with
//! what RFC 9112 asks of the server, and seeded random mutations of valid
//! ones.
//!
//! Every case's requests go to `/fuzz/{id}…`; a request that must never
//! reach the upstream goes to `/smuggled-{id}` (the runner fails the run
//! when the upstream sees one).

use std::fmt;

/// Families of cases, as the summary counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    RequestLine,
    ObsFold,
    ContentLength,
    Smuggling,
    TransferEncoding,
    ChunkSize,
    OversizedHeader,
    BadBytes,
    Pipelining,
    EarlyClose,
    LongUri,
    Upgrade,
    ConnectionOption,
    Mutation,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Class::RequestLine => "request-line",
            Class::ObsFold => "obs-fold",
            Class::ContentLength => "content-length",
            Class::Smuggling => "smuggling",
            Class::TransferEncoding => "transfer-encoding",
            Class::ChunkSize => "chunk-size",
            Class::OversizedHeader => "oversized-header",
            Class::BadBytes => "bad-bytes",
            Class::Pipelining => "pipelining",
            Class::EarlyClose => "early-close",
            Class::LongUri => "long-uri",
            Class::Upgrade => "upgrade",
            Class::ConnectionOption => "connection-option",
            Class::Mutation => "mutation",
        };
        f.write_str(name)
    }
}

/// What the server must do with a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Answer 400 and close (RFC 9112 §6.3, §5.1: "MUST respond with
    /// 400 … and then close").
    Reject,
    /// Answer this status and close.
    Status(u16),
    /// Refused as too large: 400, 414 or 431, and close.
    TooLarge,
    /// At most one answer (any status), then close: a server may process
    /// the first request or reject it, but must not read on.
    CloseAfterFirst,
    /// Answer each of `paths` in order, all 2xx, and the upstream sees
    /// exactly them.
    Answers(Vec<String>),
    /// Answer or close within the deadline, whatever it decides.
    Either,
    /// Upstream and client stay in step: the upstream sees the case's
    /// second request only if the client got an answer for it.
    InStep { second: String },
    /// The client closes early; only liveness is checked.
    Abandon,
    /// Random input: any answer, a close, or waiting for more bytes.
    Survive,
}

/// One case: bytes to send and what must come of them.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: usize,
    pub class: Class,
    pub name: String,
    /// Written one after another with a short pause: a request split
    /// across packets.
    pub writes: Vec<Vec<u8>>,
    pub expect: Expect,
    /// When the upstream gets `/fuzz/{id}`, the body it must get.
    pub body: Option<Vec<u8>>,
}

impl Case {
    pub fn path(&self) -> String {
        format!("/fuzz/{}", self.id)
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.writes.concat()
    }
}

const HOST: &str = "Host: fuzz.test\r\n";

/// The request that must never reach the upstream.
fn smuggled(id: usize) -> String {
    format!("GET /smuggled-{id} HTTP/1.1\r\n{HOST}\r\n")
}

/// Builds the catalogue, numbering cases from `first`.
struct Catalogue {
    cases: Vec<Case>,
    next: usize,
}

impl Catalogue {
    /// Adds a case whose bytes `make` builds from the case's id.
    fn add(&mut self, class: Class, name: &str, expect: Expect, make: impl Fn(usize) -> Vec<u8>) {
        self.add_full(class, name, expect, None, |id| vec![make(id)]);
    }

    fn add_full(
        &mut self,
        class: Class,
        name: &str,
        expect: Expect,
        body: Option<&[u8]>,
        make: impl Fn(usize) -> Vec<Vec<u8>>,
    ) {
        let id = self.next;
        self.next += 1;
        self.cases.push(Case {
            id,
            class,
            name: name.to_string(),
            writes: make(id),
            expect,
            body: body.map(<[u8]>::to_vec),
        });
    }
}

/// A POST to the case's path with `headers` (each ending in CRLF) and
/// `body`, followed by the smuggled request.
fn post_then_smuggle(id: usize, version: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /fuzz/{id} HTTP/{version}\r\n{HOST}{headers}\r\n{body}{}",
        smuggled(id)
    )
    .into_bytes()
}

/// The fixed catalogue of hostile inputs, numbered from `first`.
pub fn catalogue(first: usize) -> Vec<Case> {
    let mut c = Catalogue {
        cases: Vec::new(),
        next: first,
    };
    smuggling(&mut c);
    content_length(&mut c);
    transfer_encoding(&mut c);
    chunk_sizes(&mut c);
    request_lines(&mut c);
    header_bytes(&mut c);
    sizes(&mut c);
    pipelining(&mut c);
    early_close(&mut c);
    upgrades(&mut c);
    c.cases
}

/// Content-Length and Transfer-Encoding together (RFC 9112 §6.1: process
/// by Transfer-Encoding or reject; close either way). The bytes after
/// what Transfer-Encoding frames would be a request under Content-Length,
/// and the other way round.
fn smuggling(c: &mut Catalogue) {
    c.add(Class::Smuggling, "CL.TE: content-length covers what chunked ends before", Expect::CloseAfterFirst, |id| {
        let tail = format!("0\r\n\r\n{}", smuggled(id));
        format!(
            "POST /fuzz/{id} HTTP/1.1\r\n{HOST}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{tail}",
            tail.len()
        )
        .into_bytes()
    });
    for (name, order) in [("TE.CL", true), ("TE.CL, transfer-encoding first", false)] {
        c.add(Class::Smuggling, name, Expect::CloseAfterFirst, move |id| {
            let inner = smuggled(id);
            let (cl, te) = ("Content-Length: 4\r\n", "Transfer-Encoding: chunked\r\n");
            let headers = if order {
                format!("{cl}{te}")
            } else {
                format!("{te}{cl}")
            };
            format!(
                "POST /fuzz/{id} HTTP/1.1\r\n{HOST}{headers}\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
                inner.len()
            )
            .into_bytes()
        });
    }
    c.add(
        Class::Smuggling,
        "CL.TE with CHUNKED in capitals",
        Expect::CloseAfterFirst,
        |id| {
            post_then_smuggle(
                id,
                "1.1",
                "content-length: 5\r\ntransfer-encoding: CHUNKED\r\n",
                "0\r\n\r\n",
            )
        },
    );
    c.add(
        Class::Smuggling,
        "chunked on HTTP/1.0 (§6.1: faulty framing)",
        Expect::CloseAfterFirst,
        |id| {
            post_then_smuggle(
                id,
                "1.0",
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            )
        },
    );
    c.add(
        Class::Smuggling,
        "transfer-encoding folded onto a second line",
        Expect::CloseAfterFirst,
        |id| {
            post_then_smuggle(
                id,
                "1.1",
                "Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n",
                "0\r\n\r\n",
            )
        },
    );
    c.add(
        Class::Smuggling,
        "Connection: close, then another request (§9.6)",
        Expect::CloseAfterFirst,
        |id| {
            format!(
                "GET /fuzz/{id} HTTP/1.1\r\n{HOST}Connection: close\r\n\r\n{}",
                smuggled(id)
            )
            .into_bytes()
        },
    );
    c.add(
        Class::Smuggling,
        "HTTP/1.0 without keep-alive, then another request",
        Expect::CloseAfterFirst,
        |id| format!("GET /fuzz/{id} HTTP/1.0\r\n{HOST}\r\n{}", smuggled(id)).into_bytes(),
    );
}

/// Content-Length that does not say one length (RFC 9110 §8.6, RFC 9112
/// §6.3 item 5: 400 and close).
fn content_length(c: &mut Catalogue) {
    for (name, headers) in [
        (
            "two different content-lengths",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
        ),
        (
            "content-length list of two values",
            "Content-Length: 5, 6\r\n",
        ),
        ("content-length +5", "Content-Length: +5\r\n"),
        ("content-length -1", "Content-Length: -1\r\n"),
        ("content-length 0x5", "Content-Length: 0x5\r\n"),
        ("content-length 5 5", "Content-Length: 5 5\r\n"),
        ("content-length empty", "Content-Length: \r\n"),
        (
            "content-length past u64",
            "Content-Length: 99999999999999999999999\r\n",
        ),
        ("content-length 5.0", "Content-Length: 5.0\r\n"),
    ] {
        c.add(Class::ContentLength, name, Expect::Reject, move |id| {
            post_then_smuggle(id, "1.1", headers, "hello")
        });
    }
    c.add_full(
        Class::ContentLength,
        "identical content-lengths (may be taken as one)",
        Expect::Either,
        Some(b"hello"),
        |id| vec![format!("POST /fuzz/{id} HTTP/1.1\r\n{HOST}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello").into_bytes()],
    );
}

/// Transfer codings that do not end in chunked (RFC 9112 §6.3 item 4: 400
/// and close), and names or separators that only look like it.
fn transfer_encoding(c: &mut Catalogue) {
    for (name, headers) in [
        (
            "chunked, identity",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        ("identity alone", "Transfer-Encoding: identity\r\n"),
        (
            "chunked then identity on two lines",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        ),
        ("xchunked", "Transfer-Encoding: xchunked\r\n"),
        (
            "chunked with a vertical tab",
            "Transfer-Encoding: \x0bchunked\r\n",
        ),
        (
            "space before the colon (§5.1)",
            "Transfer-Encoding : chunked\r\n",
        ),
        ("gzip only", "Transfer-Encoding: gzip\r\n"),
    ] {
        c.add(Class::TransferEncoding, name, Expect::Reject, move |id| {
            post_then_smuggle(
                id,
                "1.1",
                &format!("Content-Length: 5\r\n{headers}"),
                "0\r\n\r\n",
            )
        });
    }
    c.add_full(
        Class::TransferEncoding,
        "gzip, chunked (chunked final: framed by chunks)",
        Expect::Either,
        None,
        |id| vec![format!("POST /fuzz/{id} HTTP/1.1\r\n{HOST}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes()],
    );
}

/// Chunk sizes that are not hex, overflow, or lie about their data; a
/// request follows each, which must not be read as one.
fn chunk_sizes(c: &mut Catalogue) {
    for (name, body) in [
        ("chunk size zz", "zz\r\nhello\r\n0\r\n\r\n"),
        ("chunk size -1", "-1\r\nhello\r\n0\r\n\r\n"),
        ("chunk size 0x5", "0x5\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk size past u64",
            "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
        ("chunk data without its CRLF", "5\r\nhello0\r\n\r\n"),
        (
            "chunk size with a space inside",
            "5 5\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        c.add(Class::ChunkSize, name, Expect::CloseAfterFirst, move |id| {
            post_then_smuggle(id, "1.1", "Transfer-Encoding: chunked\r\n", body)
        });
    }
    for (name, body) in [
        ("chunk extension", "5;name=value\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk size with leading zeros",
            "0000000000000000000005\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "trailer naming content-length",
            "5\r\nhello\r\n0\r\nContent-Length: 100\r\n\r\n",
        ),
    ] {
        c.add_full(
            Class::ChunkSize,
            name,
            Expect::Either,
            Some(b"hello"),
            move |id| {
                vec![
                    format!(
                        "POST /fuzz/{id} HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n{body}"
                    )
                    .into_bytes(),
                ]
            },
        );
    }
}

fn request_lines(c: &mut Catalogue) {
    for (name, line) in [
        ("two spaces after the method", "GET  /fuzz/{id} HTTP/1.1"),
        ("a fourth word", "GET /fuzz/{id} HTTP/1.1 extra"),
        ("no version (HTTP/0.9 form)", "GET /fuzz/{id}"),
        (
            "HTTP/2.0 on an HTTP/1 connection",
            "GET /fuzz/{id} HTTP/2.0",
        ),
        ("version HTTP/1.1x", "GET /fuzz/{id} HTTP/1.1x"),
        ("version HTTP/9.9", "GET /fuzz/{id} HTTP/9.9"),
        ("lowercase method", "get /fuzz/{id} HTTP/1.1"),
        ("no method", "/fuzz/{id} HTTP/1.1"),
        ("target without a slash", "GET fuzz/{id} HTTP/1.1"),
        (
            "absolute form naming another host",
            "GET http://other.test/fuzz/{id} HTTP/1.1",
        ),
        ("asterisk form", "OPTIONS * HTTP/1.1"),
        ("authority form", "CONNECT fuzz.test:443 HTTP/1.1"),
        ("space inside the target", "GET /fuzz/{id}/a b HTTP/1.1"),
        ("fragment in the target", "GET /fuzz/{id}#frag HTTP/1.1"),
        ("bad percent escapes", "GET /fuzz/{id}/%zz%00%%% HTTP/1.1"),
        ("NUL in the target", "GET /fuzz/{id}/\0 HTTP/1.1"),
        ("bare CR in the target", "GET /fuzz/{id}/\r HTTP/1.1"),
        ("tab as separator", "GET\t/fuzz/{id}\tHTTP/1.1"),
        ("8 KiB method", "{method} /fuzz/{id} HTTP/1.1"),
    ] {
        c.add(Class::RequestLine, name, Expect::Either, move |id| {
            let line = line
                .replace("{id}", &id.to_string())
                .replace("{method}", &"M".repeat(8 << 10));
            format!("{line}\r\n{HOST}\r\n").into_bytes()
        });
    }
    c.add(
        Class::RequestLine,
        "no Host on HTTP/1.1 (§3.2: 400)",
        Expect::Reject,
        |id| format!("GET /fuzz/{id} HTTP/1.1\r\n\r\n").into_bytes(),
    );
    c.add(
        Class::RequestLine,
        "two Host headers (§3.2: 400)",
        Expect::Reject,
        |id| format!("GET /fuzz/{id} HTTP/1.1\r\n{HOST}Host: other.test\r\n\r\n").into_bytes(),
    );
    c.add(
        Class::RequestLine,
        "empty lines before the request (§2.2)",
        Expect::Either,
        |id| format!("\r\n\r\nGET /fuzz/{id} HTTP/1.1\r\n{HOST}\r\n").into_bytes(),
    );
}

/// Folded lines, control bytes and malformed field lines (RFC 9112 §5.2:
/// an obs-fold is rejected with 400 or replaced by spaces; §2.2: a bare
/// CR is invalid or replaced).
fn header_bytes(c: &mut Catalogue) {
    for (class, name, headers) in [
        (
            Class::ObsFold,
            "obs-fold with a space",
            "X-Fold: a\r\n b\r\n",
        ),
        (
            Class::ObsFold,
            "obs-fold with a tab",
            "X-Fold: a\r\n\tb\r\n",
        ),
        (
            Class::ObsFold,
            "fold of the Host line",
            "X-Before: 1\r\nHost: fuzz.test\r\n .evil\r\n",
        ),
        (Class::BadBytes, "NUL in a value", "X-Bad: a\0b\r\n"),
        (Class::BadBytes, "bare CR in a value", "X-Bad: a\rb\r\n"),
        (
            Class::BadBytes,
            "bare LF inside a value",
            "X-Bad: a\nb: c\r\n",
        ),
        (
            Class::BadBytes,
            "DEL and obs-text in a value",
            "X-Bad: a\x7f\u{e9}\r\n",
        ),
        (Class::BadBytes, "space inside a name", "X Bad: a\r\n"),
        (Class::BadBytes, "no colon", "X-Bad\r\n"),
        (Class::BadBytes, "empty name", ": a\r\n"),
        (Class::BadBytes, "NUL in a name", "X-\0Bad: a\r\n"),
    ] {
        c.add(class, name, Expect::Either, move |id| {
            let host = if headers.contains("Host:") { "" } else { HOST };
            format!("GET /fuzz/{id} HTTP/1.1\r\n{host}{headers}\r\n").into_bytes()
        });
    }
    c.add(
        Class::ObsFold,
        "whitespace line before the first header (§2.2)",
        Expect::Either,
        |id| format!("GET /fuzz/{id} HTTP/1.1\r\n X-Hidden: 1\r\n{HOST}\r\n").into_bytes(),
    );
    c.add(
        Class::BadBytes,
        "LF line endings throughout",
        Expect::Either,
        |id| format!("GET /fuzz/{id} HTTP/1.1\nHost: fuzz.test\n\n").into_bytes(),
    );
}

/// Header blocks past augur's limit (64 KiB by default: 431) and past
/// pingora's own (1 MiB, 256 fields), and long targets.
fn sizes(c: &mut Catalogue) {
    c.add(
        Class::OversizedHeader,
        "70 KiB header (over augur's 64 KiB)",
        Expect::Status(431),
        |id| {
            format!(
                "GET /fuzz/{id} HTTP/1.1\r\n{HOST}X-Big: {}\r\n\r\n",
                "a".repeat(70 << 10)
            )
            .into_bytes()
        },
    );
    c.add(
        Class::OversizedHeader,
        "1.1 MiB header (over pingora's 1 MiB)",
        Expect::Either,
        |id| {
            format!(
                "GET /fuzz/{id} HTTP/1.1\r\n{HOST}X-Big: {}\r\n\r\n",
                "a".repeat(1100 << 10)
            )
            .into_bytes()
        },
    );
    c.add(
        Class::OversizedHeader,
        "300 header fields (over 256)",
        Expect::Either,
        |id| {
            let fields: String = (0..300).map(|i| format!("X-F{i}: v\r\n")).collect();
            format!("GET /fuzz/{id} HTTP/1.1\r\n{HOST}{fields}\r\n").into_bytes()
        },
    );
    c.add(Class::LongUri, "8 KiB target", Expect::Either, |id| {
        format!(
            "GET /fuzz/{id}/{} HTTP/1.1\r\n{HOST}\r\n",
            "u".repeat(8 << 10)
        )
        .into_bytes()
    });
    c.add(
        Class::LongUri,
        "70 KiB target (over augur's 64 KiB)",
        Expect::TooLarge,
        |id| {
            format!(
                "GET /fuzz/{id}/{} HTTP/1.1\r\n{HOST}\r\n",
                "u".repeat(70 << 10)
            )
            .into_bytes()
        },
    );
    c.add(Class::LongUri, "2 MiB target", Expect::Either, |id| {
        format!(
            "GET /fuzz/{id}/{} HTTP/1.1\r\n{HOST}\r\n",
            "u".repeat(2 << 20)
        )
        .into_bytes()
    });
    c.add(
        Class::LongUri,
        "75 KiB query of identifiers",
        Expect::TooLarge,
        |id| {
            let q: String = (0..10_000).map(|i| format!("&{i}=1")).collect();
            format!("GET /fuzz/{id}?{q} HTTP/1.1\r\n{HOST}\r\n").into_bytes()
        },
    );
}

fn pipelining(c: &mut Catalogue) {
    c.add(
        Class::Pipelining,
        "three GETs in one write",
        Expect::Answers(vec![]),
        |id| {
            (0..3)
                .map(|k| format!("GET /fuzz/{id}/p{k} HTTP/1.1\r\n{HOST}\r\n"))
                .collect::<String>()
                .into_bytes()
        },
    );
    c.add_full(Class::Pipelining, "POST with a body, then GET", Expect::Answers(vec![]), Some(b"hello"), |id| {
        vec![format!("POST /fuzz/{id} HTTP/1.1\r\n{HOST}Content-Length: 5\r\n\r\nhelloGET /fuzz/{id}/p1 HTTP/1.1\r\n{HOST}\r\n").into_bytes()]
    });
    c.add_full(Class::Pipelining, "chunked POST, then GET", Expect::Answers(vec![]), Some(b"hello"), |id| {
        vec![format!("POST /fuzz/{id} HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /fuzz/{id}/p1 HTTP/1.1\r\n{HOST}\r\n").into_bytes()]
    });
    c.add_full(
        Class::Pipelining,
        "one request in three packets",
        Expect::Answers(vec![]),
        Some(b"hello"),
        |id| {
            let all = format!("POST /fuzz/{id} HTTP/1.1\r\n{HOST}Content-Length: 5\r\n\r\nhello");
            let (a, b) = (10, all.len() - 7);
            vec![all[..a].into(), all[a..b].into(), all[b..].into()]
        },
    );
    // The paths each Answers case must see, now that ids are known.
    for case in &mut c.cases {
        if case.expect == Expect::Answers(vec![]) {
            let text = String::from_utf8_lossy(&case.bytes()).into_owned();
            let paths = text
                .split("\r\n")
                .filter_map(|l| l.split(' ').nth(1).filter(|p| p.starts_with("/fuzz/")))
                .map(str::to_string)
                .collect();
            case.expect = Expect::Answers(paths);
        }
    }
}

/// The client goes away part way.
fn early_close(c: &mut Catalogue) {
    for (name, text) in [
        ("mid request line", "GET /fuzz/{id} HT"),
        ("mid header", "GET /fuzz/{id} HTTP/1.1\r\nHost: fuz"),
        (
            "after the header, before its body",
            "POST /fuzz/{id} HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: 10\r\n\r\n",
        ),
        (
            "mid body",
            "POST /fuzz/{id} HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: 10\r\n\r\nhello",
        ),
        (
            "mid chunk",
            "POST /fuzz/{id} HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n\r\na\r\nhello",
        ),
        (
            "huge chunk announced",
            "POST /fuzz/{id} HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\nhello",
        ),
        (
            "before the last chunk",
            "POST /fuzz/{id} HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ),
        (
            "huge content-length announced",
            "POST /fuzz/{id} HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: 18446744073709551615\r\n\r\nhello",
        ),
    ] {
        c.add(Class::EarlyClose, name, Expect::Abandon, move |id| {
            text.replace("{id}", &id.to_string()).into_bytes()
        });
    }
}

/// Upgrades the upstream does not take, and `Connection` naming the
/// framing headers (RFC 9110 §7.6.1 has a proxy drop what `Connection`
/// names; the body must still arrive whole, or not at all).
fn upgrades(c: &mut Catalogue) {
    for (name, headers) in [
        (
            "websocket upgrade refused, bytes after it",
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        ),
        (
            "h2c upgrade refused, bytes after it",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
    ] {
        let second = "/fuzz/{id}/after";
        c.add_full(
            Class::Upgrade,
            name,
            Expect::InStep { second: second.to_string() },
            None,
            move |id| {
                let second = second.replace("{id}", &id.to_string());
                vec![format!("GET /fuzz/{id} HTTP/1.1\r\n{HOST}{headers}\r\nGET {second} HTTP/1.1\r\n{HOST}\r\n").into_bytes()]
            },
        );
    }
    for case in &mut c.cases {
        if let Expect::InStep { second } = &mut case.expect {
            *second = second.replace("{id}", &case.id.to_string());
        }
    }
    c.add_full(Class::ConnectionOption, "Connection: content-length on a POST", Expect::Either, Some(b"hello"), |id| {
        vec![format!("POST /fuzz/{id} HTTP/1.1\r\n{HOST}Connection: content-length\r\nContent-Length: 5\r\n\r\nhello").into_bytes()]
    });
    c.add_full(Class::ConnectionOption, "Connection: transfer-encoding on a chunked POST", Expect::Either, Some(b"hello"), |id| {
        vec![format!("POST /fuzz/{id} HTTP/1.1\r\n{HOST}Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes()]
    });
}

/// Valid requests the mutations start from.
fn template(id: usize, pick: u8) -> Vec<u8> {
    match pick % 5 {
        0 => format!("GET /fuzz/{id}?q=1 HTTP/1.1\r\n{HOST}Accept: */*\r\n\r\n"),
        1 => format!("POST /fuzz/{id} HTTP/1.1\r\n{HOST}Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{{\"a\":[1,2,3]}}"),
        2 => format!("POST /fuzz/{id} HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
        3 => format!("GET /fuzz/{id}/a HTTP/1.1\r\n{HOST}\r\nGET /fuzz/{id}/b HTTP/1.1\r\n{HOST}Connection: close\r\n\r\n"),
        _ => format!("PUT /fuzz/{id}/42 HTTP/1.0\r\n{HOST}Connection: keep-alive\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nContent-Length: 2\r\n\r\nhi"),
    }
    .into_bytes()
}

/// Bytes that parsers treat specially.
const INTERESTING: &[u8] = b"\r\n\0 \t:;,-+0123456789abcdefx\x0b\x7f\xff\x80/?#%";

/// Header lines that change framing.
const FRAMING_LINES: &[&str] = &[
    "Content-Length: 0\r\n",
    "Content-Length: 3\r\n",
    "Content-Length: 1000\r\n",
    "Content-Length: 3, 4\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Transfer-Encoding: chunked, identity\r\n",
    "Transfer-Encoding: identity\r\n",
    "Connection: close\r\n",
    "Connection: content-length, transfer-encoding\r\n",
    "Expect: 100-continue\r\n",
    "Upgrade: websocket\r\nConnection: upgrade\r\n",
    " folded\r\n",
];

/// A seeded random mutation of a valid request: `id` names it, `rng` is
/// the run's generator (so a seed reproduces the whole run).
pub fn mutation(id: usize, rng: &mut fastrand::Rng) -> Case {
    let mut bytes = template(id, rng.u8(..));
    let edits = rng.usize(1..=4);
    let mut names = Vec::new();
    for _ in 0..edits {
        let at = rng.usize(..=bytes.len());
        match rng.u8(..8) {
            0 if !bytes.is_empty() => {
                let i = rng.usize(..bytes.len());
                bytes[i] = pick(rng);
                names.push("flip");
            }
            1 => {
                bytes.insert(at, pick(rng));
                names.push("insert");
            }
            2 if at < bytes.len() => {
                let end = (at + rng.usize(1..=8)).min(bytes.len());
                bytes.drain(at..end);
                names.push("delete");
            }
            3 if at < bytes.len() => {
                let end = (at + rng.usize(1..=32)).min(bytes.len());
                let slice = bytes[at..end].to_vec();
                let times = rng.usize(1..=64);
                for _ in 0..times {
                    bytes.splice(end..end, slice.iter().copied());
                }
                names.push("repeat");
            }
            4 => {
                // A framing header after the request line.
                let line = FRAMING_LINES[rng.usize(..FRAMING_LINES.len())];
                let after = super::wire::find(&bytes, b"\r\n").map_or(0, |i| i + 2);
                bytes.splice(after..after, line.bytes());
                names.push("framing");
            }
            5 => {
                let keep = rng.usize(..=bytes.len());
                bytes.truncate(keep);
                names.push("truncate");
            }
            6 => {
                // Another request glued on: a pipeline of strangers.
                bytes.extend(template(id, rng.u8(..)));
                names.push("append");
            }
            _ => {
                let n = rng.usize(1..=16);
                let junk: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                bytes.splice(at..at, junk);
                names.push("junk");
            }
        }
    }
    // Sometimes in pieces, as a slow client sends.
    let writes = if rng.u8(..4) == 0 && bytes.len() > 2 {
        let cut = rng.usize(1..bytes.len());
        vec![bytes[..cut].to_vec(), bytes[cut..].to_vec()]
    } else {
        vec![bytes]
    };
    Case {
        id,
        class: Class::Mutation,
        name: names.join("+"),
        writes,
        expect: Expect::Survive,
        body: None,
    }
}

fn pick(rng: &mut fastrand::Rng) -> u8 {
    if rng.bool() {
        INTERESTING[rng.usize(..INTERESTING.len())]
    } else {
        rng.u8(..)
    }
}
