//! What travels between cores over the mesh: requests for a key another core owns, the
//! gathers that ask every core (Stats, `flush_all`), and their replies; and what the origin
//! remembers about each request it sent ([`Pending`]).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;

use super::mailbox::ConnShared;
use super::notify::Notify;
use crate::metrics::CoreSnapshot;
use crate::protocol::{Op, OpKind, ShardStats};

/// A native key-value request on its way to the core that owns the key.
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
    /// A memcached command for one key, as its text (line and data block): the owner reads it
    /// with the same parser and runs it with the same code as one read there.
    Memcache {
        ticket: u32,
        hash: u64,
        buf: BytesMut,
    },
    Stats {
        ticket: u32,
    },
    /// memcached's `flush_all`: invalidate every item after `delay_ms`.
    Flush {
        ticket: u32,
        delay_ms: u64,
    },
    /// A scrape of `/metrics` asks for the core's [`CoreSnapshot`].
    Metrics {
        ticket: u32,
    },
}

/// The answer to a [`PeerRequest`].
pub enum PeerReply {
    /// The encoded reply, in a pooled buffer.
    Kv {
        ticket: u32,
        frame: BytesMut,
    },
    /// Boxed: the counters are far larger than the other replies, and every slot of a mesh
    /// channel is as large as its largest message.
    Stats {
        ticket: u32,
        stats: Box<ShardStats>,
    },
    Flushed {
        ticket: u32,
    },
    /// Boxed, as Stats is.
    Metrics {
        ticket: u32,
        snapshot: Box<CoreSnapshot>,
    },
}

/// What the origin remembers about a request it sent to a peer.
pub enum Pending {
    Kv {
        conn: Rc<ConnShared>,
        kind: OpKind,
        started: Instant,
        seq: u64,
    },
    Gather(Rc<Gather>),
    MetricsGather(Rc<MetricsGather>),
}

/// Collects every core's answer to one request sent to all of them (Stats, `flush_all`).
#[derive(Default)]
pub struct Gather {
    pub per_shard: RefCell<Vec<ShardStats>>,
    pub remaining: Cell<usize>,
    pub done: Notify,
}

impl Gather {
    /// One core has answered.
    pub fn answered(&self, stats: Option<ShardStats>) {
        if let Some(stats) = stats {
            self.per_shard.borrow_mut().push(stats);
        }
        self.remaining.set(self.remaining.get().saturating_sub(1));
        if self.remaining.get() == 0 {
            self.done.notify();
        }
    }
}

/// Collects every core's [`CoreSnapshot`] for one scrape of `/metrics`.
#[derive(Default)]
pub struct MetricsGather {
    pub cores: RefCell<Vec<CoreSnapshot>>,
    pub remaining: Cell<usize>,
    pub done: Notify,
}

impl MetricsGather {
    /// One core has answered (`None`: it could not be asked).
    pub fn answered(&self, snapshot: Option<CoreSnapshot>) {
        if let Some(snapshot) = snapshot {
            self.cores.borrow_mut().push(snapshot);
        }
        self.remaining.set(self.remaining.get().saturating_sub(1));
        if self.remaining.get() == 0 {
            self.done.notify();
        }
    }
}
