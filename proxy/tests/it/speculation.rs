//! Speculation's promises, each with a test that would catch a violation:
//! the service receives what it would have received without augur; no
//! response crosses principals; no side-effecting method is sent
//! speculatively; an unusable speculation is never served.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::support::*;

/// One request a dependency saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    method: String,
    uri: String,
    auth: Option<String>,
    pub(crate) prefetch: bool,
    pub(crate) http2: bool,
}

impl Seen {
    /// The path and query asked for.
    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    pub(crate) fn of(req: &Request<Incoming>) -> Self {
        Seen {
            method: req.method().to_string(),
            // HTTP/2 requests carry the whole URI; the path is what counts.
            uri: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), ToString::to_string),
            auth: req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string()),
            prefetch: req
                .headers()
                .get("sec-purpose")
                .is_some_and(|v| v == "prefetch"),
            http2: req.version() == hyper::Version::HTTP_2,
        }
    }
}

pub(crate) type Log = Arc<Mutex<Vec<Seen>>>;

/// A dependency that records every request and answers with `answer`,
/// which sees what it was asked and whether it is a prefetch.
pub(crate) async fn recording<F>(answer: F) -> (SocketAddr, Log)
where
    F: Fn(&Seen) -> Option<Response<Body>> + Clone + Send + Sync + 'static,
{
    let (handler, log) = recorder(answer);
    (serve(handler).await, log)
}

/// A boxed answer, so that a recorder's handler has a type to name.
type Answer = std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// What [`serve`] and [`serve_tls`] take.
pub(crate) trait Handler:
    Fn(Request<Incoming>) -> Answer + Clone + Send + Sync + 'static
{
}
impl<T: Fn(Request<Incoming>) -> Answer + Clone + Send + Sync + 'static> Handler for T {}

/// The handler of [`recording`], to serve as the test likes (over TLS).
pub(crate) fn recorder<F>(answer: F) -> (impl Handler, Log)
where
    F: Fn(&Seen) -> Option<Response<Body>> + Clone + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let sink = log.clone();
    let handler = move |req: Request<Incoming>| -> Answer {
        let (answer, sink) = (answer.clone(), sink.clone());
        Box::pin(async move {
            let seen = Seen::of(&req);
            sink.lock().unwrap().push(seen.clone());
            match answer(&seen) {
                Some(resp) => resp,
                // Hang: the caller's timeout decides.
                None => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Response::new(Body::default())
                }
            }
        })
    };
    (handler, log)
}

fn json(body: String) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// users: `/users/{id}` → a uid that names the principal who asked.
pub(crate) fn users_answer(seen: &Seen) -> Option<Response<Body>> {
    let id = seen.uri.trim_start_matches("/users/");
    let who = seen.auth.clone().unwrap_or_default().replace("Bearer ", "");
    Some(json(format!("{{\"id\":{id},\"uid\":\"u-{id}-{who}\"}}")))
}

/// posts: echoes the user it was asked for and the principal.
pub(crate) fn posts_answer(seen: &Seen) -> Option<Response<Body>> {
    let who = seen.auth.clone().unwrap_or_default();
    Some(json(format!(
        "{{\"for\":\"{}\",\"principal\":\"{who}\"}}",
        seen.uri
    )))
}

/// The frontend: `GET /p/{id}` calls users, then posts with the uid users
/// gave, passing traceparent and authorization; answers with both bodies.
pub(crate) async fn frontend(
    users: SocketAddr,
    posts: SocketAddr,
    post_orders: Option<SocketAddr>,
) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let id = req.uri().path().trim_start_matches("/p/").to_string();
        let call = |method: &str, url: String, body: Option<String>| {
            let mut call = Request::builder().method(method).uri(url);
            for name in ["traceparent", "authorization"] {
                if let Some(v) = req.headers().get(name) {
                    call = call.header(name, v);
                }
            }
            if body.is_some() {
                call = call.header("content-type", "application/json");
            }
            call.body(Body::from(body.unwrap_or_default())).unwrap()
        };
        let resp = client()
            .request(call("GET", format!("http://{users}/users/{id}"), None))
            .await
            .unwrap();
        let status = resp.status();
        let user = resp.into_body().collect().await.unwrap().to_bytes();
        if !status.is_success() {
            return Response::builder()
                .status(502)
                .body(Body::from("users failed"))
                .unwrap();
        }
        let uid = serde_json::from_slice::<serde_json::Value>(&user).unwrap()["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let resp = client()
            .request(call(
                "GET",
                format!("http://{posts}/posts?user={uid}"),
                None,
            ))
            .await
            .unwrap();
        let posts_body = resp.into_body().collect().await.unwrap().to_bytes();
        if let Some(orders) = post_orders {
            let body = format!("{{\"user\":\"{uid}\"}}");
            let resp = client()
                .request(call("POST", format!("http://{orders}/orders"), Some(body)))
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap();
        }
        Response::new(Body::from(format!(
            "{}|{}",
            String::from_utf8_lossy(&user),
            String::from_utf8_lossy(&posts_body)
        )))
    })
    .await
}

struct Rig {
    augur: Augur,
    users: Log,
    posts: Log,
}

async fn rig(
    extra: &str,
    users: fn(&Seen) -> Option<Response<Body>>,
    posts: fn(&Seen) -> Option<Response<Body>>,
) -> Rig {
    let ports = Ports::new(2);
    let (users_addr, users_log) = recording(users).await;
    let (posts_addr, posts_log) = recording(posts).await;
    let service = frontend(local(ports.deps[0]), local(ports.deps[1]), None).await;
    let deps = [
        Dep {
            extra: "timeout = \"2s\"",
            ..Dep::new("users", users_addr)
        },
        Dep {
            extra: "timeout = \"2s\"",
            ..Dep::new("posts", posts_addr)
        },
    ];
    let augur = Augur::start(&ports, service, &deps, extra).await;
    Rig {
        augur,
        users: users_log,
        posts: posts_log,
    }
}

pub(crate) async fn ask(augur: &Augur, id: u32, who: &str) -> Got {
    let req = Request::get(augur.url(&format!("/p/{id}")))
        .header("authorization", format!("Bearer {who}"))
        .body(Body::default())
        .unwrap();
    send(req).await
}

/// What a client should get for `id` as `who`.
pub(crate) fn expected(id: u32, who: &str) -> String {
    format!(
        "{{\"id\":{id},\"uid\":\"u-{id}-{who}\"}}|{{\"for\":\"/posts?user=u-{id}-{who}\",\"principal\":\"Bearer {who}\"}}"
    )
}

/// The sequence both runs of the differential test send.
pub(crate) fn sequence() -> Vec<(u32, &'static str)> {
    (0..40)
        .map(|i| (i % 10, if i % 3 == 0 { "alice" } else { "bob" }))
        .collect()
}

async fn speculated(augur: &Augur) -> f64 {
    augur.answered_ahead("users").await + augur.answered_ahead("posts").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculation_changes_nothing_the_service_or_client_sees() {
    let mut runs = Vec::new();
    for enabled in [false, true] {
        let rig = rig(
            &format!("[speculation]\nenabled = {enabled}"),
            users_answer,
            posts_answer,
        )
        .await;
        let mut bodies = Vec::new();
        for (id, who) in sequence() {
            let got = ask(&rig.augur, id, who).await;
            assert_eq!(got.status, 200);
            assert_eq!(got.text(), expected(id, who), "speculation {enabled}");
            bodies.push(got.body);
        }
        if enabled {
            assert!(
                speculated(&rig.augur).await >= 40.0,
                "speculation should have answered most calls"
            );
            // Each request predicts at least once (when it opens), timed.
            let predictions = rig.augur.metric("augur_prediction_seconds_count").await;
            assert!(predictions >= 40.0, "{predictions}");
        }
        // Let in-flight speculations land before reading the logs.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let streams = (
            rig.users.lock().unwrap().clone(),
            rig.posts.lock().unwrap().clone(),
        );
        runs.push((bodies, streams));
    }
    let (off, on) = (&runs[0], &runs[1]);
    assert_eq!(off.0, on.0, "client responses differ with speculation on");
    for (name, real, with) in [("users", &off.1.0, &on.1.0), ("posts", &off.1.1, &on.1.1)] {
        assert!(real.iter().all(|s| !s.prefetch));
        // Every request the dependency got without speculation, it got
        // with it (as the real call or as the prefetch that answered it);
        // anything more is a marked prefetch. Real calls are matched to
        // unmarked requests first: a call that went upstream beside an
        // unused prefetch of its own is the unmarked one, and the prefetch
        // is the extra (matching in arrival order took the prefetch for
        // the call and reported the call as extra, 1 run in 23).
        let mut left: Vec<Seen> = with.clone();
        let same = |s: &Seen, want: &Seen| {
            s.method == want.method && s.uri == want.uri && s.auth == want.auth
        };
        for want in real {
            let at = left
                .iter()
                .position(|s| !s.prefetch && same(s, want))
                .or_else(|| left.iter().position(|s| same(s, want)))
                .unwrap_or_else(|| panic!("{name}: {want:?} never reached the dependency"));
            left.remove(at);
        }
        assert!(
            left.iter().all(|s| s.prefetch),
            "{name}: unmarked extra requests {left:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_never_receive_each_others_speculative_responses() {
    let rig = rig("", users_answer, posts_answer).await;
    // Warm up, then interleave two principals on the same ids, concurrently.
    for i in 0..6 {
        ask(&rig.augur, i, "alice").await;
    }
    let url = rig.augur.url("");
    let tasks: Vec<_> = (0..60u32)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let who = if i % 2 == 0 { "alice" } else { "mallory" };
                let req = Request::get(format!("{url}/p/{}", i % 5))
                    .header("authorization", format!("Bearer {who}"))
                    .body(Body::default())
                    .unwrap();
                (i % 5, who, send(req).await)
            })
        })
        .collect();
    for t in tasks {
        let (id, who, got) = t.await.unwrap();
        assert_eq!(
            got.text(),
            expected(id, who),
            "a response crossed principals"
        );
    }
    assert!(speculated(&rig.augur).await > 0.0, "nothing was speculated");
    // Every prefetch carried the credential of the request it was for.
    let users = rig.users.lock().unwrap().clone();
    assert!(
        users
            .iter()
            .filter(|s| s.prefetch)
            .all(|s| s.auth.is_some())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_effecting_methods_are_never_sent_speculatively_by_default() {
    let ports = Ports::new(3);
    let (users_addr, _) = recording(users_answer).await;
    let (posts_addr, _) = recording(posts_answer).await;
    let (orders_addr, orders) = recording(|_| Some(json("{\"ok\":true}".into()))).await;
    let service = frontend(
        local(ports.deps[0]),
        local(ports.deps[1]),
        Some(local(ports.deps[2])),
    )
    .await;
    let deps = [
        Dep::new("users", users_addr),
        Dep::new("posts", posts_addr),
        Dep::new("orders", orders_addr),
    ];
    let augur = Augur::start(&ports, service, &deps, "").await;
    for i in 0..30 {
        assert_eq!(ask(&augur, i % 4, "alice").await.status, 200);
    }
    let orders = orders.lock().unwrap().clone();
    assert_eq!(orders.len(), 30, "{orders:?}");
    assert!(
        orders.iter().all(|s| s.method == "POST" && !s.prefetch),
        "a POST was sent speculatively"
    );
    // The GETs of the same flow were speculated: the gate, not the learner, held.
    assert!(speculated(&augur).await > 0.0);
    let model: serde_json::Value =
        serde_json::from_slice(&augur.admin_get("/debug/model").await.body).unwrap();
    assert!(
        model.to_string().contains("orders POST /orders"),
        "the POST was learned: {model}"
    );
}

/// users answers prefetches badly in one of several ways, by id; real calls
/// always get the right answer.
fn users_flaky(seen: &Seen) -> Option<Response<Body>> {
    if !seen.prefetch {
        return users_answer(seen);
    }
    let id: u32 = seen.uri.trim_start_matches("/users/").parse().unwrap();
    match id % 5 {
        0 => Some(
            Response::builder()
                .status(500)
                .body(Body::from("boom"))
                .unwrap(),
        ),
        1 => Some(
            Response::builder()
                .status(403)
                .body(Body::from("no prefetch here"))
                .unwrap(),
        ),
        2 => {
            let mut resp = users_answer(seen).unwrap();
            resp.headers_mut()
                .insert("cache-control", "no-store".parse().unwrap());
            Some(resp)
        }
        3 => None, // hangs past the dependency's timeout
        _ => Some(
            json("{\"id\":0,\"uid\":\"WRONG\"}".into())
                .map(|b| b)
                .tap_vary(),
        ),
    }
}

trait TapVary {
    fn tap_vary(self) -> Self;
}

impl TapVary for Response<Body> {
    /// Marks a response as varying on a header augur does not key on (one
    /// on its ignore list).
    fn tap_vary(mut self) -> Self {
        self.headers_mut()
            .insert("vary", "x-request-id".parse().unwrap());
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_speculations_are_never_served_and_cost_the_real_call_nothing() {
    let rig = rig("", users_flaky, posts_answer).await;
    for i in 0..40 {
        let id = i % 10;
        let got = ask(&rig.augur, id, "alice").await;
        assert_eq!(
            (got.status, got.text()),
            (200, expected(id, "alice")),
            "call {i}"
        );
    }
    let users_hits = rig
        .augur
        .metric("augur_dependency_calls_total{dependency=\"users\",outcome=\"hit\"}")
        .await
        + rig
            .augur
            .metric("augur_dependency_calls_total{dependency=\"users\",outcome=\"coalesced\"}")
            .await;
    assert_eq!(
        users_hits, 0.0,
        "a bad speculative users response was served"
    );
    assert!(
        rig.augur
            .metric("augur_speculations_total{dependency=\"users\",outcome=\"failed\"}")
            .await
            > 0.0
    );
    let prefetched = rig
        .users
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.prefetch)
        .count();
    assert!(prefetched > 0, "users was never prefetched");
    // posts, fed by the real users answers, still speculates fine.
    assert!(
        rig.augur
            .metric("augur_dependency_calls_total{dependency=\"posts\",outcome=\"hit\"}")
            .await
            + rig
                .augur
                .metric("augur_dependency_calls_total{dependency=\"posts\",outcome=\"coalesced\"}")
                .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_killed_mid_run_costs_nothing_once_back_and_leaks_nothing() {
    let ports = Ports::new(2);
    let users = Killable::start(local(0), |req: Request<Incoming>| async move {
        let seen = Seen::of(&req);
        // Slow enough that speculations are in flight when it dies.
        tokio::time::sleep(Duration::from_millis(3)).await;
        users_answer(&seen).unwrap()
    })
    .await;
    let users_addr = users.addr;
    let (posts_addr, _) = recording(posts_answer).await;
    let service = frontend(local(ports.deps[0]), local(ports.deps[1]), None).await;
    let deps = [
        Dep {
            extra: "timeout = \"500ms\"",
            ..Dep::new("users", users_addr)
        },
        Dep::new("posts", posts_addr),
    ];
    let augur = Augur::start(&ports, service, &deps, "").await;
    let url = augur.url("");
    let burst = |from: u32, n: u32| {
        let url = url.clone();
        async move {
            let tasks: Vec<_> = (from..from + n)
                .map(|i| {
                    let url = url.clone();
                    tokio::spawn(async move {
                        let req = Request::get(format!("{url}/p/{}", i % 7))
                            .header("authorization", "Bearer alice")
                            .body(Body::default())
                            .unwrap();
                        (i % 7, send(req).await)
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    // Healthy: every answer right.
    for (id, got) in burst(0, 200).await {
        assert_eq!((got.status, got.text()), (200, expected(id, "alice")));
    }
    // users dies while requests and speculations are in flight.
    let during = tokio::spawn(burst(200, 100));
    tokio::time::sleep(Duration::from_millis(5)).await;
    users.kill();
    for (id, got) in during.await.unwrap() {
        // Either the right answer or a clean failure, never a wrong one.
        assert!(
            got.status == 502 || got.text() == expected(id, "alice"),
            "{} {}",
            got.status,
            got.text()
        );
    }
    for (_, got) in burst(300, 20).await {
        assert_eq!(got.status, 502, "users is down");
    }
    // Speculations that meet the dead dependency are counted: failed, or
    // cancelled when their request ended first. Asked one after another,
    // so that a pause the governor took during the bursts (waste there is
    // a matter of timing) has time to end and speculation to try again.
    let met_the_dead = || async {
        augur
            .metric("augur_speculations_total{dependency=\"users\",outcome=\"failed\"}")
            .await
            + augur
                .metric("augur_speculations_total{dependency=\"users\",outcome=\"cancelled\"}")
                .await
    };
    let mut j = 0;
    eventually(
        Duration::from_secs(30),
        "speculations that met the dead dependency counted",
        || {
            j += 1;
            let url = url.clone();
            async move {
                let req = Request::get(format!("{url}/p/{}", j % 7))
                    .header("authorization", "Bearer alice")
                    .body(Body::default())
                    .unwrap();
                assert_eq!(send(req).await.status, 502, "users is down");
                (met_the_dead().await > 0.0).then_some(())
            }
        },
    )
    .await;
    // users comes back on the same address: augur recovers by itself.
    let _users = Killable::start(users_addr, |req: Request<Incoming>| async move {
        let seen = Seen::of(&req);
        users_answer(&seen).unwrap()
    })
    .await;
    for (id, got) in burst(400, 300).await {
        assert_eq!((got.status, got.text()), (200, expected(id, "alice")));
    }
    // Speculation resumes (once the governor's pause for the failures is
    // over): requests one after another are answered ahead again.
    let before = speculated(&augur).await;
    let mut i = 0;
    eventually(Duration::from_secs(30), "speculation resumed", || {
        i += 1;
        let (url, id) = (url.clone(), i % 7);
        let augur = &augur;
        async move {
            let req = Request::get(format!("{url}/p/{id}"))
                .header("authorization", "Bearer alice")
                .body(Body::default())
                .unwrap();
            let got = send(req).await;
            assert_eq!((got.status, got.text()), (200, expected(id, "alice")));
            (speculated(augur).await > before).then_some(())
        }
    })
    .await;
    // Nothing is left behind once the requests are done.
    let drained = eventually(Duration::from_secs(10), "state drained", || async {
        let m = |s: &'static str| augur.metric(s);
        let left = [
            m("augur_contexts_open").await,
            m("augur_speculation_held_bytes").await,
            m("augur_speculation_inflight").await,
            m("augur_speculation_traces").await,
        ];
        Some(left)
            .filter(|l| l.iter().all(|v| *v == 0.0))
            .or_else(|| {
                eprintln!("left: {left:?}");
                None
            })
    })
    .await;
    assert_eq!(drained, [0.0; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculative_requests_are_spans_linked_to_their_inbound_span() {
    use crate::telemetry::{attr, start_receiver};
    let (collector, receiver) = start_receiver().await;
    let extra = format!("[telemetry]\notlp_endpoint = \"http://{collector}\"");
    let mut rig = rig(&extra, users_answer, posts_answer).await;
    for i in 0..8 {
        assert_eq!(
            ask(&rig.augur, i % 3, "alice").await.text(),
            expected(i % 3, "alice")
        );
    }
    rig.augur.signal("TERM");
    tokio::task::block_in_place(|| rig.augur.wait(Duration::from_secs(5))).expect("augur exited");
    let spans = eventually(Duration::from_secs(5), "prefetch spans", || {
        let receiver = receiver.clone();
        async move {
            let spans = receiver.0.lock().await.clone();
            spans
                .iter()
                .any(|s| s.name.starts_with("prefetch "))
                .then_some(spans)
        }
    })
    .await;
    let prefetch = spans
        .iter()
        .find(|s| s.name == "prefetch GET users")
        .expect("a prefetch span for users");
    assert_eq!(attr(prefetch, "augur.speculative").as_deref(), Some("true"));
    let inbound = spans
        .iter()
        .find(|s| s.kind == 2 && s.trace_id == prefetch.trace_id)
        .expect("its inbound span, in the same trace");
    assert_eq!(prefetch.parent_span_id, inbound.span_id);
    assert_eq!(prefetch.links.len(), 1);
    assert_eq!(prefetch.links[0].span_id, inbound.span_id);
    // The call it answered says so.
    let answered = spans.iter().any(|s| {
        s.kind == 3
            && s.trace_id == prefetch.trace_id
            && matches!(
                attr(s, "augur.outcome").as_deref(),
                Some("hit") | Some("coalesced")
            )
    });
    assert!(answered, "the real call's span carries its outcome");
}

/// A users dependency on raw TCP: real requests get the right answer;
/// prefetches get their connection closed before any response.
async fn users_resetting_prefetches() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end + 4);
                        if head.contains("sec-purpose: prefetch") {
                            return; // drop the connection: a reset, as the client sees it
                        }
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let auth = head
                            .lines()
                            .find_map(|l| l.strip_prefix("authorization: "))
                            .map(|a| a.replace("bearer ", "Bearer "));
                        let seen = Seen {
                            method: "GET".into(),
                            uri: path,
                            auth,
                            prefetch: false,
                            http2: false,
                        };
                        let resp = users_answer(&seen).unwrap();
                        let body = resp.into_body().collect().await.unwrap().to_bytes();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if stream.write_all(head.as_bytes()).await.is_err()
                            || stream.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speculation_whose_connection_resets_is_never_served() {
    let ports = Ports::new(2);
    let users = users_resetting_prefetches().await;
    let (posts_addr, _) = recording(posts_answer).await;
    let service = frontend(local(ports.deps[0]), local(ports.deps[1]), None).await;
    let augur = Augur::start(
        &ports,
        service,
        &[Dep::new("users", users), Dep::new("posts", posts_addr)],
        "",
    )
    .await;
    for i in 0..20 {
        let got = ask(&augur, i % 4, "alice").await;
        assert_eq!(
            (got.status, got.text()),
            (200, expected(i % 4, "alice")),
            "call {i}"
        );
    }
    let served = augur
        .metric("augur_dependency_calls_total{dependency=\"users\",outcome=\"hit\"}")
        .await
        + augur
            .metric("augur_dependency_calls_total{dependency=\"users\",outcome=\"coalesced\"}")
            .await;
    assert_eq!(served, 0.0);
    assert!(
        augur
            .metric("augur_speculations_total{dependency=\"users\",outcome=\"failed\"}")
            .await
            > 0.0
    );
}

/// users answers per tenant (`x-tenant`) and says so with `vary`.
fn users_by_tenant(req: &Request<Incoming>) -> Response<Body> {
    let tenant = req
        .headers()
        .get("x-tenant")
        .map_or("none", |v| v.to_str().unwrap())
        .to_string();
    let id = req.uri().path().trim_start_matches("/users/").to_string();
    let mut resp = json(format!("{{\"id\":{id},\"uid\":\"u-{id}-{tenant}\"}}"));
    resp.headers_mut()
        .insert("vary", "x-tenant".parse().unwrap());
    resp
}

/// A frontend that forwards `x-tenant` as well, and answers with users'
/// body only.
async fn tenant_frontend(users: SocketAddr) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let id = req.uri().path().trim_start_matches("/p/").to_string();
        let mut call = Request::get(format!("http://{users}/users/{id}"));
        for name in ["traceparent", "x-tenant"] {
            if let Some(v) = req.headers().get(name) {
                call = call.header(name, v);
            }
        }
        let resp = client()
            .request(call.body(Body::default()).unwrap())
            .await
            .unwrap();
        Response::new(Body::from(
            resp.into_body().collect().await.unwrap().to_bytes(),
        ))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vary_header_is_respected_and_configured_key_headers_make_it_speculable() {
    let ports = Ports::new(1);
    let users = serve(|req: Request<Incoming>| async move { users_by_tenant(&req) }).await;
    let service = tenant_frontend(local(ports.deps[0])).await;
    let augur = Augur::start(
        &ports,
        service,
        &[Dep::new("users", users)],
        "[speculation]\nkey_headers = [\"X-Tenant\"]",
    )
    .await;
    for i in 0..24u32 {
        let tenant = ["acme", "globex"][i as usize % 2];
        let req = Request::get(augur.url(&format!("/p/{}", i % 3)))
            .header("x-tenant", tenant)
            .body(Body::default())
            .unwrap();
        let got = send(req).await;
        assert_eq!(
            got.text(),
            format!("{{\"id\":{},\"uid\":\"u-{}-{tenant}\"}}", i % 3, i % 3)
        );
    }
    assert!(
        speculated(&augur).await > 0.0,
        "x-tenant is part of the key, so vary on it is served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_turn_speculation_off() {
    let rig = rig(
        "[[route]]\nmatch = \"GET /p/{id}\"\nspeculate = false",
        users_answer,
        posts_answer,
    )
    .await;
    for i in 0..20 {
        assert_eq!(
            ask(&rig.augur, i % 3, "alice").await.text(),
            expected(i % 3, "alice")
        );
    }
    assert_eq!(speculated(&rig.augur).await, 0.0);
    assert!(rig.users.lock().unwrap().iter().all(|s| !s.prefetch));
    assert!(rig.posts.lock().unwrap().iter().all(|s| !s.prefetch));
}
