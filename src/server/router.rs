//! What the codecs share to send a request on its way: the [`Ctx`] a request is routed with,
//! the batch a read's requests are timed in, and [`forward`], which sends a request to the core
//! that owns its key within the mesh's permits.

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;

use super::mailbox::ConnShared;
use super::message::{PeerRequest, Pending};
use super::output::Output;
use super::shard::Shard;
use crate::error::RequestError;
use crate::protocol::OpKind;

/// The requests of one read, timed together: the clock is read once when the read returns and
/// once when the batch's replies are all encoded, not twice per request (at hundreds of
/// thousands of requests a second the reads showed up in profiles).
pub struct Batch {
    /// When the read returned: where the service time of the batch's requests starts.
    pub started: Instant,
    /// The store's clock for the requests routed now: read when routing starts, and again
    /// after any wait, so a TTL counts from when a request runs, not from when it was read.
    now: Instant,
    /// `now` as the store's milliseconds, worked out once per batch: per request it would cost
    /// about 80 instructions, 4% of a pipelined set.
    now_ms: Option<u64>,
    pub answered: [u64; OpKind::COUNT],
    /// Unix time, read once per batch when a command needs it (memcached's absolute exptimes).
    unix: Option<i64>,
}

impl Batch {
    /// A batch of requests that the read at `started` completed.
    pub fn new(started: Instant) -> Batch {
        Batch {
            started,
            now: Instant::now(),
            now_ms: None,
            answered: [0; OpKind::COUNT],
            unix: None,
        }
    }

    /// The routing waited (for a mesh permit): the store's clock moves on.
    pub fn waited(&mut self) {
        self.now = Instant::now();
        self.now_ms = None;
        self.unix = None;
    }

    /// The store's clock for requests routed now (milliseconds since the core started).
    pub fn store_ms(&mut self, shard: &Shard) -> u64 {
        let now = self.now;
        *self.now_ms.get_or_insert_with(|| shard.ms_since_start(now))
    }

    /// Seconds since the Unix epoch, read once per batch.
    pub fn unix_now(&mut self) -> i64 {
        *self.unix.get_or_insert_with(crate::memcache::unix_now)
    }

    /// Records the service time of every request answered in the batch.
    pub fn finish(self, shard: &Shard) {
        if self.answered.iter().all(|&n| n == 0) {
            return;
        }
        let elapsed = self.started.elapsed();
        let mut metrics = shard.metrics.borrow_mut();
        for kind in OpKind::ALL {
            let n = self.answered[kind.index()];
            if n > 0 {
                metrics.record_n(kind, elapsed, n);
            }
        }
    }
}

/// What a codec routes a request with: the core, the connection, its output and counters.
pub struct Ctx<'a> {
    pub shard: &'a Rc<Shard>,
    pub conn: &'a Rc<ConnShared>,
    pub output: &'a mut Output,
    pub batch: &'a mut Batch,
    /// A mesh permit the connection already holds, for the core it names.
    pub reserved: Option<usize>,
    /// Requests routed elsewhere whose reply has not come back.
    pub inflight: &'a mut usize,
    /// Replies in the output not yet written.
    pub answered: &'a mut u64,
}

impl Ctx<'_> {
    /// Whether another request may go elsewhere now.
    pub fn window_open(&self) -> bool {
        *self.inflight < self.shard.config.max_inflight
    }
}

/// Bytes of requests one core may have on their way to a peer, not yet taken by it (the
/// counterpart of [`super::peer::REPLY_BACKLOG`]); past it, a connection waits as for a permit.
pub const REQUEST_BACKLOG: usize = 8 << 20;
/// How often a connection held back by [`REQUEST_BACKLOG`] looks again.
pub const BACKLOG_RECHECK: std::time::Duration = std::time::Duration::from_micros(100);

/// What became of a request sent to its owner.
pub enum Forward {
    /// On its way; its reply comes back as a completion. Counted as in flight and forwarded.
    Sent,
    /// Every slot to that core is taken: wait for one, then try again.
    NeedsPermit(usize),
    /// It cannot be sent: answer it with this error.
    Failed(RequestError),
}

/// Sends a request of `kind` to core `owner`: `pending` is what comes back to, and `message`
/// packs it (given its ticket and a pooled buffer).
pub fn forward(
    ctx: &mut Ctx<'_>,
    owner: usize,
    kind: OpKind,
    pending: Pending,
    message: impl FnOnce(u32, BytesMut) -> PeerRequest,
) -> Forward {
    let shard = ctx.shard;
    let Some(link) = shard.mesh.link(owner) else {
        return Forward::Failed(RequestError::Internal("no link to the key's owner"));
    };
    // With a permit it waited for, the connection has also waited for the backlog to go down.
    if ctx.reserved != Some(owner) {
        release(shard, ctx.reserved.take());
        if link.requests_backlog() > REQUEST_BACKLOG || !link.try_reserve() {
            return Forward::NeedsPermit(owner);
        }
    }
    ctx.reserved = None;
    let ticket = shard.pending.borrow_mut().insert(pending) as u32;
    shard.metrics.borrow_mut().requests[kind.index()] += 1;
    let request = message(ticket, shard.pool.take());
    if let PeerRequest::Memcache { .. } = request {
        shard.metrics.borrow_mut().memcache_requests[kind.index()] += 1;
    }
    // Weighed by the memory the buffer holds, as replies are.
    let bytes = match &request {
        PeerRequest::Kv(f) => f.buf.capacity(),
        PeerRequest::Memcache { buf, .. } => buf.capacity(),
        PeerRequest::Stats { .. } | PeerRequest::Flush { .. } | PeerRequest::Metrics { .. } => 0,
    };
    match link.send_request(request, bytes) {
        Ok(()) => {
            shard.metrics.borrow_mut().forwarded += 1;
            *ctx.inflight += 1;
            Forward::Sent
        }
        Err(failed) => {
            // The owner has stopped taking requests: only possible while the server drains.
            shard.pending.borrow_mut().try_remove(ticket as usize);
            match failed.0 {
                PeerRequest::Kv(f) => shard.pool.give(f.buf),
                PeerRequest::Memcache { buf, .. } => shard.pool.give(buf),
                PeerRequest::Stats { .. }
                | PeerRequest::Flush { .. }
                | PeerRequest::Metrics { .. } => {}
            }
            Forward::Failed(RequestError::ShuttingDown)
        }
    }
}

/// Gives back a permit the connection reserved but did not use.
pub fn release(shard: &Shard, reserved: Option<usize>) {
    if let Some(link) = reserved.and_then(|peer| shard.mesh.link(peer)) {
        link.release();
    }
}
