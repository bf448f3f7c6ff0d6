//! A bounded record of the latest items, for the debug API: the newest
//! `capacity` are kept, older ones fall off.

use std::collections::VecDeque;

use parking_lot::Mutex;

pub(crate) struct Recent<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
}

impl<T: Clone> Recent<T> {
    /// Keeps at most `capacity` items (none when zero).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity,
        }
    }

    pub(crate) fn push(&self, item: T) {
        if self.capacity == 0 {
            return;
        }
        let mut items = self.items.lock();
        if items.len() >= self.capacity {
            items.pop_front();
        }
        items.push_back(item);
    }

    /// The last `limit` items, newest first.
    pub(crate) fn newest(&self, limit: usize) -> Vec<T> {
        self.items
            .lock()
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }
}
