//! The resource manager: dependencies that run as containers augur starts
//! and stops. `docker.rs` is the only place that talks to Docker; `pool.rs`
//! keeps each dependency's instances: cold starts shared by every waiting
//! call, readiness, least-in-flight balancing, keep-alive reclamation.

pub mod docker;
pub mod pool;

use std::collections::HashMap;
use std::net::SocketAddr;

use async_trait::async_trait;

/// Labels on every container augur creates; augur touches no other.
pub const LABEL_MANAGED: &str = "augur.managed";
pub const LABEL_SERVICE: &str = "augur.service";
pub const LABEL_DEPENDENCY: &str = "augur.dependency";

/// What to run for one dependency.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The augur service that owns it (`service.name`).
    pub service: String,
    pub dependency: String,
    pub image: String,
    pub args: Vec<String>,
    /// The port the container listens on.
    pub port: u16,
}

impl Spec {
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_SERVICE.to_string(), self.service.clone()),
            (LABEL_DEPENDENCY.to_string(), self.dependency.clone()),
        ])
    }
}

/// A started container, reachable on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    pub addr: SocketAddr,
}

/// Why a container operation failed: which operation, and Docker's word.
#[derive(Debug, Clone, thiserror::Error)]
#[error("docker {operation} ({subject}): {reason}")]
pub struct ResourceError {
    pub operation: &'static str,
    pub subject: String,
    pub reason: String,
}

/// What the pools need from a container engine.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Creates and starts a container, publishing its port on 127.0.0.1.
    async fn start(&self, spec: &Spec) -> Result<Started, ResourceError>;
    /// Stops and removes a container.
    async fn stop(&self, id: &str) -> Result<(), ResourceError>;
    /// Containers labelled for `service`, running or not.
    async fn owned(&self, service: &str) -> Result<Vec<String>, ResourceError>;
}
