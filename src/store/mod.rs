//! The per-core key-value store: one shard of the keyspace, owned by one core, never shared.
//!
//! Keys map to values with an optional expiry. Expiry is lazy: an expired item is removed when it
//! is next touched. Memory is accounted per item (key, value and a fixed overhead) against the
//! shard's budget (`--memory` split across cores); a write that does not fit is refused rather
//! than exceeding the budget. Lookups use the XXH3 hash the router already computed, so a key is
//! hashed once per request.

use hashbrown::HashTable;

use crate::error::RequestError;

/// Bookkeeping bytes charged per item on top of its key and value.
pub const ITEM_OVERHEAD: usize = std::mem::size_of::<Item>() + 16;

struct Item {
    hash: u64,
    key: Box<[u8]>,
    value: Vec<u8>,
    /// Milliseconds on the store's clock when the item expires; 0 = never.
    expires_at_ms: u64,
}

impl Item {
    fn charge(&self) -> usize {
        charge(self.key.len(), self.value.len())
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }
}

fn charge(key_len: usize, value_len: usize) -> usize {
    key_len + value_len + ITEM_OVERHEAD
}

/// Counters the store keeps for `Stats` and the exit report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub items: u64,
    pub bytes_used: u64,
}

/// One core's shard of the keyspace.
pub struct Store {
    items: HashTable<Item>,
    budget: usize,
    used: usize,
    stats: StoreStats,
    last_purge_ms: Option<u64>,
}

/// Minimum time between two full purges of expired items.
const PURGE_INTERVAL_MS: u64 = 1_000;

/// A value read from the store, borrowed until the next write.
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'a> {
    pub value: &'a [u8],
    /// Remaining time to live in milliseconds, 0 = none.
    pub ttl_ms: u32,
}

impl Store {
    /// A store that holds at most `budget` bytes of items.
    pub fn new(budget: usize) -> Store {
        Store {
            items: HashTable::new(),
            budget,
            used: 0,
            stats: StoreStats::default(),
            last_purge_ms: None,
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            items: self.items.len() as u64,
            bytes_used: self.used as u64,
            ..self.stats
        }
    }

    /// Looks up `key` (whose XXH3 hash is `hash`) at time `now_ms`.
    pub fn get(&mut self, hash: u64, key: &[u8], now_ms: u64) -> Option<Found<'_>> {
        self.expire_if_due(hash, key, now_ms);
        match self
            .items
            .find(hash, |it| it.hash == hash && *it.key == *key)
        {
            Some(item) => {
                self.stats.hits += 1;
                let ttl_ms = match item.expires_at_ms {
                    0 => 0,
                    at => (at - now_ms).min(u32::MAX as u64) as u32,
                };
                Some(Found {
                    value: &item.value,
                    ttl_ms,
                })
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Stores `value` under `key`, replacing any previous value. A value of the same size as the
    /// one it replaces is copied in place, without allocating.
    pub fn set(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ttl_ms: u32,
        now_ms: u64,
    ) -> Result<(), RequestError> {
        let new_charge = charge(key.len(), value.len());
        if new_charge > self.budget {
            return Err(RequestError::ItemTooLarge(new_charge));
        }
        let expires_at_ms = match ttl_ms {
            0 => 0,
            ttl => now_ms + u64::from(ttl),
        };
        if self.used + new_charge > self.budget {
            self.purge_expired(now_ms);
        }
        let existing = self
            .items
            .find_mut(hash, |it| it.hash == hash && *it.key == *key);
        if let Some(item) = existing {
            let old_charge = item.charge();
            if self.used - old_charge + new_charge > self.budget {
                return Err(RequestError::StoreFull);
            }
            if item.value.len() == value.len() {
                item.value.copy_from_slice(value);
            } else {
                item.value.clear();
                item.value.extend_from_slice(value);
                item.value.shrink_to(value.len().max(16) * 2);
            }
            item.expires_at_ms = expires_at_ms;
            self.used = self.used - old_charge + new_charge;
            return Ok(());
        }
        if self.used + new_charge > self.budget {
            return Err(RequestError::StoreFull);
        }
        let item = Item {
            hash,
            key: key.into(),
            value: value.to_vec(),
            expires_at_ms,
        };
        self.items.insert_unique(hash, item, |it| it.hash);
        self.used += new_charge;
        Ok(())
    }

    /// Removes `key`; false when it was absent (or had expired).
    pub fn delete(&mut self, hash: u64, key: &[u8], now_ms: u64) -> bool {
        self.expire_if_due(hash, key, now_ms);
        match self
            .items
            .find_entry(hash, |it| it.hash == hash && *it.key == *key)
        {
            Ok(entry) => {
                let (item, _) = entry.remove();
                self.used -= item.charge();
                true
            }
            Err(_) => false,
        }
    }

    /// Reclaims every expired item when the store is full. It walks the whole table, so it runs
    /// at most once per [`PURGE_INTERVAL_MS`]; without eviction this is the only way memory
    /// held by expired items that nobody reads comes back.
    fn purge_expired(&mut self, now_ms: u64) {
        if self
            .last_purge_ms
            .is_some_and(|at| now_ms < at + PURGE_INTERVAL_MS)
        {
            return;
        }
        self.last_purge_ms = Some(now_ms);
        let mut freed = 0;
        let mut expired = 0;
        self.items.retain(|item| {
            let keep = !item.expired(now_ms);
            if !keep {
                freed += item.charge();
                expired += 1;
            }
            keep
        });
        self.used -= freed;
        self.stats.expirations += expired;
    }

    fn expire_if_due(&mut self, hash: u64, key: &[u8], now_ms: u64) {
        if let Ok(entry) = self
            .items
            .find_entry(hash, |it| it.hash == hash && *it.key == *key)
        {
            if entry.get().expired(now_ms) {
                let (item, _) = entry.remove();
                self.used -= item.charge();
                self.stats.expirations += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::shard::key_hash;

    fn set(s: &mut Store, k: &[u8], v: &[u8], ttl: u32, now: u64) -> Result<(), RequestError> {
        s.set(key_hash(k), k, v, ttl, now)
    }

    #[test]
    fn set_get_delete() {
        let mut s = Store::new(1 << 20);
        set(&mut s, b"k", b"v1", 0, 0).unwrap();
        assert_eq!(s.get(key_hash(b"k"), b"k", 5).unwrap().value, b"v1");
        set(&mut s, b"k", b"value2", 0, 0).unwrap();
        assert_eq!(s.get(key_hash(b"k"), b"k", 5).unwrap().value, b"value2");
        assert_eq!(s.stats().bytes_used, charge(1, 6) as u64);
        assert!(s.delete(key_hash(b"k"), b"k", 5));
        assert!(!s.delete(key_hash(b"k"), b"k", 5));
        assert!(s.get(key_hash(b"k"), b"k", 5).is_none());
        let st = s.stats();
        assert_eq!((st.hits, st.misses, st.items, st.bytes_used), (2, 1, 0, 0));
    }

    #[test]
    fn ttl_counts_down_and_expires() {
        let mut s = Store::new(1 << 20);
        set(&mut s, b"k", b"v", 100, 1_000).unwrap();
        assert_eq!(s.get(key_hash(b"k"), b"k", 1_040).unwrap().ttl_ms, 60);
        assert!(s.get(key_hash(b"k"), b"k", 1_100).is_none());
        assert_eq!(s.stats().expirations, 1);
        assert_eq!(s.stats().bytes_used, 0);
    }

    #[test]
    fn budget_is_enforced() {
        let mut s = Store::new(charge(1, 10) + charge(1, 10));
        set(&mut s, b"a", &[0; 10], 0, 0).unwrap();
        set(&mut s, b"b", &[0; 10], 0, 0).unwrap();
        assert_eq!(
            set(&mut s, b"c", &[0; 10], 0, 0),
            Err(RequestError::StoreFull)
        );
        assert!(matches!(
            set(&mut s, b"d", &[0; 1000], 0, 0),
            Err(RequestError::ItemTooLarge(_))
        ));
        // Overwriting in place still fits.
        set(&mut s, b"a", &[1; 10], 0, 0).unwrap();
    }

    #[test]
    fn a_full_store_reclaims_expired_items() {
        let mut s = Store::new(charge(1, 10) * 2);
        set(&mut s, b"a", &[0; 10], 50, 0).unwrap();
        set(&mut s, b"b", &[0; 10], 50, 0).unwrap();
        assert_eq!(
            set(&mut s, b"c", &[0; 10], 0, 10),
            Err(RequestError::StoreFull)
        );
        // Both expired at 50; the purge is allowed again a second after the last one.
        set(&mut s, b"c", &[0; 10], 0, 1_010).unwrap();
        assert_eq!(s.stats().expirations, 2);
        assert_eq!(s.stats().items, 1);
    }
}
