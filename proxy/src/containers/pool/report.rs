//! What `/debug/containers` and the metrics show of a pool, each read
//! under one lock.

use std::net::SocketAddr;
use std::time::Instant;

use super::{ContainerPool, KeepAlive};
use crate::containers::backend::short;
use crate::containers::capacity::Room;

/// What `/debug/containers` and the metrics show of a pool.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Snapshot {
    pub(crate) dependency: String,
    pub(crate) ready: usize,
    pub(crate) starting: usize,
    pub(crate) inflight: usize,
    pub(crate) keep_alive: String,
    pub(crate) hold_seconds: Option<f64>,
    pub(crate) prewarm_seconds: Option<f64>,
    pub(crate) keep_alive_seconds: f64,
    pub(crate) idle_gaps_seen: u32,
    pub(crate) start_seconds: f64,
    /// What an instance is predicted to use (the 90th percentile of the
    /// Docker stats samples), once seen enough.
    pub(crate) predicted_memory_bytes: Option<u64>,
    pub(crate) predicted_cpu_cores: Option<f64>,
    /// What a new instance would hold of the global limits.
    pub(crate) room: Room,
    pub(crate) instances: Vec<InstanceSnapshot>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct InstanceSnapshot {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    pub(crate) inflight: usize,
    pub(crate) age_seconds: f64,
    pub(crate) idle_seconds: f64,
    pub(crate) unused_prestart: bool,
    pub(crate) cpu_cores: Option<f64>,
    pub(crate) memory_bytes: Option<u64>,
}

/// A pool's metrics (see [`ContainerPool::gauges`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauges {
    pub(crate) starting: usize,
    pub(crate) busy: usize,
    pub(crate) idle: usize,
    /// Seconds every container has run, stopped or running.
    pub(crate) container_seconds: f64,
    /// At the last Docker stats poll.
    pub(crate) cpu_cores: f64,
    pub(crate) memory_bytes: u64,
}

impl ContainerPool {
    pub(crate) fn snapshot(&self) -> Snapshot {
        let room = self.room();
        let state = self.state.lock();
        let predicted = Self::predicted(&state);
        let now = Instant::now();
        let windows = self.windows(&state);
        Snapshot {
            dependency: self.spec.dependency.clone(),
            ready: state.ready.len(),
            starting: state.scaling + usize::from(state.starting.is_some()),
            inflight: state.ready.iter().map(|i| i.inflight).sum(),
            keep_alive: match self.limits.keep_alive {
                KeepAlive::Fixed(_) => "fixed".into(),
                KeepAlive::Adaptive { .. } => "adaptive".into(),
            },
            hold_seconds: (!windows.prewarm.is_zero()).then_some(windows.hold.as_secs_f64()),
            prewarm_seconds: (!windows.prewarm.is_zero()).then_some(windows.prewarm.as_secs_f64()),
            keep_alive_seconds: windows.keep_alive.as_secs_f64(),
            idle_gaps_seen: state.gaps.samples(),
            start_seconds: state.start_time.as_secs_f64(),
            predicted_memory_bytes: predicted.map(|p| p.memory_bytes),
            predicted_cpu_cores: predicted.map(|p| p.cpu_cores),
            room,
            instances: state
                .ready
                .iter()
                .map(|i| InstanceSnapshot {
                    id: short(&i.id).to_string(),
                    addr: i.addr,
                    inflight: i.inflight,
                    age_seconds: now.duration_since(i.started).as_secs_f64(),
                    idle_seconds: now.duration_since(i.last_used).as_secs_f64(),
                    unused_prestart: i.unused_prestart.is_some(),
                    cpu_cores: i.usage.map(|u| u.cpu_cores),
                    memory_bytes: i.usage.map(|u| u.memory_bytes),
                })
                .collect(),
        }
    }

    /// What the metrics show of the pool, read under one lock.
    pub(crate) fn gauges(&self) -> Gauges {
        let state = self.state.lock();
        let idle = state.ready.iter().filter(|i| i.inflight == 0).count();
        let running: f64 = state
            .ready
            .iter()
            .map(|i| i.started.elapsed().as_secs_f64())
            .sum();
        let (cpu_cores, memory_bytes) = state
            .ready
            .iter()
            .filter_map(|i| i.usage)
            .fold((0.0, 0), |(c, m), u| (c + u.cpu_cores, m + u.memory_bytes));
        Gauges {
            starting: state.scaling + usize::from(state.starting.is_some()),
            busy: state.ready.len() - idle,
            idle,
            container_seconds: state.stopped_seconds + running,
            cpu_cores,
            memory_bytes,
        }
    }
}
