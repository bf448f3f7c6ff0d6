//! Dependencies augur runs as containers, against the real Docker engine
//! and the locally built `augur-demo:latest` image (`scripts/images`).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

const IMAGE: &str = "augur-demo:latest";

fn require_image() {
    let ok = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the Docker image {IMAGE} is missing: run scripts/images (scripts/test does)"
    );
}

/// Containers labelled for an augur service (running or not).
fn containers(service: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=augur.service={service}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn remove(ids: &[String]) {
    if !ids.is_empty() {
        let _ = Command::new("docker").args(["rm", "-f"]).args(ids).output();
    }
}

/// A container dependency running the demo's fast server.
fn container_dep(name: &'static str, extra: &'static str) -> Dep {
    Dep {
        name,
        upstream: String::new(),
        extra,
    }
}

const FAST: &str = "[dependency.container]\nimage = \"augur-demo:latest\"\nargs = [\"serve-fast\", \"--listen\", \"0.0.0.0:8080\", \"--body-bytes\", \"16\"]\nport = 8080";

async fn start(deps: &[Dep]) -> (Augur, String) {
    require_image();
    let ports = Ports::new(deps.len());
    let service = format!("svc-{}", ports.ingress);
    let upstream = echo_server().await;
    let augur = Augur::start(&ports, upstream, deps, "").await;
    (augur, service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_calls_share_one_cold_start() {
    let (augur, service) = start(&[container_dep("fast", FAST)]).await;
    assert!(
        containers(&service).is_empty(),
        "nothing runs before the first call"
    );
    let url = augur.dep_url(0, "/x");
    let calls: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { get(&url).await }
            })
        })
        .collect();
    for c in calls {
        let got = c.await.unwrap();
        assert_eq!((got.status, got.body.len()), (200, 16));
    }
    assert_eq!(containers(&service).len(), 1, "exactly one container");
    assert_eq!(
        augur
            .metric("augur_container_starts_total{dependency=\"fast\",reason=\"cold\"}")
            .await,
        1.0
    );
    assert!(augur.metric("augur_cold_start_wait_seconds_count").await >= 1.0);
    remove(&containers(&service));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_a_clear_error_and_static_dependencies_keep_working() {
    let missing = "[dependency.container]\nimage = \"augur-no-such-image:latest\"\nport = 8080\nstart_timeout = \"5s\"";
    let upstream = echo_server().await;
    let (augur, service) =
        start(&[container_dep("ghost", missing), Dep::new("users", upstream)]).await;
    let got = get(&augur.dep_url(0, "/x")).await;
    assert_eq!(got.status, 503);
    let text = got.text();
    assert!(
        text.contains("dependency \"ghost\"")
            && text.contains("augur-no-such-image:latest")
            && text.contains("No such image"),
        "{text}"
    );
    assert_eq!(get(&augur.dep_url(1, "/y")).await.status, 200);
    assert!(containers(&service).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_containers_stop_after_their_keep_alive() {
    let dep = "[dependency.container]\nimage = \"augur-demo:latest\"\nargs = [\"serve-fast\", \"--listen\", \"0.0.0.0:8080\"]\nport = 8080\nkeep_alive = \"1s\"";
    let (augur, service) = start(&[container_dep("fast", dep)]).await;
    assert_eq!(get(&augur.dep_url(0, "/x")).await.status, 200);
    assert_eq!(containers(&service).len(), 1);
    let started = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the idle container stopped",
        || {
            let service = service.clone();
            async move { containers(&service).is_empty().then_some(()) }
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "stopped before its keep-alive"
    );
    // The next call starts a new one.
    assert_eq!(get(&augur.dep_url(0, "/x")).await.status, 200);
    assert_eq!(containers(&service).len(), 1);
    remove(&containers(&service));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_dies_is_replaced() {
    let (augur, service) = start(&[container_dep("fast", FAST)]).await;
    assert_eq!(get(&augur.dep_url(0, "/x")).await.status, 200);
    let first = containers(&service);
    assert_eq!(first.len(), 1);
    remove(&first);
    // The call that finds it dead may fail; augur replaces it and the next succeeds.
    let _ = get(&augur.dep_url(0, "/x")).await;
    let got = get(&augur.dep_url(0, "/x")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let now = containers(&service);
    assert_eq!(now.len(), 1);
    assert_ne!(now, first);
    remove(&now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn augur_leaves_no_orphans_and_removes_earlier_leftovers() {
    require_image();
    let ports = Ports::new(1);
    let service = format!("svc-{}", ports.ingress);
    // A leftover of an earlier augur of the same service.
    let out = Command::new("docker")
        .args([
            "run",
            "-d",
            "--label",
            "augur.managed=true",
            "--label",
            &format!("augur.service={service}"),
            IMAGE,
            "serve-fast",
            "--listen",
            "0.0.0.0:8080",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(containers(&service).len(), 1);
    let upstream = echo_server().await;
    let mut augur = Augur::start(&ports, upstream, &[container_dep("fast", FAST)], "").await;
    assert!(
        containers(&service).is_empty(),
        "the leftover was removed at start-up"
    );
    assert_eq!(get(&augur.dep_url(0, "/x")).await.status, 200);
    assert_eq!(containers(&service).len(), 1);
    augur.signal("TERM");
    let status = tokio::task::block_in_place(|| augur.wait(Duration::from_secs(10)));
    assert!(status.is_some_and(|s| s.success()));
    assert!(
        containers(&service).is_empty(),
        "augur stopped what it started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predicted_call_finds_its_container_started_ahead() {
    require_image();
    let ports = Ports::new(1);
    let service_name = format!("svc-{}", ports.ingress);
    let egress = local(ports.deps[0]);
    // The service works 1.5 s before it calls its container dependency.
    let service = serve(
        move |req: hyper::Request<hyper::body::Incoming>| async move {
            let id = req.uri().path().trim_start_matches("/r/").to_string();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let call = hyper::Request::get(format!("http://{egress}/x/{id}"))
                .header("traceparent", req.headers()["traceparent"].clone())
                .body(Body::default())
                .unwrap();
            let resp = client().request(call).await.unwrap();
            hyper::Response::builder()
                .status(resp.status())
                .body(Body::from("ok"))
                .unwrap()
        },
    )
    .await;
    let dep = "[dependency.container]\nimage = \"augur-demo:latest\"\nargs = [\"serve-fast\", \"--listen\", \"0.0.0.0:8080\"]\nport = 8080\nkeep_alive = \"3s\"";
    let augur = Augur::start(&ports, service, &[container_dep("fast", dep)], "").await;
    for i in 0..4 {
        assert_eq!(get(&augur.url(&format!("/r/{i}"))).await.status, 200);
    }
    let cold_waits = augur.metric("augur_cold_start_wait_seconds_count").await;
    assert_eq!(cold_waits, 1.0, "only the first call waited");
    eventually(
        Duration::from_secs(10),
        "the idle container stopped",
        || {
            let s = service_name.clone();
            async move { containers(&s).is_empty().then_some(()) }
        },
    )
    .await;
    // The next request: augur starts the container when the request
    // arrives, so the call 1.5 s later finds it ready.
    assert_eq!(get(&augur.url("/r/9")).await.status, 200);
    assert_eq!(
        augur
            .metric("augur_container_starts_total{dependency=\"fast\",reason=\"prestart\"}")
            .await,
        1.0
    );
    assert_eq!(
        augur.metric("augur_cold_start_wait_seconds_count").await,
        cold_waits,
        "the call did not wait"
    );
    remove(&containers(&service_name));
}
