//! A map that never holds more than a fixed number of entries, for caches in front of work that
//! can be redone (a signature check, a database read). Recently used entries stay; when it fills,
//! the entries not used since the previous fill go all at once.
//!
//! Two generations: inserts go to the young one; when it reaches half the capacity it becomes the
//! old one and the previous old one is dropped. A hit in the old generation moves the entry back
//! to the young one. That is an approximate least-recently-used policy at the cost of a hash map,
//! with no per-entry bookkeeping, and no request can grow it past the capacity, whatever keys it
//! sends.

use std::collections::HashMap;
use std::hash::Hash;

/// A bounded map; see the module documentation.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    generation: usize,
}

impl<K: Hash + Eq, V> BoundedMap<K, V> {
    /// A map holding at most `capacity` entries; below 2 it holds none (every insert is dropped).
    pub fn new(capacity: usize) -> Self {
        BoundedMap {
            young: HashMap::new(),
            old: HashMap::new(),
            generation: capacity / 2,
        }
    }

    /// The entry for `key`, marked as recently used.
    pub fn get(&mut self, key: &K) -> Option<&V>
    where
        K: Clone,
    {
        if !self.young.contains_key(key) {
            let value = self.old.remove(key)?;
            self.insert(key.clone(), value);
        }
        self.young.get(key)
    }

    /// Inserts or replaces the entry for `key`.
    pub fn insert(&mut self, key: K, value: V) {
        if self.generation == 0 {
            return;
        }
        self.old.remove(&key);
        if self.young.len() >= self.generation && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }

    /// Removes the entry for `key`, if any.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let young = self.young.remove(key);
        let old = self.old.remove(key);
        young.or(old)
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.young.retain(|key, value| keep(key, value));
        self.old.retain(|key, value| keep(key, value));
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity() {
        let mut map = BoundedMap::new(10);
        for key in 0..1_000 {
            map.insert(key, ());
            assert!(map.len() <= 10, "{} entries", map.len());
        }
        assert!(map.get(&999).is_some());
        assert!(map.get(&0).is_none());
    }

    #[test]
    fn an_entry_in_use_survives_a_flood_of_new_ones() {
        let mut map = BoundedMap::new(4);
        map.insert(-1, 1);
        for key in 0..100 {
            map.insert(key, key);
            assert_eq!(map.get(&-1), Some(&1), "after {key} inserts");
        }
        // Unread, it goes within two generations.
        for key in 100..104 {
            map.insert(key, key);
        }
        assert!(map.get(&-1).is_none());
    }

    #[test]
    fn removes_from_either_generation() {
        let mut map = BoundedMap::new(4);
        map.insert(1, "a");
        map.insert(2, "b");
        map.insert(3, "c"); // 1 and 2 are now the old generation
        assert_eq!(map.remove(&1), Some("a"));
        assert_eq!(map.remove(&3), Some("c"));
        map.retain(|key, _| *key != 2);
        assert!(map.is_empty());
    }

    #[test]
    fn capacity_zero_holds_nothing() {
        let mut map = BoundedMap::new(0);
        map.insert(1, 1);
        assert!(map.get(&1).is_none());
        assert!(map.is_empty());
    }
}
