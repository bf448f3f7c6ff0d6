//! The limit over every container augur runs: how many, and how much
//! memory their limits add up to. When it is reached, work is ranked by a
//! priority value: a real call outranks everything; a prestart is worth its
//! prediction's probability × the dependency's criticality; a scale-up is
//! worth the criticality. An idle instance can be stopped to make room for
//! work worth more than it; each pool says what its idle instances are
//! worth through [`Tenant`].

use std::sync::{Arc, Weak};
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Something that holds room under the limit and can give some back: a
/// dependency's pool.
#[async_trait]
pub(crate) trait Tenant: Send + Sync {
    /// The idle instance worth least (its worth and id), if any may go.
    fn idle_value(&self) -> Option<(f64, String)>;
    /// Stops the instance `id` to make room, if it is still idle.
    async fn evict(&self, id: &str) -> bool;
}

/// What a real call is worth: more than anything speculative.
pub(crate) const CALL: f64 = f64::INFINITY;

#[derive(Debug, Default)]
struct Used {
    containers: usize,
    memory: u64,
}

pub(crate) struct Capacity {
    max_containers: usize,
    max_memory: Option<u64>,
    used: Mutex<Used>,
    freed: Notify,
    tenants: Mutex<Vec<Weak<dyn Tenant>>>,
}

/// Why no room could be made: what was used of what is allowed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("at capacity ({}), and nothing running is worth less", describe(self))]
pub(crate) struct Full {
    containers: usize,
    max_containers: usize,
    memory: u64,
    max_memory: Option<u64>,
}

fn describe(full: &Full) -> String {
    match full.max_memory {
        Some(max) => format!(
            "{} of {} containers, {} of {} bytes of memory",
            full.containers, full.max_containers, full.memory, max
        ),
        None => format!("{} of {} containers", full.containers, full.max_containers),
    }
}

impl Capacity {
    pub(crate) fn new(max_containers: usize, max_memory: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            max_containers,
            max_memory,
            used: Mutex::new(Used::default()),
            freed: Notify::new(),
            tenants: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn register(&self, tenant: Weak<dyn Tenant>) {
        self.tenants.lock().push(tenant);
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

    /// What is used of what is allowed, as the error that says so.
    pub(crate) fn full(&self) -> Full {
        let used = self.used.lock();
        Full {
            containers: used.containers,
            max_containers: self.max_containers,
            memory: used.memory,
            max_memory: self.max_memory,
        }
    }

    /// Room for one container using `memory`, for work worth `priority`.
    /// Idle instances worth less are stopped to make room. A real call
    /// (priority [`CALL`]) waits for room until `deadline`; other work
    /// gives up at once.
    pub(crate) async fn reserve(
        &self,
        memory: u64,
        priority: f64,
        deadline: Instant,
    ) -> Result<(), Full> {
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
                return Err(self.full());
            }
            if tokio::time::timeout_at(deadline.into(), freed)
                .await
                .is_err()
            {
                return Err(self.full());
            }
        }
    }

    /// Stops the idle instance worth least, if it is worth less than
    /// `priority`. Returns whether one was stopped.
    async fn evict_one(&self, priority: f64) -> bool {
        let tenants: Vec<Arc<dyn Tenant>> = self
            .tenants
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let victim = tenants
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
    pub(crate) fn wake(&self) {
        self.freed.notify_waiters();
    }

    pub(crate) fn release(&self, memory: u64) {
        {
            let mut used = self.used.lock();
            used.containers = used.containers.saturating_sub(1);
            used.memory = used.memory.saturating_sub(memory);
        }
        self.freed.notify_waiters();
    }

    pub(crate) fn max_containers(&self) -> usize {
        self.max_containers
    }

    pub(crate) fn max_memory(&self) -> Option<u64> {
        self.max_memory
    }

    /// Containers and memory reserved now.
    pub(crate) fn used(&self) -> (usize, u64) {
        let used = self.used.lock();
        (used.containers, used.memory)
    }
}
