//! What a context records: its inbound request, each dependency call and
//! how augur answered it, and the context as it closes. Bodies are kept for
//! the learner and never shown; credentials are keyed hashes.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::ContextId;

/// How augur answered a dependency call
/// (`augur_dependency_calls_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CallOutcome {
    /// From a completed speculation.
    Hit,
    /// By joining a speculation still in flight.
    Coalesced,
    /// augur went upstream for it.
    Miss,
    /// Not part of any context.
    Bypass,
}

impl CallOutcome {
    /// Every outcome, in [`index`](Self::index) order.
    pub(crate) const ALL: [CallOutcome; 4] = [
        CallOutcome::Hit,
        CallOutcome::Coalesced,
        CallOutcome::Miss,
        CallOutcome::Bypass,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Hit => "hit",
            CallOutcome::Coalesced => "coalesced",
            CallOutcome::Miss => "miss",
            CallOutcome::Bypass => "bypass",
        }
    }
}

/// The inbound request of a context, with credentials already redacted.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InboundRecord {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) route: Arc<str>,
    /// Header names and values in arrival order; credentials are keyed
    /// hashes (`keyed:…`).
    pub(crate) headers: Vec<(String, String)>,
    /// The JSON body, captured for the learner (bounded); never shown.
    #[serde(skip)]
    pub(crate) body: Option<Json>,
    /// The headers with their real values, for writing out predicted calls
    /// while the context is open; never shown, dropped when it closes.
    #[serde(skip)]
    pub(crate) raw_headers: Vec<(String, String)>,
}

/// A parsed JSON body, shared without copying (the predictor's own type).
pub(crate) use augur_predictor::Json;

/// Parses a captured body; `None` when it is not JSON after all.
pub(crate) fn parse_json(body: Option<Bytes>) -> Option<Json> {
    body.and_then(|b| serde_json::from_slice(&b).ok())
        .map(Arc::new)
}

/// One dependency call made while a context was open.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CallRecord {
    pub(crate) dependency: Arc<str>,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    /// The request headers that can change the answer; credentials are
    /// keyed hashes.
    pub(crate) headers: Vec<(String, String)>,
    /// 0 when no response came (transport error).
    pub(crate) status: u16,
    pub(crate) outcome: CallOutcome,
    /// Microseconds from the inbound request's arrival to this call's.
    pub(crate) start_offset_us: u64,
    pub(crate) duration_us: u64,
    pub(crate) response_bytes: u64,
    /// The JSON request body, captured for the learner (bounded); never
    /// shown.
    #[serde(skip)]
    pub(crate) request_body: Option<Json>,
    /// The JSON response body, captured for the learner (bounded); never
    /// shown.
    #[serde(skip)]
    pub(crate) response: Option<Json>,
}

/// A context after its inbound response ended.
#[derive(Debug, Serialize)]
pub(crate) struct ClosedContext {
    pub(crate) trace_id: String,
    pub(crate) started_unix_ms: u64,
    pub(crate) duration_us: u64,
    pub(crate) status: u16,
    /// Another inbound request with the same trace id was open meanwhile:
    /// calls carrying it were proxied unrecorded, and the context is not
    /// learned from.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) ambiguous: bool,
    pub(crate) inbound: InboundRecord,
    pub(crate) calls: Vec<CallRecord>,
    /// Calls not recorded because the context held `max_calls` already.
    pub(crate) calls_dropped: u32,
}

/// A closed context with the bodies the learner needs. The history keeps
/// the context without them.
#[derive(Debug)]
pub(crate) struct Closed {
    pub(crate) id: ContextId,
    pub(crate) context: Arc<ClosedContext>,
    pub(crate) inbound_body: Option<Json>,
    /// The captured request body of each call, in call order.
    pub(crate) request_bodies: Vec<Option<Json>>,
    /// The captured response of each call, in call order.
    pub(crate) responses: Vec<Option<Json>>,
    /// The bodies' bytes, held against the budget until this is dropped.
    pub(crate) _held: super::Charge,
}

#[cfg(test)]
mod tests {
    use super::CallOutcome;

    #[test]
    fn every_outcome_sits_at_its_index() {
        for (i, o) in CallOutcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
    }
}
