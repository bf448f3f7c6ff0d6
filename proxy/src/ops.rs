//! What an operator sees and steers: the admin API (`admin.rs`), Prometheus
//! metrics (`metrics.rs`), logs and OpenTelemetry spans (`telemetry.rs`), the
//! access log (`access.rs`),
//! readiness and draining (`lifecycle.rs`, `shutdown.rs`). Nothing here
//! decides how a request is answered.

pub(crate) mod access;
pub(crate) mod admin;
pub(crate) mod lifecycle;
pub(crate) mod metrics;
pub(crate) mod shutdown;
pub(crate) mod telemetry;
