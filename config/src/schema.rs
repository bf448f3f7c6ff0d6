//! The file format: which sections and keys exist, their defaults, and the
//! checks that span several keys. Each function walks one section into its
//! settings type; a `None` result means a problem was recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::section::Section;
use crate::settings::*;

const SECOND: Duration = Duration::from_secs(1);

pub(crate) fn config(mut root: Section<'_>) -> Option<Config> {
    let mut claims = Claims::default();
    let service = root.table(SERVICE).map(|s| service(s, &mut claims));
    if service.is_none() && !root.has(SERVICE) {
        root.problem(SERVICE, "missing");
    }
    let admin = admin(root.table_or_empty("admin"), &mut claims);
    let telemetry = telemetry(root.table_or_empty("telemetry"));
    let log = log(root.table_or_empty("log"));
    let speculation = speculation(root.table_or_empty("speculation"));
    let predictor = predictor(root.table_or_empty("predictor"));
    let cache = cache(root.table_or_empty("cache"));
    let proxy = proxy(root.table_or_empty("proxy"));
    let dns = dns(root.table_or_empty("dns"));
    let contexts = contexts(root.table_or_empty("contexts"));
    let containers = containers(root.table_or_empty("containers"));
    let dependencies: Vec<_> = root
        .tables("dependency")
        .into_iter()
        .map(|d| dependency(d, &mut claims))
        .collect();
    let routes: Vec<_> = root.tables("route").into_iter().map(route).collect();
    if let Some(max) = containers.as_ref().and_then(|c| c.max_memory) {
        let bytes = |n: f64| format!("{n} bytes");
        let deps = dependencies.iter().flatten();
        let memory = |c: &Container| c.memory.map(|m| m as f64);
        limit_fits(
            &root,
            ("containers.max_memory", "memory"),
            max as f64,
            bytes,
            deps,
            memory,
        );
    }
    if let Some(max) = containers.as_ref().and_then(|c| c.max_cpus) {
        let plain = |n: f64| n.to_string();
        let deps = dependencies.iter().flatten();
        limit_fits(
            &root,
            ("containers.max_cpus", "cpus"),
            max,
            plain,
            deps,
            |c| c.cpus,
        );
    }
    root.finish();

    Some(Config {
        service: service??,
        admin: admin?,
        telemetry: telemetry?,
        log: log?,
        speculation: speculation?,
        predictor: predictor?,
        cache: cache?,
        proxy: proxy?,
        dns: dns?,
        contexts: contexts?,
        containers: containers?,
        dependencies: dependencies.into_iter().collect::<Option<_>>()?,
        routes: routes.into_iter().collect::<Option<_>>()?,
        overrides: Vec::new(),
    })
}

const SERVICE: &str = "service";

/// With a `containers.max_*` limit (`key`), every container dependency must
/// say what it may use (its own limit, `own`, counts against the global
/// one), and fit under it.
fn limit_fits<'d>(
    root: &Section<'_>,
    (key, own): (&str, &str),
    max: f64,
    show: impl Fn(f64) -> String,
    deps: impl Iterator<Item = &'d Dependency>,
    limit: impl Fn(&Container) -> Option<f64>,
) {
    for d in deps {
        let Target::Container(c) = &d.target else {
            continue;
        };
        match limit(c) {
            None => root.problem(
                key,
                format!(
                    "is set, so dependency {:?} needs container.{own} (what it may use counts against the limit)",
                    d.name
                ),
            ),
            Some(n) if n > max => root.problem(
                key,
                format!(
                    "{} is less than dependency {:?}'s container.{own} ({}): it could never start",
                    show(max),
                    d.name,
                    show(n)
                ),
            ),
            Some(_) => {}
        }
    }
}

fn name(s: &mut Section<'_>) -> Option<String> {
    let name = s.string("name");
    let name = s.required("name", name)?;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        s.problem(
            "name",
            format!("invalid name {name:?} (1 to 64 of A-Z a-z 0-9 - _ .)"),
        );
        return None;
    }
    Some(name)
}

fn upstream(s: &mut Section<'_>) -> Option<Upstream> {
    s.parsed("upstream", "socket address", parse_upstream)
}

/// `"127.0.0.1:9101"`, `"[::1]:9101"` or `"users:8080"` (a host name,
/// resolved at start-up).
fn parse_upstream(raw: &str) -> Option<Upstream> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Some(Upstream {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let (host, port) = raw.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    host_ok.then(|| Upstream {
        host: host.to_string(),
        port,
    })
}

/// `[service.listen_tls]`: `cert_file` and `key_file`, both required.
fn listen_tls(s: &mut Section<'_>) -> Option<Option<ClientCert>> {
    if !s.has("listen_tls") {
        return Some(None);
    }
    let mut t = s.table("listen_tls")?;
    let cert_file = readable(&mut t, "cert_file");
    let cert_file = t.required("cert_file", cert_file);
    let key_file = readable(&mut t, "key_file");
    let key_file = t.required("key_file", key_file);
    t.finish();
    Some(Some(ClientCert {
        cert_file: cert_file?,
        key_file: key_file?,
    }))
}

fn listen_protocol(s: &mut Section<'_>) -> Option<ListenProtocol> {
    s.parsed_or(
        "listen_protocol",
        "listen protocol (\"auto\", \"http1\" or \"h2c\")",
        ListenProtocol::Auto,
        |p| match p {
            "auto" => Some(ListenProtocol::Auto),
            "http1" => Some(ListenProtocol::Http1),
            "h2c" => Some(ListenProtocol::H2c),
            _ => None,
        },
    )
}

fn protocol(s: &mut Section<'_>) -> Option<Protocol> {
    if !s.has("protocol") {
        return Some(Protocol::Http1);
    }
    s.parsed("protocol", "protocol (\"http1\" or \"h2c\")", |p| match p {
        "http1" => Some(Protocol::Http1),
        "h2c" => Some(Protocol::H2c),
        _ => None,
    })
}

/// `tls = true | false` or a `tls` table (`sni`, `ca_file`, `cert_file`
/// with `key_file`). `host` is the upstream's host when static; `Some(None)`
/// is no TLS, `None` a problem.
fn tls(s: &mut Section<'_>, host: Option<&str>, protocol: Option<Protocol>) -> Option<Option<Tls>> {
    let (sni, ca_file, client_cert) = match s.kind("tls") {
        None => return Some(None),
        Some("boolean") => {
            if !s.boolean("tls")? {
                return Some(None);
            }
            (None, None, None)
        }
        _ => {
            let mut t = s.table("tls")?;
            let sni = t.has("sni").then(|| t.string("sni"));
            let ca_file = t.has("ca_file").then(|| readable(&mut t, "ca_file"));
            let cert_file = t.has("cert_file").then(|| readable(&mut t, "cert_file"));
            let key_file = t.has("key_file").then(|| readable(&mut t, "key_file"));
            let client_cert = match (cert_file, key_file) {
                (None, None) => None,
                (Some(cert), Some(key)) => {
                    Some(cert.zip(key).map(|(cert_file, key_file)| ClientCert {
                        cert_file,
                        key_file,
                    }))
                }
                (Some(_), None) => {
                    t.problem(
                        "key_file",
                        "missing (cert_file needs the key that goes with it)",
                    );
                    Some(None)
                }
                (None, Some(_)) => {
                    t.problem(
                        "cert_file",
                        "missing (key_file needs the certificate it signs)",
                    );
                    Some(None)
                }
            };
            t.finish();
            (sni, ca_file, client_cert)
        }
    };
    let is_name = host.is_some_and(|h| h.parse::<std::net::IpAddr>().is_err());
    let sni = match sni {
        Some(sni) => sni.filter(|n| {
            let ok = !n.is_empty() && n.parse::<std::net::IpAddr>().is_err();
            if !ok {
                s.problem("tls.sni", format!("{n:?} is not a host name"));
            }
            ok
        }),
        None if is_name => host.map(str::to_string),
        None => {
            s.problem(
                "tls.sni",
                "missing: the upstream is an address, not a name, so give the name its certificate holds",
            );
            None
        }
    };
    if protocol == Some(Protocol::H2c) {
        s.problem(
            "tls",
            "protocol \"h2c\" is HTTP/2 without TLS; HTTP/2 over TLS is not supported yet (use protocol \"http1\")",
        );
        return None;
    }
    // Outer `None`: not given; inner `None`: a problem, reported.
    let ca_file = match ca_file {
        None => None,
        Some(file) => Some(file?),
    };
    let client_cert = match client_cert {
        None => None,
        Some(cert) => Some(cert?),
    };
    Some(Some(Tls {
        sni: sni?,
        ca_file,
        client_cert,
    }))
}

/// A file path that can be opened now.
fn readable(s: &mut Section<'_>, key: &str) -> Option<PathBuf> {
    let path = PathBuf::from(s.string(key)?);
    match std::fs::File::open(&path) {
        Ok(_) => Some(path),
        Err(e) => {
            s.problem(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Reads a key with a default, keeping `None` only when the value was bad.
macro_rules! or_default {
    ($s:expr, $key:expr, $read:ident $(, $arg:expr)*; $default:expr) => {
        if $s.has($key) { $s.$read($key $(, $arg)*) } else { Some($default) }
    };
}

/// A key whose value names one of `choices` (the first by default); any
/// other is a problem that lists them.
fn one_of<T: Copy>(s: &mut Section<'_>, key: &str, what: &str, choices: &[(&str, T)]) -> Option<T> {
    let value = or_default!(s, key, string; choices[0].0.to_string())?;
    let found = choices.iter().find(|(name, _)| *name == value);
    if found.is_none() {
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        s.problem(
            key,
            format!("unknown {what} {value:?} ({})", names.join(" or ")),
        );
    }
    found.map(|(_, choice)| *choice)
}

/// A duration that must be more than zero.
fn positive(s: &mut Section<'_>, key: &str, default: Duration) -> Option<Duration> {
    let value = or_default!(s, key, duration; default)?;
    if value.is_zero() {
        s.problem(key, "must be greater than zero");
        return None;
    }
    Some(value)
}

fn timeouts(s: &mut Section<'_>) -> (Option<Duration>, Option<Duration>) {
    // Not 1s: Linux retransmits a dropped SYN after 1s, so a 1s limit
    // fails a request whenever a burst overflows a listener's queue once.
    let connect = or_default!(s, "connect_timeout", duration; 5 * SECOND);
    let timeout = or_default!(s, "timeout", duration; 30 * SECOND);
    for (key, value) in [("connect_timeout", connect), ("timeout", timeout)] {
        if value.is_some_and(|d| d.is_zero()) {
            s.problem(key, "must be greater than zero");
        }
    }
    (
        connect.filter(|d| !d.is_zero()),
        timeout.filter(|d| !d.is_zero()),
    )
}

fn service(mut s: Section<'_>, claims: &mut Claims) -> Option<Service> {
    let name = name(&mut s);
    let listen = s.socket_addr("listen");
    let listen = s.required("listen", listen);
    claims.address(&s, "listen", listen);
    let listen_protocol = listen_protocol(&mut s);
    let listen_tls = listen_tls(&mut s);
    let up = upstream(&mut s);
    let up = s.required("upstream", up);
    let protocol = protocol(&mut s);
    let tls = tls(&mut s, up.as_ref().map(|u| u.host.as_str()), protocol);
    let (connect_timeout, timeout) = timeouts(&mut s);
    s.finish();
    Some(Service {
        name: name?,
        listen: listen?,
        listen_protocol: listen_protocol?,
        listen_tls: listen_tls?,
        upstream: up?,
        protocol: protocol?,
        tls: tls?,
        connect_timeout: connect_timeout?,
        timeout: timeout?,
    })
}

fn admin(mut s: Section<'_>, claims: &mut Claims) -> Option<Admin> {
    let default = SocketAddr::from(([127, 0, 0, 1], 15000));
    let listen = or_default!(s, "listen", socket_addr; default);
    claims.address(&s, "listen", listen);
    s.finish();
    Some(Admin { listen: listen? })
}

fn telemetry(mut s: Section<'_>) -> Option<Telemetry> {
    let endpoint = if s.has("otlp_endpoint") {
        s.parsed("otlp_endpoint", "endpoint URL", |u| {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))?;
            let authority = rest.split('/').next()?;
            parse_upstream(authority).map(|_| u.to_string())
        })
        .map(Some)
    } else {
        Some(None)
    };
    s.finish();
    Some(Telemetry {
        otlp_endpoint: endpoint?,
    })
}

fn log(mut s: Section<'_>) -> Option<Log> {
    let format = s.parsed_or(
        "format",
        "log format (\"text\" or \"json\")",
        LogFormat::Text,
        |f| match f {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        },
    );
    let access = s.parsed_or(
        "access",
        "access log (\"off\", \"stderr\" or a file path)",
        AccessLog::Off,
        |a| match a {
            "off" => Some(AccessLog::Off),
            "stderr" => Some(AccessLog::Stderr),
            path if !path.is_empty() => Some(AccessLog::File(PathBuf::from(path))),
            _ => None,
        },
    );
    s.finish();
    Some(Log {
        format: format?,
        access: access?,
    })
}

fn speculation(mut s: Section<'_>) -> Option<Speculation> {
    let enabled = or_default!(s, "enabled", boolean; true);
    let confidence = or_default!(s, "confidence", number, 0.0, 1.0; 0.8);
    let horizon = or_default!(s, "horizon", duration; Duration::from_millis(200));
    let methods = or_default!(s, "methods", string_list; vec!["GET".into(), "HEAD".into()]);
    let methods = methods.and_then(|list| {
        let bad: Vec<_> = list
            .iter()
            .filter(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
            .collect();
        if bad.is_empty() {
            Some(list)
        } else {
            s.problem(
                "methods",
                format!("invalid method {:?} (uppercase, like \"GET\")", bad[0]),
            );
            None
        }
    });
    let max_inflight = or_default!(s, "max_inflight", count, 0, 1_000_000; 256);
    let max_waste_ratio = or_default!(s, "max_waste_ratio", number, 0.0, 1.0; 0.25);
    let key_headers = or_default!(s, "key_headers", string_list; Vec::new())
        .map(|list| list.into_iter().map(|h| h.to_ascii_lowercase()).collect());
    let ignore_headers = or_default!(s, "ignore_headers", string_list; Vec::new())
        .map(|list| list.into_iter().map(|h| h.to_ascii_lowercase()).collect());
    let write_barrier =
        match or_default!(s, "write_barrier", string; "dependency".to_string()).as_deref() {
            Some("dependency") => Some(WriteBarrier::Dependency),
            Some("all") => Some(WriteBarrier::All),
            Some(other) => {
                s.problem(
                    "write_barrier",
                    format!("invalid write barrier {other:?} (\"dependency\" or \"all\")"),
                );
                None
            }
            None => None,
        };
    s.finish();
    Some(Speculation {
        enabled: enabled?,
        confidence: confidence?,
        horizon: horizon?,
        methods: methods?,
        max_inflight: max_inflight?,
        max_waste_ratio: max_waste_ratio?,
        key_headers: key_headers?,
        ignore_headers: ignore_headers?,
        write_barrier: write_barrier?,
    })
}

fn predictor(mut s: Section<'_>) -> Option<Predictor> {
    let kind = or_default!(s, "kind", string; "online".to_string());
    let model = s.string("model").map(PathBuf::from);
    let kind = match (kind.as_deref(), model) {
        (Some("online"), None) => Some(PredictorKind::Online),
        (Some("online"), Some(_)) => {
            s.problem("model", "only used with kind = \"onnx\" or \"auto\"");
            None
        }
        (Some("onnx"), Some(model)) => Some(PredictorKind::Onnx { model }),
        (Some("auto"), Some(model)) => Some(PredictorKind::Auto { model }),
        (Some(kind @ ("onnx" | "auto")), None) => {
            s.problem(
                "model",
                format!("missing (kind = \"{kind}\" needs a model file)"),
            );
            None
        }
        (Some(other), _) => {
            s.problem(
                "kind",
                format!("invalid predictor kind {other:?} (\"online\", \"onnx\" or \"auto\")"),
            );
            None
        }
        (None, _) => None,
    };
    let min_observations = or_default!(s, "min_observations", count, 1, 1_000_000; 3);
    let trace_log = s.string("trace_log").map(PathBuf::from);
    let state = s.string("state").map(PathBuf::from);
    let max_body_capture = or_default!(s, "max_body_capture", size; 64 << 10);
    let max_routes = or_default!(s, "max_routes", count, 1, 1_000_000; 1000);
    let max_shapes = or_default!(s, "max_shapes", count, 1, 10_000_000; 10_000);
    s.finish();
    Some(Predictor {
        kind: kind?,
        min_observations: min_observations?,
        trace_log,
        state,
        max_body_capture: max_body_capture?,
        max_routes: max_routes? as usize,
        max_shapes: max_shapes? as usize,
    })
}

fn cache(mut s: Section<'_>) -> Option<Cache> {
    let capacity = or_default!(s, "capacity", size; 64 << 20);
    s.finish();
    Some(Cache {
        capacity: capacity?,
    })
}

fn dns(mut s: Section<'_>) -> Option<Dns> {
    // Envoy re-resolves every 5 s by default; CoreDNS answers with 30 s
    // and Docker's DNS with 600 s, too long for a restarted container's
    // new address. A failed connection asks for an earlier answer anyway.
    let min_ttl = positive(&mut s, "min_ttl", SECOND);
    let max_ttl = positive(&mut s, "max_ttl", 10 * SECOND);
    let nameservers = or_default!(s, "nameservers", string_list; Vec::new());
    let nameservers = nameservers.and_then(|list| {
        let mut out = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            match nameserver(text) {
                Some(addr) => out.push(addr),
                None => s.problem(
                    &format!("nameservers[{i}]"),
                    format!("{text:?} is not an IP address or IP:port"),
                ),
            }
        }
        (out.len() == list.len()).then_some(out)
    });
    if let (Some(min), Some(max)) = (min_ttl, max_ttl) {
        if min > max {
            s.problem(
                "min_ttl",
                format!(
                    "{} is more than max_ttl ({})",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
            return None;
        }
    }
    s.finish();
    Some(Dns {
        min_ttl: min_ttl?,
        max_ttl: max_ttl?,
        nameservers: nameservers?,
    })
}

/// `"10.0.0.2"` (port 53), `"10.0.0.2:5353"`, `"[::1]:53"`.
fn nameserver(text: &str) -> Option<SocketAddr> {
    text.parse().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

fn proxy(mut s: Section<'_>) -> Option<Proxy> {
    let threads = or_default!(s, "threads", count, 1, 256; 2);
    let shutdown_timeout = or_default!(s, "shutdown_timeout", duration; 3 * SECOND);
    let drain_grace = drain_grace(&mut s, shutdown_timeout);
    let header = or_default!(s, "max_request_header_size", size; 64 << 10);
    let header = header.filter(|&n| {
        let ok = (1024..=(1 << 20)).contains(&n);
        if !ok {
            s.problem(
                "max_request_header_size",
                format!("{n} bytes is out of range 1KiB..=1MiB"),
            );
        }
        ok
    });
    // nginx: client_header_timeout and client_body_timeout 60s,
    // keepalive_timeout 75s; Envoy: request_headers_timeout off, idle
    // 1h. A sidecar's clients are local: a header takes milliseconds.
    let header_timeout = positive(&mut s, "header_timeout", 10 * SECOND);
    let body_timeout = positive(&mut s, "body_timeout", 60 * SECOND);
    let idle_timeout = positive(&mut s, "idle_timeout", 60 * SECOND);
    let max_connections = or_default!(s, "max_connections", count, 1, 10_000_000; 10_000);
    s.finish();
    Some(Proxy {
        threads: threads? as usize,
        shutdown_timeout: shutdown_timeout?,
        drain_grace: drain_grace?,
        max_request_header_size: header?,
        header_timeout: header_timeout?,
        body_timeout: body_timeout?,
        idle_timeout: idle_timeout?,
        max_connections: max_connections? as usize,
    })
}

/// `proxy.drain_grace`: shorter than the shutdown timeout, and by default
/// a second or a third of it, whichever is less.
fn drain_grace(s: &mut Section<'_>, timeout: Option<Duration>) -> Option<Duration> {
    if !s.has("drain_grace") {
        return timeout.map(|t| SECOND.min(t / 3));
    }
    let grace = s.duration("drain_grace")?;
    let timeout = timeout?;
    if grace >= timeout {
        s.problem(
            "drain_grace",
            format!(
                "{} is not shorter than proxy.shutdown_timeout ({}): the egress listeners would close only at the deadline",
                humantime::format_duration(grace),
                humantime::format_duration(timeout)
            ),
        );
        return None;
    }
    Some(grace)
}

fn contexts(mut s: Section<'_>) -> Option<Contexts> {
    let max_open = or_default!(s, "max_open", count, 1, 10_000_000; 10_000);
    let max_age = or_default!(s, "max_age", duration; 60 * SECOND);
    let max_calls = or_default!(s, "max_calls", count, 1, 100_000; 256);
    let max_body_bytes = or_default!(s, "max_body_bytes", size; 32 << 20);
    let history = or_default!(s, "history", count, 0, 1_000_000; 256);
    let redact = or_default!(s, "redact_headers", string_list; Vec::new());
    let redact = redact.map(|extra| {
        let mut all: Vec<String> = ALWAYS_REDACTED.iter().map(|h| h.to_string()).collect();
        for h in extra {
            let h = h.to_ascii_lowercase();
            if !all.contains(&h) {
                all.push(h);
            }
        }
        all
    });
    s.finish();
    Some(Contexts {
        max_open: max_open? as usize,
        max_age: max_age?,
        max_calls: max_calls? as usize,
        max_body_bytes: max_body_bytes?,
        history: history? as usize,
        redact_headers: redact?,
    })
}

fn dependency(mut s: Section<'_>, claims: &mut Claims) -> Option<Dependency> {
    let name = name(&mut s);
    claims.name(&s, name.as_deref());
    let listen = s.socket_addr("listen");
    let listen = s.required("listen", listen);
    claims.address(&s, "listen", listen);
    let listen_protocol = listen_protocol(&mut s);
    let has_upstream = s.has("upstream");
    let up = upstream(&mut s);
    let container = s.table("container").map(container);
    let target = match (has_upstream, container) {
        (true, None) => up.map(Target::Static),
        (false, Some(c)) => c.map(Target::Container),
        (true, Some(_)) => {
            s.section_problem("has both upstream and container; give one");
            None
        }
        (false, None) => {
            s.problem("upstream", "missing (give upstream or a container section)");
            None
        }
    };
    let protocol = protocol(&mut s);
    let host = match &target {
        Some(Target::Static(up)) => Some(up.host.as_str()),
        _ => None,
    };
    let tls = tls(&mut s, host, protocol);
    let (connect_timeout, timeout) = timeouts(&mut s);
    let speculate = or_default!(s, "speculate", boolean; true);
    s.finish();
    Some(Dependency {
        name: name?,
        listen: listen?,
        listen_protocol: listen_protocol?,
        target: target?,
        protocol: protocol?,
        tls: tls?,
        connect_timeout: connect_timeout?,
        timeout: timeout?,
        speculate: speculate?,
    })
}

fn route(mut s: Section<'_>) -> Option<Route> {
    let name = s.string("match");
    let name = s.required("match", name).filter(|m| {
        let ok = m.split_once(' ').is_some_and(|(method, path)| {
            !method.is_empty()
                && method.bytes().all(|b| b.is_ascii_uppercase())
                && path.starts_with('/')
        });
        if !ok {
            s.problem(
                "match",
                format!("invalid route {m:?} (like \"GET /hotels\" or \"GET /users/{{id}}\")"),
            );
        }
        ok
    });
    let speculate = or_default!(s, "speculate", boolean; true);
    let methods = if s.has("methods") {
        s.string_list("methods").map(Some)
    } else {
        Some(None)
    };
    s.finish();
    Some(Route {
        route: name?,
        speculate: speculate?,
        methods: methods?,
    })
}

fn container(mut s: Section<'_>) -> Option<Container> {
    let image = s.string("image");
    let image = s.required("image", image).filter(|i| {
        if i.trim().is_empty() {
            s.problem("image", "must not be empty");
        }
        !i.trim().is_empty()
    });
    let args = or_default!(s, "args", string_list; Vec::new());
    let port = s.count("port", 1, 65535).map(|p| p as u16);
    let port = s.required("port", port);
    let min = or_default!(s, "min_instances", count, 0, 1000; 0);
    let max = or_default!(s, "max_instances", count, 1, 1000; 4);
    let keep_alive = or_default!(s, "keep_alive", parsed, "duration (or \"adaptive\")", |raw| {
        if raw == "adaptive" {
            Some(KeepAlive::Adaptive)
        } else {
            humantime::parse_duration(raw).ok().map(KeepAlive::Fixed)
        }
    }; KeepAlive::Fixed(60 * SECOND));
    let start_timeout = or_default!(s, "start_timeout", duration; 30 * SECOND);
    let target_inflight = or_default!(s, "target_inflight", count, 1, 100_000; 8);
    let probes = [("http", Readiness::Http), ("tcp", Readiness::Tcp)];
    let readiness = one_of(&mut s, "readiness", "probe", &probes);
    let readiness_path = or_default!(s, "readiness_path", string; "/".to_string()).filter(|p| {
        let ok = p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            s.problem(
                "readiness_path",
                format!("invalid path {p:?} (like \"/healthz\")"),
            );
        }
        ok
    });
    let cpus = if s.has("cpus") {
        s.number("cpus", 0.01, 1024.0).map(Some)
    } else {
        Some(None)
    };
    let memory = if s.has("memory") {
        s.size("memory")
            .filter(|m| {
                // Docker refuses less than 6 MiB.
                let ok = *m >= 6 * 1024 * 1024;
                if !ok {
                    s.problem("memory", "must be at least 6MiB (Docker's minimum)");
                }
                ok
            })
            .map(Some)
    } else {
        Some(None)
    };
    let criticality = or_default!(s, "criticality", number, 0.0, 1.0; 1.0);
    let prestart = or_default!(s, "prestart", boolean; true);
    let engines = [("docker", Engine::Docker), ("swarm", Engine::Swarm)];
    let engine = one_of(&mut s, "engine", "engine", &engines);
    let swarm_service = s.string("swarm_service");
    if swarm_service.is_some() && engine != Some(Engine::Swarm) {
        s.problem("swarm_service", "only used with engine = \"swarm\"");
    }
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo > hi {
            s.problem(
                "min_instances",
                format!("{lo} is greater than max_instances {hi}"),
            );
        }
    }
    s.finish();
    let (min, max) = (min?, max?);
    (min <= max).then_some(())?;
    Some(Container {
        image: image?,
        args: args?,
        port: port?,
        min_instances: min,
        max_instances: max,
        keep_alive: keep_alive?,
        start_timeout: start_timeout?,
        target_inflight: target_inflight?,
        readiness: readiness?,
        readiness_path: readiness_path?,
        cpus: cpus?,
        memory: memory?,
        criticality: criticality?,
        prestart: prestart?,
        engine: engine?,
        swarm_service,
    })
}

/// `[containers]`: limits over every container augur runs.
fn containers(mut s: Section<'_>) -> Option<Containers> {
    let max_containers = or_default!(s, "max_containers", count, 1, 10_000; 32);
    let max_memory = if s.has("max_memory") {
        s.size("max_memory").map(Some)
    } else {
        Some(None)
    };
    let max_cpus = if s.has("max_cpus") {
        s.number("max_cpus", 0.01, 1_000_000.0).map(Some)
    } else {
        Some(None)
    };
    let stats_interval = or_default!(s, "stats_interval", duration; 5 * SECOND);
    if stats_interval.is_some_and(|d| d < Duration::from_millis(100)) {
        s.problem("stats_interval", "must be at least 100ms");
    }
    s.finish();
    Some(Containers {
        max_containers: max_containers? as usize,
        max_memory: max_memory?,
        max_cpus: max_cpus?,
        stats_interval: stats_interval.filter(|d| *d >= Duration::from_millis(100))?,
    })
}

/// Listen addresses and dependency names seen so far: two listeners on one
/// address would fail at start-up, and two dependencies with one name would
/// be indistinguishable in metrics. Say so now.
#[derive(Default)]
struct Claims {
    addresses: HashMap<SocketAddr, String>,
    names: HashMap<String, String>,
}

impl Claims {
    fn address(&mut self, s: &Section<'_>, key: &str, addr: Option<SocketAddr>) {
        let Some(addr) = addr else { return };
        let path = s.key_path(key);
        match self.addresses.get(&addr) {
            Some(first) => s.problem(key, format!("address {addr} is already used by {first}")),
            None => {
                self.addresses.insert(addr, path);
            }
        }
    }

    fn name(&mut self, s: &Section<'_>, name: Option<&str>) {
        let Some(name) = name else { return };
        let path = s.key_path("name");
        match self.names.get(name) {
            Some(first) => s.problem("name", format!("{name:?} is already used by {first}")),
            None => {
                self.names.insert(name.to_string(), path);
            }
        }
    }
}
