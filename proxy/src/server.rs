//! Start-up, step by step: check what the configuration asks for, resolve
//! upstreams, make sure every address can be bound, start telemetry, build
//! the shared state, add one pingora service per listener, then run until a
//! signal and drain.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use augur_config::{Config, KeepAlive, PredictorKind, Readiness, Target as DependencyTarget};
use augur_predictor::secret::SecretHasher;
use augur_predictor::{Learner, Settings as LearnerSettings};
use pingora::apps::http_app::HttpServer;
use pingora::proxy::{ProxyHttp, http_proxy_service_with_name};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::context::{ContextTable, Limits};
use crate::egress::Egress;
use crate::ingress::Ingress;
use crate::learning::Learning;
use crate::metrics::Metrics;
use crate::prefetch::{self, Prefetcher};
use crate::resources::Spec;
use crate::resources::capacity::Capacity;
use crate::resources::docker::DockerBackend;
use crate::resources::pool::{self, ContainerPool};
use crate::shutdown::Drain;
use crate::speculation::Speculations;
use crate::state::{Lifecycle, Shared};
use crate::telemetry::Telemetry;
use crate::upstream::Target;

/// Runs augur until SIGTERM or SIGINT. Returns an error only for problems
/// found before the listeners start.
pub fn run(config: Config) -> anyhow::Result<()> {
    let service = &config.service;
    let ingress_target = Target::new(
        "service",
        &service.name,
        &service.upstream,
        service.protocol,
        service.connect_timeout,
        service.timeout,
    )?;
    let metrics = Metrics::new().context("cannot register metrics")?;
    let docker = Arc::new(DockerBackend::new());
    let mut egress_targets = Vec::new();
    let mut speculated = HashMap::new();
    let mut pools = Vec::new();
    let capacity = Capacity::new(
        config.containers.max_containers,
        config.containers.max_memory,
    );
    for dep in &config.dependencies {
        let (target, at, pool) = match &dep.target {
            DependencyTarget::Static(upstream) => {
                let target = Target::new(
                    "dependency",
                    &dep.name,
                    upstream,
                    dep.protocol,
                    dep.connect_timeout,
                    dep.timeout,
                )?;
                let at = prefetch::Upstream::Static(target.addr);
                (target, at, None)
            }
            // Speculative requests go to a ready instance, if there is one.
            DependencyTarget::Container(c) => {
                let target = Target::dynamic(
                    "dependency",
                    &dep.name,
                    dep.protocol,
                    dep.connect_timeout,
                    dep.timeout,
                );
                let spec = Spec {
                    service: service.name.clone(),
                    dependency: dep.name.clone(),
                    image: c.image.clone(),
                    args: c.args.clone(),
                    port: c.port,
                    cpus: c.cpus,
                    memory: c.memory,
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
                    prestart_grace: config.speculation.horizon + PRESTART_GRACE,
                    target_inflight: c.target_inflight as usize,
                    probe: match c.readiness {
                        Readiness::Http => pool::Probe::Http(c.readiness_path.clone()),
                        Readiness::Tcp => pool::Probe::Tcp,
                    },
                    criticality: c.criticality,
                    prestart: c.prestart,
                };
                let name = dep.name.as_str();
                let counters = pool::PoolMetrics {
                    starts: metrics.container_starts.clone(),
                    denied: metrics.container_starts_denied.clone(),
                    wasted_prestarts: metrics.prestarts_wasted.with_label_values(&[name]),
                    evictions: metrics.container_evictions.with_label_values(&[name]),
                };
                let pool =
                    ContainerPool::new(spec, limits, docker.clone(), capacity.clone(), counters);
                pools.push(pool.clone());
                let at = prefetch::Upstream::Containers(pool.clone());
                (target, at, Some(pool))
            }
        };
        speculated.insert(
            dep.name.clone(),
            prefetch::Dependency {
                at,
                timeout: dep.timeout,
                speculate: dep.speculate,
            },
        );
        egress_targets.push((dep.listen, target, pool));
    }
    if !pools.is_empty() {
        remove_leftovers(&service.name);
    }

    let mut listeners = vec![service.listen];
    listeners.extend(egress_targets.iter().map(|(addr, _, _)| *addr));
    check_bindable(&config, &listeners)?;

    let telemetry = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => Telemetry::otlp(endpoint, &service.name)?,
        None => Telemetry::disabled(),
    };
    let contexts = ContextTable::new(Limits {
        max_open: config.contexts.max_open,
        max_age: config.contexts.max_age,
        max_calls: config.contexts.max_calls,
        history: config.contexts.history,
    });
    let learning = Learning::start(
        learner(&config),
        config.predictor.trace_log.as_deref(),
        metrics.learner_contexts.clone(),
        metrics.learner_dropped.clone(),
    )?;
    let spec = &config.speculation;
    augur_predictor::headers::also_matter(&spec.key_headers);
    let prefetch = Prefetcher::new(
        prefetch::Settings {
            enabled: spec.enabled,
            confidence: spec.confidence,
            horizon_us: u64::try_from(spec.horizon.as_micros()).unwrap_or(u64::MAX),
            methods: spec.methods.clone(),
            routes: config
                .routes
                .iter()
                .map(|r| {
                    let rule = prefetch::RouteRule {
                        speculate: r.speculate,
                        methods: r.methods.clone(),
                    };
                    (r.route.clone(), rule)
                })
                .collect(),
        },
        Speculations::new(
            config.cache.capacity,
            spec.max_inflight as usize,
            spec.max_waste_ratio,
        ),
        speculated,
    );
    let shared = Arc::new(Shared {
        contexts,
        learning,
        prefetch,
        service: service.name.clone(),
        pools,
        capacity,
        metrics,
        telemetry,
        hasher: SecretHasher::new(),
        redact: config.contexts.redact_headers.clone(),
        max_header_size: usize::try_from(config.proxy.max_request_header_size)
            .unwrap_or(usize::MAX),
        body_limit: usize::try_from(config.predictor.max_body_capture).unwrap_or(usize::MAX),
        listeners,
        lifecycle: Lifecycle::default(),
    });

    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    server.bootstrap();
    let conf = server.configuration.clone();
    let ingress = Ingress {
        shared: shared.clone(),
        target: ingress_target,
    };
    server.add_service(proxy_service(&conf, "ingress", service.listen, ingress));
    for (listen, target, pool) in egress_targets {
        let name = format!("egress {}", target.name);
        let egress = Egress {
            shared: shared.clone(),
            target,
            pool,
        };
        server.add_service(proxy_service(&conf, &name, listen, egress));
    }
    let mut admin = Service::new(
        "admin".to_string(),
        HttpServer::new_app(Admin {
            shared: shared.clone(),
        }),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);
    server.add_service(admin);
    let mut sweeper = background_service("contexts", Sweeper(shared.clone()));
    sweeper.threads = Some(1);
    server.add_service(sweeper);
    if !shared.pools.is_empty() {
        let keeper = Keeper {
            shared: shared.clone(),
            stats_interval: config.containers.stats_interval,
        };
        let mut keeper = background_service("containers", keeper);
        keeper.threads = Some(1);
        server.add_service(keeper);
    }

    tracing::info!(
        "augur {}: ingress {} -> {}, {} dependencies, admin {}",
        env!("CARGO_PKG_VERSION"),
        service.listen,
        service.upstream,
        config.dependencies.len(),
        config.admin.listen
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Drain {
            shared: shared.clone(),
            timeout: config.proxy.shutdown_timeout,
        }),
    });
    // Reached only if pingora's own grace period ended before the drain
    // thread exited the process.
    shared.telemetry.shutdown(Duration::from_millis(500));
    Ok(())
}

/// The learner the configuration asks for.
fn learner(config: &Config) -> Learner {
    let settings = LearnerSettings {
        min_observations: config.predictor.min_observations,
        ..LearnerSettings::default()
    };
    if let PredictorKind::Onnx { model } = &config.predictor.kind {
        match augur_predictor::onnx::OnnxModel::load(model) {
            Ok(m) => {
                tracing::info!(
                    "predictor: ONNX model {} (window {})",
                    model.display(),
                    m.window()
                );
                return Learner::with_model(settings, Box::new(m));
            }
            Err(e) => tracing::error!("predictor: {e}; using the online model instead"),
        }
    }
    Learner::new(settings)
}

fn server_conf(config: &Config) -> ServerConf {
    let shutdown = config.proxy.shutdown_timeout;
    ServerConf {
        threads: config.proxy.threads,
        // One current-thread runtime per thread: cheaper per request than
        // a work-stealing pool, and a sidecar's listeners are many and small.
        work_stealing: false,
        // The drain thread exits first; this is the fallback.
        grace_period_seconds: Some(shutdown.as_secs() + 2),
        graceful_shutdown_timeout_seconds: Some(1),
        max_retries: 2,
        upstream_keepalive_pool_size: 1024,
        ..ServerConf::default()
    }
}

fn proxy_service<P>(
    conf: &Arc<ServerConf>,
    name: &str,
    listen: SocketAddr,
    proxy: P,
) -> Service<pingora::proxy::HttpProxy<P>>
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    // Downstream h2c stays off: pingora detects it by reading 24 bytes
    // before parsing, which leaves a shorter HTTP/1 request hanging.
    let mut service = http_proxy_service_with_name(conf, proxy, name);
    service.add_tcp(&listen.to_string());
    service
}

/// Binds each address once so that a port in use is a clear error now
/// rather than a panic inside pingora later.
fn check_bindable(config: &Config, listeners: &[SocketAddr]) -> anyhow::Result<()> {
    let all = listeners
        .iter()
        .chain(std::iter::once(&config.admin.listen));
    for addr in all {
        TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    Ok(())
}

/// An address to connect to for reaching a listener bound to `addr`.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Removes containers a previous augur of this service left behind.
fn remove_leftovers(service: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else { return };
    match runtime.block_on(DockerBackend::new().remove_owned(service)) {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} containers left by an earlier augur of {service:?}"),
        Err(e) => tracing::warn!("cannot look for leftover containers: {e}"),
    }
}

/// Stops every container this service runs (shutdown).
pub fn stop_containers(service: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else { return };
    let removal = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            DockerBackend::new().remove_owned(service),
        )
        .await
    });
    match removal {
        Ok(Ok(n)) if n > 0 => tracing::info!("stopped {n} containers"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("stopping containers: {e}"),
        Err(_) => tracing::warn!("stopping containers took over 5s; some may be left"),
    }
}

/// Expires abandoned contexts once a second.
struct Sweeper(Arc<Shared>);

#[async_trait]
impl BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let expired = self.0.contexts.expire();
                    for trace in &expired {
                        self.0.forget_speculations(*trace);
                    }
                    if !expired.is_empty() {
                        self.0.metrics.contexts_expired.inc_by(expired.len() as u64);
                    }
                    self.0.metrics.contexts_open.set(self.0.contexts.open_count() as i64);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Keep-alive of an adaptive pool until it has seen enough idle gaps.
const ADAPTIVE_FALLBACK: Duration = Duration::from_secs(60);
/// How long a prestarted container may wait past the horizon for its call.
const PRESTART_GRACE: Duration = Duration::from_secs(2);

/// Container upkeep: keep-alive, pre-warm and waste every 100 ms, Docker
/// stats every `stats_interval`.
struct Keeper {
    shared: Arc<Shared>,
    stats_interval: Duration,
}

#[async_trait]
impl BackgroundService for Keeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pools = self.shared.pools.clone();
        let interval = self.stats_interval;
        // Stats take a second each (Docker samples twice): their own task.
        let stats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                futures_util::future::join_all(pools.iter().map(|p| p.poll_stats())).await;
            }
        });
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for pool in &self.shared.pools {
                        pool.maintain().await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        stats.abort();
    }
}
