//! The proxy feeds the predictor: captured JSON bodies and hashed
//! credentials reach the learner and the trace log; `augur eval` replays it.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::support::*;

fn json(body: String) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// `users` answers `/users/{id}` with a uid; `posts` answers anything.
async fn json_dependencies() -> (SocketAddr, SocketAddr) {
    let users = serve(|req: Request<Incoming>| async move {
        let id = req.uri().path().trim_start_matches("/users/").to_string();
        json(format!("{{\"id\":{id},\"uid\":\"u-{id}-x\"}}"))
    })
    .await;
    let posts =
        serve(|_req: Request<Incoming>| async move { json("{\"posts\":[1,2]}".into()) }).await;
    (users, posts)
}

/// For `GET /p/{id}`: users by the inbound id, then posts by the uid the
/// users response gave, both carrying traceparent and authorization.
async fn frontend(users: SocketAddr, posts: SocketAddr) -> SocketAddr {
    serve(move |req: Request<Incoming>| async move {
        let id = req.uri().path().trim_start_matches("/p/").to_string();
        let forward = |url: String| {
            let mut call = Request::get(url);
            for name in ["traceparent", "authorization"] {
                if let Some(v) = req.headers().get(name) {
                    call = call.header(name, v);
                }
            }
            call.body(Body::default()).unwrap()
        };
        let resp = client()
            .request(forward(format!("http://{users}/users/{id}")))
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let user: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let uid = user["uid"].as_str().unwrap().to_string();
        let resp = client()
            .request(forward(format!("http://{posts}/posts?user={uid}")))
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
        Response::new(Body::from("ok"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_reach_the_learner_and_the_trace_log() {
    let ports = Ports::new(2);
    let (users, posts) = json_dependencies().await;
    let service = frontend(local(ports.deps[0]), local(ports.deps[1])).await;
    let trace = std::env::temp_dir().join(format!(
        "augur-trace-{}-{}.jsonl",
        std::process::id(),
        free_port()
    ));
    let extra = format!("[predictor]\ntrace_log = \"{}\"", trace.display());
    let deps = [Dep::new("users", users), Dep::new("posts", posts)];
    let augur = Augur::start(&ports, service, &deps, &extra).await;

    for i in 0..10 {
        let req = Request::get(augur.url(&format!("/p/{i}")))
            .header("authorization", format!("Bearer secret-{}", i % 2))
            .body(Body::default())
            .unwrap();
        assert_eq!(send(req).await.status, 200);
    }
    let learned = eventually(Duration::from_secs(5), "10 contexts learned", || async {
        let n = augur.metric("augur_learner_contexts_total").await;
        (n >= 10.0).then_some(n)
    })
    .await;
    assert_eq!(learned, 10.0);

    // The model: posts' user comes from the users response, trusted.
    let model = augur.admin_get("/debug/model").await;
    let model: serde_json::Value = serde_json::from_slice(&model.body).unwrap();
    let calls = model["routes"]["GET /p/{id}"]
        .as_array()
        .expect("route learned");
    let posts_call = calls
        .iter()
        .find(|c| c["shape"].as_str().unwrap().starts_with("posts GET /posts"))
        .unwrap();
    let user_slot = posts_call["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == "query.user")
        .unwrap();
    let best = &user_slot["rules"][0];
    assert!(best["source"].as_str().unwrap().contains("/uid"), "{best}");
    assert_eq!(best["trusted"], true, "{user_slot}");

    // The trace log: one versioned line per context, credentials hashed.
    let text = eventually(Duration::from_secs(5), "10 trace lines", || {
        let trace = trace.clone();
        async move {
            let text = std::fs::read_to_string(&trace).unwrap_or_default();
            (text.lines().count() >= 10).then_some(text)
        }
    })
    .await;
    assert!(
        !text.contains("secret-"),
        "a credential reached the trace log"
    );
    let (records, errors) = augur_predictor::trace::read(text.as_bytes()).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(records.len(), 10);
    let r = &records[3].context;
    assert_eq!(r.route, "GET /p/{id}");
    assert_eq!(r.calls.len(), 2);
    assert_eq!(r.calls[0].response.as_ref().unwrap()["uid"], "u-3-x");
    let auth = r.calls[1].request.header("authorization").unwrap();
    assert!(auth.starts_with("keyed:"));
    assert_eq!(Some(auth), r.inbound.header("authorization"));

    // augur eval replays it.
    let out = augur_command().arg("eval").arg(&trace).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["contexts"], 10);
    assert_eq!(report["calls"], 20);
    // After min_observations (3) contexts both calls are speculated right.
    assert_eq!(report["speculation_precision"], 1.0, "{report}");
    assert!(
        report["speculation_recall"].as_f64().unwrap() >= 0.6,
        "{report}"
    );
    let _ = std::fs::remove_file(&trace);
}

#[test]
fn eval_reports_bad_lines_and_rejects_unknown_models() {
    let path = std::env::temp_dir().join(format!("augur-bad-trace-{}.jsonl", std::process::id()));
    std::fs::write(&path, "not json\n{\"version\":7}\n").unwrap();
    let out = augur_command().arg("eval").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:1: skipped: invalid JSON", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(":2: skipped: unknown version 7"),
        "{stderr}"
    );
    assert!(stderr.contains("no contexts"), "{stderr}");
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"));

    let out = augur_command()
        .args(["eval", "--model", "lstm"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model must be"));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn export_sequences_writes_the_fields_a_network_reads() {
    let dir = std::env::temp_dir().join(format!("augur-export-{}", std::process::id()));
    let out = augur_command()
        .args(["suite", "--contexts", "200", "--class", "combined", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = dir.join("combined.jsonl");
    let export = |args: &[&str]| {
        let out = augur_command()
            .arg("export-sequences")
            .args(args)
            .arg(&trace)
            .output()
            .unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = export(&["--features", "8", "--train-fraction", "0.5"]);
    assert!(ok, "{stderr}");
    let data: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    let fields = data["features"].as_array().unwrap();
    assert!(!fields.is_empty() && fields.len() <= 8, "{fields:?}");
    // What decides the discount call: the account's flag and the cart.
    let text = serde_json::to_string(fields).unwrap();
    assert!(
        text.contains("/premium") && text.contains("/items"),
        "{text}"
    );
    for seq in data["sequences"].as_array().unwrap() {
        let rows = seq["features"].as_array().unwrap();
        assert_eq!(rows.len(), seq["shapes"].as_array().unwrap().len() + 1);
        assert!(
            rows.iter()
                .all(|r| r.as_array().unwrap().len() == fields.len())
        );
    }
    let (ok, stdout, _) = export(&["--features", "0"]);
    assert!(ok);
    let data: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(data["features"], serde_json::json!([]));
    assert_eq!(data["sequences"][0]["features"], serde_json::json!([]));
    let (ok, _, stderr) = export(&["--train-fraction", "2"]);
    assert!(
        !ok && stderr.contains("--train-fraction must be within 0..=1"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onnx_model_is_used_and_a_bad_one_falls_back_to_online() {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../predictor/models");
    let model = models.join("demo.onnx");
    let upstream = echo_server().await;
    for (kind, path, expected) in [
        ("onnx", model.display().to_string(), "onnx"),
        // A network that reads fields of the context beside the history.
        (
            "onnx",
            models.join("combined-lstm.onnx").display().to_string(),
            "onnx",
        ),
        ("onnx", "/nonexistent/model.onnx".into(), "online"),
        ("auto", model.display().to_string(), "auto"),
        ("auto", "/nonexistent/model.onnx".into(), "online"),
    ] {
        let extra = format!("[predictor]\nkind = \"{kind}\"\nmodel = \"{path}\"");
        let augur = Augur::start(&Ports::new(0), upstream, &[], &extra).await;
        assert_eq!(get(&augur.url("/x")).await.status, 200);
        let model: serde_json::Value =
            serde_json::from_slice(&augur.admin_get("/debug/model").await.body).unwrap();
        assert_eq!(model["model"], expected, "{path}: {}", augur.log_text());
        if expected == "auto" {
            // Each route learned says which model predicts it, and why.
            assert!(model["model_by_route"].is_object(), "{model}");
        }
        if expected == "online" {
            let log = augur.log_text();
            assert!(
                log.contains("cannot read model /nonexistent/model.onnx"),
                "{log}"
            );
            assert!(log.contains("using the online model instead"), "{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_request_bodies_reach_the_trace_log() {
    let ports = Ports::new(1);
    let orders = echo_server().await;
    let egress = local(ports.deps[0]);
    let service = serve(move |req: Request<Incoming>| async move {
        let tp = req.headers()["traceparent"].clone();
        let call = Request::post(format!("http://{egress}/orders"))
            .header("traceparent", tp)
            .header("content-type", "application/json")
            .body(Body::from("{\"item\":17,\"qty\":2}"))
            .unwrap();
        let resp = client().request(call).await.unwrap();
        resp.into_body().collect().await.unwrap();
        Response::new(Body::from("ok"))
    })
    .await;
    let trace = std::env::temp_dir().join(format!(
        "augur-body-trace-{}-{}.jsonl",
        std::process::id(),
        free_port()
    ));
    let extra = format!("[predictor]\ntrace_log = \"{}\"", trace.display());
    let augur = Augur::start(&ports, service, &[Dep::new("orders", orders)], &extra).await;
    assert_eq!(get(&augur.url("/buy")).await.status, 200);
    let text = eventually(Duration::from_secs(5), "a trace line", || {
        let trace = trace.clone();
        async move {
            std::fs::read_to_string(&trace)
                .ok()
                .filter(|t| t.lines().count() >= 1)
        }
    })
    .await;
    let record =
        augur_predictor::trace::parse_line(text.lines().next().unwrap().as_bytes()).unwrap();
    let call = &record.context.calls[0];
    assert_eq!(call.request.method, "POST");
    assert_eq!(
        call.request.body.as_deref(),
        Some(&serde_json::json!({"item": 17, "qty": 2}))
    );
    let _ = std::fs::remove_file(&trace);
}
