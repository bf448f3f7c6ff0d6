//! What a pool needs from a container engine (the [`Backend`] trait), what
//! it asks for ([`Spec`]) and what it gets back; the labels that mark what
//! augur owns.

use std::collections::HashMap;
use std::net::SocketAddr;

use async_trait::async_trait;

/// Labels on every container augur creates; augur touches no other.
pub(crate) const LABEL_MANAGED: &str = "augur.managed";
pub(crate) const LABEL_SERVICE: &str = "augur.service";
pub(crate) const LABEL_DEPENDENCY: &str = "augur.dependency";

/// A container id as `docker ps` shows it.
pub(crate) fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// What to run for one dependency.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The augur service that owns it (`service.name`).
    pub(crate) service: String,
    pub(crate) dependency: String,
    pub(crate) image: String,
    pub(crate) args: Vec<String>,
    /// The port the container listens on.
    pub(crate) port: u16,
    /// CPU limit, in cores.
    pub(crate) cpus: Option<f64>,
    /// Memory limit, in bytes.
    pub(crate) memory: Option<u64>,
    /// The instances wanted at least and at most (a shared engine's
    /// replica count stays within them).
    pub(crate) min_instances: usize,
    pub(crate) max_instances: usize,
    /// On a swarm: the service of the user's stack to use.
    pub(crate) swarm_service: Option<String>,
}

impl Spec {
    pub(crate) fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_SERVICE.to_string(), self.service.clone()),
            (LABEL_DEPENDENCY.to_string(), self.dependency.clone()),
        ])
    }
}

/// A started container, reachable on 127.0.0.1.
#[derive(Debug, Clone)]
pub(crate) struct Started {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
}

/// What a running container uses, from Docker stats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    /// CPU, in cores (1.0 is one core busy).
    pub(crate) cpu_cores: f64,
    pub(crate) memory_bytes: u64,
}

/// Why a container operation failed: which operation, and Docker's word.
#[derive(Debug, Clone, thiserror::Error)]
#[error("docker {operation} ({subject}): {reason}")]
pub(crate) struct ResourceError {
    pub(crate) operation: &'static str,
    pub(crate) subject: String,
    pub(crate) reason: String,
}

/// What the pools need from a container engine.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    /// Creates and starts a container, publishing its port on 127.0.0.1.
    async fn start(&self, spec: &Spec) -> Result<Started, ResourceError>;
    /// Stops and removes a container.
    async fn stop(&self, id: &str) -> Result<(), ResourceError>;
    /// Containers labelled for `service`, running or not.
    async fn owned(&self, service: &str) -> Result<Vec<String>, ResourceError>;
    /// What a running container uses now.
    async fn stats(&self, id: &str) -> Result<Usage, ResourceError>;
    /// A pool for `spec` exists. An engine whose instances other sidecars
    /// share keeps its count in order from now on, before any call (after
    /// every sidecar died, the first to start again drops their expired
    /// demands).
    fn adopt(&self, _spec: &Spec) {}
    /// This sidecar used the dependency: its calls are in flight
    /// (`busy`), or the last of them ended at `unix_ms`. An engine whose
    /// instances other sidecars share tells them.
    fn note_use(&self, _spec: &Spec, _busy: bool, _unix_ms: u64) {}
    /// When another sidecar sharing the dependency last used it (unix ms),
    /// as far as this one knows: an idle gap of this sidecar's that the
    /// others' calls broke is not the dependency's idle gap. `None` for a
    /// dependency that is this sidecar's alone.
    fn others_last_use(&self, _spec: &Spec) -> Option<u64> {
        None
    }
}
