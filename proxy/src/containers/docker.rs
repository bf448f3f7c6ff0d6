//! The Docker Engine backend, through bollard: the only module that
//! imports it. Every error names the Docker operation that failed.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StartContainerOptions, StatsOptions, StopContainerOptions,
};
use futures_util::StreamExt as _;

pub(crate) mod swarm;

use super::backend::{
    Backend, LABEL_MANAGED, LABEL_SERVICE, ResourceError, Spec, Started, Usage, short,
};

/// The local Docker Engine. It connects on first use and again after a
/// failure, so a daemon that is down at start-up or restarts later only
/// fails the calls made meanwhile.
#[derive(Default)]
pub(crate) struct DockerBackend {
    docker: tokio::sync::Mutex<Option<Docker>>,
}

fn fail(
    operation: &'static str,
    subject: impl Into<String>,
) -> impl FnOnce(bollard::errors::Error) -> ResourceError {
    let subject = subject.into();
    move |e| ResourceError {
        operation,
        subject,
        reason: e.to_string(),
    }
}

impl DockerBackend {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The client: the one connected before, or a new connection to the
    /// local engine (`DOCKER_HOST` or the default socket) that agreed on
    /// an API version.
    async fn client(&self) -> Result<Docker, ResourceError> {
        let mut slot = self.docker.lock().await;
        if let Some(docker) = slot.as_ref() {
            return Ok(docker.clone());
        }
        let docker =
            Docker::connect_with_local_defaults().map_err(fail("connect", "local engine"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(fail("connect", "local engine"))?;
        *slot = Some(docker.clone());
        Ok(docker)
    }

    /// Forgets the client after an error, so the next call reconnects.
    async fn forget(&self) {
        *self.docker.lock().await = None;
    }

    /// Removes every container labelled for `service`: leftovers at
    /// start-up, everything at shutdown. Returns how many.
    pub(crate) async fn remove_owned(&self, service: &str) -> Result<usize, ResourceError> {
        let ids = self.owned(service).await?;
        for id in &ids {
            self.stop(id).await?;
        }
        Ok(ids.len())
    }
}

#[async_trait]
impl Backend for DockerBackend {
    async fn start(&self, spec: &Spec) -> Result<Started, ResourceError> {
        let docker = self.client().await?;
        let result = start(&docker, spec).await;
        if result.is_err() {
            self.forget().await;
        }
        result
    }

    async fn stop(&self, id: &str) -> Result<(), ResourceError> {
        let docker = self.client().await?;
        stop(&docker, id).await
    }

    async fn owned(&self, service: &str) -> Result<Vec<String>, ResourceError> {
        let docker = self.client().await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_SERVICE}={service}"),
            ],
        )]);
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..ListContainersOptions::default()
            }))
            .await
            .map_err(fail("list", format!("containers of {service}")));
        if list.is_err() {
            self.forget().await;
        }
        Ok(list?.into_iter().filter_map(|c| c.id).collect())
    }

    async fn stats(&self, id: &str) -> Result<Usage, ResourceError> {
        let docker = self.client().await?;
        let short = short(id).to_string();
        // Not one-shot: Docker samples twice, so the CPU delta is real.
        let mut stream = docker.stats(
            id,
            Some(StatsOptions {
                stream: false,
                one_shot: false,
            }),
        );
        let stats = match stream.next().await {
            Some(Ok(stats)) => stats,
            Some(Err(e)) => return Err(fail("stats", short)(e)),
            None => {
                return Err(ResourceError {
                    operation: "stats",
                    subject: short,
                    reason: "no answer".into(),
                });
            }
        };
        let total = |c: &Option<bollard::models::ContainerCpuStats>| {
            let c = c.as_ref()?;
            Some((
                c.cpu_usage.as_ref()?.total_usage?,
                c.system_cpu_usage?,
                c.online_cpus,
            ))
        };
        let cpu_cores = match (total(&stats.cpu_stats), total(&stats.precpu_stats)) {
            (Some((cpu, system, cpus)), Some((pre_cpu, pre_system, _))) if system > pre_system => {
                let share = cpu.saturating_sub(pre_cpu) as f64 / (system - pre_system) as f64;
                share * f64::from(cpus.unwrap_or(1))
            }
            _ => 0.0,
        };
        // Page cache the kernel can drop does not count (as `docker stats`).
        let memory_bytes = stats.memory_stats.map_or(0, |m| {
            let cache = m.stats.as_ref().and_then(|s| {
                s.get("inactive_file")
                    .or_else(|| s.get("total_inactive_file"))
                    .copied()
            });
            m.usage.unwrap_or(0).saturating_sub(cache.unwrap_or(0))
        });
        Ok(Usage {
            cpu_cores,
            memory_bytes,
        })
    }
}

async fn start(docker: &Docker, spec: &Spec) -> Result<Started, ResourceError> {
    {
        let subject = format!("{}, image {}", spec.dependency, spec.image);
        let port = format!("{}/tcp", spec.port);
        let bindings = HashMap::from([(
            port.clone(),
            Some(vec![PortBinding {
                host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
                // Empty: Docker picks a free port; read back below.
                host_port: Some(String::new()),
            }]),
        )]);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            labels: Some(spec.labels()),
            exposed_ports: Some(vec![port.clone()]),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
                memory: spec.memory.and_then(|m| i64::try_from(m).ok()),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let created = docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(fail("create", subject.clone()))?;
        let id = created.id;
        if let Err(e) = docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
        {
            let _ = stop(docker, &id).await;
            return Err(fail("start", subject)(e));
        }
        let inspected = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .map_err(fail("inspect", subject.clone()))?;
        let host_port = inspected
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(&port).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .and_then(|p| p.parse::<u16>().ok());
        match host_port {
            Some(p) => Ok(Started {
                id,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
            }),
            None => {
                let _ = stop(docker, &id).await;
                Err(ResourceError {
                    operation: "inspect",
                    subject,
                    reason: format!("port {port} was not published"),
                })
            }
        }
    }
}

async fn stop(docker: &Docker, id: &str) -> Result<(), ResourceError> {
    let short = short(id).to_string();
    // A container that exited already cannot be stopped; removal is what counts.
    let _ = docker
        .stop_container(
            id,
            Some(StopContainerOptions {
                signal: None,
                t: Some(1),
            }),
        )
        .await;
    docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                ..RemoveContainerOptions::default()
            }),
        )
        .await
        .map_err(fail("remove", short))
}

#[async_trait]
impl Backend for swarm::SwarmBackend {
    async fn start(&self, spec: &Spec) -> Result<Started, ResourceError> {
        swarm::SwarmBackend::start(self, spec).await
    }

    async fn stop(&self, id: &str) -> Result<(), ResourceError> {
        swarm::SwarmBackend::stop(self, id).await
    }

    /// A swarm service is shared with other sidecars: nothing on it is this
    /// augur's alone to remove.
    async fn owned(&self, _service: &str) -> Result<Vec<String>, ResourceError> {
        Ok(Vec::new())
    }

    async fn stats(&self, id: &str) -> Result<Usage, ResourceError> {
        swarm::SwarmBackend::stats(self, id).await
    }

    fn adopt(&self, spec: &Spec) {
        swarm::SwarmBackend::adopt(self, spec);
    }

    fn note_use(&self, spec: &Spec, busy: bool, unix_ms: u64) {
        swarm::SwarmBackend::note_use(self, spec, busy, unix_ms);
    }

    fn others_last_use(&self, spec: &Spec) -> Option<u64> {
        swarm::SwarmBackend::others_last_use(self, spec)
    }
}
