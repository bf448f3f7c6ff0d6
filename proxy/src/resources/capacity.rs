//! The limit over every container augur runs: how many, and how much
//! memory their limits add up to. When it is reached, work is ranked by a
//! priority value: a real call outranks everything; a prestart is worth its
//! prediction's probability × the dependency's criticality; a scale-up is
//! worth the criticality. An idle instance can be stopped to make room for
//! work worth more than it (see `ContainerPool::idle_value`).

use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::pool::ContainerPool;

/// What a real call is worth: more than anything speculative.
pub const CALL: f64 = f64::INFINITY;

#[derive(Debug, Default)]
struct Used {
    containers: usize,
    memory: u64,
}

pub struct Capacity {
    max_containers: usize,
    max_memory: Option<u64>,
    used: Mutex<Used>,
    freed: Notify,
    pools: Mutex<Vec<Weak<ContainerPool>>>,
}

/// Why no room could be made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("at capacity ({0}), and nothing running is worth less")]
pub struct Full(pub String);

impl Capacity {
    pub fn new(max_containers: usize, max_memory: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            max_containers,
            max_memory,
            used: Mutex::new(Used::default()),
            freed: Notify::new(),
            pools: Mutex::new(Vec::new()),
        })
    }

    pub fn register(&self, pool: &Arc<ContainerPool>) {
        self.pools.lock().push(Arc::downgrade(pool));
    }

    fn try_take(&self, memory: u64) -> bool {
        let mut used = self.used.lock();
        let fits = used.containers < self.max_containers
            && self
                .max_memory
                .is_none_or(|max| used.memory.saturating_add(memory) <= max);
        if fits {
            used.containers += 1;
            used.memory += memory;
        }
        fits
    }

    /// What is used of what is allowed, for errors.
    pub fn describe(&self) -> String {
        let used = self.used.lock();
        match self.max_memory {
            Some(max) => format!(
                "{} of {} containers, {} of {} bytes of memory",
                used.containers, self.max_containers, used.memory, max
            ),
            None => format!("{} of {} containers", used.containers, self.max_containers),
        }
    }

    /// Room for one container using `memory`, for work worth `priority`.
    /// Idle instances worth less are stopped to make room. A real call
    /// (priority [`CALL`]) waits for room until `deadline`; other work
    /// gives up at once.
    pub async fn reserve(&self, memory: u64, priority: f64, deadline: Instant) -> Result<(), Full> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(memory) {
                return Ok(());
            }
            if self.evict_one(priority).await {
                continue;
            }
            if priority < CALL {
                return Err(Full(self.describe()));
            }
            if tokio::time::timeout_at(deadline.into(), freed)
                .await
                .is_err()
            {
                return Err(Full(self.describe()));
            }
        }
    }

    /// Stops the idle instance worth least, if it is worth less than
    /// `priority`. Returns whether one was stopped.
    async fn evict_one(&self, priority: f64) -> bool {
        let pools: Vec<Arc<ContainerPool>> =
            self.pools.lock().iter().filter_map(Weak::upgrade).collect();
        let victim = pools
            .iter()
            .filter_map(|p| p.idle_value().map(|(value, id)| (value, id, p)))
            .filter(|(value, _, _)| *value < priority)
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match victim {
            Some((_, id, pool)) => pool.evict(&id).await,
            None => false,
        }
    }

    /// Tells the calls waiting for room to look again (an instance went
    /// idle and may be displaced now).
    pub fn wake(&self) {
        self.freed.notify_waiters();
    }

    pub fn release(&self, memory: u64) {
        {
            let mut used = self.used.lock();
            used.containers = used.containers.saturating_sub(1);
            used.memory = used.memory.saturating_sub(memory);
        }
        self.freed.notify_waiters();
    }

    pub fn max_containers(&self) -> usize {
        self.max_containers
    }

    pub fn max_memory(&self) -> Option<u64> {
        self.max_memory
    }

    /// Containers and memory reserved now.
    pub fn used(&self) -> (usize, u64) {
        let used = self.used.lock();
        (used.containers, used.memory)
    }
}
