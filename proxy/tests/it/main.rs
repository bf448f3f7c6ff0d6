//! augur's integration tests: the real `augur` binary between real HTTP
//! clients and servers on 127.0.0.1, and a real OTLP receiver.

mod cli;
mod contexts;
mod failures;
mod passthrough;
mod support;
mod telemetry;
