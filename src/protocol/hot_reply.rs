//! The hot replies written straight into the output, without `FlatBufferBuilder`: `PingReply` and
//! `Value` (status Ok), the bodiless Ok of `Set` and `Delete`, and every error reply (a status and
//! its reason, such as a get's or a delete's NotFound).
//!
//! The builder spends most of a reply's encoding on bookkeeping that does not change between
//! replies of one shape: vtable search and deduplication, alignment padding computed field by
//! field, and a copy of the finished buffer into the output. These replies always have the same
//! tables, so their layout is fixed here once: a header of 64 bytes (68 for `Value`) that only
//! the size prefix, the id and the ttl vary in, then the vector's bytes. It is a valid FlatBuffer
//! of the same schema, identifier and size prefix (the wire format is the schema's, not one
//! builder's byte order); the tests below hold every layout to the real verifier and to the
//! generated accessors, for every length class.
//!
//! Byte positions, counted from the frame's start (the verifier checks alignment from there):
//!
//! | at | what |
//! |---:|---|
//! | 0 | size prefix: the frame's length minus 4 |
//! | 4 | root offset: 20, to the `Response` table at 24 |
//! | 8 | file identifier `PCRS` |
//! | 12 | `Response` vtable: 12 bytes long, table 20 bytes; id at +8, status at +17, body_type at +16, body at +4 (error left out) |
//! | 24 | `Response` table: soffset 12 back to its vtable; body offset 24 (to 52); id (8-aligned, at 32); body_type; status Ok; 2 bytes of padding |
//! | 44 | the body's vtable: `PingReply` 6 bytes (payload at +4) and 2 of padding, or `Value` 8 bytes (value at +4, ttl_ms at +8) |
//! | 52 | the body table: soffset 8 back to its vtable; the vector's offset; `Value`'s ttl_ms |
//! | 60 or 64 | the vector: u32 length, its bytes, zero padding to a multiple of 4 |
//!
//! The bodiless Ok ([`empty`], 32 bytes; status Ok is the schema's default, so it is left out):
//!
//! | at | what |
//! |---:|---|
//! | 0..12 | size prefix (28), root offset 16 (to the table at 20), identifier |
//! | 12 | `Response` vtable: 6 bytes long, table 12 bytes, id at +4; 2 bytes of padding |
//! | 20 | `Response` table: soffset 8 back to its vtable; id (8-aligned, at 24) |
//!
//! An error reply ([`error`]):
//!
//! | at | what |
//! |---:|---|
//! | 0..12 | size prefix, root offset 24 (to the table at 28), identifier |
//! | 12 | `Response` vtable: 14 bytes long, table 20 bytes; id at +4, status at +16, error at +12 (body_type and body left out); 2 bytes of padding |
//! | 28 | `Response` table: soffset 16 back to its vtable; id (at 32); the error's offset (to 48); status; 3 bytes of padding |
//! | 48 | the error string: u32 length, its bytes, the NUL terminator, zero padding to a multiple of 4 |

use bytes::{BufMut, BytesMut};

/// Bytes before a `PingReply`'s payload.
const PING_HEADER: usize = 64;
/// Bytes before a `Value`'s value.
const VALUE_HEADER: usize = 68;
/// Bytes before an error reply's reason.
const ERROR_HEADER: usize = 52;
/// The most bytes a hot reply carries: its frame's length must fit the u32 size prefix.
const MAX_HOT_LEN: usize = u32::MAX as usize - 128;

/// `Reply::PingReply` and `Reply::Value` in the schema's `Reply` union.
const REPLY_PING: u8 = 2;
const REPLY_VALUE: u8 = 3;

/// The 52 bytes both replies share: prefix, root, identifier, the `Response` table.
fn response_head(id: u64, body_type: u8) -> [u8; 52] {
    let mut h = [0u8; 52];
    // 0..4: the size prefix, written by the caller.
    h[4..8].copy_from_slice(&20u32.to_le_bytes());
    h[8..12].copy_from_slice(super::RESPONSE_IDENTIFIER.as_bytes());
    // The Response vtable: its length, the table's length, then id, status, body_type, body.
    for (i, v) in [12u16, 20, 8, 17, 16, 4].into_iter().enumerate() {
        h[12 + 2 * i..14 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    h[24..28].copy_from_slice(&12i32.to_le_bytes());
    h[28..32].copy_from_slice(&24u32.to_le_bytes());
    h[32..40].copy_from_slice(&id.to_le_bytes());
    h[40] = body_type;
    // 41: status Ok (0); 42..44: padding.
    h
}

/// Appends the frame of a successful `PingReply` to request `id`, or returns false (writing
/// nothing) if the payload is too long for this layout's size prefix.
pub fn ping(id: u64, payload: &[u8], out: &mut BytesMut) -> bool {
    if payload.len() > MAX_HOT_LEN {
        return false;
    }
    let mut h = response_head(id, REPLY_PING);
    // 44..52: the PingReply vtable (6 bytes: its length, the table's, payload at +4), padding.
    h[44..46].copy_from_slice(&6u16.to_le_bytes());
    h[46..48].copy_from_slice(&8u16.to_le_bytes());
    h[48..50].copy_from_slice(&4u16.to_le_bytes());
    let mut tail = [0u8; 12];
    // 52: the table's soffset back to 44; 56: the payload's offset, to 60; 60: its length.
    tail[0..4].copy_from_slice(&8i32.to_le_bytes());
    tail[4..8].copy_from_slice(&4u32.to_le_bytes());
    tail[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    put(out, &h, &tail, PING_HEADER, payload);
    true
}

/// Appends the frame of a successful `Value` reply to request `id`, or returns false (writing
/// nothing) if the value is too long for this layout's size prefix.
pub fn value(id: u64, value: &[u8], ttl_ms: u32, out: &mut BytesMut) -> bool {
    if value.len() > MAX_HOT_LEN {
        return false;
    }
    let mut h = response_head(id, REPLY_VALUE);
    // 44..52: the Value vtable: its length, the table's, value at +4, ttl_ms at +8.
    for (i, v) in [8u16, 12, 4, 8].into_iter().enumerate() {
        h[44 + 2 * i..46 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    let mut tail = [0u8; 16];
    // 52: soffset back to 44; 56: the value's offset, to 64; 60: ttl_ms; 64: the length.
    tail[0..4].copy_from_slice(&8i32.to_le_bytes());
    tail[4..8].copy_from_slice(&8u32.to_le_bytes());
    tail[8..12].copy_from_slice(&ttl_ms.to_le_bytes());
    tail[12..16].copy_from_slice(&(value.len() as u32).to_le_bytes());
    put(out, &h, &tail, VALUE_HEADER, value);
    true
}

/// Appends the frame of a successful reply without a body (`Set`, `Delete`) to request `id`.
pub fn empty(id: u64, out: &mut BytesMut) {
    let mut f = [0u8; 32];
    f[0..4].copy_from_slice(&28u32.to_le_bytes());
    f[4..8].copy_from_slice(&16u32.to_le_bytes());
    f[8..12].copy_from_slice(super::RESPONSE_IDENTIFIER.as_bytes());
    // The vtable: its length, the table's, id at +4; 18..20: padding.
    for (i, v) in [6u16, 12, 4].into_iter().enumerate() {
        f[12 + 2 * i..14 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    f[20..24].copy_from_slice(&8i32.to_le_bytes());
    f[24..32].copy_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&f);
}

/// Appends the frame of an error reply to request `id`: `status` (its value in the schema's
/// `Status`) and the reason `message`. Returns false (writing nothing) if the message is too long
/// for this layout's size prefix.
pub fn error(id: u64, status: u8, message: &str, out: &mut BytesMut) -> bool {
    let message = message.as_bytes();
    if message.len() > MAX_HOT_LEN {
        return false;
    }
    let mut h = [0u8; ERROR_HEADER];
    // 0..4: the size prefix, written below.
    h[4..8].copy_from_slice(&24u32.to_le_bytes());
    h[8..12].copy_from_slice(super::RESPONSE_IDENTIFIER.as_bytes());
    // The vtable: its length, the table's, then id, status, body_type, body, error.
    for (i, v) in [14u16, 20, 4, 16, 0, 0, 12].into_iter().enumerate() {
        h[12 + 2 * i..14 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    h[28..32].copy_from_slice(&16i32.to_le_bytes());
    h[32..40].copy_from_slice(&id.to_le_bytes());
    h[40..44].copy_from_slice(&8u32.to_le_bytes());
    h[44] = status;
    h[48..52].copy_from_slice(&(message.len() as u32).to_le_bytes());
    // The NUL terminator and the padding after it: 1 to 4 zero bytes.
    let zeros = 1 + (message.len() + 1).wrapping_neg() % 4;
    let frame_len = ERROR_HEADER + message.len() + zeros;
    h[0..4].copy_from_slice(&((frame_len - 4) as u32).to_le_bytes());
    out.reserve(frame_len);
    out.put_slice(&h);
    out.put_slice(message);
    out.put_bytes(0, zeros);
    true
}

/// Writes head, tail (together `header` bytes), the vector's bytes and its padding, with the
/// size prefix of the whole.
fn put(out: &mut BytesMut, head: &[u8; 52], tail: &[u8], header: usize, bytes: &[u8]) {
    let padding = bytes.len().wrapping_neg() % 4;
    let frame_len = header + bytes.len() + padding;
    out.reserve(frame_len);
    // The callers bound `bytes` so that this fits.
    out.put_u32_le((frame_len - 4) as u32);
    out.put_slice(&head[4..]);
    out.put_slice(tail);
    out.put_slice(bytes);
    out.put_bytes(0, padding);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{fb, verifier_options, ReplyView, ResponseView, Status};

    #[test]
    fn constants_are_the_schemas() {
        assert_eq!(fb::Reply::PingReply.0, REPLY_PING);
        assert_eq!(fb::Reply::Value.0, REPLY_VALUE);
        assert_eq!(Status::Ok.0, 0);
        assert_eq!(
            [
                fb::Response::VT_ID,
                fb::Response::VT_STATUS,
                fb::Response::VT_BODY_TYPE,
                fb::Response::VT_BODY,
                fb::Response::VT_ERROR
            ],
            [4, 6, 8, 10, 12]
        );
        assert_eq!((fb::PingReply::VT_PAYLOAD, fb::Value::VT_VALUE), (4, 4));
        assert_eq!(fb::Value::VT_TTL_MS, 6);
    }

    /// Verifies `frame` with limits tighter than any client of this crate sets (an apparent size
    /// of twice the frame, as the server allows requests; `ResponseView` allows four times) and
    /// reads it with the generated accessors.
    fn read_back(frame: &[u8]) -> fb::Response<'_> {
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, frame.len());
        assert_eq!(frame.len() % 4, 0);
        let options = verifier_options(frame.len() * 2);
        flatbuffers::size_prefixed_root_with_opts::<fb::Response>(&options, frame)
            .unwrap_or_else(|e| panic!("{e}: {frame:02x?}"))
    }

    #[test]
    fn ping_replies_verify_and_read_back() {
        let bytes: Vec<u8> = (0..=255).collect();
        for id in [0, 1, 0x0102_0304_0506_0708, u64::MAX] {
            for n in (0..40).chain([255, 256]) {
                let payload = &bytes[..n];
                let mut out = BytesMut::from(&b"xyz"[..]);
                assert!(ping(id, payload, &mut out));
                assert_eq!(&out[..3], b"xyz", "appends");
                let frame = &out[3..];
                let r = read_back(frame);
                assert_eq!((r.id(), r.status(), r.error()), (id, Status::Ok, None));
                let body = r.body_as_ping_reply().expect("a PingReply");
                assert_eq!(body.payload().map(|p| p.bytes()), Some(payload));
                let view = ResponseView::decode(frame).unwrap();
                assert!(matches!(view.body, ReplyView::Ping { payload: p } if p == payload));
            }
        }
    }

    #[test]
    fn value_replies_verify_and_read_back() {
        let bytes: Vec<u8> = (0..=255).rev().collect();
        for id in [0, 7, u64::MAX] {
            for ttl_ms in [0, 1, u32::MAX] {
                for n in (0..40).chain([100, 255]) {
                    let v = &bytes[..n];
                    let mut out = BytesMut::new();
                    assert!(value(id, v, ttl_ms, &mut out));
                    let r = read_back(&out);
                    assert_eq!((r.id(), r.status(), r.error()), (id, Status::Ok, None));
                    let body = r.body_as_value().expect("a Value");
                    assert_eq!(body.value().map(|v| v.bytes()), Some(v));
                    assert_eq!(body.ttl_ms(), ttl_ms);
                    assert!(r.body_as_ping_reply().is_none());
                }
            }
        }
    }

    #[test]
    fn empty_replies_verify_and_read_back() {
        for id in [0, 1, 0x0102_0304_0506_0708, u64::MAX] {
            let mut out = BytesMut::from(&b"ab"[..]);
            empty(id, &mut out);
            assert_eq!(&out[..2], b"ab", "appends");
            let frame = &out[2..];
            let r = read_back(frame);
            assert_eq!((r.id(), r.status(), r.error()), (id, Status::Ok, None));
            assert_eq!(r.body_type(), fb::Reply::NONE);
            assert!(r.body().is_none());
            let view = ResponseView::decode(frame).unwrap();
            assert_eq!((view.id, view.status, view.error), (id, Status::Ok, None));
            assert!(matches!(view.body, ReplyView::None));
            let mut encoded = BytesMut::new();
            crate::protocol::ResponseEncoder::new().ok(
                id,
                &crate::protocol::Reply::Empty,
                &mut encoded,
            );
            assert_eq!(encoded, frame, "the encoder writes this layout");
        }
    }

    #[test]
    fn error_replies_verify_and_read_back() {
        let text: String = ('a'..='z').cycle().take(300).collect();
        // Multi-byte UTF-8 too: the length is in bytes.
        let accented = "clé absente: ünïcödé";
        for &status in Status::ENUM_VALUES {
            for id in [0, 3, u64::MAX] {
                for message in (0..40)
                    .chain([255, 256, 300])
                    .map(|n| &text[..n])
                    .chain([accented])
                {
                    let mut out = BytesMut::from(&b"q"[..]);
                    assert!(error(id, status.0, message, &mut out));
                    let frame = &out[1..];
                    let r = read_back(frame);
                    assert_eq!((r.id(), r.status(), r.error()), (id, status, Some(message)));
                    assert_eq!(r.body_type(), fb::Reply::NONE);
                    assert!(r.body().is_none());
                    let view = ResponseView::decode(frame).unwrap();
                    assert_eq!(
                        (view.id, view.status, view.error),
                        (id, status, Some(message))
                    );
                    assert!(matches!(view.body, ReplyView::None));
                }
            }
        }
    }

    /// The encoder's replies for every `RequestError` take the fixed layout and carry the
    /// error's status and its `Display` text.
    #[test]
    fn encoder_error_replies_are_the_fixed_layout() {
        use crate::error::RequestError::{self, *};
        let errors: [RequestError; 17] = [
            EmptyFrame,
            FrameTooLarge {
                len: usize::MAX,
                max: 1,
            },
            Malformed("x"),
            UnknownOp(u8::MAX),
            MissingField("key"),
            EmptyKey,
            KeyTooLarge(300),
            ValueTooLarge(usize::MAX),
            InputTooLarge(2 << 20),
            ZeroRounds,
            TooManyRounds(u32::MAX),
            UnknownAlgo(9),
            ItemTooLarge(1),
            NotFound,
            ComputeQueueFull,
            ShuttingDown,
            Internal("y"),
        ];
        let mut encoder = crate::protocol::ResponseEncoder::new();
        // Runs of one error and errors that differ only in their payload: the encoder reuses a
        // reason it formatted for the same error value, and only then.
        let runs = [
            KeyTooLarge(301),
            KeyTooLarge(301),
            NotFound,
            NotFound,
            Malformed("z"),
        ];
        for e in errors.into_iter().chain(runs) {
            let mut out = BytesMut::new();
            encoder.error(u64::MAX, &e, &mut out);
            let text = e.to_string();
            let mut fixed = BytesMut::new();
            assert!(error(u64::MAX, e.status().0, &text, &mut fixed));
            assert_eq!(out, fixed, "{e:?}");
            let view = ResponseView::decode(&out).unwrap();
            assert_eq!((view.status, view.error), (e.status(), Some(text.as_str())));
        }
    }
}
