//! The fuzz targets' checks, on stable, in the normal test suite: every saved input under
//! `fuzz/regressions/<target>/` (a crash `tools/fuzz.sh` found, fixed since) and the committed
//! seed corpus run through the very checks the targets run (`fuzz/src/lib.rs`, compiled in
//! here), so a fixed bug that comes back fails `cargo test`.
//!
//! `cargo test --test fuzz_regressions -- --ignored write_seed_corpus` rewrites the seed corpus
//! from the generators in `fuzz/src/lib.rs`.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::fs;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use checks::{Action, FrameSummary, StoreInput, Ttl, ValueLen};
use percore::error::RequestError;
use percore::protocol::{Reply, ResponseEncoder};

fn fuzz_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(sub)
}

/// The files of a folder, sorted by name (none if the folder does not exist).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("readable folder").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).expect("readable file"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn saved_frame_crashes_pass() {
    for (name, data) in files(&fuzz_dir("regressions/frame")) {
        eprintln!("replaying regressions/frame/{name}");
        checks::check_frames(&data);
    }
}

#[test]
fn saved_store_model_crashes_pass() {
    for (name, data) in files(&fuzz_dir("regressions/store_model")) {
        eprintln!("replaying regressions/store_model/{name}");
        assert!(
            checks::check_store_model_bytes(&data).is_some(),
            "{name} no longer decodes as a StoreInput: it tests nothing"
        );
    }
}

/// The hot request reader's seeds (the first frame of each `frame` seed that has a whole one)
/// through the differential check of `request_hot_path`; the hot shapes among them must take
/// the hot path, or the check would test only the verifier.
#[test]
fn hot_request_seeds_agree_with_the_verifier() {
    let seeds = files(&fuzz_dir("corpus/request_hot_path"));
    assert!(seeds.len() >= 20, "{} seeds", seeds.len());
    for (name, data) in seeds {
        let read = checks::check_hot_request(&data);
        let hot = ["get", "set", "delete", "ping", "id-"]
            .iter()
            .any(|p| name.starts_with(p));
        let other = ["hello", "stats", "compute"]
            .iter()
            .any(|p| name.starts_with(p));
        assert!(
            read || !hot,
            "{name}: a hot shape the hot reader did not read"
        );
        assert!(
            !read || !other,
            "{name}: not a hot shape, read by the hot reader"
        );
    }
}

#[test]
fn the_committed_corpus_is_what_the_generators_write() {
    let frame: Vec<(String, Vec<u8>)> = checks::frame_seeds()
        .into_iter()
        .map(|(name, bytes)| (name.to_owned(), bytes))
        .collect();
    let mut want = frame;
    want.sort();
    assert_eq!(files(&fuzz_dir("corpus/frame")), want, "fuzz/corpus/frame");
    let mut want = checks::store_model_seeds();
    want.sort();
    assert_eq!(
        files(&fuzz_dir("corpus/store_model")),
        want,
        "fuzz/corpus/store_model"
    );
}

#[test]
fn frame_seeds_reach_what_they_are_named_for() {
    let seeds = checks::frame_seeds();
    assert!(seeds.len() >= 25);
    for (name, data) in seeds {
        let s = checks::check_frames(&data);
        let want = match name {
            "pipeline-set-get-delete-get" | "pipeline-ttl-expires" => answered(4),
            "pipeline-overwrite-sizes" => answered(5),
            "pipeline-every-op" => answered(7),
            "pipeline-with-bad-request" => FrameSummary {
                rejected: 1,
                ..answered(2)
            },
            "pipeline-partial-tail" => FrameSummary {
                partial_tail: s.partial_tail.max(1),
                ..answered(1)
            },
            "then-zero-prefix" | "then-oversize-prefix" => FrameSummary {
                framing_error: true,
                ..answered(1)
            },
            "short-prefix" => FrameSummary {
                partial_tail: 2,
                ..answered(0)
            },
            "get-empty-key"
            | "get-key-too-long"
            | "compute-zero-rounds"
            | "compute-too-many-rounds"
            | "compute-unknown-algo"
            | "wrong-identifier" => FrameSummary {
                rejected: 1,
                ..answered(0)
            },
            _ => answered(1),
        };
        assert_eq!(s, want, "seed {name}");
    }
}

fn answered(n: usize) -> FrameSummary {
    FrameSummary {
        answered: n,
        ..FrameSummary::default()
    }
}

#[test]
#[should_panic(expected = "the reply carries the request's id")]
fn the_reply_check_catches_a_wrong_id() {
    let mut out = BytesMut::new();
    ResponseEncoder::new().ok(7, &Reply::Ping { payload: b"x" }, &mut out);
    checks::check_reply(&out, 8, Ok(Reply::Ping { payload: b"x" }));
}

#[test]
#[should_panic(expected = "assertion `left == right` failed")]
fn the_reply_check_catches_a_wrong_status() {
    let mut out = BytesMut::new();
    ResponseEncoder::new().error(7, &RequestError::NotFound, &mut out);
    checks::check_reply(&out, 7, Err(RequestError::EmptyKey));
}

#[test]
fn store_model_seeds_decode_back_into_their_actions() {
    let seeds = checks::store_model_seeds();
    assert!(seeds.len() >= 5);
    let mut total = checks::StoreSummary::default();
    for (name, data) in seeds {
        let input = StoreInput::arbitrary_take_rest(Unstructured::new(&data)).expect(&name);
        assert_eq!(checks::encode_store_input(&input), data, "seed {name}");
        let s = checks::check_store_model_bytes(&data).expect("a seed decodes");
        assert_eq!(s.actions, input.actions.len(), "seed {name}");
        total.evictions += s.evictions;
        total.expirations += s.expirations;
        total.hits += s.hits;
        total.misses += s.misses;
    }
    // Between them, the seeds reach every kind of outcome.
    assert!(total.evictions > 0 && total.expirations > 0, "{total:?}");
    assert!(total.hits > 0 && total.misses > 0, "{total:?}");
}

/// The model check reaches what it is for: a one-page store filled with large values evicts,
/// short TTLs expire, an item too large for the budget is refused, and every Get after that is
/// still explained.
#[test]
fn store_model_reaches_eviction_expiry_and_refusal() {
    let mut actions = Vec::new();
    for i in 0..40u8 {
        actions.push(Action::Set {
            key: i,
            len: ValueLen::Large(100_000 + u32::from(i)),
            ttl: if i % 3 == 0 { Ttl::Short(5) } else { Ttl::None },
        });
        actions.push(Action::Get { key: i / 2 });
        if i % 8 == 0 {
            actions.push(Action::Advance { ms: 7 });
            actions.push(Action::Sweep);
        }
    }
    // Over one page with the key: refused in a one-page budget.
    actions.push(Action::Set {
        key: 1,
        len: ValueLen::Large(1 << 20),
        ttl: Ttl::Raw(u32::MAX),
    });
    actions.push(Action::Audit);
    for i in 0..40u8 {
        actions.push(Action::Get { key: i });
        actions.push(Action::Delete { key: i });
    }
    let input = StoreInput {
        budget: 0,
        start_ms: 1,
        weak_hash: true,
        actions,
    };
    let s = checks::check_store_model(&input);
    assert!(s.evictions > 0, "{s:?}");
    assert!(s.expirations > 0, "{s:?}");
    assert_eq!(s.refused, 1, "{s:?}");
    assert!(s.hits > 0 && s.misses > 0, "{s:?}");
}

/// Rewrites `fuzz/corpus/` from the generators. Run by hand after changing them.
#[test]
#[ignore]
fn write_seed_corpus() {
    let frame = fuzz_dir("corpus/frame");
    let store = fuzz_dir("corpus/store_model");
    for dir in [&frame, &store] {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).unwrap();
    }
    for (name, bytes) in checks::frame_seeds() {
        fs::write(frame.join(name), bytes).unwrap();
    }
    for (name, bytes) in checks::store_model_seeds() {
        fs::write(store.join(name), bytes).unwrap();
    }
}
