//! Cross-core messaging: a full mesh of bounded request/reply channels between executors.
//!
//! Every ordered pair of cores (a, b) has a request channel a→b and a reply channel b→a, both of
//! capacity C, and core a holds C *permits* for b. A request is sent only with a permit, and the
//! permit comes back only when its reply has been received. So at most C requests of a are
//! outstanding at b, which means b's reply channel to a always has room: no send on the mesh
//! ever waits, and no core can end up waiting on a full channel whose reader is itself waiting
//! (glommio's mesh hangs exactly that way when small channels fill under load). A task that
//! needs a permit waits for one; only that task stalls, and the reply that frees the permit is
//! received by a different task.
//!
//! Messages are also weighed: their sender says how many bytes each holds, and a core can wait
//! until the peer has taken its requests, or its replies, down to a limit. A message can hold a
//! 1 MiB value (a Set's request, a Get's reply), so the permits alone bound how many messages
//! travel, not how much memory they hold.
//!
//! Messages are received the way Seastar's reactor polls its cross-core queues: while the core
//! is busy, its poller checks each channel between the other tasks' turns and wakes the
//! receiving task itself, so a message costs no glommio scheduler pass and no wake-up of a
//! sleeping core. Each channel counts what was sent into it and taken out of it for that check.
//! Once the core has gone quiet, receivers wait through glommio, which can sleep.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender};
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::sync::Semaphore;

use super::poller::{self, Poller, Readiness};

/// One core's unconnected ends of the mesh; `Send`, so it can be moved into its executor.
pub struct MeshEnds<Req: Send + 'static, Rep: Send + 'static> {
    capacity: usize,
    links: Vec<Option<LinkEnds<Req, Rep>>>,
}

/// An unconnected end of a channel, with the channel's traffic counts.
type End<E> = (E, Arc<Traffic>);

struct LinkEnds<Req: Send + 'static, Rep: Send + 'static> {
    requests_out: End<SharedSender<Weighed<Req>>>,
    requests_in: End<SharedReceiver<Weighed<Req>>>,
    replies_out: End<SharedSender<Weighed<Rep>>>,
    replies_in: End<SharedReceiver<Weighed<Rep>>>,
}

/// A message with the bytes its sender counted for it, and whether it is (or answers) a
/// control request.
type Weighed<M> = (M, usize, bool);

/// Slots per channel beyond the permits, for control requests (see [`Link::reserve_control`]).
const CONTROL_SLOTS: usize = 1;

/// What has gone through one channel. Only the sending core writes `sent` and `closed`, and
/// only the receiving core `taken` and `receiver_gone`; `bytes` goes up on the sending core
/// and down on the receiving one.
#[derive(Default)]
struct Traffic {
    sent: AtomicU64,
    taken: AtomicU64,
    closed: AtomicBool,
    /// Bytes of the weighed messages sent and not yet taken.
    bytes: AtomicUsize,
    /// The receiving end was dropped: nothing sent will be taken any more.
    receiver_gone: AtomicBool,
}

impl Traffic {
    /// Whether a receive would complete now: a message is there, or the sender has closed.
    /// (`taken` can run ahead of `sent` for a moment: the sender counts after its push.)
    fn waiting(&self) -> bool {
        self.sent.load(Ordering::Acquire) > self.taken.load(Ordering::Relaxed)
            || self.closed.load(Ordering::Acquire)
    }
}

fn channel<T: Send + 'static>(capacity: usize) -> (End<SharedSender<T>>, End<SharedReceiver<T>>) {
    let (tx, rx) = shared_channel::new_bounded(capacity);
    let traffic = Arc::new(Traffic::default());
    ((tx, traffic.clone()), (rx, traffic))
}

/// Builds the mesh for `cores` executors with `capacity` slots per channel. Element i goes to
/// executor i.
pub fn full_mesh<Req: Send + 'static, Rep: Send + 'static>(
    cores: usize,
    capacity: usize,
) -> Vec<MeshEnds<Req, Rep>> {
    type Slot<T> = Option<End<T>>;
    // requests[a][b]: the channel a→b; replies[a][b]: the channel b→a answering a's requests.
    let mut req_tx: Vec<Vec<Slot<SharedSender<Weighed<Req>>>>> = Vec::new();
    let mut req_rx: Vec<Vec<Slot<SharedReceiver<Weighed<Req>>>>> = Vec::new();
    let mut rep_tx: Vec<Vec<Slot<SharedSender<Weighed<Rep>>>>> = Vec::new();
    let mut rep_rx: Vec<Vec<Slot<SharedReceiver<Weighed<Rep>>>>> = Vec::new();
    for _ in 0..cores {
        req_tx.push((0..cores).map(|_| None).collect());
        req_rx.push((0..cores).map(|_| None).collect());
        rep_tx.push((0..cores).map(|_| None).collect());
        rep_rx.push((0..cores).map(|_| None).collect());
    }
    for a in 0..cores {
        for b in 0..cores {
            if a == b {
                continue;
            }
            let (tx, rx) = channel(capacity + CONTROL_SLOTS);
            req_tx[a][b] = Some(tx); // a sends requests to b
            req_rx[b][a] = Some(rx); // b receives requests from a
            let (tx, rx) = channel(capacity + CONTROL_SLOTS);
            rep_tx[b][a] = Some(tx); // b replies to a
            rep_rx[a][b] = Some(rx); // a receives b's replies
        }
    }
    (0..cores)
        .map(|core| MeshEnds {
            capacity,
            links: (0..cores)
                .map(|peer| {
                    Some(LinkEnds {
                        requests_out: req_tx[core][peer].take()?,
                        requests_in: req_rx[core][peer].take()?,
                        replies_out: rep_tx[core][peer].take()?,
                        replies_in: rep_rx[core][peer].take()?,
                    })
                })
                .collect(),
        })
        .collect()
}

impl<Req: Send + 'static, Rep: Send + 'static> MeshEnds<Req, Rep> {
    /// Connects every channel of this core. All cores must call it: each connection completes
    /// when both of its ends are connected, so they are connected concurrently. On an executor
    /// started with an idle-poll window, messages are received through the core's poller.
    pub async fn connect(self) -> Mesh<Req, Rep> {
        let capacity = self.capacity as u64;
        // Without a poller (it could not make its epoll set), receivers wait through glommio.
        let poller = poller::current().ok();
        // One task per link, so no link waits behind another one's peer.
        let tasks: Vec<_> = self
            .links
            .into_iter()
            .map(|ends| {
                ends.map(|e| {
                    let poller = poller.clone();
                    glommio::spawn_local(async move {
                        let (requests_out, requests_in) = futures_lite::future::zip(
                            Outbound::connect(e.requests_out),
                            Inbound::connect(e.requests_in, poller.clone()),
                        )
                        .await;
                        let (replies_out, replies_in) = futures_lite::future::zip(
                            Outbound::connect(e.replies_out),
                            Inbound::connect(e.replies_in, poller),
                        )
                        .await;
                        Rc::new(Link {
                            requests_out,
                            requests_in,
                            replies_out,
                            replies_in,
                            permits: Semaphore::new(capacity),
                            control: Semaphore::new(CONTROL_SLOTS as u64),
                        })
                    })
                })
            })
            .collect();
        let mut links = Vec::with_capacity(tasks.len());
        for task in tasks {
            links.push(match task {
                Some(task) => Some(task.await),
                None => None,
            });
        }
        Mesh { links }
    }
}

/// This core's connected view of the mesh.
pub struct Mesh<Req: Send + 'static, Rep: Send + 'static> {
    links: Vec<Option<Rc<Link<Req, Rep>>>>,
}

/// The channels between this core and one peer.
pub struct Link<Req: Send + 'static, Rep: Send + 'static> {
    requests_out: Outbound<Weighed<Req>>,
    requests_in: Inbound<Weighed<Req>>,
    replies_out: Outbound<Weighed<Rep>>,
    replies_in: Inbound<Weighed<Rep>>,
    permits: Semaphore,
    /// Permits for control requests (counters, flushes): apart from `permits`, so that a burst
    /// of them never takes a slot a request for a key needs.
    control: Semaphore,
}

/// The sending end of one channel.
struct Outbound<T: Send + 'static> {
    channel: ConnectedSender<T>,
    traffic: Arc<Traffic>,
}

impl<T: Send + 'static> Outbound<T> {
    async fn connect((channel, traffic): End<SharedSender<T>>) -> Self {
        Outbound {
            channel: channel.connect().await,
            traffic,
        }
    }

    fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.channel
            .try_send(item)
            .map_err(|e| SendError(into_inner(e)))?;
        self.traffic.sent.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn close(&self) {
        self.channel.close();
        self.traffic.closed.store(true, Ordering::Release);
    }
}

impl<T: Send + 'static> Drop for Outbound<T> {
    fn drop(&mut self) {
        // Dropping the sender ends the receiver's stream too.
        self.traffic.closed.store(true, Ordering::Release);
    }
}

/// The receiving end of one channel, watched by this core's poller.
struct Inbound<T: Send + 'static> {
    channel: ConnectedReceiver<T>,
    traffic: Arc<Traffic>,
    watch: Option<(Rc<Poller>, usize)>,
}

impl<T: Send + 'static> Inbound<T> {
    async fn connect(
        (channel, traffic): End<SharedReceiver<T>>,
        poller: Option<Rc<Poller>>,
    ) -> Self {
        let watch = poller.map(|poller| {
            let watched = traffic.clone();
            let token = poller.watch(Box::new(move || watched.waiting()));
            (poller, token)
        });
        Inbound {
            channel: channel.connect().await,
            traffic,
            watch,
        }
    }

    /// The next message; `None` once the sender has closed and everything sent was taken.
    async fn recv(&self) -> Option<T> {
        if let Some((poller, token)) = &self.watch {
            while !self.traffic.waiting() {
                if poller.wait_watch(*token).await == Readiness::Sleep {
                    // The core has gone quiet: wait through glommio, which can sleep. If the
                    // core wakes for something else meanwhile, the poller sees the message
                    // arrive and ends its pass so that glommio delivers it.
                    let glommio = poller.glommio_wait_watch(*token);
                    let message = self.channel.recv().await;
                    drop(glommio);
                    return self.taken(message);
                }
            }
        }
        // A message is there (or the sender has closed): this completes at once.
        let message = self.channel.recv().await;
        self.taken(message)
    }

    fn taken(&self, message: Option<T>) -> Option<T> {
        if message.is_some() {
            self.traffic.taken.fetch_add(1, Ordering::Relaxed);
            if let Some((poller, _)) = &self.watch {
                poller.wake_up();
            }
        }
        message
    }
}

impl<T: Send + 'static> Drop for Inbound<T> {
    fn drop(&mut self) {
        self.traffic.receiver_gone.store(true, Ordering::Release);
        if let Some((poller, token)) = &self.watch {
            poller.unwatch(*token);
        }
    }
}

/// Why a message could not be sent: the peer has shut down, or (never, by construction) the
/// channel was full. The message comes back.
#[derive(Debug)]
pub struct SendError<T>(pub T);

impl<Req: Send + 'static, Rep: Send + 'static> Mesh<Req, Rep> {
    /// The link to `peer`, or `None` for this core itself.
    pub fn link(&self, peer: usize) -> Option<&Rc<Link<Req, Rep>>> {
        self.links.get(peer)?.as_ref()
    }

    /// Every link, with its peer's index.
    pub fn links(&self) -> impl Iterator<Item = (usize, &Rc<Link<Req, Rep>>)> {
        self.links
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.as_ref().map(|l| (i, l)))
    }
}

impl<Req: Send + 'static, Rep: Send + 'static> Link<Req, Rep> {
    /// Takes a permit without waiting; false when all are in use.
    pub fn try_reserve(&self) -> bool {
        matches!(self.permits.try_acquire(1), Ok(true))
    }

    /// Waits until a permit is free and takes it.
    pub async fn reserve(&self) {
        // The semaphore is closed only when the link is dropped.
        let _ = self.permits.acquire(1).await;
    }

    /// Gives back a permit that was reserved and not used.
    pub fn release(&self) {
        self.permits.signal(1);
    }

    /// Sends a request to the peer, counting `bytes` for it until the peer takes it; the caller
    /// holds a permit from [`Self::reserve`].
    pub fn send_request(&self, request: Req, bytes: usize) -> Result<(), SendError<Req>> {
        let backlog = &self.requests_out.traffic.bytes;
        backlog.fetch_add(bytes, Ordering::AcqRel);
        self.requests_out
            .send((request, bytes, false))
            .map_err(|SendError((request, _, _))| {
                backlog.fetch_sub(bytes, Ordering::AcqRel);
                self.permits.signal(1);
                SendError(request)
            })
    }

    /// Bytes of this core's requests that the peer has not taken yet.
    pub fn requests_backlog(&self) -> usize {
        self.requests_out.traffic.bytes.load(Ordering::Acquire)
    }

    /// Waits until the peer has taken this core's requests down to `limit` bytes, or its end is
    /// gone. The peer takes requests without waiting on this core, so this cannot deadlock; it
    /// looks every `recheck`.
    pub async fn wait_requests_taken(&self, limit: usize, recheck: Duration) {
        let traffic = &self.requests_out.traffic;
        while traffic.bytes.load(Ordering::Acquire) > limit
            && !traffic.receiver_gone.load(Ordering::Acquire)
        {
            super::sleep(recheck).await;
        }
    }

    /// Waits for the control permit and sends a control request with it; the peer answers it
    /// with [`Self::send_control_reply`]. Control requests have their own slot in each channel,
    /// so they never wait for, or take, a permit of [`Self::reserve`].
    pub async fn send_control(&self, request: Req) -> Result<(), SendError<Req>> {
        // The semaphore is closed only when the link is dropped.
        let _ = self.control.acquire(1).await;
        self.requests_out
            .send((request, 0, true))
            .map_err(|SendError((request, _, _))| {
                self.control.signal(1);
                SendError(request)
            })
    }

    /// The next request from the peer; `None` once the peer has closed its side.
    pub async fn recv_request(&self) -> Option<Req> {
        let (request, bytes, _) = self.requests_in.recv().await?;
        self.requests_in
            .traffic
            .bytes
            .fetch_sub(bytes, Ordering::AcqRel);
        Some(request)
    }

    /// Answers a request received from the peer, counting `bytes` for it until the peer takes
    /// it. Never waits: see the module comment.
    pub fn send_reply(&self, reply: Rep, bytes: usize) -> Result<(), SendError<Rep>> {
        self.reply(reply, bytes, false)
    }

    /// Answers a control request received from the peer (see [`Self::send_control`]).
    pub fn send_control_reply(&self, reply: Rep) -> Result<(), SendError<Rep>> {
        self.reply(reply, 0, true)
    }

    fn reply(&self, reply: Rep, bytes: usize, control: bool) -> Result<(), SendError<Rep>> {
        let backlog = &self.replies_out.traffic.bytes;
        // Counted before the send, so the peer never takes away more than was added.
        backlog.fetch_add(bytes, Ordering::AcqRel);
        self.replies_out
            .send((reply, bytes, control))
            .map_err(|SendError((reply, _, _))| {
                backlog.fetch_sub(bytes, Ordering::AcqRel);
                SendError(reply)
            })
    }

    /// Waits until the peer has taken this core's replies down to `limit` bytes, or its end is
    /// gone (its executor ended), when waiting would be forever. At an orderly shutdown the
    /// peer takes replies until this core closes them. The peer takes them without waiting on
    /// anything else, so this cannot deadlock; it looks every `recheck`.
    pub async fn wait_replies_taken(&self, limit: usize, recheck: Duration) {
        let traffic = &self.replies_out.traffic;
        while traffic.bytes.load(Ordering::Acquire) > limit
            && !traffic.receiver_gone.load(Ordering::Acquire)
        {
            super::sleep(recheck).await;
        }
    }

    /// The next reply from the peer, returning its permit; `None` once the peer has closed.
    pub async fn recv_reply(&self) -> Option<Rep> {
        let (reply, bytes, control) = self.replies_in.recv().await?;
        self.replies_in
            .traffic
            .bytes
            .fetch_sub(bytes, Ordering::AcqRel);
        if control {
            self.control.signal(1);
        } else {
            self.permits.signal(1);
        }
        Some(reply)
    }

    /// Stops sending requests to the peer; its [`Self::recv_request`] then ends.
    pub fn close_requests(&self) {
        self.requests_out.close();
    }

    /// Stops sending replies to the peer; its [`Self::recv_reply`] then ends.
    pub fn close_replies(&self) {
        self.replies_out.close();
    }
}

fn into_inner<T>(err: glommio::GlommioError<T>) -> T {
    match err {
        glommio::GlommioError::Closed(glommio::ResourceType::Channel(v))
        | glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(v)) => v,
        // try_send only fails with the two errors above, which carry the value back.
        other => unreachable!("unexpected channel error: {other}"),
    }
}
