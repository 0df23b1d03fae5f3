//! The protocols a connection speaks, as codecs of the one connection loop
//! ([`super::connection`]): the loop reads, batches, writes and pushes back; a codec says where
//! the next request ends ([`Codec::peek`]) and runs it ([`Codec::route`]), here or on the core
//! that owns its key (through [`super::router`]).
//!
//! [`native`] is percore's FlatBuffers protocol, whose replies carry the request's id and may
//! leave out of order; [`memcache`] is memcached's text protocol, whose replies leave in
//! request order: [`super::output::Output`] holds replies that are ready ahead of their turn.

pub mod memcache;
pub mod native;

use super::router::Ctx;
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
    /// `n` bytes of a request still arriving were dropped (the rest of a refused data block):
    /// the request is not done, and its `--frame-timeout` clock keeps running.
    Discarded(usize),
    /// Every slot to core `peer` is taken: wait for one (and pass it back as `reserved`), then
    /// route the same request again. A request of many keys goes on where it stopped.
    NeedsPermit(usize),
    /// The in-flight window or the output is full: write, wait for replies, then route the
    /// same request again.
    Paused,
    /// The stream cannot (or must not) be read further: close once the output is written.
    Close,
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
