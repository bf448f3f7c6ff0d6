//! The resource manager: dependencies that run as containers augur starts
//! and stops. `backend.rs` is the small trait a pool sees and `docker.rs`
//! its implementation for the local engine (with `docker/swarm.rs`, for
//! dependencies that are swarm services, the only files that import
//! bollard); `pool.rs`
//! keeps one dependency's instances (cold starts shared by every waiting
//! call, readiness, balancing, scaling, keep-alive) and `keepalive.rs`
//! learns how long to keep them; `capacity.rs` holds the global limit and
//! decides what gets room when it is short; `keeper.rs` is the background
//! service that keeps every pool.

pub(crate) mod backend;
pub(crate) mod capacity;
pub(crate) mod docker;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod keepalive;
pub(crate) mod keeper;
pub(crate) mod pool;

use std::time::Duration;

/// A runtime of its own, for start-up and the drain thread, which have
/// none.
fn runtime(what: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            tracing::warn!("cannot {what}: {e}");
            None
        }
    }
}

/// Takes this sidecar's demands off every swarm service it used
/// (shutdown), waiting at most `timeout`.
pub(crate) fn withdraw(swarm: &docker::swarm::SwarmBackend, timeout: Duration) {
    let Some(runtime) = runtime("withdraw the swarm demands") else {
        return;
    };
    match runtime.block_on(async { tokio::time::timeout(timeout, swarm.withdraw()).await }) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("withdrawing this sidecar's swarm demands: {e}"),
        Err(_) => tracing::warn!(
            "withdrawing this sidecar's swarm demands took over {timeout:?}; they expire by themselves"
        ),
    }
}

/// Removes every container labelled for `service` (leftovers at start-up,
/// everything at shutdown), waiting at most `timeout`.
pub(crate) fn remove_owned(service: &str, timeout: Duration) {
    let Some(runtime) = runtime(&format!("remove the containers of {service:?}")) else {
        return;
    };
    let removal = runtime.block_on(async {
        tokio::time::timeout(timeout, docker::DockerBackend::new().remove_owned(service)).await
    });
    match removal {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!("removed {n} containers of {service:?}"),
        Ok(Err(e)) => tracing::warn!("removing the containers of {service:?}: {e}"),
        Err(_) => tracing::warn!(
            "removing the containers of {service:?} took over {timeout:?}; some may be left"
        ),
    }
}
