//! memcached's text protocol as a codec. A command for one key runs here when this core owns
//! the key and is sent to the owner as its text otherwise; a `get` of many keys runs each key
//! where it lives, and its `END` follows them all. Replies leave in request order
//! ([`super::Output`]). `stats` and `flush_all` go to every core.

use std::fmt::Write as _;

use bytes::BytesMut;

use super::{Peek, Step};
use crate::memcache::command::{self, Command, Parsed};
use crate::memcache::{reply, Error};
use crate::ops;
use crate::ops::memcache::Now;
use crate::protocol::shard::{key_hash, owner_of_hash};
use crate::protocol::OpKind;
use crate::runtime;
use crate::server::mailbox::Completion;
use crate::server::message::{PeerRequest, Pending};
use crate::server::peer::{self, Broadcast};
use crate::server::router::{self, Ctx, Forward};

/// What a memcached connection keeps between commands.
#[derive(Debug, Default)]
pub struct State {
    /// Bytes still to discard: the rest of a data block too large to take.
    discard: usize,
    /// In a `get` of many keys that had to wait: where in its keys to go on.
    resume: usize,
}

pub fn whole_len(input: &[u8]) -> Option<usize> {
    match command::parse(input) {
        Parsed::Command { len, .. } => Some(len),
        Parsed::Invalid { skip, .. } if skip <= input.len() => Some(skip),
        _ => None,
    }
}

fn error(ctx: &mut Ctx<'_>, e: Error) {
    if e != Error::Silent {
        ctx.output.local(|out| reply::line(out, e.reply()));
        *ctx.answered += 1;
    }
}

/// Sends the command `write` puts into a pooled buffer to core `owner`, with a place for its
/// reply among the connection's replies. Returns what became of it and the place.
fn send_text(
    ctx: &mut Ctx<'_>,
    kind: OpKind,
    owner: usize,
    hash: u64,
    write: impl FnOnce(&mut BytesMut),
) -> (Forward, u64) {
    let seq = ctx.output.reserve();
    let pending = Pending::Kv {
        conn: ctx.conn.clone(),
        kind,
        started: ctx.batch.started,
        seq,
    };
    let sent = router::forward(ctx, owner, kind, pending, |ticket, mut buf| {
        buf.clear();
        write(&mut buf);
        PeerRequest::Memcache { ticket, hash, buf }
    });
    (sent, seq)
}

impl State {
    pub fn peek(&self, input: &[u8]) -> Peek {
        if self.discard > 0 {
            return match input.is_empty() {
                true => Peek::Partial { total: 1 },
                false => Peek::Whole,
            };
        }
        match command::parse(input) {
            Parsed::Incomplete { total } => Peek::Partial { total },
            _ => Peek::Whole,
        }
    }

    /// The command at the front of `input` and its length, parsed once; or the step taken
    /// instead: discarding what is left of a refused data block, or answering a command that
    /// is not one.
    fn next<'a>(
        &mut self,
        ctx: &mut Ctx<'_>,
        input: &'a [u8],
    ) -> Result<(Command<'a>, usize), Step> {
        if self.discard > 0 {
            let n = self.discard.min(input.len());
            self.discard -= n;
            return Err(Step::Discarded(n));
        }
        match command::parse(input) {
            Parsed::Command { command, len } => Ok((command, len)),
            Parsed::Incomplete { .. } => Err(Step::Paused),
            Parsed::LineTooLong => {
                error(ctx, Error::LineTooLong);
                Err(Step::Close)
            }
            Parsed::Invalid {
                error: e,
                skip,
                unlink,
            } => {
                ctx.shard.metrics.borrow_mut().rejected += 1;
                if let Some(key) = unlink {
                    self.unlink(ctx, key);
                }
                error(ctx, e);
                let n = skip.min(input.len());
                self.discard = skip - n;
                // What is left to discard is the rest of this request, still arriving.
                Err(if self.discard > 0 {
                    Step::Discarded(n)
                } else {
                    Step::Consumed(n)
                })
            }
        }
    }

    pub fn route(&mut self, ctx: &mut Ctx<'_>, input: &[u8]) -> Step {
        let (command, len) = match self.next(ctx, input) {
            Ok(next) => next,
            Err(step) => return step,
        };
        let text = &input[..len];
        let shard = ctx.shard;
        let kind = ops::memcache::kind(&command);
        let step = match command {
            Command::Retrieve {
                kind: retrieval,
                exptime,
                keys,
            } => return self.retrieve(ctx, retrieval, exptime, keys, len),
            Command::Quit => {
                router::release(shard, ctx.reserved.take());
                return Step::Close;
            }
            Command::Version => {
                let version = concat!("VERSION ", env!("CARGO_PKG_VERSION"));
                ctx.output.local(|out| reply::line(out, version.as_bytes()));
                Step::Consumed(len)
            }
            Command::Verbosity { noreply } => {
                if !noreply {
                    ctx.output.local(|out| reply::line(out, b"OK"));
                }
                Step::Consumed(len)
            }
            Command::MetaNoop => {
                ctx.output.local(|out| reply::line(out, b"MN"));
                Step::Consumed(len)
            }
            Command::Stats { group } if !group.is_empty() => {
                // Only the general statistics are kept: no group is known.
                ctx.output
                    .local(|out| reply::line(out, Error::UnknownCommand.reply()));
                Step::Consumed(len)
            }
            Command::Stats { .. } | Command::FlushAll { .. } => {
                let what = match command {
                    Command::FlushAll { delay, .. } => Broadcast::Flush {
                        delay_ms: delay.max(0) as u64 * 1000,
                    },
                    _ => Broadcast::Stats,
                };
                self.spawn_gather(ctx, what, command.noreply(), kind);
                router::release(shard, ctx.reserved.take());
                {
                    let mut metrics = shard.metrics.borrow_mut();
                    metrics.requests[kind.index()] += 1;
                    metrics.memcache_requests[kind.index()] += 1;
                }
                return Step::Consumed(len);
            }
            Command::Store { .. }
            | Command::Delete { .. }
            | Command::Arith { .. }
            | Command::Touch { .. }
            | Command::Meta { .. } => {
                let key = command.key().unwrap_or_default();
                let hash = key_hash(key);
                let owner = owner_of_hash(hash, shard.count);
                if owner == shard.index {
                    let now = Now {
                        ms: ctx.batch.store_ms(shard),
                        unix: ctx.batch.unix_now(),
                    };
                    let mut store = shard.store.borrow_mut();
                    ctx.output
                        .local(|out| ops::memcache::execute(&mut store, hash, &command, now, out));
                    Step::Consumed(len)
                } else {
                    return self.forward(ctx, kind, owner, hash, text, len);
                }
            }
        };
        router::release(shard, ctx.reserved.take());
        {
            let mut metrics = shard.metrics.borrow_mut();
            metrics.requests[kind.index()] += 1;
            metrics.memcache_requests[kind.index()] += 1;
        }
        ctx.batch.answered[kind.index()] += 1;
        *ctx.answered += 1;
        step
    }

    /// Removes `key`'s item wherever it lives, answering nothing.
    fn unlink(&mut self, ctx: &mut Ctx<'_>, key: &[u8]) {
        let shard = ctx.shard;
        let hash = key_hash(key);
        let owner = owner_of_hash(hash, shard.count);
        if owner == shard.index {
            let now_ms = ctx.batch.store_ms(shard);
            shard.store.borrow_mut().delete(hash, key, now_ms);
            return;
        }
        let (sent, seq) = send_text(ctx, OpKind::Delete, owner, hash, |buf| {
            buf.extend_from_slice(b"delete ");
            buf.extend_from_slice(key);
            buf.extend_from_slice(b" noreply\r\n");
        });
        if !matches!(sent, Forward::Sent) {
            // Best effort, as in memcached under memory pressure: the error still goes out.
            let _ = self.settle(ctx, sent, seq, Step::Paused);
            router::release(shard, ctx.reserved.take());
        }
    }

    /// Sends a command (its text, `text`) to the core that owns its key.
    fn forward(
        &mut self,
        ctx: &mut Ctx<'_>,
        kind: OpKind,
        owner: usize,
        hash: u64,
        text: &[u8],
        len: usize,
    ) -> Step {
        if !ctx.window_open() {
            return Step::Paused;
        }
        let (sent, seq) = send_text(ctx, kind, owner, hash, |buf| buf.extend_from_slice(text));
        self.settle(ctx, sent, seq, Step::Consumed(len))
    }

    /// Deals with the outcome of a forward whose reply has place `seq`; `done` is the step
    /// when it went.
    fn settle(&mut self, ctx: &mut Ctx<'_>, sent: Forward, seq: u64, done: Step) -> Step {
        match sent {
            Forward::Sent => done,
            Forward::NeedsPermit(peer) => {
                ctx.output.unreserve();
                Step::NeedsPermit(peer)
            }
            Forward::Failed(_) => {
                let e = Error::ShuttingDown;
                let mut text = BytesMut::new();
                reply::line(&mut text, e.reply());
                ctx.output.arrive(seq, &text);
                *ctx.answered += 1;
                done
            }
        }
    }

    /// A retrieval: each key where it lives, then `END`. Goes on from `self.resume` when it
    /// had to stop for a permit, the in-flight window or a full output.
    fn retrieve(
        &mut self,
        ctx: &mut Ctx<'_>,
        retrieval: command::Retrieval,
        exptime: i64,
        keys: &[u8],
        len: usize,
    ) -> Step {
        let shard = ctx.shard;
        while self.resume < keys.len() {
            let rest = &keys[self.resume..];
            let skipped = rest.iter().take_while(|&&b| b == b' ').count();
            let rest = &rest[skipped..];
            let key_len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            if key_len == 0 {
                self.resume = keys.len();
                break;
            }
            let key = &rest[..key_len];
            let hash = key_hash(key);
            let owner = owner_of_hash(hash, shard.count);
            if owner == shard.index {
                if ctx.output.len() >= crate::server::output::OUTPUT_SOFT_CAP {
                    return Step::Paused;
                }
                let now = Now {
                    ms: ctx.batch.store_ms(shard),
                    unix: ctx.batch.unix_now(),
                };
                let mut store = shard.store.borrow_mut();
                ctx.output.local(|out| {
                    ops::memcache::retrieve(&mut store, hash, retrieval, exptime, key, now, out)
                });
                {
                    let mut metrics = shard.metrics.borrow_mut();
                    metrics.requests[OpKind::Get.index()] += 1;
                    metrics.memcache_requests[OpKind::Get.index()] += 1;
                }
                ctx.batch.answered[OpKind::Get.index()] += 1;
            } else {
                if !ctx.window_open() {
                    return Step::Paused;
                }
                let (sent, seq) = send_text(ctx, OpKind::Get, owner, hash, |buf| {
                    // The owner reads the same command, for this key alone.
                    buf.extend_from_slice(retrieval.name());
                    if matches!(
                        retrieval,
                        command::Retrieval::Gat | command::Retrieval::Gats
                    ) {
                        let _ = write!(buf, " {exptime}");
                    }
                    buf.extend_from_slice(b" ");
                    buf.extend_from_slice(key);
                    buf.extend_from_slice(b"\r\n");
                });
                if let Step::NeedsPermit(peer) = self.settle(ctx, sent, seq, Step::Paused) {
                    return Step::NeedsPermit(peer);
                }
            }
            self.resume += skipped + key_len;
        }
        self.resume = 0;
        router::release(shard, ctx.reserved.take());
        ctx.output.local(|out| reply::line(out, b"END"));
        *ctx.answered += 1;
        Step::Consumed(len)
    }

    /// Runs `what` on every core in a task of its own; its reply takes its place in order.
    fn spawn_gather(&mut self, ctx: &mut Ctx<'_>, what: Broadcast, noreply: bool, kind: OpKind) {
        let seq = ctx.output.reserve();
        *ctx.inflight += 1;
        let (shard, conn, started) = (ctx.shard.clone(), ctx.conn.clone(), ctx.batch.started);
        runtime::spawn(async move {
            let gathered = peer::gather(&shard, what).await;
            let mut frame = shard.pool.take();
            match (what, gathered) {
                (_, None) => reply::line(&mut frame, Error::ShuttingDown.reply()),
                (Broadcast::Stats, Some(per_shard)) => {
                    ops::stats::memcache(&shard.server_info(), &per_shard, &mut frame)
                }
                (Broadcast::Flush { .. }, Some(_)) if noreply => {}
                (Broadcast::Flush { .. }, Some(_)) => reply::line(&mut frame, b"OK"),
            }
            let completion = Completion {
                frame,
                kind,
                started,
                seq,
            };
            shard.complete(&conn, completion);
        });
    }

    /// Answers a command read after the drain began without running it.
    pub fn refuse(&mut self, ctx: &mut Ctx<'_>, input: &[u8]) -> Step {
        let (command, len) = match self.next(ctx, input) {
            Ok(next) => next,
            Err(step) => return step,
        };
        let kind = ops::memcache::kind(&command);
        {
            let mut metrics = ctx.shard.metrics.borrow_mut();
            metrics.requests[kind.index()] += 1;
            metrics.memcache_requests[kind.index()] += 1;
        }
        ctx.batch.answered[kind.index()] += 1;
        error(ctx, Error::ShuttingDown);
        Step::Consumed(len)
    }
}
