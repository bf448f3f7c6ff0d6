//! One raw exchange over a `TcpStream`: the case's bytes out, whatever comes
//! back, every read and write under a timeout; and a small HTTP/1.1
//! response reader that says which answers arrived whole.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long to keep reading after the writes.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Until the server closes; not closing by `deadline` is a hang.
    Close { deadline: Duration },
    /// Until `answers` whole responses arrived, or the server closes; not
    /// one of those by `deadline` is a hang.
    Answers { answers: usize, deadline: Duration },
    /// Until the server closes or answers once, or `deadline` passes —
    /// which is no finding (the bytes may leave the server waiting for
    /// more, as it should).
    Patient { deadline: Duration },
    /// Not at all: close as soon as the bytes are out.
    Abandon,
}

/// What one exchange saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// The server's bytes.
    pub bytes: Vec<u8>,
    /// The server closed (or reset) the connection.
    pub closed: bool,
    /// The wait ran to its deadline.
    pub timed_out: bool,
    /// A write failed: the server had closed before taking every byte.
    pub write_error: Option<String>,
}

impl Seen {
    pub fn responses(&self) -> Responses {
        responses(&self.bytes)
    }
}

/// Sends `writes` (pausing `pause` between them), then reads as `wait` says.
pub fn exchange(
    addr: SocketAddr,
    writes: &[Vec<u8>],
    pause: Duration,
    wait: Wait,
) -> std::io::Result<Seen> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut seen = Seen::default();
    for (i, w) in writes.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        if let Err(e) = stream.write_all(w) {
            seen.write_error = Some(e.to_string());
            break;
        }
    }
    let deadline = match wait {
        Wait::Abandon => {
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(seen);
        }
        Wait::Close { deadline } | Wait::Answers { deadline, .. } | Wait::Patient { deadline } => {
            Instant::now() + deadline
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                seen.closed = true;
                return Ok(seen);
            }
            Ok(n) => seen.bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                // A reset: the server closed with our bytes unread.
                seen.closed = true;
                return Ok(seen);
            }
        }
        let whole = responses(&seen.bytes).whole;
        let done = match wait {
            Wait::Answers { answers, .. } => whole >= answers,
            Wait::Patient { .. } => whole >= 1,
            _ => false,
        };
        if done {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            seen.timed_out = true;
            return Ok(seen);
        }
    }
}

/// The responses in a server's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Responses {
    /// The status of every response head, in order (1xx included).
    pub statuses: Vec<u16>,
    /// Final responses that arrived whole (head and body).
    pub whole: usize,
    /// Bytes that are not an HTTP/1.x response.
    pub garbage: bool,
}

impl Responses {
    /// Final (non-1xx) statuses.
    pub fn finals(&self) -> impl Iterator<Item = u16> + '_ {
        self.statuses.iter().copied().filter(|s| *s >= 200)
    }
}

/// Reads responses back to back, framing each by its `content-length` or
/// chunked coding (a body without either runs to the end of the bytes).
pub fn responses(mut bytes: &[u8]) -> Responses {
    let mut out = Responses::default();
    while !bytes.is_empty() {
        let Some(head_end) = find(bytes, b"\r\n\r\n") else {
            out.garbage |= !bytes.starts_with(b"HTTP/1.") && !b"HTTP/1.".starts_with(bytes);
            break;
        };
        let head = &bytes[..head_end];
        let Some(status) = status(head) else {
            out.garbage = true;
            break;
        };
        out.statuses.push(status);
        let rest = &bytes[head_end + 4..];
        if (100..200).contains(&status) {
            bytes = rest;
            continue;
        }
        let body = if status == 204 || status == 304 {
            Some(0)
        } else if header(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            chunked_len(rest)
        } else if let Some(n) = header(head, "content-length").and_then(|v| v.parse().ok()) {
            (rest.len() >= n).then_some(n)
        } else {
            // Close-delimited: whole once the server closes; counted so.
            Some(rest.len())
        };
        let Some(len) = body else { break };
        out.whole += 1;
        bytes = &rest[len..];
    }
    out
}

fn status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    head.split(|b| *b == b'\n').skip(1).find_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The length of a whole chunked body at the start of `bytes`, trailers
/// included; `None` while incomplete.
fn chunked_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + find(&bytes[at..], b"\r\n")?;
        let size = std::str::from_utf8(&bytes[at..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = at + find(&bytes[at..], b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        at = at.checked_add(size)?.checked_add(2)?;
        if at > bytes.len() {
            return None;
        }
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Bytes as printable text (`\r`, `\n`, `\0`, `\xNN`), cut to `max` bytes
/// with the full length noted.
pub fn escaped(bytes: &[u8], max: usize) -> String {
    let shown: String = bytes[..bytes.len().min(max)]
        .escape_ascii()
        .to_string()
        .replace('"', "\\\"");
    if bytes.len() > max {
        format!("\"{shown}\"... ({} bytes in all)", bytes.len())
    } else {
        format!("\"{shown}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed_by_length_and_chunks() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 400 Bad\r\ntransfer-encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n";
        let r = responses(two);
        assert_eq!(r.statuses, vec![200, 400]);
        assert_eq!(r.whole, 2);
        assert!(!r.garbage);
        let cut = responses(&two[..two.len() - 3]);
        assert_eq!((cut.statuses.len(), cut.whole), (2, 1));
        let informational = responses(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No\r\n\r\n");
        assert_eq!(informational.finals().collect::<Vec<_>>(), vec![204]);
        assert_eq!(informational.whole, 1);
        assert!(responses(b"SSH-2.0\r\n\r\n").garbage);
    }
}
