//! Dependencies as Docker Swarm services (`engine = "swarm"`), scaled by
//! every sidecar that needs them, with no coordinator of augur's own.
//!
//! A dependency is one Swarm service: one the user's stack defines
//! (`swarm_service`), or one augur creates from the container section
//! (image, args, port, limits), labelled as augur's. Its instances are the
//! service's running tasks, reached through the port each task publishes
//! in host mode (the routing mesh is not used): on 127.0.0.1 for a task on
//! this sidecar's node, on its node's address for one elsewhere.
//!
//! **Demand.** Each sidecar says on the service itself how many instances
//! it wants and until when: a label `augur.demand.<sidecar>` =
//! `<instances>;<until unix ms>`. The replica count is the largest live
//! demand — not the sum: two sidecars that each need one instance of a
//! dependency that serves both need one — within `min_instances` and
//! `max_instances`. Every change is written with the version index the
//! engine gave when the service was read (optimistic concurrency): a write
//! that lost the race is read again and retried, and counted
//! (`augur_swarm_conflicts_total`). A sidecar renews its demand every
//! [`RENEW`]; one that dies stops counting when its demand expires
//! ([`LEASE`]), and the next write by any sidecar drops it. So a service
//! goes to zero only when no live sidecar wants an instance.
//!
//! **Idle gaps.** Each sidecar also writes when it last used the service
//! (`augur.used.<sidecar>` = unix ms, the time of the write while its calls
//! are in flight), and reads the others': a sidecar's idle gap that another
//! sidecar's calls broke is not the service's, and its adaptive keep-alive
//! learns the gaps between anyone's calls. Entries older than [`USED_KEPT`]
//! go with the next write.
//!
//! **Instances.** A start raises this sidecar's demand by one and waits
//! for a running task it does not hold yet; a stop lowers it. The engine
//! picks which task goes when the count falls; a task the pool still held
//! then stops answering, and the pool replaces it as it does a container
//! that dies.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, Limit, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec,
    TaskSpecContainerSpec, TaskSpecResources, TaskState,
};
use bollard::query_parameters::{InspectServiceOptions, ListTasksOptions, UpdateServiceOptions};
use parking_lot::Mutex;

use super::{DockerBackend, fail};
use crate::containers::backend::{
    LABEL_DEPENDENCY, LABEL_MANAGED, LABEL_SERVICE, ResourceError, Spec, Started, Usage,
};

/// The label prefix of a sidecar's demand on a service.
pub(crate) const DEMAND: &str = "augur.demand.";
/// The label prefix of a sidecar's last use of a service.
pub(crate) const USED: &str = "augur.used.";
/// How long a last use is kept on the service after it.
pub(crate) const USED_KEPT: Duration = Duration::from_secs(3600);
/// How long a demand lives unless renewed.
pub(crate) const LEASE: Duration = Duration::from_secs(10);
/// How often a sidecar renews its demands and drops expired ones.
pub(crate) const RENEW: Duration = Duration::from_secs(2);
/// Writes of one demand tried at most before giving up.
const TRIES: usize = 16;
/// How long a start waits for a running task.
const TASK_WAIT: Duration = Duration::from_secs(60);

/// This sidecar's view of one service.
#[derive(Debug, Default)]
struct Local {
    /// Instances this sidecar wants.
    wanted: usize,
    /// Tasks the pool holds as its instances.
    held: HashSet<String>,
    /// The demand is on the service (to take it off when it falls to 0).
    published: bool,
    /// This sidecar's calls to the service are in flight.
    busy: bool,
    /// When this sidecar last used the service (unix ms).
    used: Option<u64>,
    /// When another sidecar last did, as last read.
    others_used: Option<u64>,
    floor: usize,
    ceiling: usize,
}

pub(crate) struct SwarmBackend {
    docker: DockerBackend,
    /// This sidecar's name in demand labels.
    sidecar: String,
    /// By Swarm service name.
    local: Mutex<HashMap<String, Local>>,
    /// This engine's node in the swarm, once known.
    node: Mutex<Option<String>>,
    conflicts: prometheus::IntCounter,
}

/// This sidecar's view of the service of `spec`, with the service's
/// replica range (so that no write of it can go outside that range).
fn entry<'a>(local: &'a mut HashMap<String, Local>, spec: &Spec) -> &'a mut Local {
    let l = local.entry(service_name(spec)).or_default();
    l.floor = spec.min_instances;
    l.ceiling = spec.max_instances;
    l
}

/// A demand read from a label: (instances, until unix ms).
fn parse_demand(value: &str) -> Option<(usize, u64)> {
    let (n, until) = value.split_once(';')?;
    Some((n.parse().ok()?, until.parse().ok()?))
}

/// The replica count the live demands ask for.
pub(crate) fn replicas(
    labels: &HashMap<String, String>,
    now_ms: u64,
    floor: usize,
    ceiling: usize,
) -> usize {
    let wanted = labels
        .iter()
        .filter(|(k, _)| k.starts_with(DEMAND))
        .filter_map(|(_, v)| parse_demand(v))
        .filter(|(_, until)| *until >= now_ms)
        .map(|(n, _)| n)
        .max()
        .unwrap_or(0);
    wanted.clamp(floor, ceiling.max(floor))
}

/// The Swarm service a dependency's instances are tasks of.
pub(crate) fn service_name(spec: &Spec) -> String {
    spec.swarm_service
        .clone()
        .unwrap_or_else(|| format!("augur-{}-{}", spec.service, spec.dependency))
}

impl SwarmBackend {
    pub(crate) fn new(conflicts: prometheus::IntCounter) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "augur".to_string());
        let sidecar = format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..));
        Self {
            docker: DockerBackend::new(),
            sidecar,
            local: Mutex::new(HashMap::new()),
            node: Mutex::new(None),
            conflicts,
        }
    }

    async fn client(&self) -> Result<Docker, ResourceError> {
        self.docker.client().await
    }

    /// The service for `spec`: the one named, which must exist, or augur's
    /// own, made at replica count 0 the first time.
    async fn ensure(&self, docker: &Docker, spec: &Spec, name: &str) -> Result<(), ResourceError> {
        match docker
            .inspect_service(name, None::<InspectServiceOptions>)
            .await
        {
            Ok(_) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) if spec.swarm_service.is_none() => {}
            Err(e) => return Err(fail("inspect service", name)(e)),
        }
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_SERVICE.to_string(), spec.service.clone()),
            (LABEL_DEPENDENCY.to_string(), spec.dependency.clone()),
        ]);
        let service = ServiceSpec {
            name: Some(name.to_string()),
            labels: Some(labels),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(spec.image.clone()),
                    args: (!spec.args.is_empty()).then(|| spec.args.clone()),
                    ..TaskSpecContainerSpec::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
                        memory_bytes: spec.memory.and_then(|m| i64::try_from(m).ok()),
                        pids: None,
                    }),
                    ..TaskSpecResources::default()
                }),
                ..TaskSpec::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }),
                ..ServiceSpecMode::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                ports: Some(vec![EndpointPortConfig {
                    protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                    target_port: Some(i64::from(spec.port)),
                    // None: the engine picks a free host port per task.
                    published_port: None,
                    publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                    name: None,
                }]),
                ..EndpointSpec::default()
            }),
            ..ServiceSpec::default()
        };
        match docker.create_service(service, None).await {
            Ok(_) => Ok(()),
            // Another sidecar made it first.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(fail("create service", name)(e)),
        }
    }

    /// Writes this sidecar's demand for `name` (`wanted` instances, until
    /// a lease from now; none when 0) and the replica count all live
    /// demands ask for, retrying when another sidecar wrote in between.
    /// With no demand of its own to write, it writes only if an expired
    /// demand is to go or the count is off. Returns the replica count.
    async fn publish(&self, docker: &Docker, name: &str) -> Result<usize, ResourceError> {
        for _ in 0..TRIES {
            let (wanted, published, floor, ceiling, used) = {
                let local = self.local.lock();
                let l = local.get(name);
                (
                    l.map_or(0, |l| l.wanted),
                    l.is_some_and(|l| l.published),
                    l.map_or(0, |l| l.floor),
                    l.map_or(0, |l| l.ceiling),
                    l.and_then(|l| if l.busy { Some(u64::MAX) } else { l.used }),
                )
            };
            let service = match docker
                .inspect_service(name, None::<InspectServiceOptions>)
                .await
            {
                Ok(service) => service,
                // Not made yet (augur makes it at the first start): there
                // is nothing to keep in order.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) if wanted == 0 && !published => return Ok(0),
                Err(e) => return Err(fail("inspect service", name)(e)),
            };
            let version = service.version.and_then(|v| v.index).unwrap_or(0);
            let mut spec = service.spec.unwrap_or_default();
            let mut labels = spec.labels.take().unwrap_or_default();
            let original = labels.clone();
            let replicas_before = spec
                .mode
                .as_ref()
                .and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas);
            let now = crate::clock::unix_ms();
            let own = format!("{DEMAND}{}", self.sidecar);
            let own_used = format!("{USED}{}", self.sidecar);
            let others_used = labels
                .iter()
                .filter(|(k, _)| k.starts_with(USED) && **k != own_used)
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .max();
            if let Some(l) = self.local.lock().get_mut(name) {
                l.others_used = others_used;
            }
            // Expired demands and old uses go with every write.
            let kept = USED_KEPT.as_millis() as u64;
            labels.retain(|k, v| {
                if k.starts_with(DEMAND) {
                    parse_demand(v).is_some_and(|(_, until)| until >= now)
                } else if k.starts_with(USED) {
                    v.parse::<u64>()
                        .is_ok_and(|t| t.saturating_add(kept) >= now)
                } else {
                    true
                }
            });
            if wanted > 0 {
                let until = now + LEASE.as_millis() as u64;
                labels.insert(own, format!("{wanted};{until}"));
            } else {
                labels.remove(&own);
            }
            if let Some(used) = used {
                labels.insert(own_used, used.min(now).to_string());
            }
            let count = replicas(&labels, now, floor, ceiling);
            if wanted == 0
                && !published
                && labels == original
                && replicas_before == Some(count as i64)
            {
                return Ok(count);
            }
            spec.labels = Some(labels);
            spec.mode = Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(count as i64),
                }),
                ..ServiceSpecMode::default()
            });
            let options = UpdateServiceOptions {
                version: version as i32,
                ..UpdateServiceOptions::default()
            };
            match docker.update_service(name, spec, options, None).await {
                Ok(_) => {
                    if let Some(l) = self.local.lock().get_mut(name) {
                        l.published = wanted > 0;
                    }
                    return Ok(count);
                }
                Err(e) if is_conflict(&e) => {
                    self.conflicts.inc();
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(5..50))).await;
                }
                Err(e) => return Err(fail("update service", name)(e)),
            }
        }
        Err(ResourceError {
            operation: "update service",
            subject: name.to_string(),
            reason: format!("{TRIES} writes in a row lost to other sidecars' writes"),
        })
    }

    /// A running task of `name` with its published port that the pool
    /// does not hold yet.
    async fn free_task(
        &self,
        docker: &Docker,
        name: &str,
        port: u16,
    ) -> Result<Option<(String, SocketAddr)>, ResourceError> {
        let filters = HashMap::from([
            ("service".to_string(), vec![name.to_string()]),
            ("desired-state".to_string(), vec!["running".to_string()]),
        ]);
        let tasks = docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(fail("list tasks", name))?;
        let held = self
            .local
            .lock()
            .get(name)
            .map(|l| l.held.clone())
            .unwrap_or_default();
        for task in tasks {
            let Some(id) = task.id else { continue };
            let Some(status) = task.status else { continue };
            if status.state != Some(TaskState::RUNNING) || held.contains(&id) {
                continue;
            }
            let published = status
                .port_status
                .and_then(|p| p.ports)
                .unwrap_or_default()
                .into_iter()
                .find(|p| p.target_port == Some(i64::from(port)))
                .and_then(|p| p.published_port)
                .and_then(|p| u16::try_from(p).ok());
            if let Some(p) = published {
                let host = self.host_of(docker, task.node_id.as_deref()).await?;
                return Ok(Some((id, SocketAddr::new(host, p))));
            }
        }
        Ok(None)
    }

    /// Where a task on `node` publishes its ports: 127.0.0.1 on this
    /// engine's node, else the node's address in the swarm.
    async fn host_of(&self, docker: &Docker, node: Option<&str>) -> Result<IpAddr, ResourceError> {
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let Some(node) = node else { return Ok(local) };
        let known = self.node.lock().clone();
        let this = match known {
            Some(this) => this,
            None => {
                let info = docker
                    .info()
                    .await
                    .map_err(fail("read the engine's info", "swarm"))?;
                let this = info.swarm.and_then(|s| s.node_id).unwrap_or_default();
                *self.node.lock() = Some(this.clone());
                this
            }
        };
        if node == this {
            return Ok(local);
        }
        let found = docker
            .inspect_node(node)
            .await
            .map_err(fail("inspect node", node))?;
        let addr = found.status.and_then(|s| s.addr).unwrap_or_default();
        addr.parse().map_err(|_| ResourceError {
            operation: "inspect node",
            subject: node.to_string(),
            reason: format!("no usable address ({addr:?})"),
        })
    }

    pub(crate) async fn start(&self, spec: &Spec) -> Result<Started, ResourceError> {
        let docker = self.client().await?;
        let name = service_name(spec);
        self.ensure(&docker, spec, &name).await?;
        {
            let mut local = self.local.lock();
            entry(&mut local, spec).wanted += 1;
        }
        let lower = |this: &Self| {
            if let Some(l) = this.local.lock().get_mut(&name) {
                l.wanted = l.wanted.saturating_sub(1);
            }
        };
        if let Err(e) = self.publish(&docker, &name).await {
            lower(self);
            return Err(e);
        }
        let deadline = Instant::now() + TASK_WAIT;
        loop {
            match self.free_task(&docker, &name, spec.port).await {
                Ok(Some((id, addr))) => {
                    if let Some(l) = self.local.lock().get_mut(&name) {
                        l.held.insert(id.clone());
                    }
                    return Ok(Started { id, addr });
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(None) => {
                    lower(self);
                    let _ = self.publish(&docker, &name).await;
                    return Err(ResourceError {
                        operation: "wait for a task",
                        subject: name,
                        reason: format!("no task running within {TASK_WAIT:?}"),
                    });
                }
                Err(e) => {
                    lower(self);
                    return Err(e);
                }
            }
        }
    }

    pub(crate) async fn stop(&self, id: &str) -> Result<(), ResourceError> {
        let name = {
            let mut local = self.local.lock();
            let found = local
                .iter_mut()
                .find(|(_, l)| l.held.contains(id))
                .map(|(name, l)| {
                    l.held.remove(id);
                    l.wanted = l.wanted.saturating_sub(1);
                    name.clone()
                });
            match found {
                Some(name) => name,
                None => return Ok(()),
            }
        };
        let docker = self.client().await?;
        self.publish(&docker, &name).await.map(|_| ())
    }

    /// Renews this sidecar's demands (each for another lease) and drops
    /// the expired ones of others — of sidecars that died — recomputing
    /// each service's replica count, on every service this sidecar has
    /// used. Called every [`RENEW`].
    pub(crate) async fn renew(&self) -> Result<(), ResourceError> {
        let names: Vec<String> = self.local.lock().keys().cloned().collect();
        self.publish_each(names).await
    }

    /// [`SwarmBackend::publish`] on each of `names`, every one tried; the
    /// first failure is returned.
    async fn publish_each(&self, names: Vec<String>) -> Result<(), ResourceError> {
        if names.is_empty() {
            return Ok(());
        }
        let docker = self.client().await?;
        let mut first = None;
        for name in names {
            if let Err(e) = self.publish(&docker, &name).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Takes this sidecar's demands off every service (shutdown).
    pub(crate) async fn withdraw(&self) -> Result<(), ResourceError> {
        let names: Vec<String> = {
            let mut local = self.local.lock();
            for l in local.values_mut() {
                l.wanted = 0;
                l.busy = false;
                l.held.clear();
            }
            local
                .iter()
                .filter(|(_, l)| l.published)
                .map(|(n, _)| n.clone())
                .collect()
        };
        self.publish_each(names).await
    }

    /// Reconciles the service of `spec` with every renewal from now on.
    pub(crate) fn adopt(&self, spec: &Spec) {
        entry(&mut self.local.lock(), spec);
    }

    /// Notes this sidecar's use of the service of `spec` (written on it
    /// with the next write).
    pub(crate) fn note_use(&self, spec: &Spec, busy: bool, unix_ms: u64) {
        let mut local = self.local.lock();
        let l = entry(&mut local, spec);
        l.busy = busy;
        l.used = Some(unix_ms);
    }

    /// When another sidecar last used the service of `spec`, as last read.
    pub(crate) fn others_last_use(&self, spec: &Spec) -> Option<u64> {
        self.local.lock().get(&service_name(spec))?.others_used
    }

    /// What a task's container uses (on this node).
    pub(crate) async fn stats(&self, id: &str) -> Result<Usage, ResourceError> {
        let docker = self.client().await?;
        let task = docker
            .inspect_task(id)
            .await
            .map_err(fail("inspect task", super::short(id)))?;
        let container = task
            .status
            .and_then(|s| s.container_status)
            .and_then(|c| c.container_id)
            .ok_or_else(|| ResourceError {
                operation: "inspect task",
                subject: super::short(id).to_string(),
                reason: "it has no container".into(),
            })?;
        crate::containers::backend::Backend::stats(&self.docker, &container).await
    }
}

/// Whether the engine refused a write for its version index being stale
/// (another writer came first).
fn is_conflict(e: &bollard::errors::Error) -> bool {
    e.to_string().contains("out of sequence")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_count_is_the_largest_live_demand_within_the_limits() {
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let now = 10_000;
        let l = labels(&[
            ("augur.demand.a", "1;20000"),
            ("augur.demand.b", "3;20000"),
            ("augur.demand.dead", "9;5000"),
            ("augur.managed", "true"),
            ("augur.demand.junk", "x;y"),
        ]);
        assert_eq!(
            replicas(&l, now, 0, 4),
            3,
            "max, not sum; the expired one left out"
        );
        assert_eq!(replicas(&l, now, 0, 2), 2, "at most max_instances");
        assert_eq!(
            replicas(&labels(&[]), now, 1, 4),
            1,
            "at least min_instances"
        );
        assert_eq!(replicas(&l, 30_000, 0, 4), 0, "everything expired");
    }
}
