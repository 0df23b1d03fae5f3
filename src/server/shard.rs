//! One core's server: its state ([`Shard`]) and its life, from adopting its listeners to
//! draining at shutdown ([`run`]).
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
use socket2::Socket;

use super::codec::Protocol;
use super::compute::{self, ComputeQueue};
use super::connection;
use super::mailbox::{CloseReason, ConnShared};
use super::message::{PeerReply, PeerRequest, Pending};
use super::notify::Latch;
use super::peer;
use super::pool::BufferPool;
use crate::config::Config;
use crate::metrics::{Metrics, ShardReport};
use crate::protocol::{ResponseEncoder, ShardStats};
use crate::runtime::mesh::{Link, Mesh, MeshEnds};
use crate::runtime::net::Listener;
use crate::runtime::{self, BackgroundQueue};
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
/// Shares of the compute task queue; network tasks have glommio's default 1000.
const COMPUTE_SHARES: usize = 100;

/// State shared by all cores. Touched at accept, at close and once per tick; never per request.
pub struct Global {
    /// Set by a signal handler or [`super::Server::shutdown`]; every core polls it each tick.
    pub shutdown: Arc<AtomicBool>,
    open_connections: AtomicUsize,
}

impl Global {
    pub fn new() -> Global {
        Global {
            shutdown: Arc::new(AtomicBool::new(false)),
            open_connections: AtomicUsize::new(0),
        }
    }

    /// Counts a new connection if fewer than `max` are open.
    fn try_open(&self, max: usize) -> bool {
        self.open_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn close(&self) {
        self.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for Global {
    fn default() -> Self {
        Self::new()
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
    pub pool: BufferPool,
    /// Connections' input and output buffers, lent while they hold bytes.
    pub io_buffers: BufferPool,
    pub mesh: ShardMesh,
    /// Requests sent to other cores and not yet answered, by ticket.
    pub pending: RefCell<Slab<Pending>>,
    pub compute: ComputeQueue,
    connections: RefCell<Slab<Rc<ConnShared>>>,
    /// Set when the server starts draining: listeners close, connections stop reading.
    pub draining: Latch,
    no_connections: Latch,
    epoch: Instant,
}

impl Shard {
    /// Milliseconds since this shard started: the store's clock.
    pub fn now_ms(&self) -> u64 {
        self.ms_since_start(Instant::now())
    }

    /// The store's clock at `instant` (milliseconds since the core started).
    pub fn ms_since_start(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.epoch).as_millis() as u64
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

    fn begin_drain(&self) {
        self.draining.set();
        for (_, conn) in self.connections.borrow().iter() {
            conn.wake();
        }
        if self.connections.borrow().is_empty() {
            self.no_connections.set();
        }
    }

    fn close_all(&self, reason: CloseReason) {
        for (_, conn) in self.connections.borrow().iter() {
            conn.close(reason);
        }
    }

    /// Closes connections that have been idle, or mid-frame, for too long.
    fn enforce_timeouts(&self, now: Instant) {
        let idle = self.config.idle_timeout;
        let frame = self.config.frame_timeout;
        for (_, conn) in self.connections.borrow().iter() {
            if let Some(reason) = conn.overdue(now, idle, frame) {
                conn.close(reason);
            }
        }
    }
}

/// What the bootstrap hands to each core.
pub struct ShardSetup {
    pub index: usize,
    pub cpu: usize,
    pub config: Config,
    pub global: Arc<Global>,
    /// Each listener and the protocol it serves.
    pub listeners: Vec<(Socket, Protocol)>,
    pub shard_ports: Vec<u16>,
    pub mesh: ShardMeshEnds,
    /// Told once this core is connected to its peers and accepting.
    pub ready: std::sync::mpsc::Sender<()>,
}

/// Runs one core's server until shutdown has been drained; returns its report.
pub async fn run(setup: ShardSetup) -> ShardReport {
    let config = setup.config;
    if let Err(e) = runtime::poller::start(config.idle_poll) {
        // Every connection would fail the same way; say why once.
        tracing::error!("core {}: cannot make its epoll set: {e}", setup.index);
    }
    let mesh = setup.mesh.connect().await;
    let shard = Rc::new(Shard {
        index: setup.index,
        count: config.shard_count(),
        cpu: setup.cpu,
        global: setup.global,
        shard_ports: setup.shard_ports,
        store: RefCell::new({
            let mut store = Store::new(config.memory_per_shard());
            store.share_cas_space(setup.index, config.shard_count());
            store
        }),
        metrics: RefCell::new(Metrics::new(setup.index as u32)),
        encoder: RefCell::new(ResponseEncoder::new()),
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
        epoch: Instant::now(),
        mesh,
        config,
    });

    for (socket, protocol) in setup.listeners {
        runtime::spawn(accept_loop(
            shard.clone(),
            Listener::adopt(socket),
            protocol,
        ));
    }
    let mut peer_tasks = Vec::new();
    for (_, link) in shard.mesh.links() {
        let server = runtime::spawn_joinable(peer::serve_requests(shard.clone(), link.clone()));
        let receiver = runtime::spawn_joinable(peer::receive_replies(shard.clone(), link.clone()));
        peer_tasks.push((link.clone(), server, receiver));
    }
    BackgroundQueue::new("compute", COMPUTE_SHARES).spawn(compute::worker(shard.clone()));
    // The receiver may be gone if the bootstrap gave up on another core; nothing to do then.
    let _ = setup.ready.send(());

    tick_until_shutdown(&shard).await;

    // Drain: stop accepting and reading, answer what was read, then close.
    shard.begin_drain();
    let drained = futures_lite::future::or(
        async {
            shard.no_connections.wait().await;
            true
        },
        async {
            runtime::sleep(shard.config.drain_timeout).await;
            false
        },
    )
    .await;
    if !drained {
        tracing::warn!(
            core = shard.index,
            open = shard.connections.borrow().len(),
            "drain timeout: closing the remaining connections"
        );
        shard.close_all(CloseReason::DrainTimeout);
        shard.no_connections.wait().await;
    }
    shard.compute.close();

    // Tell peers this core sends no more requests; keep answering theirs until they say the
    // same. Each core's replies close only after its peers' requests have, so no request
    // between two cores is ever left without its reply.
    for (link, _, _) in &peer_tasks {
        link.close_requests();
    }
    let mut receivers = Vec::new();
    for (link, server, receiver) in peer_tasks {
        server.join().await;
        link.close_replies();
        receivers.push(receiver);
    }
    for receiver in receivers {
        receiver.join().await;
    }

    let store = shard.store.borrow().stats();
    let metrics = std::mem::replace(&mut *shard.metrics.borrow_mut(), Metrics::new(0));
    ShardReport {
        cpu: shard.cpu,
        metrics,
        store,
    }
}

/// Checks timeouts every tick until the process is told to shut down.
async fn tick_until_shutdown(shard: &Shard) {
    let tick = (shard.config.frame_timeout.min(shard.config.idle_timeout) / 4)
        .clamp(Duration::from_millis(1), Duration::from_millis(100));
    while !shard.global.shutdown.load(Ordering::Acquire) {
        runtime::sleep(tick).await;
        shard.enforce_timeouts(Instant::now());
        // Reclaim expired items a bounded slice at a time, so no request waits behind it.
        let now_ms = shard.now_ms();
        shard.store.borrow_mut().sweep(now_ms);
    }
}

/// Accepts connections speaking `protocol` until the shard drains, each served by its own
/// task.
async fn accept_loop(shard: Rc<Shard>, listener: Listener, protocol: Protocol) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.draining.wait().await;
            None
        })
        .await;
        let conn = match accepted {
            None => return,
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                // Typically EMFILE or ENFILE: back off instead of spinning on the error.
                tracing::warn!(core = shard.index, "accept failed: {e}");
                runtime::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !shard.global.try_open(shard.config.max_connections) {
            shard.metrics.borrow_mut().connections_refused += 1;
            drop(conn);
            continue;
        }
        if let Err(e) = conn.set_nodelay() {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        {
            let mut m = shard.metrics.borrow_mut();
            m.connections_accepted += 1;
            m.connections_open += 1;
        }
        let ordered = protocol == Protocol::Memcache;
        let shared = Rc::new(ConnShared::new(Instant::now(), ordered));
        let key = shard.connections.borrow_mut().insert(shared.clone());
        let shard = shard.clone();
        runtime::spawn(async move {
            connection::serve(&shard, conn, &shared, protocol).await;
            shard.connections.borrow_mut().remove(key);
            shard.global.close();
            shard.metrics.borrow_mut().connections_open -= 1;
            if shard.draining.is_set() && shard.connections.borrow().is_empty() {
                shard.no_connections.set();
            }
        });
    }
}
