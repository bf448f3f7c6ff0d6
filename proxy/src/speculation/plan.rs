//! The gates a prediction passes before it is acted on, as pure functions
//! of the prediction, the settings and what is known of the dependency:
//! whether to prestart its container, and whether to send it now. What
//! needs shared state (the governor, a ready instance, room in the table)
//! is asked afterwards, only for what passed here.

use std::collections::HashMap;
use std::time::Duration;

use augur_predictor::Prediction;

/// `[speculation]` and `[[route]]`, as the gates read them.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) enabled: bool,
    pub(crate) confidence: f64,
    pub(crate) horizon_us: u64,
    pub(crate) methods: Vec<String>,
    /// What a call with side effects holds back.
    pub(crate) barrier: Barrier,
    /// Per-route overrides (`[[route]]`), by route name.
    pub(crate) routes: HashMap<String, RouteRule>,
}

/// What a write holds back: speculation to the dependency written to, or
/// to every dependency (`speculation.write_barrier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Barrier {
    Dependency,
    All,
}

impl Barrier {
    /// Whether a write to `written` holds back speculation to `dependency`.
    pub(crate) fn reaches(self, written: &str, dependency: &str) -> bool {
        self == Barrier::All || written == dependency
    }
}

/// Whether a method is safe (RFC 9110 §9.2.1): GET, HEAD, OPTIONS, TRACE.
/// Any other is a write: a barrier for the reads after it.
pub(crate) fn is_safe(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// Whether `p` is expected after a predicted write whose barrier reaches
/// it: what it would read may not exist before that write, so it is not
/// sent (chained speculation never runs past a write).
pub(crate) fn past_a_write(p: &Prediction, predicted: &[Prediction], barrier: Barrier) -> bool {
    predicted.iter().any(|w| {
        !std::ptr::eq(w, p)
            && !is_safe(&w.method)
            && w.expected_start_us <= p.expected_start_us
            && barrier.reaches(&w.dependency, &p.dependency)
    })
}

/// A route's own speculation settings.
#[derive(Debug, Clone)]
pub(crate) struct RouteRule {
    pub(crate) speculate: bool,
    /// Replaces `methods` for this route.
    pub(crate) methods: Option<Vec<String>>,
}

impl Settings {
    /// The methods `route` may speculate, or `None` when it opts out.
    pub(crate) fn methods_for(&self, route: &str) -> Option<&[String]> {
        match self.routes.get(route) {
            Some(rule) if !rule.speculate => None,
            Some(rule) => Some(rule.methods.as_deref().unwrap_or(&self.methods)),
            None => Some(&self.methods),
        }
    }
}

/// What is known of a predicted call's dependency without asking it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    /// augur runs it as containers.
    pub(crate) containers: bool,
}

/// What to do about one prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decision {
    /// Start a container in time for a call due in this long.
    pub(crate) prestart_in: Option<Duration>,
    /// Send it speculatively, if the governor, the dependency and the
    /// table allow.
    pub(crate) send: bool,
}

impl Decision {
    const NOTHING: Decision = Decision {
        prestart_in: None,
        send: false,
    };
}

/// The gates for `p`, `elapsed_us` into its context: confident enough; for
/// a container dependency, a prestart whatever the method (starting a
/// container sends the call nothing); a method the route may speculate; due
/// within the horizon.
pub(crate) fn decide(
    p: &Prediction,
    elapsed_us: u64,
    settings: &Settings,
    methods: &[String],
    dependency: Facts,
) -> Decision {
    if p.probability < settings.confidence {
        return Decision::NOTHING;
    }
    let due = p.expected_start_us.saturating_sub(elapsed_us);
    let prestart_in = dependency.containers.then(|| Duration::from_micros(due));
    let send = methods.contains(&p.method) && due <= settings.horizon_us;
    Decision { prestart_in, send }
}

/// How long a real call waits for the speculation of a safe call still in
/// flight before going upstream itself: as long as the call takes nine
/// times in ten, and 5 ms more — past that, its own request is the faster
/// way. (With fewer latencies known, twice the median.)
pub(crate) fn patience(p: &Prediction) -> Duration {
    let expected = p
        .latency_p90_us
        .max(p.expected_latency_us.saturating_mul(2));
    Duration::from_micros(expected) + Duration::from_millis(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            enabled: true,
            confidence: 0.8,
            horizon_us: 200_000,
            methods: vec!["GET".into(), "HEAD".into()],
            barrier: Barrier::Dependency,
            routes: HashMap::from([
                (
                    "POST /orders".to_string(),
                    RouteRule {
                        speculate: true,
                        methods: Some(vec!["POST".into()]),
                    },
                ),
                (
                    "GET /private".to_string(),
                    RouteRule {
                        speculate: false,
                        methods: None,
                    },
                ),
            ]),
        }
    }

    #[test]
    fn a_real_call_waits_as_long_as_the_call_takes_nine_times_in_ten() {
        let mut p = prediction("GET", 1.0, 0);
        // Tight latencies: twice the median.
        assert_eq!(patience(&p), Duration::from_micros(2000 + 5000));
        // A slow tail: the 90th percentile.
        p.latency_p90_us = 40_000;
        assert_eq!(patience(&p), Duration::from_micros(40_000 + 5000));
    }

    fn prediction(method: &str, probability: f64, start_us: u64) -> Prediction {
        Prediction {
            dependency: "users".into(),
            method: method.into(),
            path: "/users/7".into(),
            query: None,
            headers: Vec::new(),
            body: None,
            probability,
            expected_start_us: start_us,
            start_p90_us: start_us,
            expected_latency_us: 1000,
            latency_p90_us: 1500,
            shape: 0,
            occurrence: 0,
        }
    }

    const STATIC: Facts = Facts { containers: false };
    const CONTAINERS: Facts = Facts { containers: true };

    #[test]
    fn routes_choose_their_methods_or_opt_out() {
        let s = settings();
        assert_eq!(s.methods_for("GET /a").unwrap(), ["GET", "HEAD"]);
        assert_eq!(s.methods_for("POST /orders").unwrap(), ["POST"]);
        assert!(s.methods_for("GET /private").is_none());
    }

    #[test]
    fn only_confident_safe_calls_within_the_horizon_are_sent() {
        let s = settings();
        let get = &s.methods;
        let sent = |p: &Prediction, at: u64| decide(p, at, &s, get, STATIC).send;
        assert!(sent(&prediction("GET", 0.9, 1000), 0));
        assert!(sent(&prediction("GET", 0.8, 1000), 0), "at the threshold");
        assert!(!sent(&prediction("GET", 0.79, 1000), 0), "not confident");
        assert!(!sent(&prediction("POST", 1.0, 1000), 0), "side effects");
        assert!(
            !sent(&prediction("GET", 1.0, 300_000), 0),
            "beyond the horizon"
        );
        assert!(
            sent(&prediction("GET", 1.0, 300_000), 150_000),
            "the horizon counts from now"
        );
        let post = ["POST".to_string()];
        assert!(
            decide(&prediction("POST", 1.0, 0), 0, &s, &post, STATIC).send,
            "a route that opts in"
        );
    }

    #[test]
    fn container_dependencies_prestart_whatever_the_method() {
        let s = settings();
        let d = decide(
            &prediction("POST", 0.9, 5_000_000),
            1_000_000,
            &s,
            &s.methods,
            CONTAINERS,
        );
        assert_eq!(
            d,
            Decision {
                prestart_in: Some(Duration::from_secs(4)),
                send: false
            }
        );
        let d = decide(&prediction("GET", 0.5, 0), 0, &s, &s.methods, CONTAINERS);
        assert_eq!(d, Decision::NOTHING, "not confident: not even a prestart");
        let d = decide(&prediction("GET", 0.9, 0), 0, &s, &s.methods, STATIC);
        assert_eq!(d.prestart_in, None, "nothing to start");
    }

    #[test]
    fn nothing_is_sent_past_a_predicted_write_it_reaches() {
        let at = |dependency: &str, method: &str, start_us: u64| Prediction {
            dependency: dependency.into(),
            ..prediction(method, 1.0, start_us)
        };
        let predicted = vec![
            at("shop", "GET", 0),
            at("shop", "POST", 10),
            at("shop", "GET", 20),
            at("mail", "GET", 30),
        ];
        let past = |i: usize, barrier| past_a_write(&predicted[i], &predicted, barrier);
        assert!(!past(0, Barrier::Dependency), "before the write");
        assert!(!past(1, Barrier::Dependency), "the write itself");
        assert!(past(2, Barrier::Dependency), "after it, same dependency");
        assert!(!past(3, Barrier::Dependency), "another dependency");
        assert!(past(3, Barrier::All), "every dependency");
        assert!(is_safe("HEAD") && !is_safe("PATCH") && !is_safe("PURGE"));
    }
}
