//! A hotel-reservation application modelled on the call graphs of
//! DeathStarBench's hotelReservation, as HTTP/JSON services of our own.
//!
//! | frontend endpoint | what it calls, one after another |
//! |---|---|
//! | `GET /hotels?lat&lon&inDate&outDate` | geo (nearby ids) → rate, availability, profile (each with the ids geo gave) |
//! | `GET /recommendations?require&lat&lon` | recommendation (ids) → profile (those ids) |
//! | `GET /user?username` | user (check, with the caller's credential) |
//! | `POST /reservation?hotelId&inDate&outDate&username` | user (check) → reservation (a POST: never to be speculated) |
//!
//! Every answer is a pure function of the request, so the load generator
//! can check every response body against the truth (see
//! [`App::planned`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;

use crate::app::{
    self, App, Counts, Outbound, Transport, dependency, json, mix, outbound, query, text,
};
use crate::load::Planned;
use crate::procs::local;
use crate::server::{self, respond};

/// The hotels near a point: five ids.
pub fn nearby(lat: u64, lon: u64) -> Vec<u64> {
    (0..5)
        .map(|i| 1000 + mix(lat * 1000 + lon, i) % 9000)
        .collect()
}

/// The hotels recommended for a requirement near a point: three ids.
pub fn recommend(require: &str, lat: u64, lon: u64) -> Vec<u64> {
    let seed = require.bytes().fold(7u64, |h, b| mix(h, u64::from(b)));
    (0..3)
        .map(|i| 1000 + mix(seed ^ (lat * 1000 + lon), i) % 9000)
        .collect()
}

fn ids_text(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn rates_body(ids: &[u64], inn: &str, out: &str) -> String {
    let plans: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(
                "{{\"hotelId\":{id},\"code\":\"R{}\",\"rate\":{}}}",
                mix(*id, 1) % 100,
                80 + mix(*id, inn.len() as u64 + out.len() as u64) % 200
            )
        })
        .collect();
    format!("{{\"ratePlans\":[{}]}}", plans.join(","))
}

fn availability_body(ids: &[u64], inn: &str, out: &str) -> String {
    let free: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| mix(*id, inn.bytes().chain(out.bytes()).map(u64::from).sum()) % 4 != 0)
        .collect();
    format!("{{\"available\":[{}]}}", ids_text(&free))
}

fn profiles_body(ids: &[u64]) -> String {
    let hotels: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(
                "{{\"id\":{id},\"name\":\"Hotel {id}\",\"stars\":{}}}",
                1 + mix(*id, 2) % 5
            )
        })
        .collect();
    format!("{{\"hotels\":[{}]}}", hotels.join(","))
}

fn user_body(username: &str, auth: &str) -> String {
    let ok = auth == token(username);
    format!("{{\"username\":\"{username}\",\"ok\":{ok}}}")
}

/// The credential a user presents.
pub fn token(username: &str) -> String {
    format!("Bearer tok-{username}")
}

fn ids_param(q: Option<&str>) -> Vec<u64> {
    query(q, "hotelIds")
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

fn dates(q: Option<&str>) -> (&str, &str) {
    (
        query(q, "inDate").unwrap_or(""),
        query(q, "outDate").unwrap_or(""),
    )
}

/// The hotel-reservation application.
pub struct Hotel;

impl App for Hotel {
    const NAME: &'static str = "hotel reservation";
    const DEPENDENCIES: &'static [&'static str] = &[
        "geo",
        "rate",
        "availability",
        "profile",
        "recommendation",
        "user",
        "reservation",
    ];
    /// One dependency behind TLS and one over HTTP/2, as a real
    /// deployment mixes them; the results match the all-HTTP/1 run.
    const TRANSPORTS: &'static [(&'static str, Transport)] =
        &[("profile", Transport::Tls), ("rate", Transport::H2c)];

    async fn start_dependencies(
        latency: Duration,
        counts: Arc<Counts>,
    ) -> anyhow::Result<Vec<SocketAddr>> {
        start_dependencies(latency, counts).await
    }

    async fn start_frontend(deps: Vec<SocketAddr>) -> anyhow::Result<SocketAddr> {
        start_frontend(deps).await
    }

    fn planned(n: u64) -> Planned {
        let ask = ask(n);
        Planned {
            path: ask.target,
            headers: vec![("authorization".into(), ask.auth)],
            expect: Some(Bytes::from(ask.expected)),
            method: Some(ask.method),
            label: ask.label,
        }
    }

    fn oracle(label: &str, latency: Duration) -> (Duration, Duration) {
        oracle_path(label, latency)
    }
}

/// Starts the dependencies, each answering after `l`; returns their
/// addresses in [`Hotel::DEPENDENCIES`] order.
async fn start_dependencies(l: Duration, counts: Arc<Counts>) -> anyhow::Result<Vec<SocketAddr>> {
    Ok(vec![
        dependency(0, l, &counts, |req| async move {
            let q = req.uri().query();
            match (
                query(q, "lat").and_then(|v| v.parse().ok()),
                query(q, "lon").and_then(|v| v.parse().ok()),
            ) {
                (Some(lat), Some(lon)) => json(format!(
                    "{{\"hotelIds\":[{}]}}",
                    ids_text(&nearby(lat, lon))
                )),
                _ => respond(400, "text/plain", "geo needs lat and lon\n"),
            }
        })
        .await?,
        dependency(1, l, &counts, |req| async move {
            let q = req.uri().query();
            let (inn, out) = dates(q);
            json(rates_body(&ids_param(q), inn, out))
        })
        .await?,
        dependency(2, l, &counts, |req| async move {
            let q = req.uri().query();
            let (inn, out) = dates(q);
            json(availability_body(&ids_param(q), inn, out))
        })
        .await?,
        dependency(3, l, &counts, |req| async move {
            json(profiles_body(&ids_param(req.uri().query())))
        })
        .await?,
        dependency(4, l, &counts, |req| async move {
            let q = req.uri().query();
            let coordinate = |k| query(q, k).and_then(|v| v.parse().ok()).unwrap_or(0);
            let ids = recommend(
                query(q, "require").unwrap_or(""),
                coordinate("lat"),
                coordinate("lon"),
            );
            json(format!("{{\"hotelIds\":[{}]}}", ids_text(&ids)))
        })
        .await?,
        dependency(5, l, &counts, |req| async move {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            json(user_body(
                query(req.uri().query(), "username").unwrap_or(""),
                auth,
            ))
        })
        .await?,
        dependency(6, l, &counts, |req| async move {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let order: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            json(format!(
                "{{\"reserved\":{},\"hotelId\":{}}}",
                order["username"].is_string(),
                order["hotelId"]
            ))
        })
        .await?,
    ])
}

/// One call of the frontend, passing on traceparent and authorization.
async fn call(
    client: &Outbound,
    inbound: &Request<Incoming>,
    method: &str,
    url: String,
    body: Option<String>,
) -> anyhow::Result<Bytes> {
    let passed = ["traceparent", "authorization"];
    Ok(app::call(client, inbound, &passed, method, url, body)
        .await?
        .2)
}

fn ids_in(body: &Bytes, field: &str) -> Vec<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v[field]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        })
        .unwrap_or_default()
}

/// Starts the frontend, calling its dependencies at `deps` (direct, or
/// augur's egress listeners), in [`Hotel::DEPENDENCIES`] order.
async fn start_frontend(deps: Vec<SocketAddr>) -> anyhow::Result<SocketAddr> {
    let client = outbound();
    let deps = std::sync::Arc::new(deps);
    let addr = server::serve(local(0), move |req: Request<Incoming>| {
        let (client, deps) = (client.clone(), deps.clone());
        async move {
            match handle(&client, &req, &|i| deps[i]).await {
                Ok(body) => json(body),
                Err(e) => respond(502, "text/plain", format!("frontend: {e}\n")),
            }
        }
    })
    .await?;
    Ok(addr)
}

async fn handle(
    client: &Outbound,
    req: &Request<Incoming>,
    d: &impl Fn(usize) -> SocketAddr,
) -> anyhow::Result<String> {
    let q = req.uri().query().map(str::to_string);
    let q = q.as_deref();
    let p = |k: &str| query(q, k).unwrap_or("").to_string();
    let get = |url: String| call(client, req, "GET", url, None);
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/hotels") => {
            let (inn, out) = (p("inDate"), p("outDate"));
            let geo = get(format!(
                "http://{}/nearby?lat={}&lon={}",
                d(0),
                p("lat"),
                p("lon")
            ))
            .await?;
            let ids = ids_text(&ids_in(&geo, "hotelIds"));
            let rates = get(format!(
                "http://{}/rates?hotelIds={ids}&inDate={inn}&outDate={out}",
                d(1)
            ))
            .await?;
            let avail = get(format!(
                "http://{}/availability?hotelIds={ids}&inDate={inn}&outDate={out}",
                d(2)
            ))
            .await?;
            let profiles = get(format!("http://{}/profiles?hotelIds={ids}", d(3))).await?;
            Ok(format!(
                "{{\"search\":{},\"rates\":{},\"availability\":{},\"profiles\":{}}}",
                text(&geo),
                text(&rates),
                text(&avail),
                text(&profiles)
            ))
        }
        ("GET", "/recommendations") => {
            let rec = get(format!(
                "http://{}/recommend?require={}&lat={}&lon={}",
                d(4),
                p("require"),
                p("lat"),
                p("lon")
            ))
            .await?;
            let ids = ids_text(&ids_in(&rec, "hotelIds"));
            let profiles = get(format!("http://{}/profiles?hotelIds={ids}", d(3))).await?;
            Ok(format!(
                "{{\"recommended\":{},\"profiles\":{}}}",
                text(&rec),
                text(&profiles)
            ))
        }
        ("GET", "/user") => {
            let user = get(format!("http://{}/check?username={}", d(5), p("username"))).await?;
            Ok(format!("{{\"user\":{}}}", text(&user)))
        }
        ("POST", "/reservation") => {
            let user = get(format!("http://{}/check?username={}", d(5), p("username"))).await?;
            let order = format!(
                "{{\"hotelId\":{},\"inDate\":\"{}\",\"outDate\":\"{}\",\"username\":\"{}\"}}",
                p("hotelId"),
                p("inDate"),
                p("outDate"),
                p("username")
            );
            let done = call(
                client,
                req,
                "POST",
                format!("http://{}/reserve", d(6)),
                Some(order),
            )
            .await?;
            Ok(format!(
                "{{\"user\":{},\"reservation\":{}}}",
                text(&user),
                text(&done)
            ))
        }
        (m, path) => bail!("no endpoint {m} {path}"),
    }
}

/// One request of the workload and the exact body it must get.
struct Ask {
    label: &'static str,
    method: &'static str,
    target: String,
    auth: String,
    expected: String,
}

/// The `n`-th request of the workload: 60% search, 20% recommendations,
/// 15% user checks, 5% reservations, over a few places, dates and users.
fn ask(n: u64) -> Ask {
    let r = mix(n, 99);
    let (lat, lon) = (30 + r % 8, 100 + (r >> 8) % 8);
    let user = format!("user{}", (r >> 16) % 10);
    let auth = token(&user);
    let (inn, out) = (
        "2026-12-0".to_string() + &((r >> 20) % 5 + 1).to_string(),
        "2026-12-1".to_string() + &((r >> 24) % 5).to_string(),
    );
    let (label, method, target, expected) = match r % 20 {
        0..=11 => {
            let ids = nearby(lat, lon);
            let expected = format!(
                "{{\"search\":{{\"hotelIds\":[{}]}},\"rates\":{},\"availability\":{},\"profiles\":{}}}",
                ids_text(&ids),
                rates_body(&ids, &inn, &out),
                availability_body(&ids, &inn, &out),
                profiles_body(&ids)
            );
            (
                "GET /hotels",
                "GET",
                format!("/hotels?lat={lat}&lon={lon}&inDate={inn}&outDate={out}"),
                expected,
            )
        }
        12..=15 => {
            let require = ["dis", "rate", "price"][(r >> 28) as usize % 3];
            let ids = recommend(require, lat, lon);
            let expected = format!(
                "{{\"recommended\":{{\"hotelIds\":[{}]}},\"profiles\":{}}}",
                ids_text(&ids),
                profiles_body(&ids)
            );
            (
                "GET /recommendations",
                "GET",
                format!("/recommendations?require={require}&lat={lat}&lon={lon}"),
                expected,
            )
        }
        16..=18 => {
            let expected = format!("{{\"user\":{}}}", user_body(&user, &auth));
            (
                "GET /user",
                "GET",
                format!("/user?username={user}"),
                expected,
            )
        }
        _ => {
            let hotel = nearby(lat, lon)[0];
            let expected = format!(
                "{{\"user\":{},\"reservation\":{{\"reserved\":true,\"hotelId\":{hotel}}}}}",
                user_body(&user, &auth)
            );
            (
                "POST /reservation",
                "POST",
                format!("/reservation?hotelId={hotel}&inDate={inn}&outDate={out}&username={user}"),
                expected,
            )
        }
    };
    Ask {
        label,
        method,
        target,
        auth,
        expected,
    }
}

/// The dependency calls of each endpoint on its critical path if every call
/// ran as soon as its inputs existed, as (calls in sequence on the path).
fn oracle_path(label: &str, l: Duration) -> (Duration, Duration) {
    // (critical path, sum of all calls)
    // geo, then rate, availability and profile side by side; the rest are
    // chains, but for the reservation, whose user check and POST could
    // run side by side.
    match label {
        "GET /hotels" => (l * 2, l * 4),
        "GET /recommendations" => (l * 2, l * 2),
        "GET /user" => (l, l),
        _ => (l, l * 2),
    }
}
