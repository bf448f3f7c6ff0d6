//! HTTP/2 both ways: gRPC (tonic) through the ingress and through an
//! egress, unary and server-streaming, with statuses and trailers intact;
//! HTTP/1 and HTTP/2 on one listener, a short HTTP/1 request never
//! waiting for a preface; a listener that takes only h2c; speculation to
//! an h2c dependency over HTTP/2.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::Code;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as Status;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::HealthReporter;

use crate::speculation::{Seen, ask, expected, frontend, posts_answer, recording, users_answer};
use crate::support::*;

const USERS: &str = "augur.test.Users";

/// The service speaks HTTP/2 with prior knowledge (gRPC).
const H2C_SERVICE: &[(&str, &str)] = &[("AUGUR_SERVICE__PROTOCOL", "h2c")];

/// A gRPC server (grpc.health.v1, h2c) on 127.0.0.1 whose statuses the
/// test sets.
async fn health_server() -> (SocketAddr, HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(USERS, ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind(local(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, reporter)
}

async fn grpc_client(addr: SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

fn asking(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_pass_the_ingress_and_an_egress_with_their_statuses() {
    let (server, reporter) = health_server().await;
    let ports = Ports::new(1);
    let dep = Dep {
        extra: "protocol = \"h2c\"",
        ..Dep::new("health", server)
    };
    let augur = Augur::start_with_env(&ports, server, &[dep], "", H2C_SERVICE).await;

    for (side, addr) in [("ingress", augur.ingress), ("egress", augur.deps[0])] {
        let mut client = grpc_client(addr).await;
        // Unary.
        let got = client.check(asking(USERS)).await.unwrap().into_inner();
        assert_eq!(got.status(), Status::Serving, "{side}");
        // A status other than OK, in the trailers, with its message.
        let err = client.check(asking("augur.test.Nobody")).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{side}: {err:?}");
        assert!(!err.message().is_empty(), "{side}: {err:?}");

        // Server streaming: each change arrives while the call is open.
        let mut stream = client.watch(asking(USERS)).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.status(), Status::Serving, "{side}");
        reporter
            .set_service_status(USERS, ServingStatus::NotServing)
            .await;
        let second = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("the second message in time")
            .unwrap()
            .unwrap();
        assert_eq!(second.status(), Status::NotServing, "{side}");
        reporter
            .set_service_status(USERS, ServingStatus::Serving)
            .await;
        let third = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("the third message in time")
            .unwrap()
            .unwrap();
        assert_eq!(third.status(), Status::Serving, "{side}");
    }
    // Every call reached the dependency (the streaming one is counted
    // when its cancellation reaches augur) and none failed.
    let text = eventually(Duration::from_secs(5), "three calls counted", || async {
        let text = augur.admin_get("/metrics").await.text();
        let calls: f64 = text
            .lines()
            .filter(|l| l.starts_with("augur_dependency_calls_total{dependency=\"health\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (calls >= 3.0).then_some(text)
    })
    .await;
    assert_eq!(
        metric_value(
            &text,
            "augur_dependency_call_errors_total{dependency=\"health\"}"
        ),
        0.0
    );
}

/// An HTTP/2 server that answers every request with `hello` and the
/// trailers `grpc-status: 0` and `x-checksum: 5d41402a`.
async fn trailing_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(local(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("x-checksum", "5d41402a".parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"hello"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Sends one HTTP/2 (prior knowledge) POST to `addr`: status, body and
/// trailers.
async fn h2_post(addr: SocketAddr) -> (u16, Bytes, Option<http::HeaderMap>) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let req = Request::post(format!("http://{addr}/augur.test.Echo/Say"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::from("x"))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (status, collected.to_bytes(), trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_reach_an_http2_client_through_both_listeners() {
    let server = trailing_server().await;
    let ports = Ports::new(1);
    let dep = Dep {
        extra: "protocol = \"h2c\"",
        ..Dep::new("echo", server)
    };
    let augur = Augur::start_with_env(&ports, server, &[dep], "", H2C_SERVICE).await;
    for addr in [augur.ingress, augur.deps[0]] {
        let (status, body, trailers) = h2_post(addr).await;
        assert_eq!((status, &body[..]), (200, &b"hello"[..]));
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(trailers.get("x-checksum").unwrap(), "5d41402a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_takes_http1_and_h2c_and_short_http1_requests_never_wait() {
    let upstream = echo_server().await;
    let ports = Ports::new(1);
    let augur = Augur::start(&ports, upstream, &[Dep::new("echo", upstream)], "").await;
    for addr in [augur.ingress, augur.deps[0]] {
        // Shorter than the 24-byte preface, and beginning with its "P".
        for request in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"PUT / HTTP/1.0\r\n\r\n",
            b"POST / HTTP/1.0\r\n\r\n",
        ] {
            let started = std::time::Instant::now();
            let resp = raw_exchange(addr, request, Duration::from_secs(5));
            let text = String::from_utf8_lossy(&resp);
            assert!(
                text.starts_with("HTTP/1.1 200"),
                "{addr} {request:?}: {text}"
            );
            assert!(started.elapsed() < Duration::from_secs(2), "{text}");
        }
        // The same listener speaks HTTP/2 with prior knowledge.
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Body>();
        let resp = client
            .request(
                Request::get(format!("http://{addr}/h2"))
                    .version(http::Version::HTTP_2)
                    .body(Body::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_only_listener_closes_http1_connections_and_http1_only_refuses_h2() {
    let upstream = echo_server().await;
    let ports = Ports::new(0);
    let only = [("AUGUR_SERVICE__LISTEN_PROTOCOL", "h2c")];
    let augur = Augur::start_with_env(&ports, upstream, &[], "", &only).await;
    let resp = raw_exchange(
        augur.ingress,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(resp.is_empty(), "{:?}", String::from_utf8_lossy(&resp));
    assert_eq!(
        augur
            .metric("augur_downstream_closed_total{listener=\"ingress\",reason=\"protocol\"}")
            .await,
        1.0
    );
    let (status, _, _) = h2_post(augur.ingress).await;
    assert_eq!(status, 200);

    let ports = Ports::new(0);
    let only = [("AUGUR_SERVICE__LISTEN_PROTOCOL", "http1")];
    let augur = Augur::start_with_env(&ports, upstream, &[], "", &only).await;
    let resp = raw_exchange(
        augur.ingress,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        !String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
}

/// augur in front of the speculation tests' frontend, its users and posts
/// dependencies at these addresses, each over h2c when its flag says.
async fn behind_frontend(
    ports: &Ports,
    (users, users_h2c): (SocketAddr, bool),
    (posts, posts_h2c): (SocketAddr, bool),
) -> Augur {
    let service = frontend(local(ports.deps[0]), local(ports.deps[1]), None).await;
    let extra = |h2c: bool| {
        if h2c {
            "protocol = \"h2c\"\ntimeout = \"2s\""
        } else {
            "timeout = \"2s\""
        }
    };
    let deps = [
        Dep {
            extra: extra(users_h2c),
            ..Dep::new("users", users)
        },
        Dep {
            extra: extra(posts_h2c),
            ..Dep::new("posts", posts)
        },
    ];
    Augur::start(ports, service, &deps, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_h2c_dependencies_are_answered_from_speculation_sent_over_http2() {
    let ports = Ports::new(2);
    let (users, users_log) = recording(users_answer).await;
    let (posts, posts_log) = recording(posts_answer).await;
    let augur = behind_frontend(&ports, (users, true), (posts, true)).await;
    let direct = get(&augur.dep_url(0, "/users/1")).await;
    assert_eq!(direct.status, 200, "{}", direct.text());
    for i in 0..30 {
        let (id, who) = (i % 10, if i % 3 == 0 { "alice" } else { "bob" });
        let got = ask(&augur, id, who).await;
        assert_eq!((got.status, got.text()), (200, expected(id, who)));
    }
    let ahead = augur.answered_ahead("posts").await;
    assert!(ahead >= 10.0, "posts answered ahead {ahead}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen: Vec<Seen> = users_log
        .lock()
        .unwrap()
        .iter()
        .chain(posts_log.lock().unwrap().iter())
        .cloned()
        .collect();
    assert!(seen.iter().any(|s| s.prefetch), "no speculative request");
    assert!(
        seen.iter().all(|s| s.http2),
        "every request, real and speculative, over HTTP/2: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_after_the_preface_is_cut_at_the_header_timeout() {
    let upstream = echo_server().await;
    let ports = Ports::new(0);
    let augur = Augur::start(&ports, upstream, &[], "[proxy]\nheader_timeout = \"300ms\"").await;
    let started = std::time::Instant::now();
    // The preface and no SETTINGS: pingora's handshake would wait for ever.
    let resp = raw_exchange(
        augur.ingress,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{resp:?}");
    assert_eq!(
        augur
            .metric("augur_downstream_closed_total{listener=\"ingress\",reason=\"header_timeout\"}")
            .await,
        1.0
    );
}

/// What an h2c dependency saw of one request: whether it was a prefetch,
/// its path, `:authority`, and every header but the two that differ by
/// design (`sec-purpose` marks a prefetch, `traceparent` names its span).
type Heard = (bool, String, Option<String>, Vec<(String, String)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speculative_request_to_an_h2c_dependency_is_sent_as_its_real_call() {
    let ports = Ports::new(2);
    let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
    let users = {
        let heard = heard.clone();
        serve(move |req: Request<Incoming>| {
            let heard = heard.clone();
            async move {
                let mut headers: Vec<(String, String)> = req
                    .headers()
                    .iter()
                    .filter(|(n, _)| *n != "sec-purpose" && *n != "traceparent")
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
                    .collect();
                headers.sort();
                let prefetch = req.headers().get("sec-purpose").is_some();
                let path = req.uri().path().to_string();
                let authority = req.uri().authority().map(|a| a.to_string());
                heard
                    .lock()
                    .unwrap()
                    .push((prefetch, path.clone(), authority, headers));
                let id = path.trim_start_matches("/users/");
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from(format!("{{\"id\":{id},\"uid\":\"u-{id}\"}}")))
                    .unwrap()
            }
        })
        .await
    };
    let (posts, _) = recording(posts_answer).await;
    let augur = behind_frontend(&ports, (users, true), (posts, false)).await;
    for i in 0..40 {
        let got = ask(&augur, i % 10, "alice").await;
        assert_eq!(got.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let heard = heard.lock().unwrap().clone();
    let prefetches: Vec<&Heard> = heard.iter().filter(|h| h.0).collect();
    assert!(!prefetches.is_empty(), "no speculative request: {heard:?}");
    // Every call sends the same headers (one principal), whatever its id:
    // each prefetch is held to the first real call (made before augur had
    // learned the route).
    let real = heard
        .iter()
        .find(|h| !h.0)
        .unwrap_or_else(|| panic!("no real call: {heard:?}"));
    for p in prefetches {
        assert_eq!(
            (&p.2, &p.3),
            (&real.2, &real.3),
            "{}: the prefetch (left) differs from the real call (right)",
            p.1
        );
    }
}
