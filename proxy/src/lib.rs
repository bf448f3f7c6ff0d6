//! augur's proxy: the pingora services that front a service and its
//! dependencies, the execution contexts that tie a service's dependency
//! calls to the inbound request that caused them, and everything an
//! operator sees (metrics, traces, the admin API).
//!
//! Read `server.rs` first: it is the story of start-up and names every
//! piece. The request path is `ingress.rs` (inbound requests) and
//! `egress.rs` (dependency calls); `context.rs` holds what they record.

pub mod admin;
pub mod capture;
pub mod context;
pub mod egress;
pub mod failure;
pub mod governor;
pub mod headers;
pub mod ingress;
pub mod learning;
pub mod metrics;
pub mod offline;
pub mod prefetch;
pub mod recent;
pub mod request;
pub mod resources;
pub mod server;
pub mod shutdown;
pub mod speculation;
pub mod state;
pub mod telemetry;
pub mod traceparent;
pub mod upstream;
