//! The io_uring engine: the echo with the fewest system calls this machine allows. One pinned
//! thread per core with its own SO_REUSEPORT listener and its own ring: one multishot accept,
//! per connection one multishot receive into a ring of provided buffers, and per connection one
//! `send` of the whole frames that a batch of completions finished. Completions are drained in
//! batches: one `io_uring_enter` submits everything the last batch asked for and waits for the
//! next.
//!
//! The ring is set up single-issuer with deferred task work (Linux 6.1 or later), so the kernel
//! posts completions only when this thread asks for them and never interrupts it to do so. Like
//! the epoll engine it polls (`io_uring_enter` without waiting) for `idle_poll` after its last
//! completion, then sleeps in the kernel until one arrives.
//!
//! Bounds: a receive copies its bytes into the connection's input and gives the buffer straight
//! back to the kernel. While a send is outstanding the input keeps what arrives; once it holds
//! [`PAUSE_AT`] bytes, the receive is cancelled (the client is pushed back, as the epoll engine
//! does by not reading) and armed again when the send is done. So a connection holds at most
//! one frame (up to [`MAX_FRAME`]), or [`PAUSE_AT`] plus what the kernel delivered before the
//! cancel took effect (at most the provided ring's [`BUFFERS`] x [`BUFFER_SIZE`]).

use std::io;
use std::net::{Shutdown, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::SockRef;

use crate::frames::{complete_frames, MAX_FRAME};

/// Submission queue entries; the completion queue has four times as many.
const SUBMISSIONS: u32 = 1024;
/// Provided receive buffers per core (a power of two, as the kernel's buffer ring needs).
pub const BUFFERS: u16 = 256;
/// Bytes in each provided buffer: the most one receive completion carries.
pub const BUFFER_SIZE: usize = 8 << 10;
/// The provided-buffer group of every receive.
const BUFFER_GROUP: u16 = 0;
/// Input held while a send is outstanding at which the receive is paused.
pub const PAUSE_AT: usize = 64 << 10;
/// `IORING_ENTER_GETEVENTS`: with deferred task work, only an enter carrying it posts completions.
const ENTER_GETEVENTS: u32 = 1;

/// What a completion's `user_data` is for: the kind in the high half, the connection's slot in
/// the low half.
const ACCEPT: u64 = 1 << 32;
const RECV: u64 = 2 << 32;
const SEND: u64 = 3 << 32;
const CANCEL: u64 = 4 << 32;
const KIND: u64 = 0xffff_ffff << 32;

/// One client connection. Its fd is closed (on drop) only when no receive or send of it is
/// still in the kernel.
struct Conn {
    fd: OwnedFd,
    /// Received bytes not yet sent back: whole frames waiting for the outstanding send, then
    /// the start of a partial frame.
    input: Vec<u8>,
    /// The frames being sent; `output[sent..]` is still to go. Neither moved nor resized while
    /// `sending`, as the kernel reads it.
    output: Vec<u8>,
    sent: usize,
    sending: bool,
    /// A multishot receive of this connection is in the kernel.
    receiving: bool,
    /// The receive was cancelled to push the client back; armed again once the send is done.
    paused: bool,
    closing: bool,
    /// Listed in `Engine::ready`: it received since the last batch ended.
    ready: bool,
}

/// The kernel's ring of provided buffers and the memory it points into. Never freed: the
/// kernel may write into the buffers until a ring's (asynchronous) teardown has finished, and
/// a thread's buffers live as long as its ring, which is the process's lifetime.
struct BufferRing {
    entries: *mut types::BufRingEntry,
    memory: *mut u8,
    /// The tail as published to the kernel, and buffers given back since.
    tail: u16,
    returned: u16,
}

impl BufferRing {
    fn new() -> io::Result<BufferRing> {
        let entries_layout = std::alloc::Layout::from_size_align(
            usize::from(BUFFERS) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        let memory_layout =
            std::alloc::Layout::from_size_align(usize::from(BUFFERS) * BUFFER_SIZE, 4096)
                .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size.
        let (entries, memory) = unsafe {
            (
                std::alloc::alloc_zeroed(entries_layout) as *mut types::BufRingEntry,
                std::alloc::alloc_zeroed(memory_layout),
            )
        };
        if entries.is_null() || memory.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut ring = BufferRing {
            entries,
            memory,
            tail: 0,
            returned: 0,
        };
        for bid in 0..BUFFERS {
            ring.give_back(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// The bytes a receive completion put into buffer `bid`, or `None` if the kernel's report
    /// does not fit the ring.
    fn received(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= BUFFERS || len > BUFFER_SIZE {
            return None;
        }
        // SAFETY: in bounds of `memory`; the kernel wrote it and will not touch it again until
        // the buffer is given back (after this slice is last used).
        Some(unsafe {
            std::slice::from_raw_parts(self.memory.add(usize::from(bid) * BUFFER_SIZE), len)
        })
    }

    /// Puts buffer `bid` back in the ring; the kernel sees it at the next `publish`.
    fn give_back(&mut self, bid: u16) {
        let at = usize::from(self.tail.wrapping_add(self.returned) & (BUFFERS - 1));
        // SAFETY: `at` < BUFFERS; the kernel only reads entries up to the published tail, and
        // this one is past it. The setters leave the entry's `resv` (entry 0's is the tail) alone.
        unsafe {
            let entry = &mut *self.entries.add(at);
            entry.set_addr(self.memory.add(usize::from(bid) * BUFFER_SIZE) as u64);
            entry.set_len(BUFFER_SIZE as u32);
            entry.set_bid(bid);
        }
        self.returned += 1;
    }

    fn publish(&mut self) {
        if self.returned == 0 {
            return;
        }
        self.tail = self.tail.wrapping_add(self.returned);
        self.returned = 0;
        // SAFETY: the tail is a u16 inside entry 0, aligned, shared with the kernel, which
        // reads it; a release store makes the entries written before visible first.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

/// One core's echo: its ring, its provided buffers, its listener and its connections (a slab
/// indexed by the slot in each submission's `user_data`).
struct Engine {
    ring: IoUring,
    buffers: BufferRing,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    /// Connections that received in this batch, to send for once it is drained.
    ready: Vec<u32>,
    completions: Vec<cqueue::Entry>,
    verbatim: bool,
    idle_poll: Duration,
}

/// Serves `listener` from a thread of its own, pinned to `cpu` if given, until the process
/// ends. Returns once the thread's ring is set up, or with the reason it cannot be (io_uring
/// missing or disabled).
pub fn start(
    cpu: Option<usize>,
    listener: TcpListener,
    verbatim: bool,
    idle_poll: Duration,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    let (ready, set_up) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(cpu.map_or("peer-echo-uring".into(), |c| format!("peer-echo-uring-{c}")))
        .spawn(move || {
            if let Some(cpu) = cpu {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    eprintln!("peer-echo: cannot pin a thread to CPU {cpu}; it runs unpinned");
                }
            }
            // The ring is made on the thread that uses it: a single-issuer ring refuses others.
            match Engine::new(listener, verbatim, idle_poll) {
                Ok(engine) => {
                    let _ = ready.send(Ok(()));
                    engine.run()
                }
                Err(e) => {
                    let message = e.to_string();
                    let _ = ready.send(Err(e));
                    Err(io::Error::other(message))
                }
            }
        })?;
    match set_up.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other(
            "the io_uring thread ended before setting up",
        )),
    }
}

impl Engine {
    fn new(listener: TcpListener, verbatim: bool, idle_poll: Duration) -> io::Result<Engine> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(SUBMISSIONS * 4)
            .build(SUBMISSIONS)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot set up io_uring ({e}): the uring engine needs Linux 6.1 or \
                         later with io_uring enabled (sysctl kernel.io_uring_disabled = 0)"
                    ),
                )
            })?;
        let buffers = BufferRing::new()?;
        // SAFETY: the ring of entries is page aligned, BUFFERS long and never freed.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries as u64,
                BUFFERS,
                BUFFER_GROUP,
                0,
            )
        }
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot register io_uring provided buffers: {e}"),
            )
        })?;
        let mut engine = Engine {
            ring,
            buffers,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
            completions: Vec::with_capacity(SUBMISSIONS as usize * 4),
            verbatim,
            idle_poll,
        };
        engine.arm_accept()?;
        engine.ring.submit()?;
        Ok(engine)
    }

    fn run(mut self) -> io::Result<()> {
        let result = self.serve();
        // Leave the buffers and the connections' output alone (leaked) once the ring is gone:
        // its teardown in the kernel may still be using them.
        let Engine { ring, conns, .. } = self;
        drop(ring);
        std::mem::forget(conns);
        result
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut last_completion = Instant::now();
        loop {
            let polling = last_completion.elapsed() < self.idle_poll;
            let entered = if polling {
                let pending = self.ring.submission().len() as u32;
                // SAFETY: no argument is passed; the flags are the documented GETEVENTS.
                unsafe {
                    self.ring
                        .submitter()
                        .enter::<libc::sigset_t>(pending, 0, ENTER_GETEVENTS, None)
                }
            } else {
                self.ring.submit_and_wait(1)
            };
            match entered {
                Ok(_) => {}
                // EBUSY: completions are waiting in the kernel for room; draining makes it.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            self.completions.extend(self.ring.completion());
            if self.completions.is_empty() {
                continue;
            }
            last_completion = Instant::now();
            let mut completions = std::mem::take(&mut self.completions);
            for completion in completions.drain(..) {
                self.complete(&completion)?;
            }
            self.completions = completions;
            let mut ready = std::mem::take(&mut self.ready);
            for slot in ready.drain(..) {
                if let Some(conn) = self.conn(slot) {
                    conn.ready = false;
                }
                self.send_frames(slot)?;
                self.free_if_done(slot);
            }
            self.ready = ready;
            self.buffers.publish();
        }
    }

    fn conn(&mut self, slot: u32) -> Option<&mut Conn> {
        self.conns.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Queues one submission, handing the queue to the kernel first if it is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an entry points to (provided buffers, a connection's output)
            // stays put until its completion arrives.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let fd = types::Fd(self.listener.as_raw_fd());
        self.push(opcode::AcceptMulti::new(fd).build().user_data(ACCEPT))
    }

    fn arm_recv(&mut self, slot: u32) -> io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        conn.receiving = true;
        let fd = types::Fd(conn.fd.as_raw_fd());
        self.push(
            opcode::RecvMulti::new(fd, BUFFER_GROUP)
                .build()
                .user_data(RECV | u64::from(slot)),
        )
    }

    fn complete(&mut self, completion: &cqueue::Entry) -> io::Result<()> {
        let (data, res, flags) = (
            completion.user_data(),
            completion.result(),
            completion.flags(),
        );
        let slot = data as u32;
        match data & KIND {
            ACCEPT => {
                if res >= 0 {
                    // SAFETY: the kernel made this fd for us and nothing else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    self.add_conn(fd)?;
                } else {
                    // EMFILE and the like: the connection stays queued.
                    let e = io::Error::from_raw_os_error(-res);
                    eprintln!("peer-echo: accept failed: {e}");
                }
                if !cqueue::more(flags) {
                    self.arm_accept()?;
                }
                Ok(())
            }
            RECV => self.received(slot, res, flags),
            SEND => self.sent(slot, res),
            // A cancel's own completion: the cancelled receive reports separately.
            _ => Ok(()),
        }
    }

    fn add_conn(&mut self, fd: OwnedFd) -> io::Result<()> {
        if let Err(e) = SockRef::from(&fd).set_tcp_nodelay(true) {
            eprintln!("peer-echo: cannot serve a connection: {e}");
            return Ok(());
        }
        let conn = Conn {
            fd,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            sending: false,
            receiving: false,
            paused: false,
            closing: false,
            ready: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.conns[slot as usize] = Some(conn);
                slot
            }
            None => {
                let Ok(slot) = u32::try_from(self.conns.len()) else {
                    eprintln!("peer-echo: too many connections");
                    return Ok(());
                };
                self.conns.push(Some(conn));
                slot
            }
        };
        self.arm_recv(slot)
    }

    fn received(&mut self, slot: u32, res: i32, flags: u32) -> io::Result<()> {
        let bid = cqueue::buffer_select(flags);
        let Some(conn) = self.conns.get_mut(slot as usize).and_then(Option::as_mut) else {
            if let Some(bid) = bid {
                self.buffers.give_back(bid);
            }
            return Ok(());
        };
        if !cqueue::more(flags) {
            conn.receiving = false;
        }
        let mut fault = false;
        if let Some(bid) = bid {
            let len = usize::try_from(res).unwrap_or(0);
            match self.buffers.received(bid, len) {
                Some(bytes) if !conn.closing => conn.input.extend_from_slice(bytes),
                Some(_) => {}
                None => fault = true,
            }
            self.buffers.give_back(bid);
        }
        let closed = fault
            || res == 0
            || (res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED)
            || conn.input.len() > MAX_FRAME + 4 + PAUSE_AT + usize::from(BUFFERS) * BUFFER_SIZE;
        if closed {
            return self.close(slot);
        }
        if res > 0 && !conn.ready && !conn.closing {
            conn.ready = true;
            self.ready.push(slot);
        }
        if conn.sending && conn.input.len() >= PAUSE_AT {
            return self.pause(slot);
        }
        if !conn.receiving && !conn.paused && !conn.closing {
            // The multishot receive ended (ENOBUFS: the ring ran dry until this batch ends).
            return self.arm_recv(slot);
        }
        self.free_if_done(slot);
        Ok(())
    }

    /// Cancels the receive while the client's replies are not sent: the client is pushed back.
    fn pause(&mut self, slot: u32) -> io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if conn.paused || conn.closing {
            return Ok(());
        }
        conn.paused = true;
        if conn.receiving {
            let cancel = opcode::AsyncCancel::new(RECV | u64::from(slot)).build();
            return self.push(cancel.user_data(CANCEL | u64::from(slot)));
        }
        Ok(())
    }

    fn sent(&mut self, slot: u32, res: i32) -> io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        let Ok(n) = usize::try_from(res) else {
            conn.sending = false;
            return self.close(slot);
        };
        conn.sent += n;
        if n == 0 || conn.closing {
            conn.sending = false;
            return self.close(slot);
        }
        if conn.sent < conn.output.len() {
            // A short send: the rest goes next, from where it stopped.
            let rest = &conn.output[conn.sent..];
            let entry = opcode::Send::new(
                types::Fd(conn.fd.as_raw_fd()),
                rest.as_ptr(),
                u32::try_from(rest.len()).unwrap_or(u32::MAX),
            )
            .build()
            .user_data(SEND | u64::from(slot));
            return self.push(entry);
        }
        conn.sending = false;
        self.send_frames(slot)
    }

    /// Sends the whole frames the input holds, unless a send is outstanding; resumes a paused
    /// receive once the input is below [`PAUSE_AT`] or no send is outstanding.
    fn send_frames(&mut self, slot: u32) -> io::Result<()> {
        let verbatim = self.verbatim;
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if conn.closing || conn.sending {
            return Ok(());
        }
        let Some(end) = complete_frames(&mut conn.input, verbatim) else {
            return self.close(slot);
        };
        if end > 0 {
            if end == conn.input.len() {
                std::mem::swap(&mut conn.input, &mut conn.output);
                conn.input.clear();
            } else {
                conn.output.clear();
                conn.output.extend_from_slice(&conn.input[..end]);
                conn.input.drain(..end);
            }
            // Frames are at most MAX_FRAME, but a batch of them may be longer than a u32 says:
            // send what fits, the rest follows as after a short send.
            let len = u32::try_from(conn.output.len()).unwrap_or(u32::MAX);
            conn.sent = 0;
            conn.sending = true;
            let entry =
                opcode::Send::new(types::Fd(conn.fd.as_raw_fd()), conn.output.as_ptr(), len)
                    .build()
                    .user_data(SEND | u64::from(slot));
            self.push(entry)?;
        }
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if conn.sending && conn.input.len() >= PAUSE_AT {
            return self.pause(slot);
        }
        if conn.paused {
            conn.paused = false;
            if !conn.receiving {
                return self.arm_recv(slot);
            }
        }
        Ok(())
    }

    /// Shuts the connection down, which ends its receive and send in the kernel; the fd is
    /// closed once both have reported.
    fn close(&mut self, slot: u32) -> io::Result<()> {
        let Some(conn) = self.conn(slot) else {
            return Ok(());
        };
        if !conn.closing {
            conn.closing = true;
            conn.input = Vec::new();
            // Fails only on a socket that is already down, which is what this asks for.
            let _ = SockRef::from(&conn.fd).shutdown(Shutdown::Both);
            if conn.receiving {
                let cancel = opcode::AsyncCancel::new(RECV | u64::from(slot)).build();
                self.push(cancel.user_data(CANCEL | u64::from(slot)))?;
            }
        }
        self.free_if_done(slot);
        Ok(())
    }

    fn free_if_done(&mut self, slot: u32) {
        let done = self
            .conns
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.closing && !c.receiving && !c.sending && !c.ready);
        if done {
            self.conns[slot as usize] = None;
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(verbatim: bool, idle_poll: Duration) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // No skipping: a machine without io_uring fails this test, with the reason.
        start(None, listener, verbatim, idle_poll)
            .unwrap_or_else(|e| panic!("the io_uring engine cannot start here: {e}"));
        addr
    }

    crate::engine_tests::engine_suite!(serve);
}
