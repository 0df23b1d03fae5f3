//! An async client for the percore protocol, over one connection, with pipelining.
//!
//! [`Client::send`] encodes a request into the output buffer and returns its id;
//! [`Client::flush`] writes everything queued with one write; [`Client::recv`] returns the next
//! response, whose id says which request it answers (replies to requests another core served
//! may overtake earlier ones). [`Client::call`] and the typed helpers (`get`, `set`, ...) do one
//! request at a time. It runs on the runtime's executor, like the server.
//!
//! [`fleet`] routes requests over several hosts: to a key's host by consistent hashing, then to
//! its core.

use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use crate::protocol::frame::{self, Peek};
use crate::protocol::response::InvalidResponse;
use crate::protocol::shard::owner_of;
use crate::protocol::{Algo, Op, ReplyView, RequestEncoder, ResponseView, ShardStats, Status};
use crate::runtime::net::Conn;

pub mod fleet;

/// Largest response frame the client accepts: a 1 MiB value with room to spare.
pub const MAX_RESPONSE_FRAME: usize = 4 << 20;
const READ_CHUNK: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error(transparent)]
    Invalid(#[from] InvalidResponse),
    #[error("server answered {status:?}: {message}")]
    Status { status: Status, message: String },
    #[error("expected the reply to request {expected}, got one to {got}")]
    WrongId { expected: u64, got: u64 },
    #[error("the reply's body does not fit the request")]
    UnexpectedBody,
}

impl ClientError {
    /// The status the server answered with, if this error is one.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One response frame, verified, owning its bytes (split off the read buffer without a copy).
#[derive(Debug, Clone)]
pub struct Response {
    frame: Bytes,
    id: u64,
    status: Status,
}

impl Response {
    fn new(frame: Bytes) -> Result<Response, InvalidResponse> {
        let view = ResponseView::decode(&frame)?;
        let (id, status) = (view.id, view.status);
        Ok(Response { frame, id, status })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// The decoded response (verified again: cheap, and keeps this type free of `unsafe`).
    pub fn view(&self) -> Result<ResponseView<'_>, InvalidResponse> {
        ResponseView::decode(&self.frame)
    }

    /// The whole frame, length prefix included.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The view if the status is `Ok`, else the server's error.
    pub fn ok(&self) -> Result<ResponseView<'_>, ClientError> {
        let view = self.view()?;
        if view.status != Status::Ok {
            return Err(ClientError::Status {
                status: view.status,
                message: view.error.unwrap_or_default().to_owned(),
            });
        }
        Ok(view)
    }
}

/// What `Hello` says about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub protocol_version: u32,
    pub shard_count: u32,
    /// The shard that owns the connection `Hello` was sent on.
    pub shard: u32,
    /// Each shard's own port (empty unless the server runs with `--shard-ports`).
    pub shard_ports: Vec<u16>,
}

impl Topology {
    /// The shard that owns `key`.
    pub fn owner_of(&self, key: &[u8]) -> usize {
        owner_of(key, self.shard_count.max(1) as usize)
    }
}

pub struct Client {
    conn: Conn,
    input: BytesMut,
    output: BytesMut,
    encoder: RequestEncoder,
    next_id: u64,
    /// A response's length prefix was invalid; the connection is unusable.
    broken: bool,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        Ok(Client::new(Conn::connect(addr).await?))
    }

    pub fn new(conn: Conn) -> Client {
        Client {
            conn,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::with_capacity(READ_CHUNK),
            encoder: RequestEncoder::new(),
            next_id: 1,
            broken: false,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.conn.local_addr()
    }

    /// Queues a request with the next id and returns that id. Nothing is sent until
    /// [`Self::flush`].
    pub fn send(&mut self, op: &Op<'_>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_with_id(id, op);
        id
    }

    /// Queues a request with a chosen id.
    pub fn send_with_id(&mut self, id: u64, op: &Op<'_>) {
        self.encoder.encode(id, op, &mut self.output);
    }

    /// Queues raw bytes, for tests that send what a well-behaved client would not.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.output.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.output.is_empty() {
            self.conn.write_all(&self.output).await?;
            self.output.clear();
        }
        Ok(())
    }

    /// The next response from the server.
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        if self.broken {
            return Err(ClientError::Closed);
        }
        loop {
            match frame::peek(&self.input, MAX_RESPONSE_FRAME) {
                Ok(Peek::Complete { len }) => {
                    let frame = self.input.split_to(len).freeze();
                    return Ok(Response::new(frame)?);
                }
                Ok(Peek::Partial { total }) => {
                    let want = (total - self.input.len()).max(READ_CHUNK);
                    if self.conn.read_into(&mut self.input, want).await? == 0 {
                        return Err(ClientError::Closed);
                    }
                }
                Err(e) => {
                    // The stream's framing is lost: nothing after this can be trusted, so the
                    // client stops reading rather than misparse what follows.
                    self.broken = true;
                    self.input.clear();
                    return Err(InvalidResponse(format!("bad response framing: {e}")).into());
                }
            }
        }
    }

    /// Waits for the server to close the connection, discarding anything it still sends.
    /// Returns the number of bytes discarded.
    pub async fn read_to_end(&mut self) -> Result<usize, ClientError> {
        let mut total = self.input.len();
        loop {
            self.input.clear();
            match self.conn.read_into(&mut self.input, READ_CHUNK).await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Sends one request and waits for its response (of any status).
    pub async fn call(&mut self, op: &Op<'_>) -> Result<Response, ClientError> {
        let id = self.send(op);
        self.flush().await?;
        let response = self.recv().await?;
        if response.id() != id {
            return Err(ClientError::WrongId {
                expected: id,
                got: response.id(),
            });
        }
        Ok(response)
    }

    pub async fn hello(&mut self, client: &str) -> Result<Topology, ClientError> {
        let response = self.call(&Op::Hello { client }).await?;
        match response.ok()?.body {
            ReplyView::Hello(h) => Ok(Topology {
                protocol_version: h.protocol_version(),
                shard_count: h.shard_count(),
                shard: h.shard(),
                shard_ports: h
                    .shard_ports()
                    .map(|p| p.iter().collect())
                    .unwrap_or_default(),
            }),
            _ => Err(ClientError::UnexpectedBody),
        }
    }

    pub async fn ping(&mut self, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        let response = self.call(&Op::Ping { payload }).await?;
        match response.ok()?.body {
            ReplyView::Ping { payload } => Ok(payload.to_vec()),
            _ => Err(ClientError::UnexpectedBody),
        }
    }

    /// The value and its remaining TTL in ms (0 = none), or `None` when the key is absent.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, ClientError> {
        let response = self.call(&Op::Get { key }).await?;
        if response.status() == Status::NotFound {
            return Ok(None);
        }
        match response.ok()?.body {
            ReplyView::Value { value, ttl_ms } => Ok(Some((value.to_vec(), ttl_ms))),
            _ => Err(ClientError::UnexpectedBody),
        }
    }

    pub async fn set(&mut self, key: &[u8], value: &[u8], ttl_ms: u32) -> Result<(), ClientError> {
        self.call(&Op::Set { key, value, ttl_ms }).await?.ok()?;
        Ok(())
    }

    /// True if the key existed.
    pub async fn delete(&mut self, key: &[u8]) -> Result<bool, ClientError> {
        let response = self.call(&Op::Delete { key }).await?;
        if response.status() == Status::NotFound {
            return Ok(false);
        }
        response.ok()?;
        Ok(true)
    }

    pub async fn compute(
        &mut self,
        algo: Algo,
        input: &[u8],
        rounds: u32,
    ) -> Result<Vec<u8>, ClientError> {
        let response = self
            .call(&Op::Compute {
                algo,
                input,
                rounds,
            })
            .await?;
        match response.ok()?.body {
            ReplyView::Digest { digest } => Ok(digest.to_vec()),
            _ => Err(ClientError::UnexpectedBody),
        }
    }

    /// Every shard's counters.
    pub async fn stats(&mut self) -> Result<Vec<ShardStats>, ClientError> {
        let response = self.call(&Op::Stats).await?;
        Ok(response.ok()?.shard_stats())
    }
}
