//! One core's life: start-up (its state, its listeners, the tasks that serve its peers and its
//! compute queue), accepting connections, the timeout tick, and the drain at shutdown.

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::Socket;

use super::codec::Protocol;
use super::compute::ReplyBatch;
use super::connection;
use super::mailbox::{CloseReason, Completion, ConnShared};
use super::peer;
use super::shard::{Global, PeerCheck, Shard, ShardMeshEnds, ACCEPT_LOG_EVERY};
use super::CoreEvent;
use crate::config::Config;
use crate::metrics::{ClosedBy, Metrics, ShardReport};
use crate::ops;
use crate::protocol::{OpKind, Reply};
use crate::runtime::net::{Conn, Listener};
use crate::runtime::{self, BackgroundQueue};

/// Shares of the compute task queue; network tasks have glommio's default 1000.
const COMPUTE_SHARES: usize = 100;
/// How often the buffer pools give back what a burst left idle ([`super::pool::POOL_FLOOR`]).
const POOL_TRIM_EVERY: Duration = Duration::from_secs(1);

/// What the bootstrap hands to each core.
pub struct ShardSetup {
    pub index: usize,
    pub cpu: usize,
    pub config: Config,
    pub global: Arc<Global>,
    /// Each listener and the protocol it serves.
    pub listeners: Vec<(Socket, Protocol)>,
    pub shard_ports: Vec<u16>,
    /// The `--metrics-listen` socket, for the one core that serves it.
    pub metrics_listener: Option<Socket>,
    pub mesh: ShardMeshEnds,
    /// Told once this core is connected to its peers and accepting.
    pub ready: std::sync::mpsc::Sender<CoreEvent>,
}

/// Runs one core's server until shutdown has been drained; returns its report.
pub async fn run(setup: ShardSetup) -> ShardReport {
    let config = setup.config;
    let mesh = setup.mesh.connect().await;
    let shard = Rc::new(Shard::new(
        setup.index,
        setup.cpu,
        config,
        setup.global,
        setup.shard_ports,
        mesh,
    ));

    for (socket, protocol) in setup.listeners {
        runtime::spawn(accept_loop(
            shard.clone(),
            Listener::adopt(socket),
            protocol,
        ));
    }
    if let Some(socket) = setup.metrics_listener {
        runtime::spawn(super::metrics_http::serve(
            shard.clone(),
            Listener::adopt(socket),
        ));
    }
    let mut peer_tasks = Vec::new();
    for (_, link) in shard.mesh.links() {
        let server = runtime::spawn_joinable(peer::serve_requests(shard.clone(), link.clone()));
        let receiver = runtime::spawn_joinable(peer::receive_replies(shard.clone(), link.clone()));
        peer_tasks.push((link.clone(), server, receiver));
    }
    BackgroundQueue::new("compute", COMPUTE_SHARES).spawn(compute_worker(shard.clone()));
    // The receiver may be gone if the bootstrap gave up on another core; nothing to do then.
    let _ = setup.ready.send(CoreEvent::Ready(shard.index));
    #[cfg(debug_assertions)]
    panic_if_asked(shard.index);

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
    shard.global.mark_drained(shard.index);
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

/// For the tests of a core's death, in debug builds only: `PERCORE_TEST_PANIC_CORE=N` or
/// `N:DUR` makes core N panic (in a task of its own, as a connection's would) DUR after it is
/// ready. No flag and nothing a client sends reaches it, and release builds do not have it.
#[cfg(debug_assertions)]
fn panic_if_asked(index: usize) {
    let Ok(spec) = std::env::var("PERCORE_TEST_PANIC_CORE") else {
        return;
    };
    let (core, after) = spec.split_once(':').unwrap_or((&spec, "0s"));
    if core.trim().parse() != Ok(index) {
        return;
    }
    let after = humantime::parse_duration(after.trim()).unwrap_or_default();
    runtime::spawn(async move {
        runtime::sleep(after).await;
        panic!("PERCORE_TEST_PANIC_CORE asked core {index} to panic");
    });
}

/// Checks timeouts every tick until the process is told to shut down.
async fn tick_until_shutdown(shard: &Shard) {
    let tick = (shard.config.frame_timeout.min(shard.config.idle_timeout) / 4)
        .clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut last_trim = Instant::now();
    while !shard.global.shutdown.load(Ordering::Acquire) {
        runtime::sleep(tick).await;
        let now = Instant::now();
        shard.enforce_timeouts(now);
        // Reclaim expired items a bounded slice at a time, so no request waits behind it.
        let now_ms = shard.now_ms();
        shard.store.borrow_mut().sweep(now_ms);
        if now.saturating_duration_since(last_trim) >= POOL_TRIM_EVERY {
            last_trim = now;
            shard.pool.trim();
            shard.io_buffers.trim();
        }
    }
}

/// After a failed accept a listener waits this long before the next, doubling while accepts
/// keep failing, up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections speaking `protocol` until the shard drains, each served by its own
/// task.
async fn accept_loop(shard: Rc<Shard>, listener: Listener, protocol: Protocol) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let conn = match shard.draining.unless_set(listener.accept()).await {
            None => return,
            Some(Ok(conn)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                conn
            }
            Some(Err(e)) => {
                // Typically EMFILE or ENFILE, which the next accept would meet again at once:
                // wait, longer while it lasts, but not past the start of the drain.
                shard.metrics.borrow_mut().accept_errors += 1;
                log_accept_failure(&shard, &e);
                if shard
                    .draining
                    .unless_set(runtime::sleep(backoff))
                    .await
                    .is_none()
                {
                    return;
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if admit(&shard, conn, protocol) == Admitted::Draining {
            return;
        }
    }
}

/// What became of an accepted connection.
#[derive(Debug, PartialEq, Eq)]
enum Admitted {
    /// A task of its own serves it.
    Served,
    /// Closed: `--max-connections` are open.
    Refused,
    /// Closed: the peer is outside `--allow`.
    Disallowed,
    /// Closed: the peer reset before its address could be read.
    Gone,
    /// Closed before anything was read: the drain has begun.
    Draining,
}

/// Serves a connection just accepted, or closes it.
///
/// `accept` can return after the drain began (it wins the race in [`accept_loop`] when the
/// connection came in the same scheduler pass, and takes one that is already waiting without
/// waiting at all). Such a connection is closed before anything is read from it: the core may
/// have seen its last connection close already and would exit under this one, its requests
/// read and lost.
fn admit(shard: &Rc<Shard>, conn: Conn, protocol: Protocol) -> Admitted {
    if shard.draining.is_set() {
        drop(conn);
        return Admitted::Draining;
    }
    match shard.check_peer(&conn) {
        PeerCheck::Allowed => {}
        PeerCheck::Disallowed => return Admitted::Disallowed,
        PeerCheck::Gone => {
            // Counted as what it was: a connection accepted whose client left at once.
            let mut m = shard.metrics.borrow_mut();
            m.connections_accepted += 1;
            m.connection_closed(ClosedBy::Other);
            return Admitted::Gone;
        }
    }
    if !shard.global.try_open(shard.config.max_connections) {
        shard.metrics.borrow_mut().connections_refused += 1;
        drop(conn);
        return Admitted::Refused;
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
    let shared = Rc::new(ConnShared::new(Instant::now(), ordered, shard.owed.clone()));
    let key = shard.connections.borrow_mut().insert(shared.clone());
    let shard = shard.clone();
    runtime::spawn(async move {
        connection::serve(&shard, conn, &shared, protocol).await;
        shard
            .metrics
            .borrow_mut()
            .connection_closed(closed_by(shared.close.get()));
        shard.connections.borrow_mut().remove(key);
        shard.global.close();
        shard.metrics.borrow_mut().connections_open -= 1;
        if shard.draining.is_set() && shard.connections.borrow().is_empty() {
            shard.no_connections.set();
        }
    });
    Admitted::Served
}

/// The closed-by-reason counter a connection's end goes to.
fn closed_by(reason: Option<CloseReason>) -> ClosedBy {
    match reason {
        None => ClosedBy::Other,
        Some(CloseReason::IdleTimeout) => ClosedBy::IdleTimeout,
        Some(CloseReason::FrameTimeout) => ClosedBy::FrameTimeout,
        Some(CloseReason::SlowReader) => ClosedBy::SlowReader,
        Some(CloseReason::DrainTimeout) => ClosedBy::DrainTimeout,
    }
}

/// Logs a failed accept, unless this core logged one less than [`ACCEPT_LOG_EVERY`] ago: then
/// it is only counted, and the next line says how many there were.
fn log_accept_failure(shard: &Shard, e: &std::io::Error) {
    let due = shard
        .accept_failures
        .borrow_mut()
        .note(Instant::now(), ACCEPT_LOG_EVERY);
    if let Some(failures) = due {
        tracing::warn!(
            core = shard.index,
            failures,
            "accept failed: {e}; backing off (failures since this core's last such line)"
        );
    }
}

/// Runs queued jobs one at a time until the queue is closed and empty, handing the replies over
/// in batches ([`super::compute::ReplyBatch`]).
async fn compute_worker(shard: Rc<Shard>) {
    let mut batch = ReplyBatch::default();
    loop {
        let mut job = match shard.compute.try_next() {
            Some(job) => job,
            None => {
                // Nothing more to run now: what is finished goes out before the worker waits.
                hand_over(&shard, &mut batch);
                match shard.compute.next().await {
                    Some(job) => job,
                    None => break,
                }
            }
        };
        let digest = {
            // A long job must not hold the replies before it: they go out at its first yield
            // once due.
            let mut digest = std::pin::pin!(ops::compute::digest(job.algo, &job.buf, job.rounds));
            std::future::poll_fn(|cx| {
                let poll = digest.as_mut().poll(cx);
                if poll.is_pending() && batch.is_due() {
                    hand_over(&shard, &mut batch);
                }
                poll
            })
            .await
        };
        job.buf.clear();
        let reply = Reply::Digest {
            digest: digest.as_bytes(),
        };
        shard.encoder.borrow_mut().ok(job.id, &reply, &mut job.buf);
        let completion = Completion {
            frame: job.buf,
            kind: OpKind::Compute,
            started: job.started,
            seq: 0,
        };
        if batch.push(job.conn, completion) {
            hand_over(&shard, &mut batch);
        }
    }
    hand_over(&shard, &mut batch);
}

fn hand_over(shard: &Shard, batch: &mut ReplyBatch) {
    for (conn, completion) in batch.drain() {
        shard.complete(&conn, completion);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;
    use crate::config::Options;
    use crate::protocol::{Op, RequestEncoder};
    use crate::runtime::mesh::full_mesh;
    use crate::server::shard::MESH_CAPACITY;

    /// A one-core shard with the default settings, and a listener for it.
    async fn shard_and_listener() -> (Rc<Shard>, Listener, std::net::SocketAddr) {
        let mut config = Options::default().into_config().unwrap();
        config.cpus.truncate(1);
        let ends = full_mesh(1, MESH_CAPACITY).pop().unwrap();
        let mesh = ends.connect().await;
        let global = Arc::new(Global::new(1));
        let shard = Rc::new(Shard::new(
            0,
            config.cpus[0],
            config,
            global,
            Vec::new(),
            mesh,
        ));
        let socket = runtime::net::reuseport_listener(([127, 0, 0, 1], 0).into(), 16).unwrap();
        let addr = runtime::net::local_addr(&socket).unwrap();
        (shard, Listener::adopt(socket), addr)
    }

    fn ping() -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        RequestEncoder::new().encode(1, &Op::Ping { payload: b"p" }, &mut out);
        out.to_vec()
    }

    /// A connection accepted before the drain is served; one accepted after it began is closed
    /// with its request unread, and the core does not count it among its connections.
    #[test]
    fn a_connection_accepted_after_the_drain_began_is_closed_unread() {
        runtime::block_on(async {
            let (shard, listener, addr) = shard_and_listener().await;
            let mut early = TcpStream::connect(addr).unwrap();
            early.write_all(&ping()).unwrap();
            let conn = listener.accept().await.unwrap();
            assert_eq!(admit(&shard, conn, Protocol::Native), Admitted::Served);

            let mut late = TcpStream::connect(addr).unwrap();
            late.write_all(&ping()).unwrap();
            let conn = listener.accept().await.unwrap();
            shard.begin_drain();
            assert_eq!(admit(&shard, conn, Protocol::Native), Admitted::Draining);
            assert_eq!(shard.metrics.borrow().connections_accepted, 1);
            assert_eq!(shard.connections.borrow().len(), 1);
            // Closed with the Ping unread: a reset, or an end without a reply.
            late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            match late.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("the late connection got {other:?}"),
            }
        });
    }
}
