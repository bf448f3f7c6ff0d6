//! Upstreams given by host name, resolved by a DNS server the test runs on
//! loopback and changes while augur runs: augur follows a name that moves,
//! spreads requests over every address, keeps the last good addresses
//! when the name stops resolving, and starts (answering 502s that name
//! it) when a name does not resolve yet.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Response;

use crate::support::*;

/// What the test's DNS server answers for every name.
#[derive(Clone)]
enum Zone {
    Addresses(Vec<Ipv4Addr>),
    NoSuchName,
}

/// A DNS server on 127.0.0.1 (UDP) answering A queries from a [`Zone`]
/// the test sets, with a TTL of `ttl` seconds.
struct Dns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
}

impl Dns {
    async fn start(zone: Zone) -> Dns {
        Self::with_ttl(zone, 1).await
    }

    async fn with_ttl(zone: Zone, ttl: u32) -> Dns {
        let socket = tokio::net::UdpSocket::bind(local(0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(zone));
        let answers = zone.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let zone = answers.lock().unwrap().clone();
                if let Some(reply) = answer(&buf[..n], &zone, ttl) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Dns { addr, zone }
    }

    fn set(&self, zone: Zone) {
        *self.zone.lock().unwrap() = zone;
    }
}

/// The reply to one query (RFC 1035 §4): its header and question echoed,
/// an A record per address for an A query, none for any other type.
fn answer(query: &[u8], zone: &Zone, ttl: u32) -> Option<Vec<u8>> {
    let mut end = 12;
    loop {
        let len = *query.get(end)? as usize;
        end += 1 + len;
        if len == 0 {
            break;
        }
    }
    let question = query.get(12..end + 4)?;
    let qtype = u16::from_be_bytes([query[end], query[end + 1]]);
    let (rcode, addresses) = match zone {
        Zone::NoSuchName => (3u8, Vec::new()),
        Zone::Addresses(_) if qtype != 1 => (0, Vec::new()),
        Zone::Addresses(a) => (0, a.clone()),
    };
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[..2]); // id
    reply.extend_from_slice(&[0x81, 0x80 | rcode]); // response, RD, RA
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    for ip in addresses {
        reply.extend_from_slice(&[0xc0, 12]); // the question's name
        reply.extend_from_slice(&[0, 1, 0, 1]); // A, IN
        reply.extend_from_slice(&ttl.to_be_bytes());
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

const HOST: &str = "users.augur.test";
const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A server on `ip:port` that answers with its own address.
async fn server_at(ip: Ipv4Addr, port: u16) -> Killable {
    Killable::start(SocketAddr::new(IpAddr::V4(ip), port), move |_| async move {
        Response::new(Body::from(ip.to_string()))
    })
    .await
}

fn dns_section(dns: &Dns, max_ttl: &str) -> String {
    format!(
        "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"100ms\"\nmax_ttl = \"{max_ttl}\"\n",
        dns.addr
    )
}

/// Which server answered each of `n` calls through the egress.
async fn answers(augur: &Augur, n: usize) -> Vec<String> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        let got = get(&augur.dep_url(0, "/who")).await;
        seen.push(if got.status == 200 {
            got.text()
        } else {
            format!("{} {}", got.status, got.text())
        });
    }
    seen
}

/// Servers on A and B at one port, the test's DNS server answering
/// `zone` with `ttl`, and augur with dependency "users" at
/// `users.augur.test:port` resolved within `max_ttl` (logging at info).
struct Rig {
    a: Killable,
    _b: Killable,
    dns: Dns,
    augur: Augur,
}

async fn rig(zone: Zone, ttl: u32, max_ttl: &str) -> Rig {
    let port = free_port();
    let a = server_at(A, port).await;
    let b = server_at(B, port).await;
    let dns = Dns::with_ttl(zone, ttl).await;
    let ports = Ports::new(1);
    let mut dep = Dep::new("users", local(port));
    dep.upstream = format!("{HOST}:{port}");
    let service = echo_server().await;
    let augur = Augur::start_with_env(
        &ports,
        service,
        &[dep],
        &dns_section(&dns, max_ttl),
        &[("RUST_LOG", "info")],
    )
    .await;
    Rig {
        a,
        _b: b,
        dns,
        augur,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_moves_is_followed_spread_over_its_addresses_and_kept_when_it_fails() {
    let Rig {
        dns,
        augur,
        _b,
        a: _a,
        ..
    } = rig(Zone::Addresses(vec![A]), 1, "500ms").await;
    let host = format!("host=\"{HOST}\"");

    assert_eq!(answers(&augur, 3).await, ["127.0.0.1"; 3]);
    assert_eq!(
        augur
            .metric(&format!("augur_upstream_addresses{{{host}}}"))
            .await,
        1.0
    );

    // The name moves: within its TTL (clamped to max_ttl), calls follow.
    dns.set(Zone::Addresses(vec![B]));
    eventually(
        Duration::from_secs(5),
        "the calls to follow the name",
        || async { (answers(&augur, 1).await == ["127.0.0.2"]).then_some(()) },
    )
    .await;
    assert_eq!(answers(&augur, 4).await, ["127.0.0.2"; 4]);

    // Two addresses: calls take them in turn.
    dns.set(Zone::Addresses(vec![A, B]));
    eventually(Duration::from_secs(5), "both addresses", || async {
        let n = augur
            .metric(&format!("augur_upstream_addresses{{{host}}}"))
            .await;
        (n == 2.0).then_some(())
    })
    .await;
    let seen = answers(&augur, 10).await;
    let at_a = seen.iter().filter(|s| *s == "127.0.0.1").count();
    let at_b = seen.iter().filter(|s| *s == "127.0.0.2").count();
    assert_eq!((at_a, at_b), (5, 5), "{seen:?}");

    // The name stops resolving: augur says so and keeps both addresses.
    dns.set(Zone::NoSuchName);
    eventually(Duration::from_secs(5), "augur_dns_failing", || async {
        let failing = augur.metric(&format!("augur_dns_failing{{{host}}}")).await;
        (failing == 1.0).then_some(())
    })
    .await;
    let seen = answers(&augur, 6).await;
    assert!(
        seen.iter().all(|s| s == "127.0.0.1" || s == "127.0.0.2"),
        "{seen:?}"
    );
    let failed = augur
        .metric(&format!(
            "augur_dns_resolutions_total{{{host},result=\"failed\"}}"
        ))
        .await;
    assert!(failed >= 1.0, "{failed}");
    let log = augur.log_text();
    assert!(
        log.contains(&format!(
            "{HOST} no longer resolves (no such name): keeping its last 2 addresses"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("{HOST} resolves to 127.0.0.2 (was 127.0.0.1)")),
        "{log}"
    );

    // And it comes back.
    dns.set(Zone::Addresses(vec![A]));
    eventually(
        Duration::from_secs(5),
        "the name to resolve again",
        || async {
            let failing = augur.metric(&format!("augur_dns_failing{{{host}}}")).await;
            (failing == 0.0 && answers(&augur, 2).await == ["127.0.0.1"; 2]).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_name_that_does_not_resolve_yet_gets_502s_that_name_it_until_it_does() {
    let port = free_port();
    let _service = server_at(A, port).await;
    let dns = Dns::start(Zone::NoSuchName).await;
    let ports = Ports::new(0);
    let text = config_text(&ports, local(port), &[], &dns_section(&dns, "500ms")).replace(
        &format!("upstream = \"{}\"", local(port)),
        &format!("upstream = \"{HOST}:{port}\""),
    );
    let augur = Augur::start_from_text(&ports, &text, &[]).await;

    let got = get(&augur.url("/")).await;
    assert_eq!(got.status, 502);
    assert!(
        got.text().contains(&format!(
            "augur: service \"svc-{}\": {HOST} does not resolve (no such name)",
            ports.ingress
        )),
        "{}",
        got.text()
    );
    // Said once, though augur asks again every min_ttl (100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let said = format!("{HOST} does not resolve (no such name): requests to it fail with 502");
    let log = augur.log_text();
    assert_eq!(log.matches(&said).count(), 1, "{log}");
    let retried = augur
        .metric(&format!(
            "augur_dns_resolutions_total{{host=\"{HOST}\",result=\"failed\"}}"
        ))
        .await;
    assert!(retried >= 3.0, "{retried}");

    dns.set(Zone::Addresses(vec![A]));
    eventually(Duration::from_secs(5), "the service to answer", || async {
        let got = get(&augur.url("/")).await;
        (got.status == 200 && got.text() == "127.0.0.1").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_resolves_the_name_again_without_waiting_for_its_ttl() {
    // A restarted container: the old address stops answering and the name
    // moves, while the answer augur has is good for another minute.
    let Rig { a, dns, augur, _b } = rig(Zone::Addresses(vec![A]), 300, "60s").await;
    assert_eq!(answers(&augur, 2).await, ["127.0.0.1"; 2]);

    dns.set(Zone::Addresses(vec![B]));
    a.kill();
    // pingora keeps idle connections to the old address; once they are
    // gone, a new one is refused, and that failure asks the name again.
    let seen = eventually(
        Duration::from_secs(5),
        "the calls to follow the name",
        || async {
            let seen = answers(&augur, 1).await;
            (seen == ["127.0.0.2"]).then_some(seen)
        },
    )
    .await;
    assert_eq!(seen, ["127.0.0.2"]);
    assert_eq!(answers(&augur, 3).await, ["127.0.0.2"; 3]);
    let log = augur.log_text();
    assert!(
        log.contains(&format!("{HOST} resolves to 127.0.0.2 (was 127.0.0.1)")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_connect_to_one_address_of_several_tries_the_next() {
    let Rig {
        a,
        augur,
        dns: _dns,
        _b,
    } = rig(Zone::Addresses(vec![A, B]), 300, "60s").await;
    let seen = answers(&augur, 4).await;
    assert_eq!(
        seen.iter().filter(|s| *s == "127.0.0.1").count(),
        2,
        "{seen:?}"
    );

    // A's server dies and the name still lists it (the DNS server was not
    // told): no call fails, each goes on to B, POSTs too (nothing was sent).
    a.kill();
    assert_eq!(answers(&augur, 6).await, ["127.0.0.2"; 6]);
    for _ in 0..4 {
        let got = send(
            hyper::Request::post(augur.dep_url(0, "/write"))
                .body(Body::from("x"))
                .unwrap(),
        )
        .await;
        assert_eq!((got.status, got.text().as_str()), (200, "127.0.0.2"));
    }
}
