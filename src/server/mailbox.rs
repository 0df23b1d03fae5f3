//! A connection's mailbox: the part of a connection that other tasks on the core reach. Replies
//! finished away from the connection's task (on the key's owner core, in the compute queue, in
//! a gather over every core) arrive here as [`Completion`]s; the timeout sweep reads its clocks
//! and closes it with a [`CloseReason`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::notify::Notify;
use super::pool::BufferPool;
use crate::protocol::OpKind;

/// Bytes a connection may owe its client: its unwritten output plus the replies finished
/// elsewhere that wait for it. Reading stops at the output's soft cap, but requests already
/// sent to other cores still come back, up to `--max-inflight` of them, each up to a maximal
/// value: a client that never reads could make the server hold a gigabyte. Past this it is
/// closed as a slow reader. (On the way back, such replies are bounded by
/// [`super::peer::REPLY_BACKLOG`].)
pub const OWED_HARD_CAP: usize = 64 << 20;
/// A connection that owes more than this must take at least as much in every
/// `--frame-timeout`, or it is closed as a slow reader: a client reading a trickle would
/// otherwise keep the server holding its replies forever, every read of it counting as
/// activity. (At the default 10 s that is 25 KiB/s while it owes over 256 KiB, the size of the
/// output at which a connection stops answering.)
pub const SLOW_READER_OWED: usize = 256 << 10;

/// How long a connection that owes more than [`SLOW_READER_OWED`] may take nothing while its
/// core is over `--owed-budget` before it is closed as a slow reader.
pub const OVER_BUDGET_STALL: Duration = Duration::from_millis(100);

/// The bytes one core's connections owe their clients, against `--owed-budget`.
pub struct OwedTally {
    owed: Cell<usize>,
    budget: usize,
}

impl OwedTally {
    pub fn new(budget: usize) -> Rc<OwedTally> {
        Rc::new(OwedTally {
            owed: Cell::new(0),
            budget,
        })
    }

    /// Bytes owed now, across the core's connections.
    pub fn owed(&self) -> usize {
        self.owed.get()
    }

    pub fn over_budget(&self) -> bool {
        self.owed.get() > self.budget
    }
}

/// A reply produced away from the connection's task.
pub struct Completion {
    /// The encoded reply (one whole response frame, or memcached text), in a pooled buffer.
    pub frame: BytesMut,
    pub kind: OpKind,
    pub started: Instant,
    /// Its place among the connection's replies, where the protocol answers in order.
    pub seq: u64,
}

/// What became of a reply handed to a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// It waits for the connection's task, which has been woken; `at` is when (the clock is
    /// read once, for the idle timer and the reply's service time).
    Taken { at: Instant },
    /// The connection is gone; nobody will read it.
    Ended,
    /// It would have made the connection owe more than [`OWED_HARD_CAP`]: the connection is
    /// being closed as a slow reader instead.
    Refused,
}

/// Why something outside the connection's task told it to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    IdleTimeout,
    FrameTimeout,
    DrainTimeout,
    /// The client let more than [`OWED_HARD_CAP`] of replies pile up unread, or took less than
    /// [`SLOW_READER_OWED`] in a `--frame-timeout` while it owed more.
    SlowReader,
}

/// The part of a connection that other tasks on the core reach: the replies finished away from
/// it, its timestamps for the timeout sweep, and the means to wake or close it.
pub struct ConnShared {
    pub(super) wake: Notify,
    /// Reply bytes finished elsewhere, copied in as they arrive so that the pooled buffer they
    /// came in goes straight back to its pool (the pool then never needs more buffers than can
    /// be away at once).
    pub(super) replies: RefCell<BytesMut>,
    /// For a connection whose replies go in order: each arrival's place and length in
    /// `replies`, oldest first.
    pub(super) arrivals: RefCell<VecDeque<(u64, u32)>>,
    ordered: bool,
    /// How many replies `replies` holds.
    pub(super) completed: Cell<usize>,
    /// Bytes in the connection's output not yet written: with `replies`, what the client is
    /// owed, which [`OWED_HARD_CAP`] bounds.
    unwritten: Cell<usize>,
    /// `unwritten` plus the bytes in `replies`, as last added to the core's tally.
    owed: Cell<usize>,
    tally: Rc<OwedTally>,
    /// When the client last took bytes (or the connection was accepted).
    last_drain: Cell<Instant>,
    pub(super) last_active: Cell<Instant>,
    /// Bytes written to the client so far.
    drained: Cell<u64>,
    /// While the connection owes over [`SLOW_READER_OWED`]: since when, and `drained` then.
    owing_since: Cell<Option<(Instant, u64)>>,
    /// When the partial request now in the buffer started arriving.
    pub(super) frame_started: Cell<Option<Instant>>,
    pub(super) close: Cell<Option<CloseReason>>,
    /// The connection's task has ended; replies that still come back have nowhere to go.
    pub(super) ended: Cell<bool>,
}

impl ConnShared {
    /// The mailbox of a connection accepted at `now`; `ordered` when its protocol answers in
    /// request order (memcached).
    pub fn new(now: Instant, ordered: bool, tally: Rc<OwedTally>) -> ConnShared {
        ConnShared {
            wake: Notify::default(),
            replies: RefCell::new(BytesMut::new()),
            arrivals: RefCell::new(VecDeque::new()),
            ordered,
            completed: Cell::new(0),
            unwritten: Cell::new(0),
            owed: Cell::new(0),
            tally,
            last_drain: Cell::new(now),
            last_active: Cell::new(now),
            drained: Cell::new(0),
            owing_since: Cell::new(None),
            frame_started: Cell::new(None),
            close: Cell::new(None),
            ended: Cell::new(false),
        }
    }

    /// Copies a finished reply in (into a buffer lent by `io_buffers` while it holds bytes)
    /// and wakes the connection's task. Work finishing counts as activity for
    /// `--idle-timeout`: a connection waiting on its own requests is not idle. The caller keeps
    /// the completion's buffer, to give back to its pool.
    pub fn deliver(&self, io_buffers: &BufferPool, completion: &Completion) -> Delivered {
        if self.ended.get() {
            // Counted as unanswered when the task ended.
            return Delivered::Ended;
        }
        let now = Instant::now();
        let owed = self.owed.get() + completion.frame.len();
        if owed > OWED_HARD_CAP || self.stalled_over_budget(now) {
            // Dropped with the connection. Not counted as completed: the request stays in
            // flight, which is how the close counts it as unanswered.
            self.close(CloseReason::SlowReader);
            return Delivered::Refused;
        }
        self.last_active.set(now);
        {
            let mut replies = self.replies.borrow_mut();
            io_buffers.fill(&mut replies);
            replies.extend_from_slice(&completion.frame);
        }
        if self.ordered {
            let len = completion.frame.len() as u32;
            self.arrivals.borrow_mut().push_back((completion.seq, len));
        }
        self.recount();
        self.completed.set(self.completed.get() + 1);
        self.wake.notify();
        Delivered::Taken { at: now }
    }

    /// Sets the bytes of the connection's output not yet written.
    pub fn set_unwritten(&self, bytes: usize) {
        self.unwritten.set(bytes);
        self.recount();
    }

    /// The client took `bytes`.
    pub fn drained(&self, bytes: usize, now: Instant) {
        self.drained.set(self.drained.get() + bytes as u64);
        self.last_drain.set(now);
        self.last_active.set(now);
    }

    /// Brings the core's tally up to date with what this connection owes now.
    pub fn recount(&self) {
        let owed = self.unwritten.get() + self.replies.borrow().len();
        // The tally includes this connection's last count, so this never goes below zero.
        let tally = &self.tally.owed;
        tally.set((tally.get() + owed).saturating_sub(self.owed.get()));
        self.owed.set(owed);
    }

    /// Whether the connection should stop being read and routed: its core is over its budget
    /// and it owes more than [`SLOW_READER_OWED`] itself.
    pub fn throttled(&self) -> bool {
        self.tally.over_budget() && self.owed.get() > SLOW_READER_OWED
    }

    /// Throttled, and its client has taken nothing for [`OVER_BUDGET_STALL`].
    fn stalled_over_budget(&self, now: Instant) -> bool {
        self.throttled() && now.saturating_duration_since(self.last_drain.get()) > OVER_BUDGET_STALL
    }

    pub fn wake(&self) {
        self.wake.notify();
    }

    pub fn close(&self, reason: CloseReason) {
        self.close.set(Some(reason));
        self.wake.notify();
    }

    /// The timeout this connection has run over at `now`, if any. Called every tick.
    pub fn overdue(&self, now: Instant, idle: Duration, frame: Duration) -> Option<CloseReason> {
        if let Some(started) = self.frame_started.get() {
            if now.saturating_duration_since(started) > frame {
                return Some(CloseReason::FrameTimeout);
            }
        }
        if self.stalled_over_budget(now) {
            return Some(CloseReason::SlowReader);
        }
        let owed = self.owed.get();
        let drained = self.drained.get();
        match self.owing_since.get() {
            _ if owed <= SLOW_READER_OWED => self.owing_since.set(None),
            None => self.owing_since.set(Some((now, drained))),
            Some((since, drained_then)) if now.saturating_duration_since(since) > frame => {
                if drained - drained_then < SLOW_READER_OWED as u64 {
                    return Some(CloseReason::SlowReader);
                }
                // Enough progress: judge the next window.
                self.owing_since.set(Some((now, drained)));
            }
            Some(_) => {}
        }
        (now.saturating_duration_since(self.last_active.get()) > idle)
            .then_some(CloseReason::IdleTimeout)
    }
}
