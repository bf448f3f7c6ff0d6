//! The access log (`log.access`): one line per inbound request and per
//! dependency call, in `log.format`. The request path only formats its line
//! and hands it to a thread of its own, which writes and flushes; a full
//! queue drops the line (counted in `augur_access_log_dropped_total`)
//! rather than slow a request. Off by default, and then it costs one
//! branch.
//!
//! A line holds what says how the request went — trace id, route,
//! dependency, method, status, outcome, latency, bytes, how far ahead the
//! speculation that answered it was sent — and never a header, a path or a
//! query, where credentials travel.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use augur_config::{AccessLog as Destination, Log, LogFormat};

/// Lines waiting for the writer at most.
const QUEUE: usize = 16 * 1024;

pub(crate) struct AccessLog {
    sink: Option<SyncSender<Message>>,
    format: LogFormat,
    dropped: prometheus::IntCounter,
}

enum Message {
    Line(String),
    /// Answer once everything before has been written.
    Flush(SyncSender<()>),
}

/// What one line says.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Entry<'a> {
    /// `inbound` or `call`.
    pub(crate) kind: &'static str,
    /// 32 hex digits, as in `traceparent`.
    #[serde(serialize_with = "trace_hex")]
    pub(crate) trace_id: Option<u128>,
    pub(crate) route: Option<&'a str>,
    pub(crate) dependency: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) status: u16,
    /// A call's: `hit`, `coalesced`, `miss` or `bypass`.
    pub(crate) outcome: Option<&'a str>,
    #[serde(rename = "latency_ms", serialize_with = "millis")]
    pub(crate) latency: Duration,
    /// Response body bytes.
    pub(crate) bytes: u64,
    /// For a call answered from speculation: how long before the call the
    /// speculation was sent.
    #[serde(rename = "lead_ms", serialize_with = "opt_millis")]
    pub(crate) lead: Option<Duration>,
}

impl AccessLog {
    /// Opens the destination `log` names and starts its writer; an access
    /// log that is off starts nothing.
    pub(crate) fn open(log: &Log, dropped: prometheus::IntCounter) -> anyhow::Result<Self> {
        let out: Box<dyn Write + Send> = match &log.access {
            Destination::Off => {
                return Ok(Self {
                    sink: None,
                    format: log.format,
                    dropped,
                });
            }
            Destination::Stderr => Box::new(std::io::stderr()),
            Destination::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("log.access: cannot open {}", path.display()))?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write(rx, out))
            .context("cannot start the access log's writer")?;
        Ok(Self {
            sink: Some(tx),
            format: log.format,
            dropped,
        })
    }

    /// Whether lines are written: build an [`Entry`] only then.
    pub(crate) fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    pub(crate) fn write(&self, entry: &Entry<'_>) {
        let Some(sink) = &self.sink else {
            return;
        };
        let line = format(entry, self.format, SystemTime::now());
        match sink.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.inc(),
            Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Waits, at most `within`, until every line handed over is written.
    pub(crate) fn flush(&self, within: Duration) {
        let Some(sink) = &self.sink else {
            return;
        };
        let (tx, rx) = mpsc::sync_channel(1);
        if sink.try_send(Message::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(within);
        }
    }
}

/// The writer: lines as they come, flushed whenever the queue is empty.
fn write(rx: Receiver<Message>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    if let Err(e) = out.write_all(line.as_bytes()) {
                        if !std::mem::replace(&mut failed, true) {
                            tracing::error!("cannot write the access log: {e}");
                        }
                    }
                }
                Message::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// One line, newline included.
pub(crate) fn format(entry: &Entry<'_>, format: LogFormat, now: SystemTime) -> String {
    let time = humantime::format_rfc3339_millis(now);
    match format {
        LogFormat::Json => {
            #[derive(serde::Serialize)]
            struct Line<'e, 'a> {
                time: String,
                #[serde(flatten)]
                entry: &'e Entry<'a>,
            }
            let line = Line {
                time: time.to_string(),
                entry,
            };
            let mut text = serde_json::to_string(&line).unwrap_or_default();
            text.push('\n');
            text
        }
        LogFormat::Text => {
            use std::fmt::Write as _;
            let mut text = format!("{time} access kind={}", entry.kind);
            if let Some(id) = entry.trace_id {
                let _ = write!(text, " trace_id={id:032x}");
            }
            if let Some(route) = entry.route {
                let _ = write!(text, " route={route:?}");
            }
            if let Some(dependency) = entry.dependency {
                let _ = write!(text, " dependency={dependency}");
            }
            let _ = write!(
                text,
                " method={} status={}",
                entry.method.escape_debug(),
                entry.status
            );
            if let Some(outcome) = entry.outcome {
                let _ = write!(text, " outcome={outcome}");
            }
            let _ = write!(
                text,
                " latency_ms={:.3} bytes={}",
                ms(entry.latency),
                entry.bytes
            );
            if let Some(lead) = entry.lead {
                let _ = write!(text, " lead_ms={:.3}", ms(lead));
            }
            text.push('\n');
            text
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((ms(*d) * 1000.0).round() / 1000.0)
}

fn opt_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}

fn trace_hex<S: serde::Serializer>(id: &Option<u128>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(&format_args!("{id:032x}")),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Entry<'static> {
        Entry {
            kind: "call",
            trace_id: Some(0x4bf92f3577b34da6a3ce929d0e0e4736),
            route: Some("GET /profile/{id}"),
            dependency: Some("users"),
            method: "GET",
            status: 200,
            outcome: Some("hit"),
            latency: Duration::from_micros(1250),
            bytes: 37,
            lead: Some(Duration::from_millis(12)),
        }
    }

    const NOW: Duration = Duration::from_millis(1_796_390_400_123);

    #[test]
    fn a_text_line_has_every_field_in_order() {
        let line = format(&call(), LogFormat::Text, SystemTime::UNIX_EPOCH + NOW);
        assert_eq!(
            line,
            "2026-12-04T13:20:00.123Z access kind=call trace_id=4bf92f3577b34da6a3ce929d0e0e4736 route=\"GET /profile/{id}\" dependency=users method=GET status=200 outcome=hit latency_ms=1.250 bytes=37 lead_ms=12.000\n"
        );
    }

    #[test]
    fn a_json_line_is_one_object() {
        let line = format(&call(), LogFormat::Json, SystemTime::UNIX_EPOCH + NOW);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-12-04T13:20:00.123Z");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["latency_ms"], 1.25);
        assert_eq!(v["lead_ms"], 12.0);
        assert_eq!(v["outcome"], "hit");
        let inbound = Entry {
            kind: "inbound",
            trace_id: None,
            dependency: None,
            outcome: None,
            lead: None,
            ..call()
        };
        let v: serde_json::Value = serde_json::from_str(&format(
            &inbound,
            LogFormat::Json,
            SystemTime::UNIX_EPOCH + NOW,
        ))
        .unwrap();
        assert!(v["trace_id"].is_null() && v["lead_ms"].is_null());
    }

    #[test]
    fn a_route_with_quotes_stays_one_field() {
        let entry = Entry {
            route: Some("GET /a\"b c\n"),
            ..call()
        };
        let line = format(&entry, LogFormat::Text, SystemTime::UNIX_EPOCH + NOW);
        assert!(line.contains(r#"route="GET /a\"b c\n""#), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
    }
}
