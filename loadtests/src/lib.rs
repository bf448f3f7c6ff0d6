//! augur's demo and benchmarks. Everything here talks to augur only over
//! HTTP, as a user's services would: it starts real processes (augur,
//! nginx, haproxy, the demo services) on 127.0.0.1 and measures them.
//!
//! Start with `main.rs` for the commands; `app_demo.rs` runs a demo
//! application (`hotel.rs`, `shop.rs`; `app.rs` is what one is) direct and
//! through augur; `demo.rs` is the tour,
//! `bench.rs` the pass-through benchmark, `containers_bench.rs` the
//! container-policy benchmark, `load.rs` the load generator,
//! `fuzz_http.rs` the raw-socket HTTP fuzzer, `chaos.rs` the chaos soak, `hostile.rs` the slowloris and
//! junk-routes runs.

pub mod app;
pub mod app_demo;
pub mod bench;
pub mod chaos;
pub mod cli;
pub mod containers_bench;
pub mod demo;
pub mod fuzz_http;
pub mod hostile;
pub mod hotel;
pub mod load;
pub mod procs;
pub mod server;
pub mod settings_bench;
pub mod shop;
pub mod sidecars_bench;
pub mod transport;
