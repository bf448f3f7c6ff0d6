//! A shop, written to be hard on speculation: answers that depend on a
//! header the service forwards (`x-tenant`, with no `vary`), HEAD
//! existence checks, 204s that set a cookie, a caller's credential and a
//! path segment taken from a custom header (`x-user`), a purchase that
//! reads, writes and reads again, clients that retry with the same
//! `traceparent` and clients that send a malformed one.
//!
//! | frontend endpoint | what it calls, one after another |
//! |---|---|
//! | `GET /product/{id}` | catalog `HEAD /products/{id}` → catalog `GET /products/{id}` → inventory `GET /stock/{id}` → reviews `GET /reviews?product={id}` |
//! | `GET /me` | accounts `GET /accounts/{x-user}` (with the caller's `authorization`) → sessions `GET /sessions/{x-user}/touch` (204, `set-cookie`) |
//! | `POST /buy/{id}` | inventory `GET /stock/{id}` → `POST /reserve/{id}` → `GET /reservations/{id}` |
//! | `GET /deals/{shelf}` | catalog `GET /deals?shelf={shelf}` → only if one of its items is on sale, catalog `GET /promos/sku-{the first such item's sku}` |
//!
//! The deals page is a call decided by content with a computed parameter:
//! whether the promotion is fetched, and for which item, is in the list's
//! `on_sale` flags, and its path is `sku-` and the item's number.
//!
//! Every answer is a pure function of the request (and, for the purchase,
//! of the purchases before it, each of a product of its own), so the load
//! generator checks every response body.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::app::{self, App, Counts, Outbound, dependency, json, mix, outbound, query, text};
use crate::load::Planned;
use crate::procs::local;
use crate::server::{self, Body, respond};

/// The shop.
pub struct Shop;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// A product's price for a tenant, in cents.
fn price(tenant: &str, id: u64) -> u64 {
    let t = tenant.bytes().fold(1u64, |h, b| mix(h, u64::from(b)));
    500 + mix(t, id) % 10_000
}

fn product_body(tenant: &str, id: u64) -> String {
    format!(
        "{{\"id\":{id},\"name\":\"Product {id}\",\"price\":{}}}",
        price(tenant, id)
    )
}

/// A shelf's deals: four items, some on sale.
fn deals(shelf: u64) -> Vec<(u64, bool)> {
    (0..4)
        .map(|k| (shelf * 10 + k, mix(shelf, k) % 4 == 0))
        .collect()
}

fn deals_body(shelf: u64) -> String {
    let items: Vec<String> = deals(shelf)
        .iter()
        .map(|(sku, sale)| format!("{{\"sku\":{sku},\"on_sale\":{sale}}}"))
        .collect();
    format!("{{\"shelf\":{shelf},\"items\":[{}]}}", items.join(","))
}

fn promo_body(tenant: &str, sku: u64) -> String {
    format!(
        "{{\"sku\":\"sku-{sku}\",\"off\":{}}}",
        5 + price(tenant, sku) % 30
    )
}

fn reviews_body(id: u64) -> String {
    format!("{{\"product\":{id},\"stars\":{}}}", 1 + mix(id, 3) % 5)
}

fn account_body(user: &str) -> String {
    let seed = user.bytes().fold(3u64, |h, b| mix(h, u64::from(b)));
    let tier = ["basic", "gold", "platinum"][(seed % 3) as usize];
    format!("{{\"user\":\"{user}\",\"tier\":\"{tier}\"}}")
}

fn session_cookie(user: &str, tenant: &str) -> String {
    format!("sid={user}.{tenant}; Path=/; HttpOnly")
}

/// The credential a user presents.
pub fn token(user: &str) -> String {
    format!("Bearer tok-{user}")
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The last path segment as a number.
fn id_of(path: &str) -> u64 {
    path.trim_end_matches("/touch")
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Reservations so far, by (tenant, product).
type Reserved = Arc<Mutex<HashMap<(String, u64), u64>>>;

fn reserved(r: &Reserved, tenant: &str, id: u64) -> u64 {
    r.lock().map_or(0, |m| {
        m.get(&(tenant.to_string(), id)).copied().unwrap_or(0)
    })
}

impl App for Shop {
    const NAME: &'static str = "shop";
    const DEPENDENCIES: &'static [&'static str] =
        &["catalog", "inventory", "reviews", "accounts", "sessions"];

    async fn start_dependencies(
        latency: Duration,
        counts: Arc<Counts>,
    ) -> anyhow::Result<Vec<SocketAddr>> {
        let stock: Reserved = Arc::default();
        Ok(vec![
            dependency(0, latency, &counts, |req| async move {
                let (tenant, path) = (header(&req, "x-tenant"), req.uri().path());
                if path == "/deals" {
                    let shelf = query(req.uri().query(), "shelf")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    return json(deals_body(shelf));
                }
                if let Some(sku) = path.strip_prefix("/promos/sku-") {
                    return json(promo_body(tenant, sku.parse().unwrap_or(0)));
                }
                // A HEAD gets the length a GET would have, and no body.
                json(product_body(tenant, id_of(path)))
            })
            .await?,
            dependency(1, latency, &counts, move |req| {
                let stock = stock.clone();
                async move {
                    let (tenant, path) = (header(&req, "x-tenant"), req.uri().path());
                    let id = id_of(path);
                    if req.method() == "POST" && path.starts_with("/reserve/") {
                        if let Ok(mut m) = stock.lock() {
                            *m.entry((tenant.to_string(), id)).or_default() += 1;
                        }
                        return respond(201, "application/json", "{\"reserved\":true}");
                    }
                    let n = reserved(&stock, tenant, id);
                    if path.starts_with("/reservations/") {
                        json(format!("{{\"count\":{n}}}"))
                    } else {
                        json(format!("{{\"id\":{id},\"stock\":{}}}", 100 - n))
                    }
                }
            })
            .await?,
            dependency(2, latency, &counts, |req| async move {
                let id = query(req.uri().query(), "product")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut resp = json(reviews_body(id));
                resp.headers_mut().insert(
                    "cache-control",
                    hyper::header::HeaderValue::from_static("max-age=60"),
                );
                resp
            })
            .await?,
            dependency(3, latency, &counts, |req| async move {
                let user = req
                    .uri()
                    .path()
                    .trim_start_matches("/accounts/")
                    .to_string();
                if user.is_empty() || header(&req, "authorization") != token(&user) {
                    return respond(403, "text/plain", "not yours\n");
                }
                json(account_body(&user))
            })
            .await?,
            dependency(4, latency, &counts, |req| async move {
                let user = req
                    .uri()
                    .path()
                    .trim_start_matches("/sessions/")
                    .trim_end_matches("/touch")
                    .to_string();
                let mut resp = Response::new(Body::default());
                *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
                if let Ok(v) = session_cookie(&user, header(&req, "x-tenant")).parse() {
                    resp.headers_mut().insert("set-cookie", v);
                }
                resp
            })
            .await?,
        ])
    }

    async fn start_frontend(deps: Vec<SocketAddr>) -> anyhow::Result<SocketAddr> {
        let client = outbound();
        let deps = Arc::new(deps);
        let addr = server::serve(local(0), move |req: Request<Incoming>| {
            let (client, deps) = (client.clone(), deps.clone());
            async move {
                match handle(&client, &req, &deps).await {
                    Ok(body) => json(body),
                    Err(e) => respond(502, "text/plain", format!("frontend: {e}\n")),
                }
            }
        })
        .await?;
        Ok(addr)
    }

    fn planned(n: u64) -> Planned {
        // Every tenth request is a client's retry of the one before (when
        // that one is safe to retry): the same request with the same
        // `traceparent`.
        if n % 10 == 8 {
            let retried = ask(n - 1);
            if retried.method == Some("GET") {
                return retried;
            }
        }
        ask(n)
    }

    fn oracle(label: &str, l: Duration) -> (Duration, Duration) {
        // (critical path, sum of all calls)
        match label {
            // Every call needs only the inbound request.
            "GET /product" => (l, l * 4),
            "GET /me" => (l, l * 2),
            // The promotion needs the deals' answer (when it is called).
            "GET /deals" => (l * 2, l * 2),
            // The read after the write cannot start before the write.
            _ => (l * 2, l * 3),
        }
    }
}

/// One call of the frontend, passing on what a service passes on:
/// `traceparent`, the caller's credential, tenant and user.
async fn call(
    client: &Outbound,
    inbound: &Request<Incoming>,
    method: &str,
    url: String,
) -> anyhow::Result<(u16, http::HeaderMap, Bytes)> {
    let passed = ["traceparent", "authorization", "x-tenant", "x-user"];
    app::call(client, inbound, &passed, method, url, None).await
}

async fn handle(
    client: &Outbound,
    req: &Request<Incoming>,
    d: &[SocketAddr],
) -> anyhow::Result<String> {
    let path = req.uri().path().to_string();
    let get = |i: usize, path: String| call(client, req, "GET", format!("http://{}{path}", d[i]));
    match (req.method().as_str(), path.as_str()) {
        ("GET", p) if p.starts_with("/product/") => {
            let id = id_of(p);
            let (_, head, _) = call(
                client,
                req,
                "HEAD",
                format!("http://{}/products/{id}", d[0]),
            )
            .await?;
            let size = head
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            let (_, _, product) = get(0, format!("/products/{id}")).await?;
            let (_, _, stock) = get(1, format!("/stock/{id}")).await?;
            let (_, _, reviews) = get(2, format!("/reviews?product={id}")).await?;
            Ok(format!(
                "{{\"size\":\"{size}\",\"product\":{},\"stock\":{},\"reviews\":{}}}",
                text(&product),
                text(&stock),
                text(&reviews)
            ))
        }
        ("GET", "/me") => {
            let user = header(req, "x-user").to_string();
            let (_, _, account) = get(3, format!("/accounts/{user}")).await?;
            let (status, headers, _) = get(4, format!("/sessions/{user}/touch")).await?;
            let cookie = headers
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none");
            let framed = headers.contains_key("content-length");
            Ok(format!(
                "{{\"account\":{},\"session\":{{\"status\":{status},\"cookie\":\"{cookie}\",\"content-length\":{framed}}}}}",
                text(&account)
            ))
        }
        ("POST", p) if p.starts_with("/buy/") => {
            let id = id_of(p);
            let (_, _, before) = get(1, format!("/stock/{id}")).await?;
            let (_, _, done) =
                call(client, req, "POST", format!("http://{}/reserve/{id}", d[1])).await?;
            let (_, _, after) = get(1, format!("/reservations/{id}")).await?;
            Ok(format!(
                "{{\"before\":{},\"reserved\":{},\"after\":{}}}",
                text(&before),
                text(&done),
                text(&after)
            ))
        }
        ("GET", p) if p.starts_with("/deals/") => {
            let shelf = id_of(p);
            let (_, _, listed) = get(0, format!("/deals?shelf={shelf}")).await?;
            let parsed: serde_json::Value = serde_json::from_slice(&listed)?;
            let first = parsed["items"]
                .as_array()
                .and_then(|items| items.iter().find(|i| i["on_sale"] == true))
                .and_then(|i| i["sku"].as_u64());
            let promo = match first {
                Some(sku) => text(&get(0, format!("/promos/sku-{sku}")).await?.2).into_owned(),
                None => "null".to_string(),
            };
            Ok(format!("{{\"deals\":{},\"promo\":{promo}}}", text(&listed)))
        }
        (m, p) => bail!("no endpoint {m} {p}"),
    }
}

/// The `n`-th request of the workload and the exact body it must get: 45%
/// product pages, 15% deals, 25% account checks, 15% purchases (each of a product of
/// its own, so its answer does not depend on the others), over three
/// tenants and eight users; one request in ten has a malformed
/// `traceparent`, and one in ten is retried with the same one.
fn ask(n: u64) -> Planned {
    let r = mix(n, 7);
    let tenant = TENANTS[(r % 3) as usize];
    let mut headers = vec![("x-tenant".to_string(), tenant.to_string())];
    match n % 10 {
        3 => headers.push(("traceparent".into(), "00-not-a-trace-01".into())),
        7 => headers.push((
            "traceparent".into(),
            format!(
                "00-{:032x}-{:016x}-01",
                u128::from(mix(n, 1)) << 64 | 1,
                mix(n, 2) | 1
            ),
        )),
        _ => {}
    }
    let (label, method, path, expected) = match (r >> 8) % 20 {
        9..=11 => {
            let shelf = (r >> 16) % 30;
            let promo = deals(shelf)
                .into_iter()
                .find(|(_, sale)| *sale)
                .map_or("null".to_string(), |(sku, _)| promo_body(tenant, sku));
            let expected = format!("{{\"deals\":{},\"promo\":{promo}}}", deals_body(shelf));
            ("GET /deals", "GET", format!("/deals/{shelf}"), expected)
        }
        0..=8 => {
            let id = (r >> 16) % 40;
            let product = product_body(tenant, id);
            let expected = format!(
                "{{\"size\":\"{}\",\"product\":{product},\"stock\":{{\"id\":{id},\"stock\":100}},\"reviews\":{}}}",
                product.len(),
                reviews_body(id)
            );
            ("GET /product", "GET", format!("/product/{id}"), expected)
        }
        12..=16 => {
            let user = format!("user{}", (r >> 16) % 8);
            headers.push(("authorization".into(), token(&user)));
            headers.push(("x-user".into(), user.clone()));
            let expected = format!(
                "{{\"account\":{},\"session\":{{\"status\":204,\"cookie\":\"{}\",\"content-length\":false}}}}",
                account_body(&user),
                session_cookie(&user, tenant)
            );
            ("GET /me", "GET", "/me".to_string(), expected)
        }
        _ => {
            let id = 10_000 + n;
            let expected = format!(
                "{{\"before\":{{\"id\":{id},\"stock\":100}},\"reserved\":{{\"reserved\":true}},\"after\":{{\"count\":1}}}}"
            );
            ("POST /buy", "POST", format!("/buy/{id}"), expected)
        }
    };
    Planned {
        path,
        headers,
        expect: Some(Bytes::from(expected)),
        method: Some(method),
        label,
    }
}
