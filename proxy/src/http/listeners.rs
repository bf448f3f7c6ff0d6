//! Every proxy listener — the ingress and each dependency's egress — in
//! one pingora service, so that they share its `proxy.threads` threads
//! instead of each listener running threads of its own. A sidecar's
//! request and its dependency calls then stay on one thread when the
//! service and its dependencies answer on loopback, with no wake-up of
//! another thread between the hops, and eight listeners cost two threads,
//! not sixteen.
//!
//! A connection goes to the app of the listener it was accepted on, found
//! by its local address; each app keeps its own limits and counters
//! ([`Guarded`](super::downstream::Guarded)).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

type Serving<'a> = Pin<Box<dyn Future<Output = Option<Stream>> + Send + 'a>>;

/// One listener's app, behind a trait object (`ServerApp` takes
/// `self: &Arc<Self>`, which a trait object cannot).
trait Serve: Send + Sync {
    fn serve<'a>(&'a self, stream: Stream, shutdown: &'a ShutdownWatch) -> Serving<'a>;
    fn cleanup<'a>(&'a self) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

struct App<A>(Arc<A>);

impl<A: ServerApp + Send + Sync + 'static> Serve for App<A> {
    fn serve<'a>(&'a self, stream: Stream, shutdown: &'a ShutdownWatch) -> Serving<'a> {
        self.0.process_new(stream, shutdown)
    }

    fn cleanup<'a>(&'a self) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        self.0.cleanup()
    }
}

/// The proxy listeners by address.
#[derive(Default)]
pub(crate) struct Listeners {
    apps: Vec<(SocketAddr, Box<dyn Serve>)>,
}

impl Listeners {
    /// Serves the connections accepted on `listen` with `app`.
    pub(crate) fn add<A: ServerApp + Send + Sync + 'static>(&mut self, listen: SocketAddr, app: A) {
        self.apps.push((listen, Box::new(App(Arc::new(app)))));
    }

    /// The addresses to listen on, in the order they were added.
    pub(crate) fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.apps.iter().map(|(addr, _)| *addr)
    }

    /// The app for a connection accepted at `local`: the listener bound to
    /// that address, or else the one bound to its port on every address.
    fn app_for(&self, local: SocketAddr) -> Option<&dyn Serve> {
        let exact = self.apps.iter().find(|(addr, _)| *addr == local);
        exact
            .or_else(|| {
                self.apps
                    .iter()
                    .find(|(addr, _)| addr.port() == local.port() && addr.ip().is_unspecified())
            })
            .map(|(_, app)| &**app)
    }
}

#[async_trait]
impl ServerApp for Listeners {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let Some(app) = local.and_then(|l| self.app_for(l)) else {
            tracing::warn!("a connection at {local:?} matches no listener: closed");
            return None;
        };
        app.serve(stream, shutdown).await
    }

    async fn cleanup(&self) {
        for (_, app) in &self.apps {
            app.cleanup().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named;

    #[async_trait]
    impl ServerApp for Named {
        async fn process_new(self: &Arc<Self>, _: Stream, _: &ShutdownWatch) -> Option<Stream> {
            None
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The index of the app `app_for` picks.
    fn picked(l: &Listeners, local: &str) -> Option<usize> {
        let app = l.app_for(addr(local))?;
        l.apps
            .iter()
            .position(|(_, a)| std::ptr::addr_eq(&**a as *const dyn Serve, app as *const dyn Serve))
    }

    #[test]
    fn a_connection_goes_to_the_listener_it_was_accepted_on() {
        let mut l = Listeners::default();
        l.add(addr("127.0.0.1:8080"), Named);
        l.add(addr("0.0.0.0:9000"), Named);
        l.add(addr("127.0.0.2:9000"), Named);
        l.add(addr("[::]:7000"), Named);
        assert_eq!(picked(&l, "127.0.0.1:8080"), Some(0));
        // An exact address wins over the one bound to every address.
        assert_eq!(picked(&l, "127.0.0.2:9000"), Some(2));
        assert_eq!(picked(&l, "10.1.2.3:9000"), Some(1));
        assert_eq!(picked(&l, "[::1]:7000"), Some(3));
        assert_eq!(picked(&l, "127.0.0.1:7001"), None);
        assert_eq!(picked(&l, "127.0.0.3:8080"), None);
        assert_eq!(
            l.addresses().collect::<Vec<_>>(),
            [
                "127.0.0.1:8080",
                "0.0.0.0:9000",
                "127.0.0.2:9000",
                "[::]:7000"
            ]
            .map(addr)
        );
    }
}
