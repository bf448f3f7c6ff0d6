//! The background service that keeps every pool: keep-alive, pre-warm and
//! waste every 100 ms, Docker stats every `stats_interval`, and on a swarm
//! this sidecar's demands renewed every [`RENEW`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::docker::swarm::{RENEW, SwarmBackend};
use super::pool::ContainerPool;

pub(crate) struct Keeper {
    pub(crate) pools: Vec<Arc<ContainerPool>>,
    pub(crate) stats_interval: Duration,
    pub(crate) swarm: Option<Arc<SwarmBackend>>,
}

#[async_trait]
impl BackgroundService for Keeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pools = self.pools.clone();
        let interval = self.stats_interval;
        // Stats take a second each (Docker samples twice): their own task.
        let stats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                futures_util::future::join_all(pools.iter().map(|p| p.poll_stats())).await;
            }
        });
        // Demands on a swarm: renewed on their own task (a write may wait
        // for the engine), each failure said once.
        let renewal = self.swarm.clone().map(|swarm| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RENEW);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut failing: Option<String> = None;
                loop {
                    tick.tick().await;
                    match swarm.renew().await {
                        Ok(()) => {
                            if failing.take().is_some() {
                                tracing::info!("swarm: demands renewed again");
                            }
                        }
                        Err(e) => {
                            let text = e.to_string();
                            if failing.as_deref() != Some(text.as_str()) {
                                tracing::warn!(
                                    "swarm: cannot renew this sidecar's demands: {text}"
                                );
                                failing = Some(text);
                            }
                        }
                    }
                }
            })
        });
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for pool in &self.pools {
                        pool.maintain().await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        stats.abort();
        if let Some(r) = renewal {
            r.abort();
        }
    }
}
