//! The per-core compute queue: `Compute` requests wait here, bounded by `--compute-queue`, and
//! one worker in a low-priority task queue runs them. A full queue answers `Overloaded` at once
//! instead of growing, so compute load cannot take memory or latency from pings and gets.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;

use super::mailbox::{Completion, ConnShared};
use super::notify::Notify;
use super::shard::Shard;
use crate::ops;
use crate::protocol::{Algo, OpKind, Reply};

/// One queued `Compute` request; `buf` holds its input and, afterwards, its reply frame.
pub struct ComputeJob {
    pub conn: Rc<ConnShared>,
    pub id: u64,
    pub algo: Algo,
    pub rounds: u32,
    pub buf: BytesMut,
    pub started: Instant,
}

pub struct ComputeQueue {
    jobs: RefCell<VecDeque<ComputeJob>>,
    capacity: usize,
    wake: Notify,
    closed: Cell<bool>,
}

impl ComputeQueue {
    pub fn new(capacity: usize) -> ComputeQueue {
        ComputeQueue {
            jobs: RefCell::new(VecDeque::with_capacity(capacity)),
            capacity,
            wake: Notify::default(),
            closed: Cell::new(false),
        }
    }

    /// Queues a job, or gives it back when the queue is full.
    pub fn submit(&self, job: ComputeJob) -> Result<(), ComputeJob> {
        let mut jobs = self.jobs.borrow_mut();
        if jobs.len() >= self.capacity || self.closed.get() {
            return Err(job);
        }
        jobs.push_back(job);
        self.wake.notify();
        Ok(())
    }

    /// Lets the worker finish what is queued and stop.
    pub fn close(&self) {
        self.closed.set(true);
        self.wake.notify();
    }

    async fn next(&self) -> Option<ComputeJob> {
        loop {
            if let Some(job) = self.jobs.borrow_mut().pop_front() {
                return Some(job);
            }
            if self.closed.get() {
                return None;
            }
            self.wake.wait().await;
        }
    }
}

/// Runs queued jobs one at a time until the queue is closed and empty.
pub async fn worker(shard: Rc<Shard>) {
    while let Some(mut job) = shard.compute.next().await {
        let digest = ops::compute::digest(job.algo, &job.buf, job.rounds).await;
        job.buf.clear();
        let reply = Reply::Digest {
            digest: digest.as_bytes(),
        };
        shard.encoder.borrow_mut().ok(job.id, &reply, &mut job.buf);
        job.conn.complete(
            &shard,
            Completion {
                frame: job.buf,
                kind: OpKind::Compute,
                started: job.started,
                seq: 0,
            },
        );
    }
}
