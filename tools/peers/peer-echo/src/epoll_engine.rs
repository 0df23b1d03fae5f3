//! The epoll engine: the fastest echo this machine allows, the floor under everything percore
//! does. One pinned thread per core with its own SO_REUSEPORT listener and epoll set, plain
//! non-blocking `recv` and `send`: per readable event one `recv` and, for the whole frames it
//! completed, one `send`. No runtime, no task, no timer, no queue.
//!
//! Like percore (`--idle-poll`), a thread keeps polling (`epoll_wait` with a zero timeout) for
//! `idle_poll` after its last event before it sleeps in the kernel, so neither side of a
//! comparison pays wake-ups the other does not.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::frames::{complete_frames, MAX_FRAME, READ_CHUNK};

/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;
/// The listener's token in the epoll set; connections use their file descriptor.
const LISTENER: u64 = u64::MAX;

/// One client connection: what it sent that is not yet a whole frame, and what could not be
/// sent back yet (while any is left, the connection is not read: the client is pushed back).
struct Echo {
    stream: TcpStream,
    input: Vec<u8>,
    filled: usize,
    unsent: Vec<u8>,
}

/// An epoll set.
struct Epoll(RawFd);

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn control(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` outlives the call; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.0, op, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits at most `timeout_ms` (-1: until an event) and returns how many events it wrote.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `events.len()` entries into `events`.
        let n = unsafe {
            libc::epoll_wait(
                self.0,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

/// Serves `socket` on `cpu` from a thread of its own until the process ends.
pub fn start(
    cpu: usize,
    socket: Socket,
    verbatim: bool,
    idle_poll: Duration,
) -> anyhow::Result<std::thread::JoinHandle<io::Result<()>>> {
    let thread = std::thread::Builder::new()
        .name(format!("peer-echo-{cpu}"))
        .spawn(move || {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                eprintln!("peer-echo: cannot pin a thread to CPU {cpu}; it runs unpinned");
            }
            serve(socket.into(), verbatim, idle_poll)
        })?;
    Ok(thread)
}

fn serve(listener: TcpListener, verbatim: bool, idle_poll: Duration) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new()?;
    epoll.control(
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32,
        LISTENER,
    )?;
    let mut conns: HashMap<RawFd, Echo> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    let mut last_event = Instant::now();
    loop {
        let polling = last_event.elapsed() < idle_poll;
        let n = epoll.wait(&mut events, if polling { 0 } else { -1 })?;
        if n > 0 {
            last_event = Instant::now();
        }
        for event in &events[..n] {
            let (token, ready) = (event.u64, event.events);
            if token == LISTENER {
                accept_all(&listener, &epoll, &mut conns);
                continue;
            }
            let fd = token as RawFd;
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            let open = if ready & libc::EPOLLOUT as u32 != 0 {
                flush(conn, &epoll, fd)
            } else {
                echo(conn, &epoll, fd, verbatim)
            };
            if !open {
                // Closing the stream takes it out of the epoll set.
                conns.remove(&fd);
            }
        }
    }
}

fn accept_all(listener: &TcpListener, epoll: &Epoll, conns: &mut HashMap<RawFd, Echo>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let ready = stream.set_nonblocking(true).and_then(|()| {
                    stream.set_nodelay(true)?;
                    let fd = stream.as_raw_fd();
                    epoll.control(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, fd as u64)
                });
                match ready {
                    Ok(()) => {
                        let echo = Echo {
                            input: vec![0; READ_CHUNK],
                            filled: 0,
                            unsent: Vec::new(),
                            stream,
                        };
                        conns.insert(echo.stream.as_raw_fd(), echo);
                    }
                    Err(e) => eprintln!("peer-echo: cannot serve a connection: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and the like: the connection stays queued; try at the next event.
                eprintln!("peer-echo: accept failed: {e}");
                return;
            }
        }
    }
}

/// One `recv`, then one `send` of the whole frames it completed. Returns whether the
/// connection stays open.
fn echo(conn: &mut Echo, epoll: &Epoll, fd: RawFd, verbatim: bool) -> bool {
    if conn.filled == conn.input.len() {
        // A frame larger than the buffer: grow, up to the largest frame.
        if conn.input.len() >= MAX_FRAME + 4 {
            return false;
        }
        let grown = (conn.input.len() * 2).min(MAX_FRAME + 4);
        conn.input.resize(grown, 0);
    }
    match conn.stream.read(&mut conn.input[conn.filled..]) {
        Ok(0) => return false,
        Ok(n) => conn.filled += n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return true
        }
        Err(_) => return false,
    }
    let Some(end) = complete_frames(&mut conn.input[..conn.filled], verbatim) else {
        return false;
    };
    if end == 0 {
        return true;
    }
    let sent = match conn.stream.write(&conn.input[..end]) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            0
        }
        Err(_) => return false,
    };
    if sent < end {
        // The client reads slower than it writes: keep the rest, stop reading until it is sent.
        conn.unsent.extend_from_slice(&conn.input[sent..end]);
        let out = libc::EPOLLOUT as u32;
        if epoll
            .control(libc::EPOLL_CTL_MOD, fd, out, fd as u64)
            .is_err()
        {
            return false;
        }
    }
    conn.input.copy_within(end..conn.filled, 0);
    conn.filled -= end;
    true
}

/// Sends what a short `send` left; once all is out, reads again.
fn flush(conn: &mut Echo, epoll: &Epoll, fd: RawFd) -> bool {
    match conn.stream.write(&conn.unsent) {
        Ok(n) => {
            conn.unsent.drain(..n);
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) => {}
        Err(_) => return false,
    }
    if conn.unsent.is_empty() {
        let read = libc::EPOLLIN as u32;
        return epoll
            .control(libc::EPOLL_CTL_MOD, fd, read, fd as u64)
            .is_ok();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_on_port(verbatim: bool, idle_poll: Duration) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, verbatim, idle_poll));
        addr
    }

    crate::engine_tests::engine_suite!(serve_on_port);
}
