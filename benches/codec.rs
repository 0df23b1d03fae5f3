//! Micro-benchmarks of the protocol codec: frame split + verify + decode, and reply encoding.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use percore::protocol::frame::{peek, Peek};
use percore::protocol::{Op, Reply, Request, RequestEncoder, ResponseEncoder};

fn decode(c: &mut Criterion) {
    let value = vec![7u8; 100];
    let ops = [
        (
            "ping",
            Op::Ping {
                payload: b"0123456789abcdef",
            },
        ),
        (
            "get",
            Op::Get {
                key: b"key:000000001234",
            },
        ),
        (
            "set",
            Op::Set {
                key: b"key:000000001234",
                value: &value,
                ttl_ms: 0,
            },
        ),
    ];
    let mut encoder = RequestEncoder::new();
    for (name, op) in ops {
        let mut frame = BytesMut::new();
        encoder.encode(1, &op, &mut frame);
        c.bench_function(&format!("split+verify+decode/{name}"), |b| {
            b.iter(|| {
                let Ok(Peek::Complete { len }) = peek(&frame, 1 << 21) else {
                    panic!("whole frame expected");
                };
                let request = Request::decode(&frame[..len]);
                std::hint::black_box(request.is_ok())
            })
        });
    }
}

fn encode(c: &mut Criterion) {
    let value = vec![7u8; 100];
    let mut encoder = ResponseEncoder::new();
    let mut out = BytesMut::with_capacity(1 << 16);
    c.bench_function("encode/value-100B", |b| {
        b.iter_batched_ref(
            || (),
            |_| {
                out.clear();
                encoder.ok(
                    1,
                    &Reply::Value {
                        value: &value,
                        ttl_ms: 0,
                    },
                    &mut out,
                );
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
