//! Micro-benchmarks of percore's request path, piece by piece: frame split + verify + read for
//! Ping, Get and Set requests (alone, and a 16-request pipelined batch split off one buffer, as
//! the server sees it), and reply encoding for each reply the hot path writes.
//!
//! `benches/encodings.rs` compares the same messages with prost and serde_json;
//! `benches/store.rs` covers key routing and the store.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use percore::error::RequestError;
use percore::protocol::frame::{peek, Peek};
use percore::protocol::{Op, Reply, Request, RequestEncoder, ResponseEncoder, DEFAULT_MAX_FRAME};

/// Splits every whole frame off `buf`, verifies and reads it; returns a sum so nothing is
/// optimised away.
fn split_all(mut buf: &[u8]) -> usize {
    let mut seen = 0;
    while let Ok(Peek::Complete { len }) = peek(buf, DEFAULT_MAX_FRAME) {
        if let Ok(request) = Request::decode(&buf[..len]) {
            seen += request.id as usize + request.op.key().map_or(0, <[u8]>::len);
        }
        buf = &buf[len..];
    }
    seen
}

fn decode(c: &mut Criterion) {
    let value = vec![b'v'; 100];
    let ops = [
        (
            "ping-16B",
            Op::Ping {
                payload: b"0123456789abcdef",
            },
        ),
        (
            "get",
            Op::Get {
                key: b"k000000000001234",
            },
        ),
        (
            "set-100B",
            Op::Set {
                key: b"k000000000001234",
                value: &value,
                ttl_ms: 0,
            },
        ),
    ];
    let mut encoder = RequestEncoder::new();
    let mut group = c.benchmark_group("split+verify+read");
    for (name, op) in ops {
        let mut frame = BytesMut::new();
        encoder.encode(1, &op, &mut frame);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("one", name), |b| {
            b.iter(|| black_box(split_all(black_box(&frame))))
        });
        let mut batch = BytesMut::new();
        for id in 1..=16 {
            encoder.encode(id, &op, &mut batch);
        }
        group.throughput(Throughput::Elements(16));
        group.bench_function(BenchmarkId::new("batch-of-16", name), |b| {
            b.iter(|| black_box(split_all(black_box(&batch))))
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let value = vec![b'v'; 100];
    let replies: [(&str, Result<Reply<'_>, RequestError>); 5] = [
        (
            "ping-16B",
            Ok(Reply::Ping {
                payload: b"0123456789abcdef",
            }),
        ),
        (
            "value-100B",
            Ok(Reply::Value {
                value: &value,
                ttl_ms: 0,
            }),
        ),
        ("set-ok", Ok(Reply::Empty)),
        ("not-found", Err(RequestError::NotFound)),
        ("bad-request", Err(RequestError::EmptyKey)),
    ];
    let mut encoder = ResponseEncoder::new();
    let mut out = BytesMut::with_capacity(1 << 16);
    let mut group = c.benchmark_group("reply-encode");
    for (name, reply) in replies {
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encoder.encode(black_box(1), reply, &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
