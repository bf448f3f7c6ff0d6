//! A speculative answer is the answer the service would have got: each
//! hazard found on applications nobody on the team wrote has a test here
//! that would catch it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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
            passing(Request::get(url), &req, &["traceparent"])
                .body(Body::default())
                .unwrap()
        };
        let user = send(call(format!("http://{users}/users/{id}"))).await.body;
        let uid = serde_json::from_slice::<serde_json::Value>(&user).unwrap()["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let posts = send(call(format!("http://{posts}/posts?user={uid}")))
            .await
            .body;
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

/// store: answers each way a dependency frames a response — `HEAD` with
/// the length a GET would have, 204 with no body, a chunked body — each
/// with end-to-end headers a proxy must pass unchanged.
async fn store() -> SocketAddr {
    serve(|req: Request<Incoming>| async move {
        let path = req.uri().path().to_string();
        let id: usize = path.rsplit('/').next().unwrap().parse().unwrap();
        let resp = Response::builder()
            .header("set-cookie", format!("s={id}; Path=/"))
            .header("cache-control", "max-age=5")
            .header("x-custom", id.to_string());
        if path.starts_with("/items/") {
            // HEAD: the length of the body a GET would get, and no body.
            resp.body(Body::from(vec![b'i'; 100 + id])).unwrap()
        } else if path.starts_with("/empty/") {
            resp.status(204).body(Body::default()).unwrap()
        } else {
            resp.header("transfer-encoding", "chunked")
                .body(Body::from(format!("chunk-{id}")))
                .unwrap()
        }
    })
    .await
}

/// The frontend: `GET /f/{id}` makes the three calls and answers with what
/// it got from each — status, framing headers, end-to-end headers, body.
async fn framing_frontend(store: SocketAddr) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let id = req.uri().path().trim_start_matches("/f/").to_string();
        let mut seen = Vec::new();
        for (method, path) in [("HEAD", "items"), ("GET", "empty"), ("GET", "stream")] {
            let call = Request::builder()
                .method(method)
                .uri(format!("http://{store}/{path}/{id}"));
            let call = passing(call, &req, &["traceparent"]);
            let resp = send(call.body(Body::default()).unwrap()).await;
            let h = |name: &str| resp.header(name).map(str::to_string);
            let head = serde_json::json!({
                "status": resp.status,
                "content-length": h("content-length"),
                "transfer-encoding": h("transfer-encoding"),
                "set-cookie": h("set-cookie"),
                "cache-control": h("cache-control"),
                "x-custom": h("x-custom"),
            });
            seen.push(serde_json::json!({
                "head": head,
                "body": resp.text(),
            }));
        }
        Response::new(Body::from(serde_json::to_string(&seen).unwrap()))
    })
    .await
}

/// HEAD, 204 and chunked answers reach the service framed exactly as the
/// dependency framed them, with every end-to-end header, whether augur
/// went upstream or answered from speculation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculative_answers_keep_the_dependencys_framing_and_headers() {
    let (off, on) = off_and_on(
        "store",
        30,
        |i| format!("/f/{}", i % 5),
        |dep| async move { (framing_frontend(dep).await, store().await) },
    )
    .await;
    assert!(on.1 >= 45.0, "speculation answered {} of 90 calls", on.1);
    // And what the service saw is what the dependency sent.
    let first: serde_json::Value = serde_json::from_str(&off.0[1]).unwrap();
    assert_eq!(first[0]["head"]["content-length"], "101", "{first}");
    assert_eq!(first[0]["body"], "");
    assert_eq!(first[1]["head"]["status"], 204);
    assert_eq!(first[1]["head"]["content-length"], serde_json::Value::Null);
    assert_eq!(first[2]["head"]["transfer-encoding"], "chunked");
    assert_eq!(first[2]["body"], "chunk-1");
    assert_eq!(first[2]["head"]["set-cookie"], "s=1; Path=/");
}

/// users answers by a header the service forwards from its caller
/// (`x-tenant`, as multi-tenant services do) and by a per-call `x-nonce`
/// when there is one; it sends no `vary`.
async fn users_by_header() -> SocketAddr {
    serve(|req: Request<Incoming>| async move {
        let h = |name: &str| {
            req.headers()
                .get(name)
                .map_or("none", |v| v.to_str().unwrap())
                .to_string()
        };
        let id = req.uri().path().trim_start_matches("/users/").to_string();
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(format!(
                "{{\"id\":{id},\"tenant\":\"{}\",\"nonce\":\"{}\"}}",
                h("x-tenant"),
                h("x-nonce")
            )))
            .unwrap()
    })
    .await
}

/// A frontend that forwards `x-tenant` (and, when `nonce` is set, sends a
/// fresh `x-nonce` on every call); answers with users' body.
async fn header_frontend(users: SocketAddr, nonce: bool) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let id = req.uri().path().trim_start_matches("/p/").to_string();
        let call = Request::get(format!("http://{users}/users/{id}"));
        let mut call = passing(call, &req, &["traceparent", "x-tenant"]);
        if nonce {
            call = call.header("x-nonce", fastrand::u64(..).to_string());
        }
        Response::new(Body::from(
            send(call.body(Body::default()).unwrap()).await.body,
        ))
    })
    .await
}

/// Sends 24 requests over 3 ids and 2 tenants; checks every answer (the
/// nonce, which only the frontend knows, is checked to be one) and
/// returns how many users calls speculation answered.
async fn tenants_run(nonce: bool) -> f64 {
    let ports = Ports::new(1);
    let service = header_frontend(local(ports.deps[0]), nonce).await;
    let augur = Augur::start(
        &ports,
        service,
        &[Dep::new("users", users_by_header().await)],
        "",
    )
    .await;
    for i in 0..24u32 {
        let tenant = ["acme", "globex"][i as usize % 2];
        let req = Request::get(augur.url(&format!("/p/{}", i % 3)))
            .header("x-tenant", tenant)
            .body(Body::default())
            .unwrap();
        let got: serde_json::Value = serde_json::from_slice(&send(req).await.body).unwrap();
        assert_eq!(got["id"], i % 3, "request {i}");
        assert_eq!(
            got["tenant"], tenant,
            "request {i}: another tenant's answer"
        );
        assert_eq!(got["nonce"] != "none", nonce, "request {i}: {got}");
    }
    augur.answered_ahead("users").await
}

/// Every header the service sends is part of the key and is predicted:
/// a dependency that answers by a forwarded header gets it on the
/// speculative request too, and no tenant gets another's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_the_dependency_answers_by_is_predicted_and_keyed() {
    let served = tenants_run(false).await;
    assert!(served >= 10.0, "speculation answered only {served} of 24");
}

/// A header augur cannot predict (a fresh value on every call) means no
/// speculation for that call, rather than an answer to another request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_cannot_be_predicted_means_no_speculation() {
    assert_eq!(tenants_run(true).await, 0.0);
}

/// shop: `GET /stock/{id}` (100 less what was ordered),
/// `POST /orders/{id}` (orders one), `GET /orders/{id}/count`.
async fn shop() -> SocketAddr {
    let orders: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>> =
        Default::default();
    serve(move |req: Request<Incoming>| {
        let orders = orders.clone();
        async move {
            let path = req.uri().path().to_string();
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let body = match (req.method().as_str(), parts.as_slice()) {
                ("GET", ["stock", id]) => {
                    let n = orders.lock().unwrap().get(*id).copied().unwrap_or(0);
                    format!("{{\"stock\":{}}}", 100 - n)
                }
                ("POST", ["orders", id]) => {
                    *orders.lock().unwrap().entry(id.to_string()).or_default() += 1;
                    "{\"ordered\":true}".to_string()
                }
                ("GET", ["orders", id, "count"]) => {
                    let n = orders.lock().unwrap().get(*id).copied().unwrap_or(0);
                    format!("{{\"count\":{n}}}")
                }
                _ => {
                    return Response::builder()
                        .status(404)
                        .body(Body::default())
                        .unwrap();
                }
            };
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        }
    })
    .await
}

/// The frontend: `GET /buy/{id}` reads the stock, orders one, reads the
/// order count, and answers with all three.
async fn buy_frontend(shop: SocketAddr) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let id = req.uri().path().trim_start_matches("/buy/").to_string();
        let mut out = Vec::new();
        for (method, path) in [
            ("GET", format!("/stock/{id}")),
            ("POST", format!("/orders/{id}")),
            ("GET", format!("/orders/{id}/count")),
        ] {
            let call = Request::builder()
                .method(method)
                .uri(format!("http://{shop}{path}"));
            let mut call = passing(call, &req, &["traceparent"]);
            let body = if method == "POST" {
                call = call.header("content-type", "application/json");
                Body::from(format!("{{\"item\":\"{id}\"}}"))
            } else {
                Body::default()
            };
            out.push(send(call.body(body).unwrap()).await.text());
        }
        Response::new(Body::from(out.join("|")))
    })
    .await
}

/// A write orders the reads after it (GET stock, POST order, GET count):
/// nothing speculated before the write answers a read that comes after
/// it, so every answer is what the service gets without speculation — and
/// the read before the write is still answered from speculation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_orders_the_reads_after_it() {
    let (off, on) = off_and_on(
        "shop",
        24,
        |i| format!("/buy/{}", i % 2),
        |dep| async move { (buy_frontend(dep).await, shop().await) },
    )
    .await;
    assert_eq!(
        off.0[23],
        "{\"stock\":89}|{\"ordered\":true}|{\"count\":12}"
    );
    assert!(on.1 >= 10.0, "speculation answered only {} reads", on.1);
}

/// Sends `n` requests (`path(i)`) through augur with speculation off, then
/// on, each time to fresh servers (`start` gets the address augur's egress
/// for `dependency` will have and returns the service and the dependency),
/// and checks that every answer is the same. Returns each run's answers and
/// how many of `dependency`'s calls speculation answered.
async fn off_and_on<S, Fut>(
    dependency: &'static str,
    n: usize,
    path: impl Fn(usize) -> String,
    start: S,
) -> ((Vec<String>, f64), (Vec<String>, f64))
where
    S: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = (SocketAddr, SocketAddr)>,
{
    let mut runs = Vec::new();
    for enabled in [false, true] {
        let ports = Ports::new(1);
        let (service, upstream) = start(local(ports.deps[0])).await;
        let deps = [Dep::new(dependency, upstream)];
        let extra = format!("[speculation]\nenabled = {enabled}\n");
        let augur = Augur::start(&ports, service, &deps, &extra).await;
        let mut answers = Vec::new();
        for i in 0..n {
            let got = get(&augur.url(&path(i))).await;
            assert_eq!(got.status, 200, "{}", got.text());
            answers.push(got.text());
        }
        let served = augur.answered_ahead(dependency).await;
        runs.push((answers, served));
    }
    let on = runs.pop().unwrap();
    let off = runs.pop().unwrap();
    assert_eq!(off.1, 0.0);
    for (i, (a, b)) in off.0.iter().zip(&on.0).enumerate() {
        assert_eq!(a, b, "request {i}: speculation off vs on");
    }
    (off, on)
}

/// How many times each order ran, by id.
type Runs = Arc<Mutex<HashMap<String, u32>>>;

/// orders: `POST /orders/{id}` places an order and answers how many times
/// that order has run.
async fn orders() -> (SocketAddr, Runs) {
    orders_behaving(|_| (Duration::ZERO, 200)).await
}

/// [`orders`], answering order `id` after the delay and with the status
/// `how(id)` gives (it runs when the request arrives, whatever comes
/// after).
async fn orders_behaving(how: fn(u32) -> (Duration, u16)) -> (SocketAddr, Runs) {
    let runs: Runs = Arc::default();
    let counted = runs.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let runs = counted.clone();
        async move {
            let id = req.uri().path().trim_start_matches("/orders/").to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let n = {
                let mut runs = runs.lock().unwrap();
                let n = runs.entry(id.clone()).or_default();
                *n += 1;
                *n
            };
            let (delay, status) = how(id.parse().unwrap_or(0));
            tokio::time::sleep(delay).await;
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(format!(
                    "{{\"order\":{id},\"runs\":{n},\"body\":{:?}}}",
                    String::from_utf8_lossy(&body)
                )))
                .unwrap()
        }
    })
    .await;
    (addr, runs)
}

/// The frontend: `GET /order/{id}` places order `id` with a JSON body and
/// answers with what orders said.
async fn order_frontend(orders: SocketAddr) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let id = req.uri().path().trim_start_matches("/order/").to_string();
        let call = Request::post(format!("http://{orders}/orders/{id}"))
            .header("content-type", "application/json");
        let call = passing(call, &req, &["traceparent"]);
        let body = Body::from(format!("{{\"item\":\"{id}\"}}"));
        Response::new(Body::from(send(call.body(body).unwrap()).await.body))
    })
    .await
}

/// augur in front of the order frontend and `orders` (the dependency,
/// with `dependency_extra` in its section), on a route that opts its write
/// into speculation.
async fn order_augur(
    (orders, runs): (SocketAddr, Runs),
    dependency_extra: &'static str,
) -> (Augur, Runs) {
    let ports = Ports::new(1);
    let service = order_frontend(local(ports.deps[0])).await;
    let extra = "[[route]]\nmatch = \"GET /order/{id}\"\nmethods = [\"GET\", \"POST\"]\n";
    let dep = Dep {
        extra: dependency_extra,
        ..Dep::new("orders", orders)
    };
    (Augur::start(&ports, service, &[dep], extra).await, runs)
}

/// A route that opts a write into speculation: the real call is matched by
/// its body and answered from the speculation, so every order runs exactly
/// once, however many are answered ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_write_runs_exactly_once() {
    let (augur, runs) = order_augur(orders().await, "").await;
    for id in 1000..1030 {
        let got = get(&augur.url(&format!("/order/{id}"))).await;
        assert_eq!(
            got.text(),
            format!("{{\"order\":{id},\"runs\":1,\"body\":\"{{\\\"item\\\":\\\"{id}\\\"}}\"}}")
        );
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 30);
    assert!(
        runs.values().all(|n| *n == 1),
        "an order ran twice: {runs:?}"
    );
    let served = augur.answered_ahead("orders").await;
    assert!(served >= 15.0, "only {served} orders were answered ahead");
}

/// Orders from 2000 on answer late (far past the patience a read's
/// speculation gets) and, when odd, with 409: neither sends a write that
/// was sent ahead a second time.
fn late_or_refused(id: u32) -> (Duration, u16) {
    match id {
        ..2000 => (Duration::ZERO, 200),
        id if id % 2 == 1 => (Duration::from_millis(150), 409),
        _ => (Duration::from_millis(150), 200),
    }
}

/// Orders from 2000 on answer after the dependency's timeout (300 ms).
fn past_the_timeout(id: u32) -> (Duration, u16) {
    match id {
        ..2000 => (Duration::ZERO, 200),
        _ => (Duration::from_millis(900), 200),
    }
}

/// A write sent ahead has run, so its real call takes whatever it
/// answered — however late (within the timeout), whatever the status —
/// and is never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_ahead_is_its_real_call_however_late_or_refused() {
    let (augur, runs) = order_augur(orders_behaving(late_or_refused).await, "").await;
    for id in 1000..1020 {
        assert_eq!(get(&augur.url(&format!("/order/{id}"))).await.status, 200);
    }
    let before = augur.answered_ahead("orders").await;
    for id in 2000..2012 {
        let got = get(&augur.url(&format!("/order/{id}"))).await;
        assert_eq!(
            got.text(),
            format!("{{\"order\":{id},\"runs\":1,\"body\":\"{{\\\"item\\\":\\\"{id}\\\"}}\"}}")
        );
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 32);
    assert!(
        runs.values().all(|n| *n == 1),
        "an order ran twice: {runs:?}"
    );
    let late = augur.answered_ahead("orders").await - before;
    assert!(late >= 6.0, "only {late} late orders were answered ahead");
}

/// A write sent ahead that gets no answer within the dependency's timeout
/// fails its real call as the timeout would have (504), and runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_ahead_that_times_out_fails_once_and_is_not_sent_again() {
    let orders = orders_behaving(past_the_timeout).await;
    let (augur, runs) = order_augur(orders, "timeout = \"300ms\"\n").await;
    for id in 1000..1020 {
        assert_eq!(get(&augur.url(&format!("/order/{id}"))).await.status, 200);
    }
    let before = augur.answered_ahead("orders").await;
    for id in 2000..2004 {
        // The frontend passes on what its call got: augur's 504 text.
        let got = get(&augur.url(&format!("/order/{id}"))).await;
        assert!(
            got.text().starts_with("augur: dependency \"orders\"")
                && got.text().contains("did not answer within"),
            "order {id}: {}",
            got.text()
        );
    }
    // The orders that timed out finish upstream meanwhile.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 24);
    assert!(
        runs.values().all(|n| *n == 1),
        "an order ran twice: {runs:?}"
    );
    let late = augur.answered_ahead("orders").await - before;
    assert!(
        late >= 2.0,
        "only {late} timed-out orders were answered ahead"
    );
}

/// accounts: `GET /accounts/{user}` for that user's own credential only.
async fn accounts() -> SocketAddr {
    serve(|req: Request<Incoming>| async move {
        let user = req
            .uri()
            .path()
            .trim_start_matches("/accounts/")
            .to_string();
        let auth = req
            .headers()
            .get("authorization")
            .map_or("", |v| v.to_str().unwrap());
        if auth != format!("Bearer tok-{user}") {
            return Response::builder()
                .status(403)
                .body(Body::from(format!("not {user}'s")))
                .unwrap();
        }
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(format!("{{\"user\":\"{user}\"}}")))
            .unwrap()
    })
    .await
}

/// The frontend: `GET /me` asks accounts for the user its caller names in
/// `x-user`, with the caller's credential; answers with status and body.
async fn me_frontend(accounts: SocketAddr) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let user = req.headers()["x-user"].to_str().unwrap().to_string();
        let call = Request::get(format!("http://{accounts}/accounts/{user}"));
        let call = passing(call, &req, &["traceparent", "authorization"]);
        let got = send(call.body(Body::default()).unwrap()).await;
        Response::new(Body::from(format!("{} {}", got.status, got.text())))
    })
    .await
}

/// A call whose credential comes from the caller and whose path segment
/// comes from a custom header is answered from speculation, and only ever
/// with its own principal's answer: a caller naming another user with its
/// own credential gets that user's refusal, never the user's account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentialed_header_derived_calls_are_answered_ahead_and_never_across_principals() {
    let ports = Ports::new(1);
    let service = me_frontend(local(ports.deps[0])).await;
    let augur = Augur::start(
        &ports,
        service,
        &[Dep::new("accounts", accounts().await)],
        "",
    )
    .await;
    for i in 0..40 {
        let user = ["alice", "bob", "carol"][i % 3];
        // Every fifth request: mallory names the user with her own token.
        let token = if i % 5 == 4 { "mallory" } else { user };
        let req = Request::get(augur.url("/me"))
            .header("x-user", user)
            .header("authorization", format!("Bearer tok-{token}"))
            .body(Body::default())
            .unwrap();
        let want = if token == user {
            format!("200 {{\"user\":\"{user}\"}}")
        } else {
            format!("403 not {user}'s")
        };
        assert_eq!(send(req).await.text(), want, "request {i}");
    }
    let served = augur.answered_ahead("accounts").await;
    assert!(
        served >= 20.0,
        "only {served} of 40 account calls were answered ahead"
    );
}
