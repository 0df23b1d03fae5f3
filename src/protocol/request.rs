//! `Request`: the typed, borrowed view the server executes ([`Request::decode`]) and the encoder
//! clients use ([`RequestEncoder`]). Decoding verifies the FlatBuffer with tight limits and then
//! applies the protocol's rules, so an [`Op`] that comes out is always valid to execute.

use bytes::BytesMut;
use flatbuffers::FlatBufferBuilder;

use super::hot_request::{self, HotOp};
use super::REQUEST_IDENTIFIER;
use super::{
    fb, has_identifier, verifier_options, Algo, MAX_COMPUTE_ROUNDS, MAX_KEY_LEN, MAX_VALUE_LEN,
};
use crate::error::RequestError;

/// One operation, borrowing its bytes from the frame it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    Hello {
        client: &'a str,
    },
    Ping {
        payload: &'a [u8],
    },
    Get {
        key: &'a [u8],
    },
    Set {
        key: &'a [u8],
        value: &'a [u8],
        ttl_ms: u32,
    },
    Delete {
        key: &'a [u8],
    },
    Compute {
        algo: Algo,
        input: &'a [u8],
        rounds: u32,
    },
    Stats,
}

/// The kind of an operation: indexes per-operation counters and histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Hello,
    Ping,
    Get,
    Set,
    Delete,
    Compute,
    Stats,
    /// memcached's `touch` (the native protocol has no such operation).
    Touch,
    /// memcached's `incr`, `decr` and `ma`.
    Arith,
    /// memcached's `flush_all`.
    Flush,
}

impl OpKind {
    pub const COUNT: usize = 10;
    pub const ALL: [OpKind; OpKind::COUNT] = [
        OpKind::Hello,
        OpKind::Ping,
        OpKind::Get,
        OpKind::Set,
        OpKind::Delete,
        OpKind::Compute,
        OpKind::Stats,
        OpKind::Touch,
        OpKind::Arith,
        OpKind::Flush,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Hello => "hello",
            OpKind::Ping => "ping",
            OpKind::Get => "get",
            OpKind::Set => "set",
            OpKind::Delete => "delete",
            OpKind::Compute => "compute",
            OpKind::Stats => "stats",
            OpKind::Touch => "touch",
            OpKind::Arith => "arith",
            OpKind::Flush => "flush",
        }
    }
}

impl<'a> Op<'a> {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Hello { .. } => OpKind::Hello,
            Op::Ping { .. } => OpKind::Ping,
            Op::Get { .. } => OpKind::Get,
            Op::Set { .. } => OpKind::Set,
            Op::Delete { .. } => OpKind::Delete,
            Op::Compute { .. } => OpKind::Compute,
            Op::Stats => OpKind::Stats,
        }
    }

    /// The key this operation addresses, if it is a key-value operation.
    pub fn key(&self) -> Option<&'a [u8]> {
        match self {
            Op::Get { key } | Op::Set { key, .. } | Op::Delete { key } => Some(key),
            _ => None,
        }
    }
}

/// A decoded request: the client's id and the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub id: u64,
    pub op: Op<'a>,
}

/// A request that could not be decoded, with the id to answer it under: the request's own id
/// when the FlatBuffer verified, 0 when it did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub id: u64,
    pub error: RequestError,
}

impl<'a> Request<'a> {
    /// Verifies `frame` (one whole frame, length prefix included) as a `Request` and checks
    /// the protocol's rules. Allocates nothing.
    ///
    /// The hot shapes (Ping, Get, Set, Delete) are read by [`hot_request::read`], which checks
    /// what the FlatBuffers verifier checks in a fraction of its instructions; anything it does
    /// not read takes the verifier's path, [`Request::decode_verified`]. Both give the same
    /// result for every frame the first one reads.
    pub fn decode(frame: &'a [u8]) -> Result<Request<'a>, Rejected> {
        if !has_identifier(frame, REQUEST_IDENTIFIER) {
            return Err(not_pcrq());
        }
        match hot_request::read(frame, max_apparent_size(frame)) {
            Some((id, hot)) => {
                let op = hot_op(hot).map_err(|error| Rejected { id, error })?;
                Ok(Request { id, op })
            }
            None => Self::decode_verified(frame),
        }
    }

    /// [`Request::decode`] through the `flatbuffers` verifier and generated accessors only:
    /// the path for every shape the hot reader does not read, and the reference the hot reader
    /// is tested against.
    pub fn decode_verified(frame: &'a [u8]) -> Result<Request<'a>, Rejected> {
        if !has_identifier(frame, REQUEST_IDENTIFIER) {
            return Err(not_pcrq());
        }
        let options = verifier_options(max_apparent_size(frame));
        let request = flatbuffers::size_prefixed_root_with_opts::<fb::Request>(&options, frame)
            .map_err(|_| Rejected {
                id: 0,
                error: RequestError::Malformed("verification failed"),
            })?;
        let id = request.id();
        let op = decode_op(&request).map_err(|error| Rejected { id, error })?;
        Ok(Request { id, op })
    }
}

fn not_pcrq() -> Rejected {
    Rejected {
        id: 0,
        error: RequestError::Malformed("file identifier is not PCRQ"),
    }
}

/// The verifier's apparent-size limit for `frame`: twice the frame, room for the vtable entries
/// the verifier counts twice (see `verifier_options`), still refusing a frame that reuses its
/// bytes over and over.
fn max_apparent_size(frame: &[u8]) -> usize {
    frame.len().saturating_mul(2)
}

/// The protocol's rules applied to a hot shape's fields: the same rules, in the same functions,
/// as for the verifier's path.
fn hot_op(hot: HotOp<'_>) -> Result<Op<'_>, RequestError> {
    match hot {
        HotOp::Ping { payload } => Ok(ping_op(payload)),
        HotOp::Get { key } => get_op(key),
        HotOp::Set { key, value, ttl_ms } => set_op(key, value, ttl_ms),
        HotOp::Delete { key } => delete_op(key),
    }
}

fn ping_op(payload: Option<&[u8]>) -> Op<'_> {
    Op::Ping {
        payload: payload.unwrap_or(&[]),
    }
}

fn get_op(key: Option<&[u8]>) -> Result<Op<'_>, RequestError> {
    Ok(Op::Get {
        key: checked_key(key)?,
    })
}

fn delete_op(key: Option<&[u8]>) -> Result<Op<'_>, RequestError> {
    Ok(Op::Delete {
        key: checked_key(key)?,
    })
}

fn set_op<'a>(
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    ttl_ms: u32,
) -> Result<Op<'a>, RequestError> {
    let key = checked_key(key)?;
    let value = value.ok_or(RequestError::MissingField("value"))?;
    if value.len() > MAX_VALUE_LEN {
        return Err(RequestError::ValueTooLarge(value.len()));
    }
    Ok(Op::Set { key, value, ttl_ms })
}

fn decode_op<'a>(request: &fb::Request<'a>) -> Result<Op<'a>, RequestError> {
    use RequestError::MissingField;
    let op_type = request.op_type();
    let op = match op_type {
        fb::Op::Hello => {
            let hello = request.op_as_hello().ok_or(MissingField("op"))?;
            Op::Hello {
                client: hello.client().unwrap_or(""),
            }
        }
        fb::Op::Ping => {
            let ping = request.op_as_ping().ok_or(MissingField("op"))?;
            ping_op(ping.payload().map(|p| p.bytes()))
        }
        fb::Op::Get => {
            let get = request.op_as_get().ok_or(MissingField("op"))?;
            get_op(get.key().map(|k| k.bytes()))?
        }
        fb::Op::Set => {
            let set = request.op_as_set().ok_or(MissingField("op"))?;
            set_op(
                set.key().map(|k| k.bytes()),
                set.value().map(|v| v.bytes()),
                set.ttl_ms(),
            )?
        }
        fb::Op::Delete => {
            let delete = request.op_as_delete().ok_or(MissingField("op"))?;
            delete_op(delete.key().map(|k| k.bytes()))?
        }
        fb::Op::Compute => {
            let compute = request.op_as_compute().ok_or(MissingField("op"))?;
            let algo = compute.algo();
            if algo.variant_name().is_none() {
                return Err(RequestError::UnknownAlgo(algo.0));
            }
            let input = compute.input().ok_or(MissingField("input"))?.bytes();
            if input.len() > MAX_VALUE_LEN {
                return Err(RequestError::InputTooLarge(input.len()));
            }
            let rounds = compute.rounds();
            if rounds == 0 {
                return Err(RequestError::ZeroRounds);
            }
            if rounds > MAX_COMPUTE_ROUNDS {
                return Err(RequestError::TooManyRounds(rounds));
            }
            Op::Compute {
                algo,
                input,
                rounds,
            }
        }
        fb::Op::Stats => {
            request.op_as_stats().ok_or(MissingField("op"))?;
            Op::Stats
        }
        other => return Err(RequestError::UnknownOp(other.0)),
    };
    Ok(op)
}

fn checked_key(key: Option<&[u8]>) -> Result<&[u8], RequestError> {
    let key = key.ok_or(RequestError::MissingField("key"))?;
    match key.len() {
        0 => Err(RequestError::EmptyKey),
        n if n > MAX_KEY_LEN => Err(RequestError::KeyTooLarge(n)),
        _ => Ok(key),
    }
}

/// Encodes requests into size-prefixed frames with one reused builder (no allocation once warm).
pub struct RequestEncoder {
    fbb: FlatBufferBuilder<'static>,
}

impl Default for RequestEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestEncoder {
    pub fn new() -> Self {
        RequestEncoder {
            fbb: FlatBufferBuilder::with_capacity(1024),
        }
    }

    /// Appends the frame for request `id` doing `op` to `out`.
    ///
    /// This encodes exactly what it is given, limits included, so tests can send requests the
    /// server must refuse.
    pub fn encode(&mut self, id: u64, op: &Op<'_>, out: &mut BytesMut) {
        let fbb = &mut self.fbb;
        fbb.reset();
        let (op_type, op_offset) = match *op {
            Op::Hello { client } => {
                let client = fbb.create_string(client);
                let t = fb::Hello::create(
                    fbb,
                    &fb::HelloArgs {
                        client: Some(client),
                    },
                );
                (fb::Op::Hello, t.as_union_value())
            }
            Op::Ping { payload } => {
                let payload = fbb.create_vector(payload);
                let t = fb::Ping::create(
                    fbb,
                    &fb::PingArgs {
                        payload: Some(payload),
                    },
                );
                (fb::Op::Ping, t.as_union_value())
            }
            Op::Get { key } => {
                let key = fbb.create_vector(key);
                let t = fb::Get::create(fbb, &fb::GetArgs { key: Some(key) });
                (fb::Op::Get, t.as_union_value())
            }
            Op::Set { key, value, ttl_ms } => {
                let key = fbb.create_vector(key);
                let value = fbb.create_vector(value);
                let args = fb::SetArgs {
                    key: Some(key),
                    value: Some(value),
                    ttl_ms,
                };
                (fb::Op::Set, fb::Set::create(fbb, &args).as_union_value())
            }
            Op::Delete { key } => {
                let key = fbb.create_vector(key);
                let t = fb::Delete::create(fbb, &fb::DeleteArgs { key: Some(key) });
                (fb::Op::Delete, t.as_union_value())
            }
            Op::Compute {
                algo,
                input,
                rounds,
            } => {
                let input = fbb.create_vector(input);
                let args = fb::ComputeArgs {
                    algo,
                    input: Some(input),
                    rounds,
                };
                (
                    fb::Op::Compute,
                    fb::Compute::create(fbb, &args).as_union_value(),
                )
            }
            Op::Stats => {
                let t = fb::Stats::create(fbb, &fb::StatsArgs {});
                (fb::Op::Stats, t.as_union_value())
            }
        };
        let root = fb::Request::create(
            fbb,
            &fb::RequestArgs {
                id,
                op_type,
                op: Some(op_offset),
            },
        );
        fb::finish_size_prefixed_request_buffer(fbb, root);
        out.extend_from_slice(fbb.finished_data());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{peek, Peek};

    fn round_trip(op: Op<'_>) -> Result<(u64, OpKind), Rejected> {
        let mut out = BytesMut::new();
        RequestEncoder::new().encode(42, &op, &mut out);
        let Ok(Peek::Complete { len }) = peek(&out, usize::MAX) else {
            panic!("encoder wrote no whole frame");
        };
        assert_eq!(out.len(), len);
        let req = Request::decode(&out)?;
        assert_eq!(req.op, op);
        Ok((req.id, req.op.kind()))
    }

    #[test]
    fn every_valid_op_round_trips() {
        let ops = [
            Op::Hello { client: "t" },
            Op::Ping { payload: b"abc" },
            Op::Get { key: b"k" },
            Op::Set {
                key: b"k",
                value: b"v",
                ttl_ms: 5,
            },
            Op::Delete { key: b"k" },
            Op::Compute {
                algo: Algo::Sha256,
                input: b"x",
                rounds: 2,
            },
            Op::Stats,
        ];
        for op in ops {
            assert_eq!(round_trip(op), Ok((42, op.kind())));
        }
    }

    /// Found by fuzzing (`fuzz/regressions/frame/apparent-size-compute-id0-empty-input`):
    /// compact requests, whose default fields (id 0, algo Crc32c, ttl 0) the encoder leaves
    /// out, were refused as malformed because the verifier's apparent size exceeded the frame.
    #[test]
    fn compact_requests_from_the_encoder_verify() {
        let key = [b'k'; MAX_KEY_LEN];
        let mut ops = vec![
            Op::Stats,
            Op::Hello { client: "" },
            Op::Ping { payload: b"" },
        ];
        for n in 0..=16 {
            let bytes = &key[..n];
            ops.push(Op::Ping { payload: bytes });
            ops.push(Op::Hello {
                client: std::str::from_utf8(bytes).unwrap(),
            });
            ops.push(Op::Compute {
                algo: Algo::Crc32c,
                input: bytes,
                rounds: 1,
            });
            for k in 1..=16 {
                ops.push(Op::Get { key: &key[..k] });
                ops.push(Op::Delete { key: &key[..k] });
                for ttl_ms in [0, 5] {
                    ops.push(Op::Set {
                        key: &key[..k],
                        value: bytes,
                        ttl_ms,
                    });
                }
            }
        }
        for id in [0, 1, u64::MAX] {
            for op in &ops {
                assert_eq!(round_trip(*op), Ok((42, op.kind())), "{op:?}");
                let mut out = BytesMut::new();
                RequestEncoder::new().encode(id, op, &mut out);
                assert_eq!(
                    Request::decode(&out),
                    Ok(Request { id, op: *op }),
                    "id {id}"
                );
            }
        }
    }

    #[test]
    fn rule_violations_keep_the_request_id() {
        let cases = [
            (Op::Get { key: b"" }, RequestError::EmptyKey),
            (
                Op::Get { key: &[b'k'; 251] },
                RequestError::KeyTooLarge(251),
            ),
            (
                Op::Compute {
                    algo: Algo::Crc32c,
                    input: b"x",
                    rounds: 0,
                },
                RequestError::ZeroRounds,
            ),
            (
                Op::Compute {
                    algo: Algo(9),
                    input: b"x",
                    rounds: 1,
                },
                RequestError::UnknownAlgo(9),
            ),
        ];
        for (op, error) in cases {
            assert_eq!(round_trip(op), Err(Rejected { id: 42, error }));
        }
    }

    #[test]
    fn garbage_is_rejected_with_id_zero() {
        let err = Request::decode(b"\x0c\0\0\0\x08\0\0\0PCRQ\xff\xff\xff\xff").unwrap_err();
        assert_eq!(err.id, 0);
        assert!(matches!(err.error, RequestError::Malformed(_)));
        for short in [
            &b""[..],
            b"\x01\0\0\0x",
            b"\x04\0\0\0PCRQ",
            b"\x05\0\0\0\0PCRQ",
        ] {
            let err = Request::decode(short).unwrap_err();
            assert_eq!(err.id, 0);
        }
    }
}
