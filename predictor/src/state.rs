//! Saved learning (`predictor.state`): what a restarted augur learns from
//! before it takes its first request, so it speculates from that request
//! on.
//!
//! The state is not a dump of the learner's tables but the recent closed
//! contexts they were learned from, replayed at start: shapes, the
//! sequence model, parameter rules, gates and timings all come back as the
//! same code learned them, and a build whose tables changed shape still
//! reads an older state. The file is JSON Lines: a header —
//! `{"format": "augur-state", "state_version": 1, "service": …,
//! "saved_unix_ms": …, "contexts": N}` — then N context lines in the trace
//! format ([`crate::trace`]). It is written to a temporary file and renamed
//! over the old one, so a reader sees a whole state or the previous one.
//!
//! A file that is not a state, of another version, saved by another
//! service, cut short, or with a line that does not read is a
//! [`StateError`]: augur logs it and starts with nothing learned.

use std::io::{self, BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::observation::Context;
use crate::trace::{self, Record};

/// What a state file's header says it is.
pub const FORMAT: &str = "augur-state";
/// The version this build writes and reads.
pub const STATE_VERSION: u32 = 1;

/// The first line of a state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub state_version: u32,
    /// `service.name` of the augur that saved it.
    pub service: String,
    pub saved_unix_ms: u64,
    /// Context lines that follow.
    pub contexts: usize,
    /// What the proxy saves besides (its containers' idle-gap histograms),
    /// opaque to the predictor.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
}

/// Why a state file was not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    #[error("it is empty")]
    Empty,
    #[error("it is not an augur state (first line: {0})")]
    NotAState(String),
    #[error("it is state version {found}; this build reads version {STATE_VERSION}")]
    Version { found: u32 },
    #[error("it was saved by service {saved_by:?}, not {service:?}")]
    Foreign { saved_by: String, service: String },
    #[error("it is cut short: {found} of its {expected} contexts")]
    Truncated { found: usize, expected: usize },
    #[error("line {line}: {reason}")]
    Corrupt { line: usize, reason: String },
}

/// A state file read whole.
#[derive(Debug)]
pub struct State {
    pub header: Header,
    pub contexts: Vec<Context>,
}

/// Reads the state at `path`, saved by `service`.
pub fn read_path(path: &Path, service: &str) -> Result<State, StateError> {
    read(io::BufReader::new(std::fs::File::open(path)?), service)
}

/// Reads a state saved by `service`.
pub fn read(mut reader: impl BufRead, service: &str) -> Result<State, StateError> {
    let mut first = String::new();
    io::Read::take(&mut reader, trace::MAX_LINE as u64)
        .read_line(&mut first)
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => StateError::NotAState("not text".into()),
            _ => StateError::Io(e),
        })?;
    if first.trim().is_empty() {
        return Err(StateError::Empty);
    }
    let header: Header = serde_json::from_str(first.trim()).map_err(|e| {
        let shown: String = first.trim().chars().take(80).collect();
        StateError::NotAState(format!("{shown:?}: {e}"))
    })?;
    if header.format != FORMAT {
        return Err(StateError::NotAState(format!("format {:?}", header.format)));
    }
    if header.state_version != STATE_VERSION {
        return Err(StateError::Version {
            found: header.state_version,
        });
    }
    if header.service != service {
        return Err(StateError::Foreign {
            saved_by: header.service,
            service: service.to_string(),
        });
    }
    let (records, errors) = trace::read(reader)?;
    if let Some(e) = errors.first() {
        // The header is line 1.
        return Err(StateError::Corrupt {
            line: e.line + 1,
            reason: e.error.to_string(),
        });
    }
    if records.len() != header.contexts {
        return Err(StateError::Truncated {
            found: records.len(),
            expected: header.contexts,
        });
    }
    Ok(State {
        header,
        contexts: records.into_iter().map(|r| r.context).collect(),
    })
}

/// Writes `contexts` as the state of `service` to `path`: to a temporary
/// file beside it first, renamed over `path` once complete.
pub fn write_path(
    path: &Path,
    service: &str,
    saved_unix_ms: u64,
    contexts: &[&Context],
    extra: serde_json::Value,
) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut out = io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut out, service, saved_unix_ms, contexts, extra)?;
        out.flush()?;
        out.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Writes a state to `out`.
pub fn write(
    out: &mut impl Write,
    service: &str,
    saved_unix_ms: u64,
    contexts: &[&Context],
    extra: serde_json::Value,
) -> io::Result<()> {
    let header = Header {
        format: FORMAT.to_string(),
        state_version: STATE_VERSION,
        service: service.to_string(),
        saved_unix_ms,
        contexts: contexts.len(),
        extra,
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    for c in contexts {
        let record = Record::new(None, 200, 0, (*c).clone());
        writeln!(out, "{}", record.to_line())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{Call, Request};

    fn context(i: u64) -> Context {
        Context {
            route: "GET /p/{id}".into(),
            inbound: Request::to("GET", &format!("/p/{i}"), &[]),
            calls: vec![Call {
                dependency: "users".into(),
                request: Request::to("GET", &format!("/users/{i}"), &[]),
                status: 200,
                start_us: 10,
                duration_us: 100,
                response: Some(std::sync::Arc::new(serde_json::json!({"id": i}))),
            }],
        }
    }

    fn saved(service: &str, n: u64) -> Vec<u8> {
        let contexts: Vec<Context> = (0..n).map(context).collect();
        let refs: Vec<&Context> = contexts.iter().collect();
        let mut out = Vec::new();
        write(
            &mut out,
            service,
            1,
            &refs,
            serde_json::json!({"k": [1, 2]}),
        )
        .unwrap();
        out
    }

    #[test]
    fn a_state_reads_back_whole() {
        let state = read(&saved("frontend", 3)[..], "frontend").unwrap();
        assert_eq!(state.contexts, (0..3).map(context).collect::<Vec<_>>());
        assert_eq!(state.header.contexts, 3);
        assert_eq!(state.header.extra, serde_json::json!({"k": [1, 2]}));
    }

    #[test]
    fn a_file_that_is_not_a_whole_state_of_this_service_is_an_error() {
        let whole = saved("frontend", 3);
        let text = String::from_utf8(whole.clone()).unwrap();
        let cut = &whole[..whole.len() - 40];
        let mut lines: Vec<&str> = text.lines().collect();
        lines[2] = "{\"version\":1,\"route\":";
        let corrupt = lines.join("\n");
        let other_version = text.replacen("\"state_version\":1", "\"state_version\":7", 1);
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty"),
            (b"\n\n", "empty"),
            (b"{\"version\":1,\"route\":\"x\"}\n", "not an augur state"),
            (b"\x00\x01binary", "not an augur state"),
            (cut, "line 4"),
            (&whole[..whole.len() / 2], "line"),
            (corrupt.as_bytes(), "line 3"),
            (other_version.as_bytes(), "state version 7"),
        ];
        for (bytes, expected) in cases {
            let err = read(bytes, "frontend").expect_err(expected);
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        // One context missing whole: cut short.
        let short: Vec<&str> = text.lines().take(3).collect();
        let err = read(short.join("\n").as_bytes(), "frontend").unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Truncated {
                    found: 2,
                    expected: 3
                }
            ),
            "{err}"
        );
        let err = read(&whole[..], "checkout").unwrap_err();
        assert!(
            err.to_string().contains("saved by service \"frontend\""),
            "{err}"
        );
    }

    #[test]
    fn writing_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("augur-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.jsonl");
        let a: Vec<Context> = (0..2).map(context).collect();
        write_path(
            &path,
            "frontend",
            1,
            &a.iter().collect::<Vec<_>>(),
            serde_json::Value::Null,
        )
        .unwrap();
        let b: Vec<Context> = (5..9).map(context).collect();
        write_path(
            &path,
            "frontend",
            2,
            &b.iter().collect::<Vec<_>>(),
            serde_json::Value::Null,
        )
        .unwrap();
        let state = read_path(&path, "frontend").unwrap();
        assert_eq!(state.contexts, b);
        assert!(!dir.join("state.jsonl.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
