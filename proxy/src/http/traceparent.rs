//! W3C Trace Context `traceparent` headers: parsing, formatting, fresh ids.

use std::fmt;

/// A parsed `traceparent`: which trace a request belongs to and which span
/// sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: u128,
    pub(crate) parent_id: u64,
    pub(crate) flags: u8,
}

pub(crate) const HEADER: &str = "traceparent";

/// The `sampled` bit of `flags`.
pub(crate) const SAMPLED: u8 = 0x01;

impl TraceParent {
    /// Parses a header value. Version `00` must be exactly 55 characters;
    /// later versions may append fields, which are ignored as the spec says.
    /// All-zero ids and the invalid version `ff` are rejected.
    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || (value.len() > 55 && value.get(55) != Some(&b'-')) {
            return None;
        }
        let version = hex(&value[0..2])?;
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id = hex(&value[3..35])?;
        let parent_id = u64::try_from(hex(&value[36..52])?).ok()?;
        let flags = u8::try_from(hex(&value[53..55])?).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace with random ids, sampled.
    pub(crate) fn fresh() -> Self {
        Self {
            trace_id: fresh_id128(),
            parent_id: fresh_id64(),
            flags: SAMPLED,
        }
    }

    /// The same trace, sent by another span.
    pub(crate) fn with_parent(self, parent_id: u64) -> Self {
        Self { parent_id, ..self }
    }
}

impl TraceParent {
    /// The header value, `00-{trace}-{parent}-{flags}`, written without
    /// formatting machinery or an allocation: it goes out on every request.
    pub(crate) fn encode(&self) -> [u8; 55] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        fn put(out: &mut [u8], value: u128) {
            let mut v = value;
            for d in out.iter_mut().rev() {
                *d = DIGITS[(v & 0xf) as usize];
                v >>= 4;
            }
        }
        let mut out = [b'-'; 55];
        put(&mut out[0..2], 0);
        put(&mut out[3..35], self.trace_id);
        put(&mut out[36..52], u128::from(self.parent_id));
        put(&mut out[53..55], u128::from(self.flags));
        out
    }

    /// [`encode`](Self::encode) as a header value.
    pub(crate) fn header_value(&self) -> http::HeaderValue {
        // Hex digits and dashes only: always a valid header value.
        http::HeaderValue::from_bytes(&self.encode())
            .unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // ASCII by construction.
        f.write_str(std::str::from_utf8(&self.encode()).map_err(|_| fmt::Error)?)
    }
}

/// Lowercase hex only, as the spec requires.
fn hex(digits: &[u8]) -> Option<u128> {
    if digits.is_empty() || digits.len() > 32 {
        return None;
    }
    digits.iter().try_fold(0u128, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u128::from(v))
    })
}

/// A random, non-zero 128-bit id.
pub(crate) fn fresh_id128() -> u128 {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id;
        }
    }
}

/// A random, non-zero 64-bit id.
pub(crate) fn fresh_id64() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_round_trip() {
        let tp = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), VALID);
        assert_eq!(tp.header_value().as_bytes(), VALID.as_bytes());
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn future_versions_may_append_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        assert!(TraceParent::parse(v.as_bytes()).is_some());
    }

    #[test]
    fn fresh_ids_are_valid() {
        let tp = TraceParent::fresh();
        assert_eq!(TraceParent::parse(tp.to_string().as_bytes()), Some(tp));
    }
}
