//! Test helpers: real HTTP servers on 127.0.0.1, a real HTTP client, and the
//! real `augur` binary started with a generated configuration.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub type Body = Full<Bytes>;

/// A port that was free a moment ago and that no other test of this run
/// was given, from below the kernel's ephemeral range (32768 and up) where
/// Docker publishes container ports and outgoing connections take theirs.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = fastrand::u16(20_000..32_000);
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Serves `handler` on 127.0.0.1 (HTTP/1.1 and h2c) until the test ends.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Killable::start(local(0), handler).await.addr
}

/// A server that can be killed (listener and every connection) and
/// started again on the same address.
pub struct Killable {
    pub addr: SocketAddr,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Killable {
    pub async fn start<F, Fut>(addr: SocketAddr, handler: F) -> Killable
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = loop {
            // The port may linger for a moment after a kill.
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let addr = listener.local_addr().unwrap();
        let tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let registry = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let conn = tokio::spawn(connection(stream, handler.clone()));
                registry.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Killable { addr, tasks }
    }

    /// Stops accepting and drops every connection, as a crash would.
    pub fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Serves one connection with `handler` (HTTP/1.1 and h2c).
async fn connection<IO, F, Fut>(io: IO, handler: F)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Serves `handler` over TLS (`config`) on 127.0.0.1 until the test ends.
pub async fn serve_tls<F, Fut>(
    config: std::sync::Arc<pingora::tls::ServerConfig>,
    handler: F,
) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(local(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = pingora::tls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                if let Ok(tls) = acceptor.accept(stream).await {
                    connection(tls, handler).await;
                }
            });
        }
    });
    addr
}

/// An upstream that answers with the request body and describes the
/// request it saw in `x-echo-*` headers.
pub async fn echo_server() -> SocketAddr {
    serve(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut resp = Response::builder()
            .header("x-echo-method", parts.method.as_str())
            .header("x-echo-uri", parts.uri.to_string())
            .header("x-echo-version", format!("{:?}", parts.version));
        for (name, value) in &parts.headers {
            resp = resp.header(format!("x-echo-h-{name}"), value);
        }
        resp.body(Full::new(body)).unwrap()
    })
    .await
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A finished response: status, headers and the whole body.
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(req: Request<Body>) -> Got {
    let resp = client().request(req).await.expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

/// A frontend's outbound call with the inbound request's headers named in
/// `pass` passed on, as a service passes on `traceparent` and its caller's
/// credential.
pub fn passing(
    mut call: http::request::Builder,
    inbound: &Request<hyper::body::Incoming>,
    pass: &[&str],
) -> http::request::Builder {
    for name in pass {
        if let Some(v) = inbound.headers().get(*name) {
            call = call.header(*name, v);
        }
    }
    call
}

pub async fn get(url: &str) -> Got {
    send(Request::get(url).body(Body::default()).unwrap()).await
}

/// Sends raw bytes and reads until the server closes or `timeout` passes.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// Polls `check` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, Fut>(within: Duration, what: &str, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A dependency as the test configures it.
pub struct Dep {
    pub name: &'static str,
    pub upstream: String,
    /// Extra TOML lines inside the `[[dependency]]` table.
    pub extra: &'static str,
}

impl Dep {
    pub fn new(name: &'static str, upstream: SocketAddr) -> Self {
        Self {
            name,
            upstream: upstream.to_string(),
            extra: "",
        }
    }
}

/// Ports chosen before anything starts, so that a fake service can be told
/// where augur's egress listeners will be.
pub struct Ports {
    pub ingress: u16,
    pub admin: u16,
    pub deps: Vec<u16>,
}

impl Ports {
    pub fn new(deps: usize) -> Self {
        Self {
            ingress: free_port(),
            admin: free_port(),
            deps: (0..deps).map(|_| free_port()).collect(),
        }
    }
}

/// A running `augur run` process; stopped (SIGKILL) when dropped.
pub struct Augur {
    child: Option<Child>,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub deps: Vec<SocketAddr>,
    pub log: PathBuf,
}

pub fn config_text(ports: &Ports, service: SocketAddr, deps: &[Dep], extra: &str) -> String {
    // One worker thread unless the test sets it, and a short drain grace
    // (augur stops at the end of every test, when its service makes no
    // more calls) unless the test is about it.
    let mut proxy = "[proxy]\nthreads = 1".to_string();
    if !extra.contains("drain_grace") {
        proxy.push_str("\ndrain_grace = \"100ms\"");
    }
    let extra = if extra.contains("[proxy]") {
        extra.replace("[proxy]", &proxy)
    } else {
        format!("{proxy}\n{extra}")
    };
    let mut text = format!(
        "[service]\nname = \"svc-{}\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"{service}\"\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n{extra}\n",
        ports.ingress, ports.ingress, ports.admin
    );
    for (dep, port) in deps.iter().zip(&ports.deps) {
        let upstream = if dep.upstream.is_empty() {
            String::new()
        } else {
            format!("upstream = \"{}\"\n", dep.upstream)
        };
        text.push_str(&format!(
            "\n[[dependency]]\nname = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n{upstream}{}\n",
            dep.name, dep.extra
        ));
    }
    text
}

pub fn write_config(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "augur-test-{}-{}.toml",
        std::process::id(),
        fastrand_id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn fastrand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// ONNX Runtime for augur: `ORT_DYLIB_PATH`, else the copy `scripts/setup`
/// fetches.
pub fn ort_dylib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/onnxruntime/libonnxruntime.so.1.32.0")
        })
}

pub fn augur_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_augur"))
}

impl Augur {
    /// Starts augur and waits (at most 10 s) until `/readyz` says ready.
    pub async fn start(ports: &Ports, service: SocketAddr, deps: &[Dep], extra: &str) -> Augur {
        Self::start_with_env(ports, service, deps, extra, &[]).await
    }

    /// As [`Augur::start`], with more environment variables.
    pub async fn start_with_env(
        ports: &Ports,
        service: SocketAddr,
        deps: &[Dep],
        extra: &str,
        env: &[(&str, &str)],
    ) -> Augur {
        Self::start_from_text(ports, &config_text(ports, service, deps, extra), env).await
    }

    /// As [`Augur::start`], with the whole configuration given.
    pub async fn start_from_text(ports: &Ports, text: &str, env: &[(&str, &str)]) -> Augur {
        let path = write_config(text);
        let log = path.with_extension("log");
        let child = augur_command()
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .env("ORT_DYLIB_PATH", ort_dylib())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut augur = Augur {
            child: Some(child),
            ingress: local(ports.ingress),
            admin: local(ports.admin),
            deps: ports.deps.iter().map(|p| local(*p)).collect(),
            log,
        };
        let admin = augur.admin;
        let started = Instant::now();
        loop {
            if let Some(status) = augur.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("augur exited early ({status}):\n{}", augur.log_text());
            }
            if let Ok(Ok(resp)) = tokio::time::timeout(
                Duration::from_millis(500),
                client().request(
                    Request::get(format!("http://{admin}/readyz"))
                        .body(Body::default())
                        .unwrap(),
                ),
            )
            .await
            {
                if resp.status() == 200 {
                    return augur;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "augur not ready:\n{}",
                augur.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ingress)
    }

    pub fn dep_url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.deps[i])
    }

    pub async fn admin_get(&self, path: &str) -> Got {
        get(&format!("http://{}{path}", self.admin)).await
    }

    /// The calls to `dependency` answered from speculation so far.
    pub async fn answered_ahead(&self, dependency: &str) -> f64 {
        let mut served = 0.0;
        for outcome in ["hit", "coalesced"] {
            let series = format!(
                "augur_dependency_calls_total{{dependency=\"{dependency}\",outcome=\"{outcome}\"}}"
            );
            served += self.metric(&series).await;
        }
        served
    }

    /// The value of one sample of `/metrics`, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.admin_get("/metrics").await.text();
        metric_value(&text, series)
    }

    pub async fn contexts(&self, limit: usize) -> serde_json::Value {
        let got = self
            .admin_get(&format!("/debug/contexts?limit={limit}"))
            .await;
        assert_eq!(got.status, 200);
        serde_json::from_slice(&got.body).unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal (by name, as `kill -s` takes it).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name])
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills the process without a word (SIGKILL), as a crash would, and
    /// reaps it: nothing of its shutdown runs.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Augur {
    /// Stops augur the way an operator would (SIGTERM), so it removes the
    /// containers it started; kills it if it lingers.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Quiet: a test may have stopped it already.
            let _ = Command::new("kill")
                .args(["-s", "TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            // augur removes the containers it runs before it exits.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads `name{labels} value` out of Prometheus text.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}
