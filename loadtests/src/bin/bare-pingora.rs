//! The floor under augur in `bench-passthrough`: a pingora `ProxyHttp` of
//! the same version that does nothing but pick its one upstream, run with
//! augur's server settings (one current-thread runtime, the same
//! upstream keep-alive pool, listener buffers and upstream timeouts) and
//! allocator. Whatever augur costs beyond this row is augur's; what this
//! row costs beyond nginx is pingora's.
//!
//!     bare-pingora --listen 127.0.0.1:8080 --upstream 127.0.0.1:9000
//!
//! `--hop ADDR` adds a second listener to the same service, as augur's
//! egress listener beside its ingress: `--listen` then forwards to `ADDR`
//! and `ADDR` to `--upstream`, two hops on one thread (the floor under
//! augur's two-hop row).
//!
//! `bench-settings` runs it with one setting changed at a time:
//! `--read-buffer BYTES` and `--write-buffer BYTES` (the downstream
//! connection's L4 buffers, 0 for none), `--pool N` (the upstream
//! keep-alive pool) and `--no-timeouts` (no per-read and per-write
//! upstream timeouts).

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// augur's listener buffers (`CLIENT_READ_BUFFER` in `proxy/src/server.rs`);
/// `None` is pingora's default (64 KiB read, 1460 B write).
const AUGUR_READ_BUFFER: Option<usize> = Some(4096);
const AUGUR_WRITE_BUFFER: Option<usize> = None;

struct Bare {
    /// Where a request goes, by the local address it came in on.
    peers: Vec<(SocketAddr, HttpPeer)>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        session: &mut Session,
        _: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        let local = session
            .downstream_session
            .digest()
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| s.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let peer = match self.peers.as_slice() {
            [(_, only)] => only,
            peers => peers
                .iter()
                .find(|(listen, _)| Some(*listen) == local)
                .map_or(&peers[0].1, |(_, peer)| peer),
        };
        Ok(Box::new(peer.clone()))
    }
}

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    /// A second listener between `listen` and `upstream`.
    hop: Option<SocketAddr>,
    /// `None`: augur's default.
    read_buffer: Option<usize>,
    write_buffer: Option<usize>,
    pool: usize,
    timeouts: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut upstream, mut hop) = (None, None, None);
    let (mut read_buffer, mut write_buffer) = (None, None);
    let (mut pool, mut timeouts) = (1024, true);
    while let Some(flag) = args.next() {
        if flag == "--no-timeouts" {
            timeouts = false;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: cannot parse {value:?}: {e}");
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| bad(&e))?),
            "--upstream" => upstream = Some(value.parse().map_err(|e| bad(&e))?),
            "--hop" => hop = Some(value.parse().map_err(|e| bad(&e))?),
            "--read-buffer" => read_buffer = Some(value.parse().map_err(|e| bad(&e))?),
            "--write-buffer" => write_buffer = Some(value.parse().map_err(|e| bad(&e))?),
            "--pool" => pool = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        upstream: upstream.ok_or("--upstream is required")?,
        hop,
        read_buffer,
        write_buffer,
        pool,
        timeouts,
    })
}

fn main() {
    let args = parse().unwrap_or_else(|e| {
        eprintln!(
            "bare-pingora: {e}\nusage: bare-pingora --listen ADDR --upstream ADDR [--hop ADDR] \
             [--read-buffer BYTES] [--write-buffer BYTES] [--pool N] [--no-timeouts]"
        );
        std::process::exit(2);
    });
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: args.pool,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let peer = |to: SocketAddr| {
        let mut peer = HttpPeer::new(to, false, String::new());
        if args.timeouts {
            // As augur sets them on a dependency (`http/upstream.rs`).
            let (connect, call) = (Duration::from_secs(2), Duration::from_secs(30));
            peer.options.connection_timeout = Some(connect);
            peer.options.total_connection_timeout = Some(connect);
            peer.options.read_timeout = Some(call);
            peer.options.write_timeout = Some(call);
            peer.options.idle_timeout = Some(Duration::from_secs(60));
        }
        peer
    };
    let peers = match args.hop {
        None => vec![(args.listen, peer(args.upstream))],
        Some(hop) => vec![(args.listen, peer(hop)), (hop, peer(args.upstream))],
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let listens: Vec<SocketAddr> = peers.iter().map(|(listen, _)| *listen).collect();
    let mut service = http_proxy_service(&server.configuration, Bare { peers });
    let buffers = L4BufferSettings {
        read: args.read_buffer.or(AUGUR_READ_BUFFER),
        write: args.write_buffer.or(AUGUR_WRITE_BUFFER),
    };
    for listen in listens {
        service.add_listener(ListenerConfig::tcp(listen.to_string()).l4_buffer(buffers));
    }
    server.add_service(service);
    server.run_forever();
}
