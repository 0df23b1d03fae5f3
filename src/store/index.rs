//! The store's hash index: 8-byte entries in buckets of eight (one cache line), two candidate
//! buckets per key, grown one bucket at a time by linear hashing.
//!
//! An entry packs a 22-bit tag of the key's hash, the item's segment and offset, and a 2-bit
//! access counter (S3-FIFO's frequency) into one `u64`. It holds no full hash: the index is
//! kept near 7/8 full by splitting one bucket whenever the table passes that load (linear
//! hashing), and a split re-derives the hashes of only that bucket's entries from their keys
//! (the `rehash` callback), so growing never rehashes the whole table at once and the index
//! costs about 9 bytes per item at any size. Each key may live in either of two buckets
//! (two-choice hashing, the less loaded one is taken), which keeps buckets from overflowing
//! at that load; when both are full, one resident is moved to its other bucket, and only if
//! none can move is one displaced (the store evicts it).

/// Slots in a bucket: 8 entries of 8 bytes, one cache line.
pub const SLOTS: usize = 8;
/// The table splits a bucket while it holds more than this many entries per bucket on average
/// (6 of 8 slots: at 7, 2% of inserts found both buckets full even after moving a resident;
/// at 6, 0.002%).
const SPLIT_LOAD: usize = 6;

const PRESENT: u64 = 1 << 63;
const TAG_BITS: u32 = 22;
const TAG_SHIFT: u32 = 41;
const SEG_BITS: u32 = 18;
const SEG_SHIFT: u32 = 23;
const OFFSET_BITS: u32 = 21;
const OFFSET_SHIFT: u32 = 2;
const FREQ_MASK: u64 = 3;
/// The read counter's cap: it counts reads up to this many.
pub const MAX_FREQ: u8 = FREQ_MASK as u8;

/// Segments an entry can name.
pub const MAX_SEGMENTS: usize = 1 << SEG_BITS;
/// Byte offsets an entry can name within a segment.
pub const MAX_OFFSET: usize = 1 << OFFSET_BITS;

/// One index entry: where an item is, a tag of its hash, and how often it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry(u64);

impl Entry {
    pub fn new(hash: u64, seg: u32, offset: u32, freq: u8) -> Entry {
        debug_assert!((seg as usize) < MAX_SEGMENTS && (offset as usize) < MAX_OFFSET);
        Entry(
            PRESENT
                | (u64::from(tag_of(hash)) << TAG_SHIFT)
                | (u64::from(seg) << SEG_SHIFT)
                | (u64::from(offset) << OFFSET_SHIFT)
                | (u64::from(freq) & FREQ_MASK),
        )
    }

    pub fn seg(self) -> u32 {
        ((self.0 >> SEG_SHIFT) & ((1 << SEG_BITS) - 1)) as u32
    }

    pub fn offset(self) -> u32 {
        ((self.0 >> OFFSET_SHIFT) & ((1 << OFFSET_BITS) - 1)) as u32
    }

    pub fn freq(self) -> u8 {
        (self.0 & FREQ_MASK) as u8
    }

    fn tag(self) -> u32 {
        ((self.0 >> TAG_SHIFT) & ((1 << TAG_BITS) - 1)) as u32
    }

    /// The same entry at another place.
    pub fn moved(self, seg: u32, offset: u32) -> Entry {
        let keep = self.0 & !(((1u64 << (SEG_BITS + OFFSET_BITS)) - 1) << OFFSET_SHIFT);
        Entry(keep | (u64::from(seg) << SEG_SHIFT) | (u64::from(offset) << OFFSET_SHIFT))
    }

    pub fn with_freq(self, freq: u8) -> Entry {
        Entry((self.0 & !FREQ_MASK) | (u64::from(freq) & FREQ_MASK))
    }

    /// Same segment and offset.
    pub fn same_place(self, other: Entry) -> bool {
        (self.0 ^ other.0) & (((1u64 << (SEG_BITS + OFFSET_BITS)) - 1) << OFFSET_SHIFT) == 0
    }
}

/// The tag: hash bits the bucket numbers do not use (those come from bits 16 and up of the two
/// mixes below), so two keys in one bucket rarely share it.
fn tag_of(hash: u64) -> u32 {
    ((hash >> (64 - TAG_BITS)) as u32) ^ ((hash as u32) & ((1 << TAG_BITS) - 1))
}

/// The two bucket hashes of a key. The router picks a core with `hash % cores`, so the low
/// bits are skipped; the second is a multiplicative mix of all bits.
fn choices(hash: u64) -> (u64, u64) {
    let first = hash >> 16;
    let second = (hash ^ (hash >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    (first, second)
}

/// Where a [`Index::find`] found an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// [`STASH`] for an entry in the stash.
    bucket: u32,
    slot: u32,
}

const STASH: u32 = u32::MAX;

pub struct Index {
    buckets: Vec<[u64; SLOTS]>,
    /// Linear hashing's level: the table has between 2^level and 2^(level+1) buckets.
    level: u32,
    /// The next bucket to split; buckets below it are addressed with one more bit.
    split: usize,
    len: usize,
    /// Entries whose two buckets were both full, with their full hashes: a few in a million.
    /// Each split moves one back into the table if its buckets have room.
    stash: Vec<(u64, u64)>,
    /// Buckets below this were passed by the sweep under way (0 when none is): an entry the
    /// table moves must not go below it, or an entry the sweep is removing could slip past.
    swept_below: usize,
}

impl Default for Index {
    fn default() -> Index {
        Index::new()
    }
}

impl Index {
    pub fn new() -> Index {
        const START_LEVEL: u32 = 4;
        Index {
            buckets: vec![[0; SLOTS]; 1 << START_LEVEL],
            level: START_LEVEL,
            split: 0,
            len: 0,
            stash: Vec::new(),
            swept_below: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the table's buckets take.
    pub fn bytes(&self) -> usize {
        self.buckets.len() * SLOTS * 8
    }

    fn bucket_of(&self, h: u64) -> usize {
        let low = (h & ((1u64 << self.level) - 1)) as usize;
        if low < self.split {
            (h & ((1u64 << (self.level + 1)) - 1)) as usize
        } else {
            low
        }
    }

    fn candidates(&self, hash: u64) -> (usize, usize) {
        let (a, b) = choices(hash);
        (self.bucket_of(a), self.bucket_of(b))
    }

    /// The entry for `hash` that `is_it` accepts (it compares the key), if any.
    pub fn find(&self, hash: u64, mut is_it: impl FnMut(Entry) -> bool) -> Option<(Pos, Entry)> {
        let tag = tag_of(hash);
        let (a, b) = self.candidates(hash);
        for bucket in [a, b] {
            for (slot, &raw) in self.buckets[bucket].iter().enumerate() {
                let e = Entry(raw);
                if raw & PRESENT != 0 && e.tag() == tag && is_it(e) {
                    let pos = Pos {
                        bucket: bucket as u32,
                        slot: slot as u32,
                    };
                    return Some((pos, e));
                }
            }
            if a == b {
                break;
            }
        }
        self.stash
            .iter()
            .position(|&(h, raw)| h == hash && is_it(Entry(raw)))
            .map(|i| {
                let pos = Pos {
                    bucket: STASH,
                    slot: i as u32,
                };
                (pos, Entry(self.stash[i].1))
            })
    }

    /// The entry for `hash` at the place of `at` (the item there), if any.
    pub fn find_at(&self, hash: u64, at: Entry) -> Option<(Pos, Entry)> {
        self.find(hash, |e| e.same_place(at))
    }

    pub fn set(&mut self, pos: Pos, e: Entry) {
        match pos.bucket {
            STASH => self.stash[pos.slot as usize].1 = e.0,
            b => self.buckets[b as usize][pos.slot as usize] = e.0,
        }
    }

    pub fn remove(&mut self, pos: Pos) {
        match pos.bucket {
            STASH => {
                self.stash.swap_remove(pos.slot as usize);
            }
            b => {
                let slot = &mut self.buckets[b as usize][pos.slot as usize];
                debug_assert!(*slot & PRESENT != 0);
                *slot = 0;
            }
        }
        self.len -= 1;
    }

    /// Adds an entry for a key not in the index. `rehash` gives the full hash of an entry
    /// already in the table (from its key), for the bucket split this may do and for moving a
    /// resident to its other bucket.
    pub fn insert(&mut self, hash: u64, e: Entry, rehash: &mut dyn FnMut(Entry) -> u64) {
        if self.len >= self.buckets.len() * SPLIT_LOAD {
            self.split_one(rehash);
        }
        self.len += 1;
        if !self.place(hash, e, false, rehash) {
            self.stash.push((hash, e.0));
        }
    }

    /// Puts `e` in one of its buckets, the less loaded, moving a resident if both are full.
    /// A new entry (`moving` false) may go anywhere; one already in the table only to buckets
    /// the sweep under way has still to pass.
    fn place(
        &mut self,
        hash: u64,
        e: Entry,
        moving: bool,
        rehash: &mut dyn FnMut(Entry) -> u64,
    ) -> bool {
        let (a, b) = self.candidates(hash);
        let open = |i: usize| !moving || i >= self.swept_below;
        let fa = self.free_slot(a).filter(|_| open(a));
        let fb = self.free_slot(b).filter(|_| open(b));
        let load = |i: usize| {
            self.buckets[i]
                .iter()
                .filter(|&&r| r & PRESENT != 0)
                .count()
        };
        let place = match (fa, fb) {
            (Some(sa), Some(sb)) => Some(if load(b) < load(a) { (b, sb) } else { (a, sa) }),
            (Some(s), None) => Some((a, s)),
            (None, Some(s)) => Some((b, s)),
            (None, None) => self.make_room(a, b, rehash),
        };
        let Some((bucket, slot)) = place else {
            return false;
        };
        self.buckets[bucket][slot] = e.0;
        true
    }

    fn free_slot(&self, bucket: usize) -> Option<usize> {
        self.buckets[bucket].iter().position(|&r| r & PRESENT == 0)
    }

    /// Moves one resident of bucket `a` or `b` to its other bucket, freeing its slot.
    fn make_room(
        &mut self,
        a: usize,
        b: usize,
        rehash: &mut dyn FnMut(Entry) -> u64,
    ) -> Option<(usize, usize)> {
        for bucket in [a, b] {
            for slot in 0..SLOTS {
                let e = Entry(self.buckets[bucket][slot]);
                let (x, y) = self.candidates(rehash(e));
                let other = if x == bucket { y } else { x };
                if other == bucket || other < self.swept_below {
                    continue;
                }
                if let Some(free) = self.free_slot(other) {
                    self.buckets[other][free] = e.0;
                    self.buckets[bucket][slot] = 0;
                    return Some((bucket, slot));
                }
            }
        }
        None
    }

    /// Linear hashing's step: splits bucket `split` into itself and a new last bucket by one
    /// more bit of each of its entries' bucket hashes.
    fn split_one(&mut self, rehash: &mut dyn FnMut(Entry) -> u64) {
        let old = self.split;
        let entries = std::mem::replace(&mut self.buckets[old], [0; SLOTS]);
        self.buckets.push([0; SLOTS]);
        self.split += 1;
        if self.split == 1 << self.level {
            self.level += 1;
            self.split = 0;
        }
        let mut fill = [0usize; 2];
        let new = self.buckets.len() - 1;
        for raw in entries {
            if raw & PRESENT == 0 {
                continue;
            }
            let (x, y) = choices(rehash(Entry(raw)));
            // The entry sat in `old` by one of its choices; that choice now names `old` or
            // the new bucket, which between them have room for every entry the old one had.
            let (bx, by) = (self.bucket_of(x), self.bucket_of(y));
            let to = if bx == old || bx == new { bx } else { by };
            let i = usize::from(to == new);
            self.buckets[to][fill[i]] = raw;
            fill[i] += 1;
        }
        // Give a stashed entry another chance now that the table has a new bucket.
        if let Some((hash, raw)) = self.stash.pop() {
            if !self.place(hash, Entry(raw), true, rehash) {
                self.stash.push((hash, raw));
            }
        }
    }

    /// Visits up to `max_buckets` buckets from `cursor`, removing the entries `dead` accepts.
    /// Returns the next cursor and whether it went past the last bucket (a full pass ended).
    pub fn sweep(
        &mut self,
        cursor: usize,
        max_buckets: usize,
        dead: &mut dyn FnMut(Entry) -> bool,
    ) -> (usize, bool) {
        let end = (cursor + max_buckets).min(self.buckets.len());
        for bucket in &mut self.buckets[cursor.min(end)..end] {
            for slot in bucket.iter_mut() {
                if *slot & PRESENT != 0 && dead(Entry(*slot)) {
                    *slot = 0;
                    self.len -= 1;
                }
            }
        }
        if end >= self.buckets.len() {
            let before = self.stash.len();
            self.stash.retain(|&(_, raw)| !dead(Entry(raw)));
            self.len -= before - self.stash.len();
            self.swept_below = 0;
            (0, true)
        } else {
            self.swept_below = end;
            (end, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(i: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())
    }

    /// Keys are numbers; an entry's offset holds the number, so `rehash` can find its hash.
    #[test]
    fn entries_are_found_moved_and_removed_through_growth() {
        let mut index = Index::new();
        let n = 200_000u32;
        let mut rehash = |e: Entry| mix(u64::from(e.offset()));
        for i in 0..n {
            index.insert(
                mix(u64::from(i)),
                Entry::new(mix(u64::from(i)), 1, i, 0),
                &mut rehash,
            );
        }
        assert_eq!(index.len(), n as usize);
        assert!(index.stash.len() < 10, "{} stashed", index.stash.len());
        let per_item = index.bytes() as f64 / f64::from(n);
        assert!(per_item < 11.0, "{per_item} bytes per entry");
        for i in 0..n {
            let (pos, e) = index
                .find(mix(u64::from(i)), |e| e.offset() == i)
                .expect("every key found");
            assert_eq!(e.seg(), 1);
            if i % 2 == 0 {
                index.remove(pos);
            } else {
                index.set(pos, e.moved(7, i).with_freq(3));
            }
        }
        for i in 0..n {
            let found = index.find(mix(u64::from(i)), |e| e.offset() == i);
            match i % 2 {
                0 => assert!(found.is_none()),
                _ => assert_eq!(found.map(|(_, e)| (e.seg(), e.freq())), Some((7, 3))),
            }
        }
        assert_eq!(index.len(), n as usize / 2);
    }

    #[test]
    fn colliding_hashes_overflow_into_the_stash_and_are_told_apart_by_the_caller() {
        let mut index = Index::new();
        // Every key has hash 5: all share two buckets, the rest go to the stash.
        for i in 0..40u32 {
            index.insert(5, Entry::new(5, 0, i, 0), &mut |_| 5);
        }
        assert_eq!(index.len(), 40);
        assert!(!index.stash.is_empty());
        for k in 0..40u32 {
            let (pos, e) = index.find(5, |e| e.offset() == k).expect("found");
            if k % 3 == 0 {
                index.remove(pos);
            } else {
                index.set(pos, e.with_freq(2));
            }
        }
        for k in 0..40u32 {
            let found = index.find(5, |e| e.offset() == k).map(|(_, e)| e.freq());
            assert_eq!(found, (k % 3 != 0).then_some(2), "key {k}");
        }
        assert_eq!(index.len(), 26);
    }

    #[test]
    fn sweep_removes_what_the_predicate_accepts() {
        let mut index = Index::new();
        for i in 0..1000u32 {
            index.insert(
                mix(u64::from(i)),
                Entry::new(mix(u64::from(i)), i % 4, i, 0),
                &mut |e| mix(u64::from(e.offset())),
            );
        }
        let mut cursor = 0;
        loop {
            let (next, wrapped) = index.sweep(cursor, 3, &mut |e| e.seg() == 2);
            cursor = next;
            if wrapped {
                break;
            }
        }
        assert_eq!(index.len(), 750);
        assert!(index.find(mix(2), |e| e.offset() == 2).is_none());
        assert!(index.find(mix(3), |e| e.offset() == 3).is_some());
    }

    #[test]
    fn entry_fields_round_trip() {
        let e = Entry::new(
            u64::MAX,
            (MAX_SEGMENTS - 1) as u32,
            (MAX_OFFSET - 1) as u32,
            3,
        );
        assert_eq!(
            (e.seg() as usize, e.offset() as usize, e.freq()),
            (MAX_SEGMENTS - 1, MAX_OFFSET - 1, 3)
        );
        let m = e.moved(3, 9);
        assert_eq!((m.seg(), m.offset(), m.freq(), m.tag()), (3, 9, 3, e.tag()));
        assert!(m.same_place(Entry::new(0, 3, 9, 0)));
    }
}
