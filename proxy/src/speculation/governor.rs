//! Self-control: each (route, dependency) keeps the outcomes of its last
//! speculations; when it is clear that more than
//! `speculation.max_waste_ratio` of them are wasted (or failed, or
//! cancelled) — the lower bound of a 95% Wilson interval on the waste ratio
//! is above it, so a few unlucky outcomes in a small sample do not count —
//! speculation pauses there, and resumes after a cool-down to see whether
//! precision came back, each failed probe doubling the next pause, up to a
//! limit.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Outcome;

/// Outcomes remembered per (route, dependency).
const WINDOW: usize = 50;
/// Outcomes needed before the ratio is trusted.
const MIN_SAMPLES: usize = 10;
const FIRST_PAUSE: Duration = Duration::from_secs(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Window {
    outcomes: VecDeque<bool>,
    paused_until: Option<Instant>,
    next_pause: Option<Duration>,
}

impl Window {
    fn waste_ratio(&self) -> f64 {
        self.bad() as f64 / self.outcomes.len().max(1) as f64
    }

    fn bad(&self) -> usize {
        self.outcomes.iter().filter(|good| !**good).count()
    }

    /// Whether the waste ratio is above `max` with 95% confidence (the
    /// lower bound of the Wilson score interval).
    fn clearly_above(&self, max: f64) -> bool {
        let n = self.outcomes.len() as f64;
        if n == 0.0 {
            return false;
        }
        let p = self.bad() as f64 / n;
        let z2 = Z * Z;
        let centre = p + z2 / (2.0 * n);
        let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        (centre - spread) / (1.0 + z2 / n) > max
    }
}

/// The normal quantile of a 95% two-sided interval.
const Z: f64 = 1.96;

pub(crate) struct Governor {
    max_waste_ratio: f64,
    windows: Mutex<HashMap<(String, String), Window>>,
}

/// What the governor says of one (route, dependency), for `/debug`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct State {
    pub(crate) route: String,
    pub(crate) dependency: String,
    pub(crate) samples: usize,
    pub(crate) waste_ratio: f64,
    pub(crate) paused_for_ms: Option<u64>,
}

impl Governor {
    pub(crate) fn new(max_waste_ratio: f64) -> Self {
        Self {
            max_waste_ratio,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Whether speculation on `dependency` for `route` may go on now.
    pub(crate) fn allows(&self, route: &str, dependency: &str) -> bool {
        let windows = self.windows.lock();
        let Some(w) = windows.get(&(route.to_string(), dependency.to_string())) else {
            return true;
        };
        w.paused_until.is_none_or(|until| Instant::now() >= until)
    }

    /// Counts an outcome; pauses the pair when its waste ratio is too high.
    pub(crate) fn record(&self, route: &str, dependency: &str, outcome: Outcome) {
        let mut windows = self.windows.lock();
        let w = windows
            .entry((route.to_string(), dependency.to_string()))
            .or_default();
        w.outcomes.push_back(outcome == Outcome::Used);
        if w.outcomes.len() > WINDOW {
            w.outcomes.pop_front();
        }
        let now = Instant::now();
        let resumed = w.paused_until.is_some_and(|until| now >= until);
        if w.outcomes.len() >= MIN_SAMPLES && w.clearly_above(self.max_waste_ratio) {
            if w.paused_until.is_none() || resumed {
                let pause = w.next_pause.unwrap_or(FIRST_PAUSE);
                w.paused_until = Some(now + pause);
                w.next_pause = Some((pause * 2).min(LONGEST_PAUSE));
                // The probe after this pause starts from a clean slate.
                w.outcomes.clear();
            }
        } else if resumed && w.outcomes.len() >= MIN_SAMPLES {
            // Precision came back.
            w.paused_until = None;
            w.next_pause = None;
        }
    }

    pub(crate) fn states(&self) -> Vec<State> {
        let now = Instant::now();
        let windows = self.windows.lock();
        let mut out: Vec<State> = windows
            .iter()
            .map(|((route, dependency), w)| State {
                route: route.clone(),
                dependency: dependency.clone(),
                samples: w.outcomes.len(),
                waste_ratio: w.waste_ratio(),
                paused_for_ms: w
                    .paused_until
                    .filter(|u| *u > now)
                    .map(|u| u.duration_since(now).as_millis() as u64),
            })
            .collect();
        out.sort_by(|a, b| (&a.route, &a.dependency).cmp(&(&b.route, &b.dependency)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waste_pauses_and_precision_resumes() {
        let g = Governor::new(0.25);
        for _ in 0..20 {
            g.record("r", "d", Outcome::Used);
        }
        assert!(g.allows("r", "d"));
        for _ in 0..20 {
            g.record("r", "d", Outcome::Wasted);
        }
        assert!(!g.allows("r", "d"), "20 wasted of 40 is clearly over 0.25");
        assert!(g.allows("r", "other"), "only that pair pauses");
        assert!(g.states()[0].paused_for_ms.is_some());
    }

    #[test]
    fn a_few_unlucky_outcomes_in_a_small_sample_do_not_pause() {
        // One speculation in five refused (callers with a stale token, say)
        // is within 0.25, even when the first ten happen to hold three.
        let g = Governor::new(0.25);
        for outcome in [0, 1, 0, 1, 0, 0, 1, 0, 0, 0] {
            let o = if outcome == 1 {
                Outcome::Failed
            } else {
                Outcome::Used
            };
            g.record("r", "d", o);
        }
        assert!(g.allows("r", "d"), "3 of 10 is not clearly over 0.25");
        for i in 0..40 {
            let o = if i % 5 == 4 {
                Outcome::Failed
            } else {
                Outcome::Used
            };
            g.record("r", "d", o);
        }
        assert!(g.allows("r", "d"), "one in five never pauses");
    }
}
