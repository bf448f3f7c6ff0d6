//! The pooled client that speculative requests go through, HTTP/1 or
//! HTTP/2 with prior knowledge, over plain TCP or over a dependency's TLS
//! (`tls.rs`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::rt::TokioExecutor;

/// A pooled, keep-alive client over `C`'s connections.
pub(crate) type Pooled<C> = Client<C, Full<Bytes>>;

/// A pool over `connector`'s connections, HTTP/2 only when `h2`; idle
/// ones close after a minute.
pub(crate) fn pooled<C>(connector: C, h2: bool) -> Pooled<C>
where
    C: Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .http2_only(h2)
        .build(connector)
}
