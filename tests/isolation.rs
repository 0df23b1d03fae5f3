//! Isolation: CPU-heavy Compute on a core does not hold up the gets that share the core with it.
//! A behaviour check with a generous bound, not a latency benchmark (that is
//! tools/noisy-neighbour.sh).

mod common;
use common::*;

use std::time::{Duration, Instant};

use percore::protocol::{ReplyView, MAX_COMPUTE_ROUNDS};

/// Compute queued at once, at least: far longer than any wait a get may see.
const QUEUED_COMPUTE: Duration = Duration::from_millis(2500);
/// How long each queued job runs, about: a core that ran a whole job before answering would
/// still pass; one that ran them all would not.
const JOB: Duration = Duration::from_millis(100);
/// The longest a get may wait while the compute runs. A core that ran the queued jobs before
/// answering would take the whole [`QUEUED_COMPUTE`], five times this.
const GET_BOUND: Duration = Duration::from_millis(500);

fn job(rounds: u32) -> Op<'static> {
    Op::Compute {
        algo: Algo::Sha256,
        input: b"isolation",
        rounds,
    }
}

#[test]
fn gets_are_answered_while_compute_keeps_the_core_busy() {
    let server = Server::start(&["--cores", "1"]);
    block_on(async {
        let mut compute = Client::connect(server.addr).await.unwrap();
        let mut gets = Client::connect(server.addr).await.unwrap();
        gets.set(b"key", b"value", 0).await.unwrap();

        // How fast this build hashes here (a debug build is far slower than a release one).
        let started = Instant::now();
        compute
            .compute(Algo::Sha256, b"isolation", MAX_COMPUTE_ROUNDS)
            .await
            .unwrap();
        let per_round = started.elapsed().as_secs_f64() / f64::from(MAX_COMPUTE_ROUNDS);
        let rounds = ((JOB.as_secs_f64() / per_round) as u32).clamp(1, MAX_COMPUTE_ROUNDS);
        let started = Instant::now();
        let expected = compute
            .compute(Algo::Sha256, b"isolation", rounds)
            .await
            .unwrap();
        let one_job = started.elapsed();
        let jobs = (QUEUED_COMPUTE.as_secs_f64() / one_job.as_secs_f64())
            .ceil()
            .clamp(2.0, 64.0) as u32;
        for _ in 0..jobs {
            compute.send(&job(rounds));
        }
        compute.flush().await.unwrap();
        let flood_started = Instant::now();

        // Gets one after another through the first half of the queued compute.
        let mut worst = (Duration::ZERO, 0, Duration::ZERO);
        let mut answered = 0;
        while flood_started.elapsed() < one_job * jobs / 2 {
            let sent = Instant::now();
            assert_eq!(
                gets.get(b"key").await.unwrap(),
                Some((b"value".to_vec(), 0))
            );
            if sent.elapsed() > worst.0 {
                worst = (sent.elapsed(), answered, sent - flood_started);
            }
            answered += 1;
        }
        let gets_done = flood_started.elapsed();

        for _ in 0..jobs {
            let response = compute.recv().await.unwrap();
            match response.ok().unwrap().body {
                ReplyView::Digest { digest } => assert_eq!(digest, &expected[..]),
                other => panic!("a Compute answered {other:?}"),
            }
        }
        let compute_done = flood_started.elapsed();
        assert!(
            compute_done > gets_done,
            "the compute ({jobs} jobs of {one_job:?}) was over at {compute_done:?}, before the \
             gets ended at {gets_done:?}: they did not share the core with it"
        );
        let (slowest, index, at) = worst;
        assert!(
            slowest < GET_BOUND,
            "the slowest of {answered} gets beside {jobs} Compute jobs of {one_job:?} took \
             {slowest:?} (bound {GET_BOUND:?}): get {index}, sent {at:?} into the compute"
        );
    });
}
