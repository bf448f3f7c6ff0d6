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
