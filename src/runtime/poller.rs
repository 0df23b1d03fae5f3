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
//! one [`Poller`] task asks the kernel about all of them with one non-blocking `epoll_wait` per
//! scheduling round. When that has found nothing for the idle-poll window (the core has gone
//! quiet), the poller hands every waiting connection back to glommio, whose io_uring poll then
//! lets the executor sleep. The first connection that wakes from that sleep restarts the poller.
//! The window trades a little CPU after the last request (at most the window, once per quiet
//! spell) for not paying glommio's wake-up path while requests keep coming; Seastar's reactor
//! makes the same trade with its idle-poll time.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// How long a server core keeps looking after its last event before it may sleep (the
/// `--idle-poll` default). Short on purpose: measured against longer windows it gave the same
/// throughput on a core of its own, and on a machine that also runs the clients a longer spin
/// takes CPU they need.
pub const DEFAULT_IDLE_POLL: Duration = Duration::from_micros(20);

/// Events taken from the kernel per `epoll_wait`; more simply wait for the next pass.
const EVENTS_PER_WAIT: usize = 256;

/// Looks the poller takes within one glommio scheduler pass while they keep finding events.
const ROUNDS_PER_PASS: usize = 4;

/// The poller's timer between two looks: due by the time the executor has run everything else.
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
    /// The connection's task while it waits here.
    waiter: Option<Waker>,
}

/// One core's epoll set and the task that polls it.
pub struct Poller {
    epoll: OwnedFd,
    entries: RefCell<Slab<Entry>>,
    /// Entries with a waiter.
    waiting: Cell<usize>,
    /// The poller handed its waiters to glommio and stopped; the next wake-up restarts it.
    asleep: Cell<bool>,
    /// The poller task, while it has nothing to poll for.
    task: RefCell<Option<Waker>>,
    idle_poll: Cell<Duration>,
    executor: usize,
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
            waiting: Cell::new(0),
            asleep: Cell::new(false),
            task: RefCell::new(None),
            idle_poll: Cell::new(IDLE_POLL.with(Cell::get)),
            executor,
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
            waiter: None,
        });
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
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
        if let Some(entry) = self.entries.borrow_mut().try_remove(token) {
            if entry.waiter.is_some() {
                self.waiting.set(self.waiting.get() - 1);
            }
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
        self.asleep.set(false);
    }

    /// Waits until the socket may have data, or until the core goes quiet.
    pub async fn wait(&self, token: usize) -> Readiness {
        std::future::poll_fn(|cx| self.poll_wait(token, cx)).await
    }

    fn poll_wait(&self, token: usize, cx: &Context<'_>) -> Poll<Readiness> {
        let mut entries = self.entries.borrow_mut();
        let Some(entry) = entries.get_mut(token) else {
            return Poll::Ready(Readiness::Ready);
        };
        if entry.ready {
            if entry.waiter.take().is_some() {
                self.waiting.set(self.waiting.get() - 1);
            }
            return Poll::Ready(Readiness::Ready);
        }
        if self.asleep.get() || self.idle_poll.get().is_zero() {
            if entry.waiter.take().is_some() {
                self.waiting.set(self.waiting.get() - 1);
            }
            return Poll::Ready(Readiness::Sleep);
        }
        match &entry.waiter {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => {
                if entry.waiter.replace(cx.waker().clone()).is_none() {
                    self.waiting.set(self.waiting.get() + 1);
                }
            }
        }
        drop(entries);
        if let Some(task) = self.task.borrow_mut().take() {
            task.wake();
        }
        Poll::Pending
    }

    /// The poller task: one `epoll_wait` per pass of the executor while anyone waits and the
    /// core is busy; asleep otherwise.
    async fn run(self: Rc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        // Between two looks the poller waits on a timer that is already due, not on a yield: a
        // task that only yields would keep glommio's scheduler from ever finishing a pass, and
        // glommio reaps io_uring (accepts, messages from other cores, timers) only between
        // passes. One timer, reset each time, so the wait allocates nothing.
        let mut next_pass = glommio::timer::Timer::new(Duration::ZERO);
        // Since when the passes have found nothing; the clock is read only then.
        let mut quiet_since: Option<Instant> = None;
        loop {
            if self.waiting.get() == 0 || self.asleep.get() {
                std::future::poll_fn(|cx| {
                    if self.waiting.get() > 0 && !self.asleep.get() {
                        Poll::Ready(())
                    } else {
                        *self.task.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    }
                })
                .await;
                quiet_since = None;
            }
            if self.poll_once(&mut events) > 0 {
                quiet_since = None;
                // While looks keep finding work, take a few more inside this glommio pass:
                // every pass costs glommio a preemption-timer submission and allocations, and
                // a short run of yields delays its reaping of io_uring by microseconds only.
                let mut rounds = 1;
                while rounds < ROUNDS_PER_PASS {
                    futures_lite::future::yield_now().await;
                    if self.waiting.get() == 0 || self.poll_once(&mut events) == 0 {
                        break;
                    }
                    rounds += 1;
                }
            } else {
                let now = Instant::now();
                let since = *quiet_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= self.idle_poll.get() {
                    self.fall_asleep();
                    continue;
                }
            }
            next_pass.reset(NEXT_PASS);
            (&mut next_pass).await;
        }
    }

    /// One non-blocking `epoll_wait`; marks and wakes what it reports. Returns the event count.
    fn poll_once(&self, events: &mut [libc::epoll_event]) -> usize {
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
            return 0;
        }
        let hang_up = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        let mut entries = self.entries.borrow_mut();
        for event in &events[..n as usize] {
            if let Some(entry) = entries.get_mut(event.u64 as usize) {
                entry.ready = true;
                entry.hung_up |= event.events & hang_up != 0;
                if let Some(waiter) = entry.waiter.take() {
                    self.waiting.set(self.waiting.get() - 1);
                    waiter.wake();
                }
            }
        }
        n as usize
    }

    /// The core has gone quiet: every waiter goes to wait through glommio, which can sleep.
    fn fall_asleep(&self) {
        self.asleep.set(true);
        let mut entries = self.entries.borrow_mut();
        for (_, entry) in entries.iter_mut() {
            if let Some(waiter) = entry.waiter.take() {
                waiter.wake();
            }
        }
        self.waiting.set(0);
    }
}
