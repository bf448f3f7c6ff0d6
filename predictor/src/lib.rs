//! augur's prediction library: what a call looks like once the parts that
//! vary are taken out (its *shape*), and — as it grows — the sequence models
//! and parameter provenance that say which calls come next.
//!
//! It is a pure library: no I/O, no async runtime, no configuration crate.
//! The proxy feeds it observations and asks it questions. Start with
//! [`shape`], which turns concrete paths into templates such as
//! `/users/{id}/posts`.

pub mod shape;
