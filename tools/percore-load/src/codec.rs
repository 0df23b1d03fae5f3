//! The two wire protocols the load generator speaks, reduced to what a run needs: encode a
//! request, and split the next reply off a receive buffer as a borrowed [`Reply`].
//!
//! Both go entirely through the library's one implementation of each protocol:
//! `percore::protocol` (the FlatBuffers format) and `percore::memcache::client` (memcached's
//! text protocol, so the same runs can measure memcached side by side). What is left here maps
//! their replies onto the [`Body`] the checker judges. Nothing a server sends can make parsing
//! panic: anything unexpected becomes a reply the checker counts as wrong, or
//! [`Parsed::Broken`] when the byte stream itself can no longer be trusted.

use bytes::BytesMut;
use percore::memcache::client::{self as memcache, StoreCommand, StoreOptions};
use percore::protocol::frame::{self, Peek};
use percore::protocol::{Algo, Op, ReplyView, RequestEncoder, ResponseView, Status};

/// Largest reply frame accepted: a 1 MiB value and its envelope, with room to spare.
pub const MAX_REPLY_FRAME: usize = percore::client::MAX_RESPONSE_FRAME;

/// Which protocol a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolKind {
    /// percore's length-prefixed FlatBuffers protocol
    Percore,
    /// the memcached text protocol (get, multi-key get, set and delete)
    Memcached,
}

/// One request to encode.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    Ping {
        payload: &'a [u8],
    },
    Get {
        key: &'a [u8],
    },
    /// One get of several keys (memcached only): `keys` holds them back to back, each
    /// `key_len` bytes.
    MultiGet {
        keys: &'a [u8],
        key_len: usize,
    },
    Set {
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    Compute {
        algo: Algo,
        input: &'a [u8],
        rounds: u32,
    },
}

/// Which request a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    /// The request with this id (percore echoes ids).
    Id(u64),
    /// The oldest unanswered request on this connection (memcached answers in order).
    Oldest,
    /// Nobody can tell: the reply did not decode.
    Unknown,
}

/// What a reply says, borrowing from the receive buffer. The memcached replies keep their own
/// variants so that, say, a `DELETED` answering a set is caught as the wrong reply it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// percore's success without a body (a set or a delete).
    Done,
    /// memcached's `STORED`.
    Stored,
    /// memcached's `DELETED`.
    Deleted,
    /// memcached's `END`: the get's values, if any, came before it.
    End,
    /// The key is absent: percore's NotFound, memcached's `NOT_FOUND`.
    NotFound,
    /// A value, and the key the server says it belongs to when the protocol names it.
    Value {
        value: &'a [u8],
        key: Option<&'a [u8]>,
    },
    Payload(&'a [u8]),
    Digest(&'a [u8]),
    /// A success whose body fits no request this tool sends.
    Unexpected,
    /// An error status.
    Failed(Status),
    /// A frame that does not decode as a reply.
    Invalid,
}

/// The result of looking at the front of a receive buffer.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// More bytes are needed.
    Incomplete,
    /// One reply, `len` bytes long. Not `last` when more of the same request's reply follows
    /// (memcached's VALUE items, before END).
    Reply {
        len: usize,
        to: ReplyTo,
        last: bool,
        body: Body<'a>,
    },
    /// The stream cannot be parsed any further; the connection must be dropped.
    Broken(String),
}

/// A protocol codec. One per connection: the percore encoder reuses its builder.
pub enum Codec {
    Percore(RequestEncoder),
    Memcached,
}

impl Codec {
    pub fn new(kind: ProtocolKind) -> Codec {
        match kind {
            ProtocolKind::Percore => Codec::Percore(RequestEncoder::new()),
            ProtocolKind::Memcached => Codec::Memcached,
        }
    }

    /// Appends `request` with `id` to `out`. Memcached has no ids: its replies come in order.
    pub fn encode(&mut self, id: u64, request: &Request<'_>, out: &mut BytesMut) {
        match self {
            Codec::Percore(encoder) => {
                let op = match *request {
                    Request::Ping { payload } => Op::Ping { payload },
                    Request::Get { key } => Op::Get { key },
                    // Refused when the command line is checked: percore has no multi-key get.
                    // Kept total: the first key alone makes a reply the checker counts short.
                    Request::MultiGet { keys, key_len } => Op::Get {
                        key: keys.get(..key_len).unwrap_or(keys),
                    },
                    Request::Delete { key } => Op::Delete { key },
                    Request::Set { key, value } => Op::Set {
                        key,
                        value,
                        ttl_ms: 0,
                    },
                    Request::Compute {
                        algo,
                        input,
                        rounds,
                    } => Op::Compute {
                        algo,
                        input,
                        rounds,
                    },
                };
                encoder.encode(id, &op, out);
            }
            Codec::Memcached => encode_memcached(request, out),
        }
    }

    /// Looks for one reply at the front of `input`.
    pub fn parse<'a>(&self, input: &'a [u8]) -> Parsed<'a> {
        match self {
            Codec::Percore(_) => parse_percore(input),
            Codec::Memcached => parse_memcached(input),
        }
    }
}

fn parse_percore(input: &[u8]) -> Parsed<'_> {
    let len = match frame::peek(input, MAX_REPLY_FRAME) {
        Ok(Peek::Partial { .. }) => return Parsed::Incomplete,
        Ok(Peek::Complete { len }) => len,
        Err(e) => return Parsed::Broken(format!("bad reply framing: {e}")),
    };
    let Ok(view) = ResponseView::decode(&input[..len]) else {
        return Parsed::Reply {
            len,
            to: ReplyTo::Unknown,
            last: true,
            body: Body::Invalid,
        };
    };
    let body = match (view.status, view.body) {
        (Status::Ok, ReplyView::None) => Body::Done,
        (Status::Ok, ReplyView::Value { value, .. }) => Body::Value { value, key: None },
        (Status::Ok, ReplyView::Ping { payload }) => Body::Payload(payload),
        (Status::Ok, ReplyView::Digest { digest }) => Body::Digest(digest),
        (Status::Ok, _) => Body::Unexpected,
        (Status::NotFound, _) => Body::NotFound,
        (status, _) => Body::Failed(status),
    };
    Parsed::Reply {
        len,
        to: ReplyTo::Id(view.id),
        last: true,
        body,
    }
}

fn encode_memcached(request: &Request<'_>, out: &mut BytesMut) {
    // Keys are printable ASCII (see `workload::write_key`), as the text protocol requires.
    match *request {
        Request::Get { key } => memcache::get(out, [key]),
        Request::MultiGet { keys, key_len } => memcache::get(out, keys.chunks(key_len.max(1))),
        Request::Set { key, value } => {
            memcache::store(out, StoreCommand::Set, key, value, StoreOptions::default());
        }
        Request::Delete { key } => memcache::delete(out, key, false),
        // Refused when the command line is checked; kept total so a mistake is a wrong reply,
        // not a panic.
        Request::Ping { .. } | Request::Compute { .. } => memcache::version(out),
    }
}

fn parse_memcached(input: &[u8]) -> Parsed<'_> {
    let (reply, len) = match memcache::parse_reply(input) {
        memcache::Parsed::Incomplete => return Parsed::Incomplete,
        memcache::Parsed::Broken(why) => return Parsed::Broken(why.to_string()),
        memcache::Parsed::Reply { reply, len } => (reply, len),
    };
    let body = match reply {
        // Items of a get's reply: END, not the VALUE, answers the request.
        memcache::Reply::Value(v) => {
            return Parsed::Reply {
                len,
                to: ReplyTo::Oldest,
                last: false,
                body: Body::Value {
                    value: v.data,
                    key: Some(v.key),
                },
            }
        }
        memcache::Reply::End => Body::End,
        memcache::Reply::Stored => Body::Stored,
        memcache::Reply::Deleted => Body::Deleted,
        memcache::Reply::NotFound => Body::NotFound,
        memcache::Reply::NotStored | memcache::Reply::ServerError(_) => {
            Body::Failed(Status::Internal)
        }
        memcache::Reply::Error(_) | memcache::Reply::ClientError(_) => {
            Body::Failed(Status::BadRequest)
        }
        memcache::Reply::Exists
        | memcache::Reply::Touched
        | memcache::Reply::Ok
        | memcache::Reply::Number(_)
        | memcache::Reply::Version(_) => Body::Unexpected,
    };
    Parsed::Reply {
        len,
        to: ReplyTo::Oldest,
        last: true,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use percore::protocol::{Reply, ResponseEncoder};

    #[test]
    fn memcached_requests_are_text() {
        let mut out = BytesMut::new();
        let mut codec = Codec::new(ProtocolKind::Memcached);
        codec.encode(1, &Request::Get { key: b"k1" }, &mut out);
        codec.encode(
            2,
            &Request::Set {
                key: b"k2",
                value: b"ab\r\n",
            },
            &mut out,
        );
        codec.encode(
            3,
            &Request::MultiGet {
                keys: b"k1k2k3",
                key_len: 2,
            },
            &mut out,
        );
        codec.encode(4, &Request::Delete { key: b"k3" }, &mut out);
        assert_eq!(
            &out[..],
            b"get k1\r\nset k2 0 0 4\r\nab\r\n\r\nget k1 k2 k3\r\ndelete k3\r\n"
        );
    }

    #[test]
    fn memcached_replies_parse_in_pieces() {
        let codec = Codec::new(ProtocolKind::Memcached);
        let stream = b"STORED\r\nEND\r\nVALUE k1 0 4\r\nab\r\n\r\nEND\r\nDELETED\r\nNOT_FOUND\r\n\
SERVER_ERROR oom\r\nVERSION 1\r\n";
        let mut at = 0;
        let mut items = Vec::new();
        while at < stream.len() {
            // Every prefix of a reply is incomplete, never broken.
            let mut end = at + 1;
            loop {
                match codec.parse(&stream[at..end]) {
                    Parsed::Incomplete => end += 1,
                    Parsed::Reply {
                        len,
                        to,
                        last,
                        body,
                    } => {
                        assert_eq!(to, ReplyTo::Oldest);
                        items.push((last, body));
                        at += len;
                        break;
                    }
                    Parsed::Broken(why) => panic!("{why}"),
                }
            }
        }
        assert_eq!(
            items,
            [
                (true, Body::Stored),
                (true, Body::End),
                (
                    false,
                    Body::Value {
                        value: b"ab\r\n",
                        key: Some(b"k1")
                    }
                ),
                (true, Body::End),
                (true, Body::Deleted),
                (true, Body::NotFound),
                (true, Body::Failed(Status::Internal)),
                (true, Body::Unexpected),
            ]
        );
    }

    #[test]
    fn memcached_garbage_is_broken_not_a_panic() {
        let codec = Codec::new(ProtocolKind::Memcached);
        assert!(matches!(codec.parse(b"HELLO\r\n"), Parsed::Broken(_)));
        assert!(matches!(codec.parse(b"VALUE k\r\n"), Parsed::Broken(_)));
        assert!(matches!(codec.parse(b"VALUE k 0 x\r\n"), Parsed::Broken(_)));
        assert!(matches!(
            codec.parse(b"VALUE k 0 1\r\nab\r\nEND\r\n"),
            Parsed::Broken(_)
        ));
        match codec.parse(&[b'x'; 5000]) {
            Parsed::Broken(why) => assert!(why.contains("without CRLF"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn percore_replies_parse_by_id() {
        let codec = Codec::new(ProtocolKind::Percore);
        let mut out = BytesMut::new();
        let mut enc = ResponseEncoder::new();
        enc.ok(
            9,
            &Reply::Value {
                value: b"xyz",
                ttl_ms: 0,
            },
            &mut out,
        );
        let first = out.len();
        enc.ok(4, &Reply::Empty, &mut out);
        match codec.parse(&out) {
            Parsed::Reply {
                len,
                to,
                last,
                body,
            } => {
                assert_eq!((len, to, last), (first, ReplyTo::Id(9), true));
                assert_eq!(
                    body,
                    Body::Value {
                        value: b"xyz",
                        key: None
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            codec.parse(&out[first..]),
            Parsed::Reply {
                to: ReplyTo::Id(4),
                body: Body::Done,
                ..
            }
        ));
        assert!(matches!(codec.parse(&out[..first - 1]), Parsed::Incomplete));
    }

    #[test]
    fn percore_garbage_is_counted_or_broken() {
        let codec = Codec::new(ProtocolKind::Percore);
        // A frame of 4 bytes that is no FlatBuffer: a reply nobody can match.
        assert!(matches!(
            codec.parse(&[4, 0, 0, 0, 1, 2, 3, 4]),
            Parsed::Reply {
                len: 8,
                to: ReplyTo::Unknown,
                last: true,
                body: Body::Invalid
            }
        ));
        assert!(matches!(codec.parse(&[0, 0, 0, 0]), Parsed::Broken(_)));
        assert!(matches!(
            codec.parse(&u32::MAX.to_le_bytes()),
            Parsed::Broken(_)
        ));
    }
}
