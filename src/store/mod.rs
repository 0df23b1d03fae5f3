//! The per-core key-value store: one shard of the keyspace, owned by one core, never shared.
//!
//! Items live in a slab [`arena`] bounded by the shard's budget (`--memory` split across
//! cores); a hash index maps each key to its chunk, keyed by the XXH3 hash the router already
//! computed, so a key is hashed once per request. When the budget is full, a write takes the
//! chunk of an item CLOCK chose to evict. Expiry is lazy on access, plus [`Store::sweep`]: an
//! incremental pass the core runs every tick with bounded work.
//!
//! Why CLOCK: a hit costs one bit set in the item's header, with no list to relink and no
//! per-item pointers, so reads stay cheap and the index stays 16 bytes per item; it
//! approximates LRU well for cache workloads. S3-FIFO resists scans better but needs two extra
//! queues per class; a segmented LRU needs list moves on every hit.

pub mod arena;

use hashbrown::HashTable;

use crate::error::RequestError;
use crate::protocol::{MAX_KEY_LEN, MAX_VALUE_LEN};
use arena::{Arena, Header, Loc, HEADER};

/// Bytes of index per item (hash and location), counted in `bytes_used` with the chunk.
pub const INDEX_ENTRY: usize = std::mem::size_of::<Entry>();
/// Chunks the sweep looks at per call.
pub const SWEEP_SLOTS: usize = 4096;

#[derive(Clone, Copy)]
struct Entry {
    hash: u64,
    loc: Loc,
}

/// Counters the store keeps for `Stats` and the exit report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub items: u64,
    /// Chunk bytes of the items (header, key, value and the chunk's slack) plus their index
    /// entries.
    pub bytes_used: u64,
    /// Bytes of arena pages allocated, at most the budget.
    pub bytes_reserved: u64,
}

/// One core's shard of the keyspace.
pub struct Store {
    index: HashTable<Entry>,
    arena: Arena,
    used: usize,
    stats: StoreStats,
    sweep_cursor: (usize, u32),
    /// Chunk size of each arena class, for accounting while the arena is borrowed.
    chunk_sizes: Vec<usize>,
}

/// A value read from the store, borrowed until the next write.
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'a> {
    pub value: &'a [u8],
    /// Remaining time to live in milliseconds, 0 = none.
    pub ttl_ms: u32,
}

impl Store {
    /// A store whose items may use at most `budget` bytes of arena pages.
    pub fn new(budget: usize) -> Store {
        let arena = Arena::new(budget, HEADER + MAX_KEY_LEN + MAX_VALUE_LEN);
        let chunk_sizes = (0..=u8::MAX)
            .map_while(|c| arena.has_class(c).then(|| arena.chunk_size(c)))
            .collect();
        Store {
            index: HashTable::new(),
            arena,
            used: 0,
            stats: StoreStats::default(),
            sweep_cursor: (0, 0),
            chunk_sizes,
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            items: self.index.len() as u64,
            bytes_used: self.used as u64,
            bytes_reserved: self.arena.pages_bytes() as u64,
            ..self.stats
        }
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<Loc> {
        let arena = &self.arena;
        self.index
            .find(hash, |e| e.hash == hash && arena.key(e.loc) == key)
            .map(|e| e.loc)
    }

    fn charge(&self, loc: Loc) -> usize {
        self.arena.chunk_size(loc.class) + INDEX_ENTRY
    }

    /// Removes the item at `loc` (whose hash is `hash`) from the index and the arena.
    fn remove(&mut self, hash: u64, loc: Loc) {
        if let Ok(entry) = self.index.find_entry(hash, |e| e.loc == loc) {
            entry.remove();
        }
        self.used -= self.charge(loc);
        self.arena.free(loc);
    }

    /// Looks up `key` (whose XXH3 hash is `hash`) at time `now_ms`.
    pub fn get(&mut self, hash: u64, key: &[u8], now_ms: u64) -> Option<Found<'_>> {
        let Some(loc) = self.live(hash, key, now_ms) else {
            self.stats.misses += 1;
            return None;
        };
        self.stats.hits += 1;
        self.arena.touch(loc);
        let header = self.arena.header(loc);
        let ttl_ms = match header.expires_at_ms {
            0 => 0,
            at => (at - now_ms).min(u32::MAX as u64) as u32,
        };
        Some(Found {
            value: self.arena.value(loc),
            ttl_ms,
        })
    }

    /// The item for `key` if it exists and has not expired (an expired one is removed).
    fn live(&mut self, hash: u64, key: &[u8], now_ms: u64) -> Option<Loc> {
        let loc = self.find(hash, key)?;
        if self.arena.header(loc).expired(now_ms) {
            self.remove(hash, loc);
            self.stats.expirations += 1;
            return None;
        }
        Some(loc)
    }

    /// Stores `value` under `key`, replacing any previous value. A value that needs the same
    /// chunk size as the one it replaces is rewritten in place; any other write takes a chunk
    /// from the arena. Neither touches the general heap (the index grows only with the number
    /// of items).
    pub fn set(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ttl_ms: u32,
        now_ms: u64,
    ) -> Result<(), RequestError> {
        let len = HEADER + key.len() + value.len();
        let class = self
            .arena
            .class_for(len)
            .filter(|&c| self.arena.fits_budget(c))
            .ok_or(RequestError::ItemTooLarge(len))?;
        let expires_at_ms = match ttl_ms {
            0 => 0,
            ttl => now_ms + u64::from(ttl),
        };
        if let Some(old) = self.find(hash, key) {
            if old.class == class {
                self.arena.rewrite_value(old, value, expires_at_ms);
                return Ok(());
            }
            self.remove(hash, old);
        }
        let Store {
            index,
            arena,
            used,
            chunk_sizes,
            ..
        } = self;
        let mut drop_from_index = |victim: Loc, h: &Header| {
            if let Ok(entry) = index.find_entry(h.hash, |e| e.loc == victim) {
                entry.remove();
            }
            *used -= chunk_sizes[victim.class as usize] + INDEX_ENTRY;
        };
        let (loc, reclaimed) = arena
            .allocate(class, now_ms, &mut drop_from_index)
            .ok_or(RequestError::ItemTooLarge(len))?;
        self.stats.evictions += reclaimed.evicted;
        self.stats.expirations += reclaimed.expired;
        self.arena.write(loc, hash, key, value, expires_at_ms);
        self.index
            .insert_unique(hash, Entry { hash, loc }, |e| e.hash);
        self.used += self.charge(loc);
        Ok(())
    }

    /// Removes `key`; false when it was absent (or had expired).
    pub fn delete(&mut self, hash: u64, key: &[u8], now_ms: u64) -> bool {
        match self.live(hash, key, now_ms) {
            Some(loc) => {
                self.remove(hash, loc);
                true
            }
            None => false,
        }
    }

    /// Reclaims expired items among the next [`SWEEP_SLOTS`] chunks; call it periodically.
    pub fn sweep(&mut self, now_ms: u64) {
        let Store {
            index,
            arena,
            used,
            chunk_sizes,
            stats,
            sweep_cursor,
        } = self;
        *sweep_cursor = arena.sweep(*sweep_cursor, SWEEP_SLOTS, now_ms, &mut |loc, h| {
            if let Ok(entry) = index.find_entry(h.hash, |e| e.loc == loc) {
                entry.remove();
            }
            *used -= chunk_sizes[loc.class as usize] + INDEX_ENTRY;
            stats.expirations += 1;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::shard::key_hash;
    use arena::PAGE_SIZE;

    fn set(s: &mut Store, k: &[u8], v: &[u8], ttl: u32, now: u64) -> Result<(), RequestError> {
        s.set(key_hash(k), k, v, ttl, now)
    }

    fn get(s: &mut Store, k: &[u8], now: u64) -> Option<Vec<u8>> {
        s.get(key_hash(k), k, now).map(|f| f.value.to_vec())
    }

    #[test]
    fn set_get_delete_and_accounting() {
        let mut s = Store::new(4 * PAGE_SIZE);
        set(&mut s, b"k", b"v1", 0, 0).unwrap();
        assert_eq!(get(&mut s, b"k", 5).unwrap(), b"v1");
        let small = s.stats().bytes_used;
        assert_eq!(
            small as usize,
            64 + INDEX_ENTRY,
            "a tiny item takes the smallest chunk"
        );
        set(&mut s, b"k", b"value2", 0, 0).unwrap();
        assert_eq!(get(&mut s, b"k", 5).unwrap(), b"value2");
        set(&mut s, b"k", &[9; 500], 0, 0).unwrap();
        assert_eq!(get(&mut s, b"k", 5).unwrap(), vec![9; 500]);
        assert!(
            s.stats().bytes_used > small,
            "a larger value moved to a larger class"
        );
        assert!(s.delete(key_hash(b"k"), b"k", 5));
        assert!(!s.delete(key_hash(b"k"), b"k", 5));
        assert!(get(&mut s, b"k", 5).is_none());
        let st = s.stats();
        assert_eq!((st.hits, st.misses, st.items, st.bytes_used), (3, 1, 0, 0));
    }

    #[test]
    fn ttl_counts_down_expires_lazily_and_is_swept() {
        let mut s = Store::new(4 * PAGE_SIZE);
        set(&mut s, b"k", b"v", 100, 1_000).unwrap();
        assert_eq!(s.get(key_hash(b"k"), b"k", 1_040).unwrap().ttl_ms, 60);
        assert!(get(&mut s, b"k", 1_100).is_none());
        assert_eq!(s.stats().expirations, 1);
        assert_eq!(s.stats().bytes_used, 0);

        for i in 0..100u32 {
            set(
                &mut s,
                &i.to_le_bytes(),
                b"v",
                if i < 60 { 10 } else { 0 },
                2_000,
            )
            .unwrap();
        }
        // One page of the smallest class holds all of them; a few sweeps cover it.
        for _ in 0..(PAGE_SIZE / 64 / SWEEP_SLOTS + 1) {
            s.sweep(3_000);
        }
        let st = s.stats();
        assert_eq!((st.items, st.expirations), (40, 61));
        assert_eq!(st.bytes_used as usize, 40 * (64 + INDEX_ENTRY));
    }

    #[test]
    fn a_full_store_evicts_and_keeps_the_recent_items() {
        // Two pages: writing far more than fits must evict, never fail.
        let mut s = Store::new(2 * PAGE_SIZE);
        let value = [7u8; 1000];
        let n = 20_000u32;
        for i in 0..n {
            set(&mut s, format!("key:{i}").as_bytes(), &value, 0, 0).unwrap();
        }
        let st = s.stats();
        assert!(st.evictions > 0);
        assert!(st.bytes_reserved <= 2 * PAGE_SIZE as u64);
        assert_eq!(st.items + st.evictions, n as u64);
        // The most recent writes are still there.
        for i in n - 100..n {
            assert_eq!(
                get(&mut s, format!("key:{i}").as_bytes(), 0).unwrap(),
                value
            );
        }
    }

    #[test]
    fn classes_rebalance_when_the_workload_changes_size() {
        let mut s = Store::new(2 * PAGE_SIZE);
        for i in 0..10_000u32 {
            set(&mut s, &i.to_le_bytes(), &[1; 100], 0, 0).unwrap();
        }
        // Now only large values: they must find room by taking pages from the small class.
        for i in 0..100u32 {
            let key = format!("big:{i}");
            set(&mut s, key.as_bytes(), &[2; 50_000], 0, 0).unwrap();
            assert_eq!(get(&mut s, key.as_bytes(), 0).unwrap().len(), 50_000);
        }
        assert!(s.stats().bytes_reserved <= 2 * PAGE_SIZE as u64);
    }

    #[test]
    fn an_item_larger_than_the_budget_is_too_large() {
        let mut s = Store::new(PAGE_SIZE);
        assert!(matches!(
            set(&mut s, b"k", &vec![0; 1 << 20], 0, 0),
            Err(RequestError::ItemTooLarge(_))
        ));
        set(&mut s, b"k", &vec![0; 500_000], 0, 0).unwrap();
    }
}
