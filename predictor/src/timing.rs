//! When calls start and how long they take, per (route, shape, occurrence):
//! an exponentially weighted mean of the start offset (from the inbound
//! request's arrival), and the last few start offsets and durations kept
//! whole, so a prediction carries their median and 90th percentile — a
//! dependency that answers in 2 ms nine times and 40 ms the tenth is not a
//! 6 ms dependency.

/// Weight of the newest observation.
const ALPHA: f64 = 0.2;

#[derive(Debug, Clone, Copy, Default)]
pub struct Mean {
    value: f64,
    n: u32,
}

impl Mean {
    pub fn add(&mut self, x: f64) {
        self.n = self.n.saturating_add(1);
        // Plain average for the first few, then exponential.
        let w = (1.0 / f64::from(self.n)).max(ALPHA);
        self.value += w * (x - self.value);
    }

    pub fn get(&self) -> Option<f64> {
        (self.n > 0).then_some(self.value)
    }
}

/// Observations kept for quantiles.
pub const KEPT: usize = 32;

/// The last [`KEPT`] observations (µs, saturated at `u32::MAX`).
#[derive(Debug, Clone, Copy)]
pub struct Recent {
    values: [u32; KEPT],
    len: u8,
    next: u8,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            values: [0; KEPT],
            len: 0,
            next: 0,
        }
    }
}

impl Recent {
    pub fn add(&mut self, us: u64) {
        self.values[usize::from(self.next)] = u32::try_from(us).unwrap_or(u32::MAX);
        self.next = ((usize::from(self.next) + 1) % KEPT) as u8;
        self.len = (usize::from(self.len) + 1).min(KEPT) as u8;
    }

    /// How many observations are kept (at most [`KEPT`]).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `q` quantile (0..=1) of what is kept, nearest rank.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = usize::from(self.len);
        if n == 0 {
            return None;
        }
        let mut sorted = self.values;
        let kept = &mut sorted[..n];
        kept.sort_unstable();
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
        Some(u64::from(kept[rank - 1]))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CallTiming {
    pub start_us: Mean,
    pub duration_us: Mean,
    pub starts: Recent,
    pub durations: Recent,
}

impl CallTiming {
    pub fn add(&mut self, start_us: u64, duration_us: u64) {
        self.start_us.add(start_us as f64);
        self.duration_us.add(duration_us as f64);
        self.starts.add(start_us);
        self.durations.add(duration_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_of_the_last_observations() {
        let mut r = Recent::default();
        assert_eq!(r.quantile(0.5), None);
        for i in 0..9 {
            r.add(2000 + i);
        }
        r.add(40_000);
        assert_eq!(r.quantile(0.5), Some(2004));
        assert_eq!(r.quantile(0.9), Some(2008));
        assert_eq!(r.quantile(1.0), Some(40_000));
        // Only the last 32 count: a slow past is forgotten.
        for _ in 0..KEPT {
            r.add(1000);
        }
        assert_eq!(r.quantile(1.0), Some(1000));
        r.add(u64::MAX);
        assert_eq!(r.quantile(1.0), Some(u64::from(u32::MAX)));
    }
}
