//! The pool against a fake engine (bound local sockets for containers).

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use prometheus::{IntCounter, IntCounterVec, Opts};

use super::*;
use crate::containers::backend::Started;
use crate::containers::fake::Fake;

fn metrics() -> PoolMetrics {
    let vec = |n: &str| IntCounterVec::new(Opts::new(n, n), &["dependency", "reason"]).unwrap();
    PoolMetrics {
        starts: vec("starts"),
        denied: vec("denied"),
        wasted_prestarts: IntCounter::new("wasted", "wasted").unwrap(),
        evictions: IntCounter::new("evictions", "evictions").unwrap(),
    }
}

fn spec(name: &str) -> Spec {
    Spec {
        service: "test".into(),
        dependency: name.into(),
        image: "none".into(),
        args: Vec::new(),
        port: 1,
        cpus: None,
        memory: None,
        min_instances: 0,
        max_instances: 4,
        swarm_service: None,
    }
}

fn limits(criticality: f64, keep_alive: KeepAlive) -> Limits {
    Limits {
        min_instances: 0,
        max_instances: 4,
        keep_alive,
        start_timeout: Duration::from_millis(300),
        prestart_grace: Duration::from_millis(200),
        target_inflight: 8,
        probe: Probe::Tcp,
        criticality,
        prestart: true,
    }
}

fn pool<B: Backend + 'static>(
    name: &str,
    criticality: f64,
    keep_alive: KeepAlive,
    backend: &Arc<B>,
    capacity: &Arc<Capacity>,
) -> Arc<ContainerPool> {
    let limits = limits(criticality, keep_alive);
    ContainerPool::new(
        spec(name),
        limits,
        backend.clone(),
        capacity.clone(),
        metrics(),
    )
}

const FIXED: KeepAlive = KeepAlive::Fixed(Duration::from_secs(60));

async fn settle(pool: &ContainerPool) {
    for _ in 0..100 {
        if pool.state.lock().starting.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_prestart_displaces_only_idle_work_worth_less() {
    let backend = Arc::new(Fake::default());
    let capacity = Capacity::new(1, None, None);
    let critical = pool("critical", 1.0, FIXED, &backend, &capacity);
    let minor = pool("minor", 0.2, FIXED, &backend, &capacity);
    let lease = minor.acquire().await.unwrap();
    minor.release(lease.addr);
    // minor idle is worth 0.2 × 0.5 = 0.1; a prestart of critical at
    // probability 0.9 is worth 0.9: it takes the room.
    assert!(critical.prestart(0.9));
    settle(&critical).await;
    assert_eq!(critical.snapshot().ready, 1);
    assert_eq!(minor.snapshot().ready, 0);
    assert_eq!(minor.metrics.evictions.get(), 1, "the victim counts it");
    // critical's unused prestart is worth 0.9; minor's prestart is worth
    // at most 0.2: denied, and nothing is stopped.
    assert!(minor.prestart(1.0));
    settle(&minor).await;
    assert_eq!(critical.snapshot().ready, 1);
    assert_eq!(minor.snapshot().ready, 0);
    assert_eq!(
        minor
            .metrics
            .denied
            .with_label_values(&["minor", "prestart"])
            .get(),
        1
    );
    // A real call outranks everything idle.
    let lease = minor.acquire().await.unwrap();
    assert_eq!(critical.snapshot().ready, 0);
    assert_eq!(
        critical.metrics.wasted_prestarts.get(),
        1,
        "displaced unused"
    );
    assert_eq!(capacity.used().0, 1);
    // With minor's only instance busy, a real call for critical waits
    // its start_timeout and is told why.
    let err = critical.acquire().await.unwrap_err();
    assert!(err.to_string().contains("at capacity"), "{err}");
    minor.release(lease.addr);
    assert_eq!(backend.running.lock().len(), 1);
}

#[tokio::test]
async fn a_prestart_no_call_uses_is_stopped_after_the_grace_as_waste() {
    let backend = Arc::new(Fake::default());
    let capacity = Capacity::new(4, None, None);
    let p = pool("p", 1.0, FIXED, &backend, &capacity);
    assert!(p.prestart(0.95));
    settle(&p).await;
    assert!(!p.prestart(0.95), "one at a time");
    p.maintain().await;
    assert_eq!(p.snapshot().ready, 1, "kept within the grace");
    tokio::time::sleep(Duration::from_millis(250)).await;
    p.maintain().await;
    assert_eq!(p.snapshot().ready, 0);
    assert_eq!(p.metrics.wasted_prestarts.get(), 1);
    // One used is not waste.
    assert!(p.prestart(0.95));
    settle(&p).await;
    let lease = p.acquire().await.unwrap();
    assert!(lease.cold_wait.is_none());
    p.release(lease.addr);
    tokio::time::sleep(Duration::from_millis(250)).await;
    p.maintain().await;
    assert_eq!(
        p.snapshot().ready,
        1,
        "a used instance lives its keep-alive"
    );
    assert_eq!(p.metrics.wasted_prestarts.get(), 1);
}

#[tokio::test]
async fn adaptive_keep_alive_stops_at_once_and_prewarms_before_the_next_call() {
    let backend = Arc::new(Fake::default());
    let capacity = Capacity::new(4, None, None);
    let fallback = Duration::from_secs(60);
    let p = pool(
        "p",
        1.0,
        KeepAlive::Adaptive { fallback },
        &backend,
        &capacity,
    );
    let lease = p.acquire().await.unwrap();
    p.release(lease.addr);
    p.maintain().await;
    assert_eq!(p.snapshot().ready, 1, "the fallback keeps it");
    // Calls have come every 20–24 s.
    {
        let mut state = p.state.lock();
        state.start_time = Duration::from_millis(500);
        for i in 0..30 {
            state.gaps.record(Duration::from_secs(20 + i % 5));
        }
    }
    let w = p.windows(&p.state.lock());
    assert!(w.prewarm > Duration::from_secs(10), "{w:?}");
    p.maintain().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(p.snapshot().ready, 0, "stopped as soon as idle");
    // Just before the pre-warm window opens, one starts.
    let since = Instant::now() - (w.prewarm - Duration::from_millis(500));
    p.state.lock().idle_since = Some(since);
    p.maintain().await;
    settle(&p).await;
    assert_eq!(p.snapshot().ready, 1);
    assert_eq!(
        p.metrics.starts.with_label_values(&["p", "prewarm"]).get(),
        1
    );
    p.maintain().await;
    assert_eq!(p.snapshot().ready, 1, "kept for the window");
    // The next call finds it ready.
    let lease = p.acquire().await.unwrap();
    assert!(lease.cold_wait.is_none());
    p.release(lease.addr);
}

#[tokio::test]
async fn an_instance_near_its_cpu_limit_counts_as_busy() {
    let backend = Arc::new(Fake::default());
    backend.cpu.store(950, Ordering::SeqCst); // 0.95 cores
    let capacity = Capacity::new(4, None, None);
    let template = pool("t", 1.0, FIXED, &backend, &capacity);
    let mut spec = template.spec.clone();
    spec.cpus = Some(1.0);
    let p = ContainerPool::new(
        spec,
        template.limits.clone(),
        backend.clone(),
        capacity.clone(),
        metrics(),
    );
    let a = p.acquire().await.unwrap();
    p.poll_stats().await;
    assert_eq!(p.gauges().cpu_cores, 0.95);
    // Two in flight is far below target_inflight (8), but the instance
    // uses 95% of its CPU limit: another starts.
    let b = p.acquire().await.unwrap();
    for _ in 0..100 {
        if p.snapshot().ready == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(p.snapshot().ready, 2);
    assert_eq!(p.metrics.starts.with_label_values(&["t", "scale"]).get(), 1);
    // The next call goes to the new, idle instance.
    let c = p.acquire().await.unwrap();
    assert_ne!(c.addr, a.addr);
    for lease in [a, b, c] {
        p.release(lease.addr);
    }
}

#[tokio::test]
async fn min_instances_are_started_and_kept() {
    let backend = Arc::new(Fake::default());
    let capacity = Capacity::new(4, None, None);
    let template = pool(
        "t",
        1.0,
        KeepAlive::Fixed(Duration::ZERO),
        &backend,
        &capacity,
    );
    let mut limits = template.limits.clone();
    limits.min_instances = 2;
    let p = ContainerPool::new(
        template.spec.clone(),
        limits,
        backend.clone(),
        capacity.clone(),
        metrics(),
    );
    for _ in 0..4 {
        p.maintain().await;
        settle(&p).await;
    }
    assert_eq!(p.snapshot().ready, 2);
    assert_eq!(p.metrics.starts.with_label_values(&["t", "min"]).get(), 2);
    assert!(p.idle().is_empty(), "never displaced below the minimum");
    let lease = p.acquire().await.unwrap();
    p.release(lease.addr);
    p.maintain().await;
    assert_eq!(
        p.snapshot().ready,
        2,
        "a zero keep-alive stops none of them"
    );
}

#[tokio::test]
async fn a_failed_start_backs_off_with_the_error() {
    struct Down;
    #[async_trait]
    impl Backend for Down {
        async fn start(&self, _spec: &Spec) -> Result<Started, ResourceError> {
            Err(ResourceError {
                operation: "connect",
                subject: "local engine".into(),
                reason: "no daemon".into(),
            })
        }
        async fn stop(&self, _id: &str) -> Result<(), ResourceError> {
            Ok(())
        }
        async fn owned(&self, _service: &str) -> Result<Vec<String>, ResourceError> {
            Ok(Vec::new())
        }
        async fn stats(&self, _id: &str) -> Result<Usage, ResourceError> {
            unreachable!()
        }
    }
    let capacity = Capacity::new(4, None, None);
    let fake = Arc::new(Fake::default());
    let p = pool("p", 1.0, FIXED, &fake, &capacity);
    let down = ContainerPool::new(
        p.spec.clone(),
        p.limits.clone(),
        Arc::new(Down),
        capacity.clone(),
        metrics(),
    );
    let first = down.acquire().await.unwrap_err();
    assert!(first.to_string().contains("no daemon"), "{first}");
    let began = Instant::now();
    let second = down.acquire().await.unwrap_err();
    assert!(
        began.elapsed() < Duration::from_millis(50),
        "no wait while backing off"
    );
    assert!(second.to_string().contains("retrying in"), "{second}");
    assert_eq!(capacity.used().0, 0, "a failed start holds no room");
}

/// An engine whose instances other sidecars share, as a swarm's are: it
/// says when the others last used the dependency, and keeps what this
/// sidecar said of its own use.
#[derive(Default)]
struct Shared {
    fake: Fake,
    others: parking_lot::Mutex<Option<u64>>,
    notes: parking_lot::Mutex<Vec<bool>>,
}

#[async_trait]
impl Backend for Shared {
    async fn start(&self, spec: &Spec) -> Result<Started, ResourceError> {
        self.fake.start(spec).await
    }
    async fn stop(&self, id: &str) -> Result<(), ResourceError> {
        self.fake.stop(id).await
    }
    async fn owned(&self, service: &str) -> Result<Vec<String>, ResourceError> {
        self.fake.owned(service).await
    }
    async fn stats(&self, id: &str) -> Result<Usage, ResourceError> {
        self.fake.stats(id).await
    }
    fn note_use(&self, _spec: &Spec, busy: bool, _unix_ms: u64) {
        self.notes.lock().push(busy);
    }
    fn others_last_use(&self, _spec: &Spec) -> Option<u64> {
        *self.others.lock()
    }
}

/// The bucket a gap of `secs` falls in.
fn bucket_of(secs: f64) -> usize {
    let mut g = crate::containers::keepalive::IdleGaps::default();
    g.record(Duration::from_secs_f64(secs));
    g.to_saved().iter().position(|c| *c > 0).unwrap()
}

#[tokio::test]
async fn a_shared_dependency_learns_the_gaps_between_anyones_calls() {
    let backend = Arc::new(Shared::default());
    let pool = pool(
        "shared",
        1.0,
        FIXED,
        &backend,
        &Capacity::new(4, None, None),
    );
    let lease = pool.acquire().await.unwrap();
    pool.release(lease.addr);
    assert_eq!(*backend.notes.lock(), [true, false], "busy, then idle");
    // This sidecar has been idle 10 s; another used the dependency 1.5 s
    // ago: the gap that ends now is the dependency's, 1.5 s.
    pool.state.lock().idle_since = Instant::now().checked_sub(Duration::from_secs(10));
    *backend.others.lock() = Some(crate::clock::unix_ms() - 1500);
    let lease = pool.acquire().await.unwrap();
    pool.release(lease.addr);
    let saved = pool.state.lock().gaps.to_saved();
    let got = saved.iter().position(|c| *c > 0).unwrap();
    assert!(
        got <= bucket_of(2.0) && got >= bucket_of(1.4),
        "recorded in bucket {got}: {saved:?}"
    );
    // Nobody else since: the gap is this sidecar's own.
    pool.state.lock().idle_since = Instant::now().checked_sub(Duration::from_secs(10));
    *backend.others.lock() = Some(crate::clock::unix_ms() - 60_000);
    let lease = pool.acquire().await.unwrap();
    pool.release(lease.addr);
    let saved = pool.state.lock().gaps.to_saved();
    assert_eq!(saved[bucket_of(10.0)], 1, "{saved:?}");
}

#[tokio::test]
async fn an_instance_holds_what_its_dependency_is_seen_to_use_not_its_limits() {
    let backend = Arc::new(Fake::default());
    // The fake's instances use 32 MiB and a tenth of a core.
    backend.cpu.store(100, Ordering::SeqCst);
    let capacity = Capacity::new(8, Some(1 << 30), Some(2.0));
    let spec = Spec {
        memory: Some(256 << 20),
        cpus: Some(1.0),
        ..spec("limited")
    };
    let p = ContainerPool::new(
        spec,
        limits(1.0, FIXED),
        backend.clone(),
        capacity.clone(),
        metrics(),
    );
    let lease = p.acquire().await.unwrap();
    p.release(lease.addr);
    let limits_room = Room {
        memory: 256 << 20,
        cpus: 1.0,
    };
    assert_eq!(
        capacity.used().1,
        limits_room,
        "nothing seen yet: the limits"
    );
    for _ in 0..USAGE_SAMPLES {
        p.poll_stats().await;
    }
    let snap = p.snapshot();
    assert_eq!(snap.predicted_memory_bytes, Some(32 << 20));
    assert_eq!(snap.predicted_cpu_cores, Some(0.1));
    let predicted = Room {
        memory: 40 << 20,
        cpus: 0.125,
    };
    assert_eq!(
        snap.room, predicted,
        "the 90th percentile and a quarter more"
    );
    // The first instance gives back what it held; the next holds less.
    p.failed(lease.addr).await;
    assert_eq!(capacity.used(), (0, Room::default()));
    let lease = p.acquire().await.unwrap();
    assert_eq!(capacity.used(), (1, predicted));
    p.failed(lease.addr).await;
    assert_eq!(capacity.used(), (0, Room::default()));
}
