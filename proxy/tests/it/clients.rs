//! Slow and greedy clients: a header that never ends, a body that stalls,
//! a kept-alive connection left idle, more connections than a listener
//! holds. Each is cut within its limit and counted, and other clients are
//! served meanwhile.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const LIMITS: &str = "[proxy]\nheader_timeout = \"600ms\"\nbody_timeout = \"600ms\"\nidle_timeout = \"800ms\"\nmax_connections = 400";

/// Reads until the peer closes, or `within` passes: what was read, and
/// whether it closed.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A client that sends `bytes` one at a time, `gap` apart, for as long as
/// the connection takes them; how long until augur closed it.
async fn trickle(addr: SocketAddr, bytes: &'static [u8], gap: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    for b in bytes.iter().cycle().take(200) {
        if stream.write_all(&[*b]).await.is_err() {
            return Some(started.elapsed());
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(gap, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            _ => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_bodies_are_cut_in_time_and_never_delay_others() {
    let upstream = echo_server().await;
    let ports = Ports::new(1);
    let augur = Augur::start(&ports, upstream, &[Dep::new("users", upstream)], LIMITS).await;

    // 100 connections that send nothing and 100 that send a header a byte
    // every 100 ms, on the ingress and on an egress listener.
    let mut slow = Vec::new();
    for i in 0..200 {
        let addr = if i % 2 == 0 {
            augur.ingress
        } else {
            augur.deps[0]
        };
        slow.push(tokio::spawn(async move {
            if i % 4 < 2 {
                let started = Instant::now();
                let mut s = TcpStream::connect(addr).await.unwrap();
                let (got, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
                assert!(got.is_empty(), "a silent client gets no answer");
                closed.then(|| started.elapsed())
            } else {
                trickle(
                    addr,
                    b"GET / HTTP/1.1\r\nx-slow: ",
                    Duration::from_millis(100),
                )
                .await
            }
        }));
    }
    // Meanwhile, ordinary requests on both listeners are answered.
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(get(&augur.url("/meanwhile")).await.status, 200);
        assert_eq!(get(&augur.dep_url(0, "/meanwhile")).await.status, 200);
        answered += 2;
    }
    assert!(answered > 10, "{answered}");
    for task in slow {
        let cut = task.await.unwrap().expect("a slow client is disconnected");
        // 600 ms allowed; the rest is scheduling under 200 connections.
        assert!(cut < Duration::from_millis(2500), "cut after {cut:?}");
    }
    let cut = augur
        .metric("augur_downstream_closed_total{listener=\"ingress\",reason=\"header_timeout\"}")
        .await
        + augur
            .metric(
                "augur_downstream_closed_total{listener=\"egress users\",reason=\"header_timeout\"}",
            )
            .await;
    assert!(cut >= 200.0, "{cut} header timeouts counted");

    // A body that stalls halfway: cut after the body timeout.
    let mut s = TcpStream::connect(augur.ingress).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "a stalled body is cut");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(&augur.url("/after")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let upstream = echo_server().await;
    let augur = Augur::start(&Ports::new(0), upstream, &[], LIMITS).await;
    let mut s = TcpStream::connect(augur.ingress).await.unwrap();
    let request = b"GET /one HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";
    // Two requests in a row on one connection: kept alive, each answered,
    // however long the pause between them stays under the idle timeout.
    for _ in 0..2 {
        s.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Then nothing: closed after 800 ms idle, not at the header timeout.
    let started = Instant::now();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    let idle = started.elapsed() + Duration::from_millis(400);
    assert!(closed);
    assert!(
        idle >= Duration::from_millis(750) && idle < Duration::from_millis(2500),
        "closed after {idle:?} idle"
    );
    let counted = augur
        .metric("augur_downstream_closed_total{listener=\"ingress\",reason=\"idle\"}")
        .await;
    assert_eq!(counted, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once_and_counted() {
    let upstream = echo_server().await;
    let augur = Augur::start(
        &Ports::new(0),
        upstream,
        &[],
        "[proxy]\nmax_connections = 5\nheader_timeout = \"30s\"",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(augur.ingress).await.unwrap());
    }
    let open = "augur_downstream_connections{listener=\"ingress\"}";
    eventually(Duration::from_secs(5), "5 connections held", || async {
        (augur.metric(open).await == 5.0).then_some(())
    })
    .await;
    let mut extra = TcpStream::connect(augur.ingress).await.unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (got, closed) = read_to_close(&mut extra, Duration::from_secs(3)).await;
    assert!(closed && got.is_empty(), "the sixth is closed unanswered");
    let refused = augur
        .metric("augur_downstream_closed_total{listener=\"ingress\",reason=\"limit\"}")
        .await;
    assert_eq!(refused, 1.0);
    // The admin listener is not behind the proxy limit.
    assert_eq!(augur.admin_get("/healthz").await.status, 200);
    drop(held);
    eventually(Duration::from_secs(5), "a place free again", || async {
        (augur.metric(open).await == 0.0).then_some(())
    })
    .await;
    assert_eq!(get(&augur.url("/again")).await.status, 200);
}
