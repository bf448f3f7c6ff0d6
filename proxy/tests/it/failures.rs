//! Bad input and faults: each gets a clear answer, and augur keeps serving.

use std::time::{Duration, Instant};

use hyper::Response;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_a_closed_connection() {
    let upstream = echo_server().await;
    let augur = Augur::start(&Ports::new(0), upstream, &[], "").await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nbad header line\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"\x00\x01\r\n\r\n",
        b"GET / HTTP/1.1\r\ncontent-length: nope\r\n\r\n",
    ] {
        // Reading to EOF proves the connection was closed.
        let resp = raw_exchange(augur.ingress, garbage, Duration::from_secs(5));
        assert!(
            resp.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&resp)
        );
    }
    assert_eq!(get(&augur.url("/still-up")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let upstream = echo_server().await;
    let ports = Ports::new(1);
    let augur = Augur::start(
        &ports,
        upstream,
        &[Dep::new("users", upstream)],
        "[proxy]\nmax_request_header_size = \"8KiB\"",
    )
    .await;
    let big = "a".repeat(16 * 1024);
    for addr in [augur.ingress, augur.deps[0]] {
        let req = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
        let resp = raw_exchange(addr, req.as_bytes(), Duration::from_secs(5));
        assert!(
            resp.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&resp[..40.min(resp.len())])
        );
        // Just under the limit passes.
        let ok = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: {}\r\n\r\n",
            &big[..6000]
        );
        let resp = raw_exchange(addr, ok.as_bytes(), Duration::from_secs(5));
        assert!(resp.starts_with(b"HTTP/1.1 200"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_refusing_connections_gives_502_naming_it() {
    let upstream = echo_server().await;
    let dead = local(free_port());
    let ports = Ports::new(2);
    let deps = [Dep::new("users", dead), Dep::new("posts", upstream)];
    let augur = Augur::start(&ports, upstream, &deps, "").await;
    for _ in 0..3 {
        let got = get(&augur.dep_url(0, "/u/1")).await;
        assert_eq!(got.status, 502);
        let text = got.text();
        assert!(
            text.contains("dependency \"users\"") && text.contains(&dead.to_string()),
            "{text}"
        );
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.len() < 200);
    }
    assert_eq!(get(&augur.dep_url(1, "/p/1")).await.status, 200);
    assert_eq!(get(&augur.url("/")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_dependency_gives_504_after_its_timeout() {
    let upstream = echo_server().await;
    let hanging = serve(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(Body::default())
    })
    .await;
    let ports = Ports::new(1);
    let dep = Dep {
        extra: "timeout = \"300ms\"",
        ..Dep::new("slow", hanging)
    };
    let augur = Augur::start(&ports, upstream, &[dep], "").await;
    let started = Instant::now();
    let got = get(&augur.dep_url(0, "/wait")).await;
    let waited = started.elapsed();
    assert_eq!(got.status, 504);
    assert!(
        got.text().contains("dependency \"slow\"") && got.text().contains("300ms"),
        "{}",
        got.text()
    );
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(get(&augur.url("/")).await.status, 200);
}

/// A dependency that answers at once and then sends its body one byte
/// every 150 ms: no read waits as long as the timeout, but the call as a
/// whole outlasts connect_timeout + timeout, and is counted as overdue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_outlasts_its_timeouts_is_counted_as_overdue() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trickling = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let fast = got.starts_with(b"GET /fast");
                let body: &[u8] = b"abcdef";
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                for b in body {
                    if !fast {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                    let _ = s.write_all(&[*b]).await;
                }
            });
        }
    });
    let ports = Ports::new(1);
    let dep = Dep {
        extra: "timeout = \"400ms\"\nconnect_timeout = \"100ms\"",
        ..Dep::new("trickle", trickling)
    };
    let augur = Augur::start(&ports, echo_server().await, &[dep], "").await;
    let overdue = "augur_dependency_overdue_total{dependency=\"trickle\",outcome=\"bypass\"}";

    let fast = get(&augur.dep_url(0, "/fast")).await;
    assert_eq!((fast.status, fast.text().as_str()), (200, "abcdef"));
    assert_eq!(
        augur.metric(overdue).await,
        0.0,
        "a quick call is not overdue"
    );

    let started = Instant::now();
    let slow = get(&augur.dep_url(0, "/slow")).await;
    assert_eq!((slow.status, slow.text().as_str()), (200, "abcdef"));
    assert!(started.elapsed() > Duration::from_millis(800));
    eventually(
        Duration::from_secs(5),
        "the overdue call counted",
        || async { (augur.metric(overdue).await == 1.0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut ports = Ports::new(0);
    ports.ingress = port;
    let path = write_config(&config_text(&ports, local(free_port()), &[], ""));
    let out = augur_command()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Found by `augur-loadtests fuzz-http`: an HTTP/1.1 request without a
/// Host (or with two) reached the service; RFC 9112 §3.2 asks for 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_without_exactly_one_host_gets_400_and_a_close() {
    let upstream = echo_server().await;
    let augur = Augur::start(&Ports::new(0), upstream, &[], "").await;
    for bad in [
        &b"GET /no-host HTTP/1.1\r\n\r\n"[..],
        b"GET /two-hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        let resp = raw_exchange(augur.ingress, bad, Duration::from_secs(5));
        assert!(
            resp.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&resp)
        );
    }
    // HTTP/1.0 needs none.
    let ok = raw_exchange(
        augur.ingress,
        b"GET /old HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        ok.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&ok)
    );
}

/// Found by `augur-loadtests fuzz-http`: pipelined requests after the
/// first were dropped with the connection; each is answered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_each_answered_in_order() {
    let upstream = echo_server().await;
    let augur = Augur::start(&Ports::new(0), upstream, &[], "").await;
    let pipeline = b"GET /p0 HTTP/1.1\r\nHost: x\r\n\r\nPOST /p1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /p2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let resp = raw_exchange(augur.ingress, pipeline, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&resp);
    let uris: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("x-echo-uri: "))
        .collect();
    assert_eq!(uris, ["/p0", "/p1", "/p2"], "{text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3);
}

/// Request smuggling (RFC 9112 §6.1, §6.3): a request framed two ways —
/// Content-Length and Transfer-Encoding together, either order, or two
/// Content-Lengths that disagree — gets one answer and a closed
/// connection, and what a second framing would make a request never
/// reaches the service. Conflicting lengths are rejected with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_get_one_answer_and_a_close_and_reach_nothing() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let upstream = {
        let seen = seen.clone();
        serve(move |req: hyper::Request<hyper::body::Incoming>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(req.uri().to_string());
                let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
            }
        })
        .await
    };
    let augur = Augur::start(&Ports::new(0), upstream, &[], "").await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let te_tail = format!("0\r\n\r\n{smuggled}");
    let cases: Vec<(&str, String, bool)> = vec![
        (
            "CL.TE",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{te_tail}",
                te_tail.len()
            ),
            false,
        ),
        (
            "TE.CL",
            format!(
                "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
            false,
        ),
        (
            "two content-lengths",
            format!(
                "POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello{smuggled}"
            ),
            true,
        ),
        (
            "a content-length list",
            format!("POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello{smuggled}"),
            true,
        ),
    ];
    for (name, request, must_reject) in cases {
        let started = Instant::now();
        let resp = raw_exchange(augur.ingress, request.as_bytes(), Duration::from_secs(5));
        let text = String::from_utf8_lossy(&resp);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{name}: the connection was not closed: {text:?}"
        );
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{name}: {text:?}");
        if must_reject {
            assert!(text.starts_with("HTTP/1.1 400"), "{name}: {text:?}");
        }
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|uri| uri.contains("smuggled")),
        "a smuggled request reached the service: {seen:?}"
    );
    assert!(
        !seen.iter().any(|uri| uri == "/c" || uri == "/d"),
        "{seen:?}"
    );
}
