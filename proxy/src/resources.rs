//! The resource manager: dependencies that run as containers augur starts
//! and stops. `docker.rs` is the only place that talks to Docker; `pool.rs`
//! keeps each dependency's instances: cold starts shared by every waiting
//! call, readiness, least-in-flight balancing, scaling, keep-alive
//! reclamation (`keepalive.rs` learns it); `capacity.rs` holds the global
//! limit and decides what gets room when it is short.

pub mod capacity;
pub mod docker;
pub mod keepalive;
pub mod pool;

use std::collections::HashMap;
use std::net::SocketAddr;

use async_trait::async_trait;

/// Labels on every container augur creates; augur touches no other.
pub const LABEL_MANAGED: &str = "augur.managed";
pub const LABEL_SERVICE: &str = "augur.service";
pub const LABEL_DEPENDENCY: &str = "augur.dependency";

/// A container id as `docker ps` shows it.
pub fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

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
    /// CPU limit, in cores.
    pub cpus: Option<f64>,
    /// Memory limit, in bytes.
    pub memory: Option<u64>,
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

/// What a running container uses, from Docker stats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU, in cores (1.0 is one core busy).
    pub cpu_cores: f64,
    pub memory_bytes: u64,
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
    /// What a running container uses now.
    async fn stats(&self, id: &str) -> Result<Usage, ResourceError>;
}
