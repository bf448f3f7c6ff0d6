//! Generated traces: call flows with known structure, timings and
//! parameter provenance, from a seeded generator.

use augur_predictor::{Call, Context, Request};
use serde_json::{Value, json};

/// xorshift64*: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

pub fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
    Request::to(method, target, headers)
}

/// Builds a context call by call, each starting `gap` µs after the
/// previous one ended.
pub struct Builder {
    pub ctx: Context,
    pub now: u64,
}

impl Builder {
    pub fn new(route: &str, inbound: Request) -> Self {
        Self {
            ctx: Context {
                route: route.into(),
                inbound,
                calls: Vec::new(),
            },
            now: 100,
        }
    }

    pub fn call(
        &mut self,
        dependency: &str,
        req: Request,
        duration: u64,
        response: Value,
    ) -> &mut Self {
        self.ctx.calls.push(Call {
            dependency: dependency.into(),
            request: req,
            status: 200,
            start_us: self.now,
            duration_us: duration,
            response: Some(response.into()),
        });
        self.now += duration + 50;
        self
    }

    /// Calls that start together (fan-out); the next call waits for all.
    pub fn parallel(&mut self, calls: Vec<(&str, Request, u64, Value)>) -> &mut Self {
        let start = self.now;
        let mut end = start;
        for (i, (dep, req, duration, response)) in calls.into_iter().enumerate() {
            self.ctx.calls.push(Call {
                dependency: dep.into(),
                request: req,
                status: 200,
                start_us: start + i as u64,
                duration_us: duration,
                response: Some(response.into()),
            });
            end = end.max(start + duration);
        }
        self.now = end + 50;
        self
    }

    pub fn done(&mut self) -> Context {
        std::mem::take(&mut self.ctx)
    }
}

/// A credential as the proxy hands it over: already a keyed hash.
pub fn token(user: u64) -> String {
    format!("keyed:{:032x}", user.wrapping_mul(0x9E3779B97F4A7C15))
}

/// `GET /profile/{id}`: users by the inbound id, then posts by the id the
/// users response gives, both with the inbound credential.
pub fn profile(rng: &mut Rng) -> Context {
    let id = rng.below(1_000_000);
    let auth = token(id % 17);
    let uid = format!("u{}", id * 7);
    let inbound = request(
        "GET",
        &format!("/profile/{id}"),
        &[("authorization", &auth)],
    );
    Builder::new("GET /profile/{id}", inbound)
        .call(
            "users",
            request("GET", &format!("/users/{id}"), &[("authorization", &auth)]),
            2000,
            json!({"id": id, "uid": uid, "name": format!("user{id}")}),
        )
        .call(
            "posts",
            request(
                "GET",
                &format!("/posts?user={uid}&limit=10"),
                &[("authorization", &auth)],
            ),
            3000,
            json!({"posts": [id * 10, id * 10 + 1]}),
        )
        .done()
}

/// DeathStarBench-style search: nearby hotels (from inbound query), their
/// rates (the list of ids, comma-joined), the profile of the first one.
pub fn search(rng: &mut Rng) -> Context {
    let lat = 30 + rng.below(20);
    let hotels: Vec<u64> = (0..3).map(|_| rng.below(100_000)).collect();
    let ids = hotels
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let inbound = request("GET", &format!("/search?lat={lat}&in=2026-12-01"), &[]);
    Builder::new("GET /search", inbound)
        .call(
            "geo",
            request("GET", &format!("/nearby?lat={lat}"), &[]),
            1500,
            json!({"hotels": hotels.iter().map(|h| json!({"id": h})).collect::<Vec<_>>()}),
        )
        .call(
            "rate",
            request("GET", &format!("/rates?ids={ids}&in=2026-12-01"), &[]),
            2500,
            json!({"rates": hotels.iter().map(|h| json!({"hotel": h, "price": h % 300})).collect::<Vec<_>>()}),
        )
        .call(
            "profile",
            request("GET", &format!("/hotels/{}", hotels[0]), &[]),
            1000,
            json!({"hotel": hotels[0]}),
        )
        .done()
}

/// `POST /orders`: parameters from the inbound JSON body and a header.
pub fn order(rng: &mut Rng) -> Context {
    let item = rng.below(10_000);
    let tenant = format!("t{}", rng.below(50));
    let auth = token(item % 5);
    let mut inbound = request(
        "POST",
        "/orders",
        &[("x-tenant", &tenant), ("authorization", &auth)],
    );
    inbound.body = Some(json!({"item": item, "qty": 2}).into());
    Builder::new("POST /orders", inbound)
        .call(
            "inventory",
            request(
                "GET",
                &format!("/items/{item}?tenant={tenant}"),
                &[("authorization", &auth), ("accept", "application/json")],
            ),
            1200,
            json!({"item": item, "stock": 3}),
        )
        .done()
}
