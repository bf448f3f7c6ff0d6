//! A call made only when an earlier answer says so, with a parameter
//! computed from that answer: augur learns what decides it (a gate) and
//! how its path is written (`p-` and the id of the first featured item),
//! sends it ahead exactly in the contexts that make it, and never in the
//! others.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::speculation::{Log, recording};
use crate::support::*;

/// The items a feed lists: four, some featured, decided by the id.
fn items(id: u64) -> Vec<(u64, bool)> {
    (0..4)
        .map(|k| (id * 10 + k, (id * 7 + k * 3) % 10 < 2))
        .collect()
}

fn items_body(id: u64) -> String {
    let listed: Vec<String> = items(id)
        .iter()
        .map(|(item, featured)| format!("{{\"id\":{item},\"featured\":{featured}}}"))
        .collect();
    format!("{{\"items\":[{}]}}", listed.join(","))
}

/// The promotion's path for a feed, when it has a featured item.
fn promo_path(id: u64) -> Option<String> {
    items(id)
        .into_iter()
        .find(|(_, featured)| *featured)
        .map(|(item, _)| format!("/promos/p-{item}"))
}

fn expected(id: u64) -> String {
    let promo = promo_path(id).map_or("null".to_string(), |p| format!("\"{p}\""));
    format!("{}|{promo}", items_body(id))
}

fn json(body: String) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// `GET /feed/{id}`: items, then the promotion of the first featured item
/// if there is one.
async fn frontend(items: SocketAddr, promos: SocketAddr) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let call = |url: String| {
            let mut call = Request::get(url);
            if let Some(tp) = req.headers().get("traceparent") {
                call = call.header("traceparent", tp);
            }
            call.body(Body::default()).unwrap()
        };
        let id = req.uri().path().trim_start_matches("/feed/").to_string();
        let listed = client()
            .request(call(format!("http://{items}/items?user={id}")))
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let parsed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
        let first = parsed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["featured"] == true)
            .map(|i| i["id"].as_u64().unwrap());
        let promo = match first {
            Some(item) => {
                let resp = client()
                    .request(call(format!("http://{promos}/promos/p-{item}")))
                    .await
                    .unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                format!("\"{}\"", body["path"].as_str().unwrap())
            }
            None => "null".to_string(),
        };
        Response::new(Body::from(format!(
            "{}|{promo}",
            String::from_utf8_lossy(&listed)
        )))
    })
    .await
}

fn promos_seen(log: &Log, from: usize) -> (Vec<String>, Vec<String>) {
    let seen = log.lock().unwrap();
    let (prefetch, real): (Vec<_>, Vec<_>) = seen[from..].iter().partition(|s| s.prefetch);
    let uri = |s: &&crate::speculation::Seen| s.uri().to_string();
    (
        prefetch.iter().map(uri).collect(),
        real.iter().map(uri).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_decided_by_an_earlier_answer_is_sent_ahead_only_when_it_will_be_made() {
    let ports = Ports::new(2);
    let (items_addr, _) = recording(move |seen| {
        let id: u64 = seen.uri().rsplit('=').next().unwrap().parse().unwrap();
        Some(json(items_body(id)))
    })
    .await;
    let (promos_addr, promos_log) =
        recording(move |seen| Some(json(format!("{{\"path\":\"{}\"}}", seen.uri())))).await;
    let service = frontend(local(ports.deps[0]), local(ports.deps[1])).await;
    let deps = [
        Dep::new("items", items_addr),
        Dep::new("promos", promos_addr),
    ];
    let augur = Augur::start(&ports, service, &deps, "").await;

    let (mut made, mut made_late) = (Vec::new(), 0);
    let mut half = 0;
    for id in 0..160u64 {
        if id == 80 {
            half = promos_log.lock().unwrap().len();
        }
        let got = get(&augur.url(&format!("/feed/{id}"))).await;
        assert_eq!(got.text(), expected(id), "feed {id}");
        if let Some(path) = promo_path(id) {
            made.push(path);
            if id >= 80 {
                made_late += 1;
            }
        }
    }
    assert!(
        made.len() > 40 && made.len() < 120,
        "both branches are taken: {}",
        made.len()
    );
    // Every promotion sent ahead was one the service then asked for.
    let (prefetched, _) = promos_seen(&promos_log, 0);
    for p in &prefetched {
        assert!(
            made.contains(p),
            "a promotion no feed asked for was sent ahead: {p}"
        );
    }
    // Once learned, the promotions are answered ahead: at most a fifth of
    // the second half's reach promos as real calls.
    let (ahead, real) = promos_seen(&promos_log, half);
    assert!(
        real.len() * 5 <= made_late,
        "{} of {made_late} promotions of the second half went upstream as real calls ({} sent ahead)",
        real.len(),
        ahead.len()
    );
    let model = augur.admin_get("/debug/model").await.text();
    assert!(
        model.contains("decided_by") && model.contains("featured"),
        "/debug/model names what decides the promotion: {model}"
    );
}
