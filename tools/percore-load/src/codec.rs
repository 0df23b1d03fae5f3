//! The two wire protocols the load generator speaks, reduced to what a run needs: encode a
//! request, and split the next reply off a receive buffer as a borrowed [`Reply`].
//!
//! The percore protocol goes entirely through `percore::protocol` (the one implementation of
//! the FlatBuffers format). The memcached text protocol (get and set only) is a small codec
//! written here, so the same runs can measure memcached side by side. Nothing a server sends
//! can make parsing panic: anything unexpected becomes a reply the checker counts as wrong, or
//! [`Parsed::Broken`] when the byte stream itself can no longer be trusted.

use std::fmt::Write as _;

use bytes::BytesMut;
use percore::protocol::frame::{self, Peek};
use percore::protocol::{Algo, Op, ReplyView, RequestEncoder, ResponseView, Status};

/// Largest reply frame accepted: a 1 MiB value and its envelope, with room to spare.
pub const MAX_REPLY_FRAME: usize = percore::client::MAX_RESPONSE_FRAME;

/// Which protocol a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolKind {
    /// percore's length-prefixed FlatBuffers protocol
    Percore,
    /// the memcached text protocol (get and set only)
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
    Set {
        key: &'a [u8],
        value: &'a [u8],
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

/// What a reply says, borrowing from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// Success without a body (a set).
    Done,
    /// The key is absent.
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
    /// One reply, `len` bytes long.
    Reply {
        len: usize,
        to: ReplyTo,
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
        body,
    }
}

/// A text line longer than this without its CRLF means the stream is not memcached replies.
const MAX_MEMCACHED_LINE: usize = 2048;

fn encode_memcached(request: &Request<'_>, out: &mut BytesMut) {
    // Keys are printable ASCII (see `workload::write_key`), as the text protocol requires.
    match *request {
        Request::Get { key: k } => {
            out.extend_from_slice(b"get ");
            out.extend_from_slice(k);
            out.extend_from_slice(b"\r\n");
        }
        Request::Set { key: k, value } => {
            out.extend_from_slice(b"set ");
            out.extend_from_slice(k);
            // Writing into a BytesMut cannot fail.
            let _ = write!(out, " 0 0 {}\r\n", value.len());
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        // Refused when the command line is checked; kept total so a mistake is a wrong reply,
        // not a panic.
        Request::Ping { .. } | Request::Compute { .. } => {
            out.extend_from_slice(b"version\r\n");
        }
    }
}

fn parse_memcached(input: &[u8]) -> Parsed<'_> {
    let Some(eol) = input.windows(2).position(|w| w == b"\r\n") else {
        if input.len() > MAX_MEMCACHED_LINE {
            return Parsed::Broken("a memcached reply line without CRLF".into());
        }
        return Parsed::Incomplete;
    };
    let line = &input[..eol];
    let after_line = eol + 2;
    let reply = |len, body| Parsed::Reply {
        len,
        to: ReplyTo::Oldest,
        body,
    };
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    match words.next().unwrap_or(b"") {
        b"STORED" => reply(after_line, Body::Done),
        b"END" => reply(after_line, Body::NotFound),
        b"NOT_STORED" | b"SERVER_ERROR" => reply(after_line, Body::Failed(Status::Internal)),
        b"ERROR" | b"CLIENT_ERROR" => reply(after_line, Body::Failed(Status::BadRequest)),
        b"VALUE" => {
            let key = words.next();
            let _flags = words.next();
            let bytes = words
                .next()
                .and_then(|w| std::str::from_utf8(w).ok())
                .and_then(|w| w.parse::<usize>().ok());
            let (Some(key), Some(bytes)) = (key, bytes) else {
                return Parsed::Broken("a malformed memcached VALUE line".into());
            };
            if bytes > MAX_REPLY_FRAME {
                return Parsed::Broken(format!("a memcached value of {bytes} bytes"));
            }
            // VALUE line, data, CRLF, then END CRLF (one key per get).
            let data_end = after_line + bytes;
            let total = data_end + 2 + 5;
            if input.len() < total {
                return Parsed::Incomplete;
            }
            if &input[data_end..total] != b"\r\nEND\r\n" {
                return Parsed::Broken("a memcached value not followed by END".into());
            }
            reply(
                total,
                Body::Value {
                    value: &input[after_line..data_end],
                    key: Some(key),
                },
            )
        }
        _ => Parsed::Broken(format!(
            "an unexpected memcached reply: {:?}",
            String::from_utf8_lossy(&line[..line.len().min(80)])
        )),
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
        assert_eq!(&out[..], b"get k1\r\nset k2 0 0 4\r\nab\r\n\r\n");
    }

    #[test]
    fn memcached_replies_parse_in_pieces() {
        let codec = Codec::new(ProtocolKind::Memcached);
        let stream = b"STORED\r\nEND\r\nVALUE k1 0 4\r\nab\r\n\r\nEND\r\nSERVER_ERROR oom\r\n";
        let mut at = 0;
        let mut bodies = Vec::new();
        while at < stream.len() {
            // Every prefix of a reply is incomplete, never broken.
            let mut end = at + 1;
            loop {
                match codec.parse(&stream[at..end]) {
                    Parsed::Incomplete => end += 1,
                    Parsed::Reply { len, to, body } => {
                        assert_eq!(to, ReplyTo::Oldest);
                        bodies.push(body);
                        at += len;
                        break;
                    }
                    Parsed::Broken(why) => panic!("{why}"),
                }
            }
        }
        assert_eq!(
            bodies,
            [
                Body::Done,
                Body::NotFound,
                Body::Value {
                    value: b"ab\r\n",
                    key: Some(b"k1")
                },
                Body::Failed(Status::Internal),
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
        assert!(matches!(codec.parse(&[b'x'; 3000]), Parsed::Broken(_)));
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
            Parsed::Reply { len, to, body } => {
                assert_eq!((len, to), (first, ReplyTo::Id(9)));
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
