//! The per-core slab arena that holds items: size classes of fixed-size chunks carved from
//! pages, a byte budget for the pages, and CLOCK eviction within a class.
//!
//! An item lives in one chunk: a 40-byte header (hash, expiry, CAS unique, lengths, client
//! flags, last access), the key, the value. Chunk sizes start at 64
//! bytes and grow by 1.25x (rounded to 8) up to the largest possible item (a 250-byte key and
//! a 1 MiB value). Each class carves 1 MiB pages into as many chunks as fit (a class whose chunk
//! is larger than 1 MiB gets pages of one chunk). Pages are allocated zeroed, so the kernel maps
//! their memory only as items are written, and allocation stops at the budget: from then on a
//! class recycles its own chunks (CLOCK), or takes a page from the class that holds the most.
//! No item ever touches the general heap, so storing a value allocates nothing once the pages
//! exist.

/// Bytes of a page (classes with larger chunks get a page of one chunk).
pub const PAGE_SIZE: usize = 1 << 20;
/// Bytes before the key in a chunk: the [`Header`].
pub const HEADER: usize = 40;
/// Bytes of the smallest chunk.
pub const MIN_CHUNK: usize = 64;
/// The largest budget for which every slot number fits in [`Loc::slot`]'s `u32`. The class of
/// the smallest chunk has the most slots per byte (a page of `PAGE_SIZE` holds
/// `PAGE_SIZE / MIN_CHUNK`), and a class may come to hold every page the budget allows.
pub const MAX_BUDGET: usize = (u32::MAX as usize / (PAGE_SIZE / MIN_CHUNK)) * PAGE_SIZE;
const GROWTH: f64 = 1.25;

/// Offsets of the header's fields (little-endian).
const HASH_AT: usize = 0;
const EXPIRES_AT: usize = 8;
const CAS_AT: usize = 16;
const VALUE_LEN_AT: usize = 24;
const CLIENT_FLAGS_AT: usize = 28;
const ACCESSED_AT: usize = 32;
const KEY_LEN_AT: usize = 36;
const BITS_AT: usize = 37;

/// The chunk holds an item.
const LIVE: u8 = 1;
/// Read or written since CLOCK last passed it.
const REFERENCED: u8 = 2;
/// Read at least once since it was written (memcached's `h` meta flag).
const FETCHED: u8 = 4;

/// Where an item lives: its class and its slot (page * chunks per page + chunk) in the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub class: u8,
    pub slot: u32,
}

/// An item's fixed-size header, stored little-endian at the start of its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub hash: u64,
    /// Milliseconds on the store's clock when the item expires; 0 = never.
    pub expires_at_ms: u64,
    /// memcached's CAS unique: changed by every modification of the item.
    pub cas: u64,
    pub value_len: u32,
    /// memcached's opaque client flags (0 for items set over the native protocol).
    pub client_flags: u32,
    /// Seconds on the store's clock of the last read or write.
    pub accessed_s: u32,
    pub key_len: u8,
    bits: u8,
}

/// What a write stores beside the key and the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub hash: u64,
    pub expires_at_ms: u64,
    pub cas: u64,
    pub client_flags: u32,
    pub now_s: u32,
}

fn u64_at(chunk: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(chunk[i..i + 8].try_into().unwrap_or_default())
}

fn u32_at(chunk: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(chunk[i..i + 4].try_into().unwrap_or_default())
}

impl Header {
    fn read(chunk: &[u8]) -> Header {
        Header {
            hash: u64_at(chunk, HASH_AT),
            expires_at_ms: u64_at(chunk, EXPIRES_AT),
            cas: u64_at(chunk, CAS_AT),
            value_len: u32_at(chunk, VALUE_LEN_AT),
            client_flags: u32_at(chunk, CLIENT_FLAGS_AT),
            accessed_s: u32_at(chunk, ACCESSED_AT),
            key_len: chunk[KEY_LEN_AT],
            bits: chunk[BITS_AT],
        }
    }

    fn write(&self, chunk: &mut [u8]) {
        chunk[HASH_AT..HASH_AT + 8].copy_from_slice(&self.hash.to_le_bytes());
        chunk[EXPIRES_AT..EXPIRES_AT + 8].copy_from_slice(&self.expires_at_ms.to_le_bytes());
        chunk[CAS_AT..CAS_AT + 8].copy_from_slice(&self.cas.to_le_bytes());
        chunk[VALUE_LEN_AT..VALUE_LEN_AT + 4].copy_from_slice(&self.value_len.to_le_bytes());
        chunk[CLIENT_FLAGS_AT..CLIENT_FLAGS_AT + 4]
            .copy_from_slice(&self.client_flags.to_le_bytes());
        chunk[ACCESSED_AT..ACCESSED_AT + 4].copy_from_slice(&self.accessed_s.to_le_bytes());
        chunk[KEY_LEN_AT] = self.key_len;
        chunk[BITS_AT] = self.bits;
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    /// Whether the item was read since it was last written.
    pub fn fetched(&self) -> bool {
        self.bits & FETCHED != 0
    }
}

struct Class {
    chunk: usize,
    per_page: usize,
    pages: Vec<Box<[u8]>>,
    /// Slots with no item.
    free: Vec<u32>,
    /// The CLOCK hand: the next slot eviction looks at.
    hand: u32,
}

impl Class {
    fn slots(&self) -> u32 {
        (self.pages.len() * self.per_page) as u32
    }

    fn page_len(&self) -> usize {
        self.chunk * self.per_page
    }

    fn chunk(&self, slot: u32) -> &[u8] {
        let (page, i) = (slot as usize / self.per_page, slot as usize % self.per_page);
        &self.pages[page][i * self.chunk..(i + 1) * self.chunk]
    }

    fn chunk_mut(&mut self, slot: u32) -> &mut [u8] {
        let (page, i) = (slot as usize / self.per_page, slot as usize % self.per_page);
        &mut self.pages[page][i * self.chunk..(i + 1) * self.chunk]
    }
}

/// What [`Arena::allocate`] had to do to find a chunk: items it pushed out to make room. The
/// store removes them from its index.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    pub evicted: u64,
    pub expired: u64,
}

pub struct Arena {
    classes: Vec<Class>,
    budget: usize,
    /// Bytes of all pages allocated.
    pages_bytes: usize,
    /// Items whose CAS unique is at most this were flushed (`flush_all`): dead, like expired
    /// ones, and reclaimed the same way.
    pub flushed_cas: u64,
}

impl Arena {
    /// An arena whose pages may use at most `budget` bytes.
    pub fn new(budget: usize, largest_item: usize) -> Arena {
        let mut classes = Vec::new();
        let mut size = MIN_CHUNK;
        loop {
            let chunk = size.min(round8(largest_item));
            classes.push(Class {
                chunk,
                per_page: (PAGE_SIZE / chunk).max(1),
                pages: Vec::new(),
                free: Vec::new(),
                hand: 0,
            });
            if chunk >= round8(largest_item) {
                break;
            }
            size = round8(((size as f64) * GROWTH) as usize).max(size + 8);
        }
        Arena {
            classes,
            budget,
            pages_bytes: 0,
            flushed_cas: 0,
        }
    }

    /// The class for an item of `len` bytes (header included), if any chunk is that large.
    pub fn class_for(&self, len: usize) -> Option<u8> {
        let i = self.classes.partition_point(|c| c.chunk < len);
        (i < self.classes.len()).then_some(i as u8)
    }

    pub fn has_class(&self, class: u8) -> bool {
        (class as usize) < self.classes.len()
    }

    /// Bytes of the chunk of class `class`.
    pub fn chunk_size(&self, class: u8) -> usize {
        self.classes[class as usize].chunk
    }

    /// Whether the budget could ever hold a page of `class`.
    pub fn fits_budget(&self, class: u8) -> bool {
        self.classes[class as usize].page_len() <= self.budget
    }

    pub fn pages_bytes(&self) -> usize {
        self.pages_bytes
    }

    pub fn header(&self, loc: Loc) -> Header {
        Header::read(self.classes[loc.class as usize].chunk(loc.slot))
    }

    pub fn key(&self, loc: Loc) -> &[u8] {
        let chunk = self.classes[loc.class as usize].chunk(loc.slot);
        &chunk[HEADER..HEADER + chunk[KEY_LEN_AT] as usize]
    }

    pub fn value(&self, loc: Loc) -> &[u8] {
        let h = self.header(loc);
        let chunk = self.classes[loc.class as usize].chunk(loc.slot);
        let start = HEADER + h.key_len as usize;
        &chunk[start..start + h.value_len as usize]
    }

    /// Marks an item read at `now_s`, so CLOCK passes it over once.
    pub fn touch(&mut self, loc: Loc, now_s: u32) {
        let chunk = self.classes[loc.class as usize].chunk_mut(loc.slot);
        chunk[BITS_AT] |= REFERENCED | FETCHED;
        chunk[ACCESSED_AT..ACCESSED_AT + 4].copy_from_slice(&now_s.to_le_bytes());
    }

    /// Sets the expiry of the item at `loc`.
    pub fn set_expiry(&mut self, loc: Loc, expires_at_ms: u64) {
        let chunk = self.classes[loc.class as usize].chunk_mut(loc.slot);
        chunk[EXPIRES_AT..EXPIRES_AT + 8].copy_from_slice(&expires_at_ms.to_le_bytes());
    }

    /// Writes an item into the chunk at `loc` (which the caller owns). The value is the
    /// concatenation of `value` and `tail`, so append and prepend need no buffer of their own.
    pub fn write(&mut self, loc: Loc, meta: &Meta, key: &[u8], value: &[u8], tail: &[u8]) {
        let chunk = self.classes[loc.class as usize].chunk_mut(loc.slot);
        Header {
            hash: meta.hash,
            expires_at_ms: meta.expires_at_ms,
            cas: meta.cas,
            value_len: (value.len() + tail.len()) as u32,
            client_flags: meta.client_flags,
            accessed_s: meta.now_s,
            key_len: key.len() as u8,
            bits: LIVE | REFERENCED,
        }
        .write(chunk);
        let mut at = HEADER;
        for part in [key, value, tail] {
            chunk[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
    }

    /// Overwrites the value and metadata of the item at `loc` in place (same class, same key).
    pub fn rewrite(&mut self, loc: Loc, meta: &Meta, value: &[u8]) {
        let key_len = self.header(loc).key_len as usize;
        let chunk = self.classes[loc.class as usize].chunk_mut(loc.slot);
        Header {
            hash: meta.hash,
            expires_at_ms: meta.expires_at_ms,
            cas: meta.cas,
            value_len: value.len() as u32,
            client_flags: meta.client_flags,
            accessed_s: meta.now_s,
            key_len: key_len as u8,
            bits: LIVE | REFERENCED,
        }
        .write(chunk);
        let start = HEADER + key_len;
        chunk[start..start + value.len()].copy_from_slice(value);
    }

    /// Frees the chunk at `loc`.
    pub fn free(&mut self, loc: Loc) {
        let class = &mut self.classes[loc.class as usize];
        class.chunk_mut(loc.slot)[BITS_AT] = 0;
        class.free.push(loc.slot);
    }

    /// A free chunk of `class`, making room when there is none: a new page while the budget
    /// allows, else CLOCK over the class's own items, else a page taken from the class holding
    /// the most pages. Items pushed out are passed to `evict` (to drop from the index) before
    /// their chunk is reused. `None` only when the budget cannot hold even one page of `class`.
    pub fn allocate(
        &mut self,
        class: u8,
        now_ms: u64,
        evict: &mut dyn FnMut(Loc, &Header),
    ) -> Option<(Loc, Reclaimed)> {
        let c = class as usize;
        let mut reclaimed = Reclaimed::default();
        if let Some(slot) = self.classes[c].free.pop() {
            return Some((Loc { class, slot }, reclaimed));
        }
        if self.pages_bytes + self.classes[c].page_len() <= self.budget {
            self.add_page(c);
            let slot = self.classes[c].free.pop()?;
            return Some((Loc { class, slot }, reclaimed));
        }
        if self.classes[c].slots() > 0 {
            let slot = self.clock(c, now_ms, evict, &mut reclaimed);
            return Some((Loc { class, slot }, reclaimed));
        }
        // This class has no page and the budget is spent: take pages from the largest class
        // until one of ours fits.
        while self.pages_bytes + self.classes[c].page_len() > self.budget {
            let victim = (0..self.classes.len())
                .filter(|&v| v != c && !self.classes[v].pages.is_empty())
                .max_by_key(|&v| self.classes[v].pages.len() * self.classes[v].page_len())?;
            self.release_last_page(victim, now_ms, evict, &mut reclaimed);
        }
        self.add_page(c);
        let slot = self.classes[c].free.pop()?;
        Some((Loc { class, slot }, reclaimed))
    }

    fn add_page(&mut self, c: usize) {
        let class = &mut self.classes[c];
        let first = class.slots();
        // Zeroed: the kernel maps the page's memory only as chunks are written.
        class
            .pages
            .push(vec![0u8; class.page_len()].into_boxed_slice());
        class.free.reserve(class.per_page);
        // Pushed in reverse so chunks are handed out from the start of the page.
        class
            .free
            .extend((first..first + class.per_page as u32).rev());
        self.pages_bytes += class.page_len();
    }

    /// CLOCK: sweeps the class from its hand, clearing the referenced bit of items it passes and
    /// taking the first item without it (or an expired one). Two turns at most.
    fn clock(
        &mut self,
        c: usize,
        now_ms: u64,
        evict: &mut dyn FnMut(Loc, &Header),
        reclaimed: &mut Reclaimed,
    ) -> u32 {
        let class = &mut self.classes[c];
        let slots = class.slots();
        for _ in 0..2 * u64::from(slots) {
            let slot = class.hand % slots;
            class.hand = (slot + 1) % slots;
            let chunk = class.chunk_mut(slot);
            let h = Header::read(chunk);
            if h.bits & LIVE == 0 {
                // Free chunks are all on the free list, which is empty when CLOCK runs.
                continue;
            }
            let dead = h.expired(now_ms) || h.cas <= self.flushed_cas;
            if h.bits & REFERENCED != 0 && !dead {
                chunk[BITS_AT] &= !REFERENCED;
                continue;
            }
            if dead {
                reclaimed.expired += 1;
            } else {
                reclaimed.evicted += 1;
            }
            chunk[BITS_AT] = 0;
            evict(
                Loc {
                    class: c as u8,
                    slot,
                },
                &h,
            );
            return slot;
        }
        // Unreachable in practice: the second turn finds every bit cleared. Take the hand's slot.
        let slot = class.hand;
        let h = Header::read(class.chunk(slot));
        reclaimed.evicted += 1;
        evict(
            Loc {
                class: c as u8,
                slot,
            },
            &h,
        );
        slot
    }

    /// Empties the last page of class `v` and returns its memory to the budget.
    fn release_last_page(
        &mut self,
        v: usize,
        now_ms: u64,
        evict: &mut dyn FnMut(Loc, &Header),
        reclaimed: &mut Reclaimed,
    ) {
        let class = &mut self.classes[v];
        let last = class.pages.len() - 1;
        let first_slot = (last * class.per_page) as u32;
        for slot in first_slot..first_slot + class.per_page as u32 {
            let h = Header::read(class.chunk(slot));
            if h.bits & LIVE != 0 {
                if h.expired(now_ms) || h.cas <= self.flushed_cas {
                    reclaimed.expired += 1;
                } else {
                    reclaimed.evicted += 1;
                }
                evict(
                    Loc {
                        class: v as u8,
                        slot,
                    },
                    &h,
                );
            }
        }
        class.free.retain(|&s| s < first_slot);
        class.pages.pop();
        class.hand = if first_slot == 0 {
            0
        } else {
            class.hand % first_slot
        };
        self.pages_bytes -= class.page_len();
    }

    /// Visits up to `max_slots` chunks from `cursor`, passing each live expired (or flushed) item to
    /// `expire` and freeing its chunk. Returns the cursor to continue from. Bounded work, so a
    /// periodic caller reclaims expired items without ever stalling requests.
    pub fn sweep(
        &mut self,
        mut cursor: (usize, u32),
        max_slots: usize,
        now_ms: u64,
        expire: &mut dyn FnMut(Loc, &Header),
    ) -> (usize, u32) {
        for _ in 0..max_slots {
            let (c, slot) = cursor;
            if c >= self.classes.len() {
                return (0, 0);
            }
            if slot >= self.classes[c].slots() {
                cursor = (c + 1, 0);
                continue;
            }
            let h = Header::read(self.classes[c].chunk(slot));
            if h.bits & LIVE != 0 && (h.expired(now_ms) || h.cas <= self.flushed_cas) {
                let loc = Loc {
                    class: c as u8,
                    slot,
                };
                expire(loc, &h);
                self.free(loc);
            }
            cursor = (c, slot + 1);
        }
        cursor
    }
}

fn round8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

#[cfg(test)]
mod tests {
    use super::*;

    const LARGEST: usize = HEADER + 250 + (1 << 20);

    fn meta(hash: u64, expires_at_ms: u64) -> Meta {
        Meta {
            hash,
            expires_at_ms,
            cas: hash + 1,
            client_flags: 0,
            now_s: 0,
        }
    }

    #[test]
    fn classes_grow_by_a_quarter_up_to_the_largest_item() {
        let a = Arena::new(64 << 20, LARGEST);
        let sizes: Vec<usize> = a.classes.iter().map(|c| c.chunk).collect();
        assert_eq!(sizes[0], 64);
        assert_eq!(*sizes.last().unwrap(), round8(LARGEST));
        for w in sizes.windows(2) {
            assert!(w[1] > w[0]);
            assert!(
                (w[1] as f64) <= (w[0] as f64) * 1.26 + 8.0,
                "{} -> {}",
                w[0],
                w[1]
            );
        }
        assert_eq!(a.class_for(1), Some(0));
        assert_eq!(a.class_for(64), Some(0));
        assert_eq!(a.class_for(65), Some(1));
        assert_eq!(a.class_for(LARGEST), Some((sizes.len() - 1) as u8));
        assert_eq!(a.class_for(LARGEST + 100), None);
    }

    /// At MAX_BUDGET every class, even one holding every page the budget allows, numbers its
    /// slots within u32; one page more and the smallest class would not.
    #[test]
    fn slot_numbers_fit_in_u32_up_to_the_max_budget() {
        let a = Arena::new(MAX_BUDGET, LARGEST);
        for c in &a.classes {
            let most = (MAX_BUDGET / c.page_len()) as u64 * c.per_page as u64;
            assert!(
                most <= u64::from(u32::MAX),
                "chunk {}: {most} slots",
                c.chunk
            );
        }
        let smallest = &a.classes[0];
        let over =
            ((MAX_BUDGET + PAGE_SIZE) / smallest.page_len()) as u64 * smallest.per_page as u64;
        assert!(over > u64::from(u32::MAX));
    }

    #[test]
    fn items_round_trip_and_clock_evicts_unreferenced_first() {
        // Room for exactly one page of the 64-byte class.
        let mut a = Arena::new(PAGE_SIZE, LARGEST);
        let per_page = (PAGE_SIZE / 64) as u32;
        let mut evicted = Vec::new();
        let mut locs = Vec::new();
        for i in 0..per_page {
            let (loc, r) = a.allocate(0, 0, &mut |l, _| evicted.push(l)).unwrap();
            assert_eq!(r, Reclaimed::default());
            a.write(loc, &meta(i as u64, 0), &i.to_le_bytes(), b"v", b"");
            locs.push(loc);
        }
        assert_eq!(a.pages_bytes(), PAGE_SIZE);
        assert_eq!(a.key(locs[5]), 5u32.to_le_bytes());
        assert_eq!(a.value(locs[5]), b"v");
        // All items were written referenced; the first turn clears the bits, the second takes
        // slot 0. Touching slot 1 again spares it on the next eviction.
        let (loc, r) = a.allocate(0, 0, &mut |l, _| evicted.push(l)).unwrap();
        assert_eq!((loc.slot, r.evicted), (0, 1));
        a.touch(locs[1], 0);
        let (loc, _) = a.allocate(0, 0, &mut |l, _| evicted.push(l)).unwrap();
        assert_eq!(loc.slot, 2, "slot 1 was referenced and passed over");
        assert_eq!(evicted.len(), 2);
    }

    #[test]
    fn a_class_without_pages_takes_one_from_the_largest() {
        let mut a = Arena::new(PAGE_SIZE, LARGEST);
        let (loc, _) = a.allocate(0, 0, &mut |_, _| {}).unwrap();
        a.write(loc, &meta(1, 0), b"k", b"v", b"");
        let big = a.class_for(10_000).unwrap();
        let mut evicted = 0;
        let (loc, r) = a.allocate(big, 0, &mut |_, _| evicted += 1).unwrap();
        assert_eq!((r.evicted, evicted), (1, 1));
        assert_eq!(loc.class, big);
        assert_eq!(a.pages_bytes(), a.classes[big as usize].page_len());
        assert!(a.classes[0].free.is_empty() && a.classes[0].pages.is_empty());
    }

    #[test]
    fn sweep_frees_expired_items_in_bounded_steps() {
        let mut a = Arena::new(4 * PAGE_SIZE, LARGEST);
        for i in 0..10u64 {
            let (loc, _) = a.allocate(0, 0, &mut |_, _| {}).unwrap();
            a.write(
                loc,
                &meta(i, if i % 2 == 0 { 5 } else { 0 }),
                &[i as u8],
                b"v",
                b"",
            );
        }
        let mut expired = 0;
        let mut cursor = (0, 0);
        for _ in 0..(PAGE_SIZE / 64) / 4 + 10 {
            cursor = a.sweep(cursor, 4, 10, &mut |_, _| expired += 1);
        }
        assert_eq!(expired, 5);
    }
}
