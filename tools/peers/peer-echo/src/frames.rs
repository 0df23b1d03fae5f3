//! The frames peer-echo echoes: split by length prefix only, and a Ping request turned into
//! its reply in place, so that percore-load, which checks every reply, accepts the echo.
//!
//! A frame that starts like a Ping request from percore's `RequestEncoder` gets its bytes 8..32
//! (the identifier and the root vtable) rewritten, which turns it into a valid Ping reply that
//! percore's decoder reads exactly as it reads percore's own (same id, status and payload; the
//! frame keeps the request's length, while percore writes its Ping replies in a fixed layout of
//! its own). That is a fixed-size compare and copy per frame, not parsing.

use percore::protocol::frame::{self, Peek};

/// Bytes asked of each read at least.
pub const READ_CHUNK: usize = 16 << 10;
/// Length prefixes above this close the connection: the stream is not frames.
pub const MAX_FRAME: usize = 16 << 20;

/// Bytes 8..32 of a Ping request frame as `RequestEncoder` writes it: the identifier `PCRQ`,
/// padding, the 10-byte vtable of `Request` and the root table's offset to it. Bytes 12..14 of
/// this (the table's size, which varies with padding) are a wildcard, `TABLE_SIZE_IN_REQUEST`.
const PING_REQUEST_HEAD: [u8; 24] = [
    b'P', b'C', b'R', b'Q', 0, 0, 0, 0, 0, 0, 0x0a, 0, 0xff, 0xff, 0x0c, 0, 0x07, 0, 0x08, 0, 0x0a,
    0, 0, 0,
];
const TABLE_SIZE_IN_REQUEST: std::ops::Range<usize> = 12..14;
/// The same bytes of a Ping reply laid out as FlatBufferBuilder lays it out: identifier `PCRS`, the
/// 12-byte vtable of `Response` (whose `status` is absent, so `Ok`) and the offset to it, with
/// the table's size at `TABLE_SIZE_IN_REPLY`. The root table, its id and the payload after
/// byte 32 are laid out identically in both.
const PING_REPLY_HEAD: [u8; 24] = [
    b'P', b'C', b'R', b'S', 0, 0, 0, 0, 0x0c, 0, 0xff, 0xff, 0x0c, 0, 0x00, 0, 0x07, 0, 0x08, 0,
    0x0c, 0, 0, 0,
];
const TABLE_SIZE_IN_REPLY: std::ops::Range<usize> = 10..12;
/// Where `Request.op_type` sits when the head matches (the root table is at 0x1c and its vtable
/// puts `op_type` at +7); the reply's `body_type` sits at the same place, and `Op::Ping` and
/// `Reply::PingReply` are both 2.
const OP_TYPE_AT: usize = 0x23;
const PING_OP_TYPE: u8 = 2;

/// Turns a whole Ping request frame made by `RequestEncoder` into the reply to it, in place.
/// Any other frame is left as it is (and a checking client will count it as a wrong reply).
pub fn ping_request_to_reply(frame: &mut [u8]) {
    if frame.get(OP_TYPE_AT) != Some(&PING_OP_TYPE) {
        return;
    }
    let head = &mut frame[8..32];
    let mut table_size = [0u8; 2];
    table_size.copy_from_slice(&head[TABLE_SIZE_IN_REQUEST]);
    let matches = head
        .iter()
        .zip(PING_REQUEST_HEAD)
        .enumerate()
        .all(|(i, (&got, want))| TABLE_SIZE_IN_REQUEST.contains(&i) || got == want);
    if matches {
        head.copy_from_slice(&PING_REPLY_HEAD);
        head[TABLE_SIZE_IN_REPLY].copy_from_slice(&table_size);
    }
}

/// Rewrites the whole frames at the start of `buf` (Pings into their replies, unless
/// `verbatim`) and returns where the last whole frame ends, or `None` when the stream is not
/// frames (a length prefix of 0 or over [`MAX_FRAME`]).
pub fn complete_frames(buf: &mut [u8], verbatim: bool) -> Option<usize> {
    let mut end = 0;
    loop {
        match frame::peek(&buf[end..], MAX_FRAME) {
            Ok(Peek::Complete { len }) => {
                if !verbatim {
                    ping_request_to_reply(&mut buf[end..end + len]);
                }
                end += len;
            }
            Ok(Peek::Partial { .. }) => return Some(end),
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BytesMut;
    use percore::protocol::{Op, Reply, ReplyView, RequestEncoder, ResponseEncoder, ResponseView};

    /// The reply `frame` must be to a client: the one percore's encoder writes, as the verifying
    /// decoder reads it.
    pub fn assert_reads_as(frame: &[u8], want: &[u8], what: &str) {
        let got = ResponseView::decode(frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        let want = ResponseView::decode(want).expect("percore's own reply");
        assert_eq!(
            (got.id, got.status, got.error),
            (want.id, want.status, want.error),
            "{what}"
        );
        match (got.body, want.body) {
            (ReplyView::Ping { payload: a }, ReplyView::Ping { payload: b }) => {
                assert_eq!(a, b, "{what}: payload")
            }
            (got, want) => panic!("{what}: body {got:?}, percore's {want:?}"),
        }
    }

    /// The patch must give a reply that reads as percore's, whatever the payload length
    /// (padding) and id, or percore-load would count the echo as wrong.
    #[test]
    fn patched_ping_requests_read_as_percores_replies() {
        let mut requests = RequestEncoder::new();
        let mut replies = ResponseEncoder::new();
        for len in 0..=300usize {
            for id in [1u64, 7, 1 << 40, u64::MAX] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut frame = BytesMut::new();
                requests.encode(id, &Op::Ping { payload: &payload }, &mut frame);
                let mut want = BytesMut::new();
                replies.ok(id, &Reply::Ping { payload: &payload }, &mut want);
                ping_request_to_reply(&mut frame);
                assert_reads_as(&frame, &want, &format!("payload {len} bytes, id {id}"));
            }
        }
    }

    #[test]
    fn other_frames_are_left_alone() {
        let mut frame = BytesMut::new();
        RequestEncoder::new().encode(1, &Op::Get { key: b"k" }, &mut frame);
        let before = frame.clone();
        ping_request_to_reply(&mut frame);
        assert_eq!(frame, before);
        let mut short = [4u8, 0, 0, 0, 1, 2, 3, 4];
        ping_request_to_reply(&mut short);
        assert_eq!(short, [4u8, 0, 0, 0, 1, 2, 3, 4]);
    }
}
