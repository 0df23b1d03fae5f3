//! Where a request goes: answered here, sent to the core that owns its key, queued for
//! compute, or gathered from every core (Stats).

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;

use super::compute::ComputeJob;
use super::connection::ConnShared;
use super::peer::{self, Forwarded, PeerRequest, Pending};
use super::shard::Shard;
use crate::error::RequestError;
use crate::ops;
use crate::protocol::request::{Rejected, Request};
use crate::protocol::shard::{key_hash, owner_of_hash};
use crate::protocol::{Op, OpKind};
use crate::runtime;

/// What became of a frame.
pub enum Routed {
    /// The reply is in the output buffer.
    Answered,
    /// The reply will come back as a completion.
    Deferred,
    /// The key's owner is core `peer` and every slot to it is taken: wait for one (and pass it
    /// back as `reserved`), then route the same frame again.
    NeedsPermit(usize),
}

/// The requests of one read, timed together: the clock is read once when the read returns and
/// once when the batch's replies are all encoded, not twice per request (at hundreds of
/// thousands of requests a second the reads showed up in profiles).
pub struct Batch {
    started: Instant,
    answered: [u64; OpKind::COUNT],
}

impl Batch {
    /// A batch of frames that the read at `started` completed.
    pub fn new(started: Instant) -> Batch {
        Batch {
            started,
            answered: [0; OpKind::COUNT],
        }
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

/// Routes the request in `frame` (one whole frame, prefix included). `reserved` names a peer this
/// connection already holds a mesh permit for.
pub fn route(
    shard: &Rc<Shard>,
    conn: &Rc<ConnShared>,
    frame: &[u8],
    output: &mut BytesMut,
    reserved: Option<usize>,
    batch: &mut Batch,
) -> Routed {
    let started = batch.started;
    let request = match Request::decode(frame) {
        Ok(request) => request,
        Err(rejected) => {
            release(shard, reserved);
            reject(shard, rejected, output);
            return Routed::Answered;
        }
    };
    let id = request.id;
    let kind = request.op.kind();
    let routed = match request.op {
        Op::Hello { .. } => {
            let reply = ops::hello(shard.index, shard.count, &shard.shard_ports);
            shard.encoder.borrow_mut().ok(id, &reply, output);
            Routed::Answered
        }
        Op::Ping { payload } => {
            shard
                .encoder
                .borrow_mut()
                .ok(id, &ops::ping(payload), output);
            Routed::Answered
        }
        Op::Get { key } | Op::Set { key, .. } | Op::Delete { key } => {
            let hash = key_hash(key);
            let owner = owner_of_hash(hash, shard.count);
            if owner == shard.index {
                let now_ms = shard.ms_since_start(started);
                let mut store = shard.store.borrow_mut();
                let result = ops::kv::execute(&mut store, hash, &request.op, now_ms);
                shard.encoder.borrow_mut().encode(id, result, output);
                Routed::Answered
            } else {
                return forward(
                    shard, conn, &request, hash, owner, started, reserved, output,
                );
            }
        }
        Op::Compute {
            algo,
            input,
            rounds,
        } => {
            let mut buf = shard.pool.take();
            buf.extend_from_slice(input);
            let job = ComputeJob {
                conn: conn.clone(),
                id,
                algo,
                rounds,
                buf,
                started,
            };
            match shard.compute.submit(job) {
                Ok(()) => Routed::Deferred,
                Err(job) => {
                    shard.pool.give(job.buf);
                    let error = RequestError::ComputeQueueFull;
                    shard.encoder.borrow_mut().error(id, &error, output);
                    Routed::Answered
                }
            }
        }
        Op::Stats => {
            runtime::spawn(peer::gather_stats(shard.clone(), conn.clone(), id, started));
            Routed::Deferred
        }
    };
    release(shard, reserved);
    shard.metrics.borrow_mut().requests[kind.index()] += 1;
    if let Routed::Answered = routed {
        batch.answered[kind.index()] += 1;
    }
    routed
}

/// Answers a frame read after the drain began with `ShuttingDown`, without running it. It
/// counts as a request read and answered, so that every request read has its reply.
pub fn refuse_shutting_down(shard: &Shard, frame: &[u8], output: &mut BytesMut, batch: &mut Batch) {
    match Request::decode(frame) {
        Ok(request) => {
            let kind = request.op.kind();
            shard.metrics.borrow_mut().requests[kind.index()] += 1;
            batch.answered[kind.index()] += 1;
            let error = RequestError::ShuttingDown;
            shard.encoder.borrow_mut().error(request.id, &error, output);
        }
        Err(rejected) => reject(shard, rejected, output),
    }
}

/// Answers a frame that failed decoding with its error, under the id it could read.
fn reject(shard: &Shard, rejected: Rejected, output: &mut BytesMut) {
    shard.metrics.borrow_mut().rejected += 1;
    shard
        .encoder
        .borrow_mut()
        .error(rejected.id, &rejected.error, output);
}

/// Sends a key-value request to the core that owns its key.
#[allow(clippy::too_many_arguments)]
fn forward(
    shard: &Rc<Shard>,
    conn: &Rc<ConnShared>,
    request: &Request<'_>,
    hash: u64,
    owner: usize,
    started: Instant,
    reserved: Option<usize>,
    output: &mut BytesMut,
) -> Routed {
    let Some(link) = shard.mesh.link(owner) else {
        let error = RequestError::Internal("no link to the key's owner");
        shard.encoder.borrow_mut().error(request.id, &error, output);
        return Routed::Answered;
    };
    if reserved != Some(owner) {
        release(shard, reserved);
        if !link.try_reserve() {
            return Routed::NeedsPermit(owner);
        }
    }
    let kind = request.op.kind();
    let ticket = shard.pending.borrow_mut().insert(Pending::Kv {
        conn: conn.clone(),
        kind,
        started,
    }) as u32;
    let message = Forwarded::new(ticket, request.id, hash, &request.op, shard.pool.take());
    shard.metrics.borrow_mut().requests[kind.index()] += 1;
    match link.send_request(PeerRequest::Kv(message)) {
        Ok(()) => {
            shard.metrics.borrow_mut().forwarded += 1;
            Routed::Deferred
        }
        Err(failed) => {
            // The owner has stopped taking requests: only possible while the server drains.
            shard.pending.borrow_mut().try_remove(ticket as usize);
            if let PeerRequest::Kv(f) = failed.0 {
                shard.pool.give(f.buf);
            }
            let error = RequestError::ShuttingDown;
            shard.encoder.borrow_mut().error(request.id, &error, output);
            Routed::Answered
        }
    }
}

/// Gives back a permit the connection reserved but did not use.
fn release(shard: &Shard, reserved: Option<usize>) {
    if let Some(link) = reserved.and_then(|peer| shard.mesh.link(peer)) {
        link.release();
    }
}
