//! The per-core key-value store: one shard of the keyspace, owned by one core, never shared.
//!
//! Items are packed in [`segment`]s of about 1 MiB, bounded by the shard's budget (`--memory`
//! split across cores), with a header of 11 bytes for a small item without flags or TTL. The
//! [`index`] maps a key's hash to its item in 8-byte entries, keyed by the XXH3 hash the router
//! already computed, so a key is hashed once per request.
//!
//! Eviction is S3-FIFO (Yang et al., SOSP '23) over segments: new items go to a small FIFO
//! queue (a tenth of the segments), items evicted from it that were read since they were
//! written move to the main queue, the others are dropped and remembered in a ghost table, and
//! a key written again while the ghost remembers it goes straight to the main queue. The main
//! queue evicts its oldest segment, moving on the items read since they last moved (each move
//! spends one of their 2-bit read counter) and dropping the rest. One-hit wonders and scans
//! therefore leave through the small queue without pushing out what is read again. A new item
//! much smaller than the mean starts with read credit, so small items stay longer (hits per
//! byte). Items a victim moves on that overflow the main queue's open segment are packed into
//! the victim itself, so no segment is held empty for moves. A main-queue segment whose items
//! are read far less than the small queue's oldest goes before it, so a main queue of items no
//! longer read (a fill's, an old workload's) gives way to the new ones. And while nothing in
//! the small queue's two newest segments has been read and something in its oldest has, the
//! second newest goes first (for at most a memory's worth of segments in a row), so a scan's
//! misses pass through without pushing out the small queue's older items.
//!
//! Expiry is lazy on access, plus [`Store::sweep`], which the core runs every tick: it marks
//! each segment whose items have all expired (or been flushed) dead at once, and removes their
//! index entries in one sequential pass over the index, a bounded slice per call; the segments
//! are free again when the pass ends. Memory of expired items thus comes back without anyone
//! reading them, in time proportional to the index, not to the items.

pub mod index;
pub mod segment;

use crate::error::RequestError;
use crate::protocol::shard::key_hash;
use crate::protocol::{MAX_KEY_LEN, MAX_VALUE_LEN};
use index::{Entry, Index, Pos, MAX_FREQ, MAX_SEGMENTS};
use segment::{item_len, Header, Meta, Queue, Segment, State, NIL, SEGMENT_SIZE};

/// Bytes of index per item, counted in `bytes_used` with the item.
pub const INDEX_ENTRY: usize = 8;
/// The largest budget a store takes: its segments must be numbered within an index entry's 18
/// bits.
pub const MAX_BUDGET: usize = 262_143 << 20;
const _: () = assert!(MAX_BUDGET / SEGMENT_SIZE < MAX_SEGMENTS);
/// A budget too small for this many full segments gets segments of a part this size of it
/// (so the largest item it takes is smaller too).
const MIN_SEGMENTS: usize = 8;
/// ... but no smaller than this.
const MIN_SEGMENT_SIZE: usize = 64 << 10;
/// Segments the sweep checks for total expiry per call.
pub const SWEEP_SEGMENTS: usize = 256;
/// Items the sweep looks at per call in segments that hold some expired ones.
pub const SWEEP_ITEMS: usize = 4096;
/// Index buckets (8 entries each) the sweep clears of dead segments' entries per call.
pub const SWEEP_BUCKETS: usize = 32_768;
/// Longest value `incr` and `decr` read as a number: 2^64 - 1 has 20 digits.
const MAX_NUMBER_LEN: usize = 20;
/// Largest expiry an item can hold (6 bytes of milliseconds: 8,900 years).
const MAX_EXPIRY_MS: u64 = (1 << 48) - 1;
/// Ghost slots per segment of budget: enough to remember the keys of roughly as many items as
/// the cache holds when they average 512 bytes.
const GHOSTS_PER_SEGMENT: usize = 2048;
/// Victims one allocation may go through before it stops moving items on (bounds its work;
/// each move spends a read, so the work is constant per read on average).
const EVICTION_ROUNDS: usize = 16;
/// The main queue's oldest segment is evicted before the small queue's when its share of read
/// items is under the small one's divided by this (`Store::victim`).
const MAIN_READ_SHARE: u64 = 2;
/// The fewest live items a small-queue segment must hold for "none of them was read" to say
/// that it holds a scan's items (`Store::scan_victim`).
const SCAN_MIN_ITEMS: u32 = 64;
/// Groups of TTLs whose items get segments of their own, so a segment's items expire close
/// together (Segcache's TTL buckets): no TTL, then TTLs below 1 s, 2 s, 4 s, ... 2^13 s, and
/// longer.
const TTL_CLASSES: usize = 16;
/// Stores with fewer segments keep TTL classes apart only as "no TTL" and "a TTL", and those
/// with fewer than 8 not at all: open segments would take too much of the budget.
const SEGMENTS_FOR_TTL_CLASSES: usize = 64;
/// A new item at most this many hundredths of the mean live item's size starts with one read
/// of credit, and one at most `TINY_ITEM` hundredths with two: hits per byte, as memcached's
/// slab classes give (a small item's class evicts far less often, measured with
/// `tools/miss-ratio.sh`'s `stats slabs` dumps). The credit moves it from the small queue to
/// the main one unread and lets it survive passes there, so small items are kept longer than
/// large ones of the same popularity; items of one size get none.
const SMALL_ITEM: u64 = 75;
const TINY_ITEM: u64 = 30;

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
    /// Bytes of the live items in their segments (header, key and value) plus
    /// `INDEX_ENTRY` per item for its index entry.
    pub bytes_used: u64,
    /// Bytes of segments allocated, at most the budget.
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

/// One of S3-FIFO's queues: a doubly linked list of segments, oldest first.
#[derive(Debug, Clone, Copy)]
struct Fifo {
    head: u32,
    tail: u32,
    len: usize,
}

impl Fifo {
    const EMPTY: Fifo = Fifo {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// Remembers the hashes of items the small queue dropped unread: a direct-mapped table of 16-bit
/// fingerprints, so a key seen again soon after is recognised in one probe, at 2 bytes a slot.
struct Ghost {
    slots: Box<[u16]>,
}

impl Ghost {
    fn new(len: usize) -> Ghost {
        Ghost {
            slots: vec![0u16; len.next_power_of_two()].into_boxed_slice(),
        }
    }

    fn place(&self, hash: u64) -> (usize, u16) {
        let mixed = hash.rotate_left(24).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let slot = (mixed >> 16) as usize & (self.slots.len() - 1);
        (slot, ((mixed >> 48) as u16) | 1)
    }

    fn insert(&mut self, hash: u64) {
        let (slot, fp) = self.place(hash);
        self.slots[slot] = fp;
    }

    /// Whether `hash` was remembered; forgets it.
    fn take(&mut self, hash: u64) -> bool {
        let (slot, fp) = self.place(hash);
        let hit = self.slots[slot] == fp;
        if hit {
            self.slots[slot] = 0;
        }
        hit
    }
}

/// Dead segments whose index entries are being removed: those marked before the index pass now
/// under way are free when it ends; those marked since wait for the next pass.
#[derive(Default)]
struct Reclaim {
    scanning: Vec<u32>,
    pending: Vec<u32>,
    cursor: usize,
}

/// One core's shard of the keyspace.
pub struct Store {
    index: Index,
    segs: Vec<Segment>,
    max_segs: usize,
    seg_size: usize,
    free: Vec<u32>,
    queues: [Fifo; 2],
    /// The segment taking writes, per queue and TTL class.
    open: [[Option<u32>; TTL_CLASSES]; 2],
    ghost: Ghost,
    reclaim: Reclaim,
    sweep_cursor: usize,
    /// Where the item sweep goes on: a segment, an offset in it, and the segment's generation
    /// then (if it was emptied since, the sweep starts it over).
    item_cursor: (usize, u32, u32),
    /// The hash the index is keyed by; callers pass `hasher(key)` with every key.
    hasher: fn(&[u8]) -> u64,
    /// Segments `scan_victim` took before the small queue's oldest since a new segment was
    /// last read: at most the store's segments in a row.
    scan_skips: usize,
    items: u64,
    used: usize,
    stats: StoreStats,
    /// The CAS unique the next modification gets. Unique per core, and a key lives on one
    /// core, so a key never sees the same value twice.
    next_cas: u64,
    /// How far apart this store's CAS uniques are: with one store per core, core i of n
    /// gives i+1, i+1+n, ... so no two items anywhere share one.
    cas_step: u64,
    /// A `flush_all` with a delay: at this time every item then present dies.
    flush_at_ms: Option<u64>,
    /// Items whose CAS unique is at most this were flushed: dead, like expired ones.
    flushed_cas: u64,
    /// A value that append, prepend or a counter rewrites is copied here first: the place it
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

/// An item found in the index: where its entry is, the entry, and its header.
#[derive(Clone, Copy)]
struct Hit {
    pos: Pos,
    entry: Entry,
    header: Header,
}

impl Store {
    /// A store whose segments may use at most `budget` bytes, keyed by XXH3 (`key_hash`).
    pub fn new(budget: usize) -> Store {
        Store::with_hasher(budget, key_hash)
    }

    /// A store keyed by `hasher`: every call passes `hasher(key)` as the key's hash. Tests use
    /// a weak one to make keys collide.
    pub fn with_hasher(budget: usize, hasher: fn(&[u8]) -> u64) -> Store {
        let budget = budget.min(MAX_BUDGET);
        // A small budget gets smaller segments, so that evicting one never empties the cache. A
        // larger one is split into whole segments of at least SEGMENT_SIZE: the remainder is
        // spread over them rather than left out (at 16 MiB, 15 segments of 1.07 MiB, where
        // 15 of SEGMENT_SIZE would leave 0.94 MiB unused).
        let seg_size = if budget >= MIN_SEGMENTS * SEGMENT_SIZE {
            budget / (budget / SEGMENT_SIZE)
        } else {
            (budget / MIN_SEGMENTS).clamp(MIN_SEGMENT_SIZE.min(budget), SEGMENT_SIZE)
        };
        let max_segs = (budget / seg_size.max(1)).max(1);
        Store {
            index: Index::new(),
            segs: Vec::new(),
            max_segs,
            seg_size,
            free: Vec::new(),
            queues: [Fifo::EMPTY; 2],
            open: [[None; TTL_CLASSES]; 2],
            ghost: Ghost::new(max_segs * GHOSTS_PER_SEGMENT),
            reclaim: Reclaim::default(),
            sweep_cursor: 0,
            item_cursor: (0, 0, 0),
            hasher,
            scan_skips: 0,
            items: 0,
            used: 0,
            stats: StoreStats::default(),
            next_cas: 1,
            cas_step: 1,
            flush_at_ms: None,
            flushed_cas: 0,
            scratch: Vec::new(),
        }
    }

    /// The largest item (header, key and value) the store can hold.
    pub fn max_item_len(&self) -> usize {
        self.seg_size
    }

    /// The TTL class of an item that expires at `expires_at_ms` (0 = never), written at `now_ms`.
    fn ttl_class(&self, expires_at_ms: u64, now_ms: u64) -> usize {
        if expires_at_ms == 0 || self.max_segs < 8 {
            return 0;
        }
        if self.max_segs < SEGMENTS_FOR_TTL_CLASSES {
            return 1;
        }
        let seconds = expires_at_ms.saturating_sub(now_ms) >> 10;
        1 + (seconds.checked_ilog2().map_or(0, |l| l as usize + 1)).min(TTL_CLASSES - 2)
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            items: self.items,
            bytes_used: self.used as u64,
            bytes_reserved: (self.segs.len() * self.seg_size) as u64,
            ..self.stats
        }
    }

    /// Bytes of the index (outside the segment budget).
    pub fn index_bytes(&self) -> usize {
        self.index.bytes()
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<Hit> {
        let segs = &self.segs;
        let mut header = None;
        let (pos, entry) = self.index.find(hash, |e| {
            let seg = &segs[e.seg() as usize];
            let h = seg.header(e.offset());
            let same = seg.key(e.offset(), &h) == key;
            if same {
                header = Some(h);
            }
            same
        })?;
        Some(Hit {
            pos,
            entry,
            header: header?,
        })
    }

    fn seg(&self, e: Entry) -> &Segment {
        &self.segs[e.seg() as usize]
    }

    /// Removes a live item from the index and marks it dead in its segment.
    fn remove(&mut self, hit: &Hit) {
        self.index.remove(hit.pos);
        self.segs[hit.entry.seg() as usize].kill(hit.entry.offset(), &hit.header);
        self.items -= 1;
        self.used -= hit.header.item_len() + INDEX_ENTRY;
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
            Ttl::In(ms) => now_ms.saturating_add(ms.max(1)).min(MAX_EXPIRY_MS),
            Ttl::Keep => kept,
        }
    }

    /// A `flush_all` whose delay has run out takes effect.
    fn apply_due_flush(&mut self, now_ms: u64) {
        if let Some(at) = self.flush_at_ms {
            if now_ms >= at {
                self.flush_at_ms = None;
                self.flushed_cas = self.next_cas - 1;
            }
        }
    }

    /// Invalidates every item now, or every item present `delay_ms` from now (memcached's
    /// `flush_all`). The memory comes back through the sweep, as for expired items, so a flush
    /// costs no more than its call.
    pub fn flush(&mut self, now_ms: u64, delay_ms: u64) {
        self.flush_at_ms = Some(now_ms.saturating_add(delay_ms));
        self.apply_due_flush(now_ms);
    }

    /// Looks up `key` (whose hash is `hash`) at time `now_ms`.
    pub fn get(&mut self, hash: u64, key: &[u8], now_ms: u64) -> Option<Found<'_>> {
        let Some(hit) = self.live(hash, key, now_ms) else {
            self.stats.misses += 1;
            return None;
        };
        self.stats.hits += 1;
        let now_s = seconds(now_ms);
        self.read_mark(&hit, now_s);
        let h = hit.header;
        let ttl_ms = match h.expires_at_ms {
            0 => None,
            at => Some(at - now_ms),
        };
        Some(Found {
            value: self.seg(hit.entry).value(hit.entry.offset(), &h),
            ttl_ms,
            client_flags: h.client_flags,
            cas: h.cas,
            fetched_before: h.fetched(),
            idle_s: u32::from((now_s as u16).wrapping_sub(h.accessed_s)),
        })
    }

    /// A read (or memcached's add or touch of a live key): bumps the item's read counter and
    /// marks it fetched.
    fn read_mark(&mut self, hit: &Hit, now_s: u32) {
        let raised = hit.entry.freq() < MAX_FREQ;
        if raised {
            self.index
                .set(hit.pos, hit.entry.with_freq(hit.entry.freq() + 1));
        }
        let seg = &mut self.segs[hit.entry.seg() as usize];
        // Counted as the read counter counts: up to its cap.
        seg.read_items += u32::from(raised);
        seg.touch(hit.entry.offset(), &hit.header, now_s);
    }

    /// The item for `key` if it exists and has not expired or been flushed (a dead one is
    /// removed).
    fn live(&mut self, hash: u64, key: &[u8], now_ms: u64) -> Option<Hit> {
        self.apply_due_flush(now_ms);
        let hit = self.find(hash, key)?;
        if self.seg(hit.entry).state == State::Dead {
            // Counted out when its segment died; only the entry is left.
            self.index.remove(hit.pos);
            return None;
        }
        if hit.header.expired(now_ms) || hit.header.cas <= self.flushed_cas {
            self.remove(&hit);
            self.stats.expirations += 1;
            return None;
        }
        Some(hit)
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

    /// Writes an item as `w` says. A new item of the same length and layout as the one it
    /// replaces is rewritten in place; any other write appends it to a segment. Neither
    /// touches the general heap (the index grows only with the number of items).
    pub fn write(&mut self, hash: u64, w: &Write<'_>, now_ms: u64) -> Result<Stored, RequestError> {
        debug_assert_eq!(hash, (self.hasher)(w.key));
        let old = self.live(hash, w.key, now_ms);
        if let Some(compare) = w.compare_cas {
            let outcomes = &mut self.stats.outcomes;
            match old {
                None => {
                    outcomes.cas_misses += 1;
                    return Ok(Stored::NotFound);
                }
                Some(h) if h.header.cas != compare => {
                    outcomes.cas_badval += 1;
                    return Ok(Stored::Exists);
                }
                Some(_) => outcomes.cas_hits += 1,
            }
        }
        let (prefix, suffix): (&[u8], &[u8]) = match (w.mode, old) {
            (Mode::Add, Some(hit)) => {
                // memcached's add of a live key counts as a use of it.
                self.read_mark(&hit, seconds(now_ms));
                return Ok(Stored::NotStored);
            }
            (Mode::Replace | Mode::Append | Mode::Prepend, None) => return Ok(Stored::NotStored),
            (Mode::Append | Mode::Prepend, Some(hit)) => {
                self.scratch.clear();
                let value =
                    self.segs[hit.entry.seg() as usize].value(hit.entry.offset(), &hit.header);
                self.scratch.extend_from_slice(value);
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
        let result = self.put(hash, w, old, [prefix, &scratch, suffix], now_ms);
        self.scratch = scratch;
        result
    }

    /// Stores the item whose value is the concatenation of `parts`, replacing `old`.
    fn put(
        &mut self,
        hash: u64,
        w: &Write<'_>,
        old: Option<Hit>,
        parts: [&[u8]; 3],
        now_ms: u64,
    ) -> Result<Stored, RequestError> {
        let value_len = parts.iter().map(|p| p.len()).sum::<usize>();
        if value_len > MAX_VALUE_LEN {
            return Err(RequestError::ValueTooLarge(value_len));
        }
        let old_header = old.map(|h| h.header);
        let keep = matches!(w.mode, Mode::Append | Mode::Prepend);
        let client_flags = match old_header {
            Some(h) if keep => h.client_flags,
            _ => w.client_flags,
        };
        let ttl = if keep { Ttl::Keep } else { w.ttl };
        let expires_at_ms = Self::expiry(now_ms, ttl, old_header.map_or(0, |h| h.expires_at_ms));
        let cas = self.take_cas(w.new_cas);
        let meta = Meta {
            cas,
            client_flags,
            expires_at_ms,
            has_ttl: expires_at_ms != 0,
            now_s: seconds(now_ms),
        };
        let len = item_len(w.key.len(), value_len, &meta);
        if len > self.seg_size || w.key.len() > MAX_KEY_LEN {
            return Err(RequestError::ItemTooLarge(len));
        }
        if ttl == Ttl::Expired {
            // Stored and already gone, as memcached does with a negative exptime.
            if let Some(hit) = old {
                self.remove(&hit);
            }
            self.stats.items_stored += 1;
            return Ok(Stored::Stored { cas });
        }
        // A value in two parts at most: append and prepend put the old value in the middle
        // and leave one end empty.
        let (first, second) = match parts {
            [[], mid, s] => (mid, s),
            [p, mid, _] => (p, mid),
        };
        let mut queue = Queue::Small;
        let freq;
        if let Some(hit) = old {
            let same_layout = hit.header.item_len() == len
                && hit.header.has_ttl() == meta.has_ttl
                && (hit.header.client_flags != 0) == (client_flags != 0)
                && (hit.header.cas >= 1 << 48) == (cas >= 1 << 48);
            let seg = &mut self.segs[hit.entry.seg() as usize];
            if same_layout && !keep {
                seg.write(hit.entry.offset(), &meta, w.key, first, second);
                self.stats.items_stored += 1;
                return Ok(Stored::Stored { cas });
            }
            // A rewritten item stays in the queue it was in, with what it was read.
            if matches!(
                seg.state,
                State::Open(Queue::Main, _) | State::Sealed(Queue::Main)
            ) {
                queue = Queue::Main;
            }
            freq = hit.entry.freq();
            self.remove(&hit);
        } else {
            if self.ghost.take(hash) {
                queue = Queue::Main;
            }
            freq = self.size_credit(len);
        }
        let class = self.ttl_class(expires_at_ms, now_ms);
        let (seg, at) = self
            .room(queue, class, len, now_ms)
            .ok_or(RequestError::ItemTooLarge(len))?;
        let s = &mut self.segs[seg as usize];
        s.write(at, &meta, w.key, first, second);
        s.write_at += len as u32;
        s.live_items += 1;
        s.live_bytes += len as u32;
        self.items += 1;
        self.used += len + INDEX_ENTRY;
        self.stats.items_stored += 1;
        self.index_insert(hash, Entry::new(hash, seg, at, freq));
        Ok(Stored::Stored { cas })
    }

    /// The reads of credit a new item of `len` bytes starts with: more the smaller it is
    /// against the mean live item (`SMALL_ITEM`, `TINY_ITEM`).
    fn size_credit(&self, len: usize) -> u8 {
        // len / mean <= p / 100, without a division.
        let scaled = (len as u64 + INDEX_ENTRY as u64) * self.items * 100;
        let used = self.used as u64;
        if scaled <= used * TINY_ITEM {
            2
        } else if scaled <= used * SMALL_ITEM {
            1
        } else {
            0
        }
    }

    /// Adds an index entry for a key it does not have.
    fn index_insert(&mut self, hash: u64, entry: Entry) {
        let Store {
            index,
            segs,
            hasher,
            ..
        } = self;
        index.insert(hash, entry, &mut |e: Entry| {
            let seg = &segs[e.seg() as usize];
            hasher(seg.key(e.offset(), &seg.header(e.offset())))
        });
    }

    /// Room for an item of `len` bytes in the open segment of `queue` and TTL class `class`:
    /// a new one when it is full, from the free list, a new allocation while the budget allows,
    /// or an eviction.
    fn room(&mut self, queue: Queue, class: usize, len: usize, now_ms: u64) -> Option<(u32, u32)> {
        let q = queue as usize;
        for _ in 0..EVICTION_ROUNDS + 2 {
            if let Some(s) = self.open[q][class] {
                let seg = &self.segs[s as usize];
                if seg.room() >= len {
                    return Some((s, seg.write_at));
                }
                self.seal(queue, class);
            }
            let s = self.acquire(now_ms)?;
            if self.open[q][class].is_none() {
                self.segs[s as usize].state = State::Open(queue, class as u8);
                self.open[q][class] = Some(s);
            } else {
                // Moving items on (into the main queue) opened one meanwhile.
                self.free.push(s);
            }
        }
        None
    }

    /// Closes the open segment of `queue` and `class`: it joins the queue's tail.
    fn seal(&mut self, queue: Queue, class: usize) {
        let Some(s) = self.open[queue as usize][class].take() else {
            return;
        };
        let fifo = &mut self.queues[queue as usize];
        let seg = &mut self.segs[s as usize];
        seg.state = State::Sealed(queue);
        seg.prev = fifo.tail;
        seg.next = NIL;
        match fifo.tail {
            NIL => fifo.head = s,
            t => self.segs[t as usize].next = s,
        }
        fifo.tail = s;
        fifo.len += 1;
    }

    /// Closes some open segment, so that there is a victim.
    fn seal_any(&mut self) {
        for q in [Queue::Small, Queue::Main] {
            if let Some(c) = self.open[q as usize].iter().position(Option::is_some) {
                self.seal(q, c);
                return;
            }
        }
    }

    /// Takes a sealed segment out of its queue.
    fn unlink(&mut self, s: u32) {
        let State::Sealed(queue) = self.segs[s as usize].state else {
            return;
        };
        let (prev, next) = (self.segs[s as usize].prev, self.segs[s as usize].next);
        let fifo = &mut self.queues[queue as usize];
        match prev {
            NIL => fifo.head = next,
            p => self.segs[p as usize].next = next,
        }
        match next {
            NIL => fifo.tail = prev,
            n => self.segs[n as usize].prev = prev,
        }
        fifo.len -= 1;
        let seg = &mut self.segs[s as usize];
        seg.prev = NIL;
        seg.next = NIL;
    }

    /// An empty segment: a free one, a new one while the budget allows, the dead ones once
    /// their index pass is done, or else the S3-FIFO victim's, after its live items moved on.
    fn acquire(&mut self, now_ms: u64) -> Option<u32> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        if self.segs.len() < self.max_segs {
            self.segs.push(Segment::new(self.seg_size));
            return Some((self.segs.len() - 1) as u32);
        }
        if !self.reclaim.scanning.is_empty() || !self.reclaim.pending.is_empty() {
            // Expired segments are waiting for the sweep: finish it now rather than evict.
            self.finish_reclaim();
            if let Some(s) = self.free.pop() {
                return Some(s);
            }
        }
        for round in 0..EVICTION_ROUNDS {
            let last = round + 1 == EVICTION_ROUNDS;
            let victim = match self.victim() {
                Some(v) => v,
                // Every segment is open: close one.
                None => {
                    self.seal_any();
                    self.victim()?
                }
            };
            if self.evict(victim, !last, now_ms) {
                return Some(victim);
            }
            // The victim kept the items it moved on, as the main queue's open segment: the
            // next victim's may fit in it.
        }
        None
    }

    /// S3-FIFO's choice: the small queue's oldest segment while it holds at least a tenth of
    /// the segments (or main is empty), else the main queue's oldest. But when the main queue's
    /// oldest segment has under `1 / MAIN_READ_SHARE` of the share of read items the small
    /// queue's oldest has, the main one goes first: it holds what stopped being read (after a
    /// change of workload, or the items of a fill), and the small queue's items would be
    /// evicted before they had the chance to be read that it had.
    fn victim(&mut self) -> Option<u32> {
        let [small, main] = self.queues;
        let mut take_small = small.len > 0 && (small.len * 10 >= self.max_segs || main.len == 0);
        if take_small && main.len > 0 {
            let (s, m) = (
                &self.segs[small.head as usize],
                &self.segs[main.head as usize],
            );
            // m.read_items / m.live_items < s.read_items / s.live_items / MAIN_READ_SHARE
            if u64::from(m.read_items) * u64::from(s.live_items.max(1)) * MAIN_READ_SHARE
                < u64::from(s.read_items) * u64::from(m.live_items.max(1))
            {
                take_small = false;
            }
        }
        let s = if take_small {
            self.scan_victim().unwrap_or(small.head)
        } else {
            main.head
        };
        if s == NIL {
            return None;
        }
        self.unlink(s);
        Some(s)
    }

    /// The small queue's second newest segment, when it should go before the oldest: when
    /// none of the items in the two newest has been read, and some in the oldest have. A run
    /// of writes nobody reads (a scan's misses) then passes through the newest segments and
    /// leaves the small queue's older items their time to be read, where FIFO order would
    /// have pushed them out. The cost falls on unread writes that are read only later (a bulk
    /// load read after it ends): all but their newest segments go as they are written. At
    /// most as many segments in a row as the store has are taken this way, until a newer
    /// segment is read again: a longer run of unread writes is a new workload, and the
    /// oldest items give way to it as usual.
    fn scan_victim(&mut self) -> Option<u32> {
        let small = self.queues[Queue::Small as usize];
        if small.len < 3 {
            return None;
        }
        let second = self.segs[small.tail as usize].prev;
        let (n, s) = (&self.segs[small.tail as usize], &self.segs[second as usize]);
        if n.read_items > 0 || s.read_items > 0 {
            self.scan_skips = 0;
            return None;
        }
        let take = n.live_items.min(s.live_items) >= SCAN_MIN_ITEMS
            && self.segs[small.head as usize].read_items > 0
            && self.scan_skips < self.max_segs;
        self.scan_skips += usize::from(take);
        take.then_some(second)
    }

    /// Empties segment `v`: items read since they last moved go on to the main queue (when
    /// `move_on` and there is room without another eviction), expired ones are dropped as
    /// expirations, the rest are evicted; the small queue's unread ones are remembered in the
    /// ghost table. Returns whether `v` is empty: false when the main queue's open segment
    /// filled and `v` became that segment, its moved items packed at its start.
    fn evict(&mut self, v: u32, move_on: bool, now_ms: u64) -> bool {
        let from_small = self.segs[v as usize].state == State::Sealed(Queue::Small);
        let end = self.segs[v as usize].write_at;
        let mut at = 0;
        while at < end {
            let h = self.segs[v as usize].header(at);
            let len = h.item_len() as u32;
            if !h.dead() {
                self.evict_item(v, at, &h, from_small, move_on, now_ms);
            }
            at += len;
        }
        if matches!(self.segs[v as usize].state, State::Open(..)) {
            return false;
        }
        self.segs[v as usize].clear();
        true
    }

    fn evict_item(
        &mut self,
        v: u32,
        at: u32,
        h: &Header,
        from_small: bool,
        move_on: bool,
        now_ms: u64,
    ) {
        let seg = &self.segs[v as usize];
        let hash = (self.hasher)(seg.key(at, h));
        let Some((pos, entry)) = self.index.find_at(hash, Entry::new(hash, v, at, 0)) else {
            return;
        };
        let hit = Hit {
            pos,
            entry,
            header: *h,
        };
        if h.expired(now_ms) || h.cas <= self.flushed_cas {
            self.remove(&hit);
            self.stats.expirations += 1;
            return;
        }
        if move_on && entry.freq() > 0 {
            let class = self.ttl_class(h.expires_at_ms, now_ms);
            if let Some(dest) = self.move_target(v, class, h.item_len()) {
                let to = if dest == v {
                    self.segs[v as usize].compact(at, h)
                } else {
                    let (src, dst) = pair(&mut self.segs, v, dest);
                    let to = dst.append_copy(src.item(at, h), h);
                    src.kill(at, h);
                    to
                };
                let freq = entry.freq() - 1;
                self.segs[dest as usize].read_items += u32::from(freq > 0);
                self.index.set(pos, entry.moved(dest, to).with_freq(freq));
                return;
            }
        }
        self.remove(&hit);
        self.stats.evictions += 1;
        if from_small {
            self.ghost.insert(hash);
        }
    }

    /// Where an item of TTL class `class` and `len` bytes that victim `v` moves on goes: the
    /// main queue's open segment of that class if it has room, else `v` itself, which then
    /// becomes that open segment (the full one is sealed) and takes its moved items packed at
    /// its start. Every item before the current one has left `v` by then, and each moves down
    /// at most to where it was, so no byte not yet read is overwritten, and moving needs no
    /// segment held empty for it. `None` when neither has room (`v` already took another
    /// class's items, or the store is too small to keep a victim open).
    fn move_target(&mut self, v: u32, class: usize, len: usize) -> Option<u32> {
        let main = Queue::Main as usize;
        if let Some(s) = self.open[main][class] {
            if self.segs[s as usize].room() >= len {
                return Some(s);
            }
        }
        if matches!(self.segs[v as usize].state, State::Open(..)) || self.max_segs < 4 {
            return None;
        }
        self.seal(Queue::Main, class);
        let seg = &mut self.segs[v as usize];
        seg.begin_compaction();
        seg.state = State::Open(Queue::Main, class as u8);
        self.open[main][class] = Some(v);
        Some(v)
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
        let Some(hit) = self.live(hash, key, now_ms) else {
            self.stats.outcomes.delete_misses += 1;
            return Deleted::NotFound;
        };
        if compare_cas.is_some_and(|c| c != hit.header.cas) {
            return Deleted::Exists;
        }
        self.stats.outcomes.delete_hits += 1;
        self.remove(&hit);
        Deleted::Deleted
    }

    /// Gives `key` a new expiry; false when it is absent.
    pub fn touch(&mut self, hash: u64, key: &[u8], ttl: Ttl, now_ms: u64) -> bool {
        let Some(hit) = self.live(hash, key, now_ms) else {
            self.stats.outcomes.touch_misses += 1;
            return false;
        };
        self.stats.outcomes.touch_hits += 1;
        let h = hit.header;
        let expires_at_ms = match ttl {
            Ttl::Expired => {
                self.remove(&hit);
                return true;
            }
            ttl => Self::expiry(now_ms, ttl, h.expires_at_ms),
        };
        self.read_mark(&hit, seconds(now_ms));
        if h.has_ttl() {
            let seg = &mut self.segs[hit.entry.seg() as usize];
            seg.set_expiry(hit.entry.offset(), &h, expires_at_ms);
        } else if expires_at_ms != 0 {
            // No room for an expiry: write the item again with one, keeping its CAS unique.
            self.scratch.clear();
            let value = self.segs[hit.entry.seg() as usize].value(hit.entry.offset(), &h);
            self.scratch.extend_from_slice(value);
            let scratch = std::mem::take(&mut self.scratch);
            let w = Write {
                key,
                value: &scratch,
                client_flags: h.client_flags,
                ttl,
                mode: Mode::Set,
                compare_cas: None,
                new_cas: Some(h.cas),
            };
            // Taking a CAS unique for a touch would skip one: give it back.
            let next = self.next_cas;
            let _ = self.put(hash, &w, Some(hit), [&scratch, &[], &[]], now_ms);
            self.next_cas = next;
            self.stats.items_stored -= 1;
            self.scratch = scratch;
        }
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
        let Some(hit) = live else {
            let Some((initial, ttl)) = a.vivify else {
                return Ok(Counted::NotFound);
            };
            return self.store_number(hash, key, initial, (ttl, 0), 0, a.new_cas, now_ms);
        };
        let header = hit.header;
        if a.compare_cas.is_some_and(|c| c != header.cas) {
            return Ok(Counted::Exists);
        }
        let Some(n) = parse_number(self.seg(hit.entry).value(hit.entry.offset(), &header)) else {
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

    /// Reclaims the memory of expired and flushed items without reads, in bounded work: marks
    /// dead each of the next [`SWEEP_SEGMENTS`] segments whose items have all expired or been
    /// flushed (and frees at once those with no live item left), then clears the next
    /// [`SWEEP_BUCKETS`] index buckets of entries into dead segments. Call it periodically.
    pub fn sweep(&mut self, now_ms: u64) {
        self.apply_due_flush(now_ms);
        let total = self.segs.len();
        for _ in 0..SWEEP_SEGMENTS.min(total) {
            let s = self.sweep_cursor % total;
            self.sweep_cursor = (s + 1) % total;
            let seg = &self.segs[s];
            let in_use = matches!(seg.state, State::Open(..) | State::Sealed(_));
            if !in_use || seg.write_at == 0 {
                continue;
            }
            let expired = seg.expires_by != u64::MAX && seg.expires_by <= now_ms;
            let flushed = seg.max_cas <= self.flushed_cas;
            if seg.live_items == 0 || expired || flushed {
                self.kill_segment(s as u32);
            }
        }
        self.sweep_index(SWEEP_BUCKETS);
        self.sweep_items(SWEEP_ITEMS, now_ms);
    }

    /// Frees expired items one by one in segments that also hold live ones, `max_items` items
    /// (or segments skipped) per call, going round the segments.
    fn sweep_items(&mut self, max_items: usize, now_ms: u64) {
        let (mut s, mut at, generation) = self.item_cursor;
        if self
            .segs
            .get(s)
            .is_some_and(|seg| seg.generation != generation)
        {
            at = 0;
        }
        for _ in 0..max_items {
            if s >= self.segs.len() {
                (s, at) = (0, 0);
                if self.segs.is_empty() {
                    break;
                }
            }
            let seg = &self.segs[s];
            let in_use = matches!(seg.state, State::Open(..) | State::Sealed(_));
            if !in_use || seg.min_expiry > now_ms || at >= seg.write_at {
                (s, at) = (s + 1, 0);
                continue;
            }
            let h = seg.header(at);
            if !h.dead() && h.expired(now_ms) {
                let hash = (self.hasher)(seg.key(at, &h));
                if let Some((pos, entry)) =
                    self.index.find_at(hash, Entry::new(hash, s as u32, at, 0))
                {
                    self.remove(&Hit {
                        pos,
                        entry,
                        header: h,
                    });
                    self.stats.expirations += 1;
                }
            }
            at += h.item_len() as u32;
        }
        let generation = self.segs.get(s).map_or(0, |seg| seg.generation);
        self.item_cursor = (s, at, generation);
    }

    /// Takes a segment whose items are all dead out of use: counted out now, free once no
    /// index entry points into it.
    fn kill_segment(&mut self, s: u32) {
        let seg = &self.segs[s as usize];
        let (items, bytes) = (seg.live_items, seg.live_bytes as usize);
        match seg.state {
            State::Open(q, c) => self.open[q as usize][usize::from(c)] = None,
            State::Sealed(_) => self.unlink(s),
            State::Free | State::Dead => return,
        }
        self.items -= u64::from(items);
        self.used -= bytes + items as usize * INDEX_ENTRY;
        self.stats.expirations += u64::from(items);
        if items == 0 {
            self.segs[s as usize].clear();
            self.free.push(s);
            return;
        }
        self.segs[s as usize].state = State::Dead;
        self.reclaim.pending.push(s);
    }

    /// Removes index entries into dead segments, `max_buckets` buckets at a time; a segment
    /// is free when a pass that began after it died ends.
    fn sweep_index(&mut self, max_buckets: usize) {
        let r = &mut self.reclaim;
        if r.scanning.is_empty() {
            if r.pending.is_empty() {
                return;
            }
            std::mem::swap(&mut r.scanning, &mut r.pending);
            r.cursor = 0;
        }
        let segs = &self.segs;
        let (next, done) = self
            .index
            .sweep(self.reclaim.cursor, max_buckets, &mut |e| {
                segs[e.seg() as usize].state == State::Dead
            });
        self.reclaim.cursor = next;
        if done {
            for s in std::mem::take(&mut self.reclaim.scanning) {
                self.segs[s as usize].clear();
                self.free.push(s);
            }
        }
    }

    /// Runs the index pass to its end, and one more for segments that died during it.
    fn finish_reclaim(&mut self) {
        for _ in 0..2 {
            if self.reclaim.scanning.is_empty() && self.reclaim.pending.is_empty() {
                break;
            }
            self.sweep_index(usize::MAX);
        }
    }
}

/// Two distinct segments of `segs`, the first shared and the second mutable.
fn pair(segs: &mut [Segment], a: u32, b: u32) -> (&mut Segment, &mut Segment) {
    let (a, b) = (a as usize, b as usize);
    debug_assert_ne!(a, b);
    if a < b {
        let (left, right) = segs.split_at_mut(b);
        (&mut left[a], &mut right[0])
    } else {
        let (left, right) = segs.split_at_mut(a);
        (&mut right[0], &mut left[b])
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

    const MIB: usize = 1 << 20;

    fn set(s: &mut Store, k: &[u8], v: &[u8], ttl: u32, now: u64) -> Result<(), RequestError> {
        s.set(key_hash(k), k, v, ttl, now)
    }

    fn get(s: &mut Store, k: &[u8], now: u64) -> Option<Vec<u8>> {
        s.get(key_hash(k), k, now).map(|f| f.value.to_vec())
    }

    fn plain(cas: u64, ttl: bool) -> Meta {
        Meta {
            cas,
            client_flags: 0,
            expires_at_ms: u64::from(ttl),
            has_ttl: ttl,
            now_s: 0,
        }
    }

    /// Sweeps until the index pass that frees dead segments is over.
    fn sweep_fully(s: &mut Store, now: u64) {
        for _ in 0..1000 {
            s.sweep(now);
            if s.reclaim.scanning.is_empty() && s.reclaim.pending.is_empty() {
                return;
            }
        }
        panic!("the sweep never finished");
    }

    #[test]
    fn set_get_delete_and_accounting() {
        let mut s = Store::new(4 * MIB);
        set(&mut s, b"k", b"v1", 0, 0).unwrap();
        assert_eq!(get(&mut s, b"k", 5).unwrap(), b"v1");
        let small = s.stats().bytes_used as usize;
        assert_eq!(small, item_len(1, 2, &plain(1, false)) + INDEX_ENTRY);
        assert_eq!(
            small,
            1 + 2 + 11 + 8,
            "an 11-byte header and an 8-byte entry"
        );
        set(&mut s, b"k", b"v2", 0, 0).unwrap();
        assert_eq!(s.stats().bytes_used as usize, small, "rewritten in place");
        set(&mut s, b"k", &[9; 500], 0, 0).unwrap();
        assert_eq!(get(&mut s, b"k", 5).unwrap(), vec![9; 500]);
        assert_eq!(
            s.stats().bytes_used as usize,
            item_len(1, 500, &plain(3, false)) + INDEX_ENTRY
        );
        assert!(s.delete(key_hash(b"k"), b"k", 5));
        assert!(!s.delete(key_hash(b"k"), b"k", 5));
        assert!(get(&mut s, b"k", 5).is_none());
        let st = s.stats();
        assert_eq!((st.hits, st.misses, st.items, st.bytes_used), (2, 1, 0, 0));
    }

    #[test]
    fn ttl_counts_down_and_expires_lazily() {
        let mut s = Store::new(4 * MIB);
        set(&mut s, b"k", b"v", 100, 1_000).unwrap();
        assert_eq!(s.get(key_hash(b"k"), b"k", 1_040).unwrap().ttl_ms, Some(60));
        assert!(get(&mut s, b"k", 1_100).is_none());
        assert_eq!(s.stats().expirations, 1);
        assert_eq!(s.stats().bytes_used, 0);
    }

    /// Eager expiry: a store filled with items of a short TTL gets its memory back without a
    /// read, and the next writes fit without evicting the items that do not expire.
    #[test]
    fn expired_segments_come_back_without_reads() {
        let mut s = Store::new(16 * MIB);
        for i in 0..100u32 {
            set(&mut s, format!("live:{i}").as_bytes(), &[1; 100], 0, 0).unwrap();
        }
        // Items that expire at 2 s, written in the first second, until all but two segments
        // are taken.
        let value = [2u8; 1000];
        let mut i = 0u32;
        while s.segs.len() < s.max_segs - 1 {
            let now = u64::from(i / 20);
            set(&mut s, format!("ttl:{i}").as_bytes(), &value, 2_000, now).unwrap();
            i += 1;
        }
        let before = s.stats();
        assert_eq!(before.evictions, 0);
        assert!(before.bytes_used > 12 * MIB as u64, "{before:?}");
        sweep_fully(&mut s, 2_999);
        let after = s.stats();
        assert_eq!(after.items, 100, "{after:?}");
        assert!(
            after.bytes_used < 20_000,
            "bytes used back near zero: {after:?}"
        );
        assert_eq!(after.expirations, u64::from(i));
        assert!(
            s.free.len() >= s.max_segs - 3,
            "{} free segments",
            s.free.len()
        );
        // As much again evicts nothing.
        for j in 0..i {
            set(&mut s, format!("new:{j}").as_bytes(), &value, 0, 3_000).unwrap();
        }
        assert_eq!(s.stats().evictions, 0);
        for i in 0..100u32 {
            assert!(get(&mut s, format!("live:{i}").as_bytes(), 3_000).is_some());
        }
    }

    #[test]
    fn flush_all_is_reclaimed_by_the_sweep() {
        let mut s = Store::new(8 * MIB);
        for i in 0..20_000u32 {
            set(&mut s, &i.to_le_bytes(), &[1; 200], 0, 0).unwrap();
        }
        s.flush(10, 0);
        assert!(get(&mut s, &5u32.to_le_bytes(), 10).is_none());
        sweep_fully(&mut s, 10);
        let st = s.stats();
        assert_eq!((st.items, st.bytes_used), (0, 0), "{st:?}");
        assert_eq!(s.index.len(), 0);
        set(&mut s, b"after", b"v", 0, 10).unwrap();
        assert_eq!(get(&mut s, b"after", 10).unwrap(), b"v");
    }

    #[test]
    fn a_full_store_evicts_and_keeps_the_recent_items() {
        let mut s = Store::new(4 * MIB);
        let value = [7u8; 1000];
        let n = 20_000u32;
        for i in 0..n {
            set(&mut s, format!("key:{i}").as_bytes(), &value, 0, 0).unwrap();
        }
        let st = s.stats();
        assert!(st.evictions > 0);
        assert!(st.bytes_reserved <= 4 * MIB as u64);
        assert_eq!(st.items + st.evictions, u64::from(n));
        for i in n - 100..n {
            assert_eq!(
                get(&mut s, format!("key:{i}").as_bytes(), 0).unwrap(),
                value
            );
        }
    }

    /// S3-FIFO's point: a one-time pass over as many cold keys as the whole cache holds goes
    /// through the small queue and leaves the keys that were read, however often they were.
    #[test]
    fn a_scan_does_not_push_out_the_items_read_again() {
        for reads in 1..=3 {
            let mut s = Store::new(32 * MIB);
            let value = [3u8; 400];
            let hot = 20_000u32; // about 9 MiB
            for round in 0..=reads {
                for i in 0..hot {
                    let k = format!("hot:{i}");
                    if get(&mut s, k.as_bytes(), 0).is_none() {
                        set(&mut s, k.as_bytes(), &value, 0, 0).unwrap();
                    }
                }
                assert!(round == 0 || s.stats().evictions == 0);
            }
            // The scan: keys written once and never read, as many as 32 MiB holds (about
            // 75,000).
            for i in 0..80_000u32 {
                set(&mut s, format!("cold:{i}").as_bytes(), &value, 0, 0).unwrap();
            }
            assert!(s.stats().evictions > 0);
            let kept = present(&mut s, "hot", 0..hot);
            assert!(
                kept > hot * 99 / 100,
                "read {reads} times: {kept} of {hot} hot keys kept"
            );
        }
    }

    const SCAN_VALUE: [u8; 1000] = [9u8; 1000];

    /// Writes `n` keys `prefix:i` of 1,000-byte values, reading every fourth right after it
    /// is written when `read`.
    fn write_keys(s: &mut Store, prefix: &str, n: u32, read: bool) {
        for i in 0..n {
            let k = format!("{prefix}:{i}");
            set(s, k.as_bytes(), &SCAN_VALUE, 0, 0).unwrap();
            if read && i % 4 == 0 {
                assert!(get(s, k.as_bytes(), 0).is_some());
            }
        }
    }

    /// How many of the keys `prefix:i`, `i` in `ids`, are still there.
    fn present(s: &mut Store, prefix: &str, ids: impl Iterator<Item = u32>) -> u32 {
        ids.map(|i| u32::from(get(s, format!("{prefix}:{i}").as_bytes(), 0).is_some()))
            .sum()
    }

    /// A 16 MiB store (15 segments of about 1,030 such items) given 8,000 recent keys, every
    /// fourth read, then `cold` keys nobody reads; with how many of the 6,000 unread recent
    /// keys are still there.
    fn recent_then_cold(cold: u32) -> (Store, u32) {
        let mut s = Store::new(16 * MIB);
        write_keys(&mut s, "recent", 8_000, true);
        write_keys(&mut s, "cold", cold, false);
        check_counts(&s);
        let kept = unread_kept(&mut s, "recent");
        (s, kept)
    }

    /// How many of the 6,000 keys `write_keys(_, prefix, 8_000, true)` did not read are still
    /// there.
    fn unread_kept(s: &mut Store, prefix: &str) -> u32 {
        present(s, prefix, (0..8_000).filter(|i| i % 4 != 0))
    }

    /// A scan's misses written into a full store leave the small queue's unread items, which
    /// FIFO order would mostly have pushed out (1,901 of 6,000 stay without the rule; the read
    /// ones would have moved on): the scan's own segments go first, once two in a row were
    /// not read.
    #[test]
    fn a_scan_leaves_the_small_queues_unread_items_their_time() {
        // About 8 segments of recent items, then 12 of cold ones.
        let (_, kept) = recent_then_cold(12_000);
        assert!(kept >= 6_000 * 9 / 10, "{kept} of 6,000 kept");
    }

    /// ... but a run of unread writes longer than the store is the new workload: past a
    /// memory's worth, the oldest items go as usual and the newest stay. Once newer items are
    /// read again, the next scan is let through as before.
    #[test]
    fn a_long_run_of_unread_writes_displaces_the_old_items() {
        let (mut s, kept) = recent_then_cold(60_000);
        assert!(kept < 6_000 / 10, "{kept} of 6,000 kept");
        assert_eq!(present(&mut s, "cold", 55_000..60_000), 5_000);
        // Read items again, then another scan: the rule takes its segments again.
        write_keys(&mut s, "again", 8_000, true);
        write_keys(&mut s, "cold2", 12_000, false);
        let kept = unread_kept(&mut s, "again");
        assert!(
            kept >= 6_000 * 9 / 10,
            "after the second scan {kept} of 6,000 kept"
        );
    }

    /// Every segment's live counts match its items not marked dead, and they add up to the
    /// store's.
    fn check_counts(s: &Store) {
        let (mut items, mut bytes) = (0u64, 0usize);
        for seg in &s.segs {
            if !matches!(seg.state, State::Open(..) | State::Sealed(_)) {
                continue;
            }
            let (mut n, mut b, mut at) = (0u32, 0u32, 0u32);
            while at < seg.write_at {
                let h = seg.header(at);
                if !h.dead() {
                    n += 1;
                    b += h.item_len() as u32;
                }
                at += h.item_len() as u32;
            }
            assert_eq!((n, b), (seg.live_items, seg.live_bytes));
            items += u64::from(n);
            bytes += b as usize;
        }
        assert_eq!(items, s.items);
        assert_eq!(bytes + s.items as usize * INDEX_ENTRY, s.used);
        assert_eq!(s.index.len() as u64, s.items);
    }

    /// Items that are all read again keep moving on when their segment is evicted, more than
    /// the main queue's open segment holds, so victims take their own moved items: every value
    /// read back is the one written, and the counts add up.
    #[test]
    fn items_moved_on_in_their_own_segment_stay_intact() {
        let mut s = Store::new(9 * MIB);
        let value = |i: u32| vec![(i % 251) as u8; 100 + (i as usize * 7) % 700];
        let keys = 30_000u32; // about 1.5 x the budget
        let (mut hits, mut checked) = (0u64, 0u32);
        for round in 0..6 {
            for i in 0..keys {
                let k = format!("key:{i}");
                match get(&mut s, k.as_bytes(), 0) {
                    Some(v) => {
                        assert_eq!(v, value(i), "round {round}, key {i}");
                        hits += 1;
                    }
                    None => set(&mut s, k.as_bytes(), &value(i), 0, 0).unwrap(),
                }
                checked += 1;
                if checked % 5_000 == 0 {
                    check_counts(&s);
                }
            }
        }
        check_counts(&s);
        assert!(s.stats().evictions > 0 && hits > 0, "{:?}", s.stats());
    }

    #[test]
    fn the_whole_budget_goes_to_segments() {
        let budget = 16 * MIB;
        let mut s = Store::new(budget);
        for i in 0..200_000u32 {
            set(&mut s, &i.to_le_bytes(), &[1; 100], 0, 0).unwrap();
        }
        let st = s.stats();
        assert!(st.evictions > 0);
        // Integer division leaves under a byte per segment.
        assert!(
            st.bytes_reserved <= budget as u64
                && st.bytes_reserved > (budget - budget / SEGMENT_SIZE) as u64,
            "{st:?}"
        );
    }

    /// A main queue full of items no longer read (here a first key set, each read once, moved
    /// to the main queue with no read left) gives way to a new key set being read: its oldest
    /// segment is evicted before the small queue's, whose items are half read, so the unread
    /// half of the new keys stays in the small queue a while longer instead of going first.
    #[test]
    fn a_main_queue_no_longer_read_goes_before_a_small_queue_being_read() {
        let mut s = Store::new(16 * MIB);
        let value = [5u8; 1000];
        let old = 14_000u32; // about 13 segments of 15
        for i in 0..old {
            let k = format!("old:{i}");
            set(&mut s, k.as_bytes(), &value, 0, 0).unwrap();
            assert!(get(&mut s, k.as_bytes(), 0).is_some());
        }
        // The new keys: every other one read right after it is written.
        let new = 4_000u32;
        for i in 0..new {
            let k = format!("new:{i}");
            set(&mut s, k.as_bytes(), &value, 0, 0).unwrap();
            if i % 2 == 0 {
                assert!(get(&mut s, k.as_bytes(), 0).is_some());
            }
        }
        check_counts(&s);
        let unread_kept = (0..new)
            .filter(|i| i % 2 == 1)
            .filter(|i| get(&mut s, format!("new:{i}").as_bytes(), 0).is_some())
            .count();
        // Without the rule the small queue evicts its oldest two segments of new keys, the
        // unread half of about 2,000 of them; with it, main's stale ones go first.
        assert!(
            unread_kept as u32 > new / 2 * 9 / 10,
            "{unread_kept} of {} unread new keys kept",
            new / 2
        );
    }

    /// A segment's read share counts the reads of a small item that started with read credit
    /// (up to the counter's cap), so a small queue of small items being read does not look
    /// unread next to the main queue.
    #[test]
    fn reads_of_items_with_credit_count_in_their_segment() {
        let mut s = Store::new(16 * MIB);
        for i in 0..100 {
            set(&mut s, format!("large:{i}").as_bytes(), &[1u8; 3000], 0, 0).unwrap();
        }
        let key = b"small";
        set(&mut s, key, &[2u8; 64], 0, 0).unwrap();
        let hit = s.find((s.hasher)(key), key).unwrap();
        assert_eq!(
            hit.entry.freq(),
            2,
            "a 64-byte item among 3 KB ones has two reads of credit"
        );
        let seg = hit.entry.seg() as usize;
        assert_eq!(s.segs[seg].read_items, 0);
        get(&mut s, key, 0).unwrap();
        assert_eq!(s.segs[seg].read_items, 1);
        // At the counter's cap a read counts no more.
        get(&mut s, key, 0).unwrap();
        assert_eq!(s.segs[seg].read_items, 1);
    }

    /// Hits per byte: items written once and never read, half of them small and half large,
    /// many times the budget. The small ones start with read credit, so more of them stay.
    #[test]
    fn small_items_outlast_large_ones_of_the_same_popularity() {
        let mut s = Store::new(16 * MIB);
        let (small, large) = ([1u8; 64], [2u8; 3000]);
        let n = 30_000u32;
        for i in 0..n {
            set(&mut s, format!("small:{i}").as_bytes(), &small, 0, 0).unwrap();
            set(&mut s, format!("large:{i}").as_bytes(), &large, 0, 0).unwrap();
        }
        let kept = |s: &mut Store, kind: &str| {
            (0..n)
                .filter(|i| get(s, format!("{kind}:{i}").as_bytes(), 0).is_some())
                .count()
        };
        let (kept_small, kept_large) = (kept(&mut s, "small"), kept(&mut s, "large"));
        assert!(
            kept_small > 2 * kept_large,
            "{kept_small} small and {kept_large} large items kept"
        );
    }

    #[test]
    fn large_values_find_room_after_small_ones() {
        let mut s = Store::new(10 * MIB);
        for i in 0..100_000u32 {
            set(&mut s, &i.to_le_bytes(), &[1; 100], 0, 0).unwrap();
        }
        for i in 0..30u32 {
            let key = format!("big:{i}");
            set(&mut s, key.as_bytes(), &[2; MAX_VALUE_LEN], 0, 0).unwrap();
            assert_eq!(get(&mut s, key.as_bytes(), 0).unwrap().len(), MAX_VALUE_LEN);
        }
        assert!(s.stats().bytes_reserved <= 10 * MIB as u64);
    }

    #[test]
    fn an_item_larger_than_a_segment_is_too_large() {
        // A budget under 8 full segments has 8 smaller ones, which bound the item size.
        let mut s = Store::new(2 * MIB);
        assert_eq!(s.max_item_len(), 256 << 10);
        assert!(matches!(
            set(&mut s, b"k", &vec![0; 300_000], 0, 0),
            Err(RequestError::ItemTooLarge(_))
        ));
        set(&mut s, b"k", &vec![0; 200_000], 0, 0).unwrap();
        // A larger budget is split into whole segments of at least SEGMENT_SIZE, none left out.
        let mut s = Store::new(9 * MIB);
        assert_eq!(s.max_item_len(), 9 * MIB / 8);
        assert!(s.max_item_len() >= SEGMENT_SIZE);
        set(&mut s, b"k", &vec![0; MAX_VALUE_LEN], 0, 0).unwrap();
        assert!(matches!(
            set(&mut s, b"k", &vec![0; MAX_VALUE_LEN + 1], 0, 0),
            Err(RequestError::ValueTooLarge(_))
        ));
    }

    #[test]
    fn colliding_hashes_are_told_apart_by_key() {
        fn weak(k: &[u8]) -> u64 {
            key_hash(k) & 3
        }
        let mut s = Store::with_hasher(2 * MIB, weak);
        for i in 0..3_000u32 {
            let k = i.to_le_bytes();
            s.set(weak(&k), &k, &k, 0, 0).unwrap();
        }
        let st = s.stats();
        let mut found = 0;
        for i in 0..3_000u32 {
            let k = i.to_le_bytes();
            if let Some(f) = s.get(weak(&k), &k, 0) {
                assert_eq!(f.value, k);
                found += 1;
            }
        }
        assert_eq!(found, st.items);
        assert_eq!(st.items + st.evictions, 3_000);
    }

    /// Churn with colliding hashes (buckets full, the stash in use), expiring segments and
    /// sweeps under way: every value read is the last one written, and the counts add up.
    #[test]
    fn churn_with_collisions_expiry_and_sweeps_stays_consistent() {
        fn weak(k: &[u8]) -> u64 {
            key_hash(k) & 0x3f_0000_003f
        }
        let mut s = Store::with_hasher(12 * MIB, weak);
        let mut model = std::collections::HashMap::new();
        let mut now = 0u64;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = format!("k{}", x % 5_000);
            match x >> 60 {
                0..=7 => {
                    let ttl = if x & 0x100 == 0 {
                        0
                    } else {
                        50 + (x >> 20) as u32 % 500
                    };
                    let len = (x >> 32) as usize % 600;
                    let v = vec![(step % 251) as u8; len];
                    s.set(weak(k.as_bytes()), k.as_bytes(), &v, ttl, now)
                        .unwrap();
                    model.insert(
                        k,
                        (
                            v,
                            if ttl == 0 {
                                u64::MAX
                            } else {
                                now + u64::from(ttl)
                            },
                        ),
                    );
                }
                8..=13 => {
                    if let Some(f) = s.get(weak(k.as_bytes()), k.as_bytes(), now) {
                        let (v, exp) = model.get(&k).expect("only written keys are found");
                        assert!(*exp > now, "step {step}: expired {k} returned");
                        assert_eq!(f.value, &v[..], "step {step}: {k}");
                    }
                }
                14 => {
                    s.delete(weak(k.as_bytes()), k.as_bytes(), now);
                    model.remove(&k);
                }
                _ => {
                    now += 7;
                    s.sweep(now);
                }
            }
        }
        sweep_fully(&mut s, now);
        let mut found = 0;
        for (k, (v, exp)) in &model {
            if let Some(f) = s.get(weak(k.as_bytes()), k.as_bytes(), now) {
                assert!(*exp > now);
                assert_eq!(f.value, &v[..]);
                found += 1;
            }
        }
        assert_eq!(s.stats().items, found);
        assert_eq!(s.index.len() as u64, found);
    }

    #[test]
    fn touch_gives_an_item_without_ttl_one_and_keeps_its_cas() {
        let mut s = Store::new(4 * MIB);
        set(&mut s, b"k", b"value", 0, 0).unwrap();
        let cas = s.get(key_hash(b"k"), b"k", 0).unwrap().cas;
        assert!(s.touch(key_hash(b"k"), b"k", Ttl::In(500), 100));
        let f = s.get(key_hash(b"k"), b"k", 200).unwrap();
        assert_eq!((f.value, f.ttl_ms, f.cas), (&b"value"[..], Some(400), cas));
        assert!(s.touch(key_hash(b"k"), b"k", Ttl::Never, 300));
        assert_eq!(s.get(key_hash(b"k"), b"k", 10_000).unwrap().ttl_ms, None);
        sweep_fully(&mut s, 10_000);
        assert!(
            get(&mut s, b"k", 10_000).is_some(),
            "touched to never expire"
        );
        assert_eq!(s.stats().items, 1);
    }
}
