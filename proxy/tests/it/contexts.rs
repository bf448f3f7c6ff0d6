//! Execution contexts: each dependency call is tied to the inbound request
//! that caused it, by trace id, and what is shown is free of credentials.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::support::*;

/// A service that, for `GET /r/{i}`, calls `users` at `/users/{i}` and then
/// `posts` at `/posts/{i}?v={i}` through augur's egress listeners, passing
/// on `traceparent` and `authorization`, and answers with both bodies.
async fn chain_service(users: SocketAddr, posts: SocketAddr) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let id = req.uri().path().trim_start_matches("/r/").to_string();
        let mut out = Vec::new();
        for url in [
            format!("http://{users}/users/{id}"),
            format!("http://{posts}/posts/{id}?v={id}"),
        ] {
            let mut call = Request::get(url);
            for name in ["traceparent", "authorization"] {
                if let Some(v) = req.headers().get(name) {
                    call = call.header(name, v);
                }
            }
            let resp = client()
                .request(call.body(Body::default()).unwrap())
                .await
                .unwrap();
            let uri = resp.headers()["x-echo-uri"].to_str().unwrap().to_string();
            resp.into_body().collect().await.unwrap();
            out.push(uri);
        }
        Response::new(Body::from(out.join("|")))
    })
    .await
}

async fn start_chain(extra: &str) -> Augur {
    let ports = Ports::new(2);
    let users = echo_server().await;
    let posts = echo_server().await;
    let service = chain_service(local(ports.deps[0]), local(ports.deps[1])).await;
    let deps = [Dep::new("users", users), Dep::new("posts", posts)];
    Augur::start(&ports, service, &deps, extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_join_the_right_context_under_64_concurrent_requests() {
    let augur = start_chain("[contexts]\nhistory = 500\n[speculation]\nenabled = false").await;
    let requests = (0..64).map(|i| {
        let url = augur.url(&format!("/r/{i}"));
        tokio::spawn(async move { get(&url).await })
    });
    for (i, r) in futures_join(requests).await.into_iter().enumerate() {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("/users/{i}|/posts/{i}?v={i}"));
    }
    let contexts = eventually(Duration::from_secs(5), "64 closed contexts", || async {
        let c = augur.contexts(500).await;
        (c.as_array().unwrap().len() == 64).then_some(c)
    })
    .await;
    let contexts = contexts.as_array().unwrap();
    assert_eq!(contexts.len(), 64);
    let mut seen = std::collections::HashSet::new();
    for ctx in contexts {
        let path = ctx["inbound"]["path"].as_str().unwrap();
        let id = path.trim_start_matches("/r/");
        assert_eq!(ctx["inbound"]["route"], "GET /r/{id}");
        let calls = ctx["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2, "{ctx}");
        assert_eq!(calls[0]["dependency"], "users");
        assert_eq!(calls[0]["path"], format!("/users/{id}"));
        assert_eq!(calls[1]["dependency"], "posts");
        assert_eq!(calls[1]["path"], format!("/posts/{id}"));
        assert_eq!(calls[1]["query"], format!("v={id}"));
        assert_eq!(calls[1]["status"], 200);
        assert_eq!(calls[1]["outcome"], "miss");
        assert!(calls[1]["start_offset_us"].as_u64() >= calls[0]["start_offset_us"].as_u64());
        assert!(seen.insert(id.to_string()), "two contexts for {id}");
    }
    assert_eq!(
        augur
            .metric("augur_inbound_requests_total{route=\"GET /r/{id}\"}")
            .await,
        64.0
    );
    assert_eq!(augur.metric("augur_contexts_open").await, 0.0);
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_context_bypass_and_metrics_count_everything() {
    let augur = start_chain("[speculation]\nenabled = false").await;
    for i in 0..5 {
        assert_eq!(get(&augur.url(&format!("/r/{i}"))).await.status, 200);
    }
    // No traceparent at all, and a traceparent of a trace augur never saw.
    for _ in 0..3 {
        assert_eq!(get(&augur.dep_url(0, "/users/x")).await.status, 200);
    }
    let stranger = Request::get(augur.dep_url(0, "/users/y"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(Body::default())
        .unwrap();
    assert_eq!(send(stranger).await.status, 200);

    // Metrics are counted as each call's logging ends, just after its
    // response: wait until the last ones are in.
    eventually(Duration::from_secs(5), "every call counted", || async {
        let n = augur
            .metric("augur_dependency_calls_total{dependency=\"users\",outcome=\"bypass\"}")
            .await
            + augur
                .metric("augur_dependency_calls_total{dependency=\"users\",outcome=\"miss\"}")
                .await
            + augur
                .metric("augur_dependency_calls_total{dependency=\"posts\",outcome=\"miss\"}")
                .await;
        (n >= 14.0).then_some(())
    })
    .await;
    let m = |s: &'static str| augur.metric(s);
    assert_eq!(
        m("augur_inbound_requests_total{route=\"GET /r/{id}\"}").await,
        5.0
    );
    assert_eq!(
        m("augur_dependency_calls_total{dependency=\"users\",outcome=\"miss\"}").await,
        5.0
    );
    assert_eq!(
        m("augur_dependency_calls_total{dependency=\"users\",outcome=\"bypass\"}").await,
        4.0
    );
    assert_eq!(
        m("augur_dependency_calls_total{dependency=\"posts\",outcome=\"miss\"}").await,
        5.0
    );
    assert_eq!(
        m("augur_dependency_calls_total{dependency=\"posts\",outcome=\"bypass\"}").await,
        0.0
    );
    assert_eq!(
        m("augur_upstream_requests_total{dependency=\"users\",kind=\"real\"}").await,
        9.0
    );
    assert_eq!(
        m("augur_upstream_requests_total{dependency=\"posts\",kind=\"real\"}").await,
        5.0
    );
    assert_eq!(
        m("augur_inbound_request_duration_seconds_count{route=\"GET /r/{id}\"}").await,
        5.0
    );
    // The bypassing calls were recorded in no context.
    let contexts = eventually(Duration::from_secs(5), "5 closed contexts", || async {
        let c = augur.contexts(100).await;
        (c.as_array().unwrap().len() == 5).then_some(c)
    })
    .await;
    let calls: usize = contexts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["calls"].as_array().unwrap().len())
        .sum();
    assert_eq!(calls, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_debug_contexts() {
    let augur = start_chain("[contexts]\nredact_headers = [\"X-Api-Key\"]").await;
    let secrets = [
        "Bearer top-secret-1",
        "session=sekrit-2",
        "key-sekrit-3",
        "Basic cHJveHk6c2Vrcml0",
    ];
    let req = Request::get(augur.url("/r/1"))
        .header("authorization", secrets[0])
        .header("cookie", secrets[1])
        .header("x-api-key", secrets[2])
        .header("proxy-authorization", secrets[3])
        .header("x-visible", "plain-value")
        .body(Body::default())
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    // The context closes once its last call is recorded, which may be just
    // after the client has its answer.
    let raw = eventually(Duration::from_secs(5), "the closed context", || async {
        let raw = augur.admin_get("/debug/contexts?limit=10").await.text();
        raw.contains("plain-value").then_some(raw)
    })
    .await;
    assert!(raw.contains("plain-value"), "headers are recorded at all");
    for secret in secrets {
        assert!(
            !raw.contains(secret),
            "{secret:?} leaked into /debug/contexts"
        );
        assert!(
            !raw.contains(&secret[secret.len() - 6..]),
            "part of {secret:?} leaked"
        );
    }
    // Each credential is a keyed hash: comparable, never readable. The
    // service forwarded authorization on its two calls: the same hash.
    assert_eq!(raw.matches("\"keyed:").count(), 6, "{raw}");
    let ctx: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let auth = |headers: &serde_json::Value| {
        headers
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv[0] == "authorization")
            .unwrap()[1]
            .clone()
    };
    assert_eq!(
        auth(&ctx[0]["inbound"]["headers"]),
        auth(&ctx[0]["calls"][1]["headers"])
    );
    assert!(!augur.log_text().contains("sekrit"));
}
