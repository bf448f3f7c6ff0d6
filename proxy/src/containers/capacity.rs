//! The limit over every container augur runs: how many, and how much
//! memory and CPU they hold. A container holds its [`Room`]: its `memory`
//! and `cpus` limits, or once its dependency's instances have been seen
//! using less, what they are predicted to use (see `pool.rs`). When the
//! limit is reached, work is ranked by a priority value: a real call
//! outranks everything; a prestart is worth its prediction's probability ×
//! the dependency's criticality; a scale-up is worth the criticality. An
//! idle instance can be stopped to make room for work worth more than it;
//! each pool says what its idle instances are worth, and hold, through
//! [`Tenant`]. Of those worth less, one whose room alone makes the work
//! fit goes first (the least worth of them), so that one small instance is
//! not stopped in vain before the large one that had to go anyway.

use std::sync::{Arc, Weak};
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// What one container holds of the limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub(crate) struct Room {
    pub(crate) memory: u64,
    pub(crate) cpus: f64,
}

/// An idle instance that may be stopped to make room.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Idle {
    /// What keeping it is worth.
    pub(crate) worth: f64,
    pub(crate) id: String,
    /// What stopping it gives back.
    pub(crate) room: Room,
}

/// Something that holds room under the limit and can give some back: a
/// dependency's pool.
#[async_trait]
pub(crate) trait Tenant: Send + Sync {
    /// Its idle instances that may go, each with its worth and room.
    fn idle(&self) -> Vec<Idle>;
    /// Stops the instance `id` to make room, if it is still idle.
    async fn evict(&self, id: &str) -> bool;
}

/// What a real call is worth: more than anything speculative.
pub(crate) const CALL: f64 = f64::INFINITY;

#[derive(Debug, Default)]
struct Used {
    containers: usize,
    memory: u64,
    cpus: f64,
}

pub(crate) struct Capacity {
    max_containers: usize,
    max_memory: Option<u64>,
    max_cpus: Option<f64>,
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
    cpus: f64,
    max_cpus: Option<f64>,
}

fn describe(full: &Full) -> String {
    let mut out = format!("{} of {} containers", full.containers, full.max_containers);
    if let Some(max) = full.max_memory {
        out.push_str(&format!(", {} of {} bytes of memory", full.memory, max));
    }
    if let Some(max) = full.max_cpus {
        out.push_str(&format!(", {:.2} of {max} CPUs", full.cpus));
    }
    out
}

impl Capacity {
    pub(crate) fn new(
        max_containers: usize,
        max_memory: Option<u64>,
        max_cpus: Option<f64>,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_containers,
            max_memory,
            max_cpus,
            used: Mutex::new(Used::default()),
            freed: Notify::new(),
            tenants: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn register(&self, tenant: Weak<dyn Tenant>) {
        self.tenants.lock().push(tenant);
    }

    /// Whether `room` fits once `freed` is given back.
    fn fits(&self, used: &Used, room: Room, freed: Option<Room>) -> bool {
        let (containers, memory, cpus) = match freed {
            Some(f) => (
                used.containers.saturating_sub(1),
                used.memory.saturating_sub(f.memory),
                (used.cpus - f.cpus).max(0.0),
            ),
            None => (used.containers, used.memory, used.cpus),
        };
        containers < self.max_containers
            && self
                .max_memory
                .is_none_or(|max| memory.saturating_add(room.memory) <= max)
            // A hair of slack: sums of fractions of a CPU are not exact.
            && self.max_cpus.is_none_or(|max| cpus + room.cpus <= max + 1e-9)
    }

    fn try_take(&self, room: Room) -> bool {
        let mut used = self.used.lock();
        let fits = self.fits(&used, room, None);
        if fits {
            used.containers += 1;
            used.memory += room.memory;
            used.cpus += room.cpus;
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
            cpus: used.cpus,
            max_cpus: self.max_cpus,
        }
    }

    /// Room for one container holding `room`, for work worth `priority`.
    /// Idle instances worth less are stopped to make room. A real call
    /// (priority [`CALL`]) waits for room until `deadline`; other work
    /// gives up at once.
    pub(crate) async fn reserve(
        &self,
        room: Room,
        priority: f64,
        deadline: Instant,
    ) -> Result<(), Full> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(room) {
                return Ok(());
            }
            if self.evict_one(room, priority).await {
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

    /// Stops an idle instance worth less than `priority`, to make room for
    /// `room`: the least worth of those whose room alone makes it fit,
    /// else the least worth of all. Returns whether one was stopped.
    async fn evict_one(&self, room: Room, priority: f64) -> bool {
        let tenants: Vec<Arc<dyn Tenant>> = self
            .tenants
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let candidates: Vec<(Idle, &Arc<dyn Tenant>)> = tenants
            .iter()
            .flat_map(|t| t.idle().into_iter().map(move |i| (i, t)))
            .filter(|(i, _)| i.worth < priority)
            .collect();
        let least = |c: &[(Idle, &Arc<dyn Tenant>)], enough: bool| {
            let used = self.used.lock();
            c.iter()
                .filter(|(i, _)| !enough || self.fits(&used, room, Some(i.room)))
                .min_by(|a, b| a.0.worth.total_cmp(&b.0.worth))
                .map(|(i, t)| (i.id.clone(), Arc::clone(t)))
        };
        let victim = least(&candidates, true).or_else(|| least(&candidates, false));
        match victim {
            Some((id, tenant)) => tenant.evict(&id).await,
            None => false,
        }
    }

    /// Tells the calls waiting for room to look again (an instance went
    /// idle and may be displaced now).
    pub(crate) fn wake(&self) {
        self.freed.notify_waiters();
    }

    pub(crate) fn release(&self, room: Room) {
        {
            let mut used = self.used.lock();
            used.containers = used.containers.saturating_sub(1);
            used.memory = used.memory.saturating_sub(room.memory);
            used.cpus = (used.cpus - room.cpus).max(0.0);
        }
        self.freed.notify_waiters();
    }

    pub(crate) fn max_containers(&self) -> usize {
        self.max_containers
    }

    pub(crate) fn max_memory(&self) -> Option<u64> {
        self.max_memory
    }

    pub(crate) fn max_cpus(&self) -> Option<f64> {
        self.max_cpus
    }

    /// Containers, and the room they hold, now.
    pub(crate) fn used(&self) -> (usize, Room) {
        let used = self.used.lock();
        (
            used.containers,
            Room {
                memory: used.memory,
                cpus: used.cpus,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle instances that leave when evicted, giving back their room.
    struct Idles {
        capacity: Arc<Capacity>,
        idle: Mutex<Vec<Idle>>,
    }

    #[async_trait]
    impl Tenant for Idles {
        fn idle(&self) -> Vec<Idle> {
            self.idle.lock().clone()
        }
        async fn evict(&self, id: &str) -> bool {
            let mut idle = self.idle.lock();
            let Some(at) = idle.iter().position(|i| i.id == id) else {
                return false;
            };
            let gone = idle.remove(at);
            self.capacity.release(gone.room);
            true
        }
    }

    const MIB: u64 = 1 << 20;

    fn mib(n: u64) -> Room {
        Room {
            memory: n * MIB,
            cpus: 0.0,
        }
    }

    #[tokio::test]
    async fn the_instance_whose_room_makes_the_work_fit_goes_not_a_smaller_one_first() {
        let capacity = Capacity::new(8, Some(100 * MIB), None);
        let tenant = Arc::new(Idles {
            capacity: capacity.clone(),
            idle: Mutex::new(Vec::new()),
        });
        for (id, worth, room) in [("small", 0.1, mib(10)), ("large", 0.2, mib(90))] {
            assert!(capacity.try_take(room));
            tenant.idle.lock().push(Idle {
                worth,
                id: id.into(),
                room,
            });
        }
        let as_tenant: Arc<dyn Tenant> = tenant.clone();
        capacity.register(Arc::downgrade(&as_tenant));
        // 80 MiB for work worth 0.5: stopping "small" (worth least) would
        // not be enough; "large" alone is.
        let deadline = Instant::now();
        capacity.reserve(mib(80), 0.5, deadline).await.unwrap();
        let left: Vec<String> = tenant.idle.lock().iter().map(|i| i.id.clone()).collect();
        assert_eq!(left, ["small"]);
        assert_eq!(capacity.used(), (2, mib(90)));
        // With room for the work after any one, the least worth goes.
        capacity.release(mib(80));
        tenant.idle.lock().push(Idle {
            worth: 0.3,
            id: "other".into(),
            room: mib(85),
        });
        assert!(capacity.try_take(mib(85)));
        capacity.reserve(mib(10), 0.5, deadline).await.unwrap();
        let left: Vec<String> = tenant.idle.lock().iter().map(|i| i.id.clone()).collect();
        assert_eq!(left, ["other"], "small went, the least worth");
    }

    #[tokio::test]
    async fn cpus_are_a_limit_like_memory() {
        let capacity = Capacity::new(8, None, Some(1.0));
        let half = Room {
            memory: 0,
            cpus: 0.5,
        };
        assert!(capacity.try_take(half));
        assert!(capacity.try_take(half));
        let err = capacity
            .reserve(half, 0.5, Instant::now())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "at capacity (2 of 8 containers, 1.00 of 1 CPUs), and nothing running is worth less"
        );
        capacity.release(half);
        assert!(capacity.try_take(half));
    }
}
