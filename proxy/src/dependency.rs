//! One dependency as the request path and speculation see it: its name,
//! where its requests go — a static address or a pool of containers augur
//! runs — and a [`Lease`] on an instance for each request sent to it,
//! given back when the lease drops.
//!
//! This is the one place that knows a dependency may be a container: the
//! egress and the speculation client ask for a lease and send to its
//! address; a prediction asks the dependency to prestart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use augur_config::{Container, KeepAlive, Readiness, Target as ConfigTarget};
use pingora::upstreams::peer::HttpPeer;

use crate::containers::backend::{Backend, Spec};
use crate::containers::capacity::Capacity;
use crate::containers::pool::{self, ContainerPool, PoolError};
use crate::http::names::{Names, Unresolved};
use crate::http::upstream::{Settings, Target};
use crate::ops::metrics::{CallSeries, Metrics};

/// Keep-alive of an adaptive pool until it has seen enough idle gaps.
const ADAPTIVE_FALLBACK: Duration = Duration::from_secs(60);
/// How long a prestarted container may wait past the horizon for its call.
const PRESTART_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct Dependency {
    name: Arc<str>,
    /// The address (static) and the connection settings (both kinds).
    target: Target,
    /// The containers augur runs for it, when it is one.
    containers: Option<Arc<ContainerPool>>,
    /// Whether augur may send it speculative requests.
    speculate: bool,
    /// Its call and upstream-request series.
    series: CallSeries,
}

/// What a lease is for: a real call waits for a cold start; a speculation
/// never does (none ready, none sent — the prestart covers that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Call,
    Speculation,
}

/// What `from_config` needs besides the dependency's own section.
pub(crate) struct Environment<'a> {
    /// `service.name`, which labels the containers augur runs.
    pub(crate) service: &'a str,
    pub(crate) backend: &'a Arc<dyn Backend>,
    /// The swarm, for dependencies with `engine = "swarm"`.
    pub(crate) swarm: Option<&'a Arc<dyn Backend>>,
    pub(crate) capacity: &'a Arc<Capacity>,
    pub(crate) metrics: &'a Metrics,
    /// The host names of static upstreams, shared by all.
    pub(crate) names: &'a Names,
    /// `speculation.horizon`: a prestart unused past it (and a grace) is
    /// waste.
    pub(crate) horizon: Duration,
}

impl Dependency {
    /// The dependency a `[[dependency]]` section describes. Fails only when
    /// its TLS files cannot be used.
    pub(crate) fn from_config(
        dep: &augur_config::Dependency,
        env: &Environment<'_>,
    ) -> anyhow::Result<Self> {
        let settings = Settings {
            protocol: dep.protocol,
            tls: dep.tls.as_ref(),
            connect_timeout: dep.connect_timeout,
            timeout: dep.timeout,
        };
        let (target, containers) = match &dep.target {
            ConfigTarget::Static(upstream) => {
                let host = |host: &str| env.names.get(host, env.metrics);
                let target = Target::new("dependency", &dep.name, upstream, host, settings)?;
                (target, None)
            }
            ConfigTarget::Container(c) => {
                let target = Target::dynamic("dependency", &dep.name, settings)?;
                (target, Some(pool_of(&dep.name, c, env)))
            }
        };
        Ok(Self {
            name: dep.name.as_str().into(),
            target,
            containers,
            speculate: dep.speculate,
            series: env.metrics.call_series(&dep.name),
        })
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its metric series, resolved once.
    pub(crate) fn series(&self) -> &CallSeries {
        &self.series
    }

    /// Where requests go and how, for peers and error messages.
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.target.timeout
    }

    /// The dependency's containers, when augur runs them.
    pub(crate) fn containers(&self) -> Option<&Arc<ContainerPool>> {
        self.containers.as_ref()
    }

    /// Whether a speculative request may be sent now: the dependency
    /// allows it and, for containers, an instance is ready.
    pub(crate) fn takes_speculation(&self) -> bool {
        self.speculate && self.containers.as_ref().is_none_or(|p| p.has_ready())
    }

    /// Starts a container in time for a call predicted with `probability`
    /// and due in `due`, when none is running; nothing for a static
    /// dependency.
    pub(crate) fn prestart_for(&self, probability: f64, due: Duration) {
        if let Some(pool) = &self.containers {
            pool.prestart_for(probability, due);
        }
    }

    /// An instance to send one request to, held until the lease drops.
    pub(crate) async fn lease(&self, purpose: Purpose) -> Result<Lease, NoInstance> {
        let Some(pool) = &self.containers else {
            return Ok(Lease {
                addr: self.target.address()?,
                pool: None,
                cold_wait: None,
            });
        };
        let (addr, cold_wait) = match purpose {
            Purpose::Call => {
                let got = pool.acquire().await?;
                (got.addr, got.cold_wait)
            }
            Purpose::Speculation => (pool.try_acquire().ok_or(PoolError::NoneReady)?, None),
        };
        Ok(Lease {
            addr,
            pool: Some(pool.clone()),
            cold_wait,
        })
    }

    /// A pingora peer for a request under `lease`.
    pub(crate) fn peer(&self, lease: &Lease) -> Box<HttpPeer> {
        self.target.peer_at(lease.addr)
    }
}

/// Why a request got no instance to go to.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoInstance {
    /// The dependency's containers lent none.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Its host name has no address yet.
    #[error(transparent)]
    Unresolved(#[from] Unresolved),
}

/// An instance lent to one request.
pub(crate) struct Lease {
    addr: SocketAddr,
    /// The pool that lent it, to give it back.
    pool: Option<Arc<ContainerPool>>,
    cold_wait: Option<Duration>,
}

impl Lease {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How long the request waited for a cold start, if it did.
    pub(crate) fn cold_wait(&self) -> Option<Duration> {
        self.cold_wait
    }

    /// The instance did not answer: give it back and have it replaced.
    pub(crate) async fn failed(mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release(self.addr);
            pool.failed(self.addr).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.release(self.addr);
        }
    }
}

/// The pool a `[dependency.container]` section describes.
fn pool_of(name: &str, c: &Container, env: &Environment<'_>) -> Arc<ContainerPool> {
    let spec = Spec {
        service: env.service.to_string(),
        dependency: name.to_string(),
        image: c.image.clone(),
        args: c.args.clone(),
        port: c.port,
        cpus: c.cpus,
        memory: c.memory,
        min_instances: c.min_instances as usize,
        max_instances: c.max_instances as usize,
        swarm_service: c.swarm_service.clone(),
    };
    let limits = pool::Limits {
        min_instances: c.min_instances as usize,
        max_instances: c.max_instances as usize,
        keep_alive: match c.keep_alive {
            KeepAlive::Fixed(d) => pool::KeepAlive::Fixed(d),
            KeepAlive::Adaptive => pool::KeepAlive::Adaptive {
                fallback: ADAPTIVE_FALLBACK,
            },
        },
        start_timeout: c.start_timeout,
        prestart_grace: env.horizon + PRESTART_GRACE,
        target_inflight: c.target_inflight as usize,
        probe: match c.readiness {
            Readiness::Http => pool::Probe::Http(c.readiness_path.clone()),
            Readiness::Tcp => pool::Probe::Tcp,
        },
        criticality: c.criticality,
        prestart: c.prestart,
    };
    let m = env.metrics;
    let counters = pool::PoolMetrics {
        starts: m.container_starts.clone(),
        denied: m.container_starts_denied.clone(),
        wasted_prestarts: m.prestarts_wasted.with_label_values(&[name]),
        evictions: m.container_evictions.with_label_values(&[name]),
    };
    let backend = match (c.engine, env.swarm) {
        (augur_config::Engine::Swarm, Some(swarm)) => swarm.clone(),
        _ => env.backend.clone(),
    };
    backend.adopt(&spec);
    ContainerPool::new(spec, limits, backend, env.capacity.clone(), counters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::fake::Fake;

    /// Dependencies as a configuration names them, on a fake engine.
    fn dependencies(toml_tail: &str, backend: &Arc<Fake>) -> Vec<Dependency> {
        let text = format!(
            "[service]\nname = \"svc\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n{toml_tail}"
        );
        let config = augur_config::parse(&text).unwrap();
        let metrics = Metrics::new().unwrap();
        let backend: Arc<dyn Backend> = backend.clone();
        let env = Environment {
            service: "svc",
            backend: &backend,
            swarm: None,
            capacity: &Capacity::new(4, None, None),
            metrics: &metrics,
            names: &Names::default(),
            horizon: Duration::from_millis(200),
        };
        config
            .dependencies
            .iter()
            .map(|d| Dependency::from_config(d, &env).unwrap())
            .collect()
    }

    const BOTH: &str = r#"
[[dependency]]
name = "users"
listen = "127.0.0.1:3"
upstream = "127.0.0.1:9101"

[[dependency]]
name = "posts"
listen = "127.0.0.1:4"
[dependency.container]
image = "none"
port = 8080
readiness = "tcp"
"#;

    #[tokio::test]
    async fn a_static_dependency_lends_its_address_for_any_purpose() {
        let deps = dependencies(BOTH, &Arc::new(Fake::default()));
        let users = &deps[0];
        assert!(users.containers().is_none());
        assert!(users.takes_speculation());
        for purpose in [Purpose::Call, Purpose::Speculation] {
            let lease = users.lease(purpose).await.unwrap();
            assert_eq!(lease.addr(), "127.0.0.1:9101".parse().unwrap());
            assert!(lease.cold_wait().is_none());
        }
    }

    #[tokio::test]
    async fn a_container_lease_is_given_back_when_it_drops() {
        let backend = Arc::new(Fake::default());
        let deps = dependencies(BOTH, &backend);
        let posts = &deps[1];
        let pool = posts.containers().unwrap().clone();
        // A speculation never starts a container.
        assert!(!posts.takes_speculation());
        assert!(matches!(
            posts.lease(Purpose::Speculation).await,
            Err(NoInstance::Pool(PoolError::NoneReady))
        ));
        assert_eq!(backend.running.lock().len(), 0);
        // A call does, and waits for it.
        let lease = posts.lease(Purpose::Call).await.unwrap();
        assert!(lease.cold_wait().is_some());
        assert_eq!(pool.snapshot().inflight, 1);
        drop(lease);
        assert_eq!(pool.snapshot().inflight, 0, "given back on drop");
        // Now a speculation may go, to the instance the call started.
        assert!(posts.takes_speculation());
        let spec = posts.lease(Purpose::Speculation).await.unwrap();
        assert_eq!(pool.snapshot().inflight, 1);
        // An instance that failed is given back and replaced.
        spec.failed().await;
        assert_eq!(pool.snapshot().ready, 0);
        assert_eq!(backend.running.lock().len(), 0);
    }
}
