//! The byte budget for bodies kept for the learner: every captured body a
//! context holds is charged to one global budget until the learner is done
//! with it (the context closed and was learned from, expired, or was
//! dropped). A body that would pass the budget is not kept — its call
//! still is — so open contexts and the learner's queue hold at most
//! `contexts.max_body_bytes` of bodies, whatever the traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug)]
pub(crate) struct BodyBudget {
    held: AtomicUsize,
    limit: usize,
    refused: AtomicU64,
}

/// Bytes held against the budget, given back when dropped.
#[derive(Debug, Default)]
pub(crate) struct Charge {
    budget: Option<Arc<BodyBudget>>,
    bytes: usize,
}

impl BodyBudget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            limit,
            refused: AtomicU64::new(0),
        })
    }

    /// Holds `bytes`, or refuses (and counts it) when that would pass the
    /// limit.
    pub(crate) fn charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        if bytes == 0 {
            return Some(Charge::default());
        }
        let before = self.held.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > self.limit {
            self.held.fetch_sub(bytes, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Charge {
            budget: Some(self.clone()),
            bytes,
        })
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Bodies refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Charge {
    /// Takes over what `other` holds.
    pub(crate) fn absorb(&mut self, mut other: Charge) {
        if let Some(budget) = other.budget.take() {
            self.bytes += std::mem::take(&mut other.bytes);
            self.budget.get_or_insert(budget);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_held_until_every_charge_is_dropped_and_refused_past_the_limit() {
        let budget = BodyBudget::new(100);
        let mut a = budget.charge(60).unwrap();
        assert!(budget.charge(41).is_none(), "60 + 41 > 100");
        assert_eq!(budget.refused(), 1);
        let b = budget.charge(40).unwrap();
        assert_eq!(budget.held(), 100);
        a.absorb(b);
        assert_eq!(budget.held(), 100, "absorbing moves, never frees");
        assert!(
            budget.charge(0).is_some(),
            "nothing to hold is never refused"
        );
        drop(a);
        assert_eq!(budget.held(), 0);
    }
}
