//! The background service that expires abandoned contexts once a second
//! (and forgets what was speculated for them).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::context::ContextTable;
use crate::ops::metrics::Metrics;
use crate::speculation::Speculation;

pub(super) struct Sweeper {
    contexts: Arc<ContextTable>,
    speculation: Arc<Speculation>,
    metrics: Arc<Metrics>,
}

impl Sweeper {
    pub(super) fn new(common: &crate::http::Common) -> Self {
        Self {
            contexts: common.contexts.clone(),
            speculation: common.speculation.clone(),
            metrics: common.metrics.clone(),
        }
    }

    fn sweep(&self) {
        let expired = self.contexts.expire();
        for trace in &expired {
            self.speculation.close(*trace);
        }
        if !expired.is_empty() {
            self.metrics.contexts_expired.inc_by(expired.len() as u64);
        }
        self.metrics
            .contexts_open
            .set(self.contexts.open_count() as i64);
    }
}

#[async_trait]
impl BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(),
                _ = shutdown.changed() => return,
            }
        }
    }
}
