//! A container engine for tests: each "container" is a bound local
//! socket, ready for a TCP probe at once.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::backend::{Backend, ResourceError, Spec, Started, Usage};

/// Containers as bound local sockets: ready for a TCP probe at once.
#[derive(Default)]
pub(crate) struct Fake {
    pub(crate) running: Mutex<HashMap<String, tokio::net::TcpListener>>,
    next: AtomicUsize,
    /// What stats report, in thousandths of a core.
    pub(crate) cpu: AtomicUsize,
}

#[async_trait]
impl Backend for Fake {
    async fn start(&self, _spec: &Spec) -> Result<Started, ResourceError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let id = format!("fake{:08}", self.next.fetch_add(1, Ordering::SeqCst));
        self.running.lock().insert(id.clone(), listener);
        Ok(Started { id, addr })
    }
    async fn stop(&self, id: &str) -> Result<(), ResourceError> {
        self.running.lock().remove(id);
        Ok(())
    }
    async fn owned(&self, _service: &str) -> Result<Vec<String>, ResourceError> {
        Ok(self.running.lock().keys().cloned().collect())
    }
    async fn stats(&self, _id: &str) -> Result<Usage, ResourceError> {
        Ok(Usage {
            cpu_cores: self.cpu.load(Ordering::SeqCst) as f64 / 1000.0,
            memory_bytes: 32 << 20,
        })
    }
}
