//! One connection's task, whatever its protocol: read, split requests, route each, write the
//! replies.
//!
//! The loop reads whatever the socket has into a buffer, has the connection's codec
//! ([`super::codec`]) answer every whole request in it (read in place, never copied), and writes
//! all replies of that batch with one write. Requests that run elsewhere (on the core that owns
//! the key, or in the compute queue) come back through the connection's mailbox
//! ([`super::mailbox`]) and join the next batch. The connection stops reading, and so lets TCP
//! push back on the client, while `--max-inflight` requests are in progress or its output is
//! over [`OUTPUT_SOFT_CAP`]; nothing queues without bound.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::codec::{Codec, Peek, Protocol, Step};
use super::mailbox::ConnShared;
use super::output::{Output, OUTPUT_SOFT_CAP};
use super::router::{self, Ctx};
use super::shard::Shard;
use crate::runtime::net::Conn;

/// Bytes asked of each read at least (the buffer grows to hold a large request whole).
const READ_CHUNK: usize = 16 << 10;
/// The most a single read grows the input buffer by.
const MAX_READ_GROWTH: usize = 256 << 10;
/// At the drain, a connection that has done nothing for this long is closed at once; a busier
/// one is answered until its client leaves.
const DRAIN_QUIET: Duration = Duration::from_millis(250);
/// After a fatal framing error, how long the server keeps discarding input before closing, so
/// its last reply is not destroyed by a reset (a close with unread input sends RST).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;

/// The connection's own state, kept by its task.
struct Session<'a> {
    shard: &'a Rc<Shard>,
    shared: &'a Rc<ConnShared>,
    conn: Conn,
    codec: Codec,
    input: BytesMut,
    output: Output,
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

/// Serves one connection in `protocol` until the client leaves, an error, a timeout or the
/// drain ends it.
pub async fn serve(shard: &Rc<Shard>, conn: Conn, shared: &Rc<ConnShared>, protocol: Protocol) {
    let mut s = Session {
        shard,
        shared,
        conn,
        codec: Codec::new(protocol),
        // Buffers come from the core's pool when there are bytes to hold, and go back when
        // there are none: an idle connection holds no buffer.
        input: BytesMut::new(),
        output: Output::new(protocol == Protocol::Memcache),
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
    s.output.buf.clear();
    s.output.held_mut().clear();
    shard.io_buffers.release_if_empty(&mut s.input);
    shard.io_buffers.release_if_empty(&mut s.output.buf);
    shard.io_buffers.release_if_empty(s.output.held_mut());
    // Replies that came back after the task stopped taking them: their buffer goes back too.
    shared.ended.set(true);
    {
        let mut replies = shared.replies.borrow_mut();
        replies.clear();
        shard.io_buffers.release_if_empty(&mut replies);
    }
    shared.set_unwritten(0);
}

impl Session<'_> {
    /// The read-route-write loop. Returns true when it ended in an orderly way.
    async fn run(&mut self) -> bool {
        loop {
            self.shard.io_buffers.fill(&mut self.output.buf);
            self.take_completions();
            if !self.framing_broken {
                self.route_frames().await;
            }
            if !self.output.buf.is_empty() && !self.flush().await {
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
            // them. Only a full in-flight window, or replies held behind one still away, need
            // a completion first.
            let window_open = self.inflight < self.shard.config.max_inflight
                && self.output.len() < OUTPUT_SOFT_CAP
                && !self.shared.throttled();
            if has_frame && window_open {
                continue;
            }
            let may_read = !stopping && !has_frame && window_open;
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
        let mut arrivals = self.shared.arrivals.borrow_mut();
        if !arrivals.is_empty() {
            // In order: each reply takes its place.
            let pool = &self.shard.io_buffers;
            if self.output.has_waiting() {
                pool.fill(self.output.held_mut());
            }
            let mut at = 0;
            for (seq, len) in arrivals.drain(..) {
                let len = len as usize;
                self.output.arrive(seq, &replies[at..at + len]);
                at += len;
            }
            replies.clear();
            pool.release_if_empty(self.output.held_mut());
        } else if self.output.buf.is_empty() {
            // Take the buffer rather than copy it: a slow reader's replies can be megabytes, and
            // a copy would hold them twice. Both buffers come from the same pool.
            std::mem::swap(&mut self.output.buf, &mut *replies);
        } else {
            self.output.buf.extend_from_slice(&replies);
            replies.clear();
        }
        self.shard.io_buffers.release_if_empty(&mut replies);
        drop((replies, arrivals));
        // Owed from now until written, including while routing waits for a mesh permit.
        self.shared.set_unwritten(self.output.len());
        self.inflight -= n;
        self.replies_buffered += n as u64;
    }

    /// Answers or routes every whole request in the input, within the in-flight and output
    /// caps.
    async fn route_frames(&mut self) {
        let mut reserved = None;
        let mut batch = router::Batch::new(self.read_at);
        // Replies that wait their turn are held in a pooled buffer while routing may add some.
        if self.output.is_ordered() {
            self.shard.io_buffers.fill(self.output.held_mut());
        }
        while self.inflight < self.shard.config.max_inflight && self.output.len() < OUTPUT_SOFT_CAP
        {
            if self.input.is_empty() || self.codec.peek(self.shard, &self.input) != Peek::Whole {
                break;
            }
            let refuse = self.drain_keep == Some(0);
            let mut ctx = Ctx {
                shard: self.shard,
                conn: self.shared,
                output: &mut self.output,
                batch: &mut batch,
                reserved: reserved.take(),
                inflight: &mut self.inflight,
                answered: &mut self.replies_buffered,
            };
            let step = if refuse {
                self.codec.refuse(&mut ctx, &self.input)
            } else {
                self.codec.route(&mut ctx, &self.input)
            };
            let unused = ctx.reserved.take();
            match step {
                Step::Consumed(n) => {
                    router::release(self.shard, unused);
                    if let Some(keep) = self.drain_keep.as_mut() {
                        *keep = keep.saturating_sub(1);
                    }
                    self.input.advance(n);
                    // A request is whole: what follows it is a new one, whose clock starts
                    // when the loop next waits for its bytes.
                    self.shared.frame_started.set(None);
                }
                Step::Discarded(n) => {
                    router::release(self.shard, unused);
                    self.input.advance(n);
                }
                Step::NeedsPermit(peer) => {
                    router::release(self.shard, unused);
                    // Every slot to that core is in use, or its requests hold too many bytes:
                    // wait for a slot and the bytes to go down, then route this request again. Only this connection waits; the replies that free slots are
                    // received by another task.
                    if let Some(link) = self.shard.mesh.link(peer) {
                        link.reserve().await;
                        link.wait_requests_taken(router::REQUEST_BACKLOG, router::BACKLOG_RECHECK)
                            .await;
                        reserved = Some(peer);
                    }
                    batch.waited();
                }
                Step::Paused => {
                    router::release(self.shard, unused);
                    break;
                }
                Step::Close => {
                    router::release(self.shard, unused);
                    self.framing_broken = true;
                    break;
                }
            }
        }
        router::release(self.shard, reserved);
        batch.finish(self.shard);
        self.shard
            .io_buffers
            .release_if_empty(self.output.held_mut());
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
        !self.input.is_empty() && self.codec.peek(self.shard, &self.input) == Peek::Whole
    }

    fn whole_frames_buffered(&self) -> u64 {
        self.codec.whole_requests(self.shard, &self.input)
    }

    /// Writes the whole output: one write for the batch unless the socket is full. Returns
    /// false if the connection failed or was closed meanwhile.
    async fn flush(&mut self) -> bool {
        let mut written = 0;
        self.shared.set_unwritten(self.output.len());
        while written < self.output.buf.len() {
            let shared = self.shared;
            let result = futures_lite::future::or(
                async { Some(self.conn.write(&self.output.buf[written..]).await) },
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
                    self.shared.drained(n, Instant::now());
                    self.shared.set_unwritten(self.output.len() - written);
                }
            }
        }
        self.output.buf.clear();
        self.replies_buffered = 0;
        self.shard.io_buffers.release_if_empty(&mut self.output.buf);
        // Waking for close above may have eaten a completion's notification; the main loop
        // always looks at the completion queue before it waits, so none is lost.
        true
    }

    /// Reads more input, or returns early when woken (a completion, a close, the drain).
    /// Returns false if the connection failed.
    async fn read_or_wake(&mut self) -> bool {
        // Grow toward a large frame as its bytes arrive rather than all at once: a bare length
        // prefix must not make the server commit megabytes of buffer.
        let min_spare = match self.codec.peek(self.shard, &self.input) {
            Peek::Partial { total } => total
                .saturating_sub(self.input.len())
                .clamp(READ_CHUNK, MAX_READ_GROWTH),
            Peek::Whole => READ_CHUNK,
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
