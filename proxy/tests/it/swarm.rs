//! Dependencies as Docker Swarm services scaled by every sidecar that needs
//! them, against a real single-node swarm the test makes (and leaves again
//! if it made it) and the locally built `augur-demo:latest` image.
//!
//! One test runs the scenarios in order, so that one swarm serves them
//! all and is left once.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::containers::{IMAGE, calling_service, require_image};
use crate::support::*;

/// The swarm, made for the test unless this engine was in one already.
struct Swarm {
    made: bool,
}

impl Swarm {
    fn join() -> Swarm {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        if state.trim() == "active" {
            return Swarm { made: false };
        }
        let out = Command::new("docker")
            .args(["swarm", "init", "--advertise-addr", "127.0.0.1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker swarm init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Swarm { made: true }
    }

    fn leave(&mut self) {
        if std::mem::take(&mut self.made) {
            docker(&["swarm", "leave", "--force"]);
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.leave();
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Running tasks of a service.
fn running(service: &str) -> usize {
    docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.CurrentState}}",
    ])
    .lines()
    .filter(|l| l.starts_with("Running"))
    .count()
}

fn replicas(service: &str) -> Option<u64> {
    docker(&[
        "service",
        "inspect",
        service,
        "--format",
        "{{.Spec.Mode.Replicated.Replicas}}",
    ])
    .trim()
    .parse()
    .ok()
}

fn demands(service: &str) -> usize {
    labelled(service, "augur.demand.")
}

/// The service's labels that start with `prefix`.
fn labelled(service: &str, prefix: &str) -> usize {
    docker(&[
        "service",
        "inspect",
        service,
        "--format",
        "{{json .Spec.Labels}}",
    ])
    .matches(prefix)
    .count()
}

/// Every task the service ever had (running or ended).
fn tasks(service: &str) -> usize {
    docker(&["service", "ps", service, "--format", "{{.ID}}"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// A sidecar of service `svc` whose one dependency, `fast`, is the swarm
/// service augur makes for it, idle instances kept `keep`. In front of an
/// echo server, or with `work`, of a service that works that long and
/// then calls `fast` (so that a sidecar learns the call and prestarts it).
async fn sidecar(svc: &str, keep: &str, work: Option<Duration>) -> Augur {
    let ports = Ports::new(1);
    let upstream = match work {
        Some(work) => {
            let calls = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            calling_service(local(ports.deps[0]), work, calls).await
        }
        None => echo_server().await,
    };
    let text = format!(
        "[service]\nname = \"{svc}\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"{upstream}\"\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n[proxy]\nthreads = 1\ndrain_grace = \"100ms\"\n\n[[dependency]]\nname = \"fast\"\nlisten = \"127.0.0.1:{}\"\n[dependency.container]\nimage = \"{IMAGE}\"\nargs = [\"serve-fast\", \"--listen\", \"0.0.0.0:8080\", \"--body-bytes\", \"16\"]\nport = 8080\nengine = \"swarm\"\nkeep_alive = \"{keep}\"\nstart_timeout = \"60s\"\ntarget_inflight = 100\n",
        ports.ingress, ports.admin, ports.deps[0]
    );
    Augur::start_from_text(&ports, &text, &[]).await
}

async fn until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const CONFLICTS: &str = "augur_swarm_conflicts_total";
const COLD: &str = "augur_container_starts_total{dependency=\"fast\",reason=\"cold\"}";
const PRESTART: &str = "augur_container_starts_total{dependency=\"fast\",reason=\"prestart\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_services_are_scaled_by_every_sidecar_that_needs_them() {
    require_image();
    let mut swarm = Swarm::join();
    let svc = format!("swarmtest{}", std::process::id());
    let service = format!("augur-{svc}-fast");
    // Three replicas of one service, each with its sidecar: a and b in
    // front of echo servers (the test calls their egress), p in front of
    // a service that calls `fast` 1 s into each request.
    let mut a = sidecar(&svc, "2s", None).await;
    let mut b = sidecar(&svc, "60s", None).await;
    let mut p = sidecar(&svc, "1s", Some(Duration::from_secs(1))).await;

    // Twenty concurrent first calls from two sidecars: one task, all served.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let url = if i % 2 == 0 { &a } else { &b }.dep_url(0, "/x");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for c in calls {
        let got = c.await.unwrap();
        assert_eq!((got.status, got.body.len()), (200, 16), "{}", got.text());
    }
    assert_eq!(
        replicas(&service),
        Some(1),
        "max of the demands, not their sum"
    );
    assert_eq!(running(&service), 1, "exactly one task");
    assert_eq!(tasks(&service), 1, "and no other was ever started");
    assert_eq!(
        demands(&service),
        2,
        "both sidecars' demands on the service"
    );

    // a's keep-alive (2 s) ends: its demand goes, b's keeps the task.
    until(Duration::from_secs(15), "a's demand withdrawn", || {
        demands(&service) == 1
    })
    .await;
    assert_eq!(replicas(&service), Some(1));
    assert_eq!(running(&service), 1);
    let got = get(&b.dep_url(0, "/y")).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        b.metric(COLD).await,
        1.0,
        "b's instance was kept: no second start"
    );

    // Another writer on the service (here the docker CLI, as fast as it
    // goes) makes b's renewals lose races on the version index: each is
    // read again, retried and counted, and b's demand stays.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (stop, service) = (stop.clone(), service.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let label = format!("augur-test.writer{w}={i}");
                    docker(&[
                        "service",
                        "update",
                        "--detach",
                        "--label-add",
                        &label,
                        &service,
                    ]);
                }
            })
        })
        .collect();
    let started = Instant::now();
    while b.metric(CONFLICTS).await < 1.0 && started.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(
        b.metric(CONFLICTS).await >= 1.0,
        "no conflict in {:?}",
        started.elapsed()
    );
    // A renewal after the last race.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(demands(&service), 1, "b's demand survived the races");
    assert_eq!(replicas(&service), Some(1));
    assert_eq!(get(&b.dep_url(0, "/z")).await.status, 200);

    // b killed without a word: its demand stops counting once expired, and
    // a (alive, wanting nothing) takes the service back to zero.
    b.sigkill();
    until(Duration::from_secs(40), "the service back at zero", || {
        replicas(&service) == Some(0) && demands(&service) == 0
    })
    .await;
    until(Duration::from_secs(30), "no task left running", || {
        running(&service) == 0
    })
    .await;

    // p learns that its requests call `fast` 1 s in (each request's call
    // may start the service: p's keep-alive is 1 s).
    for i in 0..4 {
        assert_eq!(get(&p.url(&format!("/r/{i}"))).await.status, 200);
    }
    until(Duration::from_secs(20), "the service back at zero", || {
        replicas(&service) == Some(0) && running(&service) == 0
    })
    .await;
    // A prediction in p prestarts the service, and a is served by that
    // same task: one new task in all, a's call started none of its own.
    let (prestarts, before) = (p.metric(PRESTART).await, tasks(&service));
    let request = tokio::spawn({
        let url = p.url("/r/9");
        async move { get(&url).await }
    });
    until(
        Duration::from_secs(20),
        "p's prestarted task running",
        || running(&service) == 1,
    )
    .await;
    assert_eq!(get(&a.dep_url(0, "/shared")).await.status, 200);
    assert_eq!(request.await.unwrap().status, 200);
    assert_eq!(p.metric(PRESTART).await, prestarts + 1.0, "p prestarted");
    assert_eq!(tasks(&service), before + 1, "one task for both");
    assert_eq!(replicas(&service), Some(1));

    until(
        Duration::from_secs(20),
        "every instance idle and stopped",
        || demands(&service) == 0,
    )
    .await;

    // Every sidecar dies at once, a's demand still live: nothing lowers
    // the count until a sidecar starts again, and that one, called or
    // not, drops the expired demands and takes the service to zero.
    assert_eq!(get(&a.dep_url(0, "/last")).await.status, 200);
    assert_eq!(demands(&service), 1);
    a.sigkill();
    p.sigkill();
    let c = sidecar(&svc, "2s", None).await;
    until(
        Duration::from_secs(40),
        "the new sidecar took it to zero",
        || replicas(&service) == Some(0) && demands(&service) == 0,
    )
    .await;

    // The node leaves the swarm: a call that needs an instance fails fast,
    // naming the operation; nothing hangs.
    docker(&["service", "rm", &service]);
    let ours = swarm.made;
    swarm.leave();
    if ours {
        let started = Instant::now();
        let got = get(&c.dep_url(0, "/after")).await;
        assert_eq!(got.status, 503, "{}", got.text());
        let text = got.text();
        assert!(
            text.contains("service") && text.contains("swarm"),
            "the error names the operation: {text}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    drop((a, p, c));
}
