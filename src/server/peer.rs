//! Requests between cores: what travels over the mesh, and the two tasks per peer that serve it.
//!
//! A Get, Set or Delete whose key another core owns is packed into a pooled buffer (key, then
//! value) and sent to the owner as a [`Forwarded`](super::message::Forwarded); a memcached
//! command travels as its text. The owner runs it against its store, encodes the reply into a
//! pooled buffer and sends it back; the origin hands it to the connection's mailbox. [`gather`]
//! asks every core at once (Stats, `flush_all`).
//!
//! A reply can be far larger than its request, so the owner also bounds the bytes of its replies
//! that the origin has not taken yet ([`REPLY_BACKLOG`]); past it, it stops answering that
//! origin until it catches up. The origin takes replies off the mesh as soon as its core runs,
//! whatever its clients do, so this holds back a burst, never a slow client.

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;

use super::mailbox::Completion;
use super::message::{Gather, MetricsGather, PeerReply, PeerRequest, Pending};
use super::shard::{Shard, ShardLink};
use crate::memcache::command::{self, Parsed};
use crate::metrics::CoreSnapshot;
use crate::ops;
use crate::ops::memcache::Now;
use crate::protocol::ShardStats;

/// Bytes of replies one core may have on their way to a peer, not yet taken by it. Without it,
/// tests/hostile.rs's bursts of forwarded Gets of 512 KiB values raised a 2-core server's peak
/// RSS by 91-123 MiB instead of 72-76 MiB.
pub const REPLY_BACKLOG: usize = 8 << 20;
/// How often an owner held back by [`REPLY_BACKLOG`] looks again.
const BACKLOG_RECHECK: Duration = Duration::from_micros(100);

/// Serves the requests `link`'s peer sends to this core, until the peer closes its side.
/// Never waits on a send (see [`crate::runtime::mesh`]), so it cannot deadlock; it waits only
/// for the peer to take its replies, which the peer does without waiting on anything else.
pub async fn serve_requests(shard: Rc<Shard>, link: Rc<ShardLink>) {
    while let Some(request) = link.recv_request().await {
        link.wait_replies_taken(REPLY_BACKLOG, BACKLOG_RECHECK)
            .await;
        let reply = match request {
            PeerRequest::Kv(mut fwd) => {
                let now_ms = shard.now_ms();
                let mut store = shard.store.borrow_mut();
                let result = ops::kv::execute(&mut store, fwd.hash, &fwd.op(), now_ms);
                // The reply borrows the store, not the request: reuse the request's buffer.
                fwd.buf.clear();
                shard
                    .encoder
                    .borrow_mut()
                    .encode(fwd.id, result, &mut fwd.buf);
                PeerReply::Kv {
                    ticket: fwd.ticket,
                    frame: fwd.buf,
                }
            }
            PeerRequest::Memcache {
                ticket,
                hash,
                mut buf,
            } => {
                // The reply is written aside while the command it answers is read from `buf`,
                // then goes back in `buf`: the buffer returns to the pool it came from, as a
                // native request's does.
                let mut reply = shard.scratch.borrow_mut();
                reply.clear();
                run_memcache(&shard, hash, &buf, &mut reply);
                buf.clear();
                buf.extend_from_slice(&reply);
                PeerReply::Kv { ticket, frame: buf }
            }
            PeerRequest::Stats { ticket } => PeerReply::Stats {
                ticket,
                stats: Box::new(shard.shard_stats()),
            },
            PeerRequest::Flush { ticket, delay_ms } => {
                let now_ms = shard.now_ms();
                shard.store.borrow_mut().flush(now_ms, delay_ms);
                PeerReply::Flushed { ticket }
            }
            PeerRequest::Metrics { ticket } => PeerReply::Metrics {
                ticket,
                snapshot: Box::new(shard.metrics_snapshot()),
            },
        };
        let sent = match reply {
            PeerReply::Kv { ref frame, .. } => {
                // Weighed by what the buffer holds in memory: a Set's reply is a few bytes in
                // the megabyte buffer its value came in.
                let bytes = frame.capacity();
                link.send_reply(reply, bytes)
            }
            PeerReply::Stats { .. } | PeerReply::Flushed { .. } | PeerReply::Metrics { .. } => {
                link.send_control_reply(reply)
            }
        };
        if sent.is_err() {
            // The peer has shut down; nobody is waiting for this reply.
            tracing::debug!("dropped a reply to a core that has shut down");
        }
    }
}

/// Runs a forwarded memcached command (checked by the origin's parser already) and writes its
/// reply into `out`.
fn run_memcache(shard: &Shard, hash: u64, text: &[u8], out: &mut BytesMut) {
    let now = Now {
        ms: shard.now_ms(),
        unix: crate::memcache::unix_now(),
    };
    match command::parse(text) {
        Parsed::Command { command, .. } => {
            let mut store = shard.store.borrow_mut();
            ops::memcache::execute(&mut store, hash, &command, now, out);
        }
        _ => crate::memcache::reply::line(out, crate::memcache::Error::Internal.reply()),
    }
}

/// Receives the replies to this core's requests from `link`'s peer and hands each to the
/// connection (or gather) waiting for it, until the peer closes its side.
pub async fn receive_replies(shard: Rc<Shard>, link: Rc<ShardLink>) {
    while let Some(reply) = link.recv_reply().await {
        let (ticket, stats) = match reply {
            PeerReply::Kv { ticket, frame } => {
                match shard.pending.borrow_mut().try_remove(ticket as usize) {
                    Some(Pending::Kv {
                        conn,
                        kind,
                        started,
                        seq,
                    }) => shard.complete(
                        &conn,
                        Completion {
                            frame,
                            kind,
                            started,
                            seq,
                        },
                    ),
                    _ => shard.pool.give(frame),
                }
                continue;
            }
            PeerReply::Stats { ticket, stats } => (ticket, Some(*stats)),
            PeerReply::Flushed { ticket } => (ticket, None),
            PeerReply::Metrics { ticket, snapshot } => {
                if let Some(Pending::MetricsGather(gather)) =
                    shard.pending.borrow_mut().try_remove(ticket as usize)
                {
                    gather.answered(Some(*snapshot));
                }
                continue;
            }
        };
        if let Some(Pending::Gather(gather)) =
            shard.pending.borrow_mut().try_remove(ticket as usize)
        {
            gather.answered(stats);
        }
    }
}

/// What a gather asks of every core.
#[derive(Debug, Clone, Copy)]
pub enum Broadcast {
    Stats,
    Flush { delay_ms: u64 },
}

/// Asks every core, this one included, for `what`. Returns every core's counters in shard
/// order (for a flush, once every core has applied it), or `None` when a core could not be
/// asked (it is shutting down). Requests for counters that arrive while a gather of them is
/// under way on this core share its answer, so a flood of them costs one gather at a time.
/// Gathers travel on the mesh's control slots, never on the permits keys need.
pub async fn gather(shard: &Rc<Shard>, what: Broadcast) -> Option<Vec<ShardStats>> {
    if let Broadcast::Stats = what {
        let running = shard.stats_gather.borrow().clone();
        if let Some(running) = running {
            running.finished.wait().await;
            return running.result.borrow().clone();
        }
        let shared = Rc::new(SharedGather::default());
        *shard.stats_gather.borrow_mut() = Some(shared.clone());
        let result = gather_once(shard, what).await;
        *shard.stats_gather.borrow_mut() = None;
        *shared.result.borrow_mut() = result.clone();
        shared.finished.set();
        return result;
    }
    gather_once(shard, what).await
}

/// One gather over the mesh, and the result that the Stats waiting on it share.
#[derive(Default)]
pub struct SharedGather {
    finished: super::notify::Latch,
    result: std::cell::RefCell<Option<Vec<ShardStats>>>,
}

async fn gather_once(shard: &Rc<Shard>, what: Broadcast) -> Option<Vec<ShardStats>> {
    shard.metrics.borrow_mut().gathers += 1;
    let peers = shard.mesh.links().count();
    let gather = Rc::new(Gather::default());
    // Counted up front: a reply may arrive while this task waits for the next permit.
    gather.remaining.set(peers);
    match what {
        Broadcast::Stats => gather.per_shard.borrow_mut().push(shard.shard_stats()),
        Broadcast::Flush { delay_ms } => {
            let now_ms = shard.now_ms();
            shard.store.borrow_mut().flush(now_ms, delay_ms);
        }
    }
    let mut complete = true;
    for (_, link) in shard.mesh.links() {
        let ticket = shard
            .pending
            .borrow_mut()
            .insert(Pending::Gather(gather.clone())) as u32;
        let request = match what {
            Broadcast::Stats => PeerRequest::Stats { ticket },
            Broadcast::Flush { delay_ms } => PeerRequest::Flush { ticket, delay_ms },
        };
        if link.send_control(request).await.is_err() {
            shard.pending.borrow_mut().try_remove(ticket as usize);
            gather.answered(None);
            complete = false;
        }
    }
    if gather.remaining.get() > 0 {
        gather.done.wait().await;
    }
    let mut per_shard = gather.per_shard.take();
    per_shard.sort_by_key(|s| s.shard);
    let expected = match what {
        Broadcast::Stats => shard.count,
        Broadcast::Flush { .. } => 0,
    };
    (complete && per_shard.len() == expected).then_some(per_shard)
}

/// Asks every core, this one included, for its [`CoreSnapshot`] (a scrape of `/metrics`).
/// Returns them in core order, or `None` when a core could not be asked (it is shutting down).
/// Like [`gather`], it travels on the mesh's control slots, never on the permits keys need.
pub async fn gather_metrics(shard: &Rc<Shard>) -> Option<Vec<CoreSnapshot>> {
    shard.metrics.borrow_mut().gathers += 1;
    let gather = Rc::new(MetricsGather::default());
    gather.remaining.set(shard.mesh.links().count());
    gather.cores.borrow_mut().push(shard.metrics_snapshot());
    let mut complete = true;
    for (_, link) in shard.mesh.links() {
        let ticket = shard
            .pending
            .borrow_mut()
            .insert(Pending::MetricsGather(gather.clone())) as u32;
        if link
            .send_control(PeerRequest::Metrics { ticket })
            .await
            .is_err()
        {
            shard.pending.borrow_mut().try_remove(ticket as usize);
            gather.answered(None);
            complete = false;
        }
    }
    if gather.remaining.get() > 0 {
        gather.done.wait().await;
    }
    let mut cores = gather.cores.take();
    cores.sort_by_key(|c| c.core);
    (complete && cores.len() == shard.count).then_some(cores)
}
