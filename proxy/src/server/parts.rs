//! Each part of augur built from its section of the configuration: the
//! upstreams (the service, each dependency, the containers) first, so that
//! names are resolved and leftovers removed before anything listens; then
//! the state the request path shares.

use std::net::SocketAddr;
use std::sync::Arc;

use augur_config::{Config, PredictorKind, WriteBarrier};
use augur_predictor::headers::KeyHeaders;
use augur_predictor::secret::SecretHasher;
use augur_predictor::{Learner, Settings as LearnerSettings};

use crate::containers::backend::Backend;
use crate::containers::capacity::Capacity;
use crate::containers::docker::DockerBackend;
use crate::containers::docker::swarm::SwarmBackend;
use crate::containers::pool::ContainerPool;
use crate::context::{ContextTable, Limits};
use crate::dependency::{Dependency, Environment};
use crate::http::Common;
use crate::http::names::Names;
use crate::http::upstream::{Settings, Target};
use crate::learning::Learning;
use crate::ops::access::AccessLog;
use crate::ops::lifecycle::Lifecycle;
use crate::ops::metrics::Metrics;
use crate::ops::telemetry::Telemetry;
use crate::speculation::{self, Barrier, RouteRule, Speculation};

/// Where requests go: the service and every dependency, with their
/// listeners.
pub(super) struct Upstreams {
    pub(super) service: Target,
    pub(super) dependencies: Vec<(SocketAddr, Arc<Dependency>)>,
    /// The pools of the dependencies that are containers.
    pub(super) pools: Vec<Arc<ContainerPool>>,
    /// The limit over all of them.
    pub(super) capacity: Arc<Capacity>,
    /// The host names among them, kept resolved.
    pub(super) names: Names,
    /// The swarm, when a dependency runs on one.
    pub(super) swarm: Option<Arc<SwarmBackend>>,
}

impl Upstreams {
    /// Resolves every upstream given by host name once (one that does not
    /// resolve yet is logged, and its requests fail until it does) and
    /// sets up the container pools.
    pub(super) fn build(config: &Config, metrics: &Metrics) -> anyhow::Result<Self> {
        let service = &config.service;
        let names = Names::default();
        let target = Target::new(
            "service",
            &service.name,
            &service.upstream,
            |host| names.get(host, metrics),
            Settings {
                protocol: service.protocol,
                tls: service.tls.as_ref(),
                connect_timeout: service.connect_timeout,
                timeout: service.timeout,
            },
        )?;
        let backend: Arc<dyn Backend> = Arc::new(DockerBackend::new());
        // One swarm backend for every dependency on a swarm: one sidecar,
        // one name in the services' demand labels.
        let on_swarm = config.dependencies.iter().any(|d| {
            matches!(&d.target, augur_config::Target::Container(c) if c.engine == augur_config::Engine::Swarm)
        });
        let swarm = on_swarm.then(|| Arc::new(SwarmBackend::new(metrics.swarm_conflicts.clone())));
        let swarm_backend: Option<Arc<dyn Backend>> = swarm.clone().map(|s| s as Arc<dyn Backend>);
        let capacity = Capacity::new(
            config.containers.max_containers,
            config.containers.max_memory,
            config.containers.max_cpus,
        );
        let env = Environment {
            service: &service.name,
            backend: &backend,
            swarm: swarm_backend.as_ref(),
            capacity: &capacity,
            metrics,
            names: &names,
            horizon: config.speculation.horizon,
        };
        let mut dependencies = Vec::new();
        for dep in &config.dependencies {
            let dependency = Arc::new(Dependency::from_config(dep, &env)?);
            dependencies.push((dep.listen, dependency));
        }
        let pools = dependencies
            .iter()
            .filter_map(|(_, d)| d.containers().cloned())
            .collect();
        if !names.is_empty() {
            names.resolve_now(&config.dns)?;
        }
        Ok(Self {
            names,
            service: target,
            dependencies,
            pools,
            capacity,
            swarm,
        })
    }

    /// Every proxy listener: the ingress, then each egress.
    pub(super) fn listeners(&self, config: &Config) -> Vec<SocketAddr> {
        std::iter::once(config.service.listen)
            .chain(self.dependencies.iter().map(|(listen, _)| *listen))
            .collect()
    }
}

/// What the request path shares: contexts, the learner, speculation,
/// telemetry, metrics and the lifecycle.
pub(super) fn common(
    config: &Config,
    upstreams: &Upstreams,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<Common>> {
    let telemetry = Arc::new(match &config.telemetry.otlp_endpoint {
        Some(endpoint) => Telemetry::otlp(endpoint, &config.service.name)?,
        None => Telemetry::disabled(),
    });
    let c = &config.contexts;
    let spec = &config.speculation;
    let contexts = Arc::new(ContextTable::new(Limits {
        max_open: c.max_open,
        max_age: c.max_age,
        max_calls: c.max_calls,
        history: c.history,
        max_body_bytes: usize::try_from(c.max_body_bytes).unwrap_or(usize::MAX),
    }));
    let key_headers = KeyHeaders::new(&spec.ignore_headers, &spec.key_headers);
    let mut learner = learner(config, &key_headers);
    let saving = config.predictor.state.as_ref().map(|path| {
        let pools = upstreams.pools.clone();
        let saving = crate::learning::Saving {
            path: path.clone(),
            service: config.service.name.clone(),
            extra: Arc::new(move || saved_gaps(&pools)),
        };
        let restored = restore(&mut learner, path, &config.service.name, &upstreams.pools);
        (saving, restored)
    });
    let learning = Arc::new(Learning::start(
        learner,
        config.predictor.trace_log.as_deref(),
        saving,
        metrics.clone(),
    )?);
    let hasher = SecretHasher::new();
    let speculation = Speculation::new(speculation::Parts {
        settings: speculation_settings(config),
        capacity_bytes: config.cache.capacity,
        max_inflight: spec.max_inflight as usize,
        max_waste_ratio: spec.max_waste_ratio,
        dependencies: upstreams
            .dependencies
            .iter()
            .map(|(_, d)| d.clone())
            .collect(),
        contexts: contexts.clone(),
        learning: learning.clone(),
        metrics: metrics.clone(),
        telemetry: telemetry.clone(),
        hasher: hasher.clone(),
        key_headers,
        body_limit: usize::try_from(config.predictor.max_body_capture).unwrap_or(usize::MAX),
    });
    let access = Arc::new(AccessLog::open(
        &config.log,
        metrics.access_log_dropped.clone(),
    )?);
    Ok(Arc::new(Common {
        contexts,
        speculation,
        learning,
        metrics,
        telemetry,
        lifecycle: Arc::new(Lifecycle::default()),
        access,
        hasher,
        redact: c.redact_headers.clone(),
        max_header_size: usize::try_from(config.proxy.max_request_header_size)
            .unwrap_or(usize::MAX),
        body_limit: usize::try_from(config.predictor.max_body_capture).unwrap_or(usize::MAX),
        clients: super::client_limits(config),
    }))
}

/// `[speculation]` and `[[route]]` as the gates read them.
fn speculation_settings(config: &Config) -> speculation::Settings {
    let spec = &config.speculation;
    speculation::Settings {
        enabled: spec.enabled,
        confidence: spec.confidence,
        horizon_us: crate::clock::micros(spec.horizon),
        methods: spec.methods.clone(),
        barrier: match spec.write_barrier {
            WriteBarrier::Dependency => Barrier::Dependency,
            WriteBarrier::All => Barrier::All,
        },
        routes: config
            .routes
            .iter()
            .map(|r| {
                let rule = RouteRule {
                    speculate: r.speculate,
                    methods: r.methods.clone(),
                };
                (r.route.clone(), rule)
            })
            .collect(),
    }
}

/// Learns the contexts of the saved state at `path` (`predictor.state`),
/// if there is a usable one; returns them. A missing file is a first start;
/// any other problem is logged and the state ignored.
fn restore(
    learner: &mut Learner,
    path: &std::path::Path,
    service: &str,
    pools: &[Arc<ContainerPool>],
) -> Vec<augur_predictor::Context> {
    use augur_predictor::state::{self, StateError};
    match state::read_path(path, service) {
        Ok(saved) => {
            let started = std::time::Instant::now();
            for ctx in &saved.contexts {
                learner.learn(ctx);
            }
            restore_gaps(&saved.header.extra, pools);
            let age = crate::clock::unix_ms().saturating_sub(saved.header.saved_unix_ms);
            tracing::info!(
                "predictor: learned {} contexts ({} routes) from the state {}, saved {:.0} s ago, in {:.0} ms",
                saved.contexts.len(),
                learner.route_count(),
                path.display(),
                age as f64 / 1000.0,
                started.elapsed().as_secs_f64() * 1000.0
            );
            saved.contexts
        }
        Err(StateError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(
                "predictor: no saved state at {} yet: starting with nothing learned",
                path.display()
            );
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(
                "predictor: the state {} is not used: {e}; starting with nothing learned (it is replaced at the next save)",
                path.display()
            );
            Vec::new()
        }
    }
}

/// What the saved state keeps of the containers: each pool's idle-gap
/// histogram (adaptive keep-alive), by dependency.
fn saved_gaps(pools: &[Arc<ContainerPool>]) -> serde_json::Value {
    if pools.is_empty() {
        return serde_json::Value::Null;
    }
    let gaps: serde_json::Map<String, serde_json::Value> = pools
        .iter()
        .map(|p| {
            (
                p.dependency().to_string(),
                serde_json::json!(p.saved_gaps()),
            )
        })
        .collect();
    serde_json::json!({ "idle_gaps": gaps })
}

/// Gives each pool the idle-gap histogram the state saved for it; one
/// this build cannot read is logged and left out.
fn restore_gaps(extra: &serde_json::Value, pools: &[Arc<ContainerPool>]) {
    for pool in pools {
        let Some(saved) = extra["idle_gaps"].get(pool.dependency()) else {
            continue;
        };
        let counts: Option<Vec<u32>> = saved.as_array().and_then(|a| {
            a.iter()
                .map(|c| c.as_u64().and_then(|c| u32::try_from(c).ok()))
                .collect()
        });
        if !counts.is_some_and(|c| pool.restore_gaps(&c)) {
            tracing::warn!(
                "predictor: the saved idle gaps of {} are not a histogram this build reads: left out",
                pool.dependency()
            );
        }
    }
}

/// The learner the configuration asks for.
fn learner(config: &Config, key_headers: &KeyHeaders) -> Learner {
    let settings = LearnerSettings {
        min_observations: config.predictor.min_observations,
        max_routes: config.predictor.max_routes,
        max_shapes: config.predictor.max_shapes,
        key_headers: key_headers.clone(),
        ..LearnerSettings::default()
    };
    let (model, auto) = match &config.predictor.kind {
        PredictorKind::Online => return Learner::new(settings),
        PredictorKind::Onnx { model } => (model, false),
        PredictorKind::Auto { model } => (model, true),
    };
    match augur_predictor::onnx::OnnxModel::load(model) {
        Ok(m) => {
            tracing::info!(
                "predictor: ONNX model {} (window {}){}",
                model.display(),
                m.window(),
                if auto {
                    ", beside the online model, each route to the one right more often"
                } else {
                    ""
                }
            );
            let model: Box<dyn augur_predictor::sequence::SequenceModel> = if auto {
                let online = augur_predictor::sequence::OnlineModel::new(
                    augur_predictor::sequence::OnlineSettings::default(),
                );
                Box::new(augur_predictor::auto::AutoModel::new(
                    Box::new(online),
                    Box::new(m),
                ))
            } else {
                Box::new(m)
            };
            return Learner::with_model(settings, model);
        }
        Err(e) => tracing::error!("predictor: {e}; using the online model instead"),
    }
    Learner::new(settings)
}
