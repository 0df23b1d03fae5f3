//! The checks behind percore's fuzz targets, in one place: the cargo-fuzz targets call them, and
//! the main crate's `tests/fuzz_regressions.rs` compiles this same file (`#[path]`) to replay
//! committed crash inputs and the seed corpus on stable. Every check panics on a violation,
//! which is what libFuzzer reports as a crash.
//!
//! - [`check_frames`]: bytes as a connection's receive buffer: split with `frame::peek`, decode
//!   with `Request::decode`, execute what the server executes locally, encode the reply, decode
//!   it as a client would and compare.
//! - [`check_store_model_bytes`]: an operation sequence on a small [`Store`] with a controlled
//!   clock, against a `HashMap` model of what the store promises.

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use percore::error::RequestError;
use percore::ops;
use percore::protocol::frame::{self, Peek};
use percore::protocol::request::Rejected;
use percore::protocol::shard::key_hash;
use percore::protocol::{
    Algo, Op, Reply, ReplyView, Request, RequestEncoder, ResponseEncoder, ResponseView, ShardStats,
    Status, DEFAULT_MAX_FRAME, MAX_COMPUTE_ROUNDS, MAX_KEY_LEN, MAX_VALUE_LEN,
};
use percore::store::segment::{item_len, Meta};
use percore::store::{Store, INDEX_ENTRY};

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// frame

/// The store budget of the `frame` check: two segments' worth, so long inputs can also reach
/// eviction.
const FRAME_BUDGET: usize = 2 * MIB;
/// Shard ports the `frame` check's Hello reports (as with `--shard-ports`).
const SHARD_PORTS: [u16; 2] = [7100, 7101];
/// Compute requests up to this many rounds (and inputs up to [`FUZZ_COMPUTE_INPUT`]) are
/// executed and answered; costlier ones only check decoding, so one input cannot take seconds.
const FUZZ_COMPUTE_ROUNDS: u32 = 64;
const FUZZ_COMPUTE_INPUT: usize = 64 << 10;
/// The `frame` check's clock advances this much per frame, so TTLs of a few ms expire within
/// one input.
const MS_PER_FRAME: u64 = 3;

/// What [`check_frames`] saw, so tests can assert that an input went where they meant it to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameSummary {
    /// Frames that decoded into a request and were answered.
    pub answered: usize,
    /// Frames that decoded but were not executed (costly Compute).
    pub skipped: usize,
    /// Frames refused by `Request::decode`, answered with an error.
    pub rejected: usize,
    /// A length prefix of 0 or over the limit ended the buffer (the connection would close).
    pub framing_error: bool,
    /// Bytes left over: an incomplete frame at the end.
    pub partial_tail: usize,
}

/// Runs `data` as one connection's receive buffer. Panics if anything breaks a rule: a frame
/// boundary outside the buffer, a reply that does not verify, carries another id or status
/// than the request's, or a body that is not what was executed.
pub fn check_frames(data: &[u8]) -> FrameSummary {
    let mut summary = FrameSummary::default();
    let mut store = Store::new(FRAME_BUDGET);
    let mut encoder = ResponseEncoder::new();
    let mut reencoder = RequestEncoder::new();
    let mut out = BytesMut::new();
    let mut rest = data;
    let mut now_ms = 1_000;
    loop {
        out.clear();
        let len = match frame::peek(rest, DEFAULT_MAX_FRAME) {
            Ok(Peek::Complete { len }) => len,
            Ok(Peek::Partial { total }) => {
                assert!(total > rest.len(), "partial frame of {total} bytes is here");
                summary.partial_tail = rest.len();
                return summary;
            }
            Err(error) => {
                // The connection answers once with id 0 and closes.
                assert!(error.closes_connection(), "{error:?} would not close");
                encoder.error(0, &error, &mut out);
                check_reply(&out, 0, Err(error));
                summary.framing_error = true;
                return summary;
            }
        };
        assert!(
            len > frame::PREFIX_LEN && len <= rest.len() && len <= DEFAULT_MAX_FRAME + 4,
            "peek said {len} bytes of {}",
            rest.len()
        );
        let (frame, tail) = rest.split_at(len);
        rest = tail;
        now_ms += MS_PER_FRAME;
        match Request::decode(frame) {
            Ok(request) => {
                check_reencodes(&mut reencoder, &request);
                if execute(&mut store, &mut encoder, &request, now_ms, &mut out) {
                    summary.answered += 1;
                } else {
                    summary.skipped += 1;
                }
            }
            Err(Rejected { id, error }) => {
                assert!(!error.closes_connection(), "a whole frame got {error:?}");
                encoder.error(id, &error, &mut out);
                check_reply(&out, id, Err(error));
                summary.rejected += 1;
            }
        }
    }
}

/// A decoded request encodes back into a frame that decodes to the same request: the decoder
/// hands out only what the encoder can express, and nothing is lost.
fn check_reencodes(encoder: &mut RequestEncoder, request: &Request<'_>) {
    let mut buf = BytesMut::new();
    encoder.encode(request.id, &request.op, &mut buf);
    assert_eq!(
        frame::peek(&buf, usize::MAX),
        Ok(Peek::Complete { len: buf.len() })
    );
    let again = Request::decode(&buf).expect("a re-encoded request decodes");
    assert_eq!(&again, request);
}

/// Executes `request` as the server's router does for a request it answers on this core, minus
/// networking (one shard, so every key is local), encodes the reply into `out` and checks it.
/// Returns false for a Compute request too costly to run here.
fn execute(
    store: &mut Store,
    encoder: &mut ResponseEncoder,
    request: &Request<'_>,
    now_ms: u64,
    out: &mut BytesMut,
) -> bool {
    let id = request.id;
    match request.op {
        Op::Hello { .. } => {
            let reply = ops::hello(0, 1, &SHARD_PORTS);
            encoder.ok(id, &reply, out);
            check_reply(out, id, Ok(reply));
        }
        Op::Ping { payload } => {
            let reply = ops::ping(payload);
            encoder.ok(id, &reply, out);
            check_reply(out, id, Ok(reply));
        }
        Op::Get { key } | Op::Set { key, .. } | Op::Delete { key } => {
            assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
            let result = ops::kv::execute(store, key_hash(key), &request.op, now_ms);
            encoder.encode(id, result, out);
            check_reply(out, id, result);
        }
        Op::Compute {
            algo,
            input,
            rounds,
        } => {
            assert!((1..=MAX_COMPUTE_ROUNDS).contains(&rounds) && input.len() <= MAX_VALUE_LEN);
            assert!(algo == Algo::Crc32c || algo == Algo::Sha256);
            if rounds > FUZZ_COMPUTE_ROUNDS || input.len() > FUZZ_COMPUTE_INPUT {
                return false;
            }
            let digest = ops::compute::digest_blocking(algo, input, rounds);
            let reply = Reply::Digest {
                digest: digest.as_bytes(),
            };
            encoder.ok(id, &reply, out);
            check_reply(out, id, Ok(reply));
        }
        Op::Stats => {
            // The server gathers one ShardStats per core; the store's part is what can go wrong
            // here.
            let s = store.stats();
            let per_shard = [ShardStats {
                shard: 0,
                hits: s.hits,
                misses: s.misses,
                evictions: s.evictions,
                expirations: s.expirations,
                items: s.items,
                bytes_used: s.bytes_used,
                ..Default::default()
            }];
            let reply = Reply::Stats {
                per_shard: &per_shard,
            };
            encoder.ok(id, &reply, out);
            check_reply(out, id, Ok(reply));
        }
    }
    true
}

/// Checks that `reply` is exactly one response frame answering request `id` with `expected`:
/// it verifies as a client would verify it, and carries the id, status, error text and body.
pub fn check_reply(reply: &[u8], id: u64, expected: Result<Reply<'_>, RequestError>) {
    assert_eq!(
        frame::peek(reply, usize::MAX),
        Ok(Peek::Complete { len: reply.len() }),
        "the reply is one whole frame"
    );
    let view = ResponseView::decode(reply).expect("the reply verifies");
    assert_eq!(view.id, id, "the reply carries the request's id");
    match expected {
        Err(error) => {
            assert_eq!(view.status, error.status());
            assert_eq!(view.error, Some(error.to_string().as_str()));
            assert!(matches!(view.body, ReplyView::None));
        }
        Ok(reply) => {
            assert_eq!((view.status, view.error), (Status::Ok, None));
            check_body(&view.body, &reply, &view);
        }
    }
}

fn check_body(got: &ReplyView<'_>, want: &Reply<'_>, view: &ResponseView<'_>) {
    match (got, want) {
        (ReplyView::None, Reply::Empty) => {}
        (
            ReplyView::Hello(h),
            Reply::Hello {
                shard_count,
                shard,
                shard_ports,
            },
        ) => {
            assert_eq!(h.protocol_version(), percore::protocol::PROTOCOL_VERSION);
            assert_eq!((h.shard_count(), h.shard()), (*shard_count, *shard));
            let ports: Vec<u16> = h
                .shard_ports()
                .map(|p| p.iter().collect())
                .unwrap_or_default();
            assert_eq!(ports, *shard_ports);
        }
        (ReplyView::Ping { payload: a }, Reply::Ping { payload: b }) => assert_eq!(a, b),
        (
            ReplyView::Value {
                value: a,
                ttl_ms: ta,
            },
            Reply::Value {
                value: b,
                ttl_ms: tb,
            },
        ) => assert_eq!((a, ta), (b, tb)),
        (ReplyView::Digest { digest: a }, Reply::Digest { digest: b }) => assert_eq!(a, b),
        (ReplyView::Stats(_), Reply::Stats { per_shard }) => {
            assert_eq!(view.shard_stats(), *per_shard);
        }
        (got, want) => panic!("reply body {got:?} is not {want:?}"),
    }
}

/// The committed seed corpus of the `frame` target: valid frames of every operation, alone and
/// pipelined, and edge cases (limits, rule violations, broken framing). Written to
/// `fuzz/corpus/frame/` by `tests/fuzz_regressions.rs` (an ignored test), and checked against
/// that folder by a normal one.
pub fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut enc = RequestEncoder::new();
    let mut frame = |ops: &[(u64, Op<'_>)]| {
        let mut out = BytesMut::new();
        for (id, op) in ops {
            enc.encode(*id, op, &mut out);
        }
        out.to_vec()
    };
    let long_key = [b'k'; MAX_KEY_LEN];
    let too_long_key = [b'k'; MAX_KEY_LEN + 1];
    let value_4k = [b'v'; 4096];
    let mut seeds = vec![
        ("hello", frame(&[(1, Op::Hello { client: "seed" })])),
        (
            "hello-empty-client",
            frame(&[(2, Op::Hello { client: "" })]),
        ),
        ("ping-empty", frame(&[(3, Op::Ping { payload: b"" })])),
        ("ping-payload", frame(&[(4, Op::Ping { payload: b"abc" })])),
        ("get", frame(&[(5, Op::Get { key: b"k" })])),
        ("set", frame(&[(6, set(b"k", b"v", 0))])),
        ("set-ttl", frame(&[(7, set(b"k", b"v", 5))])),
        ("set-empty-value", frame(&[(8, set(b"k", b"", 0))])),
        ("set-4k", frame(&[(9, set(b"big", &value_4k, 0))])),
        ("set-max-key", frame(&[(10, set(&long_key, b"v", 0))])),
        ("delete", frame(&[(11, Op::Delete { key: b"k" })])),
        ("compute-crc32c", frame(&[(12, crc(1))])),
        (
            "compute-sha256",
            frame(&[(
                13,
                Op::Compute {
                    algo: Algo::Sha256,
                    input: b"abc",
                    rounds: 3,
                },
            )]),
        ),
        ("stats", frame(&[(14, Op::Stats)])),
        ("id-zero", frame(&[(0, Op::Ping { payload: b"" })])),
        ("id-max", frame(&[(u64::MAX, Op::Get { key: b"k" })])),
        // Rule violations: they verify, so they are answered under their own id.
        ("get-empty-key", frame(&[(20, Op::Get { key: b"" })])),
        (
            "get-key-too-long",
            frame(&[(21, Op::Get { key: &too_long_key })]),
        ),
        ("compute-zero-rounds", frame(&[(22, crc(0))])),
        (
            "compute-too-many-rounds",
            frame(&[(23, crc(MAX_COMPUTE_ROUNDS + 1))]),
        ),
        (
            "compute-unknown-algo",
            frame(&[(
                24,
                Op::Compute {
                    algo: Algo(9),
                    input: b"x",
                    rounds: 1,
                },
            )]),
        ),
        // Pipelines: several frames in one buffer, as a client's write arrives.
        (
            "pipeline-set-get-delete-get",
            frame(&[
                (30, set(b"a", b"1", 0)),
                (31, Op::Get { key: b"a" }),
                (32, Op::Delete { key: b"a" }),
                (33, Op::Get { key: b"a" }),
            ]),
        ),
        (
            "pipeline-ttl-expires",
            frame(&[
                (40, set(b"t", b"x", 4)),
                (41, Op::Get { key: b"t" }),
                (42, Op::Get { key: b"t" }),
                (43, Op::Get { key: b"t" }),
            ]),
        ),
        (
            "pipeline-overwrite-sizes",
            frame(&[
                (50, set(b"o", b"small", 0)),
                (51, set(b"o", &value_4k, 0)),
                (52, Op::Get { key: b"o" }),
                (53, set(b"o", b"s", 9)),
                (54, Op::Get { key: b"o" }),
            ]),
        ),
        (
            "pipeline-every-op",
            frame(&[
                (60, Op::Hello { client: "p" }),
                (61, Op::Ping { payload: b"x" }),
                (62, set(b"k", b"v", 0)),
                (63, Op::Get { key: b"k" }),
                (64, Op::Delete { key: b"k" }),
                (65, crc(2)),
                (66, Op::Stats),
            ]),
        ),
        (
            "pipeline-with-bad-request",
            frame(&[
                (70, set(b"k", b"v", 0)),
                (71, Op::Get { key: b"" }),
                (72, Op::Get { key: b"k" }),
            ]),
        ),
    ];
    // A pipeline whose last frame has not fully arrived.
    let mut partial = frame(&[
        (80, Op::Ping { payload: b"a" }),
        (81, Op::Get { key: b"k" }),
    ]);
    partial.truncate(partial.len() - 3);
    seeds.push(("pipeline-partial-tail", partial));
    // Broken framing after a good frame: a zero prefix, and one over the limit.
    let mut zero = frame(&[(90, Op::Ping { payload: b"" })]);
    zero.extend_from_slice(&[0, 0, 0, 0]);
    seeds.push(("then-zero-prefix", zero));
    let mut huge = frame(&[(91, Op::Ping { payload: b"" })]);
    huge.extend_from_slice(&(DEFAULT_MAX_FRAME as u32 + 1).to_le_bytes());
    seeds.push(("then-oversize-prefix", huge));
    // Not a Request: a response's identifier, and a frame cut short inside its prefix.
    let mut wrong_id = frame(&[(92, Op::Get { key: b"k" })]);
    wrong_id[8..12].copy_from_slice(b"PCRS");
    seeds.push(("wrong-identifier", wrong_id));
    seeds.push(("short-prefix", vec![5, 0]));
    seeds
}

fn set<'a>(key: &'a [u8], value: &'a [u8], ttl_ms: u32) -> Op<'a> {
    Op::Set { key, value, ttl_ms }
}

fn crc(rounds: u32) -> Op<'static> {
    Op::Compute {
        algo: Algo::Crc32c,
        input: b"123456789",
        rounds,
    }
}

// ---------------------------------------------------------------------------------------------
// store_model

/// Keys are drawn from this many distinct keys, so sequences revisit them.
const KEYS: u8 = 24;
/// Longer sequences add little; the cap keeps each run short.
const MAX_ACTIONS: usize = 2_000;

/// One `store_model` run: the store's budget, the clock's start, whether keys share hashes,
/// and the actions.
#[derive(Debug, Clone, Arbitrary)]
pub struct StoreInput {
    /// Budget: 1 to 10 MiB (`--memory` gives a core at least 1): one segment to nine, so the
    /// S3-FIFO reserve (4 or more) and TTL classes (8 or more) are reached.
    pub budget: u8,
    pub start_ms: u32,
    /// Pass a 2-bit hash instead of the key's XXH3, so unrelated keys collide in the index:
    /// the store must tell them apart by the key bytes.
    pub weak_hash: bool,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Action {
    Set {
        key: u8,
        len: ValueLen,
        ttl: Ttl,
    },
    Get {
        key: u8,
    },
    Delete {
        key: u8,
    },
    /// Moves the clock forward.
    Advance {
        ms: u16,
    },
    /// One bounded expiry pass, as the core runs every tick.
    Sweep,
    /// Reads every key the model knows and checks the store's accounting exactly.
    Audit,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum ValueLen {
    /// 0..=40 bytes: many items to a segment.
    Tiny(u8),
    /// 0..=4096 bytes.
    Small(u16),
    /// Up to the 1 MiB limit: segment-sized items, whole-segment evictions, refusals.
    Large(u32),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Ttl {
    None,
    /// 1..=256 ms.
    Short(u8),
    /// Any TTL, including ones past `u32::MAX` ms of remaining life.
    Raw(u32),
}

impl ValueLen {
    fn len(self) -> usize {
        match self {
            ValueLen::Tiny(n) => usize::from(n) % 41,
            ValueLen::Small(n) => usize::from(n) % 4097,
            ValueLen::Large(n) => n as usize % (MAX_VALUE_LEN + 1),
        }
    }
}

impl Ttl {
    fn ms(self) -> u32 {
        match self {
            Ttl::None => 0,
            Ttl::Short(n) => u32::from(n) + 1,
            Ttl::Raw(n) => n,
        }
    }
}

/// Key `id`: distinct bytes and lengths from 1 to 250, so items have many sizes.
fn key_bytes(id: u8) -> Vec<u8> {
    let id = id % KEYS;
    let len = 1 + (usize::from(id) * 37) % MAX_KEY_LEN;
    vec![b'a' + id; len]
}

/// A value's bytes: `len` bytes repeating `word`. Every Set uses a fresh word, so a stale or
/// another key's value never matches by accident (beyond the shortest lengths).
fn fill_value(buf: &mut Vec<u8>, len: usize, word: u64) {
    let bytes = word.to_le_bytes();
    buf.clear();
    buf.resize(len, 0);
    // Eight bytes at a time: byte loops are slow under the sanitizer, and values reach 1 MiB.
    for chunk in buf.chunks_mut(8) {
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

fn value_matches(value: &[u8], len: usize, word: u64) -> bool {
    let bytes = word.to_le_bytes();
    value.len() == len && value.chunks(8).all(|c| c == &bytes[..c.len()])
}

/// What the model knows of one key the store may hold.
#[derive(Debug, Clone, Copy)]
struct Modeled {
    len: usize,
    word: u64,
    /// 0 = never.
    expires_at_ms: u64,
    /// The store's eviction count right after this value was written: a later count means the
    /// key may have been evicted since.
    evictions_at_write: u64,
}

impl Modeled {
    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }
}

/// Decodes `data` as a [`StoreInput`] with `arbitrary` (as libFuzzer's typed targets do) and
/// runs [`check_store_model`].
/// `None` when the bytes do not decode (libFuzzer's typed targets skip those too).
pub fn check_store_model_bytes(data: &[u8]) -> Option<StoreSummary> {
    let input = StoreInput::arbitrary_take_rest(Unstructured::new(data)).ok()?;
    Some(check_store_model(&input))
}

/// What a [`check_store_model`] run went through, so tests can tell that eviction, expiry and
/// refusals were reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreSummary {
    pub actions: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub refused: u64,
}

/// Runs `input` against a real store and a `HashMap` model, asserting what the store promises
/// (`src/store/mod.rs`, `docs/memory.md`):
///
/// - a Get returns the model's value and remaining TTL exactly, or misses; a miss of a key the
///   model holds unexpired is allowed only if the store has evicted something since that value
///   was written, and then the key is gone until written again;
/// - an expired key is never returned, and a deleted key never again;
/// - Delete answers true only for a key the model holds unexpired (and false for one only if
///   it may have been evicted);
/// - a Set is refused (`ItemTooLarge`) exactly when the item (header, key, value) is larger
///   than a segment, and then changes nothing;
/// - hits and misses count the Gets; evictions never go down; items and `bytes_used` fit
///   what the model allows and the budget; an [`Action::Audit`] checks them exactly.
pub fn check_store_model(input: &StoreInput) -> StoreSummary {
    let budget = MIB + usize::from(input.budget % 10) * MIB;
    fn weak_hash(key: &[u8]) -> u64 {
        key_hash(key) & 3
    }
    let hash_of: fn(&[u8]) -> u64 = if input.weak_hash { weak_hash } else { key_hash };
    let mut store = Store::with_hasher(budget, hash_of);
    let mut model: HashMap<Vec<u8>, Modeled> = HashMap::new();
    let mut now = u64::from(input.start_ms);
    let mut buf = Vec::new();
    let (mut hits, mut misses, mut evictions, mut refused) = (0u64, 0u64, 0u64, 0u64);

    for (step, action) in input.actions.iter().take(MAX_ACTIONS).enumerate() {
        match *action {
            Action::Set { key, len, ttl } => {
                let key = key_bytes(key);
                let (len, ttl) = (len.len(), ttl.ms());
                let word = (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                fill_value(&mut buf, len, word);
                let item = native_item_len(key.len(), len, ttl);
                let fits = item <= store.max_item_len();
                match store.set(hash_of(&key), &key, &buf, ttl, now) {
                    Ok(()) => {
                        assert!(fits, "step {step}: a {item}-byte item should be refused");
                        let expires_at_ms = if ttl == 0 { 0 } else { now + u64::from(ttl) };
                        let evictions_at_write = store.stats().evictions;
                        model.insert(
                            key,
                            Modeled {
                                len,
                                word,
                                expires_at_ms,
                                evictions_at_write,
                            },
                        );
                    }
                    Err(RequestError::ItemTooLarge(n)) => {
                        assert_eq!(n, item);
                        assert!(!fits, "step {step}: a {item}-byte item was refused");
                        refused += 1;
                    }
                    Err(e) => panic!("step {step}: set failed with {e:?}"),
                }
            }
            Action::Get { key } => {
                let key = key_bytes(key);
                if check_get(&mut store, &mut model, hash_of(&key), &key, now, step) {
                    hits += 1;
                } else {
                    misses += 1;
                }
            }
            Action::Delete { key } => {
                let key = key_bytes(key);
                let deleted = store.delete(hash_of(&key), &key, now);
                let evicted_since = store.stats().evictions;
                match model.remove(&key) {
                    Some(m) if !m.expired(now) => assert!(
                        deleted || evicted_since > m.evictions_at_write,
                        "step {step}: delete of a live key found nothing, no eviction since"
                    ),
                    _ => assert!(!deleted, "step {step}: deleted a key that was not there"),
                }
            }
            Action::Advance { ms } => now += u64::from(ms),
            Action::Sweep => store.sweep(now),
            Action::Audit => {
                let (h, m) = audit(&mut store, &mut model, &hash_of, now, step);
                hits += h;
                misses += m;
            }
        }
        let s = store.stats();
        assert_eq!(
            (s.hits, s.misses),
            (hits, misses),
            "step {step}: get counts"
        );
        assert!(s.evictions >= evictions, "step {step}: evictions went down");
        evictions = s.evictions;
        check_bounds(&store, &model, budget, now, step);
    }
    let (h, m) = audit(&mut store, &mut model, &hash_of, now, usize::MAX);
    let s = store.stats();
    assert_eq!((s.hits, s.misses), (hits + h, misses + m));
    StoreSummary {
        actions: input.actions.len().min(MAX_ACTIONS),
        hits: s.hits,
        misses: s.misses,
        evictions: s.evictions,
        expirations: s.expirations,
        refused,
    }
}

/// Gets `key` and checks the answer against the model; true on a hit.
fn check_get(
    store: &mut Store,
    model: &mut HashMap<Vec<u8>, Modeled>,
    hash: u64,
    key: &[u8],
    now: u64,
    step: usize,
) -> bool {
    let modeled = model.get(key).copied();
    // Compare while the value is borrowed from the store; keep only the verdict.
    let found = store.get(hash, key, now).map(|f| {
        let same = modeled.is_some_and(|m| value_matches(f.value, m.len, m.word));
        (same, f.value.len(), f.ttl_ms_u32())
    });
    let evictions = store.stats().evictions;
    let Some(m) = modeled else {
        assert!(found.is_none(), "step {step}: got a key never written");
        return false;
    };
    match found {
        Some((same, len, ttl_ms)) => {
            assert!(!m.expired(now), "step {step}: got an expired key");
            assert!(
                same,
                "step {step}: got {len} bytes that are not the last value written ({} bytes)",
                m.len
            );
            let want_ttl = match m.expires_at_ms {
                0 => 0,
                at => (at - now).min(u64::from(u32::MAX)) as u32,
            };
            assert_eq!(ttl_ms, want_ttl, "step {step}: remaining TTL");
            true
        }
        None => {
            assert!(
                m.expired(now) || evictions > m.evictions_at_write,
                "step {step}: a live key was lost with no eviction since it was written"
            );
            // Expired or evicted, it is gone until written again.
            model.remove(key);
            false
        }
    }
}

/// Bounds that hold after every action, whatever was evicted.
fn check_bounds(
    store: &Store,
    model: &HashMap<Vec<u8>, Modeled>,
    budget: usize,
    now: u64,
    step: usize,
) {
    let s = store.stats();
    // The store holds only keys the model holds (possibly expired or evicted in the store).
    assert!(
        s.items as usize <= model.len(),
        "step {step}: {} items, model has {}",
        s.items,
        model.len()
    );
    // Keys written since the last eviction, still unexpired, must all be there.
    let certain = model
        .values()
        .filter(|m| !m.expired(now) && m.evictions_at_write == s.evictions)
        .count();
    assert!(
        s.items as usize >= certain,
        "step {step}: {} items, at least {certain} must be there",
        s.items
    );
    assert!(
        s.bytes_reserved as usize <= budget,
        "step {step}: over budget"
    );
    let items = s.bytes_used - s.items * INDEX_ENTRY as u64;
    let smallest = native_item_len(1, 0, 0) + INDEX_ENTRY;
    assert!(
        items <= s.bytes_reserved && s.bytes_used >= s.items * smallest as u64,
        "step {step}: bytes_used {} for {} items in {} reserved",
        s.bytes_used,
        s.items,
        s.bytes_reserved
    );
}

/// Bytes of an item the native protocol's Set stores: no flags, a CAS unique below 2^48, an
/// expiry field if it has a TTL.
fn native_item_len(key_len: usize, value_len: usize, ttl_ms: u32) -> usize {
    let meta = Meta {
        cas: 1,
        client_flags: 0,
        expires_at_ms: u64::from(ttl_ms),
        has_ttl: ttl_ms != 0,
        now_s: 0,
    };
    item_len(key_len, value_len, &meta)
}

/// Gets every key the model holds, then requires that the items the store counts are exactly
/// the hits, and `bytes_used` exactly their bytes and index entries. Returns (hits, misses).
fn audit(
    store: &mut Store,
    model: &mut HashMap<Vec<u8>, Modeled>,
    hash_of: &dyn Fn(&[u8]) -> u64,
    now: u64,
    step: usize,
) -> (u64, u64) {
    let mut keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    keys.sort();
    let (mut hits, mut misses, mut bytes) = (0u64, 0u64, 0usize);
    for key in keys {
        let len = model.get(&key).map_or(0, |m| m.len);
        if check_get(store, model, hash_of(&key), &key, now, step) {
            hits += 1;
            let ttl = model.get(&key).map_or(0, |m| m.expires_at_ms);
            bytes += native_item_len(key.len(), len, u32::from(ttl != 0)) + INDEX_ENTRY;
        } else {
            misses += 1;
        }
    }
    let s = store.stats();
    assert_eq!(s.items, hits, "step {step}: items counted vs items found");
    assert_eq!(s.bytes_used as usize, bytes, "step {step}: bytes_used");
    (hits, misses)
}

/// Seeds for `store_model`: scenarios written as actions and encoded to the bytes `arbitrary`
/// decodes them from ([`encode_store_input`]), so each seed starts the fuzzer where something
/// happens: plain reads and writes, TTLs, eviction, size changes, colliding hashes, and a long
/// mixed run from a fixed generator.
pub fn store_model_seeds() -> Vec<(String, Vec<u8>)> {
    use Action::*;
    let tiny = |n| ValueLen::Tiny(n);
    let large = |n| ValueLen::Large(n);
    let input = |budget, weak_hash, actions| StoreInput {
        budget,
        start_ms: 1_000,
        weak_hash,
        actions,
    };
    let basic = vec![
        Set {
            key: 0,
            len: tiny(5),
            ttl: Ttl::None,
        },
        Get { key: 0 },
        Set {
            key: 0,
            len: ValueLen::Small(300),
            ttl: Ttl::None,
        },
        Get { key: 0 },
        Delete { key: 0 },
        Get { key: 0 },
        Audit,
    ];
    let ttl = vec![
        Set {
            key: 1,
            len: tiny(8),
            ttl: Ttl::Short(9),
        },
        Set {
            key: 2,
            len: tiny(8),
            ttl: Ttl::Raw(u32::MAX),
        },
        Get { key: 1 },
        Advance { ms: 10 },
        Get { key: 1 },
        Set {
            key: 3,
            len: tiny(8),
            ttl: Ttl::Short(0),
        },
        Advance { ms: 1 },
        Sweep,
        Get { key: 2 },
        Audit,
    ];
    let mut evict = Vec::new();
    let mut shift = Vec::new();
    for i in 0..30u8 {
        // Under the 128 KiB segments of the 1 MiB budget, so each is stored and they evict.
        evict.push(Set {
            key: i,
            len: large(100_000 + u32::from(i)),
            ttl: Ttl::None,
        });
        evict.push(Get { key: i / 3 });
        shift.push(Set {
            key: i,
            len: tiny(i),
            ttl: Ttl::None,
        });
    }
    for i in 0..10u8 {
        shift.push(Set {
            key: i,
            len: large(600_000),
            ttl: Ttl::None,
        });
        shift.push(Get { key: i });
    }
    evict.push(Audit);
    shift.push(Audit);
    let collide = (0..24u8)
        .flat_map(|i| {
            [
                Set {
                    key: i,
                    len: tiny(i),
                    ttl: Ttl::None,
                },
                Set {
                    key: i / 2,
                    len: ValueLen::Small(u16::from(i) * 100),
                    ttl: Ttl::None,
                },
                Delete { key: i / 3 },
                Get { key: i / 4 },
            ]
        })
        .chain([Audit])
        .collect();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mixed = (0..400)
        .map(|_| {
            let r = next();
            let key = (r >> 8) as u8;
            match r % 10 {
                0..=2 => Set {
                    key,
                    len: match (r >> 16) % 3 {
                        0 => tiny((r >> 24) as u8),
                        1 => ValueLen::Small((r >> 24) as u16),
                        _ => large((r >> 24) as u32 % 400_000),
                    },
                    ttl: match (r >> 56) % 3 {
                        0 => Ttl::None,
                        1 => Ttl::Short((r >> 48) as u8),
                        _ => Ttl::Raw((r >> 32) as u32 % 5_000),
                    },
                },
                3..=6 => Get { key },
                7 => Delete { key },
                8 => Advance {
                    ms: (r >> 16) as u16 % 64,
                },
                _ => Sweep,
            }
        })
        .collect();
    [
        ("basic", input(0, false, basic)),
        ("ttl", input(2, false, ttl)),
        ("evict-one-page", input(0, false, evict)),
        ("class-shift", input(1, false, shift)),
        ("weak-hash-overwrites", input(3, true, collide)),
        ("mixed", input(4, false, mixed)),
    ]
    .into_iter()
    .map(|(name, input)| (name.to_owned(), encode_store_input(&input)))
    .collect()
}

/// The bytes `arbitrary` 1.x decodes into `input` (`check_store_model_bytes`): integers little
/// endian, a bool as a byte's low bit, an enum variant as a `u32` scaled to the variant count,
/// and the action list (the last field) as a `true` byte before each action. A test checks that
/// decoding gives `input` back, so a change in `arbitrary`'s format shows up.
pub fn encode_store_input(input: &StoreInput) -> Vec<u8> {
    fn tag(out: &mut Vec<u8>, variant: u64, count: u64) {
        let x = (variant << 32).div_ceil(count);
        out.extend_from_slice(&(x as u32).to_le_bytes());
    }
    let mut out = vec![input.budget];
    out.extend_from_slice(&input.start_ms.to_le_bytes());
    out.push(u8::from(input.weak_hash));
    for action in &input.actions {
        out.push(1);
        match *action {
            Action::Set { key, len, ttl } => {
                tag(&mut out, 0, 6);
                out.push(key);
                match len {
                    ValueLen::Tiny(n) => {
                        tag(&mut out, 0, 3);
                        out.push(n);
                    }
                    ValueLen::Small(n) => {
                        tag(&mut out, 1, 3);
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                    ValueLen::Large(n) => {
                        tag(&mut out, 2, 3);
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                }
                match ttl {
                    Ttl::None => tag(&mut out, 0, 3),
                    Ttl::Short(n) => {
                        tag(&mut out, 1, 3);
                        out.push(n);
                    }
                    Ttl::Raw(n) => {
                        tag(&mut out, 2, 3);
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                }
            }
            Action::Get { key } => {
                tag(&mut out, 1, 6);
                out.push(key);
            }
            Action::Delete { key } => {
                tag(&mut out, 2, 6);
                out.push(key);
            }
            Action::Advance { ms } => {
                tag(&mut out, 3, 6);
                out.extend_from_slice(&ms.to_le_bytes());
            }
            Action::Sweep => tag(&mut out, 4, 6),
            Action::Audit => tag(&mut out, 5, 6),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// request_hot_path

/// `data` as one whole frame (length prefix included): whatever `hot_request::read` reads, the
/// FlatBuffers verifier must accept with the server's limits, and `Request::decode` (which takes
/// the hot path) must give what `Request::decode_verified` (the verifier and generated accessors)
/// gives. Returns whether the hot reader read it.
pub fn check_hot_request(data: &[u8]) -> bool {
    use percore::protocol::{fb, hot_request, verifier_options};
    let max_apparent = data.len().saturating_mul(2);
    let read = hot_request::read(data, max_apparent);
    if read.is_some() {
        let verified = flatbuffers::size_prefixed_root_with_opts::<fb::Request>(
            &verifier_options(max_apparent),
            data,
        );
        assert!(
            verified.is_ok(),
            "hot read {read:?}, the verifier says {verified:?}"
        );
    }
    assert_eq!(Request::decode(data), Request::decode_verified(data));
    read.is_some()
}
