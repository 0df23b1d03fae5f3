//! A blocking test connection that writes raw bytes and reads whole reply frames, with a read
//! timeout so that a server that stops answering fails the test instead of hanging it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use percore::client::MAX_RESPONSE_FRAME;
use percore::protocol::{Op, ReplyView, RequestEncoder, ResponseView, ShardStats, Status};

/// One request as a whole frame.
pub fn frame(id: u64, op: &Op<'_>) -> Vec<u8> {
    let mut out = BytesMut::new();
    RequestEncoder::new().encode(id, op, &mut out);
    out.to_vec()
}

/// A blocking connection that sends raw bytes and reads whole reply frames.
pub struct Wire {
    pub s: TcpStream,
}

impl Wire {
    pub fn connect(addr: SocketAddr) -> Wire {
        Wire::ready(TcpStream::connect(addr).expect("connect"))
    }

    /// Connects from the local address `source` (port chosen by the kernel): on loopback, any
    /// of 127.0.0.0/8, so a test can be a client from a network `--allow` leaves out.
    pub fn connect_from(source: IpAddr, addr: SocketAddr) -> Wire {
        let domain = socket2::Domain::for_address(addr);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .expect("bind the source address");
        socket.connect(&addr.into()).expect("connect");
        Wire::ready(socket.into())
    }

    fn ready(s: TcpStream) -> Wire {
        s.set_nodelay(true).unwrap();
        // A reply that does not come within this is a hang, which is a failure.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Wire { s }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    pub fn recv(&mut self) -> io::Result<Vec<u8>> {
        let mut prefix = [0u8; 4];
        self.s.read_exact(&mut prefix)?;
        let n = u32::from_le_bytes(prefix) as usize;
        assert!(n > 0 && n <= MAX_RESPONSE_FRAME, "reply length prefix {n}");
        let mut f = vec![0u8; 4 + n];
        f[..4].copy_from_slice(&prefix);
        self.s.read_exact(&mut f[4..])?;
        Ok(f)
    }

    /// The next reply's id, status and error text.
    pub fn answer(&mut self) -> (u64, Status, String) {
        let f = self.recv().expect("a reply");
        let v = ResponseView::decode(&f).expect("the reply verifies");
        (v.id, v.status, v.error.unwrap_or_default().to_owned())
    }

    pub fn call(&mut self, bytes: &[u8]) -> (u64, Status, String) {
        self.send(bytes);
        self.answer()
    }

    pub fn ping(&mut self, id: u64) {
        let (got, status, error) = self.call(&frame(id, &Op::Ping { payload: b"ok?" }));
        assert_eq!((got, status), (id, Status::Ok), "{error}");
    }

    /// A Get's value length (or None when absent).
    pub fn get_len(&mut self, id: u64, key: &[u8]) -> Option<usize> {
        self.send(&frame(id, &Op::Get { key }));
        let f = self.recv().expect("a reply");
        let v = ResponseView::decode(&f).expect("the reply verifies");
        assert_eq!(v.id, id);
        match (v.status, v.body) {
            (Status::NotFound, _) => None,
            (Status::Ok, ReplyView::Value { value, .. }) => Some(value.len()),
            other => panic!("unexpected Get reply {other:?}"),
        }
    }

    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        let (_, status, error) = self.call(&frame(
            1,
            &Op::Set {
                key,
                value,
                ttl_ms: 0,
            },
        ));
        assert_eq!(status, Status::Ok, "{error}");
    }

    pub fn stats(&mut self) -> Vec<ShardStats> {
        self.send(&frame(u64::MAX, &Op::Stats));
        let f = self.recv().expect("a Stats reply");
        let v = ResponseView::decode(&f).expect("the reply verifies");
        assert_eq!((v.id, v.status), (u64::MAX, Status::Ok));
        v.shard_stats()
    }

    /// Waits for the server to end the connection (EOF or reset) and returns the bytes it sent
    /// before that. Panics if the connection is still open at `deadline`.
    pub fn expect_end(&mut self, deadline: Instant) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the server did not close the connection");
            self.s.set_read_timeout(Some(left)).unwrap();
            match self.s.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("the server did not close the connection: {e}"),
            }
        }
    }
}
