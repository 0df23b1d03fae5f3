//! Segments and the item layout: items packed one after another in fixed-size segments, each
//! with a header of a few bytes.
//!
//! An item is written once at the end of its segment and never moves within it; an overwrite
//! of the same size rewrites it in place, any other change writes a new copy and marks the old
//! one dead. A segment is reused whole: when it is evicted (its live items moved on or
//! dropped), or when everything in it has expired or been deleted.
//!
//! ```text
//! key_len u8 | bits u8 | value_len 1-3 B | cas 6 B (8 B if >= 2^48) | accessed_s u16
//!            | [client_flags u32] | [expires_at_ms 6 B] | key | value
//! ```
//!
//! The client flags are there only when non-zero and the expiry only when the item has one,
//! so a native-protocol item without a TTL has 11 bytes of header for a value under 256 bytes.
//! `accessed_s` is the low 16 bits of the store clock's seconds: idle times are exact up to
//! 18 hours.

/// Bytes of a segment: a 1 MiB page plus room for the largest item's key and header, so the
/// largest value (1 MiB) fits in one.
pub const SEGMENT_SIZE: usize = (1 << 20) + 4096;

const KEY_LEN_AT: usize = 0;
const BITS_AT: usize = 1;
const VALUE_LEN_AT: usize = 2;

/// The item has client flags.
const HAS_FLAGS: u8 = 1;
/// The item has an expiry field.
const HAS_TTL: u8 = 2;
/// The CAS unique takes 8 bytes (it is at least 2^48).
const WIDE_CAS: u8 = 4;
/// Read at least once since it was written (memcached's `h` meta flag).
const FETCHED: u8 = 8;
/// Deleted, replaced, expired or evicted: no index entry points here any more.
const DEAD: u8 = 16;
/// Bytes of `value_len` - 1, in bits 5 and 6.
const VALUE_LEN_SHIFT: u8 = 5;

const NARROW_CAS: u64 = 1 << 48;

fn value_len_bytes(value_len: usize) -> usize {
    match value_len {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        _ => 3,
    }
}

/// What an item holds besides its key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub cas: u64,
    pub client_flags: u32,
    /// Milliseconds on the store's clock when the item expires; 0 = never.
    pub expires_at_ms: u64,
    /// Whether the item keeps an expiry field (it has an expiry, or had one and may again).
    pub has_ttl: bool,
    pub now_s: u32,
}

/// Bytes an item takes in its segment.
pub fn item_len(key_len: usize, value_len: usize, meta: &Meta) -> usize {
    header_len(value_len, meta) + key_len + value_len
}

fn header_len(value_len: usize, meta: &Meta) -> usize {
    2 + value_len_bytes(value_len)
        + if meta.cas >= NARROW_CAS { 8 } else { 6 }
        + 2
        + if meta.client_flags != 0 { 4 } else { 0 }
        + if meta.has_ttl { 6 } else { 0 }
}

fn read_le(bytes: &[u8], at: usize, len: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf[..len].copy_from_slice(&bytes[at..at + len]);
    u64::from_le_bytes(buf)
}

fn write_le(bytes: &mut [u8], at: usize, len: usize, value: u64) {
    bytes[at..at + len].copy_from_slice(&value.to_le_bytes()[..len]);
}

/// An item's header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub key_len: usize,
    pub value_len: usize,
    pub cas: u64,
    pub client_flags: u32,
    pub expires_at_ms: u64,
    pub accessed_s: u16,
    bits: u8,
    /// Where each part starts, from the item's first byte.
    accessed_at: usize,
    expires_at: usize,
    key_at: usize,
}

impl Header {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    pub fn fetched(&self) -> bool {
        self.bits & FETCHED != 0
    }

    pub fn dead(&self) -> bool {
        self.bits & DEAD != 0
    }

    pub fn has_ttl(&self) -> bool {
        self.bits & HAS_TTL != 0
    }

    /// Bytes of the whole item.
    pub fn item_len(&self) -> usize {
        self.key_at + self.key_len + self.value_len
    }

    /// What the item holds besides key and value, for writing it again.
    pub fn meta(&self, now_s: u32) -> Meta {
        Meta {
            cas: self.cas,
            client_flags: self.client_flags,
            expires_at_ms: self.expires_at_ms,
            has_ttl: self.has_ttl(),
            now_s,
        }
    }
}

/// One segment: its bytes and what the store tracks of it.
pub struct Segment {
    data: Box<[u8]>,
    /// Bytes written so far: the next item goes here.
    pub write_at: u32,
    /// Items here that the index points to, and their bytes.
    pub live_items: u32,
    pub live_bytes: u32,
    /// No item written here expires later than this (ms); `u64::MAX` if one never expires.
    pub expires_by: u64,
    /// The earliest expiry of an item written here (ms); `u64::MAX` if none has one.
    pub min_expiry: u64,
    /// The largest CAS unique of an item written here (flush_all kills items up to one).
    pub max_cas: u64,
    pub state: State,
    /// Reads of items here since they were written or moved here, as far as they raised the
    /// item's read counter (so at most three an item), plus one for each item moved here with
    /// reads left; counted up only. A victim's choice compares it per live item.
    pub read_items: u32,
    /// Bumped each time the segment is emptied, so a cursor into it can tell it was reused.
    pub generation: u32,
    /// Neighbours in the segment's queue.
    pub prev: u32,
    pub next: u32,
}

/// Which of S3-FIFO's two queues a segment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Small = 0,
    Main = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Empty, on the free list.
    Free,
    /// Taking writes for its queue, of items in one TTL class.
    Open(Queue, u8),
    /// Full, in its queue, waiting to be evicted.
    Sealed(Queue),
    /// Every item in it is dead (expired or flushed) and counted out; the index still has
    /// entries pointing here until its sweep passes.
    Dead,
}

pub const NIL: u32 = u32::MAX;

impl Segment {
    pub fn new(size: usize) -> Segment {
        Segment {
            // Zeroed: the kernel maps its pages only as items are written.
            data: vec![0u8; size].into_boxed_slice(),
            write_at: 0,
            live_items: 0,
            live_bytes: 0,
            expires_by: 0,
            min_expiry: u64::MAX,
            max_cas: 0,
            state: State::Free,
            read_items: 0,
            generation: 0,
            prev: NIL,
            next: NIL,
        }
    }

    pub fn room(&self) -> usize {
        self.data.len() - self.write_at as usize
    }

    /// Forgets every item: the segment is empty again.
    pub fn clear(&mut self) {
        self.write_at = 0;
        self.live_items = 0;
        self.live_bytes = 0;
        self.expires_by = 0;
        self.min_expiry = u64::MAX;
        self.max_cas = 0;
        self.state = State::Free;
        self.read_items = 0;
        self.generation = self.generation.wrapping_add(1);
        self.prev = NIL;
        self.next = NIL;
    }

    pub fn header(&self, at: u32) -> Header {
        let b = &self.data[at as usize..];
        let bits = b[BITS_AT];
        let vlen_bytes = usize::from((bits >> VALUE_LEN_SHIFT) & 3) + 1;
        let value_len = read_le(b, VALUE_LEN_AT, vlen_bytes) as usize;
        let cas_at = VALUE_LEN_AT + vlen_bytes;
        let cas_len = if bits & WIDE_CAS != 0 { 8 } else { 6 };
        let accessed_at = cas_at + cas_len;
        let mut next = accessed_at + 2;
        let client_flags = if bits & HAS_FLAGS != 0 {
            next += 4;
            read_le(b, next - 4, 4) as u32
        } else {
            0
        };
        let expires_at = next;
        let expires_at_ms = if bits & HAS_TTL != 0 {
            next += 6;
            read_le(b, expires_at, 6)
        } else {
            0
        };
        Header {
            key_len: usize::from(b[KEY_LEN_AT]),
            value_len,
            cas: read_le(b, cas_at, cas_len),
            client_flags,
            expires_at_ms,
            accessed_s: read_le(b, accessed_at, 2) as u16,
            bits,
            accessed_at,
            expires_at,
            key_at: next,
        }
    }

    pub fn key(&self, at: u32, h: &Header) -> &[u8] {
        let start = at as usize + h.key_at;
        &self.data[start..start + h.key_len]
    }

    pub fn value(&self, at: u32, h: &Header) -> &[u8] {
        let start = at as usize + h.key_at + h.key_len;
        &self.data[start..start + h.value_len]
    }

    /// The whole item's bytes.
    pub fn item(&self, at: u32, h: &Header) -> &[u8] {
        &self.data[at as usize..at as usize + h.item_len()]
    }

    /// Writes an item at `at` (the end of the segment, or the place of an item of the same
    /// length and layout). Its value is `value` then `tail`, so append and prepend need no
    /// buffer of their own. Returns its length.
    pub fn write(&mut self, at: u32, meta: &Meta, key: &[u8], value: &[u8], tail: &[u8]) -> usize {
        let value_len = value.len() + tail.len();
        let vlen_bytes = value_len_bytes(value_len);
        let mut bits = ((vlen_bytes - 1) as u8) << VALUE_LEN_SHIFT;
        let cas_len = if meta.cas >= NARROW_CAS {
            bits |= WIDE_CAS;
            8
        } else {
            6
        };
        if meta.client_flags != 0 {
            bits |= HAS_FLAGS;
        }
        if meta.has_ttl {
            bits |= HAS_TTL;
        }
        let b = &mut self.data[at as usize..];
        b[KEY_LEN_AT] = key.len() as u8;
        b[BITS_AT] = bits;
        write_le(b, VALUE_LEN_AT, vlen_bytes, value_len as u64);
        let mut next = VALUE_LEN_AT + vlen_bytes;
        write_le(b, next, cas_len, meta.cas);
        next += cas_len;
        write_le(b, next, 2, u64::from(meta.now_s as u16));
        next += 2;
        if meta.client_flags != 0 {
            write_le(b, next, 4, u64::from(meta.client_flags));
            next += 4;
        }
        if meta.has_ttl {
            write_le(b, next, 6, meta.expires_at_ms);
            next += 6;
        }
        for part in [key, value, tail] {
            b[next..next + part.len()].copy_from_slice(part);
            next += part.len();
        }
        self.note(meta);
        next
    }

    /// Copies an item in from another segment to the end of this one; returns its place.
    pub fn append_copy(&mut self, item: &[u8], h: &Header) -> u32 {
        let at = self.write_at;
        self.data[at as usize..at as usize + item.len()].copy_from_slice(item);
        self.write_at += item.len() as u32;
        self.live_items += 1;
        self.live_bytes += item.len() as u32;
        self.note(&h.meta(0));
        at
    }

    /// Makes the segment, while its items are being evicted, take the ones that stay from its
    /// start ([`Segment::compact`]). Its live counts stay those of the items not yet looked
    /// at; its bounds start over, to cover only what it will keep; and its generation changes,
    /// since its items change places.
    pub fn begin_compaction(&mut self) {
        self.write_at = 0;
        self.read_items = 0;
        self.expires_by = 0;
        self.min_expiry = u64::MAX;
        self.max_cas = 0;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Moves the item at `at` down to the end of what the segment keeps, which is at most
    /// `at`: the bytes after the item are not touched. Returns its new place.
    pub fn compact(&mut self, at: u32, h: &Header) -> u32 {
        let to = self.write_at;
        debug_assert!(to <= at);
        let len = h.item_len();
        self.data
            .copy_within(at as usize..at as usize + len, to as usize);
        self.write_at += len as u32;
        self.note(&h.meta(0));
        to
    }

    /// Widens the segment's expiry and CAS bounds to cover an item written here.
    fn note(&mut self, meta: &Meta) {
        let expires = if meta.expires_at_ms == 0 {
            u64::MAX
        } else {
            meta.expires_at_ms
        };
        self.expires_by = self.expires_by.max(expires);
        self.min_expiry = self.min_expiry.min(expires);
        self.max_cas = self.max_cas.max(meta.cas);
    }

    /// Marks the item read at `now_s`.
    pub fn touch(&mut self, at: u32, h: &Header, now_s: u32) {
        let b = &mut self.data[at as usize..];
        b[BITS_AT] |= FETCHED;
        write_le(b, h.accessed_at, 2, u64::from(now_s as u16));
    }

    /// Gives an item with an expiry field a new expiry (0 = never).
    pub fn set_expiry(&mut self, at: u32, h: &Header, expires_at_ms: u64) {
        debug_assert!(h.has_ttl());
        write_le(
            &mut self.data[at as usize..],
            h.expires_at,
            6,
            expires_at_ms,
        );
        self.note(&Meta {
            expires_at_ms,
            ..h.meta(0)
        });
    }

    /// Marks the item dead: its bytes stay until the segment is reused.
    pub fn kill(&mut self, at: u32, h: &Header) {
        self.data[at as usize + BITS_AT] |= DEAD;
        self.live_items -= 1;
        self.live_bytes -= h.item_len() as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(cas: u64, client_flags: u32, expires_at_ms: u64) -> Meta {
        Meta {
            cas,
            client_flags,
            expires_at_ms,
            has_ttl: expires_at_ms != 0,
            now_s: 70_000,
        }
    }

    #[test]
    fn items_round_trip_with_every_optional_field() {
        let mut s = Segment::new(SEGMENT_SIZE);
        let mut big = Segment::new(SEGMENT_SIZE);
        let largest = meta(1 << 47, 1, 1);
        let n = big.write(0, &largest, &[b'k'; 250], &vec![1; 1 << 20], b"");
        assert_eq!(n, item_len(250, 1 << 20, &largest));
        assert_eq!(big.value(0, &big.header(0)).len(), 1 << 20);
        let cases = [
            (meta(1, 0, 0), 32usize),
            (meta((1 << 48) + 5, 7, 123_456_789), 300),
            (meta(9, u32::MAX, 5), 70_000),
            (meta(u64::MAX, 0, (1 << 48) - 1), 0),
            (meta(3, 0, 0), 900_000),
        ];
        let mut places = Vec::new();
        for (i, (m, vlen)) in cases.iter().enumerate() {
            let key = vec![b'k' + i as u8; 1 + i * 60];
            let value = vec![i as u8; *vlen];
            let (head, tail) = value.split_at(vlen / 3);
            let at = s.write_at;
            let n = s.write(at, m, &key, head, tail);
            assert_eq!(n, item_len(key.len(), *vlen, m));
            s.write_at += n as u32;
            places.push((at, key, value));
        }
        for ((at, key, value), (m, _)) in places.iter().zip(&cases) {
            let h = s.header(*at);
            assert_eq!(h.meta(m.now_s), *m);
            assert_eq!(h.accessed_s, 70_000u32 as u16);
            assert_eq!(s.key(*at, &h), &key[..]);
            assert_eq!(s.value(*at, &h), &value[..]);
            assert!(!h.fetched() && !h.dead());
        }
        assert_eq!(s.expires_by, u64::MAX);
        assert_eq!(s.max_cas, u64::MAX);
    }

    #[test]
    fn a_small_item_has_an_eleven_byte_header() {
        assert_eq!(item_len(16, 32, &meta(1, 0, 0)), 16 + 32 + 11);
        assert_eq!(item_len(16, 32, &meta(1, 1, 1)), 16 + 32 + 21);
    }

    #[test]
    fn touch_expiry_and_kill_change_only_their_fields() {
        let mut s = Segment::new(4096);
        let n = s.write(0, &meta(4, 0, 100), b"key", b"value", b"");
        s.write_at = n as u32;
        s.live_items = 1;
        s.live_bytes = n as u32;
        let h = s.header(0);
        s.touch(0, &h, 5);
        s.set_expiry(0, &h, 900);
        let h = s.header(0);
        assert!(h.fetched());
        assert_eq!((h.accessed_s, h.expires_at_ms, h.cas), (5, 900, 4));
        assert_eq!(s.value(0, &h), b"value");
        assert_eq!(s.expires_by, 900);
        s.kill(0, &h);
        assert!(s.header(0).dead());
        assert_eq!((s.live_items, s.live_bytes), (0, 0));
    }
}
