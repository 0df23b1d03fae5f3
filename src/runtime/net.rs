//! Sockets: SO_REUSEPORT listeners built with socket2 and adopted by glommio, and [`Conn`], the
//! connection type the server, the client and the load generator read and write through.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use futures_lite::AsyncReadExt;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use super::poller::{self, Poller, Readiness};

/// Makes a listening socket on `addr` with SO_REUSEPORT and SO_REUSEADDR, so that every core
/// can bind its own listener to the same address and the kernel spreads connections.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(backlog)?;
    Ok(socket)
}

/// Fails with `AddrInUse` if another socket listens on `addr`.
///
/// SO_REUSEPORT lets every socket of the same user that also sets it share a port, so without
/// this check a second server started on a taken port would silently split its traffic with
/// the first. A socket bound without SO_REUSEPORT is refused by any listener already there.
/// The probe sets SO_REUSEADDR, so the connections a stopped or killed server left behind
/// (TIME_WAIT, FIN_WAIT) do not keep its successor off the port for a minute.
pub fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.set_reuse_address(true)?;
    probe.bind(&SockAddr::from(addr))
}

/// Makes `count` listeners sharing one address. With port 0 the first socket picks the port and
/// the others bind to the same one, so all of them form one SO_REUSEPORT group.
pub fn reuseport_group(addr: SocketAddr, count: usize, backlog: i32) -> io::Result<Vec<Socket>> {
    ensure_port_free(addr)?;
    let first = reuseport_listener(addr, backlog)?;
    let bound = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has no IP address"))?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(reuseport_listener(bound, backlog)?);
    }
    Ok(sockets)
}

/// The local address a socket is bound to.
pub fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("socket has no IP address"))
}

/// A listener adopted by the current core's executor.
pub struct Listener {
    inner: glommio::net::TcpListener,
    /// The listener's place in the core's poller, which ends a scheduler pass when a
    /// connection arrives (glommio submits the accept only between passes).
    watched: Option<(Rc<Poller>, usize, RawFd)>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((poller, token, fd)) = &self.watched {
            poller.deregister(*token, *fd);
        }
    }
}

impl Listener {
    /// Hands a listening socket made by [`reuseport_listener`] to this core's executor.
    pub fn adopt(socket: Socket) -> Listener {
        // Without the poller (it could not make its epoll set) accepts wait for the next pass.
        let watched = poller::current().ok().and_then(|poller| {
            let fd = socket.as_raw_fd();
            let token = poller.register_listener(fd).ok()?;
            Some((poller, token, fd))
        });
        // SAFETY: the fd comes from a listening socket we own and give up here.
        let inner = unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) };
        Listener { inner, watched }
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<Conn> {
        let stream = self.inner.accept().await.map_err(io::Error::from)?;
        Conn::new(stream)
    }
}

/// One TCP connection, owned by the core that accepted or opened it.
///
/// Reads and writes are plain non-blocking system calls. When a socket has nothing to read, the
/// connection waits on the core's [`Poller`] while the core is busy and through glommio's
/// io_uring poll when it is quiet; when it has no room to write, it always waits on the poller
/// (see [`super::poller`]).
pub struct Conn {
    stream: glommio::net::TcpStream,
    poller: Rc<Poller>,
    token: usize,
    /// A byte taken by a wait through glommio (which can only wait by reading), not yet handed
    /// to the caller.
    stash: Option<u8>,
    /// A wait through glommio found the end of the stream.
    eof: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.poller.deregister(self.token, self.stream.as_raw_fd());
    }
}

impl Conn {
    fn new(stream: glommio::net::TcpStream) -> io::Result<Conn> {
        let poller = poller::current()?;
        let token = poller.register(stream.as_raw_fd())?;
        Ok(Conn {
            stream,
            poller,
            token,
            stash: None,
            eof: false,
        })
    }

    /// Opens a connection to `addr` with TCP_NODELAY set.
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = glommio::net::TcpStream::connect(addr)
            .await
            .map_err(io::Error::from)?;
        let conn = Conn::new(stream)?;
        conn.set_nodelay()?;
        Ok(conn)
    }

    /// Disables Nagle's algorithm: replies are already batched, one write per read batch.
    pub fn set_nodelay(&self) -> io::Result<()> {
        self.stream.set_nodelay(true).map_err(io::Error::from)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr().map_err(io::Error::from)
    }

    /// The address of the other end.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr().map_err(io::Error::from)
    }

    /// Reads what the socket has into the spare capacity of `buf` (reserving `min_spare` bytes
    /// first), waiting until at least one byte arrives. Returns 0 at end of stream.
    pub async fn read_into(&mut self, buf: &mut BytesMut, min_spare: usize) -> io::Result<usize> {
        loop {
            buf.reserve(min_spare.max(1));
            if let Some(n) = self.try_read(buf)? {
                return Ok(n);
            }
            self.readable().await?;
        }
    }

    /// Reads what the socket has into the spare capacity of `buf` without waiting: `None` when
    /// there is nothing yet, `Some(0)` at end of stream. Costs no syscall when the core's poller
    /// knows the socket is drained.
    pub fn try_read(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let mut taken = 0;
        if let Some(byte) = self.stash.take() {
            buf.put_u8(byte);
            taken = 1;
        }
        if self.eof {
            return Ok(Some(taken));
        }
        let some = |n: usize| if n > 0 { Some(n) } else { None };
        if !self.poller.is_ready(self.token) || buf.capacity() == buf.len() {
            return Ok(some(taken));
        }
        let spare = buf.capacity() - buf.len();
        match self.recv(buf) {
            Ok(0) => Ok(Some(taken)),
            Ok(n) => {
                // A stream socket hands over all it has, up to the room given: a short read
                // drained it, and the next arrival raises a new edge-triggered event.
                if n < spare {
                    self.poller.drained(self.token);
                }
                Ok(Some(taken + n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.poller.drained(self.token);
                Ok(some(taken))
            }
            // An error after a byte arrived shows up again on the next read.
            Err(_) if taken > 0 => Ok(Some(taken)),
            Err(e) => Err(e),
        }
    }

    /// Waits until [`Self::try_read`] may find something, without holding a buffer meanwhile.
    /// Dropping the future before it completes loses nothing.
    pub async fn readable(&mut self) -> io::Result<()> {
        if self.stash.is_some() || self.eof {
            return Ok(());
        }
        if self.poller.wait(self.token).await == Readiness::Ready {
            return Ok(());
        }
        // The core is going quiet: wait through glommio, which can only wait by reading. The
        // byte it takes is kept in the same poll that receives it, so none is lost.
        let mut first = [0u8; 1];
        let _glommio = self.poller.glommio_wait(self.token);
        match self.stream.read(&mut first).await? {
            0 => self.eof = true,
            _ => self.stash = Some(first[0]),
        }
        self.poller.mark_ready(self.token);
        Ok(())
    }

    /// One non-blocking `recv` into the spare capacity of `buf`.
    fn recv(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
        let n = self.syscall(|socket| socket.recv_with_flags(spare, libc::MSG_DONTWAIT))?;
        // SAFETY: recv initialized the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    /// Runs a non-blocking socket call on this connection's socket, again while it is
    /// interrupted by a signal.
    fn syscall(
        &self,
        mut call: impl FnMut(&SockRef<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        // SAFETY: the fd belongs to `self.stream`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        let socket = SockRef::from(&fd);
        loop {
            match call(&socket) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                done => return done,
            }
        }
    }

    /// Writes some of `data`, waiting until the socket takes at least one byte. Dropping the
    /// future before it completes writes nothing.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        loop {
            match self.send(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.poller.blocked(self.token),
                sent => return sent,
            }
            self.poller.wait_writable(self.token).await;
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.write(data).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => data = &data[n..],
            }
        }
        Ok(())
    }

    /// One non-blocking `send` of `data`.
    fn send(&self, data: &[u8]) -> io::Result<usize> {
        self.syscall(|socket| socket.send_with_flags(data, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL))
    }

    /// Closes the sending side; the peer reads end of stream after what was written.
    pub async fn shutdown_write(&self) -> io::Result<()> {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .await
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// A port with a live listener is taken; one whose last server left only a closed
    /// connection behind (TIME_WAIT, the server having closed first) is free.
    #[test]
    fn a_port_is_taken_by_a_listener_not_by_what_a_stopped_server_left() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(
            ensure_port_free(addr).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        let mut client = TcpStream::connect(addr).unwrap();
        let (served, _) = listener.accept().unwrap();
        drop(served);
        drop(listener);
        // The client sees the close, and the server's side of the connection waits out
        // TIME_WAIT on the listener's port.
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);
        drop(client);
        ensure_port_free(addr).expect("only a TIME_WAIT connection holds the port");
    }
}
