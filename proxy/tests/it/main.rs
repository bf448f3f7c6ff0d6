//! augur's integration tests: the real `augur` binary between real HTTP
//! clients and servers on 127.0.0.1, and a real OTLP receiver.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod branches;
mod cli;
mod clients;
mod containers;
mod contexts;
mod differential;
mod failures;
mod fidelity;
mod grpc;
mod learning;
mod logs;
mod names;
mod passthrough;
mod speculation;
mod stat;
mod state;
mod support;
mod swarm;
mod telemetry;
mod tls;
