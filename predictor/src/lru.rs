//! A map bounded by entry count that forgets what was used least recently.
//! Every table the learner grows from traffic (routes, shapes, path
//! positions, the calls of a route) is one, so a scan of junk paths
//! displaces other junk, not the routes that keep being used.
//!
//! Eviction is in batches: inserting into a full map drops the least
//! recently used sixteenth at once, so its cost (one pass and a partial
//! sort) is paid once per `cap / 16` inserts, not on each.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    used: u64,
}

#[derive(Debug, Clone)]
pub struct Lru<K, V> {
    entries: HashMap<K, Entry<V>>,
    cap: usize,
    tick: u64,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty map holding at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            cap: cap.max(1),
            tick: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries evicted so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Reads an entry without counting it as a use.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|e| &e.value)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.contains_key(key)
    }

    /// Uses an entry that is there.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|e| {
            e.used = tick;
            &mut e.value
        })
    }

    /// Uses the entry for `key`, made with `make` when absent. Making room
    /// in a full map evicts the least recently used entries into `evicted`.
    pub fn get_or_insert_with(
        &mut self,
        key: K,
        make: impl FnOnce() -> V,
        evicted: &mut Vec<(K, V)>,
    ) -> &mut V {
        self.tick += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.cap {
            self.evict(evicted);
        }
        let tick = self.tick;
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            value: make(),
            used: tick,
        });
        entry.used = tick;
        &mut entry.value
    }

    /// Drops the least recently used sixteenth (at least one entry).
    fn evict(&mut self, evicted: &mut Vec<(K, V)>) {
        let n = (self.cap / 16).max(1).min(self.entries.len());
        let mut ticks: Vec<u64> = self.entries.values().map(|e| e.used).collect();
        let (_, cutoff, _) = ticks.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        let old: Vec<K> = self
            .entries
            .iter()
            .filter(|(_, e)| e.used <= cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            if let Some(e) = self.entries.remove(&k) {
                evicted.push((k, e.value));
                self.evicted += 1;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, e)| (k, &e.value))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|e| &e.value)
    }

    /// Every entry, to change, without counting it as a use.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, e)| (k, &mut e.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_forgets_the_least_recently_used_not_the_first() {
        let mut lru: Lru<u32, u32> = Lru::new(32);
        let mut out = Vec::new();
        for k in 0..32 {
            lru.get_or_insert_with(k, || k, &mut out);
        }
        // 0 and 1 are the oldest inserted, but used again now.
        lru.get_mut(&0);
        lru.get_or_insert_with(1, || 99, &mut out);
        assert_eq!(lru.get(&1), Some(&1), "an existing entry is kept as is");
        lru.get_or_insert_with(100, || 100, &mut out);
        let mut gone: Vec<u32> = out.iter().map(|(k, _)| *k).collect();
        gone.sort_unstable();
        assert_eq!(gone, vec![2, 3], "a sixteenth of 32, the least recent");
        assert!(lru.contains_key(&0) && lru.contains_key(&1) && lru.contains_key(&100));
        assert_eq!(lru.len(), 31);
        assert_eq!(lru.evicted(), 2);
    }

    #[test]
    fn it_never_holds_more_than_its_cap() {
        let mut lru: Lru<u32, ()> = Lru::new(100);
        let mut out = Vec::new();
        for k in 0..10_000 {
            lru.get_or_insert_with(k, || (), &mut out);
            assert!(lru.len() <= 100);
        }
        assert_eq!(lru.evicted() as usize, out.len());
        assert_eq!(out.len() + lru.len(), 10_000);
        // The most recent survive.
        assert!(lru.contains_key(&9_999));
    }
}
