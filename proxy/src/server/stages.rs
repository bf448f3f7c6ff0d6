//! The proxy listeners as one pingora service that stops in two stages.
//! The ingress closes as soon as shutdown begins (the lifecycle's
//! `closing`): new connections are refused and kept-alive ones close after
//! their current request. The egress listeners close only when pingora's
//! own shutdown reaches them, which the drain holds back until the service
//! has gone quiet (`ops/shutdown.rs`): a service still finishing its work
//! after SIGTERM can reach its dependencies.
//!
//! Both stages run on the same `proxy.threads` threads, as one service did
//! (`http/listeners.rs` says why).

use async_trait::async_trait;
use pingora::server::ListenFds;
use pingora::server::ShutdownWatch;
use pingora::services::Service as PingoraService;
use pingora::services::listening::Service;
use tokio::sync::watch;

use crate::http::listeners::Listeners;

/// The ingress listener, then the egress listeners (none when the service
/// has no dependencies).
pub(super) struct Staged {
    pub(super) ingress: Service<Listeners>,
    pub(super) egress: Option<Service<Listeners>>,
    /// Turns true when shutdown begins.
    pub(super) closing: watch::Receiver<bool>,
    pub(super) threads: usize,
}

#[async_trait]
impl PingoraService for Staged {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let Staged {
            ingress,
            egress,
            closing,
            ..
        } = self;
        let ingress_shutdown = either(closing.clone(), shutdown.clone());
        let ingress =
            PingoraService::start_service(ingress, fds.clone(), ingress_shutdown, listeners_per_fd);
        match egress {
            Some(egress) => {
                let egress = PingoraService::start_service(egress, fds, shutdown, listeners_per_fd);
                tokio::join!(ingress, egress);
            }
            None => ingress.await,
        }
    }

    fn name(&self) -> &str {
        "proxy"
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        let mut all = PingoraService::listen_addresses(&self.ingress).unwrap_or_default();
        if let Some(egress) = &self.egress {
            all.extend(PingoraService::listen_addresses(egress).unwrap_or_default());
        }
        Some(all)
    }
}

/// A watch that turns true when either `a` or `b` does. A watch whose
/// sender is gone never turns.
fn either(a: watch::Receiver<bool>, b: watch::Receiver<bool>) -> ShutdownWatch {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            () = turned(a) => {}
            () = turned(b) => {}
        }
        tx.send_replace(true);
    });
    rx
}

async fn turned(mut w: watch::Receiver<bool>) {
    if w.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
