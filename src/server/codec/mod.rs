//! The protocols a connection speaks, as codecs of the one connection loop
//! ([`super::connection`]): the loop reads, batches, writes and pushes back; a codec says where
//! the next request ends ([`Codec::peek`]) and runs it ([`Codec::route`]), here or on the core
//! that owns its key (through [`super::router`]).
//!
//! [`native`] is percore's FlatBuffers protocol, whose replies carry the request's id and may
//! leave out of order; [`memcache`] is memcached's text protocol, whose replies leave in
//! request order: [`Output`] holds replies that are ready ahead of their turn.

pub mod memcache;
pub mod native;

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::BytesMut;

use super::mailbox::ConnShared;
use super::router::Batch;
use super::shard::Shard;

/// Which protocol a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Native,
    Memcache,
}

/// What the front of a connection's input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// A whole request (or bytes the codec can act on now).
    Whole,
    /// Not yet: the input must hold `total` bytes for it to be.
    Partial { total: usize },
}

/// What became of the request at the front of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Done with `n` bytes of input; its replies are in the output or on their way.
    Consumed(usize),
    /// Every slot to core `peer` is taken: wait for one (and pass it back as `reserved`), then
    /// route the same request again. A request of many keys goes on where it stopped.
    NeedsPermit(usize),
    /// The in-flight window or the output is full: write, wait for replies, then route the
    /// same request again.
    Paused,
    /// The stream cannot (or must not) be read further: close once the output is written.
    Close,
}

/// One connection's replies on their way out. Replies that leave in order wait in `held`
/// behind the oldest reply still being made elsewhere.
pub struct Output {
    /// Replies ready to write, in the order they leave.
    pub buf: BytesMut,
    ordered: bool,
    /// From the oldest reply not yet in `buf`: each one's bytes in `held`, or `None` while it
    /// is still being made elsewhere.
    waiting: VecDeque<Option<(u32, u32)>>,
    /// The sequence number of `waiting`'s front.
    head_seq: u64,
    held: BytesMut,
}

impl Output {
    pub fn new(ordered: bool) -> Output {
        Output {
            buf: BytesMut::new(),
            ordered,
            waiting: VecDeque::new(),
            head_seq: 0,
            held: BytesMut::new(),
        }
    }

    /// Bytes of replies the connection holds.
    pub fn len(&self) -> usize {
        self.buf.len() + self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.held.is_empty() && self.waiting.is_empty()
    }

    /// Writes a reply made now with `write`: straight into the buffer unless replies made
    /// elsewhere must leave before it.
    pub fn local(&mut self, write: impl FnOnce(&mut BytesMut)) {
        if !self.ordered || self.waiting.is_empty() {
            write(&mut self.buf);
            return;
        }
        let start = self.held.len();
        write(&mut self.held);
        let len = self.held.len() - start;
        self.waiting.push_back(Some((start as u32, len as u32)));
    }

    /// A place for a reply that will be made elsewhere; its completion carries the number.
    pub fn reserve(&mut self) -> u64 {
        if !self.ordered {
            return 0;
        }
        self.waiting.push_back(None);
        self.head_seq + self.waiting.len() as u64 - 1
    }

    /// Takes back the place [`Output::reserve`] just gave (the request did not go).
    pub fn unreserve(&mut self) {
        if self.ordered {
            self.waiting.pop_back();
        }
    }

    /// A reply made elsewhere has arrived.
    pub fn arrive(&mut self, seq: u64, reply: &[u8]) {
        let slot = seq.wrapping_sub(self.head_seq) as usize;
        if !self.ordered || slot >= self.waiting.len() {
            self.buf.extend_from_slice(reply);
            return;
        }
        let start = self.held.len();
        self.held.extend_from_slice(reply);
        self.waiting[slot] = Some((start as u32, reply.len() as u32));
        while let Some(Some((start, len))) = self.waiting.front().copied() {
            let (start, len) = (start as usize, len as usize);
            self.buf.extend_from_slice(&self.held[start..start + len]);
            self.waiting.pop_front();
            self.head_seq += 1;
        }
        if self.waiting.is_empty() {
            self.held.clear();
        }
    }

    /// Whether replies are still being made elsewhere, or wait behind one.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The buffer of replies held back, to give to the pool when it is empty.
    pub fn held_mut(&mut self) -> &mut BytesMut {
        &mut self.held
    }
}

/// What a codec routes a request with: the core, the connection, its output and counters.
pub struct Ctx<'a> {
    pub shard: &'a Rc<Shard>,
    pub conn: &'a Rc<ConnShared>,
    pub output: &'a mut Output,
    pub batch: &'a mut Batch,
    /// A mesh permit the connection already holds, for the core it names.
    pub reserved: Option<usize>,
    /// Requests routed elsewhere whose reply has not come back.
    pub inflight: &'a mut usize,
    /// Replies in the output not yet written.
    pub answered: &'a mut u64,
}

impl Ctx<'_> {
    /// Whether another request may go elsewhere now.
    pub fn window_open(&self) -> bool {
        *self.inflight < self.shard.config.max_inflight
    }
}

/// A connection's protocol and whatever it keeps between requests.
pub enum Codec {
    Native,
    Memcache(memcache::State),
}

impl Codec {
    pub fn new(protocol: Protocol) -> Codec {
        match protocol {
            Protocol::Native => Codec::Native,
            Protocol::Memcache => Codec::Memcache(memcache::State::default()),
        }
    }

    /// Where the request at the front of `input` ends, or `Err` with its error already
    /// written to `output` when the stream can no longer be followed.
    pub fn peek(&self, shard: &Shard, input: &[u8]) -> Peek {
        match self {
            Codec::Native => native::peek(shard, input),
            Codec::Memcache(state) => state.peek(input),
        }
    }

    /// Runs (or sends on its way) the request at the front of `input`, which `peek` said is
    /// whole.
    pub fn route(&mut self, ctx: &mut Ctx<'_>, input: &[u8]) -> Step {
        match self {
            Codec::Native => native::route(ctx, input),
            Codec::Memcache(state) => state.route(ctx, input),
        }
    }

    /// Answers the request at the front of `input` with "shutting down" without running it.
    pub fn refuse(&mut self, ctx: &mut Ctx<'_>, input: &[u8]) -> Step {
        match self {
            Codec::Native => native::refuse(ctx, input),
            Codec::Memcache(state) => state.refuse(ctx, input),
        }
    }

    /// Whole requests at the front of `input` (for the count of requests lost with a
    /// connection, and the drain).
    pub fn whole_requests(&self, shard: &Shard, mut input: &[u8]) -> u64 {
        let mut n = 0;
        while let Some(len) = match self {
            Codec::Native => native::whole_len(shard, input),
            Codec::Memcache(_) => memcache::whole_len(input),
        } {
            input = &input[len..];
            n += 1;
        }
        n
    }
}
