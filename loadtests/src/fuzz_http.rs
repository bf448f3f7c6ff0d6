//! `fuzz-http`: hostile HTTP/1.1 over raw sockets against a running augur.
//!
//! It starts a small upstream that records every request it receives and
//! augur in front of it, then sends the catalogue of `cases.rs` (malformed
//! request lines, obs-fold, conflicting framing, bad chunks, oversized
//! headers, pipelines, early closes) and, until `--duration` runs out,
//! seeded random mutations of valid requests. After every case it checks
//! that augur is alive and still proxies a plain GET, that the upstream
//! never received a request the client's bytes should not have produced
//! (`/smuggled-{id}`), and what RFC 9112 asks of that case. Every read has
//! a deadline: a connection that neither answers nor closes is a finding.

mod cases;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;

pub use cases::{Case, Class, Expect};
use wire::{Seen, Wait};

use crate::procs::{self, Proc, free_port, local};
use crate::server::{self, respond};

/// Options of the `fuzz-http` command.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long to send mutations after the catalogue.
    pub duration: Duration,
    /// The mutations' seed (random when absent; printed either way).
    pub seed: Option<u64>,
    pub augur: Option<PathBuf>,
    /// At most this many cases in all.
    pub max_cases: usize,
}

/// What the upstream's every answer says: the liveness check compares it.
const UPSTREAM_BODY: &str = "fuzz upstream\n";

/// How long a complete request may go without an answer or a close.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// How long a mutation's answer is waited for: it may have left the
/// request incomplete, and then the server rightly waits for more.
const MUTATION_WAIT: Duration = Duration::from_millis(400);

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// `None` when the body did not arrive whole.
    pub body: Option<Vec<u8>>,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// Serves `UPSTREAM_BODY` to every request and records each.
async fn start_upstream() -> anyhow::Result<(SocketAddr, Log)> {
    let log: Log = Arc::default();
    let record = log.clone();
    let addr = server::serve(local(0), move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = tokio::time::timeout(ANSWER_WITHIN, body.collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes().to_vec());
            let received = Received {
                method: parts.method.to_string(),
                target: parts
                    .uri
                    .path_and_query()
                    .map_or_else(String::new, |p| p.to_string()),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect(),
                body,
            };
            if let Ok(mut log) = record.lock() {
                log.push(received);
            }
            respond(200, "text/plain", UPSTREAM_BODY)
        }
    })
    .await?;
    Ok((addr, log))
}

/// A case that went wrong, and why.
#[derive(Debug)]
pub struct Finding {
    pub case: Case,
    pub problem: String,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub by_class: BTreeMap<Class, usize>,
    /// Final statuses, and `closed`, `waited` or `abandoned` for cases
    /// without one.
    pub answers: BTreeMap<String, usize>,
    pub findings: Vec<Finding>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn cases(&self) -> usize {
        self.by_class.values().sum()
    }

    pub fn print(&self) {
        let catalogue: usize = self
            .by_class
            .iter()
            .filter(|(c, _)| **c != Class::Mutation)
            .map(|(_, n)| n)
            .sum();
        println!(
            "fuzz-http: {} cases in {:.1}s (catalogue {catalogue}, mutations {}), seed {}",
            self.cases(),
            self.elapsed.as_secs_f64(),
            self.by_class.get(&Class::Mutation).unwrap_or(&0),
            self.seed
        );
        let classes: Vec<String> = self
            .by_class
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        println!("  by class: {}", classes.join(", "));
        let answers: Vec<String> = self
            .answers
            .iter()
            .map(|(a, n)| format!("{a}: {n}"))
            .collect();
        println!("  answers: {}", answers.join(", "));
        println!("  findings: {}", self.findings.len());
        for f in &self.findings {
            println!(
                "\n  #{} [{}] {}: {}\n    bytes: {}",
                f.case.id,
                f.case.class,
                f.case.name,
                f.problem,
                wire::escaped(&f.case.bytes(), 600)
            );
        }
    }
}

/// Runs the fuzzer; the summary is printed, and an error returned when
/// anything was found.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let seed = opts.seed.unwrap_or_else(|| fastrand::u64(..));
    let binary = procs::augur_binary(opts.augur.clone())?;
    let dir = procs::scratch("fuzz-http")?;
    let (upstream, log) = start_upstream().await?;
    let (ingress, admin) = (free_port()?, free_port()?);
    let config = format!(
        "[service]\nname = \"fuzzed\"\nlisten = \"127.0.0.1:{ingress}\"\nupstream = \"{upstream}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    );
    let augur = tokio::task::block_in_place(|| {
        procs::start_augur(&binary, &dir, "augur-fuzz", &config, local(admin), None)
    })?;
    println!(
        "fuzz-http: augur {} on 127.0.0.1:{ingress} in front of {upstream}; seed {seed}; log {}",
        binary.display(),
        dir.join("augur-fuzz.log").display()
    );
    let fuzzer = Fuzzer {
        ingress: local(ingress),
        log,
        augur,
        summary: Summary {
            seed,
            ..Summary::default()
        },
    };
    let summary = tokio::task::spawn_blocking(move || fuzzer.run(&opts, seed))
        .await
        .context("the fuzzer panicked")??;
    summary.print();
    if !summary.findings.is_empty() {
        bail!(
            "{} findings (rerun with --seed {})",
            summary.findings.len(),
            summary.seed
        );
    }
    Ok(())
}

struct Fuzzer {
    ingress: SocketAddr,
    log: Log,
    augur: Proc,
    summary: Summary,
}

impl Fuzzer {
    fn run(mut self, opts: &Options, seed: u64) -> anyhow::Result<Summary> {
        let started = Instant::now();
        let mut rng = fastrand::Rng::with_seed(seed);
        let catalogue = cases::catalogue(1);
        let mut next = catalogue.len() + 1;
        let mut cases = catalogue.into_iter();
        let mutations_until = started + opts.duration;
        while self.summary.cases() < opts.max_cases {
            let case = match cases.next() {
                Some(case) => case,
                None if Instant::now() < mutations_until => {
                    next += 1;
                    cases::mutation(next, &mut rng)
                }
                None => break,
            };
            if !self.one(case)? {
                break;
            }
        }
        self.sweep();
        self.summary.elapsed = started.elapsed();
        Ok(self.summary)
    }

    /// Sends one case and checks everything after it. `false` when augur
    /// is gone and the run cannot go on.
    fn one(&mut self, case: Case) -> anyhow::Result<bool> {
        *self.summary.by_class.entry(case.class).or_default() += 1;
        let wait = match &case.expect {
            Expect::Reject | Expect::Status(_) | Expect::TooLarge | Expect::CloseAfterFirst => {
                Wait::Close {
                    deadline: ANSWER_WITHIN,
                }
            }
            Expect::Answers(paths) => Wait::Answers {
                answers: paths.len(),
                deadline: ANSWER_WITHIN,
            },
            Expect::InStep { .. } => Wait::Answers {
                answers: 2,
                deadline: ANSWER_WITHIN,
            },
            Expect::Either => Wait::Patient {
                deadline: ANSWER_WITHIN,
            },
            Expect::Survive => Wait::Patient {
                deadline: MUTATION_WAIT,
            },
            Expect::Abandon => Wait::Abandon,
        };
        let log_start = self.log_len();
        let seen = wire::exchange(self.ingress, &case.writes, Duration::from_millis(30), wait)
            .with_context(|| format!("connect to augur's ingress {}", self.ingress))?;
        self.count_answer(&case, &seen);
        let mut problems = judge(&case, &seen);
        let alive = self.augur.is_running();
        if !alive {
            problems.push("augur exited".into());
        } else if let Err(e) = self.still_proxies(case.id) {
            problems.push(format!("augur no longer proxies a plain GET: {e}"));
        }
        let received: Vec<Received> = self.log_since(log_start);
        problems.extend(judge_upstream(&case, &seen, &received));
        for problem in problems {
            self.summary.findings.push(Finding {
                case: case.clone(),
                problem,
            });
        }
        Ok(alive)
    }

    fn count_answer(&mut self, case: &Case, seen: &Seen) {
        let finals: Vec<u16> = seen.responses().finals().collect();
        let mut keys: Vec<String> = finals.iter().map(u16::to_string).collect();
        if keys.is_empty() {
            keys.push(
                if case.expect == Expect::Abandon {
                    "abandoned"
                } else if seen.closed {
                    "closed"
                } else {
                    "waited"
                }
                .into(),
            );
        }
        for k in keys {
            *self.summary.answers.entry(k).or_default() += 1;
        }
    }

    /// A plain GET on a new connection gets the upstream's answer.
    fn still_proxies(&self, id: usize) -> anyhow::Result<()> {
        let request =
            format!("GET /alive/{id} HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n\r\n");
        let seen = wire::exchange(
            self.ingress,
            &[request.into_bytes()],
            Duration::ZERO,
            Wait::Answers {
                answers: 1,
                deadline: ANSWER_WITHIN,
            },
        )?;
        let text = String::from_utf8_lossy(&seen.bytes);
        if seen.responses().finals().next() != Some(200) || !text.ends_with(UPSTREAM_BODY) {
            bail!("got {}", wire::escaped(&seen.bytes, 200));
        }
        Ok(())
    }

    fn log_len(&self) -> usize {
        self.log.lock().map_or(0, |l| l.len())
    }

    fn log_since(&self, start: usize) -> Vec<Received> {
        self.log
            .lock()
            .map(|l| l.get(start..).map(<[Received]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }

    /// A smuggled request that reached the upstream after its case was
    /// judged is a finding too.
    fn sweep(&mut self) {
        std::thread::sleep(Duration::from_millis(200));
        let judged: std::collections::HashSet<usize> =
            self.summary.findings.iter().map(|f| f.case.id).collect();
        for r in self.log_since(0) {
            if let Some(id) = smuggled_id(&r.target).filter(|id| !judged.contains(id)) {
                let case = Case {
                    id,
                    class: Class::Smuggling,
                    name: "(found in the final sweep)".into(),
                    writes: Vec::new(),
                    expect: Expect::Either,
                    body: None,
                };
                self.summary.findings.push(Finding {
                    case,
                    problem: format!("the upstream received {} {}", r.method, r.target),
                });
            }
        }
    }
}

fn smuggled_id(target: &str) -> Option<usize> {
    target.strip_prefix("/smuggled-")?.parse().ok()
}

/// What the client saw, against what the case expects.
fn judge(case: &Case, seen: &Seen) -> Vec<String> {
    let r = seen.responses();
    let finals: Vec<u16> = r.finals().collect();
    let said = || {
        format!(
            "answers {finals:?}, {}",
            if seen.closed {
                "then closed"
            } else if seen.timed_out {
                "then neither closed nor answered within the deadline"
            } else {
                "connection open"
            }
        )
    };
    let mut problems = Vec::new();
    if r.garbage {
        problems.push(format!(
            "the answer is not HTTP/1.x: {}",
            wire::escaped(&seen.bytes, 200)
        ));
    }
    let ok = match &case.expect {
        Expect::Reject => seen.closed && (finals.is_empty() || finals == [400]),
        Expect::Status(s) => seen.closed && finals == [*s],
        Expect::TooLarge => seen.closed && matches!(finals[..], [400 | 414 | 431]),
        Expect::CloseAfterFirst => seen.closed && finals.len() <= 1,
        Expect::Answers(paths) => {
            finals.len() == paths.len() && finals.iter().all(|s| (200..300).contains(s))
        }
        Expect::Either => seen.closed || r.whole >= 1,
        Expect::InStep { .. } => seen.closed || r.whole >= 2,
        Expect::Abandon | Expect::Survive => true,
    };
    if !ok {
        let wanted = match &case.expect {
            Expect::Reject => "400 and close (or close)".to_string(),
            Expect::Status(s) => format!("{s} and close"),
            Expect::TooLarge => "400, 414 or 431 and close".to_string(),
            Expect::CloseAfterFirst => "at most one answer, then close".to_string(),
            Expect::Answers(paths) => format!("{} 2xx answers", paths.len()),
            _ => "an answer or a close".to_string(),
        };
        problems.push(format!("expected {wanted}; got {}", said()));
    }
    problems
}

/// What the upstream received during a case, against the case.
fn judge_upstream(case: &Case, seen: &Seen, received: &[Received]) -> Vec<String> {
    let mut problems = Vec::new();
    let ours: Vec<&Received> = received
        .iter()
        .filter(|r| case_of(&r.target) == Some(case.id))
        .collect();
    for r in received {
        if smuggled_id(&r.target).is_some() {
            problems.push(format!(
                "the upstream received a smuggled request: {} {}",
                r.method, r.target
            ));
        }
        for (name, value) in &r.headers {
            if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
                problems.push(format!(
                    "the upstream received a CR, LF or NUL in {name}: {}",
                    wire::escaped(value, 100)
                ));
            }
        }
    }
    match &case.expect {
        Expect::Reject if !ours.is_empty() => problems.push(format!(
            "a request that must be rejected reached the upstream: {} {}",
            ours[0].method, ours[0].target
        )),
        Expect::Answers(paths) => {
            let got: Vec<&str> = ours.iter().map(|r| r.target.as_str()).collect();
            if got != *paths {
                problems.push(format!("the upstream received {got:?}, not {paths:?}"));
            }
        }
        Expect::InStep { second } => {
            let upstream_saw = ours.iter().filter(|r| r.target == *second).count();
            let client_got = seen.responses().finals().count().saturating_sub(1);
            if upstream_saw > client_got {
                problems.push(format!(
                    "out of step: the upstream received {second} {upstream_saw} times, the client got {client_got} answers for it"
                ));
            }
        }
        _ => {}
    }
    if let Some(body) = &case.body {
        for r in ours.iter().filter(|r| r.target == case.path()) {
            if let Some(got) = &r.body {
                if got != body {
                    problems.push(format!(
                        "the upstream received the body {} for {}, not {}",
                        wire::escaped(got, 100),
                        r.target,
                        wire::escaped(body, 100)
                    ));
                }
            }
        }
    }
    problems
}

/// The case id in `/fuzz/{id}…`.
fn case_of(target: &str) -> Option<usize> {
    let rest = target.strip_prefix("/fuzz/")?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_ids_are_unique_and_paths_name_them() {
        let cases = cases::catalogue(1);
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(c.id, i + 1);
            let text = String::from_utf8_lossy(&c.bytes()).into_owned();
            if c.class != Class::RequestLine {
                assert!(text.contains(&c.path()), "{}: {text:?}", c.name);
            }
        }
        assert_eq!(case_of("/fuzz/12/p0"), Some(12));
        assert_eq!(case_of("/fuzz/12?q"), Some(12));
        assert_eq!(case_of("/fuzzy"), None);
    }

    #[test]
    fn mutations_are_reproducible_from_the_seed() {
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..50)
                .map(|i| cases::mutation(i, &mut rng).bytes())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
