//! The per-core compute queue: `Compute` requests wait here, bounded by `--compute-queue`, and
//! one worker in a low-priority task queue runs them (started with the core, [`super::run`]). A
//! full queue answers `Overloaded` at once instead of growing, so compute load cannot take memory
//! or latency from pings and gets. The worker hands its replies to their connections in batches
//! ([`ReplyBatch`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::mailbox::{Completion, ConnShared};
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

    /// The next job if one waits now.
    pub fn try_next(&self) -> Option<ComputeJob> {
        self.jobs.borrow_mut().pop_front()
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

/// Finished replies are handed to their connections at most this long after the first of a
/// batch was finished (or when the queue runs dry, or at [`REPLY_BATCH_MAX`]). Handing one over
/// wakes its connection, whose next turn sends what it has; the worker yields to the network
/// whenever a request arrives (`runtime::yield_if_needed`), so replies handed over one by one
/// would each cost a turn and a `send` of their own beside a stream of gets. The same scale as
/// the compute queue's latency setting, which spaced replies this far apart before.
pub const REPLY_BATCH_WINDOW: Duration = Duration::from_millis(1);
/// Most finished replies held back at once (jobs out of the queue, so beyond its bound).
pub const REPLY_BATCH_MAX: usize = 64;

/// Replies the worker has finished and not yet handed over.
#[derive(Default)]
pub struct ReplyBatch {
    done: Vec<(Rc<ConnShared>, Completion)>,
    since: Option<Instant>,
}

impl ReplyBatch {
    /// Adds a finished reply; true if the batch should now be handed over.
    pub fn push(&mut self, conn: Rc<ConnShared>, completion: Completion) -> bool {
        self.since.get_or_insert_with(Instant::now);
        self.done.push((conn, completion));
        self.done.len() >= REPLY_BATCH_MAX || self.is_due()
    }

    /// The oldest held reply has waited [`REPLY_BATCH_WINDOW`].
    pub fn is_due(&self) -> bool {
        self.since
            .is_some_and(|since| since.elapsed() >= REPLY_BATCH_WINDOW)
    }

    /// Takes every held reply, in the order they were finished.
    pub fn drain(&mut self) -> impl Iterator<Item = (Rc<ConnShared>, Completion)> + '_ {
        self.since = None;
        self.done.drain(..)
    }
}
