//! augur's proxy: the pingora services that front a service and its
//! dependencies, the execution contexts that tie a service's dependency
//! calls to the inbound request that caused them, speculation, the
//! containers augur runs, and everything an operator sees.
//!
//! Read `server.rs` first: it is the story of start-up and names every
//! part. Then, following a request: `http/` (the ingress and egress
//! listeners), `context/` (what a request records), `speculation/` (what
//! is sent ahead and answered from), `dependency.rs` (where a call goes,
//! and the lease on an instance), `containers/` (the resource manager),
//! `learning.rs` (the learner thread), `ops/` (admin API, metrics,
//! telemetry, shutdown). `ARCHITECTURE.md` at the repository's root draws
//! the request path through them.

#![deny(unreachable_pub)]

mod clock;
mod containers;
mod context;
mod dependency;
mod http;
mod learning;
pub mod offline;
mod ops;
mod recent;
mod server;
mod speculation;
pub mod stat;

pub use ops::telemetry::init_logs;
pub use server::run;
