//! Start-up, step by step: build each part from its section of the
//! configuration, make sure every address can be bound, add one pingora
//! service per listener and the background services, then run until a
//! signal and drain. `server/parts.rs` builds the parts from their config
//! sections; `server/sweeper.rs` expires abandoned contexts.

mod parts;
mod stages;
mod sweeper;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use augur_config::{Config, ListenProtocol};
use pingora::apps::HttpServerOptions;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::{ProxyHttp, http_proxy};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::containers::keeper::Keeper;
use crate::http::Common;
use crate::http::downstream::{self, Guarded, Lazy};
use crate::http::egress::Egress;
use crate::http::ingress::Ingress;
use crate::http::listeners::Listeners;
use crate::ops::admin::Admin;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Drain;
use parts::Upstreams;
use stages::Staged;
use sweeper::Sweeper;

/// How long removing an earlier augur's containers may delay start-up.
const LEFTOVER_REMOVAL: Duration = Duration::from_secs(30);

/// Runs augur until SIGTERM or SIGINT. Returns an error only for problems
/// found before the listeners start.
pub fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    crate::http::tls::check_system_roots()?;
    let upstreams = Upstreams::build(&config, &metrics)?;
    let service = &config.service;
    let ingress_tls = service
        .listen_tls
        .as_ref()
        .map(|files| {
            let h2 = service.listen_protocol != ListenProtocol::Http1;
            crate::http::tls::listener_settings(files, h2)
        })
        .transpose()?;
    if !upstreams.pools.is_empty() {
        crate::containers::remove_owned(&config.service.name, LEFTOVER_REMOVAL);
    }
    let listeners = upstreams.listeners(&config);
    check_bindable(&config.admin.listen, &listeners)?;
    let common = parts::common(&config, &upstreams, metrics)?;

    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    server.bootstrap();
    let conf = server.configuration.clone();
    let ingress = Ingress {
        common: common.clone(),
        target: upstreams.service.clone(),
        scheme: if ingress_tls.is_some() {
            "https"
        } else {
            "http"
        },
    };
    let clients = client_limits(&config);
    let mut inbound = Listeners::default();
    inbound.add(
        config.service.listen,
        guarded(
            &conf,
            ("ingress", config.service.listen_protocol),
            ingress,
            clients,
            &common.metrics,
        ),
    );
    let mut proxies = Listeners::default();
    for ((listen, dependency), dep) in upstreams.dependencies.iter().zip(&config.dependencies) {
        let name = format!("egress {}", dependency.name());
        let egress = Egress {
            common: common.clone(),
            dependency: dependency.clone(),
        };
        proxies.add(
            *listen,
            guarded(
                &conf,
                (&name, dep.listen_protocol),
                egress,
                clients,
                &common.metrics,
            ),
        );
    }
    server.add_service(Staged {
        ingress: listening("ingress", inbound, ingress_tls.map(|t| (service.listen, t))),
        egress: (!upstreams.dependencies.is_empty()).then(|| listening("egress", proxies, None)),
        closing: common.lifecycle.closing(),
        threads: config.proxy.threads,
    });
    server.add_service(admin_service(&config, &common, &upstreams, listeners));
    let mut sweeper = background_service("contexts", Sweeper::new(&common));
    sweeper.threads = Some(1);
    server.add_service(sweeper);
    if !upstreams.names.is_empty() {
        let mut names = background_service("dns", upstreams.names.refresher(&config.dns));
        names.threads = Some(1);
        server.add_service(names);
    }
    if !upstreams.pools.is_empty() {
        let keeper = Keeper {
            pools: upstreams.pools.clone(),
            stats_interval: config.containers.stats_interval,
            swarm: upstreams.swarm.clone(),
        };
        let mut keeper = background_service("containers", keeper);
        keeper.threads = Some(1);
        server.add_service(keeper);
    }

    tracing::info!(
        "augur {}: ingress {} -> {}, {} dependencies, admin {}",
        env!("CARGO_PKG_VERSION"),
        config.service.listen,
        config.service.upstream,
        config.dependencies.len(),
        config.admin.listen
    );
    let telemetry = common.telemetry.clone();
    server.run(RunArgs {
        shutdown_signal: Box::new(Drain {
            lifecycle: common.lifecycle.clone(),
            telemetry: telemetry.clone(),
            access: common.access.clone(),
            learning: common.learning.clone(),
            pools: upstreams.pools.clone(),
            swarm: upstreams.swarm.clone(),
            service: config.service.name.clone(),
            timeout: config.proxy.shutdown_timeout,
            grace: (!config.dependencies.is_empty()).then_some(config.proxy.drain_grace),
        }),
    });
    // Reached only if pingora's own grace period ended before the drain
    // thread exited the process.
    telemetry.shutdown(Duration::from_millis(500));
    Ok(())
}

fn server_conf(config: &Config) -> ServerConf {
    let shutdown = config.proxy.shutdown_timeout;
    ServerConf {
        // The proxy listeners' threads ([`proxy_service`]); the other
        // services say how many they run.
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

/// How long a client may take, and how many one listener holds.
pub(super) fn client_limits(config: &Config) -> downstream::Limits {
    let p = &config.proxy;
    downstream::Limits {
        header_timeout: p.header_timeout,
        body_timeout: p.body_timeout,
        idle_timeout: p.idle_timeout,
        max_connections: p.max_connections,
    }
}

/// One listener's apps: a pingora proxy for each protocol it takes, behind
/// the client limits. The HTTP/2 one, made at its first connection, has
/// pingora's h2c detection on; it gets only connections [`Guarded`] saw
/// begin with the preface.
fn guarded<P>(
    conf: &Arc<ServerConf>,
    (name, protocol): (&str, ListenProtocol),
    proxy: P,
    limits: downstream::Limits,
    metrics: &Metrics,
) -> Guarded<pingora::proxy::HttpProxy<P>>
where
    P: ProxyHttp + Clone + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    let h1 = (protocol != ListenProtocol::H2c).then(|| http_proxy(conf, proxy.clone()));
    let conf = conf.clone();
    let h2 = (protocol != ListenProtocol::Http1).then(|| {
        Lazy::new(move || {
            let mut app = http_proxy(&conf, proxy.clone());
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            options.h2_idle_timeout = Some(limits.idle_timeout);
            app.server_options = Some(options);
            app
        })
    });
    Guarded::new((h1, h2), name, limits, metrics)
}

/// Each client connection's read buffer, in front of pingora's own header
/// buffer (4 KiB, grown as needed) and body buffer. pingora's default is
/// 64 KiB, allocated zeroed for every connection: 4 KiB costs less CPU per
/// request and a fifth of the memory per open connection
/// (`augur-loadtests bench-settings`, BENCHMARKS.md).
const CLIENT_READ_BUFFER: usize = 4096;

/// A listener with augur's buffer sizes (the write buffer keeps pingora's
/// 1460 bytes, one segment), and TLS when given.
fn listener(addr: SocketAddr, tls: Option<TlsSettings>) -> ListenerConfig {
    let config = ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings {
        read: Some(CLIENT_READ_BUFFER),
        write: None,
    });
    match tls {
        Some(tls) => config.tls(tls),
        None => config,
    }
}

/// A pingora service of `listeners` (run by [`Staged`], on its threads);
/// `tls` is one listener's TLS.
fn listening(
    name: &str,
    listeners: Listeners,
    mut tls: Option<(SocketAddr, TlsSettings)>,
) -> Service<Listeners> {
    let addresses: Vec<SocketAddr> = listeners.addresses().collect();
    let mut service = Service::new(name.to_string(), listeners);
    for addr in addresses {
        let settings = tls.take_if(|(at, _)| *at == addr).map(|(_, t)| t);
        service.add_listener(listener(addr, settings));
    }
    service
}

fn admin_service(
    config: &Config,
    common: &Common,
    upstreams: &Upstreams,
    listeners: Vec<SocketAddr>,
) -> Service<HttpServer<Admin>> {
    let admin = Admin {
        contexts: common.contexts.clone(),
        speculation: common.speculation.clone(),
        learning: common.learning.clone(),
        pools: upstreams.pools.clone(),
        capacity: upstreams.capacity.clone(),
        metrics: common.metrics.clone(),
        lifecycle: common.lifecycle.clone(),
        listeners,
        config: serde_json::to_value(config.redacted()).unwrap_or_default(),
    };
    let mut service = Service::new("admin".to_string(), HttpServer::new_app(admin));
    service.add_listener(listener(config.admin.listen, None));
    service.threads = Some(1);
    service
}

/// Binds each address once so that a port in use is a clear error now
/// rather than a panic inside pingora later.
fn check_bindable(admin: &SocketAddr, listeners: &[SocketAddr]) -> anyhow::Result<()> {
    for addr in listeners.iter().chain(std::iter::once(admin)) {
        TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    Ok(())
}
