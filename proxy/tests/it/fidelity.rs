//! A speculative answer is the answer the service would have got: each
//! hazard found on applications nobody on the team wrote has a test here
//! that would catch it.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::support::*;

/// users: `/users/{id}` after `delay`, naming the id.
async fn slow_users(delay: Duration) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        let id = req.uri().path().trim_start_matches("/users/").to_string();
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(format!("{{\"id\":{id},\"uid\":\"u{id}\"}}")))
            .unwrap()
    })
    .await
}

/// posts: `/posts?user={uid}`, echoing what it was asked.
async fn posts() -> SocketAddr {
    serve(|req: Request<Incoming>| async move {
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(format!("{{\"for\":\"{}\"}}", req.uri())))
            .unwrap()
    })
    .await
}

/// The frontend: `GET /p/{id}` calls users, then posts with the uid users
/// gave, passing `traceparent` on; answers with both bodies.
async fn chain(users: SocketAddr, posts: SocketAddr) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let id = req.uri().path().trim_start_matches("/p/").to_string();
        let call = |url: String| {
            let mut call = Request::get(url);
            if let Some(v) = req.headers().get("traceparent") {
                call = call.header("traceparent", v);
            }
            call.body(Body::default()).unwrap()
        };
        let user = client()
            .request(call(format!("http://{users}/users/{id}")))
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let uid = serde_json::from_slice::<serde_json::Value>(&user).unwrap()["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let posts = client()
            .request(call(format!("http://{posts}/posts?user={uid}")))
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        Response::new(Body::from(format!(
            "{}|{}",
            String::from_utf8_lossy(&user),
            String::from_utf8_lossy(&posts)
        )))
    })
    .await
}

fn expected(id: u32) -> String {
    format!("{{\"id\":{id},\"uid\":\"u{id}\"}}|{{\"for\":\"/posts?user=u{id}\"}}")
}

async fn ask(augur: &Augur, id: u32, traceparent: Option<&str>) -> Got {
    let mut req = Request::get(augur.url(&format!("/p/{id}")));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    send(req.body(Body::default()).unwrap()).await
}

/// Client retries send the same `traceparent` again. Two inbound requests
/// open with one trace id get a context each; while both are open their
/// calls cannot be told apart, so none is answered from speculation or
/// recorded in either context, and neither context is learned from. (Once
/// one has closed, the other's calls are its own again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_trace_id_is_ambiguous_never_answered_from_speculation_nor_learned() {
    let ports = Ports::new(2);
    let users = slow_users(Duration::from_millis(150)).await;
    let service = chain(local(ports.deps[0]), local(ports.deps[1])).await;
    let deps = [Dep::new("users", users), Dep::new("posts", posts().await)];
    let augur = Augur::start(&ports, service, &deps, "").await;
    for id in 0..6 {
        assert_eq!(ask(&augur, id, None).await.text(), expected(id));
    }
    learned(&augur, 6.0).await;
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (first, retry) = tokio::join!(ask(&augur, 1, Some(tp)), async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        ask(&augur, 2, Some(tp)).await
    });
    assert_eq!(first.text(), expected(1));
    assert_eq!(retry.text(), expected(2));
    assert_eq!(augur.metric("augur_contexts_ambiguous_total").await, 2.0);
    assert!(augur.metric("augur_calls_ambiguous_total").await >= 1.0);
    let contexts = eventually(Duration::from_secs(5), "both contexts closed", || async {
        let all = augur.contexts(20).await;
        let mine: Vec<serde_json::Value> = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["trace_id"] == "0af7651916cd43dd8448eb211c80319c")
            .cloned()
            .collect();
        (mine.len() == 2).then_some(mine)
    })
    .await;
    for c in &contexts {
        assert_eq!(c["ambiguous"], true, "{c}");
        let own = c["inbound"]["path"].as_str().unwrap().replace("/p/", "");
        for call in c["calls"].as_array().unwrap() {
            let path = call["path"].as_str().unwrap();
            let query = call["query"].as_str().unwrap_or("");
            assert!(
                (path == "/posts" && query == format!("user=u{own}"))
                    || path == format!("/users/{own}"),
                "a context holds another request's call: {c}"
            );
        }
    }
    // A later request with a fresh trace is learned from; the two
    // ambiguous ones, which closed before it, never were.
    assert_eq!(ask(&augur, 3, None).await.text(), expected(3));
    learned(&augur, 7.0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(augur.metric("augur_learner_contexts_total").await, 7.0);
}

/// Waits until the learner has taken `n` contexts.
async fn learned(augur: &Augur, n: f64) {
    eventually(Duration::from_secs(5), "the learner", || async {
        (augur.metric("augur_learner_contexts_total").await >= n).then_some(())
    })
    .await;
}
