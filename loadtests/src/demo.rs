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

/// The feed id `users` gives for user `id`, which `posts` is asked for.
pub fn feed_of(id: u64) -> u64 {
    id * 7 + 3
}

/// The `users` dependency's answer for `id`.
pub fn user_body(id: u64) -> String {
    format!(
        "{{\"id\":{id},\"name\":\"user-{id}\",\"feed\":\"f{}\"}}",
        feed_of(id)
    )
}

/// The `posts` dependency's answer for a feed.
pub fn posts_body(feed: u64) -> String {
    format!(
        "{{\"feed\":\"f{feed}\",\"posts\":[{},{}]}}",
        feed * 10,
        feed * 10 + 1
    )
}

/// The frontend's answer for `/profile/{id}`: what the client must get.
pub fn profile_body(id: u64) -> String {
    format!(
        "{{\"user\":{},\"posts\":{}}}",
        user_body(id),
        posts_body(feed_of(id))
    )
}

fn id_after(text: &str, prefix: &str) -> Option<u64> {
    text.strip_prefix(prefix)?.parse().ok()
}

/// Starts `users` and `posts` with the given latencies; returns their
/// addresses.
pub async fn start_dependencies(latency: Duration) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let users = serve_users(local(0), latency).await?;
    let posts = serve_posts(local(0), latency).await?;
    Ok((users, posts))
}

/// The `users` service: `GET /users/{id}`.
pub async fn serve_users(listen: SocketAddr, latency: Duration) -> std::io::Result<SocketAddr> {
    server::serve(listen, move |req: Request<Incoming>| async move {
        tokio::time::sleep(latency).await;
        match id_after(req.uri().path(), "/users/") {
            Some(id) => respond(200, "application/json", user_body(id)),
            None => respond(404, "text/plain", "no such user\n"),
        }
    })
    .await
}

/// The `posts` service: `GET /posts?feed=f{id}`.
pub async fn serve_posts(listen: SocketAddr, latency: Duration) -> std::io::Result<SocketAddr> {
    server::serve(listen, move |req: Request<Incoming>| async move {
        tokio::time::sleep(latency).await;
        match req.uri().query().and_then(|q| id_after(q, "feed=f")) {
            Some(feed) => respond(200, "application/json", posts_body(feed)),
            None => respond(400, "text/plain", "posts needs ?feed=fID\n"),
        }
    })
    .await
}

/// Starts the frontend on a free port, calling its dependencies at the
/// given addresses (augur's egress listeners).
pub async fn start_frontend(users: SocketAddr, posts: SocketAddr) -> anyhow::Result<SocketAddr> {
    serve_frontend(local(0), users, posts).await
}

/// The frontend: `GET /profile/{id}` calls users, then posts with the feed
/// users named.
pub async fn serve_frontend(
    listen: SocketAddr,
    users: SocketAddr,
    posts: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    server::serve(listen, move |req: Request<Incoming>| {
        let client = client.clone();
        async move {
            let Some(id) = id_after(req.uri().path(), "/profile/") else {
                return respond(404, "text/plain", "try /profile/{id}\n");
            };
            // users first; its answer names the feed to ask posts for.
            let user = match call(&client, &req, &format!("http://{users}/users/{id}")).await {
                Ok(body) => body,
                Err(e) => return respond(502, "text/plain", format!("frontend: {e}\n")),
            };
            let feed = serde_json::from_slice::<serde_json::Value>(&user)
                .ok()
                .and_then(|u| u["feed"].as_str().map(str::to_string));
            let Some(feed) = feed else {
                return respond(502, "text/plain", "frontend: users gave no feed\n");
            };
            let posts =
                match call(&client, &req, &format!("http://{posts}/posts?feed={feed}")).await {
                    Ok(body) => body,
                    Err(e) => return respond(502, "text/plain", format!("frontend: {e}\n")),
                };
            let body = format!(
                "{{\"user\":{},\"posts\":{}}}",
                String::from_utf8_lossy(&user),
                String::from_utf8_lossy(&posts)
            );
            respond(200, "application/json", body)
        }
    })
    .await
    .map_err(Into::into)
}

/// One outbound call that carries the inbound `traceparent` and
/// `authorization`, as an instrumented service would.
pub(crate) async fn call(
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
    /// Where augur writes its trace log (closed contexts as JSON Lines).
    pub trace: Option<PathBuf>,
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
    let predictor = match &opts.trace {
        Some(path) => {
            let path = std::path::absolute(path)?;
            let _ = std::fs::remove_file(&path);
            format!(
                "\n[predictor]\ntrace_log = {:?}\n",
                path.display().to_string()
            )
        }
        None => String::new(),
    };
    let config = format!(
        r#"[service]
name = "frontend"
listen = "127.0.0.1:{ingress}"
upstream = "{frontend}"

[admin]
listen = "127.0.0.1:{admin}"
{predictor}
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
                method: None,
                label: "GET /profile/{id}",
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
    step("what augur learned about the route (/debug/model)");
    let (_, body) = procs::http_get(local(admin), "/debug/model")?;
    let model: serde_json::Value =
        serde_json::from_str(&body).context("/debug/model is not JSON")?;
    print_model(&model);
    if let Some(path) = &opts.trace {
        println!(
            "\ntrace log: {} (replay it: augur eval {})",
            path.display(),
            path.display()
        );
    }
    if report.errors > 0 || report.wrong > 0 || report.ok as usize != opts.requests {
        bail!(
            "the demo saw {} errors and {} wrong responses",
            report.errors,
            report.wrong
        );
    }
    let tied = ["users", "posts"]
        .iter()
        .flat_map(|d| ["miss", "hit", "coalesced"].map(move |o| (d, o)))
        .map(|(d, o)| {
            procs::metric(
                &metrics,
                &format!("augur_dependency_calls_total{{dependency=\"{d}\",outcome=\"{o}\"}}"),
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

fn step(text: &str) {
    println!("\n==> {text}");
}

fn print_model(model: &serde_json::Value) {
    let Some(routes) = model["routes"].as_object() else {
        return;
    };
    for (route, calls) in routes {
        println!("  {route}");
        for call in calls.as_array().into_iter().flatten() {
            println!(
                "      {}  (expected at +{:.2} ms, takes {:.2} ms)",
                call["shape"].as_str().unwrap_or("?"),
                call["expected_start_us"].as_f64().unwrap_or(0.0) / 1000.0,
                call["expected_latency_us"].as_f64().unwrap_or(0.0) / 1000.0,
            );
            for slot in call["slots"].as_array().into_iter().flatten() {
                let best = &slot["rules"][0];
                println!(
                    "          {:<22} <- {} (held {} times{})",
                    slot["slot"].as_str().unwrap_or("?"),
                    best["source"].as_str().unwrap_or("?"),
                    best["support"],
                    if best["trusted"] == true {
                        ", trusted"
                    } else {
                        ""
                    },
                );
            }
        }
    }
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
