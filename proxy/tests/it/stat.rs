//! `augur stat` against a running augur: the figures it prints are the
//! traffic sent during its window.

use std::time::{Duration, Instant};

use crate::speculation::{ask, frontend, posts_answer, recording, users_answer};
use crate::support::*;

/// Cells of the row that starts with `first`, split on whitespace.
fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
    let line = text
        .lines()
        .find(|l| l.starts_with(first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{text}"));
    line[first.len()..].split_whitespace().collect()
}

fn percent(cell: &str) -> f64 {
    cell.trim_end_matches('%').parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_shows_each_route_and_dependency_over_its_window() {
    let ports = Ports::new(2);
    let (users, _) = recording(users_answer).await;
    let (posts, _) = recording(posts_answer).await;
    let service = frontend(local(ports.deps[0]), local(ports.deps[1]), None).await;
    let deps = [Dep::new("users", users), Dep::new("posts", posts)];
    let augur = Augur::start(&ports, service, &deps, "").await;
    // Learn the route first, so the window sees speculation at work.
    for i in 0..10 {
        ask(&augur, i % 4, "alice").await;
    }
    let url = augur.url("/p/1");
    let traffic = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_millis(2500);
        let mut n = 0;
        while Instant::now() < until && n < 2000 {
            let got = send(
                hyper::Request::get(&url)
                    .header("authorization", "Bearer alice")
                    .body(Body::default())
                    .unwrap(),
            )
            .await;
            assert_eq!(got.status, 200);
            n += 1;
        }
        n
    });
    let admin = augur.admin.to_string();
    let out = tokio::task::block_in_place(|| {
        augur_command()
            .args(["stat", "--admin", &admin, "--window", "1s"])
            .output()
            .unwrap()
    });
    let sent = traffic.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sent > 20, "only {sent} requests");

    let route = row(&text, "GET /p/{id}");
    let rps: f64 = route[0].parse().unwrap();
    assert!(rps > 5.0, "{text}");
    assert_eq!(route[1], "100.00%", "{text}");
    assert!(route[2] != "-" && route[3] != "-", "{text}");
    for dep in ["users", "posts"] {
        let cells = row(&text, dep);
        let dep_rps: f64 = cells[0].parse().unwrap();
        // One call to each per request, over the same window.
        assert!((dep_rps - rps).abs() <= rps * 0.2 + 1.0, "{text}");
        assert_eq!(cells[1], "100.00%", "{text}");
        assert!(percent(cells[4]) > 0.0, "nothing answered ahead:\n{text}");
        assert_ne!(cells[5], "-", "{text}");
        assert_eq!(cells[7], "-", "no containers: {text}");
    }
}

#[test]
fn stat_without_an_augur_says_where_it_looked() {
    let addr = local(free_port());
    let started = Instant::now();
    let out = augur_command()
        .args(["stat", "--admin", &addr.to_string(), "--window", "100ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot reach augur's admin listener at {addr}")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
