//! The trace suite: one generated trace per kind of difficulty a sequence
//! model meets in real handlers, each with its ground truth in the calls
//! themselves (what was called, with which parameters, when). Seeded and
//! quick: `augur suite --out DIR` writes every class as a trace file in
//! well under a second, `augur eval DIR/CLASS.jsonl` measures a model on it.
//!
//! | class | what decides the calls |
//! |---|---|
//! | `chain` | nothing: a fixed chain, each call's parameter from the last response |
//! | `flag` | whether an item of a list has its flag set; the call takes the first such item's id |
//! | `empty` | whether a list is empty; the call takes the list joined by commas |
//! | `status` | the status of an earlier response (200 or 404) |
//! | `threshold` | whether a number in a response passes a threshold |
//! | `inbound` | a query value and a header of the inbound request |
//! | `long-range` | which call was made six calls earlier (nothing in any response) |
//! | `fan-out` | a list's length: one call per element, each with its element's id |
//! | `batch` | a list: one call with every element's id |
//! | `computed` | nothing, but parameters are computed: `user-{id}`, zero-padded, two decimals |
//! | `drift` | the flow changes half way through the trace |
//! | `interleaved` | two concurrent calls in either order, and a random noise call |
//! | `combined` | two responses together: the account is premium *and* the cart is not empty |

use serde_json::{Value, json};

use crate::observation::{Call, Context, Request};

/// A class of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Chain,
    Flag,
    Empty,
    Status,
    Threshold,
    Inbound,
    LongRange,
    FanOut,
    Batch,
    Computed,
    Drift,
    Interleaved,
    Combined,
}

impl Class {
    pub const ALL: [Class; 13] = [
        Class::Chain,
        Class::Flag,
        Class::Empty,
        Class::Status,
        Class::Threshold,
        Class::Inbound,
        Class::LongRange,
        Class::FanOut,
        Class::Batch,
        Class::Computed,
        Class::Drift,
        Class::Interleaved,
        Class::Combined,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Chain => "chain",
            Class::Flag => "flag",
            Class::Empty => "empty",
            Class::Status => "status",
            Class::Threshold => "threshold",
            Class::Inbound => "inbound",
            Class::LongRange => "long-range",
            Class::FanOut => "fan-out",
            Class::Batch => "batch",
            Class::Computed => "computed",
            Class::Drift => "drift",
            Class::Interleaved => "interleaved",
            Class::Combined => "combined",
        }
    }

    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether the class's calls are decided by content the context holds
    /// (an earlier response or the inbound request) or take computed
    /// parameters: the classes a content-aware model must get right.
    pub fn content_decided(self) -> bool {
        matches!(
            self,
            Class::Flag
                | Class::Empty
                | Class::Status
                | Class::Threshold
                | Class::Inbound
                | Class::FanOut
                | Class::Batch
                | Class::Computed
                | Class::Combined
        )
    }
}

/// `n` contexts of `class`, the same for the same seed.
pub fn generate(class: Class, n: usize, seed: u64) -> Vec<Context> {
    let mut rng = Rng::new(seed ^ (class as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..n)
        .map(|i| {
            let id = 1000 + rng.below(9000);
            let mut ctx = Flow::new(&mut rng);
            match class {
                Class::Chain => chain(&mut ctx, id),
                Class::Flag => flag(&mut ctx, id),
                Class::Empty => empty(&mut ctx, id),
                Class::Status => status(&mut ctx, id),
                Class::Threshold => threshold(&mut ctx, id),
                Class::Inbound => inbound(&mut ctx, id),
                Class::LongRange => long_range(&mut ctx, id),
                Class::FanOut => fan_out(&mut ctx, id),
                Class::Batch => batch(&mut ctx, id),
                Class::Computed => computed(&mut ctx, id),
                Class::Drift => drift(&mut ctx, id, i >= n / 2),
                Class::Interleaved => interleaved(&mut ctx, id),
                Class::Combined => combined(&mut ctx, id),
            }
        })
        .collect()
}

fn chain(f: &mut Flow<'_>, id: u64) -> Context {
    let team = f.rng.below(50);
    f.inbound("GET /chain/{id}", &format!("/chain/{id}"), &[]);
    f.call(
        "users",
        &format!("/users/{id}"),
        json!({"id": id, "team": format!("t{team}")}),
    );
    f.call(
        "teams",
        &format!("/teams/t{team}"),
        json!({"team": format!("t{team}"), "lead": id + 1}),
    );
    f.call(
        "users",
        &format!("/users/{}", id + 1),
        json!({"id": id + 1, "team": format!("t{team}")}),
    );
    f.done()
}

fn flag(f: &mut Flow<'_>, id: u64) -> Context {
    f.inbound("GET /feed/{id}", &format!("/feed/{id}"), &[]);
    let items: Vec<Value> = (0..3 + f.rng.below(4))
        .map(|k| json!({"id": id * 10 + k, "featured": f.rng.chance(0.15), "title": format!("item {k}")}))
        .collect();
    let first = items
        .iter()
        .find(|i| i["featured"] == json!(true))
        .map(|i| i["id"].clone());
    f.call(
        "items",
        &format!("/items?user={id}"),
        json!({ "items": items }),
    );
    if let Some(promo) = first {
        f.call(
            "promos",
            &format!("/promos/{promo}"),
            json!({"promo": promo}),
        );
    }
    f.call("ads", &format!("/ads/{id}"), json!({"ads": []}));
    f.done()
}

fn empty(f: &mut Flow<'_>, id: u64) -> Context {
    f.inbound("GET /cart/{id}", &format!("/cart/{id}"), &[]);
    let lines: Vec<String> = if f.rng.chance(0.4) {
        Vec::new()
    } else {
        (0..1 + f.rng.below(4))
            .map(|k| format!("sku{}", id + k * 7))
            .collect()
    };
    f.call(
        "carts",
        &format!("/carts/{id}"),
        json!({"cart": id, "skus": lines}),
    );
    if !lines.is_empty() {
        f.call(
            "prices",
            &format!("/prices?skus={}", lines.join(",")),
            json!({"total": lines.len() * 3}),
        );
    }
    f.done()
}

fn status(f: &mut Flow<'_>, id: u64) -> Context {
    f.inbound("GET /doc/{id}", &format!("/doc/{id}"), &[]);
    if f.rng.chance(0.6) {
        let owner = format!("u{}", id % 97);
        f.call(
            "docs",
            &format!("/docs/{id}"),
            json!({"doc": id, "owner": owner}),
        );
        f.call(
            "owners",
            &format!("/owners/{owner}"),
            json!({"name": owner}),
        );
    } else {
        f.call_status(
            "docs",
            &format!("/docs/{id}"),
            404,
            json!({"error": "not found"}),
        );
        f.call(
            "search",
            &format!("/suggest?q={id}"),
            json!({"results": []}),
        );
    }
    f.done()
}

fn threshold(f: &mut Flow<'_>, id: u64) -> Context {
    f.inbound("GET /score/{id}", &format!("/score/{id}"), &[]);
    let score = f.rng.below(101);
    f.call(
        "scores",
        &format!("/scores/{id}"),
        json!({"id": id, "score": score}),
    );
    if score > 50 {
        f.call(
            "offers",
            &format!("/premium/{id}"),
            json!({"tier": "premium"}),
        );
    } else {
        f.call("offers", &format!("/basic/{id}"), json!({"tier": "basic"}));
    }
    f.done()
}

fn inbound(f: &mut Flow<'_>, id: u64) -> Context {
    let expand = f.rng.chance(0.5);
    let gold = f.rng.chance(0.3);
    let plan = if gold { "gold" } else { "free" };
    f.inbound(
        "GET /orders/{id}",
        &format!("/orders/{id}?expand={expand}"),
        &[("x-plan", plan)],
    );
    f.call("orders", &format!("/orders/{id}"), json!({"order": id}));
    if expand {
        f.call("lines", &format!("/lines?order={id}"), json!({"lines": []}));
    }
    if gold {
        f.call("perks", &format!("/perks/{id}"), json!({"perks": []}));
    }
    f.done()
}

fn long_range(f: &mut Flow<'_>, id: u64) -> Context {
    f.inbound("GET /job/{id}", &format!("/job/{id}"), &[]);
    let fast = f.rng.chance(0.5);
    let lane = if fast { "fast" } else { "slow" };
    f.call("queue", &format!("/{lane}/{id}"), json!({"ok": true}));
    for step in 1..=5 {
        f.call("steps", &format!("/step{step}/{id}"), json!({"ok": true}));
    }
    f.call("queue", &format!("/{lane}-done/{id}"), json!({"ok": true}));
    f.done()
}

fn fan_out(f: &mut Flow<'_>, id: u64) -> Context {
    f.inbound("GET /album/{id}", &format!("/album/{id}"), &[]);
    let photos: Vec<u64> = (0..1 + f.rng.below(5)).map(|k| id * 10 + k).collect();
    let listed: Vec<Value> = photos.iter().map(|p| json!({"id": p})).collect();
    f.call(
        "albums",
        &format!("/albums/{id}"),
        json!({"photos": listed}),
    );
    for p in &photos {
        f.call("photos", &format!("/photos/{p}"), json!({"photo": p}));
    }
    f.call("stats", &format!("/stats/{id}"), json!({"views": 3}));
    f.done()
}

fn batch(f: &mut Flow<'_>, id: u64) -> Context {
    f.inbound("GET /team/{id}", &format!("/team/{id}"), &[]);
    let members: Vec<u64> = (0..1 + f.rng.below(6)).map(|k| id + k * 13).collect();
    f.call(
        "teams",
        &format!("/teams/{id}"),
        json!({"members": members}),
    );
    let ids: Vec<String> = members.iter().map(u64::to_string).collect();
    f.call(
        "users",
        &format!("/users?ids={}", ids.join(",")),
        json!({"users": []}),
    );
    f.done()
}

fn computed(f: &mut Flow<'_>, id: u64) -> Context {
    f.inbound("GET /acct/{id}", &format!("/acct/{id}"), &[]);
    let balance = f.rng.below(100_000) as f64 / 10.0;
    f.call(
        "accounts",
        &format!("/accounts/user-{id}"),
        json!({"number": id % 1000, "balance": balance}),
    );
    f.call(
        "invoices",
        &format!("/invoices/{:06}", id % 1000),
        json!({"invoices": []}),
    );
    f.call(
        "rates",
        &format!("/rates?amount={balance:.2}"),
        json!({"rate": 1}),
    );
    f.done()
}

fn drift(f: &mut Flow<'_>, id: u64, after: bool) -> Context {
    f.inbound("GET /flow/{id}", &format!("/flow/{id}"), &[]);
    f.call("a", &format!("/a/{id}"), json!({"id": id}));
    if after {
        f.call("d", &format!("/d/{id}"), json!({"id": id}));
    } else {
        f.call("b", &format!("/b/{id}"), json!({"id": id}));
    }
    f.call("c", &format!("/c/{id}"), json!({"id": id}));
    f.done()
}

fn interleaved(f: &mut Flow<'_>, id: u64) -> Context {
    f.inbound("GET /dash/{id}", &format!("/dash/{id}"), &[]);
    f.call("users", &format!("/users/{id}"), json!({"id": id}));
    let pair = [
        ("news", format!("/news/{id}")),
        ("alerts", format!("/alerts/{id}")),
    ];
    let first = usize::from(f.rng.chance(0.5));
    let noise = f.rng.chance(0.2).then(|| f.rng.below(1_000_000));
    f.parallel(&[
        (pair[first].0, pair[first].1.clone()),
        (pair[1 - first].0, pair[1 - first].1.clone()),
    ]);
    if let Some(n) = noise {
        f.call("noise", &format!("/noise/{n}"), json!({}));
    }
    f.call("audit", &format!("/audit/{id}"), json!({"ok": true}));
    f.done()
}

/// A call decided by two responses together, as in `if user.premium &&
/// !cart.items.is_empty()`: neither field alone decides it (`premium`
/// agrees with the call in 7 contexts of 8, a cart not empty in 5 of 8),
/// both together always do.
fn combined(f: &mut Flow<'_>, id: u64) -> Context {
    f.inbound("GET /checkout/{id}", &format!("/checkout/{id}"), &[]);
    let premium = f.rng.chance(0.5);
    f.call(
        "users",
        &format!("/users/{id}"),
        json!({"id": id, "premium": premium, "name": format!("user {id}")}),
    );
    let items: Vec<Value> = (0..f.rng.below(4))
        .map(|k| json!({"sku": id * 10 + k, "qty": 1 + f.rng.below(3)}))
        .collect();
    let filled = !items.is_empty();
    f.call("carts", &format!("/carts/{id}"), json!({ "items": items }));
    if premium && filled {
        f.call(
            "discounts",
            &format!("/discounts/{id}"),
            json!({"percent": 10}),
        );
    }
    f.call("orders", &format!("/orders/{id}"), json!({"ok": true}));
    f.done()
}

/// Builds one context: calls one after another, each starting a little
/// after the previous one ended, with random latencies.
struct Flow<'r> {
    rng: &'r mut Rng,
    ctx: Context,
    now: u64,
}

impl<'r> Flow<'r> {
    fn new(rng: &'r mut Rng) -> Self {
        Self {
            rng,
            ctx: Context::default(),
            now: 200,
        }
    }

    fn inbound(&mut self, route: &str, target: &str, headers: &[(&str, &str)]) {
        self.ctx.route = route.to_string();
        self.ctx.inbound = Request::to("GET", target, headers);
    }

    fn call(&mut self, dependency: &str, target: &str, response: Value) {
        self.call_status(dependency, target, 200, response);
    }

    fn call_status(&mut self, dependency: &str, target: &str, status: u16, response: Value) {
        let duration = 1000 + self.rng.below(2000);
        self.ctx.calls.push(Call {
            dependency: dependency.to_string(),
            request: Request::to("GET", target, &[]),
            status,
            start_us: self.now,
            duration_us: duration,
            response: Some(response.into()),
        });
        self.now += duration + 50 + self.rng.below(150);
    }

    /// Calls that start together; the next waits for both.
    fn parallel(&mut self, calls: &[(&str, String)]) {
        let start = self.now;
        let mut end = start;
        for (i, (dependency, target)) in calls.iter().enumerate() {
            let duration = 1000 + self.rng.below(2000);
            self.ctx.calls.push(Call {
                dependency: dependency.to_string(),
                request: Request::to("GET", target, &[]),
                status: 200,
                start_us: start + i as u64 * 20,
                duration_us: duration,
                response: Some(json!({"items": []}).into()),
            });
            end = end.max(start + i as u64 * 20 + duration);
        }
        self.now = end + 50;
    }

    fn done(&mut self) -> Context {
        std::mem::take(&mut self.ctx)
    }
}

/// xorshift64*: small and seeded.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_is_generated_the_same_for_a_seed() {
        for class in Class::ALL {
            let a = generate(class, 50, 7);
            assert_eq!(a, generate(class, 50, 7), "{}", class.name());
            assert_ne!(a, generate(class, 50, 8), "{}", class.name());
            assert!(a.iter().all(|c| !c.calls.is_empty()));
            assert_eq!(Class::from_name(class.name()), Some(class));
        }
    }
}
