//! Requests between cores: what travels over the mesh, and the two tasks per peer that serve it.
//!
//! A Get, Set or Delete whose key another core owns is packed into a pooled buffer (key, then
//! value) and sent to the owner as a [`Forwarded`]. The owner runs it against its store, encodes
//! the reply frame into the same buffer and sends it back; the origin appends that frame to the
//! connection's output. `Stats` asks every peer for its counters the same way.
//!
//! A reply can be far larger than its request, so the owner also bounds the bytes of its replies
//! that the origin has not taken yet ([`REPLY_BACKLOG`]); past it, it stops answering that
//! origin until it catches up. The origin takes replies off the mesh as soon as its core runs,
//! whatever its clients do, so this holds back a burst, never a slow client.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::connection::{Completion, ConnShared};
use super::shard::{Shard, ShardLink};
use crate::error::RequestError;
use crate::ops;
use crate::protocol::{Op, OpKind, ShardStats};

/// Bytes of replies one core may have on their way to a peer, not yet taken by it. Without it,
/// tests/hostile.rs's bursts of forwarded Gets of 512 KiB values raised a 2-core server's peak
/// RSS by 91-123 MiB instead of 72-76 MiB.
pub const REPLY_BACKLOG: usize = 8 << 20;
/// How often an owner held back by [`REPLY_BACKLOG`] looks again.
const BACKLOG_RECHECK: Duration = Duration::from_micros(100);

/// A key-value request on its way to the core that owns the key.
pub struct Forwarded {
    /// Index into the origin's table of pending forwards.
    pub ticket: u32,
    pub id: u64,
    pub kind: OpKind,
    pub hash: u64,
    pub key_len: u32,
    pub ttl_ms: u32,
    /// The key followed by the value (Set only); on the way back, the reply frame.
    pub buf: BytesMut,
}

impl Forwarded {
    /// Packs a key-value `op` (Get, Set or Delete) into `buf`.
    pub fn new(ticket: u32, id: u64, hash: u64, op: &Op<'_>, mut buf: BytesMut) -> Self {
        let (key, value, ttl_ms) = match *op {
            Op::Set { key, value, ttl_ms } => (key, value, ttl_ms),
            _ => (op.key().unwrap_or_default(), &[][..], 0),
        };
        buf.clear();
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        Forwarded {
            ticket,
            id,
            kind: op.kind(),
            hash,
            key_len: key.len() as u32,
            ttl_ms,
            buf,
        }
    }

    /// The operation, borrowing the packed key and value.
    pub fn op(&self) -> Op<'_> {
        let (key, value) = self.buf.split_at(self.key_len as usize);
        match self.kind {
            OpKind::Get => Op::Get { key },
            OpKind::Set => Op::Set {
                key,
                value,
                ttl_ms: self.ttl_ms,
            },
            _ => Op::Delete { key },
        }
    }
}

/// A message from one core to another.
pub enum PeerRequest {
    Kv(Forwarded),
    Stats { ticket: u32 },
}

/// The answer to a [`PeerRequest`].
pub enum PeerReply {
    /// The encoded reply frame, in the buffer the request came in.
    Kv {
        ticket: u32,
        frame: BytesMut,
    },
    Stats {
        ticket: u32,
        stats: ShardStats,
    },
}

/// What the origin remembers about a request it sent to a peer.
pub enum Pending {
    Kv {
        conn: Rc<ConnShared>,
        kind: OpKind,
        started: Instant,
    },
    Stats(Rc<StatsGather>),
}

/// Collects every core's counters for one `Stats` request.
pub struct StatsGather {
    pub per_shard: std::cell::RefCell<Vec<ShardStats>>,
    pub remaining: std::cell::Cell<usize>,
    pub done: super::notify::Notify,
}

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
            PeerRequest::Stats { ticket } => PeerReply::Stats {
                ticket,
                stats: shard.shard_stats(),
            },
        };
        let bytes = match &reply {
            PeerReply::Kv { frame, .. } => frame.len(),
            PeerReply::Stats { .. } => 0,
        };
        if link.send_reply(reply, bytes).is_err() {
            // The peer has shut down; nobody is waiting for this reply.
            tracing::debug!("dropped a reply to a core that has shut down");
        }
    }
}

/// Receives the replies to this core's requests from `link`'s peer and hands each to the
/// connection (or Stats request) waiting for it, until the peer closes its side.
pub async fn receive_replies(shard: Rc<Shard>, link: Rc<ShardLink>) {
    while let Some(reply) = link.recv_reply().await {
        match reply {
            PeerReply::Kv { ticket, frame } => {
                match shard.pending.borrow_mut().try_remove(ticket as usize) {
                    Some(Pending::Kv {
                        conn,
                        kind,
                        started,
                    }) => conn.complete(
                        &shard,
                        Completion {
                            frame,
                            kind,
                            started,
                        },
                    ),
                    _ => shard.pool.give(frame),
                }
            }
            PeerReply::Stats { ticket, stats } => {
                if let Some(Pending::Stats(gather)) =
                    shard.pending.borrow_mut().try_remove(ticket as usize)
                {
                    gather.per_shard.borrow_mut().push(stats);
                    gather.remaining.set(gather.remaining.get() - 1);
                    if gather.remaining.get() == 0 {
                        gather.done.notify();
                    }
                }
            }
        }
    }
}

/// Answers a `Stats` request: asks every peer for its counters, then completes the request on
/// `conn` with all of them, in shard order.
pub async fn gather_stats(shard: Rc<Shard>, conn: Rc<ConnShared>, id: u64, started: Instant) {
    let peers = shard.mesh.links().count();
    let gather = Rc::new(StatsGather {
        per_shard: std::cell::RefCell::new(vec![shard.shard_stats()]),
        // Counted up front: a reply may arrive while this task waits for the next permit.
        remaining: std::cell::Cell::new(peers),
        done: Default::default(),
    });
    for (_, link) in shard.mesh.links() {
        link.reserve().await;
        let ticket = shard
            .pending
            .borrow_mut()
            .insert(Pending::Stats(gather.clone())) as u32;
        if link.send_request(PeerRequest::Stats { ticket }).is_err() {
            shard.pending.borrow_mut().try_remove(ticket as usize);
            gather.remaining.set(gather.remaining.get() - 1);
        }
    }
    if gather.remaining.get() > 0 {
        gather.done.wait().await;
    }
    let mut per_shard = gather.per_shard.take();
    per_shard.sort_by_key(|s| s.shard);
    let mut frame = shard.pool.take();
    let reply = if per_shard.len() == shard.count {
        Ok(crate::protocol::Reply::Stats {
            per_shard: &per_shard,
        })
    } else {
        Err(RequestError::ShuttingDown)
    };
    shard.encoder.borrow_mut().encode(id, reply, &mut frame);
    conn.complete(
        &shard,
        Completion {
            frame,
            kind: OpKind::Stats,
            started,
        },
    );
}
