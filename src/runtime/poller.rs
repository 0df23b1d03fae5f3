//! Socket readiness for a busy core, through one epoll set instead of an io_uring poll per
//! connection.
//!
//! glommio learns that a socket has data by arming an io_uring poll on it. Each completion
//! reaches the executor as task work, and on a ring without `IORING_SETUP_COOP_TASKRUN` (glommio
//! 0.9 sets no such flag and lets nobody set it) that interrupts the CPU while the executor runs:
//! thousands of rescheduling interrupts a second under load, each expensive on a virtual machine.
//! Every arm also allocates glommio's bookkeeping.
//!
//! So while the core is busy its connections do not ask glommio. Each socket is registered once,
//! edge-triggered, in the core's epoll set; a connection whose socket is drained waits here, and
//! one [`Poller`] task asks the kernel about all of them with non-blocking `epoll_wait`s taken
//! between the other tasks' turns. It also keeps glommio's scheduler pass going while nothing
//! needs glommio (see [`PASS_BUDGET`]), because each pass costs glommio a system call and
//! allocations. When the looks have found nothing, and no other core has sent anything, for the
//! idle-poll window and at least [`QUIET_LOOKS`] looks in a row (the core has gone quiet, not
//! merely been descheduled), the poller hands every waiting connection back to
//! glommio, whose io_uring poll then lets the executor sleep. The first connection or message
//! that wakes the core restarts the poller. The window trades a little CPU after the last
//! request (at most the window, once per quiet spell) for not paying glommio's sleep and wake-up
//! path while requests keep coming; Seastar's reactor makes the same trade with its idle-poll
//! time.
//!
//! CPU-bound work in a background queue (Compute) changes this: glommio would run it until its
//! queue's preemption timer fires (1 ms), and the poller, spinning in the network's queue with
//! ten times the shares, would take turns from it whenever it has nothing to find. So while a
//! [`Background`] task runs or is runnable the poller steps aside after an empty look, and the
//! task's own yield points look instead, every [`BACKGROUND_SLICE`]: what they find is woken
//! and the task yields, so the network's tasks run next.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// How long a server core keeps looking after its last event before it may sleep (the
/// `--idle-poll` default). Each sleep costs a wake-up later, and every connection then waits
/// through glommio, whose completions interrupt the running core. On the project's 2-CPU
/// machine (docs/performance.md, "The idle-poll window"), at ping pipeline 16, 20 us let the
/// core sleep some 100 times a second, for 2,000 rescheduling interrupts a second, and 100 us
/// about 85; with the clients on the same CPUs as a 2-core server, 100 us also gave 1.15x the
/// throughput of 20 us.
pub const DEFAULT_IDLE_POLL: Duration = Duration::from_micros(100);

/// Events taken from the kernel per `epoll_wait`; more simply wait for the next pass.
const EVENTS_PER_WAIT: usize = 256;

/// How long the poller keeps one glommio scheduler pass going while nothing needs glommio.
///
/// glommio submits to io_uring and reaps it (timers, accepts, the waits of connections that went
/// to it while the core was quiet) only between passes, and every pass costs it a
/// preemption-timer submission, a system call and several allocations. So while the core is
/// busy the poller yields to the other tasks and looks again within the same pass, ending it as
/// soon as glommio has something to do: a completion on its latency ring, a connection arriving
/// at a listener, an event on a socket or a message on a channel whose task waits through
/// glommio, or a short timer falling due. Sockets and messages that tasks wait for through the
/// poller need no pass. What it cannot see (any other completion on glommio's main ring, such
/// as a close, or a timer longer than [`SHORT_TIMER`]) is delivered at most this late.
const PASS_BUDGET: Duration = Duration::from_millis(10);

/// How long CPU-bound work in a background queue runs between its looks for network work (see
/// [`Poller::look_for_network`]). A request that arrives while such work runs waits about this
/// long, instead of the rest of the background queue's glommio time slice (its latency setting,
/// 1 ms). Each look is one non-blocking `epoll_wait`; each look that finds something hands the
/// core to the network, whose turn also sends the replies the background work finished, so a
/// shorter slice also batches them less (docs/performance.md, "Isolation").
pub const BACKGROUND_SLICE: Duration = Duration::from_micros(250);

/// Looks in a row that must find nothing, besides the idle-poll window passing, before the
/// poller lets the core sleep.
const QUIET_LOOKS: u32 = 8;

/// How often a sleeping core's poller looks for room for writers waiting on full sockets.
const DOZE: Duration = Duration::from_millis(1);

/// Timers up to this long are tracked by the poller (see [`expect_timer`]).
const SHORT_TIMER: Duration = Duration::from_millis(50);

/// The poller's timer that ends a pass. glommio registers a timer only if it is not yet due
/// when first polled, and parks the executor (an io_uring sleep, with its own allocations) if
/// nothing is due when it next looks; so the timer is set this far ahead, and the poller waits
/// that long before it lets the pass end.
const NEXT_PASS: Duration = Duration::from_micros(1);

/// What a waiting connection should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The socket may have data (or an end or an error): try a `recv`.
    Ready,
    /// The core is going quiet: wait through glommio's io_uring poll instead.
    Sleep,
}

struct Entry {
    /// The socket may have something to read. Set by an event, cleared by a `recv` that drained
    /// the socket; an edge-triggered event arrives for every later arrival.
    ready: bool,
    /// The peer has closed its side, or the socket has failed. Never cleared: a short read can
    /// drain the data in front of an end of stream that has already arrived, and no new edge
    /// would ever announce it.
    hung_up: bool,
    /// The connection is closed both ways or has failed (not merely half-closed by the peer,
    /// which leaves it writable): a `send` returns the error at once. Never cleared.
    broken: bool,
    /// The connection's task while it waits here to read.
    waiter: Option<Waker>,
    /// The socket may take more bytes. Cleared by a `send` that found its buffer full; the
    /// edge-triggered event that follows when room frees up sets it again.
    writable: bool,
    /// The connection's task while it waits here to write.
    write_waiter: Option<Waker>,
    /// Waits on this socket that glommio is doing (see [`GlommioWait`]): an event on the socket
    /// then ends the scheduler pass, because glommio delivers only between passes.
    glommio_waits: u32,
}

/// Something other than a socket that a task waits on through the poller: a check that is true
/// once the wait would end (a message from another core has arrived).
struct Watch {
    ready: Box<dyn Fn() -> bool>,
    waiter: Option<Waker>,
    /// Waits through glommio instead (see [`GlommioWait`]): the check turning true then ends
    /// the pass.
    glommio_waits: u32,
}

/// One core's epoll set and the task that polls it.
pub struct Poller {
    epoll: OwnedFd,
    entries: RefCell<Slab<Entry>>,
    watches: RefCell<Slab<Watch>>,
    /// When short glommio timers fall due (see [`expect_timer`]); earliest first.
    deadlines: RefCell<BinaryHeap<Reverse<Instant>>>,
    /// The poller handed its waiters to glommio and stopped; the next wake-up restarts it.
    asleep: Cell<bool>,
    /// The poller task, while it is asleep.
    task: RefCell<Option<Waker>>,
    /// Tasks waiting here to read, or on a watch.
    waiting: Cell<usize>,
    /// Tasks waiting here to write.
    write_waiters: Cell<usize>,
    idle_poll: Cell<Duration>,
    executor: usize,
    /// Background tasks (see [`Background`]) that are running or runnable. While there is one
    /// and a look finds nothing, the poller steps aside instead of spinning against it: the
    /// background work's own looks ([`Poller::look_for_network`]) wake it.
    background: Cell<usize>,
    /// A background task has just yielded to the network (it is still runnable).
    background_yielded: Cell<bool>,
    /// When background work last looked for the network.
    background_look: Cell<Instant>,
    /// A background look found something only a glommio pass delivers; the poller ends the pass.
    pending_delivery: Cell<bool>,
}

thread_local! {
    static POLLER: RefCell<Option<Rc<Poller>>> = const { RefCell::new(None) };
    /// Off unless a thread asks for it: the clients of tests and tools share their CPUs.
    static IDLE_POLL: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Makes this executor's poller now (so its epoll descriptor exists from the start, not from
/// the first connection) with the idle-poll window `window`. Zero turns polling off: every wait
/// goes straight to glommio.
pub fn start(window: Duration) -> io::Result<()> {
    IDLE_POLL.with(|w| w.set(window));
    current()?.idle_poll.set(window);
    Ok(())
}

/// Tells this executor's poller that a glommio timer of `duration` has just been set, so that it
/// ends its scheduler pass when the timer falls due (glommio fires timers only between passes).
/// Longer timers than [`SHORT_TIMER`] are left alone: they are late by at most [`PASS_BUDGET`].
pub fn expect_timer(duration: Duration) {
    if duration > SHORT_TIMER {
        return;
    }
    POLLER.with(|slot| {
        if let Some(poller) = slot.borrow().as_ref() {
            let now = Instant::now();
            // Drop what has passed (the poller may be asleep and not taking them), so the heap
            // holds at most the timers set in the last SHORT_TIMER.
            poller.timer_due(now);
            poller.deadlines.borrow_mut().push(Reverse(now + duration));
        }
    });
}

/// For CPU-bound background work between chunks: whether it should yield its task queue now,
/// because glommio wants the core back (its preemption timer, or a latency-ring completion) or
/// because a look ([`Poller::look_for_network`]) found work for the network. `None` on a thread
/// without a poller (which may not be running glommio at all).
pub fn background_should_yield() -> Option<bool> {
    POLLER.with(|slot| {
        let slot = slot.borrow();
        let poller = slot.as_ref()?;
        if glommio::executor().need_preempt() {
            poller.background_yielded.set(true);
            return Some(true);
        }
        Some(poller.look_for_network())
    })
}

/// This executor's poller, made (and its task started) on first use.
pub fn current() -> io::Result<Rc<Poller>> {
    let executor = glommio::executor().id();
    POLLER.with(|slot| {
        let mut slot = slot.borrow_mut();
        if let Some(poller) = slot.as_ref().filter(|p| p.executor == executor) {
            return Ok(poller.clone());
        }
        // SAFETY: epoll_create1 has no preconditions; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let poller = Rc::new(Poller {
            // SAFETY: a new descriptor that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            entries: RefCell::new(Slab::new()),
            watches: RefCell::new(Slab::new()),
            deadlines: RefCell::new(BinaryHeap::new()),
            asleep: Cell::new(true),
            task: RefCell::new(None),
            waiting: Cell::new(0),
            write_waiters: Cell::new(0),
            idle_poll: Cell::new(IDLE_POLL.with(Cell::get)),
            executor,
            background: Cell::new(0),
            background_yielded: Cell::new(false),
            background_look: Cell::new(Instant::now()),
            pending_delivery: Cell::new(false),
        });
        glommio::spawn_local(poller.clone().run()).detach();
        *slot = Some(poller.clone());
        Ok(poller)
    })
}

impl Poller {
    /// Adds a socket to the set; the returned token names it in the calls below.
    pub fn register(&self, fd: RawFd) -> io::Result<usize> {
        let token = self.entries.borrow_mut().insert(Entry {
            ready: true,
            hung_up: false,
            broken: false,
            waiter: None,
            writable: true,
            write_waiter: None,
            glommio_waits: 0,
        });
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token as u64,
        };
        // SAFETY: both descriptors are open; the event is a valid epoll_event.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            self.entries.borrow_mut().remove(token);
            return Err(io::Error::last_os_error());
        }
        Ok(token)
    }

    /// Adds a listening socket whose accepts glommio does: a connection arriving ends the
    /// scheduler pass, so that glommio submits its accept (it submits only between passes).
    pub fn register_listener(&self, fd: RawFd) -> io::Result<usize> {
        let token = self.register(fd)?;
        if let Some(entry) = self.entries.borrow_mut().get_mut(token) {
            entry.glommio_waits = 1;
        }
        Ok(token)
    }

    /// Removes a socket; call it before the socket is closed.
    pub fn deregister(&self, token: usize, fd: RawFd) {
        // SAFETY: as in `register`; a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        if let Some(mut entry) = self.entries.borrow_mut().try_remove(token) {
            unpark(&mut entry.waiter, &self.waiting);
            unpark(&mut entry.write_waiter, &self.write_waiters);
        }
    }

    /// Whether a `recv` on the socket may find something.
    pub fn is_ready(&self, token: usize) -> bool {
        self.entries.borrow().get(token).is_some_and(|e| e.ready)
    }

    /// Records that a `recv` drained the socket (unless it has hung up: then the end of stream
    /// or the error is still there to read).
    pub fn drained(&self, token: usize) {
        if let Some(entry) = self.entries.borrow_mut().get_mut(token) {
            entry.ready = entry.hung_up;
        }
    }

    /// Records that the socket may have data (a wait through glommio ended).
    pub fn mark_ready(&self, token: usize) {
        if let Some(entry) = self.entries.borrow_mut().get_mut(token) {
            entry.ready = true;
        }
        // Something arrived while the core slept: it is busy again.
        self.wake_up();
    }

    /// Wakes the poller task if it is paused or asleep, so that it looks at its waiters again.
    fn resume(&self) {
        if let Some(task) = self.task.borrow_mut().take() {
            task.wake();
        }
    }

    /// The core has work again: restart the poller if it was asleep (and polling is on).
    pub fn wake_up(&self) {
        if self.asleep.get() && !self.idle_poll.get().is_zero() {
            self.asleep.set(false);
            self.resume();
        }
    }

    /// Adds a check to run on every look while a task waits on it; the returned token names it.
    pub fn watch(&self, ready: Box<dyn Fn() -> bool>) -> usize {
        self.watches.borrow_mut().insert(Watch {
            ready,
            waiter: None,
            glommio_waits: 0,
        })
    }

    pub fn unwatch(&self, token: usize) {
        if let Some(mut watch) = self.watches.borrow_mut().try_remove(token) {
            unpark(&mut watch.waiter, &self.waiting);
        }
    }

    /// Waits until the watch's check is true, or until the core goes quiet.
    pub async fn wait_watch(&self, token: usize) -> Readiness {
        std::future::poll_fn(|cx| {
            let mut watches = self.watches.borrow_mut();
            match watches.get_mut(token) {
                Some(watch) => self.wait_step((watch.ready)(), &mut watch.waiter, cx),
                None => Poll::Ready(Readiness::Ready),
            }
        })
        .await
    }

    /// Marks a wait on socket `token` that glommio does (the core had gone quiet), until the
    /// returned guard is dropped.
    pub fn glommio_wait(&self, token: usize) -> GlommioWait<'_> {
        GlommioWait::new(self, Waited::Socket(token))
    }

    /// The same for a task that waits on watch `token` through glommio.
    pub fn glommio_wait_watch(&self, token: usize) -> GlommioWait<'_> {
        GlommioWait::new(self, Waited::Watch(token))
    }

    fn count_glommio_wait(&self, waited: Waited, delta: i32) {
        let update = |waits: &mut u32| *waits = waits.saturating_add_signed(delta);
        match waited {
            Waited::Socket(token) => {
                if let Some(entry) = self.entries.borrow_mut().get_mut(token) {
                    update(&mut entry.glommio_waits);
                }
            }
            Waited::Watch(token) => {
                if let Some(watch) = self.watches.borrow_mut().get_mut(token) {
                    update(&mut watch.glommio_waits);
                }
            }
        }
    }

    /// Records that a `send` found the socket's buffer full.
    pub fn blocked(&self, token: usize) {
        if let Some(entry) = self.entries.borrow_mut().get_mut(token) {
            entry.writable = entry.broken;
        }
    }

    /// Waits until the socket may take more bytes. Unlike reads, writes never wait through
    /// glommio: its wait for room wakes at once, again and again, on a socket whose peer has
    /// half-closed, which spins the core. While the core sleeps the poller looks for writers
    /// every [`DOZE`] instead.
    pub async fn wait_writable(&self, token: usize) {
        std::future::poll_fn(|cx| {
            let mut entries = self.entries.borrow_mut();
            let Some(entry) = entries.get_mut(token) else {
                return Poll::Ready(());
            };
            if entry.writable {
                unpark(&mut entry.write_waiter, &self.write_waiters);
                return Poll::Ready(());
            }
            // A paused poller resumes for it; a sleeping one starts dozing.
            if park(&mut entry.write_waiter, cx, &self.write_waiters) {
                self.resume();
            }
            Poll::Pending
        })
        .await
    }

    /// Waits until the socket may have data, or until the core goes quiet.
    pub async fn wait(&self, token: usize) -> Readiness {
        std::future::poll_fn(|cx| self.poll_wait(token, cx)).await
    }

    fn poll_wait(&self, token: usize, cx: &Context<'_>) -> Poll<Readiness> {
        let mut entries = self.entries.borrow_mut();
        match entries.get_mut(token) {
            Some(entry) => self.wait_step(entry.ready, &mut entry.waiter, cx),
            None => Poll::Ready(Readiness::Ready),
        }
    }

    /// One poll of a read or watch wait whose waker lives in `waiter`: done if `ready`, sent to
    /// glommio if the core has gone quiet, parked here otherwise.
    fn wait_step(
        &self,
        ready: bool,
        waiter: &mut Option<Waker>,
        cx: &Context<'_>,
    ) -> Poll<Readiness> {
        if ready || self.asleep.get() {
            unpark(waiter, &self.waiting);
            return Poll::Ready(if ready {
                Readiness::Ready
            } else {
                Readiness::Sleep
            });
        }
        if park(waiter, cx, &self.waiting) {
            self.resume();
        }
        Poll::Pending
    }

    /// The poller task: non-blocking `epoll_wait`s between the other tasks' turns while anyone
    /// waits and the core is busy; asleep otherwise.
    async fn run(self: Rc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        // A pass ends on a timer that is already due, not on a yield: yields alone would keep
        // glommio's scheduler from ever finishing a pass. One timer, reset each time, so the
        // wait allocates nothing.
        let mut next_pass = glommio::timer::Timer::new(Duration::ZERO);
        let executor = glommio::executor();
        // Since when the looks have found nothing.
        let mut quiet_since: Option<Instant> = None;
        let mut empty_looks = 0;
        let mut pass_started = Instant::now();
        loop {
            if self.has_nothing_to_do() {
                // Asleep with no writer, or awake with nobody waiting here (every connection is
                // busy, or there are none): wait until that changes. Quiet is counted only
                // while someone waits.
                self.pause_while(|| self.has_nothing_to_do()).await;
                quiet_since = None;
                empty_looks = 0;
                pass_started = Instant::now();
                continue;
            }
            if self.pending_delivery.take() {
                // A background look found something glommio delivers (see `look_for_network`).
                end_pass(&mut next_pass).await;
                pass_started = Instant::now();
                continue;
            }
            if self.asleep.get() {
                // Writers wait for room while the core sleeps: look every DOZE, on a timer
                // (glommio sleeps in between), until room or anything else shows up.
                next_pass.reset(DOZE);
                (&mut next_pass).await;
                if self.poll_once(&mut events).0 > 0 {
                    self.wake_up();
                }
                continue;
            }
            let (events_found, socket_for_glommio) = self.poll_once(&mut events);
            let (watches_woken, watch_for_glommio) = self.poll_watches();
            let found = events_found + watches_woken > 0;
            // Something only a glommio pass delivers: a completion on its latency ring (an
            // accept), something for a task waiting through glommio, or a timer.
            let now = Instant::now();
            let delivery = socket_for_glommio
                || watch_for_glommio
                || executor.need_preempt()
                || self.timer_due(now);
            if found || delivery {
                quiet_since = None;
                empty_looks = 0;
            } else if self.background.get() > 0 {
                // Background work has the core: spinning here would only take turns from it.
                // Its looks wake the poller when the network has something.
                self.pause_while(|| self.background.get() > 0 && !self.pending_delivery.get())
                    .await;
                quiet_since = None;
                empty_looks = 0;
                continue;
            } else {
                empty_looks += 1;
                // Quiet for the window, and over enough looks that the window was not simply
                // spent descheduled (on a shared CPU the thread can be off it for milliseconds).
                if now.saturating_duration_since(*quiet_since.get_or_insert(now))
                    >= self.idle_poll.get()
                    && empty_looks >= QUIET_LOOKS
                {
                    self.fall_asleep();
                    continue;
                }
            }
            if !delivery && now.saturating_duration_since(pass_started) < PASS_BUDGET {
                // Let the rest of this pass run (other task queues too), then look again.
                executor.yield_task_queue_now().await;
            } else {
                end_pass(&mut next_pass).await;
                pass_started = Instant::now();
            }
        }
    }

    /// Parks the poller task while `paused` holds; whatever changes it calls `resume`.
    async fn pause_while(&self, paused: impl Fn() -> bool) {
        std::future::poll_fn(|cx| {
            if paused() {
                *self.task.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// One non-blocking `epoll_wait`; marks and wakes what it reports. Returns the event count,
    /// and whether an event is for a socket glommio waits on (so the pass must end).
    fn poll_once(&self, events: &mut [libc::epoll_event]) -> (usize, bool) {
        // SAFETY: `events` is a valid buffer of `len` entries; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                0,
            )
        };
        if n <= 0 {
            // EINTR or nothing: either way, try again next round.
            return (0, false);
        }
        let hang_up = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        let broken = (libc::EPOLLHUP | libc::EPOLLERR) as u32;
        let mut entries = self.entries.borrow_mut();
        let mut for_glommio = false;
        for event in &events[..n as usize] {
            if let Some(entry) = entries.get_mut(event.u64 as usize) {
                for_glommio |= entry.glommio_waits > 0;
                // Every event may carry data: a later readable edge may be merged into it.
                entry.ready = true;
                entry.hung_up |= event.events & hang_up != 0;
                entry.broken |= event.events & broken != 0;
                wake(&mut entry.waiter, &self.waiting);
                if event.events & (libc::EPOLLOUT as u32 | broken) != 0 {
                    entry.writable = true;
                    wake(&mut entry.write_waiter, &self.write_waiters);
                }
            }
        }
        (n as usize, for_glommio)
    }

    /// For CPU-bound background work, between chunks of it: if [`BACKGROUND_SLICE`] has passed
    /// since the last such look, one non-blocking `epoll_wait` (and the channel checks), waking
    /// what it finds as the poller would. Returns true if the network now has work, so the
    /// background task should yield its task queue: the network's tasks then run before it
    /// (its queue has far fewer shares, so its virtual runtime is ahead).
    pub fn look_for_network(&self) -> bool {
        let now = Instant::now();
        if now.saturating_duration_since(self.background_look.get()) < BACKGROUND_SLICE {
            return false;
        }
        self.background_look.set(now);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let (events_found, socket_for_glommio) = self.poll_once(&mut events);
        let (watches_woken, watch_for_glommio) = self.poll_watches();
        let delivery = socket_for_glommio || watch_for_glommio || self.timer_due(now);
        if delivery {
            self.pending_delivery.set(true);
        }
        let found = events_found + watches_woken > 0 || delivery;
        if found {
            // Something arrived: a sleeping core is busy again, a paused poller looks again.
            self.wake_up();
            self.resume();
            self.background_yielded.set(true);
        }
        found
    }

    /// A background task is being polled (it runs, and stays runnable until it waits).
    fn background_running(&self, was_runnable: bool) {
        if !was_runnable {
            self.background.set(self.background.get() + 1);
        }
        self.background_yielded.set(false);
    }

    /// A background task's poll returned; `finished` if it is done. Returns whether it is still
    /// runnable (it yielded rather than waits for something).
    fn background_returned(&self, finished: bool) -> bool {
        let runnable = !finished && self.background_yielded.take();
        if !runnable {
            self.background.set(self.background.get().saturating_sub(1));
            // The poller may have stepped aside for it.
            self.resume();
        }
        runnable
    }

    /// Asleep with no writer to look after, or awake with no task waiting here at all.
    fn has_nothing_to_do(&self) -> bool {
        if self.pending_delivery.get() {
            return false;
        }
        let writers = self.write_waiters.get();
        if self.asleep.get() {
            writers == 0
        } else {
            self.waiting.get() + writers == 0
        }
    }

    /// Whether a short timer has fallen due; forgets those that have.
    fn timer_due(&self, now: Instant) -> bool {
        let mut deadlines = self.deadlines.borrow_mut();
        let mut due = false;
        while deadlines.peek().is_some_and(|Reverse(at)| *at <= now) {
            deadlines.pop();
            due = true;
        }
        due
    }

    /// Runs the checks that tasks wait on; wakes those that are true. Returns how many, and
    /// whether a check is true for a task that waits through glommio (so the pass must end).
    fn poll_watches(&self) -> (usize, bool) {
        let mut woken = 0;
        let mut for_glommio = false;
        for (_, watch) in self.watches.borrow_mut().iter_mut() {
            if watch.waiter.is_some() && (watch.ready)() {
                wake(&mut watch.waiter, &self.waiting);
                woken += 1;
            } else if watch.glommio_waits > 0 && (watch.ready)() {
                for_glommio = true;
            }
        }
        (woken, for_glommio)
    }

    /// The core has gone quiet: every waiter goes to wait through glommio, which can sleep.
    fn fall_asleep(&self) {
        self.asleep.set(true);
        for (_, watch) in self.watches.borrow_mut().iter_mut() {
            wake(&mut watch.waiter, &self.waiting);
        }
        // Readers go to glommio; writers stay (see `wait_writable`).
        for (_, entry) in self.entries.borrow_mut().iter_mut() {
            wake(&mut entry.waiter, &self.waiting);
        }
    }
}

/// Lets glommio's current scheduler pass end and resumes in the next one, on `timer`.
async fn end_pass(timer: &mut glommio::timer::Timer) {
    timer.reset(NEXT_PASS);
    let due = Instant::now() + NEXT_PASS;
    std::future::poll_fn(|cx| {
        let poll = Pin::new(&mut *timer).poll(cx);
        if poll.is_pending() {
            // Registered: make sure it is due when glommio looks, so it does not park.
            while Instant::now() < due {
                std::hint::spin_loop();
            }
        }
        poll.map(|_| ())
    })
    .await
}

/// A wait that glommio is doing on a socket or for a watch; see [`Poller::glommio_wait`].
pub struct GlommioWait<'a> {
    poller: &'a Poller,
    waited: Waited,
}

#[derive(Clone, Copy)]
enum Waited {
    Socket(usize),
    Watch(usize),
}

impl<'a> GlommioWait<'a> {
    fn new(poller: &'a Poller, waited: Waited) -> Self {
        poller.count_glommio_wait(waited, 1);
        GlommioWait { poller, waited }
    }
}

impl Drop for GlommioWait<'_> {
    fn drop(&mut self) {
        self.poller.count_glommio_wait(self.waited, -1);
    }
}

/// Stores the task's waker in `slot`; returns true, and counts it in `count`, if the slot was
/// empty (a new waiter).
fn park(slot: &mut Option<Waker>, cx: &Context<'_>, count: &Cell<usize>) -> bool {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => false,
        Some(waker) => {
            *waker = cx.waker().clone();
            false
        }
        None => {
            *slot = Some(cx.waker().clone());
            count.set(count.get() + 1);
            true
        }
    }
}

/// Takes the waker out of `slot`, uncounting it from `count`.
fn unpark(slot: &mut Option<Waker>, count: &Cell<usize>) -> Option<Waker> {
    let waker = slot.take();
    if waker.is_some() {
        count.set(count.get() - 1);
    }
    waker
}

/// Wakes the task parked in `slot`, if any.
fn wake(slot: &mut Option<Waker>, count: &Cell<usize>) {
    if let Some(waker) = unpark(slot, count) {
        waker.wake();
    }
}

/// A task of CPU-bound work (a background queue's), tracked so that while it runs or is runnable
/// the poller leaves the core to it and it looks for network work itself
/// ([`Poller::look_for_network`], from [`super::yield_if_needed`]).
pub struct Background<F> {
    inner: Pin<Box<F>>,
    poller: Option<Rc<Poller>>,
    runnable: bool,
}

impl<F: Future> Background<F> {
    /// Must be made on the executor that runs it.
    pub fn new(inner: F) -> Self {
        Background {
            inner: Box::pin(inner),
            poller: current().ok(),
            runnable: false,
        }
    }
}

impl<F: Future> Future for Background<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if let Some(poller) = &this.poller {
            poller.background_running(this.runnable);
        }
        let poll = this.inner.as_mut().poll(cx);
        if let Some(poller) = &this.poller {
            this.runnable = poller.background_returned(poll.is_ready());
        }
        poll
    }
}

impl<F> Drop for Background<F> {
    fn drop(&mut self) {
        if let (true, Some(poller)) = (self.runnable, &self.poller) {
            poller
                .background
                .set(poller.background.get().saturating_sub(1));
            poller.resume();
        }
    }
}
