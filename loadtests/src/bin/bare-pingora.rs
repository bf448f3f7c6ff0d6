//! The floor under augur in `bench-passthrough`: a pingora `ProxyHttp` of
//! the same version that does nothing but pick its one upstream, run with
//! augur's server settings (one current-thread runtime, the same
//! upstream keep-alive pool) and allocator. Whatever augur costs beyond
//! this row is augur's; what this row costs beyond nginx is pingora's.
//!
//!     bare-pingora --listen 127.0.0.1:8080 --upstream 127.0.0.1:9000

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut upstream) = (None, None);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<SocketAddr>().ok());
        match flag.as_str() {
            "--listen" => listen = value,
            "--upstream" => upstream = value,
            _ => {}
        }
    }
    let (Some(listen), Some(upstream)) = (listen, upstream) else {
        eprintln!("usage: bare-pingora --listen ADDR --upstream ADDR");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: 1024,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Bare { upstream });
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever();
}
