//! The typed settings that a valid file turns into. Every value here has
//! passed validation; defaults are filled in.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole, validated augur configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    pub service: Service,
    pub admin: Admin,
    pub telemetry: Telemetry,
    pub log: Log,
    pub speculation: Speculation,
    pub predictor: Predictor,
    pub cache: Cache,
    pub proxy: Proxy,
    pub dns: Dns,
    pub contexts: Contexts,
    pub containers: Containers,
    pub dependencies: Vec<Dependency>,
    pub routes: Vec<Route>,
    /// The keys the environment set (`AUGUR_SECTION__KEY`), in the order
    /// they were applied.
    pub overrides: Vec<crate::Override>,
}

/// One `[[route]]`: speculation settings for one inbound route.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Route {
    /// The route as augur names it: method and path template
    /// (`GET /users/{id}`).
    pub route: String,
    /// Whether calls made for this route may be speculated.
    pub speculate: bool,
    /// Methods that may be speculated for this route, instead of
    /// `speculation.methods` (the way to opt a route into a method with
    /// side effects).
    pub methods: Option<Vec<String>>,
}

/// `[service]`: the ingress listener and the service it fronts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Service {
    pub name: String,
    pub listen: SocketAddr,
    /// What the ingress listener accepts.
    pub listen_protocol: ListenProtocol,
    /// TLS on the ingress listener: its certificate chain and key.
    pub listen_tls: Option<ClientCert>,
    pub upstream: Upstream,
    pub protocol: Protocol,
    /// TLS to the upstream, when set.
    pub tls: Option<Tls>,
    #[serde(serialize_with = "text::duration")]
    pub connect_timeout: Duration,
    /// How long augur waits for the next bytes from the upstream before it
    /// answers 504.
    #[serde(serialize_with = "text::duration")]
    pub timeout: Duration,
}

/// `tls = true` or a `tls` table: augur speaks TLS to the upstream and
/// verifies its certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tls {
    /// The name sent in SNI and checked against the certificate: the
    /// upstream's host name unless set (required for an IP address or a
    /// container).
    pub sni: String,
    /// PEM file of the certificate authorities to trust; the system's
    /// roots when absent.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain and its key (PEM), for mutual TLS.
    pub client_cert: Option<ClientCert>,
}

/// A certificate chain and its key (PEM files): augur's client certificate
/// to an upstream, or the ingress listener's server certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A static upstream: an IP address or a host name, and a port. Host names
/// are resolved at start-up and again while augur runs (`[dns]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl serde::Serialize for Upstream {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The protocol augur speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 over cleartext, with prior knowledge.
    H2c,
}

/// What a proxy listener accepts from its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenProtocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (gRPC), told apart by a
    /// connection's first bytes.
    Auto,
    /// HTTP/1.x only.
    Http1,
    /// HTTP/2 with prior knowledge only.
    H2c,
}

/// `[admin]`: the listener for `/metrics`, `/healthz`, `/readyz`, `/debug/*`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Admin {
    pub listen: SocketAddr,
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Telemetry {
    /// OTLP/gRPC collector; no exporter when absent.
    pub otlp_endpoint: Option<String>,
}

/// `[log]`: augur's own log and the access log.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Log {
    /// How both are written.
    pub format: LogFormat,
    pub access: AccessLog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event, `key=value` fields.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the access log goes: one line per inbound request and per
/// dependency call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    Off,
    Stderr,
    /// Appended to this file (created if absent).
    File(PathBuf),
}

/// `[speculation]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Speculation {
    pub enabled: bool,
    pub confidence: f64,
    #[serde(serialize_with = "text::duration")]
    pub horizon: Duration,
    pub methods: Vec<String>,
    pub max_inflight: u32,
    pub max_waste_ratio: f64,
    /// Every request header is part of a speculation's key but those on
    /// the ignore list (tracing and request ids, hop-by-hop and framing
    /// headers); these are part of it even if listed there (lowercase).
    pub key_headers: Vec<String>,
    /// Headers left out of the key besides the default ignore list: ones a
    /// service sends with a fresh value on every call but that never change
    /// a dependency's answer (lowercase).
    pub ignore_headers: Vec<String>,
    /// What a call with side effects (any method but GET, HEAD, OPTIONS,
    /// TRACE) holds back while it runs: no speculation sent before it
    /// answers a real call that starts after it.
    pub write_barrier: WriteBarrier,
}

/// The reach of a write's barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteBarrier {
    /// Speculations to the dependency written to (the default).
    Dependency,
    /// Speculations to every dependency.
    All,
}

/// `[predictor]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Predictor {
    pub kind: PredictorKind,
    pub min_observations: u32,
    /// Closed contexts are appended here as JSON Lines when set.
    pub trace_log: Option<PathBuf>,
    /// What was learned is saved here (every 30 s and at shutdown) and
    /// learned again at start, when set.
    pub state: Option<PathBuf>,
    /// Largest JSON body (request or response) captured for the learner;
    /// larger ones are proxied but not learned from.
    pub max_body_capture: u64,
    /// Routes learned at most; past it, the least recently seen go.
    pub max_routes: usize,
    /// Call shapes learned at most; past it, the least recently seen go.
    pub max_shapes: usize,
}

/// Which sequence model the predictor runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PredictorKind {
    Online,
    Onnx {
        model: PathBuf,
    },
    /// The online model and the ONNX one side by side; each route is
    /// predicted by the one that has been right more often on it lately.
    Auto {
        model: PathBuf,
    },
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cache {
    /// Bytes of response held at most.
    pub capacity: u64,
}

/// `[dns]`: how upstreams given by host name are resolved, at start-up and
/// again while augur runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Dns {
    /// The shortest time an answer is kept: a TTL below it (0 included)
    /// counts as this.
    #[serde(serialize_with = "text::duration")]
    pub min_ttl: Duration,
    /// The longest: a name is resolved again at least this often, whatever
    /// its TTL says (Docker's DNS answers with 600 s).
    #[serde(serialize_with = "text::duration")]
    pub max_ttl: Duration,
    /// Name servers to ask instead of `/etc/resolv.conf`'s; `/etc/hosts` is
    /// read either way.
    pub nameservers: Vec<SocketAddr>,
}

/// `[proxy]`: how the listeners behave.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Proxy {
    /// Worker threads, shared by the ingress and every egress listener.
    pub threads: usize,
    /// How long a shutdown takes at most: the egress listeners' grace,
    /// the in-flight requests, the telemetry flush.
    #[serde(serialize_with = "text::duration")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM (when the ingress has closed), how long the service
    /// must go without an inbound request in flight or a call through an
    /// egress listener before the egress listeners close: the service may
    /// still be finishing its work.
    #[serde(serialize_with = "text::duration")]
    pub drain_grace: Duration,
    /// Largest request header block accepted; larger ones get 431.
    pub max_request_header_size: u64,
    /// From a new connection's accept, or an idle one's first byte, to the
    /// end of the request header; a slower client is disconnected.
    #[serde(serialize_with = "text::duration")]
    pub header_timeout: Duration,
    /// Longest wait for the next bytes of a request body.
    #[serde(serialize_with = "text::duration")]
    pub body_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests.
    #[serde(serialize_with = "text::duration")]
    pub idle_timeout: Duration,
    /// Open client connections per listener at most (so a flood on the
    /// ingress never shuts the service out of its egress listeners); past
    /// it, new ones are closed at once.
    pub max_connections: usize,
}

/// `[contexts]`: the bookkeeping of in-flight inbound requests.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Contexts {
    /// Open contexts held at most; past it, requests are proxied untracked.
    pub max_open: usize,
    /// An open context older than this is abandoned and dropped.
    #[serde(serialize_with = "text::duration")]
    pub max_age: Duration,
    /// Dependency calls recorded per context at most.
    pub max_calls: usize,
    /// Bytes of captured bodies held for the learner at most, across open
    /// contexts and those waiting to be learned from; past it, bodies are
    /// not kept (the calls still are).
    pub max_body_bytes: u64,
    /// Closed contexts kept for `/debug/contexts`.
    pub history: usize,
    /// Header names (lowercase) whose values are never shown; always
    /// includes `authorization`, `cookie` and `proxy-authorization`.
    pub redact_headers: Vec<String>,
}

/// One `[[dependency]]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Dependency {
    pub name: String,
    pub listen: SocketAddr,
    /// What its egress listener accepts.
    pub listen_protocol: ListenProtocol,
    pub target: Target,
    pub protocol: Protocol,
    /// TLS to the dependency (a static upstream or its containers).
    pub tls: Option<Tls>,
    #[serde(serialize_with = "text::duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "text::duration")]
    pub timeout: Duration,
    /// Whether augur may send this dependency speculative requests.
    pub speculate: bool,
}

/// Where a dependency's requests go.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Static(Upstream),
    Container(Container),
}

/// `[dependency.container]`: a container augur manages.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Container {
    pub image: String,
    pub args: Vec<String>,
    pub port: u16,
    pub min_instances: u32,
    pub max_instances: u32,
    pub keep_alive: KeepAlive,
    /// How long a call waits for a container to start and accept
    /// connections before it gets 503.
    #[serde(serialize_with = "text::duration")]
    pub start_timeout: Duration,
    /// Calls in flight per instance above which another instance starts.
    pub target_inflight: u32,
    pub readiness: Readiness,
    /// The path an HTTP readiness probe asks for.
    pub readiness_path: String,
    /// CPU limit, in cores.
    pub cpus: Option<f64>,
    /// Memory limit, in bytes.
    pub memory: Option<u64>,
    /// How much this dependency matters when capacity is short (0 to 1):
    /// prestarts rank by prediction probability × criticality.
    pub criticality: f64,
    /// Whether a predicted call starts a container ahead of need.
    pub prestart: bool,
    /// Where the instances run.
    pub engine: Engine,
    /// With `engine = "swarm"`: the Swarm service (of the user's stack)
    /// whose tasks are the instances; by default augur makes its own.
    pub swarm_service: Option<String>,
}

/// Where a dependency's instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Containers on the local Docker engine, this augur's own.
    Docker,
    /// Tasks of a Docker Swarm service, shared by every sidecar using it.
    Swarm,
}

/// How long an idle instance is kept.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepAlive {
    Fixed(#[serde(serialize_with = "text::duration")] Duration),
    /// Learned from the dependency's idle gaps (hybrid histogram policy).
    Adaptive,
}

/// When a started container counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// It answers an HTTP request (any status).
    Http,
    /// It accepts a TCP connection.
    Tcp,
}

/// `[containers]`: limits over all the containers augur runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Containers {
    pub max_containers: usize,
    /// Total of the containers' `memory` limits, when set.
    pub max_memory: Option<u64>,
    /// Total of the containers' `cpus` limits, when set.
    pub max_cpus: Option<f64>,
    /// How often Docker stats are read for running containers.
    #[serde(serialize_with = "text::duration")]
    pub stats_interval: Duration,
}

/// Header names whose values are credentials, redacted wherever augur shows
/// or logs a request.
pub const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "set-cookie",
];

/// Values as the file writes them.
mod text {
    use std::time::Duration;

    pub(super) fn duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}
