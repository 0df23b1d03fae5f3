//! The per-core compute queue: `Compute` requests wait here, bounded by `--compute-queue`, and
//! one worker in a low-priority task queue runs them (started with the core, [`super::run`]). A full queue answers `Overloaded` at once
//! instead of growing, so compute load cannot take memory or latency from pings and gets.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;

use super::mailbox::ConnShared;
use super::notify::Notify;
use crate::protocol::Algo;

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

    /// Jobs waiting now (not the one the worker runs).
    pub fn len(&self) -> usize {
        self.jobs.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.borrow().is_empty()
    }

    /// Lets the worker finish what is queued and stop.
    pub fn close(&self) {
        self.closed.set(true);
        self.wake.notify();
    }

    /// The next job, once there is one; `None` once the queue is closed and empty.
    pub async fn next(&self) -> Option<ComputeJob> {
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
