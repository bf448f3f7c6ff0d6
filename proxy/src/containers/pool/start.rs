//! Starting one instance: room under the global limit, the engine's
//! start, the readiness probe; and stopping one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{
    BACKOFF, ContainerPool, DENIED_PAUSE, Instance, PoolError, Probe, Reason, StartWatch, State,
};
use crate::containers::backend::Started;
use crate::containers::capacity::{self, Room};

impl ContainerPool {
    /// Starts an instance in the background and returns what tells when it
    /// is ready. Calls wait for any start but a scale-up (they have ready
    /// instances meanwhile).
    pub(super) fn begin(self: &Arc<Self>, state: &mut State, reason: Reason) -> StartWatch {
        let (tx, rx) = watch::channel(None);
        if reason == Reason::Scale {
            state.scaling += 1;
        } else {
            state.starting = Some(rx.clone());
        }
        tokio::spawn(self.clone().start(tx, reason));
        rx
    }

    /// Starts one instance and waits until it is ready.
    async fn start(
        self: Arc<Self>,
        tx: watch::Sender<Option<Result<(), PoolError>>>,
        reason: Reason,
    ) {
        let began = Instant::now();
        let result = self.start_instance(reason).await;
        {
            let mut state = self.state.lock();
            if reason == Reason::Scale {
                state.scaling -= 1;
            } else {
                state.starting = None;
            }
            match &result {
                Ok(()) => {
                    let took = began.elapsed();
                    state.start_time = (state.start_time * 3 + took) / 4;
                    state.retry = None;
                    state.backoff = BACKOFF.0;
                }
                // No room is not the engine's fault: no back-off, but no
                // speculative start again for a moment (a call still may).
                Err(PoolError::Capacity(_)) => {
                    state.denied_until = Some(Instant::now() + DENIED_PAUSE);
                }
                Err(e) => {
                    state.retry = Some((Instant::now() + state.backoff, e.clone()));
                    state.backoff = (state.backoff * 2).min(BACKOFF.1);
                }
            }
        }
        if let Err(e) = &result {
            match e {
                PoolError::Capacity(_) => {
                    self.metrics
                        .denied
                        .with_label_values(&[&self.spec.dependency, reason.label()])
                        .inc();
                    tracing::debug!("dependency {:?}: {e}", self.spec.dependency);
                }
                _ => tracing::warn!("dependency {:?}: {e}", self.spec.dependency),
            }
        }
        tx.send_replace(Some(result));
    }

    async fn start_instance(&self, reason: Reason) -> Result<(), PoolError> {
        let priority = match reason {
            Reason::Cold => capacity::CALL,
            Reason::Prestart(value) => value,
            Reason::Prewarm | Reason::Scale | Reason::Minimum => self.limits.criticality,
        };
        let room = self.room();
        let deadline = Instant::now() + self.limits.start_timeout;
        // Only a call's start waits for room; its callers are told why.
        let cold = reason == Reason::Cold;
        if cold {
            self.state.lock().awaiting_room = true;
        }
        let reserved = self.capacity.reserve(room, priority, deadline).await;
        if cold {
            self.state.lock().awaiting_room = false;
        }
        reserved.map_err(PoolError::Capacity)?;
        self.metrics
            .starts
            .with_label_values(&[&self.spec.dependency, reason.label()])
            .inc();
        let now = Instant::now();
        let started = match self.backend.start(&self.spec).await {
            Ok(started) => started,
            Err(e) => {
                self.capacity.release(room);
                return Err(PoolError::Start(e));
            }
        };
        if let Err(e) = self.ready(&started).await {
            self.stop_instance(&started.id, now, room).await;
            return Err(e);
        }
        let instance = Instance {
            id: started.id,
            addr: started.addr,
            inflight: 0,
            last_used: Instant::now(),
            started: now,
            unused_prestart: match reason {
                Reason::Prestart(value) => Some(value),
                _ => None,
            },
            usage: None,
            room,
        };
        let refused = {
            let mut state = self.state.lock();
            if state.stopping {
                Some(instance)
            } else {
                state.ready.push(instance);
                None
            }
        };
        match refused {
            Some(instance) => {
                self.stop_instance(&instance.id, now, room).await;
                Err(PoolError::Stopping)
            }
            None => Ok(()),
        }
    }

    /// Waits until the instance passes its readiness probe. For HTTP, a TCP
    /// connect is not enough: Docker's port proxy accepts connections
    /// before the process listens.
    async fn ready(&self, started: &Started) -> Result<(), PoolError> {
        let deadline = Instant::now() + self.limits.start_timeout;
        while Instant::now() < deadline {
            let probe = async {
                match &self.limits.probe {
                    Probe::Tcp => tokio::net::TcpStream::connect(started.addr).await.is_ok(),
                    Probe::Http(path) => answers_http(started.addr, path).await,
                }
            };
            // A process that does not listen yet fails fast (the port proxy
            // closes the connection); one that listens may answer slowly.
            let patience = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(5));
            if let Ok(true) = tokio::time::timeout(patience, probe).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(PoolError::Timeout(self.limits.start_timeout))
    }

    /// Stops a container, gives its room back and counts its seconds.
    pub(super) async fn stop_instance(&self, id: &str, started: Instant, room: Room) {
        if let Err(e) = self.backend.stop(id).await {
            tracing::warn!("{e}");
        }
        self.capacity.release(room);
        self.state.lock().stopped_seconds += started.elapsed().as_secs_f64();
    }
}

/// Whether `addr` answers `GET path` with an HTTP response (any status).
async fn answers_http(addr: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let probe =
        format!("GET {path} HTTP/1.1\r\nhost: augur-readiness\r\nconnection: close\r\n\r\n");
    if stream.write_all(probe.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await.is_ok() && &head == b"HTTP/"
}
