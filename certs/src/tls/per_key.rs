//! A cap on how many of something one key may hold at once: handshakes in flight per source
//! address (the gateway and the API), connections waiting for CONNECT per device identity (the
//! gateway). One listener's global cap alone lets a single address or a single certificate take
//! every slot; this keeps each key to its share.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Counts per key, up to `max` each. Cheap to clone (shared).
#[derive(Debug)]
pub struct PerKeyLimit<K: Eq + Hash + Copy> {
    inner: Arc<Inner<K>>,
}

#[derive(Debug)]
struct Inner<K> {
    max: usize,
    held: Mutex<HashMap<K, usize>>,
}

impl<K: Eq + Hash + Copy> Clone for PerKeyLimit<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Eq + Hash + Copy> PerKeyLimit<K> {
    /// At most `max` held per key (a `max` of zero is taken as one).
    pub fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max: max.max(1),
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Takes one slot for `key`, or `None` when the key already holds `max`. The slot is given
    /// back when the permit drops.
    pub fn try_acquire(&self, key: K) -> Option<PerKeyPermit<K>> {
        let mut held = self.inner.lock();
        let count = held.entry(key).or_insert(0);
        if *count >= self.inner.max {
            return None;
        }
        *count += 1;
        Some(PerKeyPermit {
            inner: Arc::clone(&self.inner),
            key,
        })
    }

    /// How many slots `key` holds now.
    pub fn held(&self, key: K) -> usize {
        self.inner.lock().get(&key).copied().unwrap_or(0)
    }

    /// How many keys hold a slot now (an entry is removed with its last permit, so an attack
    /// from many addresses leaves nothing behind).
    pub fn keys(&self) -> usize {
        self.inner.lock().len()
    }
}

impl<K> Inner<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        // The map stays consistent whatever panicked while holding it: each change is one step.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One slot of a [`PerKeyLimit`], given back on drop.
#[derive(Debug)]
pub struct PerKeyPermit<K: Eq + Hash + Copy> {
    inner: Arc<Inner<K>>,
    key: K,
}

impl<K: Eq + Hash + Copy> Drop for PerKeyPermit<K> {
    fn drop(&mut self) {
        let mut held = self.inner.lock();
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_gets_its_own_share_and_permits_give_it_back() {
        let limit = PerKeyLimit::new(2);
        let a1 = limit.try_acquire('a').unwrap();
        let _a2 = limit.try_acquire('a').unwrap();
        assert!(limit.try_acquire('a').is_none());
        let b1 = limit.try_acquire('b').unwrap();
        assert_eq!((limit.held('a'), limit.held('b')), (2, 1));
        drop(a1);
        assert!(limit.try_acquire('a').is_some());
        drop(b1);
        assert_eq!(limit.held('b'), 0);
        assert_eq!(limit.keys(), 1, "a key's entry goes with its last permit");
    }

    #[test]
    fn a_zero_cap_still_admits_one() {
        let limit = PerKeyLimit::new(0);
        let _first = limit.try_acquire(1u8).unwrap();
        assert!(limit.try_acquire(1u8).is_none());
    }
}
