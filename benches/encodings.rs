//! FlatBuffers against prost (protobuf) and serde_json on percore's own messages: the seed claim
//! that a binary encoding beats JSON, measured, and where FlatBuffers' verifier costs more than
//! it saves.
//!
//! The same requests (Ping with 16 bytes, Get with a 16-byte key, Set with 100 B and 4 KiB
//! values) and replies (PingReply, Value of 100 B and 4 KiB) are encoded and decoded three ways:
//!
//! - `flatbuffers`: percore's own `RequestEncoder`/`ResponseEncoder` and `Request::decode` /
//!   `ResponseView::decode` (verify, then read in place), plus `flatbuffers-unverified`, the same
//!   read without the verifier, which shows what the verifier costs;
//! - `prost`: `#[derive(prost::Message)]` structs mirroring the schema, length-delimited like
//!   percore's frames; decoding copies bytes fields into `Vec`s, as prost does by default;
//! - `serde_json`: borrowed `&str` fields (zero-copy decoding, JSON's best case: the payloads
//!   here are plain ASCII, so nothing needs escaping or base64).
//!
//! Every decode touches every field, so lazy readers are not credited with work they skip. Each
//! encoder reuses its output buffer, as a server does.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use percore::protocol::{fb, Op, Reply, ReplyView, Request, RequestEncoder, ResponseEncoder};
use percore::protocol::{ResponseView, Status};
use serde::{Deserialize, Serialize};

/// The protobuf twin of `percore.v1.Request` (the ops benchmarked here).
#[derive(Clone, PartialEq, prost::Message)]
struct PbRequest {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(oneof = "PbOp", tags = "2, 3, 4")]
    op: Option<PbOp>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum PbOp {
    #[prost(message, tag = "2")]
    Ping(PbPing),
    #[prost(message, tag = "3")]
    Get(PbKey),
    #[prost(message, tag = "4")]
    Set(PbSet),
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbPing {
    #[prost(bytes = "vec", tag = "1")]
    payload: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbKey {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbSet {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
    #[prost(uint32, tag = "3")]
    ttl_ms: u32,
}

/// The protobuf twin of `percore.v1.Response`.
#[derive(Clone, PartialEq, prost::Message)]
struct PbResponse {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int32, tag = "2")]
    status: i32,
    #[prost(oneof = "PbReply", tags = "3, 4")]
    body: Option<PbReply>,
    #[prost(string, tag = "5")]
    error: String,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum PbReply {
    #[prost(message, tag = "3")]
    Ping(PbPing),
    #[prost(message, tag = "4")]
    Value(PbValue),
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbValue {
    #[prost(bytes = "vec", tag = "1")]
    value: Vec<u8>,
    #[prost(uint32, tag = "2")]
    ttl_ms: u32,
}

/// The JSON twin of a request, borrowing its strings from the input.
#[derive(Serialize, Deserialize)]
struct JsonRequest<'a> {
    id: u64,
    #[serde(borrow)]
    op: JsonOp<'a>,
}

#[derive(Serialize, Deserialize)]
enum JsonOp<'a> {
    Ping {
        payload: &'a str,
    },
    Get {
        key: &'a str,
    },
    Set {
        key: &'a str,
        value: &'a str,
        ttl_ms: u32,
    },
}

#[derive(Serialize, Deserialize)]
struct JsonResponse<'a> {
    id: u64,
    status: u8,
    #[serde(borrow)]
    body: Option<JsonReply<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize, Deserialize)]
enum JsonReply<'a> {
    Ping { payload: &'a str },
    Value { value: &'a str, ttl_ms: u32 },
}

const KEY: &str = "k000000000001234";

/// One request, borrowing ASCII text so that all three encodings can carry it as is.
#[derive(Clone, Copy)]
enum Msg<'a> {
    Ping(&'a str),
    Get(&'a str),
    Set(&'a str, &'a str),
}

impl<'a> Msg<'a> {
    fn op(self) -> Op<'a> {
        match self {
            Msg::Ping(p) => Op::Ping {
                payload: p.as_bytes(),
            },
            Msg::Get(k) => Op::Get { key: k.as_bytes() },
            Msg::Set(k, v) => Op::Set {
                key: k.as_bytes(),
                value: v.as_bytes(),
                ttl_ms: 0,
            },
        }
    }

    fn pb(self, id: u64) -> PbRequest {
        let op = match self {
            Msg::Ping(p) => PbOp::Ping(PbPing {
                payload: p.as_bytes().to_vec(),
            }),
            Msg::Get(k) => PbOp::Get(PbKey {
                key: k.as_bytes().to_vec(),
            }),
            Msg::Set(k, v) => PbOp::Set(PbSet {
                key: k.as_bytes().to_vec(),
                value: v.as_bytes().to_vec(),
                ttl_ms: 0,
            }),
        };
        PbRequest { id, op: Some(op) }
    }

    fn json(self, id: u64) -> JsonRequest<'a> {
        let op = match self {
            Msg::Ping(payload) => JsonOp::Ping { payload },
            Msg::Get(key) => JsonOp::Get { key },
            Msg::Set(key, value) => JsonOp::Set {
                key,
                value,
                ttl_ms: 0,
            },
        };
        JsonRequest { id, op }
    }

    fn size(self) -> usize {
        match self {
            Msg::Ping(p) => p.len(),
            Msg::Get(k) => k.len(),
            Msg::Set(k, v) => k.len() + v.len(),
        }
    }
}

fn text(len: usize) -> String {
    (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

/// Sums what a decoded percore request carries, so every field is read.
fn touch_op(op: &Op<'_>) -> usize {
    match *op {
        Op::Ping { payload } => payload.len(),
        Op::Get { key } => key.len(),
        Op::Set { key, value, ttl_ms } => key.len() + value.len() + ttl_ms as usize,
        _ => 0,
    }
}

/// Reads a request with no verification at all: what the verifier's cost is measured against.
fn read_unverified(frame: &[u8]) -> usize {
    // SAFETY: the frame was written by percore's own encoder just before.
    let request = unsafe { flatbuffers::size_prefixed_root_unchecked::<fb::Request>(frame) };
    let id = request.id() as usize;
    id + match request.op_type() {
        fb::Op::Ping => request
            .op_as_ping()
            .and_then(|p| p.payload())
            .map_or(0, |p| p.len()),
        fb::Op::Get => request
            .op_as_get()
            .and_then(|g| g.key())
            .map_or(0, |k| k.len()),
        fb::Op::Set => request.op_as_set().map_or(0, |s| {
            s.key().map_or(0, |k| k.len()) + s.value().map_or(0, |v| v.len()) + s.ttl_ms() as usize
        }),
        _ => 0,
    }
}

fn requests(c: &mut Criterion) {
    let value_100 = text(100);
    let value_4k = text(4096);
    let ping = text(16);
    let cases = [
        ("ping-16B", Msg::Ping(&ping)),
        ("get", Msg::Get(KEY)),
        ("set-100B", Msg::Set(KEY, &value_100)),
        ("set-4KiB", Msg::Set(KEY, &value_4k)),
    ];
    let mut encode = c.benchmark_group("request-encode");
    for (name, msg) in cases {
        encode.throughput(Throughput::Bytes(msg.size() as u64));
        let mut fbs = RequestEncoder::new();
        let mut out = BytesMut::with_capacity(1 << 16);
        encode.bench_function(BenchmarkId::new("flatbuffers", name), |b| {
            b.iter(|| {
                out.clear();
                fbs.encode(black_box(7), &msg.op(), &mut out);
                black_box(out.len())
            })
        });
        let mut out = Vec::with_capacity(1 << 16);
        encode.bench_function(BenchmarkId::new("prost", name), |b| {
            b.iter(|| {
                out.clear();
                let m = msg.pb(black_box(7));
                prost::Message::encode_length_delimited(&m, &mut out).expect("room in a Vec");
                black_box(out.len())
            })
        });
        encode.bench_function(BenchmarkId::new("serde_json", name), |b| {
            b.iter(|| {
                out.clear();
                serde_json::to_writer(&mut out, &msg.json(black_box(7))).expect("serializable");
                black_box(out.len())
            })
        });
    }
    encode.finish();

    let mut decode = c.benchmark_group("request-decode");
    for (name, msg) in cases {
        decode.throughput(Throughput::Bytes(msg.size() as u64));
        let mut frame = BytesMut::new();
        RequestEncoder::new().encode(7, &msg.op(), &mut frame);
        decode.bench_function(BenchmarkId::new("flatbuffers", name), |b| {
            b.iter(|| {
                let request = Request::decode(black_box(&frame)).expect("a valid frame");
                black_box(request.id as usize + touch_op(&request.op))
            })
        });
        decode.bench_function(BenchmarkId::new("flatbuffers-unverified", name), |b| {
            b.iter(|| black_box(read_unverified(black_box(&frame))))
        });
        let mut pb = Vec::new();
        prost::Message::encode_length_delimited(&msg.pb(7), &mut pb).expect("room in a Vec");
        decode.bench_function(BenchmarkId::new("prost", name), |b| {
            b.iter(|| {
                let m: PbRequest =
                    prost::Message::decode_length_delimited(black_box(&pb[..])).expect("valid");
                let n = match &m.op {
                    Some(PbOp::Ping(p)) => p.payload.len(),
                    Some(PbOp::Get(g)) => g.key.len(),
                    Some(PbOp::Set(s)) => s.key.len() + s.value.len() + s.ttl_ms as usize,
                    None => 0,
                };
                black_box(m.id as usize + n)
            })
        });
        let json = serde_json::to_vec(&msg.json(7)).expect("serializable");
        decode.bench_function(BenchmarkId::new("serde_json", name), |b| {
            b.iter(|| {
                let m: JsonRequest<'_> = serde_json::from_slice(black_box(&json)).expect("valid");
                let n = match m.op {
                    JsonOp::Ping { payload } => payload.len(),
                    JsonOp::Get { key } => key.len(),
                    JsonOp::Set { key, value, ttl_ms } => key.len() + value.len() + ttl_ms as usize,
                };
                black_box(m.id as usize + n)
            })
        });
    }
    decode.finish();
}

/// A Ping reply carrying `body`, or a Value reply holding it, in each of the three encodings.
fn fbs_reply(is_ping: bool, body: &str) -> Reply<'_> {
    if is_ping {
        Reply::Ping {
            payload: body.as_bytes(),
        }
    } else {
        Reply::Value {
            value: body.as_bytes(),
            ttl_ms: 0,
        }
    }
}

fn pb_reply(is_ping: bool, body: &str) -> PbReply {
    if is_ping {
        PbReply::Ping(PbPing {
            payload: body.as_bytes().to_vec(),
        })
    } else {
        PbReply::Value(PbValue {
            value: body.as_bytes().to_vec(),
            ttl_ms: 0,
        })
    }
}

fn json_reply(is_ping: bool, body: &str) -> JsonReply<'_> {
    if is_ping {
        JsonReply::Ping { payload: body }
    } else {
        JsonReply::Value {
            value: body,
            ttl_ms: 0,
        }
    }
}

fn replies(c: &mut Criterion) {
    let value_100 = text(100);
    let value_4k = text(4096);
    let ping = text(16);
    // (name, is a ping reply, bytes carried)
    let cases = [
        ("ping-16B", true, ping.as_str()),
        ("value-100B", false, value_100.as_str()),
        ("value-4KiB", false, value_4k.as_str()),
    ];
    let mut encode = c.benchmark_group("reply-encode");
    for (name, is_ping, body) in cases {
        encode.throughput(Throughput::Bytes(body.len() as u64));
        let reply = fbs_reply(is_ping, body);
        let mut fbs = ResponseEncoder::new();
        let mut out = BytesMut::with_capacity(1 << 16);
        encode.bench_function(BenchmarkId::new("flatbuffers", name), |b| {
            b.iter(|| {
                out.clear();
                fbs.ok(black_box(7), &reply, &mut out);
                black_box(out.len())
            })
        });
        let mut out = Vec::with_capacity(1 << 16);
        encode.bench_function(BenchmarkId::new("prost", name), |b| {
            b.iter(|| {
                out.clear();
                let body = pb_reply(is_ping, body);
                let m = PbResponse {
                    id: black_box(7),
                    status: 0,
                    body: Some(body),
                    error: String::new(),
                };
                prost::Message::encode_length_delimited(&m, &mut out).expect("room in a Vec");
                black_box(out.len())
            })
        });
        encode.bench_function(BenchmarkId::new("serde_json", name), |b| {
            b.iter(|| {
                out.clear();
                let body = json_reply(is_ping, body);
                let m = JsonResponse {
                    id: black_box(7),
                    status: 0,
                    body: Some(body),
                    error: None,
                };
                serde_json::to_writer(&mut out, &m).expect("serializable");
                black_box(out.len())
            })
        });
    }
    encode.finish();

    let mut decode = c.benchmark_group("reply-decode");
    for (name, is_ping, body) in cases {
        decode.throughput(Throughput::Bytes(body.len() as u64));
        let mut frame = BytesMut::new();
        let reply = fbs_reply(is_ping, body);
        ResponseEncoder::new().ok(7, &reply, &mut frame);
        decode.bench_function(BenchmarkId::new("flatbuffers", name), |b| {
            b.iter(|| {
                let v = ResponseView::decode(black_box(&frame)).expect("a valid frame");
                let n = match v.body {
                    ReplyView::Ping { payload } => payload.len(),
                    ReplyView::Value { value, ttl_ms } => value.len() + ttl_ms as usize,
                    _ => 0,
                };
                black_box(v.id as usize + n + usize::from(v.status == Status::Ok))
            })
        });
        let mut pb = Vec::new();
        let pb_body = pb_reply(is_ping, body);
        let m = PbResponse {
            id: 7,
            status: 0,
            body: Some(pb_body),
            error: String::new(),
        };
        prost::Message::encode_length_delimited(&m, &mut pb).expect("room in a Vec");
        decode.bench_function(BenchmarkId::new("prost", name), |b| {
            b.iter(|| {
                let m: PbResponse =
                    prost::Message::decode_length_delimited(black_box(&pb[..])).expect("valid");
                let n = match &m.body {
                    Some(PbReply::Ping(p)) => p.payload.len(),
                    Some(PbReply::Value(v)) => v.value.len() + v.ttl_ms as usize,
                    None => 0,
                };
                black_box(m.id as usize + n + m.status as usize)
            })
        });
        let json_body = json_reply(is_ping, body);
        let json = serde_json::to_vec(&JsonResponse {
            id: 7,
            status: 0,
            body: Some(json_body),
            error: None,
        })
        .expect("serializable");
        decode.bench_function(BenchmarkId::new("serde_json", name), |b| {
            b.iter(|| {
                let m: JsonResponse<'_> = serde_json::from_slice(black_box(&json)).expect("valid");
                let n = match m.body {
                    Some(JsonReply::Ping { payload }) => payload.len(),
                    Some(JsonReply::Value { value, ttl_ms }) => value.len() + ttl_ms as usize,
                    None => 0,
                };
                black_box(m.id as usize + n + m.status as usize)
            })
        });
    }
    decode.finish();
}

criterion_group!(benches, requests, replies);
criterion_main!(benches);
