//! The clients that speculative requests go through: a pooled HTTP/1
//! client, over plain TCP or over a dependency's TLS (`tls.rs`), and an
//! HTTP/2 (h2c) one with a connection per address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;

/// A pooled, keep-alive client over `C`'s connections.
pub(crate) type Pooled<C> = Client<C, Full<Bytes>>;

/// A pool over `connector`'s connections; idle ones close after a minute.
pub(crate) fn pooled<C>(connector: C) -> Pooled<C>
where
    C: Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// HTTP/2 with prior knowledge, one multiplexed connection per address.
/// Unlike a pool keyed by the URI, the request's `:authority` is free to
/// be what its real call's is (pingora takes it from `Host`) while the
/// connection goes to the instance the lease gave.
#[derive(Default)]
pub(crate) struct H2c {
    connections: Mutex<HashMap<SocketAddr, SendRequest<Full<Bytes>>>>,
}

/// Why an h2c request got no response.
#[derive(Debug)]
pub(crate) enum H2cError {
    /// No connection could be made: nothing was sent.
    Connect(std::io::Error),
    /// The connection or the stream failed: it may have been sent.
    Send(hyper::Error),
}

impl std::fmt::Display for H2cError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H2cError::Connect(e) => write!(f, "cannot connect: {e}"),
            H2cError::Send(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for H2cError {}

impl H2c {
    /// Sends `req` (its URI absolute, version HTTP/2) to `addr`.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, H2cError> {
        let open = self
            .connections
            .lock()
            .get(&addr)
            .filter(|c| !c.is_closed())
            .cloned();
        let mut sender = match open {
            Some(sender) => sender,
            None => self.connect(addr).await?,
        };
        sender.ready().await.map_err(H2cError::Send)?;
        sender.send_request(req).await.map_err(H2cError::Send)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, H2cError> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(H2cError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(H2cError::Send)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("speculation h2c connection to {addr}: {e}");
            }
        });
        let mut connections = self.connections.lock();
        // Those whose peer went away (a stopped container) go now: the
        // map holds live connections only.
        connections.retain(|_, c| !c.is_closed());
        connections.insert(addr, sender.clone());
        Ok(sender)
    }
}
