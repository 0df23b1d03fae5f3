//! Micro-benchmarks of key routing (XXH3 to a shard) and of one core's store: get (hit and
//! miss) and set (overwrite of a live key) with 100,000 items of 100 bytes, percore's get
//! scenario, and sets of new keys into a full 16 MiB store (each one evicts). Uses only the store's public API, so it keeps measuring the store whatever its
//! insides become.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use percore::protocol::shard::{key_hash, owner_of_hash};
use percore::store::Store;

const ITEMS: u64 = 100_000;

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"k000000000000000";
    let digits = format!("{i:015}");
    k[1..].copy_from_slice(digits.as_bytes());
    k
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard-route");
    for len in [16usize, 64, 250] {
        let key: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("xxh3+owner-of-4", len), |b| {
            b.iter(|| owner_of_hash(key_hash(black_box(&key)), black_box(4)))
        });
    }
    group.finish();
}

fn store(c: &mut Criterion) {
    let keys: Vec<([u8; 16], u64)> = (0..ITEMS)
        .map(|i| {
            let k = key(i);
            (k, key_hash(&k))
        })
        .collect();
    let value = vec![b'v'; 100];
    let mut store = Store::new(256 << 20);
    for (k, h) in &keys {
        store.set(*h, k, &value, 0, 0).expect("room for every item");
    }
    // A fixed pseudo-random walk over the keys, so the table is not read in insertion order.
    let order: Vec<usize> = (0..4096u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % keys.len())
        .collect();
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    let mut at = 0;
    group.bench_function("get-hit", |b| {
        b.iter(|| {
            at = (at + 1) % order.len();
            let (k, h) = &keys[order[at]];
            black_box(store.get(*h, k, 0).map(|f| f.value.len()))
        })
    });
    let missing = key(ITEMS + 7);
    let missing_hash = key_hash(&missing);
    group.bench_function("get-miss", |b| {
        b.iter(|| black_box(store.get(missing_hash, black_box(&missing), 0).is_none()))
    });
    group.bench_function("set-overwrite", |b| {
        b.iter(|| {
            at = (at + 1) % order.len();
            let (k, h) = &keys[order[at]];
            black_box(store.set(*h, k, &value, 0, 0).is_ok())
        })
    });
    let mut full = Store::new(16 << 20);
    let mut next = 0u64;
    group.bench_function("set-new-evicting", |b| {
        b.iter(|| {
            next += 1;
            let k = key(next);
            black_box(full.set(key_hash(&k), &k, &value, 0, 0).is_ok())
        })
    });
    group.bench_function("hash+get-hit", |b| {
        b.iter(|| {
            at = (at + 1) % order.len();
            let k = &keys[order[at]].0;
            black_box(store.get(key_hash(k), k, 0).map(|f| f.value.len()))
        })
    });
    group.finish();
}

criterion_group!(benches, routing, store);
criterion_main!(benches);
