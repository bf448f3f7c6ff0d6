//! Learning that survives restarts (`predictor.state`): a restarted augur
//! answers its first request on a learned route from speculation; a state
//! file that is cut short, corrupt, of another version or of another
//! service is reported and ignored, and augur serves as if new.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::speculation::{ask, expected, frontend, posts_answer, recording, users_answer};
use crate::support::*;

fn state_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("augur-state-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("state.jsonl")
}

/// users and posts behind augur, with `predictor.state` at `path`; the
/// same ports each time, so a restart is the same deployment.
struct Deployment {
    ports: Ports,
    service: std::net::SocketAddr,
    deps: Vec<Dep>,
    extra: String,
}

impl Deployment {
    async fn new(path: &Path) -> Self {
        let ports = Ports::new(2);
        let (users, _) = recording(users_answer).await;
        let (posts, _) = recording(posts_answer).await;
        let service = frontend(local(ports.deps[0]), local(ports.deps[1]), None).await;
        Deployment {
            ports,
            service,
            deps: vec![Dep::new("users", users), Dep::new("posts", posts)],
            extra: format!("[predictor]\nstate = \"{}\"", path.display()),
        }
    }

    async fn start(&self) -> Augur {
        Augur::start(&self.ports, self.service, &self.deps, &self.extra).await
    }
}

async fn answered_ahead(augur: &Augur) -> f64 {
    augur.answered_ahead("users").await + augur.answered_ahead("posts").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_augur_answers_its_first_request_from_speculation() {
    let path = state_path("restart");
    let deployment = Deployment::new(&path).await;
    let mut augur = deployment.start().await;
    for id in 0..20 {
        assert_eq!(ask(&augur, id, "alice").await.text(), expected(id, "alice"));
    }
    assert!(answered_ahead(&augur).await > 0.0, "it learned the route");
    augur.signal("TERM");
    assert!(augur.wait(Duration::from_secs(10)).is_some(), "augur stops");
    let saved = std::fs::read_to_string(&path).expect("a state saved at shutdown");
    assert!(
        saved.starts_with("{\"format\":\"augur-state\""),
        "{saved:.200}"
    );

    let augur = deployment.start().await;
    // The first request after the restart, on an id never seen.
    assert_eq!(ask(&augur, 77, "bob").await.text(), expected(77, "bob"));
    let ahead = answered_ahead(&augur).await;
    assert!(
        ahead >= 1.0,
        "the first request's calls were answered from speculation ({ahead}):\n{}",
        augur.log_text()
    );
    drop(augur);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_state_file_is_reported_and_ignored() {
    let path = state_path("bad");
    let deployment = Deployment::new(&path).await;
    // A good state to spoil: learned and saved by augur itself.
    let mut augur = deployment.start().await;
    for id in 0..12 {
        ask(&augur, id, "alice").await;
    }
    augur.signal("TERM");
    assert!(augur.wait(Duration::from_secs(10)).is_some());
    let good = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    assert!(lines.len() > 3, "{good:.300}");
    let cut_short = lines[..lines.len() - 2].join("\n");
    let half = &good[..good.len() / 2];
    lines[2] = "{\"version\":1,\"route\": garbage";
    let corrupt = lines.join("\n");
    let other_version = good.replacen("\"state_version\":1", "\"state_version\":9", 1);
    let other_service = good.replacen("\"service\":\"svc-", "\"service\":\"other-", 1);
    for (text, said) in [
        (cut_short.as_str(), "cut short"),
        (half, "line"),
        (corrupt.as_str(), "line 3"),
        (other_version.as_str(), "state version 9"),
        (other_service.as_str(), "saved by service \"other-"),
        ("\u{0}\u{1} not json at all", "not an augur state"),
        ("", "empty"),
    ] {
        std::fs::write(&path, text).unwrap();
        let augur = deployment.start().await;
        // It serves, and learns from scratch.
        assert_eq!(ask(&augur, 5, "bob").await.text(), expected(5, "bob"));
        assert_eq!(
            answered_ahead(&augur).await,
            0.0,
            "{said}: nothing restored"
        );
        let log = augur.log_text();
        assert!(
            log.contains("is not used") && log.contains(said),
            "{said}: {log}"
        );
        assert!(!log.contains("panicked"), "{log}");
    }
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
