//! The hot request shapes (`Ping`, `Get`, `Set`, `Delete`) read in one pass, without
//! `flatbuffers`' generic verifier.
//!
//! The crate's verifier costs about a thousand instructions for a `Get`: it walks the schema
//! through generic visitors and builds an error trace for every field it looks at, even when
//! nothing is wrong. [`read`] makes the same checks for these four shapes in straight-line safe
//! code (every byte it reads comes from a bounds-checked slice access) and reads the fields as
//! it checks them:
//!
//! - every scalar, offset and vtable entry in the buffer and aligned to its size relative to the
//!   frame's start, as `Verifier::in_buffer` requires;
//! - every table's signed vtable offset landing inside the frame, its vtable length even-ending
//!   and the vtable in the frame, as `Verifier::visit_table` requires;
//! - every vector's length and bytes in the frame;
//! - the union's type and value both present or both absent;
//! - the same "apparent size" the verifier counts (each range it checks, summed), held to the
//!   same limit. Two tables at depth two are under any limits [`super::verifier_options`] sets.
//!
//! Any other shape, and anything the reader is unsure of, comes back `None`, and the caller
//! takes the verifier's path: the reader may refuse what the verifier accepts, never the other
//! way. `fuzz/fuzz_targets/request_hot_path.rs` and the tests below hold it to that: every frame
//! it reads, the verifier accepts and the generated accessors read to the same request.

/// The fields of a hot request as the buffer holds them, before the protocol's rules (a key
/// must be present and 1..=250 bytes, ...) are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotOp<'a> {
    Ping {
        payload: Option<&'a [u8]>,
    },
    Get {
        key: Option<&'a [u8]>,
    },
    Set {
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        ttl_ms: u32,
    },
    Delete {
        key: Option<&'a [u8]>,
    },
}

// The schema's numbers (schemas/percore.fbs), checked against the generated code in the tests.
const OP_PING: u8 = 2;
const OP_GET: u8 = 3;
const OP_SET: u8 = 4;
const OP_DELETE: u8 = 5;
const REQUEST_ID: usize = 4;
const REQUEST_OP_TYPE: usize = 6;
const REQUEST_OP: usize = 8;
/// The first field of Ping (payload), Get, Set and Delete (key).
const FIRST_FIELD: usize = 4;
const SET_VALUE: usize = 6;
const SET_TTL_MS: usize = 8;
/// Where the root offset of a size-prefixed buffer is.
const ROOT_AT: usize = 4;

/// Reads `frame` (one whole frame, length prefix included, identifier already checked) as one
/// of the hot shapes, or `None` if it is not one or is not certainly valid. `max_apparent` is
/// the verifier's `max_apparent_size` for this frame.
pub fn read(frame: &[u8], max_apparent: usize) -> Option<(u64, HotOp<'_>)> {
    let mut r = Reader {
        buf: frame,
        apparent: 0,
    };
    let root = r.follow(ROOT_AT)?;
    let request = r.table(root)?;
    let id = match r.field(&request, REQUEST_ID)? {
        Some(at) => r.u64_at(at)?,
        None => 0,
    };
    // The verifier looks up the union's value before its type; the order changes nothing here.
    let op_at = r.field(&request, REQUEST_OP)?;
    let type_at = r.field(&request, REQUEST_OP_TYPE)?;
    let (Some(type_at), Some(op_at)) = (type_at, op_at) else {
        // Neither (no operation) or only one of them (inconsistent): the verifier's path says.
        return None;
    };
    let op_type = r.u8_at(type_at)?;
    let op = r.follow(op_at)?;
    let op = r.table(op)?;
    let first = r.bytes_field(&op, FIRST_FIELD)?;
    let hot = match op_type {
        OP_PING => HotOp::Ping { payload: first },
        OP_GET => HotOp::Get { key: first },
        OP_DELETE => HotOp::Delete { key: first },
        OP_SET => {
            let value = r.bytes_field(&op, SET_VALUE)?;
            let ttl_ms = match r.field(&op, SET_TTL_MS)? {
                Some(at) => r.u32_at(at)?,
                None => 0,
            };
            HotOp::Set {
                key: first,
                value,
                ttl_ms,
            }
        }
        _ => return None,
    };
    (r.apparent <= max_apparent).then_some((id, hot))
}

/// A table's position, its vtable's and the vtable's length in bytes.
struct Table {
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

/// The frame and the sum of the sizes of the ranges checked so far (the verifier's apparent
/// size: a range checked twice counts twice).
struct Reader<'a> {
    buf: &'a [u8],
    apparent: usize,
}

impl<'a> Reader<'a> {
    /// `size` bytes at `pos`, which must be a multiple of `align`, counted into the apparent
    /// size.
    fn range(&mut self, pos: usize, size: usize, align: usize) -> Option<&'a [u8]> {
        if pos % align != 0 {
            return None;
        }
        let bytes = self.buf.get(pos..pos.checked_add(size)?)?;
        self.apparent = self.apparent.saturating_add(size);
        Some(bytes)
    }

    fn array<const N: usize>(&mut self, pos: usize) -> Option<[u8; N]> {
        self.range(pos, N, N)?.try_into().ok()
    }

    fn u8_at(&mut self, pos: usize) -> Option<u8> {
        Some(self.array::<1>(pos)?[0])
    }

    fn u16_at(&mut self, pos: usize) -> Option<u16> {
        self.array(pos).map(u16::from_le_bytes)
    }

    fn u32_at(&mut self, pos: usize) -> Option<u32> {
        self.array(pos).map(u32::from_le_bytes)
    }

    fn u64_at(&mut self, pos: usize) -> Option<u64> {
        self.array(pos).map(u64::from_le_bytes)
    }

    /// Where the unsigned offset at `pos` points (not yet checked: what is there is).
    fn follow(&mut self, pos: usize) -> Option<usize> {
        let offset = self.u32_at(pos)?;
        pos.checked_add(offset as usize)
    }

    /// The table at `pos`: its vtable found through the signed offset there, in the frame.
    fn table(&mut self, pos: usize) -> Option<Table> {
        let soffset = i32::from_le_bytes(self.array(pos)?);
        // A positive offset points back, a negative one forward.
        let vtable = if soffset > 0 {
            pos.checked_sub(soffset.unsigned_abs() as usize)?
        } else {
            pos.checked_add(soffset.unsigned_abs() as usize)?
        };
        if vtable >= self.buf.len() {
            return None;
        }
        let vtable_len = self.u16_at(vtable)? as usize;
        // The vtable holds u16 entries, so it ends on an even position; then it is all here.
        if vtable.checked_add(vtable_len)? % 2 != 0 {
            return None;
        }
        self.range(vtable, vtable_len, 1)?;
        Some(Table {
            pos,
            vtable,
            vtable_len,
        })
    }

    /// Where field `voffset` of `table` is, `Some(None)` if the table leaves it out.
    fn field(&mut self, table: &Table, voffset: usize) -> Option<Option<usize>> {
        if voffset >= table.vtable_len {
            return Some(None);
        }
        match self.u16_at(table.vtable.checked_add(voffset)?)? {
            0 => Some(None),
            offset => Some(Some(table.pos.checked_add(offset as usize)?)),
        }
    }

    /// The `[ubyte]` field `voffset` of `table`: `Some(None)` if left out, `None` if invalid.
    fn bytes_field(&mut self, table: &Table, voffset: usize) -> Option<Option<&'a [u8]>> {
        let Some(at) = self.field(table, voffset)? else {
            return Some(None);
        };
        let vector = self.follow(at)?;
        let len = self.u32_at(vector)? as usize;
        self.range(vector.checked_add(4)?, len, 1).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::protocol::{fb, verifier_options, Op, Request, RequestEncoder};

    /// The property the hot reader must keep, on one frame: whatever it reads, the verifier
    /// accepts, and decoding through either path gives the same result.
    fn agrees(frame: &[u8]) -> bool {
        let max = frame.len().saturating_mul(2);
        let read = read(frame, max);
        if read.is_some() {
            let verified = flatbuffers::size_prefixed_root_with_opts::<fb::Request>(
                &verifier_options(max),
                frame,
            );
            assert!(
                verified.is_ok(),
                "hot read {read:?}, verifier {verified:?}: {frame:02x?}"
            );
        }
        if frame.get(8..12) == Some(b"PCRQ") {
            assert_eq!(
                Request::decode(frame),
                Request::decode_verified(frame),
                "{frame:02x?}"
            );
        }
        read.is_some()
    }

    /// A small deterministic generator (xorshift64*), so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn hot_frames() -> Vec<Vec<u8>> {
        let bytes = [0x5au8; 300];
        let mut ops = Vec::new();
        for n in [0usize, 1, 3, 4, 5, 8, 9, 250, 251, 300] {
            let b = &bytes[..n];
            ops.push(Op::Ping { payload: b });
            ops.push(Op::Get { key: b });
            ops.push(Op::Delete { key: b });
            for ttl_ms in [0, 7] {
                ops.push(Op::Set {
                    key: &bytes[..n.min(20)],
                    value: b,
                    ttl_ms,
                });
                ops.push(Op::Set {
                    key: b,
                    value: &bytes[..3],
                    ttl_ms,
                });
            }
        }
        let mut frames = Vec::new();
        let mut encoder = RequestEncoder::new();
        for id in [0, 1, 0x0102_0304_0506_0708, u64::MAX] {
            for op in &ops {
                let mut out = BytesMut::new();
                encoder.encode(id, op, &mut out);
                frames.push(out.to_vec());
            }
        }
        frames
    }

    #[test]
    fn reads_every_hot_frame_the_encoder_makes() {
        for frame in hot_frames() {
            assert!(agrees(&frame), "the hot reader refused {frame:02x?}");
        }
    }

    #[test]
    fn leaves_other_shapes_to_the_verifier() {
        let mut encoder = RequestEncoder::new();
        for op in [
            Op::Hello { client: "x" },
            Op::Stats,
            Op::Compute {
                algo: crate::protocol::Algo::Sha256,
                input: b"abc",
                rounds: 3,
            },
        ] {
            let mut out = BytesMut::new();
            encoder.encode(9, &op, &mut out);
            assert!(!agrees(&out), "{op:?} was read by the hot reader");
            assert_eq!(Request::decode(&out), Ok(Request { id: 9, op }));
        }
    }

    /// Every single-byte change of every hot frame, to values that move offsets, lengths and
    /// alignments by small and large steps.
    #[test]
    fn single_byte_mutations_agree() {
        let mut read_some = 0usize;
        for frame in hot_frames().iter().filter(|f| f.len() <= 80) {
            for at in 0..frame.len() {
                let b = frame[at];
                for v in [
                    0,
                    1,
                    2,
                    4,
                    0x7f,
                    0x80,
                    0xff,
                    b ^ 1,
                    b.wrapping_add(4),
                    b.wrapping_sub(4),
                ] {
                    let mut m = frame.clone();
                    m[at] = v;
                    read_some += agrees(&m) as usize;
                }
            }
        }
        assert!(read_some > 1000, "mutations read: {read_some}");
    }

    /// Random multi-byte changes, truncations and extensions.
    #[test]
    fn random_mutations_agree() {
        let frames = hot_frames();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            let mut m = frames[rng.below(frames.len())].clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(6) {
                    0 if m.len() > 12 => m.truncate(12 + rng.below(m.len() - 12)),
                    1 => m.extend((0..rng.below(9)).map(|_| rng.next() as u8)),
                    2 => {
                        // A small word in a u16 or u32 slot: plausible offsets.
                        let at = rng.below(m.len() - 1) & !1;
                        let v = (rng.below(64) as u16).to_le_bytes();
                        m[at..at + 2].copy_from_slice(&v);
                    }
                    _ => {
                        let at = rng.below(m.len());
                        m[at] = rng.next() as u8;
                    }
                }
            }
            agrees(&m);
        }
    }

    /// Longer vtables (their extra entries are unknown fields, which both ignore) raise the
    /// apparent size past the limit: both must refuse the same frames.
    #[test]
    fn apparent_size_limit_agrees() {
        let key = [7u8; 250];
        let mut out = BytesMut::new();
        RequestEncoder::new().encode(5, &Op::Get { key: &key }, &mut out);
        let frame = out.to_vec();
        let word = |f: &[u8], at: usize| u32::from_le_bytes(f[at..at + 4].try_into().unwrap());
        let vtable_of = |f: &[u8], table: usize| table - word(f, table) as usize;
        let root = 4 + word(&frame, 4) as usize;
        let op_field = root + u16::from_le_bytes([frame[vtable_of(&frame, root) + 8], 0]) as usize;
        let op = op_field + word(&frame, op_field) as usize;
        let (request_vt, op_vt) = (vtable_of(&frame, root), vtable_of(&frame, op));
        let (mut refused_for_size, mut read) = (0, 0);
        for request_len in (4..frame.len() - request_vt).step_by(2) {
            for op_len in (4..frame.len() - op_vt).step_by(6) {
                let mut m = frame.clone();
                m[request_vt..request_vt + 2].copy_from_slice(&(request_len as u16).to_le_bytes());
                m[op_vt..op_vt + 2].copy_from_slice(&(op_len as u16).to_le_bytes());
                read += agrees(&m) as usize;
                let options = verifier_options(m.len() * 2);
                if let Err(flatbuffers::InvalidFlatbuffer::ApparentSizeTooLarge) =
                    flatbuffers::size_prefixed_root_with_opts::<fb::Request>(&options, &m)
                {
                    refused_for_size += 1;
                }
            }
        }
        assert!(
            read > 100 && refused_for_size > 100,
            "{read} read, {refused_for_size} refused"
        );
    }

    #[test]
    fn the_verifier_limits_allow_two_tables_at_depth_two() {
        let options = verifier_options(0);
        assert!(options.max_depth >= 2 && options.max_tables >= 2);
    }

    #[test]
    fn constants_are_the_schemas() {
        assert_eq!(fb::Op::Ping.0, OP_PING);
        assert_eq!(fb::Op::Get.0, OP_GET);
        assert_eq!(fb::Op::Set.0, OP_SET);
        assert_eq!(fb::Op::Delete.0, OP_DELETE);
        assert_eq!(fb::Request::VT_ID as usize, REQUEST_ID);
        assert_eq!(fb::Request::VT_OP_TYPE as usize, REQUEST_OP_TYPE);
        assert_eq!(fb::Request::VT_OP as usize, REQUEST_OP);
        assert_eq!(fb::Ping::VT_PAYLOAD as usize, FIRST_FIELD);
        assert_eq!(fb::Get::VT_KEY as usize, FIRST_FIELD);
        assert_eq!(fb::Delete::VT_KEY as usize, FIRST_FIELD);
        assert_eq!(fb::Set::VT_KEY as usize, FIRST_FIELD);
        assert_eq!(fb::Set::VT_VALUE as usize, SET_VALUE);
        assert_eq!(fb::Set::VT_TTL_MS as usize, SET_TTL_MS);
    }
}
