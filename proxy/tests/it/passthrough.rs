//! Pass-through: what goes through augur arrives unchanged, both ways.

use bytes::Bytes;
use hyper::Request;

use crate::support::*;

/// Bytes that are not all the same, so a shifted or truncated copy shows.
fn pattern(len: usize) -> Bytes {
    let mut seed = 0x2545F4914F6CDD1Du64;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn post(url: &str, body: Bytes) -> Got {
    send(
        Request::post(url)
            .header("content-type", "application/octet-stream")
            .body(Body::new(body))
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_bodies_are_byte_identical_to_direct() {
    let upstream = echo_server().await;
    let ports = Ports::new(1);
    let augur = Augur::start(&ports, upstream, &[Dep::new("users", upstream)], "").await;
    let direct = format!("http://{upstream}");

    for base in [augur.url(""), augur.dep_url(0, "")] {
        let a = get(&format!("{direct}/items/7?x=1&y=%20z")).await;
        let b = get(&format!("{base}/items/7?x=1&y=%20z")).await;
        assert_eq!((a.status, b.status), (200, 200));
        assert_eq!(a.header("x-echo-uri"), b.header("x-echo-uri"));
        assert_eq!(a.body, b.body);

        for len in [0, 1, 1024, 10 << 20] {
            let body = pattern(len);
            let a = post(&format!("{direct}/upload"), body.clone()).await;
            let b = post(&format!("{base}/upload"), body.clone()).await;
            assert_eq!(b.status, 200, "{len} bytes via {base}");
            assert_eq!(b.body.len(), len);
            assert!(
                a.body == b.body && b.body == body,
                "{len}-byte body changed via {base}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_bodies_arrive_whole() {
    let upstream = echo_server().await;
    let ports = Ports::new(1);
    let augur = Augur::start(&ports, upstream, &[Dep::new("users", upstream)], "").await;
    let chunks = ["hello ", "chunked ", "world, ", &"x".repeat(70_000)];
    let mut raw =
        b"POST /c HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    for c in &chunks {
        raw.extend_from_slice(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let expected: String = chunks.concat();
    for addr in [augur.ingress, augur.deps[0]] {
        let resp = raw_exchange(addr, &raw, std::time::Duration::from_secs(5));
        assert!(
            resp.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&resp[..60.min(resp.len())])
        );
        let body = dechunk_or_plain(&resp);
        assert_eq!(body, expected.as_bytes());
    }
}

/// The body of a raw response, whether sized or chunked.
fn dechunk_or_plain(resp: &[u8]) -> Vec<u8> {
    let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..head_end]).to_ascii_lowercase();
    let mut body = &resp[head_end + 4..];
    if !head.contains("\r\ntransfer-encoding: chunked") {
        return body.to_vec();
    }
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("bad chunking in {:?}", String::from_utf8_lossy(resp)));
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped_and_forwarding_added() {
    let upstream = echo_server().await;
    let ports = Ports::new(0);
    let augur = Augur::start(&ports, upstream, &[], "").await;
    let got = send(
        Request::get(augur.url("/h"))
            .header("connection", "x-hop")
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "kept")
            .body(Body::default())
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-echo-h-x-end-to-end"), Some("kept"));
    assert_eq!(got.header("x-echo-h-x-hop"), None);
    assert_eq!(got.header("x-echo-h-keep-alive"), None);
    assert_eq!(got.header("x-echo-h-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        got.header("x-echo-h-forwarded"),
        Some("for=127.0.0.1;proto=http")
    );
    // augur created a trace for the request and passed it on.
    let tp = got
        .header("x-echo-h-traceparent")
        .expect("traceparent passed to the service");
    assert_eq!(tp.len(), 55);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstreams_are_spoken_to_in_http2() {
    let upstream = echo_server().await;
    let ports = Ports::new(1);
    let dep = Dep {
        extra: "protocol = \"h2c\"",
        ..Dep::new("users", upstream)
    };
    let augur = Augur::start(&ports, upstream, &[dep], "").await;
    let body = pattern(200_000);
    let got = post(&augur.dep_url(0, "/h2"), body.clone()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-echo-version"), Some("HTTP/2.0"));
    assert_eq!(got.body, body);
    // The ingress (HTTP/1.1 upstream by default) stays HTTP/1.1.
    let got = get(&augur.url("/h1")).await;
    assert_eq!(got.header("x-echo-version"), Some("HTTP/1.1"));
}

/// An upstream that sends its first chunk, then holds the rest until the
/// test says the first one arrived: augur must stream, not buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_stream_through_without_buffering() {
    use std::sync::Arc;

    use http_body_util::{BodyExt, channel::Channel};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let released = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let gate = released.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let gate = gate.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let gate = gate.clone();
                    async move {
                        let (mut tx, body) = Channel::<Bytes>::new(4);
                        tokio::spawn(async move {
                            tx.send_data(Bytes::from_static(b"first chunk"))
                                .await
                                .unwrap();
                            let _ = tokio::time::timeout(
                                std::time::Duration::from_secs(10),
                                gate.notified(),
                            )
                            .await;
                            tx.send_data(Bytes::from_static(b"second chunk"))
                                .await
                                .unwrap();
                        });
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let augur = Augur::start(&Ports::new(0), upstream, &[], "").await;
    let resp = client()
        .request(
            Request::get(augur.url("/stream"))
                .body(Body::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let started = std::time::Instant::now();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk did not arrive while the upstream held the rest")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first chunk");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    released.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second chunk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let upstream = echo_server().await;
    // A TCP relay in front of the echo server counts connections.
    let accepted = Arc::new(AtomicUsize::new(0));
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = relay.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    let ports = Ports::new(1);
    let augur = Augur::start(&ports, relay_addr, &[Dep::new("users", relay_addr)], "").await;
    for i in 0..50 {
        assert_eq!(get(&augur.url(&format!("/k/{i}"))).await.status, 200);
        assert_eq!(get(&augur.dep_url(0, &format!("/k/{i}"))).await.status, 200);
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        n <= 4,
        "100 sequential requests opened {n} upstream connections"
    );
}
