//! One connection's task: read, split frames, route each request, write the replies.
//!
//! The loop reads whatever the socket has into a buffer, answers every whole frame in it (the
//! frames are read in place, never copied), and writes all replies of that batch with one
//! write. Requests that run elsewhere (on the core that owns the key, or in the compute queue)
//! come back as [`Completion`]s and join the next batch. The connection stops reading, and so
//! lets TCP push back on the client, while `--max-inflight` requests are in progress or its
//! output is over [`OUTPUT_SOFT_CAP`]; nothing queues without bound.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::notify::Notify;
use super::router::{self, Routed};
use super::shard::Shard;
use crate::protocol::frame::{self, Peek};
use crate::protocol::OpKind;
use crate::runtime::net::Conn;

/// Bytes asked of each read at least (the buffer grows to hold a large frame whole).
const READ_CHUNK: usize = 16 << 10;
/// The most a single read grows the input buffer by.
const MAX_READ_GROWTH: usize = 256 << 10;
/// Stop answering further frames of a batch once this much output is waiting to be written.
pub const OUTPUT_SOFT_CAP: usize = 256 << 10;
/// Bytes a connection may owe its client: its unwritten output plus the replies finished
/// elsewhere that wait for it. Reading stops at [`OUTPUT_SOFT_CAP`], but requests already sent
/// to other cores still come back, up to `--max-inflight` of them, each up to a maximal value:
/// a client that never reads could make the server hold a gigabyte. Past this it is closed as a
/// slow reader. (On the way back, such replies are bounded by [`super::peer::REPLY_BACKLOG`].)
pub const OWED_HARD_CAP: usize = 64 << 20;
/// At the drain, a connection that has done nothing for this long is closed at once; a busier
/// one is answered until its client leaves.
const DRAIN_QUIET: Duration = Duration::from_millis(250);
/// After a fatal framing error, how long the server keeps discarding input before closing, so
/// its last reply is not destroyed by a reset (a close with unread input sends RST).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;

/// A reply produced away from the connection's task.
pub struct Completion {
    /// One whole encoded response frame, in a pooled buffer.
    pub frame: BytesMut,
    pub kind: OpKind,
    pub started: Instant,
}

/// Why something outside the connection's task told it to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    IdleTimeout,
    FrameTimeout,
    DrainTimeout,
    /// The client let more than [`OWED_HARD_CAP`] of replies pile up unread.
    SlowReader,
}

/// The part of a connection that other tasks on the core reach: the replies finished away from
/// it, its timestamps for the timeout sweep, and the means to wake or close it.
pub struct ConnShared {
    wake: Notify,
    /// Reply frames finished elsewhere, copied in as they arrive so that the pooled buffer they
    /// came in goes straight back to its pool (the pool then never needs more buffers than can
    /// be away at once).
    replies: RefCell<BytesMut>,
    /// How many replies `replies` holds.
    completed: Cell<usize>,
    /// Bytes in the connection's output not yet written: with `replies`, what the client is
    /// owed, which [`OWED_HARD_CAP`] bounds.
    unwritten: Cell<usize>,
    last_active: Cell<Instant>,
    /// When the partial frame now in the buffer started arriving.
    frame_started: Cell<Option<Instant>>,
    close: Cell<Option<CloseReason>>,
    /// The connection's task has ended; replies that still come back have nowhere to go.
    ended: Cell<bool>,
}

impl ConnShared {
    pub fn new(now: Instant) -> ConnShared {
        ConnShared {
            wake: Notify::default(),
            replies: RefCell::new(BytesMut::new()),
            completed: Cell::new(0),
            unwritten: Cell::new(0),
            last_active: Cell::new(now),
            frame_started: Cell::new(None),
            close: Cell::new(None),
            ended: Cell::new(false),
        }
    }

    /// Hands a finished reply to the connection. Work finishing counts as activity for
    /// `--idle-timeout`: a connection waiting on its own requests is not idle.
    pub fn complete(&self, shard: &Shard, completion: Completion) {
        if self.ended.get() {
            // Counted as unanswered when the task ended. Copying it into `replies` would take
            // a pooled buffer that nobody gives back (tests/hostile.rs, vanishing clients).
            shard.pool.give(completion.frame);
            return;
        }
        let mut replies = self.replies.borrow_mut();
        if self.unwritten.get() + replies.len() + completion.frame.len() > OWED_HARD_CAP {
            drop(replies);
            // Dropped with the connection. Not counted as completed: the request stays in
            // flight, which is how the close counts it as unanswered.
            shard.pool.give(completion.frame);
            self.close(CloseReason::SlowReader);
            return;
        }
        let now = Instant::now();
        self.last_active.set(now);
        shard.io_buffers.fill(&mut replies);
        replies.extend_from_slice(&completion.frame);
        shard.pool.give(completion.frame);
        let elapsed = now.saturating_duration_since(completion.started);
        shard.metrics.borrow_mut().record(completion.kind, elapsed);
        self.completed.set(self.completed.get() + 1);
        self.wake.notify();
    }

    pub fn wake(&self) {
        self.wake.notify();
    }

    pub fn close(&self, reason: CloseReason) {
        self.close.set(Some(reason));
        self.wake.notify();
    }

    /// The timeout this connection has run over at `now`, if any.
    pub fn overdue(&self, now: Instant, idle: Duration, frame: Duration) -> Option<CloseReason> {
        if let Some(started) = self.frame_started.get() {
            if now.saturating_duration_since(started) > frame {
                return Some(CloseReason::FrameTimeout);
            }
        }
        (now.saturating_duration_since(self.last_active.get()) > idle)
            .then_some(CloseReason::IdleTimeout)
    }
}

/// The connection's own state, kept by its task.
struct Session<'a> {
    shard: &'a Rc<Shard>,
    shared: &'a Rc<ConnShared>,
    conn: Conn,
    input: BytesMut,
    output: BytesMut,
    /// Replies encoded into `output` and not yet written.
    replies_buffered: u64,
    /// Requests routed elsewhere whose completion has not yet come back.
    inflight: usize,
    peer_closed: bool,
    /// The framing broke: the error reply is in `output`; close once it is written.
    framing_broken: bool,
    /// Set when the drain begins: how many whole frames read before it still run. Every frame
    /// after them is answered `ShuttingDown`, and reading goes on until the client leaves, so
    /// that a client in the middle of a pipeline loses no request to the close.
    drain_keep: Option<u64>,
    /// When the last read returned: the start of the service time of the frames it completed.
    read_at: Instant,
}

/// Serves one connection until the client leaves, an error, a timeout or the drain ends it.
pub async fn serve(shard: &Rc<Shard>, conn: Conn, shared: &Rc<ConnShared>) {
    let mut s = Session {
        shard,
        shared,
        conn,
        // Buffers come from the core's pool when there are bytes to hold, and go back when
        // there are none: an idle connection holds no buffer.
        input: BytesMut::new(),
        output: BytesMut::new(),
        replies_buffered: 0,
        inflight: 0,
        peer_closed: false,
        framing_broken: false,
        drain_keep: None,
        read_at: Instant::now(),
    };
    let graceful = s.run().await;
    // Whatever was read and not answered is lost with the connection; count it.
    let lost = s.replies_buffered + s.inflight as u64 + s.whole_frames_buffered();
    shard.metrics.borrow_mut().unanswered += lost;
    s.finish(graceful).await;
    // Back to the pool for the next connection.
    s.input.clear();
    s.output.clear();
    shard.io_buffers.release_if_empty(&mut s.input);
    shard.io_buffers.release_if_empty(&mut s.output);
    // Replies that came back after the task stopped taking them: their buffer goes back too.
    shared.ended.set(true);
    let mut replies = shared.replies.borrow_mut();
    replies.clear();
    shard.io_buffers.release_if_empty(&mut replies);
}

impl Session<'_> {
    /// The read-route-write loop. Returns true when it ended in an orderly way.
    async fn run(&mut self) -> bool {
        loop {
            self.shard.io_buffers.fill(&mut self.output);
            self.take_completions();
            if !self.framing_broken {
                self.route_frames().await;
            }
            if !self.output.is_empty() && !self.flush().await {
                return false;
            }
            if self.shared.close.get().is_some() {
                return false;
            }
            if self.drain_keep.is_none() && self.shard.draining.is_set() {
                // A quiet connection closes at once; one in the middle of its work (whose next
                // requests may be on the wire right now) keeps reading until the client, told
                // ShuttingDown, leaves, or the drain times out.
                let quiet = Instant::now().saturating_duration_since(self.shared.last_active.get())
                    > DRAIN_QUIET;
                if quiet && self.input.is_empty() && self.inflight == 0 && self.output.is_empty() {
                    return true;
                }
                self.drain_keep = Some(self.whole_frames_buffered());
                continue;
            }
            // Once the framing broke nothing more is read, but the requests before the bad
            // frame that are still running elsewhere get their replies first.
            let stopping = self.framing_broken || self.peer_closed;
            let has_frame = !self.framing_broken && self.has_whole_frame();
            if stopping && self.inflight == 0 && !has_frame {
                return true;
            }
            if self.shared.completed.get() > 0 {
                continue;
            }
            // Whole frames wait behind a reply that filled the output (now written): route
            // them. Only a full in-flight window needs a completion first.
            if has_frame && self.inflight < self.shard.config.max_inflight {
                continue;
            }
            let may_read =
                !stopping && !has_frame && self.inflight < self.shard.config.max_inflight;
            self.track_partial_frame(may_read);
            if may_read {
                if !self.read_or_wake().await {
                    return false;
                }
            } else {
                self.shared.wake.wait().await;
            }
        }
    }

    /// Appends the replies that came back from elsewhere to the output.
    fn take_completions(&mut self) {
        let n = self.shared.completed.replace(0);
        if n == 0 {
            return;
        }
        let mut replies = self.shared.replies.borrow_mut();
        if self.output.is_empty() {
            // Take the buffer rather than copy it: a slow reader's replies can be megabytes, and
            // a copy would hold them twice. Both buffers come from the same pool.
            std::mem::swap(&mut self.output, &mut *replies);
        } else {
            self.output.extend_from_slice(&replies);
            replies.clear();
        }
        self.shard.io_buffers.release_if_empty(&mut replies);
        // Owed from now until written, including while routing waits for a mesh permit.
        self.shared.unwritten.set(self.output.len());
        self.inflight -= n;
        self.replies_buffered += n as u64;
    }

    /// Answers or routes every whole frame in the input, within the in-flight and output caps.
    async fn route_frames(&mut self) {
        let max_frame = self.shard.config.max_frame;
        let mut reserved = None;
        let mut batch = router::Batch::new(self.read_at);
        while self.inflight < self.shard.config.max_inflight && self.output.len() < OUTPUT_SOFT_CAP
        {
            let len = match frame::peek(&self.input, max_frame) {
                Ok(Peek::Complete { len }) => len,
                Ok(Peek::Partial { .. }) => break,
                Err(error) => {
                    self.shard
                        .encoder
                        .borrow_mut()
                        .error(0, &error, &mut self.output);
                    self.shard.metrics.borrow_mut().rejected += 1;
                    self.replies_buffered += 1;
                    self.framing_broken = true;
                    break;
                }
            };
            let frame = &self.input[..len];
            if self.drain_keep == Some(0) {
                router::refuse_shutting_down(self.shard, frame, &mut self.output, &mut batch);
                self.replies_buffered += 1;
                self.input.advance(len);
                continue;
            }
            match router::route(
                self.shard,
                self.shared,
                frame,
                &mut self.output,
                reserved.take(),
                &mut batch,
            ) {
                Routed::Answered => self.replies_buffered += 1,
                Routed::Deferred => self.inflight += 1,
                Routed::NeedsPermit(peer) => {
                    // Every slot to that core is in use: wait for one, then route this frame
                    // again. Only this connection waits; the replies that free slots are
                    // received by another task.
                    if let Some(link) = self.shard.mesh.link(peer) {
                        link.reserve().await;
                        reserved = Some(peer);
                    }
                    continue;
                }
            }
            if let Some(keep) = self.drain_keep.as_mut() {
                *keep -= 1;
            }
            self.input.advance(len);
        }
        batch.finish(self.shard);
    }

    /// Starts or stops the `--frame-timeout` clock. It measures how long the client takes to
    /// deliver a frame it has started, so it runs only while the server is reading.
    fn track_partial_frame(&self, reading: bool) {
        let partial = reading && !self.input.is_empty();
        match (partial, self.shared.frame_started.get()) {
            (true, None) => self.shared.frame_started.set(Some(Instant::now())),
            (false, Some(_)) => self.shared.frame_started.set(None),
            _ => {}
        }
    }

    fn has_whole_frame(&self) -> bool {
        matches!(
            frame::peek(&self.input, self.shard.config.max_frame),
            Ok(Peek::Complete { .. })
        )
    }

    fn whole_frames_buffered(&self) -> u64 {
        let mut rest = &self.input[..];
        let mut n = 0;
        while let Ok(Peek::Complete { len }) = frame::peek(rest, self.shard.config.max_frame) {
            rest = &rest[len..];
            n += 1;
        }
        n
    }

    /// Writes the whole output: one write for the batch unless the socket is full. Returns
    /// false if the connection failed or was closed meanwhile.
    async fn flush(&mut self) -> bool {
        let mut written = 0;
        self.shared.unwritten.set(self.output.len());
        while written < self.output.len() {
            let shared = self.shared;
            let result = futures_lite::future::or(
                async { Some(self.conn.write(&self.output[written..]).await) },
                async {
                    while shared.close.get().is_none() {
                        shared.wake.wait().await;
                    }
                    None
                },
            )
            .await;
            match result {
                Some(Ok(0)) | Some(Err(_)) | None => return false,
                Some(Ok(n)) => {
                    written += n;
                    self.shared.last_active.set(Instant::now());
                    self.shared.unwritten.set(self.output.len() - written);
                }
            }
        }
        self.output.clear();
        self.replies_buffered = 0;
        self.shard.io_buffers.release_if_empty(&mut self.output);
        // Waking for close above may have eaten a completion's notification; the main loop
        // always looks at the completion queue before it waits, so none is lost.
        true
    }

    /// Reads more input, or returns early when woken (a completion, a close, the drain).
    /// Returns false if the connection failed.
    async fn read_or_wake(&mut self) -> bool {
        // Grow toward a large frame as its bytes arrive rather than all at once: a bare length
        // prefix must not make the server commit megabytes of buffer.
        let min_spare = match frame::peek(&self.input, self.shard.config.max_frame) {
            Ok(Peek::Partial { total }) => {
                (total - self.input.len()).clamp(READ_CHUNK, MAX_READ_GROWTH)
            }
            _ => READ_CHUNK,
        };
        let shared = self.shared;
        let result = futures_lite::future::or(async { Some(self.read(min_spare).await) }, async {
            shared.wake.wait().await;
            None
        })
        .await;
        match result {
            None => true,
            Some(Ok(0)) => {
                self.peer_closed = true;
                true
            }
            Some(Ok(_)) => {
                // One clock read per read: the idle timer and the service time both start here.
                self.read_at = Instant::now();
                self.shared.last_active.set(self.read_at);
                true
            }
            Some(Err(_)) => false,
        }
    }

    /// Reads into the input buffer, holding a pooled buffer only while there are bytes: if the
    /// socket is empty and so is the buffer, the buffer goes back to the pool for the wait.
    /// Dropping the future at any point loses no byte.
    async fn read(&mut self, min_spare: usize) -> std::io::Result<usize> {
        let pool = &self.shard.io_buffers;
        loop {
            pool.fill(&mut self.input);
            self.input.reserve(min_spare);
            if let Some(n) = self.conn.try_read(&mut self.input)? {
                return Ok(n);
            }
            pool.release_if_empty(&mut self.input);
            self.conn.readable().await?;
        }
    }

    /// Closes the connection. After an orderly end the server half-closes and discards input
    /// for a moment, so the client reads every reply before it sees the connection end.
    async fn finish(&mut self, graceful: bool) {
        if !graceful || self.peer_closed {
            return;
        }
        if self.conn.shutdown_write().await.is_err() {
            return;
        }
        let mut discarded = 0;
        let deadline = crate::runtime::sleep(LINGER);
        let drain = async {
            loop {
                self.input.clear();
                match self.conn.read_into(&mut self.input, READ_CHUNK).await {
                    Ok(n) if n > 0 && discarded < LINGER_BYTES => discarded += n,
                    _ => return,
                }
            }
        };
        futures_lite::future::or(drain, deadline).await;
    }
}
