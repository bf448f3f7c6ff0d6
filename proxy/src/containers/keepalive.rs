//! Adaptive keep-alive: the hybrid histogram policy of "Serverless in the
//! Wild" (Shahrad et al., ATC 2020), at a sidecar's time scale.
//!
//! Each dependency keeps a histogram of its idle gaps: the time from the
//! moment its last call ended (nothing in flight) to the next call. From the
//! histogram come two windows, measured from the start of an idle period:
//!
//! * **pre-warm**: the gap's low percentile (5th) less a margin. Below it a
//!   call is unlikely, so the containers stop as soon as the dependency goes
//!   idle and one is started again just before the window ends.
//! * **keep-alive**: the gap's high percentile (99th) plus a margin. After it
//!   the next call is unlikely soon, so everything stops.
//!
//! One refinement for a sidecar's bursty traffic: gaps shorter than a
//! container start (1.5 × the measured start time) cannot be bridged by
//! stopping and starting again, so they do not set the pre-warm window
//! (the 5th percentile is taken over the longer gaps); instead they set a
//! **hold**, twice their 99th percentile, for which an idle
//! instance is kept before it stops. Within a burst the instance stays; after
//! the burst it stops, and comes back before the next one.
//!
//! Until enough gaps are seen, or when most gaps fall beyond the histogram,
//! the configured fallback keep-alive applies.

use std::time::Duration;

/// Upper bound of the first bucket.
const FIRST: f64 = 0.1;
/// Each bucket is this much wider than the one before.
const GROWTH: f64 = 1.2;
/// Buckets: 100 ms up to just over an hour.
const BUCKETS: usize = 58;
/// Gaps needed before the histogram is trusted.
const MIN_SAMPLES: u32 = 10;
/// Counts halve when they reach this, so old behaviour fades.
const AGE_AT: u32 = 1000;
const LOW_PERCENTILE: f64 = 0.05;
const HIGH_PERCENTILE: f64 = 0.99;
/// The margins of the paper: pre-warm 10% early, keep alive 10% longer.
const MARGIN: f64 = 0.1;
/// Holding an idle instance a little longer costs little; stopping it just
/// before the next call of a burst costs a cold start: a wide margin.
const HOLD_FACTOR: f64 = 2.0;

/// The windows for one idle period, all from its start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Windows {
    /// With a pre-warm window: how long to keep an idle instance before
    /// stopping it (the short gaps).
    pub(crate) hold: Duration,
    /// When to have an instance ready again (zero: keep it from the start).
    pub(crate) prewarm: Duration,
    /// When to stop everything, if no call came.
    pub(crate) keep_alive: Duration,
}

/// A histogram of one dependency's idle gaps.
#[derive(Debug, Clone)]
pub(crate) struct IdleGaps {
    counts: [u32; BUCKETS],
    /// Gaps longer than the last bucket.
    beyond: u32,
    total: u32,
}

impl Default for IdleGaps {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
            beyond: 0,
            total: 0,
        }
    }
}

fn upper(bucket: usize) -> f64 {
    FIRST * GROWTH.powi(bucket as i32)
}

fn lower(bucket: usize) -> f64 {
    if bucket == 0 { 0.0 } else { upper(bucket - 1) }
}

impl IdleGaps {
    pub(crate) fn record(&mut self, gap: Duration) {
        let secs = gap.as_secs_f64();
        match (0..BUCKETS).find(|&b| secs <= upper(b)) {
            Some(b) => self.counts[b] += 1,
            None => self.beyond += 1,
        }
        self.total += 1;
        if self.total >= AGE_AT {
            for c in &mut self.counts {
                *c /= 2;
            }
            self.beyond /= 2;
            self.total = self.counts.iter().sum::<u32>() + self.beyond;
        }
    }

    pub(crate) fn samples(&self) -> u32 {
        self.total
    }

    /// The histogram as saved in the state: bucket counts, then the gaps
    /// beyond the last bucket.
    pub(crate) fn to_saved(&self) -> Vec<u32> {
        let mut out = self.counts.to_vec();
        out.push(self.beyond);
        out
    }

    /// A histogram saved by [`IdleGaps::to_saved`]; `None` if it is not one
    /// (another number of buckets: another build's histogram).
    pub(crate) fn from_saved(saved: &[u32]) -> Option<Self> {
        let (beyond, counts) = saved.split_last()?;
        let counts: [u32; BUCKETS] = counts.try_into().ok()?;
        let total = counts
            .iter()
            .chain([beyond])
            .try_fold(0u32, |sum, c| sum.checked_add(*c))?;
        Some(Self {
            counts,
            beyond: *beyond,
            total,
        })
    }

    /// The windows the histogram supports, or `None` when it is not to be
    /// trusted yet (then the fallback keep-alive applies). A pre-warm
    /// window shorter than `start` plus half again is not worth stopping
    /// for: the instance is kept from the start instead.
    pub(crate) fn windows(&self, start: Duration) -> Option<Windows> {
        if self.total < MIN_SAMPLES || self.beyond * 2 > self.total {
            return None;
        }
        let all = 0..BUCKETS;
        let keep_alive = upper(self.percentile(HIGH_PERCENTILE, all)?) * (1.0 + MARGIN);
        // Gaps a stop and a start cannot bridge.
        let bridge = start.as_secs_f64() * 1.5;
        let split = (0..BUCKETS).take_while(|&b| upper(b) <= bridge).count();
        let prewarm = self
            .percentile(LOW_PERCENTILE, split..BUCKETS)
            .map_or(0.0, |b| lower(b) * (1.0 - MARGIN));
        let prewarm = if prewarm > bridge { prewarm } else { 0.0 };
        let hold = self
            .percentile(HIGH_PERCENTILE, 0..split)
            .map_or(0.0, |b| upper(b) * HOLD_FACTOR);
        Some(Windows {
            hold: Duration::from_secs_f64(hold.min(prewarm)),
            prewarm: Duration::from_secs_f64(prewarm),
            keep_alive: Duration::from_secs_f64(keep_alive.max(prewarm)),
        })
    }

    /// The bucket holding the `p` percentile of the gaps in `buckets`.
    fn percentile(&self, p: f64, buckets: std::ops::Range<usize>) -> Option<usize> {
        let of: u32 = self.counts[buckets.clone()].iter().sum();
        if of == 0 {
            return None;
        }
        let rank = ((p * f64::from(of)).ceil() as u32).max(1);
        let mut seen = 0;
        for b in buckets {
            seen += self.counts[b];
            if seen >= rank {
                return Some(b);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: Duration = Duration::from_millis(500);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_saved_histogram_reads_back_and_a_foreign_one_does_not() {
        let mut g = IdleGaps::default();
        for i in 0..40 {
            g.record(secs(1.0 + f64::from(i)));
        }
        g.record(secs(100_000.0));
        let back = IdleGaps::from_saved(&g.to_saved()).unwrap();
        assert_eq!(back.windows(START), g.windows(START));
        assert_eq!(back.samples(), g.samples());
        assert!(IdleGaps::from_saved(&[1, 2, 3]).is_none());
        assert!(IdleGaps::from_saved(&[]).is_none());
        assert!(IdleGaps::from_saved(&vec![u32::MAX; BUCKETS + 1]).is_none());
    }

    #[test]
    fn too_few_gaps_give_no_windows() {
        let mut g = IdleGaps::default();
        for _ in 0..MIN_SAMPLES - 1 {
            g.record(secs(10.0));
        }
        assert_eq!(g.windows(START), None);
        g.record(secs(10.0));
        assert!(g.windows(START).is_some());
    }

    #[test]
    fn regular_long_gaps_stop_early_and_prewarm_before_the_next_call() {
        let mut g = IdleGaps::default();
        for i in 0..100 {
            // Gaps between 20 and 30 seconds.
            g.record(secs(20.0 + f64::from(i % 11)));
        }
        let w = g.windows(START).unwrap();
        assert!(
            w.prewarm > secs(12.0) && w.prewarm < secs(20.0),
            "pre-warm before the shortest gap: {w:?}"
        );
        assert!(
            w.keep_alive > secs(30.0) && w.keep_alive < secs(45.0),
            "keep-alive past the longest gap: {w:?}"
        );
    }

    #[test]
    fn short_gaps_keep_the_instance_from_the_start() {
        let mut g = IdleGaps::default();
        for i in 0..50 {
            g.record(secs(0.2 + f64::from(i % 5) * 0.1));
        }
        let w = g.windows(START).unwrap();
        assert_eq!(w.prewarm, Duration::ZERO);
        assert!(
            w.keep_alive >= secs(0.6) && w.keep_alive < secs(1.0),
            "{w:?}"
        );
    }

    #[test]
    fn a_rare_long_gap_does_not_set_the_prewarm_window() {
        let mut g = IdleGaps::default();
        for i in 0..99 {
            g.record(secs(5.0 + f64::from(i % 3)));
        }
        g.record(secs(0.3));
        // The 5th percentile still lies in the 5–7 s gaps.
        let w = g.windows(START).unwrap();
        assert!(w.prewarm > secs(3.0), "{w:?}");
    }

    #[test]
    fn bursts_hold_through_short_gaps_stop_after_and_prewarm_before_the_next_burst() {
        let mut g = IdleGaps::default();
        for burst in 0..20 {
            for _ in 0..5 {
                g.record(secs(0.2));
            }
            g.record(secs(8.0 + f64::from(burst % 7)));
        }
        let w = g.windows(START).unwrap();
        assert!(
            w.hold >= secs(0.3) && w.hold < secs(0.5),
            "hold through the short gaps: {w:?}"
        );
        assert!(
            w.prewarm > secs(6.0) && w.prewarm < secs(8.0),
            "ready before the shortest long gap: {w:?}"
        );
        assert!(
            w.keep_alive > secs(14.0) && w.keep_alive < secs(20.0),
            "{w:?}"
        );
    }

    #[test]
    fn gaps_beyond_the_histogram_fall_back() {
        let mut g = IdleGaps::default();
        for _ in 0..20 {
            g.record(secs(10_000.0));
        }
        assert_eq!(g.windows(START), None);
    }

    #[test]
    fn old_gaps_fade() {
        let mut g = IdleGaps::default();
        for _ in 0..900 {
            g.record(secs(30.0));
        }
        for _ in 0..6000 {
            g.record(secs(1.0));
        }
        let w = g.windows(START).unwrap();
        assert!(w.keep_alive < secs(2.0), "the new pattern wins: {w:?}");
        assert!(g.samples() < AGE_AT);
    }
}
