//! Everything a pool does on its own time: prestarts ahead of predicted
//! calls, keep-alive and pre-warm (`maintain`, every 100 ms), giving room
//! back to work worth more (eviction), and reading Docker stats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{ContainerPool, IDLE_WORTH, Instance, KeepAlive, Reason, State, lead};
use crate::containers::backend::short;
use crate::containers::capacity::{Idle, Tenant};
use crate::containers::keepalive::Windows;

impl ContainerPool {
    /// Whether a prestart would start an instance now.
    fn may_prestart(&self, state: &State) -> bool {
        self.limits.prestart
            && !state.stopping
            && state.ready.is_empty()
            && state.starting.is_none()
            && !state.holding_back(Instant::now())
    }

    /// Starts an instance ahead of a call predicted with `probability`,
    /// unless one is ready or starting. Returns whether it did.
    pub(crate) fn prestart(self: &Arc<Self>, probability: f64) -> bool {
        let mut state = self.state.lock();
        if !self.may_prestart(&state) {
            return false;
        }
        self.begin(
            &mut state,
            Reason::Prestart(probability * self.limits.criticality),
        );
        true
    }

    /// Prestarts so an instance is ready when a call predicted with
    /// `probability` is due in `due`: now if starting takes about that
    /// long, later otherwise. One later prestart is kept, the earliest.
    pub(crate) fn prestart_for(self: &Arc<Self>, probability: f64, due: Duration) {
        let mut state = self.state.lock();
        if !self.may_prestart(&state) {
            return;
        }
        let lead = lead(state.start_time) + Duration::from_millis(100);
        let Some(wait) = due.checked_sub(lead).filter(|w| !w.is_zero()) else {
            self.begin(
                &mut state,
                Reason::Prestart(probability * self.limits.criticality),
            );
            return;
        };
        let at = Instant::now() + wait;
        if state.scheduled.is_some_and(|t| t <= at) {
            return;
        }
        state.scheduled = Some(at);
        drop(state);
        let pool = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let mine = {
                let mut state = pool.state.lock();
                let mine = state.scheduled == Some(at);
                if mine {
                    state.scheduled = None;
                }
                mine
            };
            if mine {
                pool.prestart(probability);
            }
        });
    }

    /// The keep-alive windows in force now.
    pub(super) fn windows(&self, state: &State) -> Windows {
        match self.limits.keep_alive {
            KeepAlive::Fixed(keep_alive) => Windows {
                hold: Duration::ZERO,
                prewarm: Duration::ZERO,
                keep_alive,
            },
            KeepAlive::Adaptive { fallback } => {
                state.gaps.windows(state.start_time).unwrap_or(Windows {
                    hold: Duration::ZERO,
                    prewarm: Duration::ZERO,
                    keep_alive: fallback,
                })
            }
        }
    }

    /// Periodic upkeep: stops instances past their keep-alive (or, with a
    /// pre-warm window, as soon as the dependency goes idle), prestarted
    /// ones no call used within the grace, and pre-warms an instance just
    /// before the next call is expected. Keeps `min_instances`.
    pub(crate) async fn maintain(self: &Arc<Self>) {
        let stopped: Vec<Instance> = {
            let mut state = self.state.lock();
            if state.stopping {
                return;
            }
            let now = Instant::now();
            let windows = self.windows(&state);
            let idle_for = state.idle_since.map(|since| now.duration_since(since));
            let lead = lead(state.start_time);
            let mut out = Vec::new();
            while state.ready.len() > self.limits.min_instances {
                let Some(at) = state.ready.iter().position(|i| {
                    let idle = now.duration_since(i.last_used);
                    if i.inflight > 0 {
                        return false;
                    }
                    if i.unused_prestart.is_some() {
                        return idle >= self.limits.prestart_grace;
                    }
                    // A pre-warmed instance belongs to the idle period.
                    let idle = idle_for.unwrap_or(idle);
                    let before_prewarm = !windows.prewarm.is_zero()
                        && idle_for
                            .is_some_and(|f| f >= windows.hold && f + lead < windows.prewarm);
                    before_prewarm || idle >= windows.keep_alive
                }) else {
                    break;
                };
                let instance = state.ready.remove(at);
                if instance.unused_prestart.is_some() {
                    self.metrics.wasted_prestarts.inc();
                }
                out.push(instance);
            }
            // Keep min_instances running (one start at a time).
            if state.running() < self.limits.min_instances
                && state.starting.is_none()
                && !state.holding_back(now)
            {
                self.begin(&mut state, Reason::Minimum);
            }
            // Pre-warm once per idle period, just before the window opens.
            if let (Some(since), Some(idle)) = (state.idle_since, idle_for) {
                let due = !windows.prewarm.is_zero()
                    && idle + lead >= windows.prewarm
                    && idle < windows.keep_alive
                    && state.prewarmed_for != Some(since)
                    && state.ready.is_empty()
                    && state.starting.is_none()
                    && !state.holding_back(now);
                if due {
                    state.prewarmed_for = Some(since);
                    self.begin(&mut state, Reason::Prewarm);
                }
            }
            out
        };
        for instance in stopped {
            let pool = self.clone();
            tokio::spawn(async move {
                pool.stop_instance(&instance.id, instance.started, instance.room)
                    .await
            });
        }
    }

    /// Reads Docker stats for every running instance, all at once (each
    /// takes about a second: Docker samples twice).
    pub(crate) async fn poll_stats(&self) {
        let ids: Vec<String> = self
            .state
            .lock()
            .ready
            .iter()
            .map(|i| i.id.clone())
            .collect();
        let reads = ids.into_iter().map(|id| async move {
            let usage = self.backend.stats(&id).await;
            (id, usage)
        });
        for (id, usage) in futures_util::future::join_all(reads).await {
            match usage {
                Ok(usage) => {
                    let mut state = self.state.lock();
                    if let Some(i) = state.ready.iter_mut().find(|i| i.id == id) {
                        i.usage = Some(usage);
                    }
                    state.memory_kib.add(usage.memory_bytes >> 10);
                    state
                        .cpu_milli
                        .add((usage.cpu_cores * 1000.0).round() as u64);
                }
                Err(e) => tracing::debug!("{e}"),
            }
        }
    }
}

#[async_trait]
impl Tenant for ContainerPool {
    /// The idle instances that may go to make room, each with its worth
    /// and room: none of `min_instances`, none with a call in flight.
    fn idle(&self) -> Vec<Idle> {
        let state = self.state.lock();
        if state.stopping || state.ready.len() <= self.limits.min_instances {
            return Vec::new();
        }
        state
            .ready
            .iter()
            .filter(|i| i.inflight == 0)
            .map(|i| Idle {
                worth: i
                    .unused_prestart
                    .unwrap_or(self.limits.criticality * IDLE_WORTH),
                id: i.id.clone(),
                room: i.room,
            })
            .collect()
    }

    /// Stops the instance `id` to make room, if it is still idle.
    async fn evict(&self, id: &str) -> bool {
        let gone = {
            let mut state = self.state.lock();
            let at = state
                .ready
                .iter()
                .position(|i| i.id == id && i.inflight == 0)
                .filter(|_| state.ready.len() > self.limits.min_instances);
            at.map(|at| state.ready.remove(at))
        };
        let Some(instance) = gone else {
            return false;
        };
        tracing::info!(
            "dependency {:?}: stopping idle container {} to make room",
            self.spec.dependency,
            short(&instance.id)
        );
        if instance.unused_prestart.is_some() {
            self.metrics.wasted_prestarts.inc();
        }
        self.metrics.evictions.inc();
        self.stop_instance(&instance.id, instance.started, instance.room)
            .await;
        true
    }
}
