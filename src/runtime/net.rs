//! Sockets: SO_REUSEPORT listeners built with socket2 and adopted by glommio, and [`Conn`], the
//! connection type the server, the client and the load generator read and write through.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};

use bytes::{BufMut, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

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

/// Fails with `AddrInUse` if any other socket is bound to `addr`.
///
/// SO_REUSEPORT lets every socket of the same user that also sets it share a port, so without
/// this check a second server started on a taken port would silently split its traffic with
/// the first. A socket bound without SO_REUSEPORT is refused by any socket already there.
pub fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
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

/// Plain `recv` attempts, with a yield between them, before a read waits through io_uring.
const BUSY_RETRIES: usize = 3;

/// A listener adopted by the current core's executor.
pub struct Listener {
    inner: glommio::net::TcpListener,
}

impl Listener {
    /// Hands a listening socket made by [`reuseport_listener`] to this core's executor.
    pub fn adopt(socket: Socket) -> Listener {
        // SAFETY: the fd comes from a listening socket we own and give up here.
        let inner = unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) };
        Listener { inner }
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<Conn> {
        let stream = self.inner.accept().await.map_err(io::Error::from)?;
        Ok(Conn { stream })
    }
}

/// One TCP connection, owned by the core that accepted or opened it.
pub struct Conn {
    stream: glommio::net::TcpStream,
}

impl Conn {
    /// Opens a connection to `addr` with TCP_NODELAY set.
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = glommio::net::TcpStream::connect(addr)
            .await
            .map_err(io::Error::from)?;
        let conn = Conn { stream };
        conn.set_nodelay()?;
        Ok(conn)
    }

    /// Disables Nagle's algorithm: replies are already batched, one write per read batch.
    pub fn set_nodelay(&self) -> io::Result<()> {
        self.stream.set_nodelay(true).map_err(io::Error::from)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr().map_err(io::Error::from)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr().map_err(io::Error::from)
    }

    /// Reads what the socket has into the spare capacity of `buf` (reserving `min_spare` bytes
    /// first), waiting until at least one byte arrives. Returns 0 at end of stream.
    ///
    /// It tries a plain non-blocking `recv` first and falls back to glommio's io_uring
    /// readiness wait only when the socket is empty, so a busy connection costs one syscall per
    /// read and no io_uring poll.
    pub async fn read_into(&mut self, buf: &mut BytesMut, min_spare: usize) -> io::Result<usize> {
        buf.reserve(min_spare.max(1));
        if let Some(n) = self.try_read_busy(buf).await? {
            return Ok(n);
        }
        match self.wait_readable().await? {
            None => Ok(0),
            Some(first) => Ok(self.append_after(first, buf)),
        }
    }

    /// Reads what the socket has into the spare capacity of `buf` without waiting for the
    /// network: a few plain `recv`s with a yield to the core's other tasks between them (on a
    /// busy core data often arrives meanwhile, and a `recv` is far cheaper than arming an
    /// io_uring poll). `None` when the socket stayed empty; `Some(0)` at end of stream.
    pub async fn try_read_busy(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        for round in 0..=BUSY_RETRIES {
            match self.try_recv(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(n) => return Ok(Some(n)),
                Err(e) => return Err(e),
            }
            if round < BUSY_RETRIES {
                crate::runtime::yield_now().await;
            }
        }
        Ok(None)
    }

    /// Waits until data arrives, without holding a buffer meanwhile: it reads the first byte
    /// through glommio (which arms an io_uring poll) and returns it; `None` at end of stream.
    /// Dropping the future before it completes consumes nothing.
    pub async fn wait_readable(&mut self) -> io::Result<Option<u8>> {
        let mut first = [0u8; 1];
        match self.stream.read(&mut first).await? {
            0 => Ok(None),
            _ => Ok(Some(first[0])),
        }
    }

    /// Puts the byte [`Self::wait_readable`] returned into `buf` and takes whatever else has
    /// arrived with it. Returns the bytes added.
    pub fn append_after(&mut self, first: u8, buf: &mut BytesMut) -> usize {
        buf.put_u8(first);
        match self.try_recv(buf) {
            Ok(n) => 1 + n,
            // An error after a byte arrived shows up again on the next read.
            Err(_) => 1,
        }
    }

    /// One non-blocking `recv` into the spare capacity of `buf`.
    fn try_recv(&self, buf: &mut BytesMut) -> io::Result<usize> {
        if buf.capacity() == buf.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // SAFETY: the fd belongs to `self.stream`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        let socket = SockRef::from(&fd);
        let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
        loop {
            match socket.recv_with_flags(spare, libc::MSG_DONTWAIT) {
                Ok(n) => {
                    // SAFETY: recv initialized the first `n` bytes of the spare capacity.
                    unsafe { buf.set_len(buf.len() + n) };
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes some of `data`, waiting until the socket takes at least one byte. Dropping the
    /// future before it completes writes nothing.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.stream.write(data).await
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data).await
    }

    /// Closes the sending side; the peer reads end of stream after what was written.
    pub async fn shutdown_write(&self) -> io::Result<()> {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .await
            .map_err(io::Error::from)
    }
}
