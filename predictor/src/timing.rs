//! When calls start and how long they take, per (route, shape, occurrence):
//! exponentially weighted means of the start offset (from the inbound
//! request's arrival) and of the duration.

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

#[derive(Debug, Clone, Copy, Default)]
pub struct CallTiming {
    pub start_us: Mean,
    pub duration_us: Mean,
}
