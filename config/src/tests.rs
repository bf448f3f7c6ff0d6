use super::*;
use std::time::Duration;

const MINIMAL: &str = r#"
[service]
name = "frontend"
listen = "127.0.0.1:15006"
upstream = "127.0.0.1:8080"
"#;

#[test]
fn minimal_file_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.service.name, "frontend");
    assert_eq!(c.service.upstream.to_string(), "127.0.0.1:8080");
    assert_eq!(c.service.protocol, Protocol::Http1);
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:15000");
    assert_eq!(c.speculation.methods, ["GET", "HEAD"]);
    assert_eq!(c.speculation.horizon, Duration::from_millis(200));
    assert_eq!(c.cache.capacity, 64 << 20);
    assert_eq!(c.proxy.shutdown_timeout, Duration::from_secs(3));
    assert_eq!(c.telemetry.otlp_endpoint, None);
    assert!(
        c.contexts
            .redact_headers
            .contains(&"authorization".to_string())
    );
    assert!(c.dependencies.is_empty());
}

#[test]
fn sizes_and_durations_use_units() {
    let text = format!(
        "{MINIMAL}\n[cache]\ncapacity = \"1KiB\"\n[proxy]\nshutdown_timeout = \"1500ms\"\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.cache.capacity, 1024);
    assert_eq!(c.proxy.shutdown_timeout, Duration::from_millis(1500));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[service]
name = "front end"
listen = "nope"
upstream = "x:y"
colour = "blue"

[[dependency]]
name = "users"
listen = "127.0.0.1:15101"
upstream = "127.0.0.1:9"

[[dependency]]
name = "users"
listen = "127.0.0.1:15101"
upstream = "127.0.0.1:9"

[[dependency]]
name = "posts"
listen = "127.0.0.1:15102"
"#;
    let Err(Error::Invalid(problems)) = parse(text) else {
        panic!("expected invalid");
    };
    let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    for expected in [
        "service.name: invalid name \"front end\" (1 to 64 of A-Z a-z 0-9 - _ .)",
        "service.listen: invalid socket address \"nope\"",
        "service.upstream: invalid socket address \"x:y\"",
        "service.colour: unknown key",
        "dependency[2].upstream: missing (give upstream or a container section)",
        "dependency[1].listen: address 127.0.0.1:15101 is already used by dependency[0].listen",
        "dependency[1].name: \"users\" is already used by dependency[0].name",
    ] {
        assert!(
            !lines
                .iter()
                .any(|l| l.ends_with(": missing") && l.starts_with("service."))
        );
        assert!(
            lines.contains(&expected.to_string()),
            "{expected:?} not in {lines:#?}"
        );
    }
}

#[test]
fn syntax_errors_name_line_and_column() {
    let err = parse("[service]\nname = \"a\"\nlisten = 15006x\n").unwrap_err();
    match err {
        Error::Syntax { line, .. } => assert_eq!(line, 3),
        other => panic!("expected a syntax error, got {other}"),
    }
}

#[test]
fn host_names_are_valid_upstreams() {
    let text = MINIMAL.replace("127.0.0.1:8080", "app.internal:8080");
    let c = parse(&text).unwrap();
    assert_eq!(c.service.upstream.host, "app.internal");
    assert_eq!(c.service.upstream.port, 8080);
}

#[test]
fn container_keys_have_defaults_and_adaptive_keep_alive_parses() {
    let text = format!(
        "{MINIMAL}\n[containers]\nmax_containers = 3\nstats_interval = \"1s\"\n\n[[dependency]]\nname = \"a\"\nlisten = \"127.0.0.1:15101\"\n[dependency.container]\nimage = \"x\"\nport = 80\n\n[[dependency]]\nname = \"b\"\nlisten = \"127.0.0.1:15102\"\n[dependency.container]\nimage = \"x\"\nport = 80\nkeep_alive = \"adaptive\"\nreadiness = \"tcp\"\ncpus = 0.5\nmemory = \"64MiB\"\ncriticality = 0.3\nprestart = false\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.containers.max_containers, 3);
    assert_eq!(c.containers.max_memory, None);
    let Target::Container(a) = &c.dependencies[0].target else {
        panic!("a container")
    };
    assert_eq!(a.keep_alive, KeepAlive::Fixed(Duration::from_secs(60)));
    assert_eq!(
        (a.readiness, a.readiness_path.as_str()),
        (Readiness::Http, "/")
    );
    assert_eq!(
        (a.target_inflight, a.criticality, a.prestart),
        (8, 1.0, true)
    );
    let Target::Container(b) = &c.dependencies[1].target else {
        panic!("a container")
    };
    assert_eq!(b.keep_alive, KeepAlive::Adaptive);
    assert_eq!(b.readiness, Readiness::Tcp);
    assert_eq!((b.cpus, b.memory), (Some(0.5), Some(64 << 20)));
    assert_eq!((b.criticality, b.prestart), (0.3, false));
    let bad = format!("{MINIMAL}\n[containers]\nstats_interval = \"10ms\"\n");
    let problems = parse(&bad).unwrap_err().to_string();
    assert!(
        problems.contains("containers.stats_interval: must be at least 100ms"),
        "{problems}"
    );
}

#[test]
fn tls_takes_its_name_from_the_host_or_from_sni() {
    let ca = std::env::temp_dir().join(format!("augur-config-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, "not checked here: the proxy parses it at start").unwrap();
    let text = format!(
        "[service]\nname = \"f\"\nlisten = \"127.0.0.1:15006\"\nupstream = \"app.internal:8443\"\ntls = true\n\n\
         [[dependency]]\nname = \"pay\"\nlisten = \"127.0.0.1:15101\"\nupstream = \"127.0.0.1:9443\"\n\
         [dependency.tls]\nsni = \"pay.internal\"\nca_file = {ca:?}\n\n\
         [[dependency]]\nname = \"plain\"\nlisten = \"127.0.0.1:15102\"\nupstream = \"plain.internal:80\"\ntls = false\n"
    );
    let c = parse(&text).unwrap();
    let service = c.service.tls.expect("service tls");
    assert_eq!(
        (service.sni.as_str(), service.ca_file),
        ("app.internal", None)
    );
    let pay = c.dependencies[0].tls.clone().expect("dependency tls");
    assert_eq!(pay.sni, "pay.internal");
    assert_eq!(pay.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(pay.client_cert, None);
    assert_eq!(c.dependencies[1].tls, None);
    let _ = std::fs::remove_file(&ca);
}

#[test]
fn tls_problems_are_named() {
    let text = r#"
[service]
name = "f"
listen = "127.0.0.1:15006"
upstream = "127.0.0.1:8443"
tls = true

[[dependency]]
name = "a"
listen = "127.0.0.1:15101"
upstream = "a.internal:443"
[dependency.tls]
ca_file = "/nonexistent/ca.pem"
cert_file = "/nonexistent/client.pem"
colour = "blue"

[[dependency]]
name = "b"
listen = "127.0.0.1:15102"
upstream = "b.internal:443"
protocol = "h2c"
tls = { sni = "10.0.0.1" }
"#;
    let problems = parse(text).unwrap_err().to_string();
    for expected in [
        "service.tls.sni: missing: the upstream is an address, not a name",
        "dependency[0].tls.ca_file: cannot read /nonexistent/ca.pem",
        "dependency[0].tls.key_file: missing (cert_file needs the key that goes with it)",
        "dependency[0].tls.colour: unknown key",
        "dependency[1].tls.sni: \"10.0.0.1\" is not a host name",
        "dependency[1].tls: protocol \"h2c\" is HTTP/2 without TLS",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} not in {problems}"
        );
    }
}

const WITH_DEPENDENCIES: &str = r#"
[service]
name = "frontend"
listen = "127.0.0.1:15006"
upstream = "127.0.0.1:8080"

[[dependency]]
name = "user-db"
listen = "127.0.0.1:15101"
upstream = "127.0.0.1:9101"

[[dependency]]
name = "rates"
listen = "127.0.0.1:15102"
upstream = "127.0.0.1:9102"
"#;

fn invalid_with_env(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    match parse_with_env(text, env) {
        Err(e) => e.lines(),
        Ok(_) => panic!("expected {env:?} to be rejected"),
    }
}

#[test]
fn the_environment_overrides_keys_of_every_type_and_creates_sections() {
    let c = parse_with_env(
        WITH_DEPENDENCIES,
        &[
            ("AUGUR_SPECULATION__CONFIDENCE", "0.9"),
            ("AUGUR_SPECULATION__ENABLED", "false"),
            ("AUGUR_SPECULATION__METHODS", r#"["GET"]"#),
            ("AUGUR_PROXY__SHUTDOWN_TIMEOUT", "25s"),
            ("AUGUR_SERVICE__UPSTREAM", "127.0.0.1:8081"),
            ("AUGUR_SERVICE__NAME", "1234"),
            ("AUGUR_TELEMETRY__OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("AUGUR_DEPENDENCY__USER_DB__UPSTREAM", "127.0.0.1:9201"),
            ("AUGUR_DEPENDENCY__1__TIMEOUT", "2s"),
        ],
    )
    .unwrap();
    assert_eq!(c.speculation.confidence, 0.9);
    assert!(!c.speculation.enabled);
    assert_eq!(c.speculation.methods, ["GET"]);
    assert_eq!(c.proxy.shutdown_timeout, Duration::from_secs(25));
    assert_eq!(c.proxy.drain_grace, Duration::from_secs(1));
    assert_eq!(c.service.upstream.to_string(), "127.0.0.1:8081");
    // The file gives the name as a string, so the text stays text.
    assert_eq!(c.service.name, "1234");
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4317")
    );
    let Target::Static(users) = &c.dependencies[0].target else {
        panic!("static");
    };
    assert_eq!(users.to_string(), "127.0.0.1:9201");
    assert_eq!(c.dependencies[1].timeout, Duration::from_secs(2));
    let keys: Vec<&str> = c.overrides.iter().map(|o| o.key.as_str()).collect();
    assert!(keys.contains(&"dependency[0].upstream"), "{keys:?}");
    assert!(keys.contains(&"speculation.confidence"), "{keys:?}");
    assert_eq!(c.overrides.len(), 9);
}

#[test]
fn a_bad_override_is_reported_with_its_variable() {
    let lines = invalid_with_env(
        WITH_DEPENDENCIES,
        &[
            ("AUGUR_SPECULATION__CONFIDENCE", "1.5"),
            ("AUGUR_SPECULATION__CONFIDENSE", "0.5"),
            ("AUGUR_PROXY__THREADS", "many"),
            ("AUGUR_DEPENDENCY__POSTS__UPSTREAM", "127.0.0.1:1"),
            ("AUGUR_DEPENDENCY__7__UPSTREAM", "127.0.0.1:1"),
            ("AUGUR_DEPENDENCY__RATES", "x"),
            ("AUGUR_SERVICE__NAME__FIRST", "x"),
            ("AUGUR_SERVICE____NAME", "x"),
        ],
    );
    for expected in [
        "speculation.confidence: 1.5 is out of range 0..=1 (set by AUGUR_SPECULATION__CONFIDENCE)",
        "speculation.confidense: unknown key (set by AUGUR_SPECULATION__CONFIDENSE)",
        "proxy.threads: expected an integer, found string (set by AUGUR_PROXY__THREADS)",
        "AUGUR_DEPENDENCY__POSTS__UPSTREAM: dependency has no element \"posts\" (by index or name)",
        "AUGUR_DEPENDENCY__7__UPSTREAM: dependency has no element \"7\" (by index or name)",
        "AUGUR_DEPENDENCY__RATES: dependency is a list: name an element (index or name) before the key",
        "AUGUR_SERVICE__NAME__FIRST: service.name is string, not a table",
        "AUGUR_SERVICE____NAME: expected AUGUR_SECTION__KEY (parts separated by __, none empty)",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "{expected}\nin {lines:#?}"
        );
    }
}

#[test]
fn variables_without_a_key_path_are_not_overrides() {
    let vars = [("AUGUR_LOG", "debug"), ("AUGURY__X", "1")];
    assert!(parse_with_env(MINIMAL, &vars).is_ok());
    assert!(!overrides::is_override("AUGUR_LOG"));
    assert!(overrides::is_override("AUGUR_PROXY__THREADS"));
}

#[test]
fn drain_grace_defaults_under_the_shutdown_timeout_and_must_stay_under_it() {
    let short = format!("{MINIMAL}\n[proxy]\nshutdown_timeout = \"600ms\"\n");
    assert_eq!(
        parse(&short).unwrap().proxy.drain_grace,
        Duration::from_millis(200)
    );
    let lines = invalid_with_env(&short, &[("AUGUR_PROXY__DRAIN_GRACE", "1s")]);
    assert_eq!(
        lines,
        [
            "proxy.drain_grace: 1s is not shorter than proxy.shutdown_timeout (600ms): the egress listeners would close only at the deadline (set by AUGUR_PROXY__DRAIN_GRACE)"
        ]
    );
}

#[test]
fn redaction_hides_credentials_and_keeps_the_rest() {
    let text = format!(
        r#"{MINIMAL}
[[dependency]]
name = "db"
listen = "127.0.0.1:15101"
[dependency.container]
image = "db:1"
port = 5432
args = ["--password=hunter2", "--api-key", "hunter2", "--port", "5432", "TOKEN=hunter2"]
"#
    );
    let c = parse(&text).unwrap().redacted();
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
    assert!(json.contains(r#""--password=[redacted]""#), "{json}");
    assert!(json.contains(r#""--api-key","[redacted]""#), "{json}");
    assert!(json.contains(r#""--port","5432""#), "{json}");
    assert!(json.contains(r#""shutdown_timeout":"3s""#), "{json}");
}

#[test]
fn dns_defaults_and_its_problems() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.dns.min_ttl, Duration::from_secs(1));
    assert_eq!(c.dns.max_ttl, Duration::from_secs(10));
    assert!(c.dns.nameservers.is_empty());
    let text = format!(
        "{MINIMAL}\n[dns]\nmin_ttl = \"500ms\"\nmax_ttl = \"1m\"\nnameservers = [\"10.0.0.2\", \"127.0.0.1:5353\", \"[::1]:53\"]\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.dns.min_ttl, Duration::from_millis(500));
    assert_eq!(c.dns.max_ttl, Duration::from_secs(60));
    let servers: Vec<String> = c.dns.nameservers.iter().map(|a| a.to_string()).collect();
    assert_eq!(servers, ["10.0.0.2:53", "127.0.0.1:5353", "[::1]:53"]);

    let bad =
        format!("{MINIMAL}\n[dns]\nmin_ttl = \"0s\"\nnameservers = [\"dns.example\"]\nttl = 5\n");
    assert_eq!(
        invalid_with_env(&bad, &[]),
        [
            "dns.min_ttl: must be greater than zero",
            "dns.nameservers[0]: \"dns.example\" is not an IP address or IP:port",
            "dns.ttl: unknown key",
        ]
    );
    let crossed = format!("{MINIMAL}\n[dns]\nmin_ttl = \"30s\"\nmax_ttl = \"5s\"\n");
    assert_eq!(
        invalid_with_env(&crossed, &[]),
        ["dns.min_ttl: 30s is more than max_ttl (5s)"]
    );
}

#[test]
fn listen_protocol_and_listen_tls_are_checked() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.service.listen_protocol, ListenProtocol::Auto);
    assert_eq!(c.service.listen_tls, None);
    let text = MINIMAL.replace(
        "upstream = ",
        "listen_protocol = \"h3\"\nlisten_tls = { cert_file = \"/nonexistent/cert.pem\" }\nupstream = ",
    );
    let lines = invalid_with_env(&text, &[]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("service.listen_protocol: invalid listen protocol"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("service.listen_tls.cert_file: cannot read /nonexistent/cert.pem"),
        "{lines:?}"
    );
    assert_eq!(lines[2], "service.listen_tls.key_file: missing");
}
