//! The differential test: random service programs run through augur with
//! speculation off and on must give the client the same answers, header
//! for header, and execute every write the same number of times.
//!
//! A *program* is a route of a generated frontend: a few dependency calls
//! whose method, path, query, headers (known ones and custom ones) and
//! body come from the inbound request, from an earlier call's answer, from
//! constants, or fresh on every call (which augur cannot predict). Writes
//! (POST, PUT, DELETE) sit among the reads. The dependencies are mirrors:
//! every part of a request changes the answer — its status (200, 204, 206,
//! 304, 404, 500), `set-cookie`, `vary`, chunked or sized framing, and a
//! version that every write to the same resource bumps. Some inbound
//! requests come twice at once with the same `traceparent`.
//!
//! `AUGUR_DIFF_SEED=N` replays one seed; a failure prints the seed and the
//! program that broke.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::support::*;

/// Where a value comes from.
#[derive(Debug, Clone)]
enum Piece {
    Const(&'static str),
    /// The inbound path's last segment.
    InPath,
    /// The inbound `q` query value.
    InQuery,
    /// The inbound `x-h` header.
    InHeader,
    /// The inbound `authorization` (a credential).
    InAuth,
    /// Field `n` of an earlier call's answer.
    Answer(usize),
    /// A fresh value on every call: nothing can predict it (only in
    /// `x-trace-me`, which the mirrors do not answer by).
    Fresh,
}

#[derive(Debug, Clone)]
struct Step {
    dependency: usize,
    method: &'static str,
    /// The resource (first path segment) and the piece after it.
    resource: &'static str,
    item: Piece,
    query: Option<Piece>,
    headers: Vec<(&'static str, Piece)>,
    /// For writes: a JSON body `{"v": piece}`.
    body: Option<Piece>,
}

#[derive(Debug, Clone)]
struct Program {
    name: String,
    steps: Vec<Step>,
}

impl Program {
    fn writes(&self) -> bool {
        self.steps
            .iter()
            .any(|s| !matches!(s.method, "GET" | "HEAD"))
    }
}

const RESOURCES: [&str; 3] = ["items", "carts", "notes"];
const HEADER_NAMES: [&str; 5] = [
    "x-tenant",
    "x-custom",
    "accept",
    "authorization",
    "x-trace-me",
];

fn piece(rng: &mut fastrand::Rng, earlier: usize) -> Piece {
    match rng.u8(0..10) {
        0 => Piece::Const(["alpha", "beta"][rng.usize(0..2)]),
        1 | 2 => Piece::InPath,
        3 => Piece::InQuery,
        4 => Piece::InHeader,
        5 if earlier > 0 => Piece::Answer(rng.usize(0..earlier)),
        _ => Piece::InPath,
    }
}

fn program(rng: &mut fastrand::Rng, index: usize) -> Program {
    // Names that are not identifiers, so each program is a route.
    let letters = b"ghijkmnprstuvwxyz";
    let name = format!(
        "prog{}{}",
        letters[index % letters.len()] as char,
        letters[(index / letters.len()) % letters.len()] as char
    );
    let steps = (0..rng.usize(1..=5))
        .map(|i| {
            let method = match rng.u8(0..20) {
                0..=11 => "GET",
                12..=14 => "HEAD",
                15 | 16 => "POST",
                17 => "PUT",
                _ => "DELETE",
            };
            let write = !matches!(method, "GET" | "HEAD");
            let headers = (0..rng.usize(0..3))
                .map(|_| {
                    let name = HEADER_NAMES[rng.usize(0..HEADER_NAMES.len())];
                    let value = match name {
                        "authorization" => Piece::InAuth,
                        "x-trace-me" => Piece::Fresh,
                        _ => piece(rng, i),
                    };
                    (name, value)
                })
                .collect();
            Step {
                dependency: rng.usize(0..2),
                method,
                resource: RESOURCES[rng.usize(0..RESOURCES.len())],
                item: piece(rng, i),
                query: rng.bool().then(|| piece(rng, i)),
                headers,
                body: write.then(|| piece(rng, i)),
            }
        })
        .collect();
    Program { name, steps }
}

/// A mirror dependency: the answer is a function of every part of the
/// request and of the version of its resource, which writes bump. It logs
/// every write it executes.
struct Mirror {
    addr: SocketAddr,
    writes: Arc<Mutex<HashMap<String, u32>>>,
    /// Every request it executed (method, target, the headers it answers
    /// by, body), and whether it was a speculative one.
    received: Arc<Mutex<Vec<(String, bool)>>>,
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

async fn mirror() -> Mirror {
    let versions: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let writes: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let received: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let (log, all) = (writes.clone(), received.clone());
    let addr = serve(move |req: Request<Incoming>| {
        let (versions, log, all) = (versions.clone(), log.clone(), all.clone());
        async move {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let resource = req.uri().path().split('/').nth(1).unwrap_or("").to_string();
            let mut headers: Vec<String> = req
                .headers()
                .iter()
                .filter(|(n, _)| {
                    !matches!(
                        n.as_str(),
                        "traceparent" | "sec-purpose" | "host" | "x-trace-me"
                    )
                })
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or("?")))
                .collect();
            headers.sort();
            let prefetch = req.headers().contains_key("sec-purpose");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            let write = !matches!(method.as_str(), "GET" | "HEAD");
            let version = {
                let mut v = versions.lock().unwrap();
                let version = v.entry(resource).or_default();
                if write {
                    *version += 1;
                }
                *version
            };
            if write {
                let signature = format!("{method} {uri} {body} prefetch={prefetch}");
                *log.lock().unwrap().entry(signature).or_default() += 1;
            }
            let request = format!("{method} {uri} {} {body}", headers.join(";"));
            all.lock().unwrap().push((request.clone(), prefetch));
            let h = fnv(&request);
            let status = [200, 200, 200, 200, 200, 204, 206, 304, 404, 500][(h % 10) as usize];
            let answer = format!("{{\"n\":{},\"v\":{version},\"echo\":{:?}}}", h % 7, request);
            let mut resp = Response::builder().status(status);
            if h % 3 == 0 {
                resp = resp.header("set-cookie", format!("s={}; Path=/", h % 1000));
            }
            if h % 5 == 0 {
                resp = resp.header("vary", "x-tenant");
            }
            if h % 4 == 0 {
                resp = resp.header("transfer-encoding", "chunked");
            }
            resp = resp.header("content-type", "application/json");
            let body = if matches!(status, 204 | 304) {
                Body::default()
            } else {
                Body::from(answer)
            };
            resp.body(body).unwrap()
        }
    })
    .await;
    Mirror {
        addr,
        writes,
        received,
    }
}

fn value(piece: &Piece, req: &Request<Incoming>, answers: &[serde_json::Value]) -> String {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map_or("none", |v| v.to_str().unwrap())
            .to_string()
    };
    match piece {
        Piece::Const(c) => (*c).to_string(),
        Piece::InPath => req.uri().path().rsplit('/').next().unwrap().to_string(),
        Piece::InQuery => req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("q="))
            .unwrap_or("none")
            .to_string(),
        Piece::InHeader => header("x-h"),
        Piece::InAuth => header("authorization"),
        Piece::Answer(i) => answers
            .get(*i)
            .and_then(|a| a["n"].as_u64())
            .map_or("none".into(), |n| n.to_string()),
        Piece::Fresh => fastrand::u64(..).to_string(),
    }
}

/// The frontend: `GET /{program}/{a}?q=…` runs that program, passing
/// `traceparent` on, and answers with what every call got: status, the
/// headers a service could act on, and the body.
async fn interpreter(programs: Arc<Vec<Program>>, deps: [SocketAddr; 2]) -> SocketAddr {
    serve(move |req: Request<Incoming>| {
        let programs = programs.clone();
        async move {
            let name = req.uri().path().split('/').nth(1).unwrap_or("").to_string();
            let Some(program) = programs.iter().find(|p| p.name == name) else {
                return Response::builder()
                    .status(404)
                    .body(Body::default())
                    .unwrap();
            };
            let mut answers: Vec<serde_json::Value> = Vec::new();
            let mut seen = Vec::new();
            for step in &program.steps {
                let mut uri = format!(
                    "http://{}/{}/{}",
                    deps[step.dependency],
                    step.resource,
                    value(&step.item, &req, &answers)
                );
                if let Some(q) = &step.query {
                    uri.push_str(&format!("?k={}", value(q, &req, &answers)));
                }
                let mut call = Request::builder().method(step.method).uri(uri);
                if let Some(tp) = req.headers().get("traceparent") {
                    call = call.header("traceparent", tp);
                }
                for (name, piece) in &step.headers {
                    call = call.header(*name, value(piece, &req, &answers));
                }
                let body = match &step.body {
                    Some(p) => {
                        call = call.header("content-type", "application/json");
                        Body::from(format!("{{\"v\":{:?}}}", value(p, &req, &answers)))
                    }
                    None => Body::default(),
                };
                let resp = client().request(call.body(body).unwrap()).await.unwrap();
                let mut head: Vec<String> = resp
                    .headers()
                    .iter()
                    .filter(|(n, _)| {
                        matches!(
                            n.as_str(),
                            "content-length"
                                | "transfer-encoding"
                                | "set-cookie"
                                | "vary"
                                | "content-type"
                        )
                    })
                    .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                    .collect();
                head.sort();
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                answers.push(serde_json::from_slice(&body).unwrap_or_default());
                seen.push(format!(
                    "{} {status} [{}] {}",
                    step.method,
                    head.join(", "),
                    String::from_utf8_lossy(&body)
                ));
            }
            Response::new(Body::from(seen.join("\n")))
        }
    })
    .await
}

/// One inbound request of the run.
#[derive(Debug, Clone)]
struct Inbound {
    program: usize,
    uri: String,
    headers: Vec<(&'static str, String)>,
    /// Sent twice at once with one `traceparent`.
    twice: bool,
}

fn inbound_requests(
    rng: &mut fastrand::Rng,
    programs: &[Program],
    per_program: usize,
) -> Vec<Inbound> {
    let mut out = Vec::new();
    for round in 0..per_program {
        for (i, program) in programs.iter().enumerate() {
            let user = ["ann", "bob", "cyd"][rng.usize(0..3)];
            let mut headers = vec![
                ("x-h", ["h1", "h2"][rng.usize(0..2)].to_string()),
                ("authorization", format!("Bearer {user}")),
                ("x-tenant", ["t1", "t2", "t3"][rng.usize(0..3)].to_string()),
            ];
            let twice = !program.writes() && round % 5 == 4;
            if twice {
                headers.push((
                    "traceparent",
                    format!("00-{:032x}-{:016x}-01", rng.u128(1..), rng.u64(1..)),
                ));
            }
            out.push(Inbound {
                program: i,
                uri: format!("/{}/{}?q={}", program.name, rng.u8(1..4), rng.u8(1..3)),
                headers,
                twice,
            });
        }
    }
    out
}

async fn send_inbound(augur: &Augur, inbound: &Inbound) -> String {
    let request = || {
        let mut req = Request::get(augur.url(&inbound.uri));
        for (n, v) in &inbound.headers {
            req = req.header(*n, v);
        }
        send(req.body(Body::default()).unwrap())
    };
    let got = if inbound.twice {
        let (a, b) = tokio::join!(request(), request());
        assert_eq!(
            a.text(),
            b.text(),
            "a retry with the same traceparent: {inbound:?}"
        );
        a
    } else {
        request().await
    };
    format!("{} {}", got.status, got.text())
}

struct Run {
    answers: Vec<String>,
    writes: Vec<HashMap<String, u32>>,
    /// What each dependency executed, by request, and how many of each
    /// were speculative.
    received: Vec<HashMap<String, (u32, u32)>>,
    speculated: f64,
}

async fn run(programs: &Arc<Vec<Program>>, inbound: &[Inbound], speculate: bool) -> Run {
    let ports = Ports::new(2);
    let mirrors = [mirror().await, mirror().await];
    let service = interpreter(
        programs.clone(),
        [local(ports.deps[0]), local(ports.deps[1])],
    )
    .await;
    let deps = [
        Dep::new("one", mirrors[0].addr),
        Dep::new("two", mirrors[1].addr),
    ];
    let extra = format!("[speculation]\nenabled = {speculate}\n");
    let augur = Augur::start(&ports, service, &deps, &extra).await;
    let mut answers = Vec::new();
    for i in inbound {
        answers.push(send_inbound(&augur, i).await);
    }
    let mut speculated = 0.0;
    for dep in ["one", "two"] {
        for outcome in ["hit", "coalesced"] {
            speculated += augur
                .metric(&format!(
                    "augur_dependency_calls_total{{dependency=\"{dep}\",outcome=\"{outcome}\"}}"
                ))
                .await;
        }
    }
    let writes = mirrors
        .iter()
        .map(|m| {
            let mut w = m.writes.lock().unwrap().clone();
            // What matters is what ran, not how it was sent.
            w.retain(|k, _| !k.ends_with("prefetch=true"));
            w
        })
        .collect();
    for m in &mirrors {
        let prefetched: u32 = m
            .writes
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.ends_with("prefetch=true"))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(prefetched, 0, "a write was sent speculatively");
    }
    let received = mirrors
        .iter()
        .map(|m| {
            let mut by_request: HashMap<String, (u32, u32)> = HashMap::new();
            for (request, prefetch) in m.received.lock().unwrap().iter() {
                let counts = by_request.entry(request.clone()).or_default();
                counts.0 += 1;
                counts.1 += u32::from(*prefetch);
            }
            by_request
        })
        .collect();
    Run {
        answers,
        writes,
        received,
        speculated,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculation_never_changes_what_the_client_gets_or_how_often_a_write_runs() {
    let seeds: Vec<u64> = match std::env::var("AUGUR_DIFF_SEED") {
        Ok(s) => vec![s.parse().expect("AUGUR_DIFF_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    let mut calls = 0;
    let mut speculated = 0.0;
    let runs = seeds.len();
    for seed in seeds {
        let mut rng = fastrand::Rng::with_seed(seed);
        let programs: Vec<Program> = (0..30).map(|i| program(&mut rng, i)).collect();
        let inbound = inbound_requests(&mut rng, &programs, 16);
        calls += inbound
            .iter()
            .map(|i| programs[i.program].steps.len() * if i.twice { 2 } else { 1 })
            .sum::<usize>();
        let programs = Arc::new(programs);
        let off = run(&programs, &inbound, false).await;
        let on = run(&programs, &inbound, true).await;
        assert_eq!(off.speculated, 0.0);
        for (k, (a, b)) in off.answers.iter().zip(&on.answers).enumerate() {
            if a != b {
                let i = &inbound[k];
                panic!(
                    "seed {seed}, request {k} ({i:?}): the client got another answer with speculation on\nprogram: {:#?}\noff:\n{a}\non:\n{b}",
                    programs[i.program]
                );
            }
        }
        assert_eq!(
            off.writes, on.writes,
            "seed {seed}: writes ran a different number of times"
        );
        // What each dependency got: every request the service's calls made
        // without speculation reached it exactly as made (by the real call
        // or by its speculation); anything more is a speculative read that
        // was not used.
        for (dep, (off, on)) in off.received.iter().zip(&on.received).enumerate() {
            for (request, (n, _)) in off {
                let got = on.get(request).map_or(0, |c| c.0);
                assert!(
                    got >= *n,
                    "seed {seed}, dependency {dep}: {request:?} ran {got} times with speculation, {n} without"
                );
            }
            for (request, (n, prefetched)) in on {
                let without = off.get(request).map_or(0, |c| c.0);
                let extra = n - without.min(*n);
                let read = request.starts_with("GET ") || request.starts_with("HEAD ");
                assert!(
                    extra == 0 || (read && extra <= *prefetched),
                    "seed {seed}, dependency {dep}: {request:?} ran {n} times with speculation ({prefetched} speculative), {without} without"
                );
            }
        }
        speculated += on.speculated;
    }
    eprintln!("differential: {calls} dependency calls, {speculated} answered from speculation");
    assert!(
        calls >= 1000 * runs,
        "{calls} dependency calls is too few to say much"
    );
    assert!(
        speculated >= calls as f64 * 0.05,
        "speculation answered only {speculated} of {calls} calls: the test would prove nothing"
    );
}
