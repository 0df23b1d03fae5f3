//! The per-core context: what the connections of one core share, built once before they
//! connect. Requests are cut from it and replies checked against it.

use std::cell::RefCell;
use std::rc::Rc;

use crate::cli::Plan;
use crate::stats::Recorder;
use crate::workload::{KeySampler, LoadOp};

/// The seed of the byte pool: a constant, not --seed, which is for the draws.
const POOL_SEED: u64 = 0x7065_7263_6f72_6531;

/// Distinct compute inputs; their digests are computed once per core, so checking a compute
/// reply costs a comparison, not a second computation.
const COMPUTE_CASES: usize = 16;

/// One compute input (a slice of the core's byte pool) and its expected digest.
pub struct ComputeCase {
    pub offset: usize,
    pub len: usize,
    pub digest: Vec<u8>,
}

/// What the slots of one core share: the plan, a pool of random bytes that payloads, values
/// and compute inputs are cut from (so sending allocates nothing; the same on every core), and
/// the core's recorder.
pub struct CoreCtx {
    pub plan: Rc<Plan>,
    pub pool: Vec<u8>,
    pub compute: Vec<ComputeCase>,
    pub keys: KeySampler,
    pub recorder: RefCell<Recorder>,
}

impl CoreCtx {
    pub fn new(plan: Rc<Plan>, core: usize) -> CoreCtx {
        // The pool is the same on every core and in every run (with the same --value-size), so
        // the cache workload's value of a key is the same bytes whoever writes or checks it.
        let mut pool_rng = fastrand::Rng::with_seed(POOL_SEED);
        // Twice the largest value, so values start at many different offsets.
        let pool_len = (2 * plan.value_size.max).max(4096);
        let pool: Vec<u8> = (0..pool_len).map(|_| pool_rng.u8(..)).collect();
        let mut rng = fastrand::Rng::with_seed(plan.seed ^ (core as u64).wrapping_mul(0x9e37_79b9));
        let compute = if plan.mix.ops().contains(&LoadOp::Compute) {
            (0..COMPUTE_CASES)
                .map(|_| {
                    let len = plan.value_size.pick(&mut rng);
                    let offset = rng.usize(0..=pool.len() - len);
                    let digest = percore::ops::compute::digest_blocking(
                        plan.compute_algo,
                        &pool[offset..offset + len],
                        plan.compute_rounds,
                    );
                    ComputeCase {
                        offset,
                        len,
                        digest: digest.as_bytes().to_vec(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        CoreCtx {
            keys: KeySampler::new(plan.key_dist, plan.keys),
            plan,
            pool,
            compute,
            recorder: RefCell::new(Recorder::new()),
        }
    }
}
