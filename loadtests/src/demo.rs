//! The end-to-end demo: a `frontend` service that answers
//! `GET /profile/{id}` by calling `users` and then `posts` through augur's
//! egress listeners, with augur in front of it. It sends a few hundred
//! requests, checks every response against the truth, and prints what
//! augur saw: its metrics and its latest execution contexts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::load::{self, Planned};
use crate::procs::{self, free_port, local};
use crate::server::{self, respond};

/// The `users` dependency's answer for `id`.
pub fn user_body(id: u64) -> String {
    format!("{{\"id\":{id},\"name\":\"user-{id}\"}}")
}

/// The `posts` dependency's answer for `user`.
pub fn posts_body(user: u64) -> String {
    format!(
        "{{\"user\":{user},\"posts\":[{},{}]}}",
        user * 10,
        user * 10 + 1
    )
}

/// The frontend's answer for `/profile/{id}`: what the client must get.
pub fn profile_body(id: u64) -> String {
    format!(
        "{{\"user\":{},\"posts\":{}}}",
        user_body(id),
        posts_body(id)
    )
}

fn id_after(text: &str, prefix: &str) -> Option<u64> {
    text.strip_prefix(prefix)?.parse().ok()
}

/// Starts `users` and `posts` with the given latencies; returns their
/// addresses.
pub async fn start_dependencies(latency: Duration) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let users = server::serve(local(0), move |req: Request<Incoming>| async move {
        tokio::time::sleep(latency).await;
        match id_after(req.uri().path(), "/users/") {
            Some(id) => respond(200, "application/json", user_body(id)),
            None => respond(404, "text/plain", "no such user\n"),
        }
    })
    .await?;
    let posts = server::serve(local(0), move |req: Request<Incoming>| async move {
        tokio::time::sleep(latency).await;
        match req.uri().query().and_then(|q| id_after(q, "user=")) {
            Some(id) => respond(200, "application/json", posts_body(id)),
            None => respond(400, "text/plain", "posts needs ?user=ID\n"),
        }
    })
    .await?;
    Ok((users, posts))
}

/// Starts the frontend on a free port, calling its dependencies at the
/// given addresses (augur's egress listeners).
pub async fn start_frontend(users: SocketAddr, posts: SocketAddr) -> anyhow::Result<SocketAddr> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    server::serve(local(0), move |req: Request<Incoming>| {
        let client = client.clone();
        async move {
            let Some(id) = id_after(req.uri().path(), "/profile/") else {
                return respond(404, "text/plain", "try /profile/{id}\n");
            };
            let mut parts = Vec::new();
            for url in [
                format!("http://{users}/users/{id}"),
                format!("http://{posts}/posts?user={id}"),
            ] {
                match call(&client, &req, &url).await {
                    Ok(body) => parts.push(body),
                    Err(e) => return respond(502, "text/plain", format!("frontend: {e}\n")),
                }
            }
            let body = format!(
                "{{\"user\":{},\"posts\":{}}}",
                String::from_utf8_lossy(&parts[0]),
                String::from_utf8_lossy(&parts[1])
            );
            respond(200, "application/json", body)
        }
    })
    .await
    .map_err(Into::into)
}

/// One outbound call that carries the inbound `traceparent` and
/// `authorization`, as an instrumented service would.
async fn call(
    client: &Client<HttpConnector, Empty<Bytes>>,
    inbound: &Request<Incoming>,
    url: &str,
) -> anyhow::Result<Bytes> {
    let mut out = Request::get(url);
    for name in ["traceparent", "authorization"] {
        if let Some(v) = inbound.headers().get(name) {
            out = out.header(name, v);
        }
    }
    let resp = client.request(out.body(Empty::new())?).await?;
    if !resp.status().is_success() {
        bail!("{url}: {}", resp.status());
    }
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// Options of the demo command.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub augur: Option<PathBuf>,
    pub requests: usize,
    pub concurrency: usize,
    pub latency: Duration,
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let binary = procs::augur_binary(opts.augur.clone())?;
    let dir = procs::scratch("demo")?;
    let (ingress, admin, users_egress, posts_egress) =
        (free_port()?, free_port()?, free_port()?, free_port()?);

    step(&format!(
        "starting users and posts (each answers in {:?})",
        opts.latency
    ));
    let (users, posts) = start_dependencies(opts.latency).await?;
    let frontend = start_frontend(local(users_egress), local(posts_egress)).await?;
    step(&format!(
        "starting augur in front of frontend ({frontend}) and of both dependencies"
    ));
    let config = format!(
        r#"[service]
name = "frontend"
listen = "127.0.0.1:{ingress}"
upstream = "{frontend}"

[admin]
listen = "127.0.0.1:{admin}"

[[dependency]]
name = "users"
listen = "127.0.0.1:{users_egress}"
upstream = "{users}"

[[dependency]]
name = "posts"
listen = "127.0.0.1:{posts_egress}"
upstream = "{posts}"
"#
    );
    let _augur = tokio::task::block_in_place(|| {
        procs::start_augur(&binary, &dir, "augur-demo", &config, local(admin), None)
    })?;

    step(&format!(
        "sending {} requests ({} at a time) to augur's ingress",
        opts.requests, opts.concurrency
    ));
    let plan: Vec<Planned> = (0..opts.requests as u64)
        .map(|i| {
            let id = i % 50;
            Planned {
                path: format!("/profile/{id}"),
                headers: vec![(
                    "authorization".into(),
                    format!("Bearer demo-user-{}", i % 3),
                )],
                expect: Some(Bytes::from(profile_body(id))),
            }
        })
        .collect();
    let report = load::closed_loop(local(ingress), plan, opts.concurrency).await;
    println!(
        "  {} ok, {} errors, {} wrong responses in {:.2}s ({:.0} req/s); latency p50 {:.2} ms, p99 {:.2} ms",
        report.ok,
        report.errors,
        report.wrong,
        report.elapsed.as_secs_f64(),
        report.rps(),
        report.ms(0.5),
        report.ms(0.99)
    );

    step("what augur counted (/metrics)");
    let (_, metrics) = procs::http_get(local(admin), "/metrics")?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("augur_") && l.contains("_total"))
    {
        println!("  {line}");
    }
    step("the last execution contexts augur closed (/debug/contexts?limit=3)");
    let (_, body) = procs::http_get(local(admin), "/debug/contexts?limit=3")?;
    let contexts: serde_json::Value =
        serde_json::from_str(&body).context("/debug/contexts is not JSON")?;
    print_contexts(&contexts);
    println!(
        "\nfull JSON: curl -s 'http://127.0.0.1:{admin}/debug/contexts?limit=1' (while the demo runs)"
    );
    if report.errors > 0 || report.wrong > 0 || report.ok as usize != opts.requests {
        bail!(
            "the demo saw {} errors and {} wrong responses",
            report.errors,
            report.wrong
        );
    }
    let tied = ["users", "posts"]
        .iter()
        .map(|d| {
            metric(
                &metrics,
                &format!("augur_dependency_calls_total{{dependency=\"{d}\",outcome=\"miss\"}}"),
            )
        })
        .sum::<f64>();
    if tied as usize != 2 * opts.requests {
        bail!(
            "augur tied {tied} dependency calls to their requests, expected {}",
            2 * opts.requests
        );
    }
    println!(
        "\ndemo ok: every response was right, and every dependency call was tied to its request."
    );
    Ok(())
}

/// The value of one series in Prometheus text, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn print_contexts(contexts: &serde_json::Value) {
    let Some(list) = contexts.as_array() else {
        return;
    };
    for ctx in list {
        let inbound = &ctx["inbound"];
        println!(
            "  {} {} -> {} in {:.2} ms  (trace {}, route {})",
            inbound["method"].as_str().unwrap_or("?"),
            inbound["path"].as_str().unwrap_or("?"),
            ctx["status"],
            ctx["duration_us"].as_f64().unwrap_or(0.0) / 1000.0,
            ctx["trace_id"].as_str().unwrap_or("?"),
            inbound["route"].as_str().unwrap_or("?"),
        );
        let auth = inbound["headers"]
            .as_array()
            .and_then(|h| h.iter().find(|kv| kv[0] == "authorization"))
            .and_then(|kv| kv[1].as_str())
            .unwrap_or("-");
        println!("      authorization as recorded: {auth}");
        for call in ctx["calls"].as_array().into_iter().flatten() {
            let query = call["query"]
                .as_str()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            println!(
                "      +{:>6.2} ms  {:<6} {} {}{} -> {} ({:.2} ms, {} bytes, {})",
                call["start_offset_us"].as_f64().unwrap_or(0.0) / 1000.0,
                call["dependency"].as_str().unwrap_or("?"),
                call["method"].as_str().unwrap_or("?"),
                call["path"].as_str().unwrap_or("?"),
                query,
                call["status"],
                call["duration_us"].as_f64().unwrap_or(0.0) / 1000.0,
                call["response_bytes"],
                call["outcome"].as_str().unwrap_or("?"),
            );
        }
    }
}
