//! The command line: `check-config`, `--version`, and shutdown on signals.

use std::path::Path;
use std::time::{Duration, Instant};

use hyper::Response;

use crate::support::*;

fn fixtures(kind: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/tests/fixtures")
        .join(kind);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn check_config_accepts_valid_files_with_a_summary_each() {
    let files = fixtures("valid");
    let out = augur_command()
        .arg("check-config")
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), files.len(), "{stdout}");
    assert!(
        stdout.lines().all(|l| l.contains(": ok: service ")),
        "{stdout}"
    );
}

#[test]
fn check_config_prints_every_problem_of_every_invalid_file() {
    for file in fixtures("invalid") {
        let expected = std::fs::read_to_string(file.with_extension("expected")).unwrap();
        let out = augur_command()
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", file.display());
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in expected.lines() {
            assert!(
                stdout.contains(&format!("{}: {line}", file.display())),
                "{line:?} missing from\n{stdout}"
            );
        }
    }
}

#[test]
fn run_refuses_an_invalid_config_with_its_problems() {
    let file = fixtures("invalid")
        .into_iter()
        .find(|f| f.ends_with("bad-upstream.toml"))
        .unwrap();
    let out = augur_command()
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dependency[2].upstream: invalid socket address \"x:y\""),
        "{stderr}"
    );
}

#[test]
fn version_and_help() {
    let out = augur_command().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("augur {}", env!("CARGO_PKG_VERSION"))
    );
    let out = augur_command().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("run") && help.contains("check-config"),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let slow = serve(|_req| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(Body::from("finished"))
    })
    .await;
    let mut augur = Augur::start(&Ports::new(0), slow, &[], "").await;
    let url = augur.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    augur.signal("TERM");
    let got = in_flight.await.unwrap();
    assert_eq!((got.status, got.text().as_str()), (200, "finished"));
    let status = tokio::task::block_in_place(|| augur.wait(Duration::from_secs(5)));
    let took = started.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        augur.log_text()
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // New connections are refused once it is gone.
    assert!(std::net::TcpStream::connect(augur.ingress).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_on_an_idle_proxy_exits_at_once() {
    let upstream = echo_server().await;
    let mut augur = Augur::start(&Ports::new(0), upstream, &[], "").await;
    assert_eq!(get(&augur.url("/")).await.status, 200);
    let started = Instant::now();
    augur.signal("INT");
    let status = tokio::task::block_in_place(|| augur.wait(Duration::from_secs(5)));
    assert!(status.is_some_and(|s| s.success()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// The sidecar that exits first: after SIGTERM the ingress takes no new
/// connection and closes its idle ones, but the service, still finishing
/// its work, reaches its dependency through the egress listener — on new
/// connections — until it has been quiet for `proxy.drain_grace`; then
/// augur exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_the_ingress_closes_and_the_egress_serves_the_services_last_calls() {
    let ports = Ports::new(1);
    let dependency = serve(|_req| async { Response::new(Body::from("from the dependency")) }).await;
    let egress = local(ports.deps[0]);
    // The service: finishes its work after a while, then calls its
    // dependency through augur.
    let service = serve(move |_req| async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let got = get(&format!("http://{egress}/data")).await;
        Response::new(Body::from(format!("{} {}", got.status, got.text())))
    })
    .await;
    let mut augur = Augur::start(
        &ports,
        service,
        &[Dep::new("data", dependency)],
        "[proxy]\nshutdown_timeout = \"5s\"\ndrain_grace = \"1s\"\n",
    )
    .await;
    // A client with a kept-alive connection to the ingress, idle.
    let mut idle = std::net::TcpStream::connect(augur.ingress).unwrap();
    let request = b"GET /work HTTP/1.1\r\nHost: svc\r\n\r\n";
    std::io::Write::write_all(&mut idle, request).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 4096];
    let n = std::io::Read::read(&mut idle, &mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    let url = augur.url("/work");
    let inbound = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    augur.signal("TERM");

    let ingress = augur.ingress;
    eventually(
        Duration::from_millis(500),
        "the ingress to refuse",
        || async move { std::net::TcpStream::connect(ingress).is_err().then_some(()) },
    )
    .await;
    let closed = tokio::task::block_in_place(|| std::io::Read::read(&mut idle, &mut buf));
    assert!(
        matches!(closed, Ok(0)),
        "the idle connection stays open: {closed:?}"
    );
    // The request in flight finishes, with the call it made after SIGTERM.
    let got = inbound.await.unwrap();
    assert_eq!(got.text(), "200 from the dependency");
    // A call the service makes later, within the grace, gets through too.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let late = get(&format!("http://{egress}/late")).await;
    assert_eq!(late.text(), "from the dependency");
    let quiet_from = Instant::now();

    let status = tokio::task::block_in_place(|| augur.wait(Duration::from_secs(5)));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        augur.log_text()
    );
    let quiet = quiet_from.elapsed();
    assert!(
        quiet >= Duration::from_millis(900) && quiet < Duration::from_secs(3),
        "exited {quiet:?} after the last call (grace 1s)"
    );
    assert!(std::net::TcpStream::connect(egress).is_err());
}

/// Keys set from the environment: `check-config` lists them, `augur run`
/// uses them, and `/debug/config` shows the effective configuration with
/// them applied and secrets redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_are_listed_used_and_shown() {
    let file = write_config(
        "[service]\nname = \"svc\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n",
    );
    let out = augur_command()
        .arg("check-config")
        .arg(&file)
        .env("AUGUR_SPECULATION__CONFIDENCE", "0.9")
        .env("AUGUR_PROXY__THREADS", "lots")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "proxy.threads: expected an integer, found string (set by AUGUR_PROXY__THREADS)"
        ),
        "{stdout}"
    );
    let out = augur_command()
        .arg("check-config")
        .arg(&file)
        .env("AUGUR_SPECULATION__CONFIDENCE", "0.9")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{}: speculation.confidence set by AUGUR_SPECULATION__CONFIDENCE",
            file.display()
        )),
        "{stdout}"
    );

    let upstream = echo_server().await;
    let ports = Ports::new(1);
    let augur = Augur::start_with_env(
        &ports,
        upstream,
        &[Dep {
            name: "db",
            upstream: String::new(),
            extra: "[dependency.container]\nimage = \"augur-no-such-image:1\"\nport = 5432\nargs = [\"--password\", \"hunter2\"]\n",
        }],
        "",
        &[
            ("AUGUR_SPECULATION__CONFIDENCE", "0.9"),
            ("AUGUR_DEPENDENCY__DB__CONTAINER__PORT", "5433"),
        ],
    )
    .await;
    let got = augur.admin_get("/debug/config").await;
    assert_eq!(got.status, 200);
    let config: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(config["speculation"]["confidence"], 0.9);
    assert_eq!(config["proxy"]["shutdown_timeout"], "3s");
    let container = &config["dependencies"][0]["target"]["container"];
    assert_eq!(container["port"], 5433);
    assert_eq!(
        container["args"],
        serde_json::json!(["--password", "[redacted]"])
    );
    assert!(!got.text().contains("hunter2"));
    let keys: Vec<&str> = config["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["dependency[0].container.port", "speculation.confidence"]
    );
}
