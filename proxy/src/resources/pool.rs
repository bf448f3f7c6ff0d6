//! One dependency's containers: started on the first call (a cold start
//! every waiting call shares), balanced by least in flight, replaced when
//! one stops answering, and stopped after `keep_alive` idle above
//! `min_instances`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::{Backend, ResourceError, Spec, Started};

/// Why a call got no instance.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    #[error("cannot start a container: {0}")]
    Start(ResourceError),
    #[error("no container was ready within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub min_instances: usize,
    pub max_instances: usize,
    pub keep_alive: Duration,
    /// How long a call waits for a cold start.
    pub start_timeout: Duration,
    /// How long a prestarted instance may wait for its call before it is
    /// stopped as waste (the speculation horizon plus grace).
    pub prestart_grace: Duration,
}

struct Instance {
    id: String,
    addr: SocketAddr,
    inflight: usize,
    last_used: Instant,
    /// Started ahead of a predicted call, and not used by a call yet.
    unused_prestart: bool,
}

type StartWatch = watch::Receiver<Option<Result<(), PoolError>>>;

#[derive(Default)]
struct State {
    ready: Vec<Instance>,
    starting: Option<StartWatch>,
    stopping: bool,
}

pub struct ContainerPool {
    spec: Spec,
    limits: Limits,
    backend: Arc<dyn Backend>,
    state: Mutex<State>,
    /// Counts cold starts (`augur_container_starts_total{reason="cold"}`).
    cold_starts: prometheus::IntCounter,
    /// Counts prestarts (`augur_container_starts_total{reason="prestart"}`).
    prestarts: prometheus::IntCounter,
    /// Counts prestarted instances stopped unused.
    wasted_prestarts: prometheus::IntCounter,
}

/// Metrics a pool keeps.
pub struct PoolMetrics {
    pub cold_starts: prometheus::IntCounter,
    pub prestarts: prometheus::IntCounter,
    pub wasted_prestarts: prometheus::IntCounter,
}

/// An instance a call may use; give it back with [`ContainerPool::release`].
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub addr: SocketAddr,
    /// How long the call waited for a cold start, if it did.
    pub cold_wait: Option<Duration>,
}

impl ContainerPool {
    pub fn new(
        spec: Spec,
        limits: Limits,
        backend: Arc<dyn Backend>,
        metrics: PoolMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            spec,
            limits,
            backend,
            state: Mutex::new(State::default()),
            cold_starts: metrics.cold_starts,
            prestarts: metrics.prestarts,
            wasted_prestarts: metrics.wasted_prestarts,
        })
    }

    /// Starts an instance ahead of a predicted call, unless one is ready or
    /// starting. Returns whether it did.
    pub fn prestart(self: &Arc<Self>) -> bool {
        let mut state = self.state.lock();
        if state.stopping || !state.ready.is_empty() || state.starting.is_some() {
            return false;
        }
        let (tx, rx) = watch::channel(None);
        state.starting = Some(rx);
        self.prestarts.inc();
        tokio::spawn(self.clone().start(tx, true));
        true
    }

    pub fn dependency(&self) -> &str {
        &self.spec.dependency
    }

    /// A ready instance, starting one (shared with every other waiting call)
    /// when there is none.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, PoolError> {
        let began = Instant::now();
        let deadline = began + self.limits.start_timeout;
        let mut waited = false;
        loop {
            let mut watch = {
                let mut state = self.state.lock();
                if let Some(instance) = state.ready.iter_mut().min_by_key(|i| i.inflight) {
                    instance.inflight += 1;
                    instance.unused_prestart = false;
                    instance.last_used = Instant::now();
                    return Ok(Lease {
                        addr: instance.addr,
                        cold_wait: waited.then(|| began.elapsed()),
                    });
                }
                match &state.starting {
                    Some(w) => w.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        state.starting = Some(rx.clone());
                        self.cold_starts.inc();
                        tokio::spawn(self.clone().start(tx, false));
                        rx
                    }
                }
            };
            waited = true;
            let outcome =
                tokio::time::timeout_at(deadline.into(), watch.wait_for(Option::is_some)).await;
            match outcome {
                Ok(Ok(result)) => {
                    if let Some(Err(e)) = result.clone() {
                        return Err(e);
                    }
                }
                Ok(Err(_)) | Err(_) => return Err(PoolError::Timeout(self.limits.start_timeout)),
            }
        }
    }

    /// Starts one instance and waits until it accepts connections.
    async fn start(
        self: Arc<Self>,
        tx: watch::Sender<Option<Result<(), PoolError>>>,
        prestart: bool,
    ) {
        let result = match self.backend.start(&self.spec).await {
            Ok(started) => match self.ready(&started).await {
                Ok(()) => {
                    let mut state = self.state.lock();
                    state.ready.push(Instance {
                        id: started.id,
                        addr: started.addr,
                        inflight: 0,
                        last_used: Instant::now(),
                        unused_prestart: prestart,
                    });
                    Ok(())
                }
                Err(e) => {
                    let _ = self.backend.stop(&started.id).await;
                    Err(e)
                }
            },
            Err(e) => Err(PoolError::Start(e)),
        };
        if let Err(e) = &result {
            tracing::warn!("dependency {:?}: {e}", self.spec.dependency);
        }
        self.state.lock().starting = None;
        tx.send_replace(Some(result));
    }

    /// Waits until the instance answers HTTP. A TCP connect is not enough:
    /// Docker's port proxy accepts connections before the process listens.
    async fn ready(&self, started: &Started) -> Result<(), PoolError> {
        let deadline = Instant::now() + self.limits.start_timeout;
        while Instant::now() < deadline {
            if let Ok(true) =
                tokio::time::timeout(Duration::from_millis(500), answers_http(started.addr)).await
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(PoolError::Timeout(self.limits.start_timeout))
    }

    /// Gives a lease back.
    pub fn release(&self, addr: SocketAddr) {
        let mut state = self.state.lock();
        if let Some(i) = state.ready.iter_mut().find(|i| i.addr == addr) {
            i.inflight = i.inflight.saturating_sub(1);
            i.last_used = Instant::now();
        }
    }

    /// The instance at `addr` did not answer: take it out and remove it;
    /// the next call starts another.
    pub async fn failed(&self, addr: SocketAddr) {
        let gone = {
            let mut state = self.state.lock();
            let at = state.ready.iter().position(|i| i.addr == addr);
            at.map(|at| state.ready.remove(at))
        };
        if let Some(instance) = gone {
            tracing::warn!(
                "dependency {:?}: container {} stopped answering; replacing it",
                self.spec.dependency,
                &instance.id[..12.min(instance.id.len())]
            );
            let _ = self.backend.stop(&instance.id).await;
        }
    }

    /// Stops instances idle for `keep_alive`, and prestarted ones no call
    /// used within `prestart_grace`, keeping `min_instances`.
    pub async fn reap(&self) -> usize {
        let idle: Vec<Instance> = {
            let mut state = self.state.lock();
            let now = Instant::now();
            let mut out = Vec::new();
            while state.ready.len() > self.limits.min_instances {
                let Some(at) = state.ready.iter().position(|i| {
                    let idle = now.duration_since(i.last_used);
                    i.inflight == 0
                        && (idle >= self.limits.keep_alive
                            || (i.unused_prestart && idle >= self.limits.prestart_grace))
                }) else {
                    break;
                };
                let instance = state.ready.remove(at);
                if instance.unused_prestart {
                    self.wasted_prestarts.inc();
                }
                out.push(instance);
            }
            out
        };
        for instance in &idle {
            if let Err(e) = self.backend.stop(&instance.id).await {
                tracing::warn!("{e}");
            }
        }
        idle.len()
    }

    /// Stops every instance (shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Instance> = {
            let mut state = self.state.lock();
            state.stopping = true;
            std::mem::take(&mut state.ready)
        };
        for instance in all {
            let _ = self.backend.stop(&instance.id).await;
        }
    }

    /// Instances ready now, and whether one is starting.
    pub fn counts(&self) -> (usize, bool) {
        let state = self.state.lock();
        (state.ready.len(), state.starting.is_some())
    }
}

/// Whether `addr` answers `GET /` with an HTTP response (any status).
async fn answers_http(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let probe = b"GET / HTTP/1.1\r\nhost: augur-readiness\r\nconnection: close\r\n\r\n";
    if stream.write_all(probe).await.is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await.is_ok() && &head == b"HTTP/"
}
