//! Execution contexts: one per inbound request, keyed by its trace id, that
//! collect every dependency call the service makes while handling it.
//! `records.rs` is what a context holds; `table.rs` keeps the open ones,
//! bounded by count, age and calls, and hands closed ones on.

mod records;
mod table;

pub(crate) use records::{CallOutcome, CallRecord, Closed, InboundRecord, Json, parse_json};
pub(crate) use table::{ContextTable, Limits, Recorded};

/// A trace id, the key of a context.
pub(crate) type TraceKey = u128;
