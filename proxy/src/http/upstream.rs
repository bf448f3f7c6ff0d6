//! Where a listener sends its requests: an address resolved at start-up
//! (pingora's `HttpPeer` would otherwise resolve host names on every
//! request, blocking) and the connection settings that go with it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use augur_config::{Protocol, Tls, Upstream};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use super::tls::UpstreamTls;

/// How long an idle upstream connection stays in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Concurrent streams on one h2c connection.
const H2_STREAMS: usize = 100;

/// One upstream, ready to hand pingora a peer for each request.
#[derive(Clone)]
pub(crate) struct Target {
    /// `service "frontend"` or `dependency "users"`, for messages.
    pub(crate) label: Arc<str>,
    pub(crate) addr: SocketAddr,
    pub(crate) timeout: Duration,
    /// How long a connection may take to open.
    pub(crate) connect_timeout: Duration,
    /// Its TLS settings, when it speaks TLS.
    pub(crate) tls: Option<UpstreamTls>,
    peer: HttpPeer,
}

impl Target {
    pub(crate) fn new(
        kind: &str,
        name: &str,
        upstream: &Upstream,
        protocol: Protocol,
        tls: Option<&Tls>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let addr = resolve(upstream)
            .with_context(|| format!("{kind} {name:?}: cannot resolve upstream {upstream}"))?;
        Self::with_addr(kind, name, addr, protocol, tls, connect_timeout, timeout)
    }

    fn with_addr(
        kind: &str,
        name: &str,
        addr: SocketAddr,
        protocol: Protocol,
        tls: Option<&Tls>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let label = format!("{kind} {name:?}");
        let tls = tls
            .map(|t| UpstreamTls::load(&label, t, connect_timeout))
            .transpose()?;
        let mut peer = match &tls {
            Some(tls) => tls.peer(addr),
            None => HttpPeer::new(addr, false, String::new()),
        };
        peer.options.connection_timeout = Some(connect_timeout);
        peer.options.total_connection_timeout = Some(connect_timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        if protocol == Protocol::H2c {
            peer.options.alpn = ALPN::H2;
            peer.options.max_h2_streams = H2_STREAMS;
        }
        Ok(Self {
            label: label.into(),
            addr,
            timeout,
            connect_timeout,
            tls,
            peer,
        })
    }

    pub(crate) fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }

    /// A target whose address is only known per call (a container).
    pub(crate) fn dynamic(
        kind: &str,
        name: &str,
        protocol: Protocol,
        tls: Option<&Tls>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let placeholder = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::with_addr(
            kind,
            name,
            placeholder,
            protocol,
            tls,
            connect_timeout,
            timeout,
        )
    }

    /// The same connection settings, to another address.
    pub(crate) fn peer_at(&self, addr: SocketAddr) -> Box<HttpPeer> {
        let mut peer = match &self.tls {
            Some(tls) => tls.peer(addr),
            None => HttpPeer::new(addr, false, String::new()),
        };
        peer.options = self.peer.options.clone();
        Box::new(peer)
    }
}

fn resolve(upstream: &Upstream) -> anyhow::Result<SocketAddr> {
    (upstream.host.as_str(), upstream.port)
        .to_socket_addrs()?
        .next()
        .context("the name has no address")
}
