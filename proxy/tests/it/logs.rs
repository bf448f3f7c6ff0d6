//! The access log and JSON logs: a line per inbound request and per
//! dependency call with how each went, and no credential anywhere.

use std::time::Duration;

use crate::speculation::{ask, expected, frontend, posts_answer, recording, users_answer};
use crate::support::*;

/// The frontend of the speculation tests behind augur, with `extra`
/// configuration; `n` requests from one principal whose credential is a
/// secret.
async fn run(extra: &str, n: u32, env: &[(&str, &str)]) -> Augur {
    let ports = Ports::new(2);
    let (users, _) = recording(users_answer).await;
    let (posts, _) = recording(posts_answer).await;
    let service = frontend(local(ports.deps[0]), local(ports.deps[1]), None).await;
    let deps = [Dep::new("users", users), Dep::new("posts", posts)];
    let augur = Augur::start_with_env(&ports, service, &deps, extra, env).await;
    for i in 0..n {
        let got = ask(&augur, i % 4, "sekrit-alice").await;
        assert_eq!(got.text(), expected(i % 4, "sekrit-alice"));
    }
    augur
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_request_and_call_and_no_credential() {
    let path = std::env::temp_dir().join(format!("augur-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let extra = format!("[log]\naccess = \"{}\"\n", path.display());
    let augur = run(&extra, 30, &[]).await;
    let text = eventually(Duration::from_secs(5), "90 access log lines", || {
        // The writer may be mid-line: only what ends in a newline counts.
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.truncate(text.rfind('\n').map_or(0, |end| end + 1));
        async move { (text.lines().count() >= 90).then_some(text) }
    })
    .await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 90, "{text}");
    let inbound: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains(" kind=inbound "))
        .collect();
    let calls: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains(" kind=call "))
        .collect();
    assert_eq!((inbound.len(), calls.len()), (30, 60), "{text}");
    for line in &inbound {
        assert!(line.contains(" route=\"GET /p/{id}\" "), "{line}");
        assert_eq!(field(line, "status"), Some("200"), "{line}");
        assert_eq!(field(line, "trace_id").map(str::len), Some(32), "{line}");
        assert!(field(line, "latency_ms").unwrap().parse::<f64>().unwrap() > 0.0);
    }
    // Each call carries its inbound request's trace id and route.
    for line in &calls {
        let trace = field(line, "trace_id").unwrap();
        assert!(inbound.iter().any(|l| l.contains(trace)), "{line}");
        assert!(line.contains(" route=\"GET /p/{id}\" "), "{line}");
        let dependency = field(line, "dependency").unwrap();
        assert!(["users", "posts"].contains(&dependency), "{line}");
        let outcome = field(line, "outcome").unwrap();
        assert!(["hit", "coalesced", "miss"].contains(&outcome), "{line}");
        // A lead time exactly when speculation answered.
        assert_eq!(
            field(line, "lead_ms").is_some(),
            outcome != "miss",
            "{line}"
        );
        assert!(field(line, "bytes").unwrap().parse::<u64>().unwrap() > 0);
    }
    let ahead = calls
        .iter()
        .filter(|l| field(l, "outcome") != Some("miss"))
        .count();
    assert_eq!(
        ahead as f64,
        augur.answered_ahead("users").await + augur.answered_ahead("posts").await
    );
    assert!(ahead > 0, "nothing was answered from speculation:\n{text}");
    assert!(
        !text.contains("sekrit"),
        "a credential in the access log:\n{text}"
    );
    assert!(!augur.log_text().contains("sekrit"));
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_access_lines_included() {
    let augur = run(
        "[log]\nformat = \"json\"\naccess = \"stderr\"\n",
        6,
        &[("RUST_LOG", "info")],
    )
    .await;
    let text = eventually(Duration::from_secs(5), "18 access lines on stderr", || {
        let text = augur.log_text();
        async move { (text.matches("\"kind\":").count() >= 18).then_some(text) }
    })
    .await;
    let (mut access, mut events) = (0, 0);
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if let Some(kind) = v["kind"].as_str() {
            access += 1;
            assert!(["inbound", "call"].contains(&kind), "{line}");
            assert!(v["status"].is_u64() && v["latency_ms"].is_f64(), "{line}");
            assert_eq!(v["route"], "GET /p/{id}");
        } else {
            assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            events += 1;
        }
    }
    assert_eq!(access, 18);
    assert!(
        text.contains(&format!(
            "\"message\":\"augur {}: ingress",
            env!("CARGO_PKG_VERSION")
        )),
        "{events} events, no start-up line:\n{text}"
    );
    assert!(!text.contains("sekrit"));
}

#[test]
fn an_access_log_that_cannot_be_opened_stops_start_up_with_its_path() {
    let ports = Ports::new(0);
    let text = config_text(
        &ports,
        local(free_port()),
        &[],
        "[log]\naccess = \"/nonexistent-augur-dir/access.log\"\n",
    );
    let out = augur_command()
        .args(["run", "--config"])
        .arg(write_config(&text))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("log.access: cannot open /nonexistent-augur-dir/access.log"),
        "{stderr}"
    );
}
