//! percore's FlatBuffers protocol as a codec: length-prefixed frames, read in place, each
//! answered here, on the core that owns its key, in the compute queue, or by a gather over
//! every core (Stats). Replies carry the request's id, so they leave as they are ready.

use super::{Peek, Step};
use crate::error::RequestError;
use crate::ops;
use crate::protocol::frame::{self, Peek as FramePeek};
use crate::protocol::request::{Rejected, Request};
use crate::protocol::shard::{key_hash, owner_of_hash};
use crate::protocol::{Op, OpKind, Reply};
use crate::runtime;
use crate::server::compute::ComputeJob;
use crate::server::mailbox::Completion;
use crate::server::message::{Forwarded, PeerRequest, Pending};
use crate::server::peer::{self, Broadcast};
use crate::server::router::{self, Ctx, Forward};
use crate::server::shard::Shard;

pub fn peek(shard: &Shard, input: &[u8]) -> Peek {
    match frame::peek(input, shard.config.max_frame) {
        Ok(FramePeek::Partial { total }) => Peek::Partial { total },
        // A bad prefix is acted on at once: answered, then the connection closes.
        Ok(FramePeek::Complete { .. }) | Err(_) => Peek::Whole,
    }
}

pub fn whole_len(shard: &Shard, input: &[u8]) -> Option<usize> {
    match frame::peek(input, shard.config.max_frame) {
        Ok(FramePeek::Complete { len }) => Some(len),
        _ => None,
    }
}

/// Splits the frame off `input`, or answers a broken prefix.
fn split<'a>(ctx: &mut Ctx<'_>, input: &'a [u8]) -> Result<&'a [u8], Step> {
    match frame::peek(input, ctx.shard.config.max_frame) {
        Ok(FramePeek::Complete { len }) => Ok(&input[..len]),
        Ok(FramePeek::Partial { .. }) => Err(Step::Paused),
        Err(error) => {
            ctx.shard
                .encoder
                .borrow_mut()
                .error(0, &error, &mut ctx.output.buf);
            ctx.shard.metrics.borrow_mut().rejected += 1;
            *ctx.answered += 1;
            Err(Step::Close)
        }
    }
}

/// Routes the request in the frame at the front of `input`.
pub fn route(ctx: &mut Ctx<'_>, input: &[u8]) -> Step {
    let frame = match split(ctx, input) {
        Ok(frame) => frame,
        Err(step) => return step,
    };
    let shard = ctx.shard;
    let started = ctx.batch.started;
    let request = match Request::decode(frame) {
        Ok(request) => request,
        Err(rejected) => {
            router::release(shard, ctx.reserved.take());
            reject(ctx, rejected);
            return Step::Consumed(frame.len());
        }
    };
    let id = request.id;
    let kind = request.op.kind();
    let out = &mut ctx.output.buf;
    let deferred = match request.op {
        Op::Hello { .. } => {
            let reply = ops::hello(shard.index, shard.count, &shard.shard_ports);
            shard.encoder.borrow_mut().ok(id, &reply, out);
            false
        }
        Op::Ping { payload } => {
            shard.encoder.borrow_mut().ok(id, &ops::ping(payload), out);
            false
        }
        Op::Get { key } | Op::Set { key, .. } | Op::Delete { key } => {
            let hash = key_hash(key);
            let owner = owner_of_hash(hash, shard.count);
            if owner == shard.index {
                let now_ms = ctx.batch.store_ms(shard);
                let mut store = shard.store.borrow_mut();
                let result = ops::kv::execute(&mut store, hash, &request.op, now_ms);
                shard.encoder.borrow_mut().encode(id, result, out);
                false
            } else {
                let pending = Pending::Kv {
                    conn: ctx.conn.clone(),
                    kind,
                    started,
                    seq: 0,
                };
                let op = request.op;
                let sent = router::forward(ctx, owner, kind, pending, |ticket, buf| {
                    PeerRequest::Kv(Forwarded::new(ticket, id, hash, &op, buf))
                });
                match sent {
                    Forward::Sent => return Step::Consumed(frame.len()),
                    Forward::NeedsPermit(peer) => return Step::NeedsPermit(peer),
                    Forward::Failed(error) => {
                        shard
                            .encoder
                            .borrow_mut()
                            .error(id, &error, &mut ctx.output.buf);
                        *ctx.answered += 1;
                        return Step::Consumed(frame.len());
                    }
                }
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
                conn: ctx.conn.clone(),
                id,
                algo,
                rounds,
                buf,
                started,
            };
            match shard.compute.submit(job) {
                Ok(()) => true,
                Err(job) => {
                    shard.pool.give(job.buf);
                    shard.metrics.borrow_mut().compute_overloaded += 1;
                    let error = RequestError::ComputeQueueFull;
                    shard.encoder.borrow_mut().error(id, &error, out);
                    false
                }
            }
        }
        Op::Stats => {
            let (shard, conn) = (shard.clone(), ctx.conn.clone());
            runtime::spawn(async move {
                let per_shard = peer::gather(&shard, Broadcast::Stats).await;
                let reply = match &per_shard {
                    Some(per_shard) => Ok(Reply::Stats { per_shard }),
                    None => Err(RequestError::ShuttingDown),
                };
                let mut frame = shard.pool.take();
                shard.encoder.borrow_mut().encode(id, reply, &mut frame);
                let completion = Completion {
                    frame,
                    kind: OpKind::Stats,
                    started,
                    seq: 0,
                };
                shard.complete(&conn, completion);
            });
            true
        }
    };
    router::release(shard, ctx.reserved.take());
    shard.metrics.borrow_mut().requests[kind.index()] += 1;
    if deferred {
        *ctx.inflight += 1;
    } else {
        ctx.batch.answered[kind.index()] += 1;
        *ctx.answered += 1;
    }
    Step::Consumed(frame.len())
}

/// Answers a frame read after the drain began with `ShuttingDown`, without running it. It
/// counts as a request read and answered, so that every request read has its reply.
pub fn refuse(ctx: &mut Ctx<'_>, input: &[u8]) -> Step {
    let frame = match split(ctx, input) {
        Ok(frame) => frame,
        Err(step) => return step,
    };
    match Request::decode(frame) {
        Ok(request) => {
            let kind = request.op.kind();
            ctx.shard.metrics.borrow_mut().requests[kind.index()] += 1;
            ctx.batch.answered[kind.index()] += 1;
            *ctx.answered += 1;
            let error = RequestError::ShuttingDown;
            ctx.shard
                .encoder
                .borrow_mut()
                .error(request.id, &error, &mut ctx.output.buf);
        }
        Err(rejected) => reject(ctx, rejected),
    }
    Step::Consumed(frame.len())
}

/// Answers a frame that failed decoding with its error, under the id it could read.
fn reject(ctx: &mut Ctx<'_>, rejected: Rejected) {
    ctx.shard.metrics.borrow_mut().rejected += 1;
    *ctx.answered += 1;
    ctx.shard
        .encoder
        .borrow_mut()
        .error(rejected.id, &rejected.error, &mut ctx.output.buf);
}
