//! One core's server state ([`Shard`]): its store, pools, metrics, mesh and connections. Its
//! life (start-up, accepting, the tick, the drain) is [`super::run`].
//!
//! Everything in a `Shard` belongs to one core and is reached through `Rc` and `RefCell`: no
//! locks, no atomics on the request path. The only state shared between cores is
//! [`Global`]: the shutdown flag and the connection count, touched at accept and once per tick.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::compute::ComputeQueue;
use super::mailbox::{CloseReason, Completion, ConnShared, Delivered, OwedTally};
use super::message::{PeerReply, PeerRequest, Pending};
use super::notify::Latch;
use super::pool::BufferPool;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{ResponseEncoder, ShardStats};
use crate::runtime::mesh::{Link, Mesh, MeshEnds};
use crate::runtime::net::Conn;
use crate::store::Store;

pub type ShardMesh = Mesh<PeerRequest, PeerReply>;
pub type ShardLink = Link<PeerRequest, PeerReply>;
pub type ShardMeshEnds = MeshEnds<PeerRequest, PeerReply>;

/// Slots per cross-core channel, and so requests one core may have outstanding at another.
pub const MESH_CAPACITY: usize = 1024;
/// Capacity of a connection's input or output buffer.
const IO_BUFFER: usize = 16 << 10;
/// A connection buffer that grew past this for a large frame or reply is freed, not pooled.
const IO_BUFFER_KEPT: usize = 256 << 10;
/// Idle connection buffers a core keeps for reuse (at most 4 MiB of 16 KiB ones).
const IO_BUFFERS_KEPT: usize = 256;

/// A core logs failed accepts, and connections refused by `--allow`, at most this often, with
/// how many there were since its last line.
pub const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// What [`Shard::check_peer`] found of a connection just accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCheck {
    /// Its address is inside `--allow`.
    Allowed,
    /// Its address is outside `--allow`: close it.
    Disallowed,
    /// It reset before its address could be read: close it.
    Gone,
}

/// Events of one kind that a core logs at most once per `every` (a client can cause them as
/// fast as it can connect): how many there were since the last line, and when that was.
#[derive(Default)]
pub struct LogThrottle {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl LogThrottle {
    /// Counts an event at `now`. Returns how many events the line logged now should report
    /// (this one and those since the last line), or `None` while the last line is recent.
    pub fn note(&mut self, now: Instant, every: Duration) -> Option<u64> {
        self.unlogged += 1;
        if self
            .logged_at
            .is_some_and(|at| now.saturating_duration_since(at) < every)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// State shared by all cores. Touched at accept, at close and once per tick; never per request.
pub struct Global {
    /// Set by a signal handler or [`super::Server::shutdown`]; every core polls it each tick.
    pub shutdown: Arc<AtomicBool>,
    open_connections: AtomicUsize,
    /// By core: its connections are all closed in the drain. After a core died the main thread
    /// waits for this rather than for the others' exit, since the rest of their shutdown (their
    /// goodbyes to every peer) can never finish then.
    drained: Vec<AtomicBool>,
}

impl Global {
    pub fn new(cores: usize) -> Global {
        Global {
            shutdown: Arc::new(AtomicBool::new(false)),
            open_connections: AtomicUsize::new(0),
            drained: (0..cores).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    pub(super) fn mark_drained(&self, core: usize) {
        if let Some(flag) = self.drained.get(core) {
            flag.store(true, Ordering::Release);
        }
    }

    pub(super) fn is_drained(&self, core: usize) -> bool {
        self.drained
            .get(core)
            .is_some_and(|flag| flag.load(Ordering::Acquire))
    }

    /// Counts a new connection if fewer than `max` are open.
    pub(super) fn try_open(&self, max: usize) -> bool {
        self.open_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(super) fn close(&self) {
        self.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One core's server state.
pub struct Shard {
    /// This shard's index, 0..count; it owns keys with `xxh3(key) % count == index`.
    pub index: usize,
    pub count: usize,
    pub cpu: usize,
    pub config: Config,
    pub global: Arc<Global>,
    /// `--shard-ports` of every shard, for Hello (empty without the option).
    pub shard_ports: Vec<u16>,
    pub store: RefCell<Store>,
    pub metrics: RefCell<Metrics>,
    pub encoder: RefCell<ResponseEncoder>,
    /// The gather of every core's counters under way on this core, which Stats requests
    /// arriving meanwhile share.
    pub stats_gather: RefCell<Option<Rc<super::peer::SharedGather>>>,
    /// What this core's connections owe their clients, against `--owed-budget`.
    pub owed: Rc<OwedTally>,
    /// Where a forwarded memcached command's reply is written while the command is read.
    pub scratch: RefCell<bytes::BytesMut>,
    pub pool: BufferPool,
    /// Connections' input and output buffers, lent while they hold bytes.
    pub io_buffers: BufferPool,
    pub mesh: ShardMesh,
    /// Requests sent to other cores and not yet answered, by ticket.
    pub pending: RefCell<Slab<Pending>>,
    pub compute: ComputeQueue,
    pub(super) connections: RefCell<Slab<Rc<ConnShared>>>,
    /// Set when the server starts draining: listeners close, connections stop reading.
    pub draining: Latch,
    pub(super) no_connections: Latch,
    /// Failed accepts, and connections refused by `--allow`, each logged at most once a second.
    pub(super) accept_failures: RefCell<LogThrottle>,
    pub(super) disallowed: RefCell<LogThrottle>,
    epoch: Instant,
}

impl Shard {
    /// Whether a connection just accepted on any listener comes from inside `--allow`. One
    /// that does not is counted, and logged at most once per [`ACCEPT_LOG_EVERY`] with how many
    /// there were since the last line; the caller closes it.
    pub fn check_peer(&self, conn: &Conn) -> PeerCheck {
        let peer = match conn.peer_addr() {
            Ok(peer) => peer,
            // ENOTCONN: it reset before we looked. Closed unread all the same: what it sent
            // may still be queued, and it is not known to come from inside --allow.
            Err(e) => {
                tracing::debug!("peer address of an accepted connection: {e}");
                return PeerCheck::Gone;
            }
        };
        if self.config.allow.admits(peer.ip()) {
            return PeerCheck::Allowed;
        }
        self.metrics.borrow_mut().connections_disallowed += 1;
        let due = self
            .disallowed
            .borrow_mut()
            .note(Instant::now(), ACCEPT_LOG_EVERY);
        if let Some(refused) = due {
            tracing::warn!(
                core = self.index,
                %peer,
                refused,
                allow = %self.config.allow,
                "connection refused: its address is outside --allow (refused since this core's \
                 last such line)"
            );
        }
        PeerCheck::Disallowed
    }

    /// Core `index`'s state, connected to its peers by `mesh`.
    pub fn new(
        index: usize,
        cpu: usize,
        config: Config,
        global: Arc<Global>,
        shard_ports: Vec<u16>,
        mesh: ShardMesh,
    ) -> Shard {
        Shard {
            index,
            count: config.shard_count(),
            cpu,
            global,
            shard_ports,
            store: RefCell::new({
                let mut store = Store::new(config.memory_per_shard());
                store.share_cas_space(index, config.shard_count());
                store
            }),
            metrics: RefCell::new(Metrics::new(index as u32)),
            encoder: RefCell::new(ResponseEncoder::new()),
            scratch: RefCell::new(bytes::BytesMut::with_capacity(4 << 10)),
            stats_gather: RefCell::new(None),
            owed: OwedTally::new(config.owed_budget),
            // Every buffer that can be away at once: a full mesh link to each peer, a full compute
            // queue (and the job the worker runs), a Stats gather per connection at most.
            pool: BufferPool::new(
                MESH_CAPACITY * (config.shard_count() - 1) + config.compute_queue + 64,
                4 << 10,
                64 << 10,
            ),
            io_buffers: BufferPool::new(IO_BUFFERS_KEPT, IO_BUFFER, IO_BUFFER_KEPT),
            pending: RefCell::new(Slab::with_capacity(MESH_CAPACITY * mesh.links().count())),
            compute: ComputeQueue::new(config.compute_queue),
            connections: RefCell::new(Slab::new()),
            draining: Latch::default(),
            no_connections: Latch::default(),
            accept_failures: RefCell::default(),
            disallowed: RefCell::default(),
            epoch: Instant::now(),
            mesh,
            config,
        }
    }

    /// Milliseconds since this shard started: the store's clock.
    pub fn now_ms(&self) -> u64 {
        self.ms_since_start(Instant::now())
    }

    /// The store's clock at `instant` (milliseconds since the core started).
    pub fn ms_since_start(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Hands a reply finished away from its connection to the connection's mailbox, gives its
    /// buffer back to the pool, and records its service time.
    pub fn complete(&self, conn: &ConnShared, completion: Completion) {
        if let Delivered::Taken { at } = conn.deliver(&self.io_buffers, &completion) {
            let elapsed = at.saturating_duration_since(completion.started);
            self.metrics.borrow_mut().record(completion.kind, elapsed);
        }
        self.pool.give(completion.frame);
    }

    /// What memcached's `stats` says about the server beside the counters.
    pub fn server_info(&self) -> crate::ops::stats::ServerInfo {
        crate::ops::stats::ServerInfo {
            uptime_s: self.epoch.elapsed().as_secs(),
            threads: self.count,
            limit_maxbytes: self.config.memory,
            max_connections: self.config.max_connections,
        }
    }

    pub fn shard_stats(&self) -> ShardStats {
        let store = self.store.borrow().stats();
        let mut stats = self.metrics.borrow().shard_stats(&store);
        stats.buffers_lent = (self.pool.lent() + self.io_buffers.lent()) as u64;
        stats.buffers_free = (self.pool.free() + self.io_buffers.free()) as u64;
        stats
    }

    /// This core's part of a `/metrics` scrape.
    pub fn metrics_snapshot(&self) -> crate::metrics::CoreSnapshot {
        let store = self.store.borrow().stats();
        let mut by_status = [0; crate::metrics::STATUS_COUNT];
        for (status, n) in self.encoder.borrow().replies_by_status() {
            if let Some(slot) = by_status.get_mut(status.0 as usize) {
                *slot = n;
            }
        }
        self.metrics
            .borrow()
            .snapshot(self.cpu, &store, by_status, self.compute.len())
    }

    pub(super) fn begin_drain(&self) {
        self.draining.set();
        for (_, conn) in self.connections.borrow().iter() {
            conn.wake();
        }
        if self.connections.borrow().is_empty() {
            self.no_connections.set();
        }
    }

    pub(super) fn close_all(&self, reason: CloseReason) {
        for (_, conn) in self.connections.borrow().iter() {
            conn.close(reason);
        }
    }

    /// Closes connections that have been idle, or mid-frame, for too long.
    pub(super) fn enforce_timeouts(&self, now: Instant) {
        let idle = self.config.idle_timeout;
        let frame = self.config.frame_timeout;
        for (_, conn) in self.connections.borrow().iter() {
            if let Some(reason) = conn.overdue(now, idle, frame) {
                conn.close(reason);
            }
        }
    }
}
