//! Execution contexts: one per inbound request, augur's own, that collect
//! every dependency call the service makes while handling it (calls find
//! theirs by the trace id they carry).
//! `records.rs` is what a context holds; `table.rs` keeps the open ones,
//! bounded by count, age and calls, tells which one a call belongs to, and
//! hands closed ones on; `budget.rs` bounds the bytes of the bodies they
//! keep for the learner.

mod budget;
mod records;
mod table;

pub(crate) use budget::{BodyBudget, Charge};
pub(crate) use records::{CallOutcome, CallRecord, Closed, InboundRecord, Json, parse_json};
pub(crate) use table::{Attached, ContextTable, Limits, Recorded};

/// A W3C trace id, as the calls of a context carry it.
pub(crate) type TraceKey = u128;

/// One inbound request's context: augur's own serial number (unique for
/// the life of the process) and the trace id its calls carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ContextId {
    pub(crate) trace: TraceKey,
    pub(crate) serial: u64,
}
