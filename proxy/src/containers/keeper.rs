//! The background service that keeps every pool: keep-alive, pre-warm and
//! waste every 100 ms, Docker stats every `stats_interval`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::pool::ContainerPool;

pub(crate) struct Keeper {
    pub(crate) pools: Vec<Arc<ContainerPool>>,
    pub(crate) stats_interval: Duration,
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
    }
}
