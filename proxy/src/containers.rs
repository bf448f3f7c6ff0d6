//! The resource manager: dependencies that run as containers augur starts
//! and stops. `backend.rs` is the small trait a pool sees and `docker.rs`
//! its one implementation (the only file that imports bollard); `pool.rs`
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

/// Removes every container labelled for `service` (leftovers at start-up,
/// everything at shutdown), waiting at most `timeout`. Runs on a runtime of
/// its own: start-up and the drain thread have none.
pub(crate) fn remove_owned(service: &str, timeout: Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!("cannot remove the containers of {service:?}: {e}");
            return;
        }
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
