//! Trace files: closed contexts as JSON Lines, one context a line, each
//! with a `version`. augur writes them (`predictor.trace_log`); `augur eval`
//! and the ONNX training script read them. The format is documented in
//! `docs/trace-format.md`.
//!
//! Reading never stops at a bad line: each one is reported with its line
//! number and skipped.

use std::io::{self, BufRead, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::observation::Context;

/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// Longest line read; longer ones are skipped.
pub const MAX_LINE: usize = 16 << 20;

/// Most calls one context may hold.
pub const MAX_CALLS: usize = 10_000;

/// One line of a trace file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    #[serde(default)]
    pub trace_id: Option<String>,
    /// The inbound response's status.
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub duration_us: u64,
    #[serde(flatten)]
    pub context: Context,
}

impl Record {
    pub fn new(trace_id: Option<String>, status: u16, duration_us: u64, context: Context) -> Self {
        Self {
            version: VERSION,
            trace_id,
            status,
            duration_us,
            context,
        }
    }

    /// The record as one line of JSON, without the newline.
    pub fn to_line(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a line of a trace could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("unknown version {0} (this build reads {VERSION})")]
    UnknownVersion(serde_json::Value),
    #[error("missing version")]
    MissingVersion,
    #[error("invalid record: {0}")]
    Record(serde_json::Error),
    #[error("{0} calls is more than {MAX_CALLS}")]
    TooManyCalls(usize),
    #[error("longer than {MAX_LINE} bytes")]
    TooLong,
}

/// A line that could not be read.
#[derive(Debug)]
pub struct LineError {
    pub line: usize,
    pub error: TraceError,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

#[derive(Deserialize)]
struct VersionOnly {
    version: Option<serde_json::Value>,
}

/// Parses one line (without its newline).
pub fn parse_line(bytes: &[u8]) -> Result<Record, TraceError> {
    let head: VersionOnly = serde_json::from_slice(bytes).map_err(TraceError::Json)?;
    match head.version {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        Some(v) => return Err(TraceError::UnknownVersion(v)),
        None => return Err(TraceError::MissingVersion),
    }
    let record: Record = serde_json::from_slice(bytes).map_err(TraceError::Record)?;
    if record.context.calls.len() > MAX_CALLS {
        return Err(TraceError::TooManyCalls(record.context.calls.len()));
    }
    Ok(record)
}

/// Reads every record of a trace; bad lines come back as errors.
pub fn read(mut reader: impl BufRead) -> io::Result<(Vec<Record>, Vec<LineError>)> {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        let n = reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line += 1;
        if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
            errors.push(LineError {
                line,
                error: TraceError::TooLong,
            });
            skip_line(&mut reader)?;
            continue;
        }
        let text = trim(&buf);
        if text.is_empty() {
            continue;
        }
        match parse_line(text) {
            Ok(r) => records.push(r),
            Err(error) => errors.push(LineError { line, error }),
        }
    }
    Ok((records, errors))
}

fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let len = available.len();
                reader.consume(len);
            }
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let start = bytes[..end]
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(end);
    &bytes[start..end]
}

/// Reads a trace file.
pub fn read_path(path: &Path) -> io::Result<(Vec<Record>, Vec<LineError>)> {
    read(io::BufReader::new(std::fs::File::open(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{Call, Request};

    fn record() -> Record {
        Record::new(
            Some("ab".into()),
            200,
            1500,
            Context {
                route: "GET /r/{id}".into(),
                inbound: Request {
                    method: "GET".into(),
                    path: "/r/1".into(),
                    ..Request::default()
                },
                calls: vec![Call {
                    dependency: "users".into(),
                    request: Request {
                        method: "GET".into(),
                        path: "/users/1".into(),
                        ..Request::default()
                    },
                    status: 200,
                    start_us: 10,
                    duration_us: 100,
                    response: Some(std::sync::Arc::new(serde_json::json!({"id": 1}))),
                }],
            },
        )
    }

    #[test]
    fn records_round_trip() {
        let line = record().to_line();
        assert!(line.starts_with("{\"version\":1"));
        assert_eq!(parse_line(line.as_bytes()).unwrap(), record());
    }

    #[test]
    fn bad_lines_are_reported_with_their_numbers_and_skipped() {
        let good = record().to_line();
        let text = format!(
            "{good}\n{{\"version\":1,\"route\":\n\n{{\"version\":2}}\n{{\"route\":\"x\"}}\n{good}\n{{\"version\":1,\"route\":\"r\",\"inbound\":{{\"method\":\"GET\",\"path\":\"/\"}},\"calls\":[{{\"dependency\":\"d\",\"request\":{{\"method\":\"GET\",\"path\":\"/\"}},\"status\":99999999999999999999999}}]}}\n"
        );
        let (records, errors) = read(text.as_bytes()).unwrap();
        assert_eq!(records.len(), 2);
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 4, 5, 7], "{errors:?}");
        assert!(errors[1].to_string().contains("unknown version 2"));
        assert!(errors[2].to_string().contains("missing version"));
    }
}
