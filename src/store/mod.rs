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
use arena::{Arena, Header, Loc, Meta, HEADER};

/// Bytes of index per item (hash and location), counted in `bytes_used` with the chunk.
pub const INDEX_ENTRY: usize = std::mem::size_of::<Entry>();
/// Chunks the sweep looks at per call.
pub const SWEEP_SLOTS: usize = 4096;
/// Longest value `incr` and `decr` read as a number: 2^64 - 1 has 20 digits.
const MAX_NUMBER_LEN: usize = 20;

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
    /// Items ever stored (memcached's `total_items`).
    pub items_stored: u64,
    /// Chunk bytes of the items (header, key, value and the chunk's slack) plus their index
    /// entries.
    pub bytes_used: u64,
    /// Bytes of arena pages allocated, at most the budget.
    pub bytes_reserved: u64,
    pub outcomes: Outcomes,
}

/// Outcomes of memcached's commands, under the names its `stats` gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub delete_hits: u64,
    pub delete_misses: u64,
    pub incr_hits: u64,
    pub incr_misses: u64,
    pub decr_hits: u64,
    pub decr_misses: u64,
    pub cas_hits: u64,
    pub cas_misses: u64,
    pub cas_badval: u64,
    pub touch_hits: u64,
    pub touch_misses: u64,
}

/// When a written item expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    Never,
    /// This many milliseconds from now.
    In(u64),
    /// Already (memcached's negative exptime, or an absolute time in the past).
    Expired,
    /// Whatever the item had (append, prepend, incr and decr keep it).
    Keep,
}

impl Ttl {
    /// The native protocol's `ttl_ms`: 0 is none.
    pub fn from_ms(ttl_ms: u32) -> Ttl {
        match ttl_ms {
            0 => Ttl::Never,
            ms => Ttl::In(u64::from(ms)),
        }
    }
}

/// How a write treats an existing item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Store whatever was there.
    Set,
    /// Store only if there is no live item.
    Add,
    /// Store only if there is a live item.
    Replace,
    /// Add the value after the existing one (which must exist); keeps its flags and expiry.
    Append,
    /// Add the value before the existing one.
    Prepend,
}

/// A write of any kind: the native Set, memcached's storage commands and meta set.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub client_flags: u32,
    pub ttl: Ttl,
    pub mode: Mode,
    /// Store only if the item exists with this CAS unique (memcached's `cas`).
    pub compare_cas: Option<u64>,
    /// The CAS unique to give the item instead of the next one (meta `E`).
    pub new_cas: Option<u64>,
}

impl<'a> Write<'a> {
    /// A plain set: no flags, no conditions.
    pub fn set(key: &'a [u8], value: &'a [u8], ttl: Ttl) -> Write<'a> {
        Write {
            key,
            value,
            client_flags: 0,
            ttl,
            mode: Mode::Set,
            compare_cas: None,
            new_cas: None,
        }
    }
}

/// What became of a write, in memcached's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Stored {
        cas: u64,
    },
    /// The mode's condition failed (add of a live key, replace of a missing one).
    NotStored,
    /// The CAS unique did not match.
    Exists,
    /// A compare-and-swap of a missing key.
    NotFound,
}

/// What became of a conditional delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    NotFound,
    Exists,
}

/// The result of `incr`/`decr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The new value, its CAS unique, and its remaining time to live (`None` = forever).
    Value {
        value: u64,
        cas: u64,
        ttl_ms: Option<u64>,
    },
    NotFound,
    /// The value is not a decimal number of at most 20 digits.
    NotNumeric,
    Exists,
}

/// An `incr` or `decr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arith {
    pub incr: bool,
    pub delta: u64,
    pub compare_cas: Option<u64>,
    pub new_cas: Option<u64>,
    /// On a miss, create the item with this value and expiry (meta `N` and `J`).
    pub vivify: Option<(u64, Ttl)>,
    /// Change the expiry of the item counted (meta `T`).
    pub ttl: Ttl,
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
    /// The CAS unique the next modification gets. Unique per core, and a key lives on one
    /// core, so a key never sees the same value twice.
    next_cas: u64,
    /// How far apart this store's CAS uniques are: with one store per core, core i of n
    /// gives i+1, i+1+n, ... so no two items anywhere share one.
    cas_step: u64,
    /// A `flush_all` with a delay: at this time every item then present dies.
    flush_at_ms: Option<u64>,
    /// A value that append, prepend or a counter rewrites is copied here first: the chunk it
    /// lives in may be the one the new item gets. Grows to the largest value once.
    scratch: Vec<u8>,
}

/// A value read from the store, borrowed until the next write.
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'a> {
    pub value: &'a [u8],
    /// Remaining time to live in milliseconds, `None` = forever.
    pub ttl_ms: Option<u64>,
    pub client_flags: u32,
    pub cas: u64,
    /// Whether the item had been read before this read.
    pub fetched_before: bool,
    /// Seconds since the item was last read or written, before this read.
    pub idle_s: u32,
}

impl Found<'_> {
    /// The native protocol's `ttl_ms`: what remains, at most `u32::MAX`; 0 = none.
    pub fn ttl_ms_u32(&self) -> u32 {
        self.ttl_ms
            .map_or(0, |t| t.clamp(1, u32::MAX as u64) as u32)
    }
}

fn seconds(now_ms: u64) -> u32 {
    (now_ms / 1000).min(u32::MAX as u64) as u32
}

/// Parses a stored value as memcached counts it: decimal digits only.
fn parse_number(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > MAX_NUMBER_LEN {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then_some(())
            .and_then(|()| n.checked_mul(10))
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
    })
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
            next_cas: 1,
            cas_step: 1,
            flush_at_ms: None,
            scratch: Vec::new(),
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

    /// Makes this store the `index`th of `count` (one per core): its CAS uniques then never
    /// equal another store's.
    pub fn share_cas_space(&mut self, index: usize, count: usize) {
        self.next_cas = index as u64 + 1;
        self.cas_step = count.max(1) as u64;
    }

    fn take_cas(&mut self, wanted: Option<u64>) -> u64 {
        let cas = self.next_cas;
        self.next_cas += self.cas_step;
        wanted.unwrap_or(cas)
    }

    fn expiry(now_ms: u64, ttl: Ttl, kept: u64) -> u64 {
        match ttl {
            Ttl::Never => 0,
            // 1 ms is already past for a read at the same time: expired.
            Ttl::Expired => now_ms.max(1),
            Ttl::In(ms) => now_ms.saturating_add(ms.max(1)),
            Ttl::Keep => kept,
        }
    }

    /// A `flush_all` whose delay has run out takes effect.
    fn apply_due_flush(&mut self, now_ms: u64) {
        if let Some(at) = self.flush_at_ms {
            if now_ms >= at {
                self.flush_at_ms = None;
                self.arena.flushed_cas = self.next_cas - 1;
            }
        }
    }

    /// Invalidates every item now, or every item present `delay_ms` from now (memcached's
    /// `flush_all`). The memory comes back through the sweep and eviction, as for expired
    /// items, so a flush costs no more than its call.
    pub fn flush(&mut self, now_ms: u64, delay_ms: u64) {
        self.flush_at_ms = Some(now_ms.saturating_add(delay_ms));
        self.apply_due_flush(now_ms);
    }

    /// Looks up `key` (whose XXH3 hash is `hash`) at time `now_ms`.
    pub fn get(&mut self, hash: u64, key: &[u8], now_ms: u64) -> Option<Found<'_>> {
        let Some(loc) = self.live(hash, key, now_ms) else {
            self.stats.misses += 1;
            return None;
        };
        self.stats.hits += 1;
        let header = self.arena.header(loc);
        let now_s = seconds(now_ms);
        self.arena.touch(loc, now_s);
        let ttl_ms = match header.expires_at_ms {
            0 => None,
            at => Some(at - now_ms),
        };
        Some(Found {
            value: self.arena.value(loc),
            ttl_ms,
            client_flags: header.client_flags,
            cas: header.cas,
            fetched_before: header.fetched(),
            idle_s: now_s.saturating_sub(header.accessed_s),
        })
    }

    /// The item for `key` if it exists and has not expired or been flushed (a dead one is
    /// removed).
    fn live(&mut self, hash: u64, key: &[u8], now_ms: u64) -> Option<Loc> {
        self.apply_due_flush(now_ms);
        let loc = self.find(hash, key)?;
        let header = self.arena.header(loc);
        if header.expired(now_ms) || header.cas <= self.arena.flushed_cas {
            self.remove(hash, loc);
            self.stats.expirations += 1;
            return None;
        }
        Some(loc)
    }

    /// Stores `value` under `key`, replacing any previous value (the native protocol's Set).
    pub fn set(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ttl_ms: u32,
        now_ms: u64,
    ) -> Result<(), RequestError> {
        self.write(hash, &Write::set(key, value, Ttl::from_ms(ttl_ms)), now_ms)
            .map(|_| ())
    }

    /// Writes an item as `w` says. A value that needs the same chunk size as the one it
    /// replaces is rewritten in place; any other write takes a chunk from the arena. Neither
    /// touches the general heap (the index grows only with the number of items).
    pub fn write(&mut self, hash: u64, w: &Write<'_>, now_ms: u64) -> Result<Stored, RequestError> {
        let old = self.live(hash, w.key, now_ms);
        let old_header = old.map(|loc| self.arena.header(loc));
        if let Some(compare) = w.compare_cas {
            let outcomes = &mut self.stats.outcomes;
            match old_header {
                None => {
                    outcomes.cas_misses += 1;
                    return Ok(Stored::NotFound);
                }
                Some(h) if h.cas != compare => {
                    outcomes.cas_badval += 1;
                    return Ok(Stored::Exists);
                }
                Some(_) => outcomes.cas_hits += 1,
            }
        }
        let (prefix, suffix): (&[u8], &[u8]) = match (w.mode, old) {
            (Mode::Add, Some(loc)) => {
                // memcached's add of a live key counts as a use of it.
                self.arena.touch(loc, seconds(now_ms));
                return Ok(Stored::NotStored);
            }
            (Mode::Replace | Mode::Append | Mode::Prepend, None) => return Ok(Stored::NotStored),
            (Mode::Append | Mode::Prepend, Some(loc)) => {
                self.scratch.clear();
                self.scratch.extend_from_slice(self.arena.value(loc));
                if w.mode == Mode::Append {
                    (&[], w.value)
                } else {
                    (w.value, &[])
                }
            }
            _ => {
                self.scratch.clear();
                (w.value, &[])
            }
        };
        // The new value is prefix + scratch + suffix; scratch is empty unless appending.
        let scratch = std::mem::take(&mut self.scratch);
        let result = self.put(hash, w, old, old_header, [prefix, &scratch, suffix], now_ms);
        self.scratch = scratch;
        result
    }

    /// Stores the item whose value is the concatenation of `parts`, replacing `old`.
    fn put(
        &mut self,
        hash: u64,
        w: &Write<'_>,
        old: Option<Loc>,
        old_header: Option<Header>,
        parts: [&[u8]; 3],
        now_ms: u64,
    ) -> Result<Stored, RequestError> {
        let value_len = parts.iter().map(|p| p.len()).sum::<usize>();
        if value_len > MAX_VALUE_LEN {
            return Err(RequestError::ValueTooLarge(value_len));
        }
        let keep = matches!(w.mode, Mode::Append | Mode::Prepend);
        let client_flags = match old_header {
            Some(h) if keep => h.client_flags,
            _ => w.client_flags,
        };
        let ttl = if keep { Ttl::Keep } else { w.ttl };
        let cas = self.take_cas(w.new_cas);
        if ttl == Ttl::Expired {
            // Stored and already gone, as memcached does with a negative exptime.
            if let Some(loc) = old {
                self.remove(hash, loc);
            }
            self.stats.items_stored += 1;
            return Ok(Stored::Stored { cas });
        }
        let meta = Meta {
            hash,
            expires_at_ms: Self::expiry(now_ms, ttl, old_header.map_or(0, |h| h.expires_at_ms)),
            cas,
            client_flags,
            now_s: seconds(now_ms),
        };
        let len = HEADER + w.key.len() + value_len;
        let class = self
            .arena
            .class_for(len)
            .filter(|&c| self.arena.fits_budget(c))
            .ok_or(RequestError::ItemTooLarge(len))?;
        if let Some(old) = old {
            if old.class == class && parts[1].is_empty() && parts[2].is_empty() {
                self.arena.rewrite(old, &meta, parts[0]);
                self.stats.items_stored += 1;
                return Ok(Stored::Stored { cas });
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
        // A value in two parts at most: append and prepend put the old value in the middle
        // and leave one end empty.
        let (first, second) = match parts {
            [[], mid, s] => (mid, s),
            [p, mid, _] => (p, mid),
        };
        self.arena.write(loc, &meta, w.key, first, second);
        self.index
            .insert_unique(hash, Entry { hash, loc }, |e| e.hash);
        self.used += self.charge(loc);
        self.stats.items_stored += 1;
        Ok(Stored::Stored { cas })
    }

    /// Removes `key`; false when it was absent (or had expired).
    pub fn delete(&mut self, hash: u64, key: &[u8], now_ms: u64) -> bool {
        self.delete_if(hash, key, None, now_ms) == Deleted::Deleted
    }

    /// Removes `key` if it exists (and, given `compare_cas`, has that CAS unique).
    pub fn delete_if(
        &mut self,
        hash: u64,
        key: &[u8],
        compare_cas: Option<u64>,
        now_ms: u64,
    ) -> Deleted {
        let Some(loc) = self.live(hash, key, now_ms) else {
            self.stats.outcomes.delete_misses += 1;
            return Deleted::NotFound;
        };
        if compare_cas.is_some_and(|c| c != self.arena.header(loc).cas) {
            return Deleted::Exists;
        }
        self.stats.outcomes.delete_hits += 1;
        self.remove(hash, loc);
        Deleted::Deleted
    }

    /// Gives `key` a new expiry; false when it is absent.
    pub fn touch(&mut self, hash: u64, key: &[u8], ttl: Ttl, now_ms: u64) -> bool {
        let Some(loc) = self.live(hash, key, now_ms) else {
            self.stats.outcomes.touch_misses += 1;
            return false;
        };
        self.stats.outcomes.touch_hits += 1;
        if ttl == Ttl::Expired {
            self.remove(hash, loc);
            return true;
        }
        let kept = self.arena.header(loc).expires_at_ms;
        self.arena.set_expiry(loc, Self::expiry(now_ms, ttl, kept));
        self.arena.touch(loc, seconds(now_ms));
        true
    }

    /// memcached's `incr` and `decr`: 64-bit unsigned, incr wraps, decr stops at 0.
    pub fn arith(
        &mut self,
        hash: u64,
        key: &[u8],
        a: &Arith,
        now_ms: u64,
    ) -> Result<Counted, RequestError> {
        let live = self.live(hash, key, now_ms);
        let outcomes = &mut self.stats.outcomes;
        *match (a.incr, live.is_some()) {
            (true, true) => &mut outcomes.incr_hits,
            (true, false) => &mut outcomes.incr_misses,
            (false, true) => &mut outcomes.decr_hits,
            (false, false) => &mut outcomes.decr_misses,
        } += 1;
        let Some(loc) = live else {
            let Some((initial, ttl)) = a.vivify else {
                return Ok(Counted::NotFound);
            };
            return self.store_number(hash, key, initial, (ttl, 0), 0, a.new_cas, now_ms);
        };
        let header = self.arena.header(loc);
        if a.compare_cas.is_some_and(|c| c != header.cas) {
            return Ok(Counted::Exists);
        }
        let Some(n) = parse_number(self.arena.value(loc)) else {
            return Ok(Counted::NotNumeric);
        };
        let value = if a.incr {
            n.wrapping_add(a.delta)
        } else {
            n.saturating_sub(a.delta)
        };
        self.store_number(
            hash,
            key,
            value,
            (a.ttl, header.expires_at_ms),
            header.client_flags,
            a.new_cas,
            now_ms,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn store_number(
        &mut self,
        hash: u64,
        key: &[u8],
        value: u64,
        (ttl, kept_expiry): (Ttl, u64),
        client_flags: u32,
        new_cas: Option<u64>,
        now_ms: u64,
    ) -> Result<Counted, RequestError> {
        let mut digits = [0u8; MAX_NUMBER_LEN];
        let text = decimal(value, &mut digits);
        let w = Write {
            key,
            value: text,
            client_flags,
            ttl,
            mode: Mode::Set,
            compare_cas: None,
            new_cas,
        };
        let ttl_ms = match Self::expiry(now_ms, ttl, kept_expiry) {
            _ if ttl == Ttl::Expired => Some(0),
            0 => None,
            at => Some(at.saturating_sub(now_ms)),
        };
        match self.write(hash, &w, now_ms)? {
            Stored::Stored { cas } => Ok(Counted::Value { value, cas, ttl_ms }),
            _ => Ok(Counted::NotFound),
        }
    }

    /// Reclaims expired and flushed items among the next [`SWEEP_SLOTS`] chunks; call it
    /// periodically.
    pub fn sweep(&mut self, now_ms: u64) {
        self.apply_due_flush(now_ms);
        let Store {
            index,
            arena,
            used,
            chunk_sizes,
            stats,
            sweep_cursor,
            ..
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

/// Writes `n` in decimal into `buf`, returning the digits.
fn decimal(mut n: u64, buf: &mut [u8; MAX_NUMBER_LEN]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
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
        assert_eq!(s.get(key_hash(b"k"), b"k", 1_040).unwrap().ttl_ms, Some(60));
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
