//! Where a listener sends its requests: a fixed address, or a host name
//! whose addresses [`super::names`] keeps resolved off the request path
//! (pingora's `HttpPeer` would otherwise resolve it on every request,
//! blocking), and the connection settings that go with it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use augur_config::{Protocol, Tls, Upstream};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use super::names::{Name, Unresolved};
use super::tls::UpstreamTls;

/// How long an idle upstream connection stays in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Concurrent streams on one h2c connection.
const H2_STREAMS: usize = 100;

/// The address in the settings of a peer whose address comes per request.
const UNKNOWN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// How to talk to an upstream, from its section of the configuration.
#[derive(Clone, Copy)]
pub(crate) struct Settings<'a> {
    pub(crate) protocol: Protocol,
    pub(crate) tls: Option<&'a Tls>,
    /// How long a connection may take to open.
    pub(crate) connect_timeout: Duration,
    /// How long an answer may take.
    pub(crate) timeout: Duration,
}

/// One upstream, ready to hand pingora a peer for each request.
#[derive(Clone)]
pub(crate) struct Target {
    /// `service "frontend"` or `dependency "users"`, for messages.
    pub(crate) label: Arc<str>,
    place: Place,
    pub(crate) timeout: Duration,
    /// How long a connection may take to open.
    pub(crate) connect_timeout: Duration,
    /// Its TLS settings, when it speaks TLS.
    pub(crate) tls: Option<UpstreamTls>,
    /// HTTP/1 or HTTP/2 with prior knowledge.
    pub(crate) protocol: Protocol,
    /// The connection settings, and the address when it is fixed.
    peer: HttpPeer,
}

#[derive(Clone)]
enum Place {
    Fixed(SocketAddr),
    Named(Arc<Name>, u16),
    /// Known per request (a container's published port).
    Leased,
}

impl Target {
    /// `upstream` names an IP address, or a host name resolved by `host`
    /// (which [`super::names::Names`] gives out).
    pub(crate) fn new(
        kind: &str,
        name: &str,
        upstream: &Upstream,
        host: impl FnOnce(&str) -> Arc<Name>,
        settings: Settings<'_>,
    ) -> anyhow::Result<Self> {
        let place = match upstream.host.parse::<IpAddr>() {
            Ok(ip) => Place::Fixed(SocketAddr::new(ip, upstream.port)),
            Err(_) => Place::Named(host(&upstream.host), upstream.port),
        };
        Self::with_place(kind, name, place, settings)
    }

    fn with_place(
        kind: &str,
        name: &str,
        place: Place,
        settings: Settings<'_>,
    ) -> anyhow::Result<Self> {
        let Settings {
            protocol,
            tls,
            connect_timeout,
            timeout,
        } = settings;
        let label = format!("{kind} {name:?}");
        let tls = tls
            .map(|t| UpstreamTls::load(&label, t, connect_timeout))
            .transpose()?;
        // A named upstream's peer carries only the settings: each request
        // gets a copy with the address it goes to.
        let addr = match &place {
            Place::Fixed(addr) => *addr,
            Place::Named(..) | Place::Leased => UNKNOWN,
        };
        let mut peer = bare_peer(tls.as_ref(), addr);
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
            place,
            timeout,
            connect_timeout,
            tls,
            protocol,
            peer,
        })
    }

    /// Where the next request goes: the fixed address, or the name's
    /// addresses in turn. A container's comes from its lease, not from
    /// here.
    pub(crate) fn address(&self) -> Result<SocketAddr, Unresolved> {
        match &self.place {
            Place::Fixed(addr) => Ok(*addr),
            Place::Named(name, port) => name.pick().map(|ip| SocketAddr::new(ip, *port)),
            Place::Leased => Ok(UNKNOWN),
        }
    }

    /// A pingora peer for the next request, and its address.
    pub(crate) fn next_peer(&self) -> Result<(Box<HttpPeer>, SocketAddr), Unresolved> {
        let addr = self.address()?;
        Ok((self.peer_at(addr), addr))
    }

    /// A connection to it could not be opened (`e`): a named upstream may
    /// have moved, so its name is resolved again soon; nothing was sent,
    /// so when the name has other addresses the request tries the next one
    /// (pingora's `max_retries` bounds the tries).
    pub(crate) fn failed_to_connect(&self, mut e: Box<pingora::Error>) -> Box<pingora::Error> {
        if let Place::Named(name, _) = &self.place {
            name.recheck();
            if name.spread() {
                e.set_retry(true);
            }
        }
        e
    }

    /// A target whose address is only known per call (a container).
    pub(crate) fn dynamic(kind: &str, name: &str, settings: Settings<'_>) -> anyhow::Result<Self> {
        Self::with_place(kind, name, Place::Leased, settings)
    }

    /// The same connection settings, to `addr`.
    pub(crate) fn peer_at(&self, addr: SocketAddr) -> Box<HttpPeer> {
        if matches!(self.place, Place::Fixed(fixed) if fixed == addr) {
            return Box::new(self.peer.clone());
        }
        let mut peer = bare_peer(self.tls.as_ref(), addr);
        peer.options = self.peer.options.clone();
        Box::new(peer)
    }

    /// Where a request went, for messages: `127.0.0.1:9`,
    /// `users:8080 (10.0.0.3:8080)`, or a container's address.
    pub(crate) fn at(&self, addr: Option<SocketAddr>) -> String {
        match (&self.place, addr) {
            (Place::Fixed(fixed), _) => fixed.to_string(),
            (Place::Named(name, port), Some(addr)) => format!("{}:{port} ({addr})", name.host()),
            (Place::Named(name, port), None) => format!("{}:{port}", name.host()),
            (Place::Leased, Some(addr)) => addr.to_string(),
            (Place::Leased, None) => "its container".to_string(),
        }
    }
}

/// A peer at `addr`, over `tls` when given, with pingora's default options.
fn bare_peer(tls: Option<&UpstreamTls>, addr: SocketAddr) -> HttpPeer {
    match tls {
        Some(tls) => tls.peer(addr),
        None => HttpPeer::new(addr, false, String::new()),
    }
}
