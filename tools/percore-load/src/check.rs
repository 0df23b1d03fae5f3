//! Reply checking: what each request in flight expects, and the verdict on each reply.
//!
//! percore answers by request id; memcached answers in the order sent, so each of its sockets
//! keeps its ids in flight in a queue, and a get's reply arrives as items (a VALUE per key
//! found, then END). A multi-key get (`--multiget`) is one request whose keys each count as an
//! operation; its keys wait in the socket's queue of keys, each VALUE must be for the next key
//! asked or a later one (the ones passed over are misses), and END settles the rest as misses.
//! Every key counts once, as an operation or as an error.
//!
//! The cache workload compares every hit with the one value its key has ([`keyed_value`]),
//! and queues a set of each key that missed ([`Fill`]); the slot sends those before anything
//! new. A get of the `--scan-after` pass is counted apart, so the hit ratio is that of drawn keys.
//!
//! With `--verify-keys` a slot sets and deletes only its own keys ([`own_key`]: those equal to
//! its index modulo the connections), remembers per key the last acknowledged set or delete by
//! request id (its writes of a key reach the owner core in the order sent), and after the run
//! reads every such key back: each must hold exactly that value, or be absent after a delete.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use percore::client::Topology;
use percore::protocol::Status;

use crate::codec::{Body, Codec, ProtocolKind, ReplyTo};
use crate::context::CoreCtx;
use crate::stats::{ErrorKind, Phase};
use crate::workload::{keyed_value, make_value, value_is_intact, write_key, LoadOp};

/// A request in flight.
#[derive(Clone, Copy)]
pub struct Pending {
    pub op: LoadOp,
    pub phase: Phase,
    pub intended: Instant,
    pub sent: Instant,
    /// Keys asked for: more than 1 for a multi-key get, whose keys wait in its socket's
    /// [`InOrder::keys`].
    pub keys: u32,
    /// Get/set/delete: the (first) key's index; ping: the payload's offset in the pool;
    /// compute: the case.
    pub arg: u64,
    /// Ping: the payload's length; set: the value's.
    pub len: usize,
    /// Set: where the value's content starts in the pool.
    pub content: usize,
    /// A get of the cache workload's --scan-after pass.
    pub scan: bool,
}

/// The cache workload's set of a key whose get missed, waiting for room in the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Fill {
    pub key: u64,
    pub phase: Phase,
    /// When the miss was seen: the set's intended send time.
    pub missed_at: Instant,
}

/// The last acknowledged write of one key (--verify-keys): enough to write its value again.
#[derive(Debug, Clone, Copy, Default)]
pub struct Acked {
    /// The write's request id; 0 for a key never acknowledged (ids start at 1).
    pub id: u64,
    pub content: u32,
    pub len: u32,
    /// The write was a delete: the key must be absent.
    pub deleted: bool,
}

/// What a socket whose replies come in order (memcached) is waiting for.
#[derive(Default)]
pub struct InOrder {
    /// Ids in flight, oldest first.
    pub ids: VecDeque<u64>,
    /// The keys of the multi-key gets in flight, oldest first, back to back.
    pub keys: VecDeque<u64>,
    /// How far the oldest request's reply has come.
    pub front: Partial,
}

/// A get's reply so far: the VALUE items before its END.
#[derive(Debug, Clone, Copy, Default)]
pub struct Partial {
    /// The first key a VALUE may still be for; those before it were found or passed over.
    pub next: u32,
    /// Keys with a right value, and with a wrong one (counted as errors when they came).
    pub hits: u32,
    pub wrong: u32,
}

/// Everything about a slot but its sockets, so replies borrowed from a socket's buffer can be
/// checked against it.
pub struct Book {
    pub ctx: Rc<CoreCtx>,
    /// This slot's index among all connections.
    pub index: u64,
    pub codec: Codec,
    pub pending: HashMap<u64, Pending>,
    /// Memcached answers in order: per socket, what its replies answer.
    pub ordered: Vec<InOrder>,
    /// A multi-key get being encoded: its key indexes, and the keys back to back.
    pub batch: Vec<u64>,
    pub batch_keys: Vec<u8>,
    pub next_id: u64,
    pub rng: fastrand::Rng,
    pub topology: Option<Topology>,
    pub value: Vec<u8>,
    pub key: [u8; 250],
    pub last_progress: Instant,
    /// A `ShuttingDown` reply came: send nothing more, collect what is in flight.
    pub stopping: bool,
    /// --verify-keys: the last acknowledged write of each of this slot's keys, key `index +
    /// i * connections` at `i`; empty without the flag.
    pub acked: Vec<Acked>,
    /// Cache workload: sets of keys that missed, oldest first. Each get in flight adds at most
    /// one, and they go out before any new get, so there are never more than --pipeline.
    pub fills: VecDeque<Fill>,
    /// Cache workload with --scan-after: this slot's part of the pass.
    pub scan: Option<ScanPart>,
}

/// One slot's part of the cache workload's --scan-after pass: after its share of the gets
/// before the pass, its next gets take the pass's keys `first, first + step, ...` below `end`
/// (slot i of n starts at keys + i, steps by n), then draw again.
#[derive(Debug, Clone, Copy)]
pub struct ScanPart {
    /// Measured gets of this slot so far, and how many come before its part of the pass.
    pub gets: u64,
    pub after: u64,
    pub next: u64,
    pub step: u64,
    pub end: u64,
}

impl ScanPart {
    /// The key of this slot's next get in `phase` if it is one of the pass's.
    pub fn next_key(&mut self, phase: Phase) -> Option<u64> {
        if phase != Phase::Measured {
            return None;
        }
        self.gets += 1;
        if self.gets <= self.after || self.next >= self.end {
            return None;
        }
        let key = self.next;
        self.next += self.step;
        Some(key)
    }
}

impl Book {
    /// One reply item from socket `link`; `last` when it ends its request's reply.
    pub fn on_reply(&mut self, link: usize, to: ReplyTo, last: bool, body: Body<'_>, now: Instant) {
        let (id, in_order) = match to {
            ReplyTo::Id(id) => (id, false),
            ReplyTo::Oldest => match self.ordered[link].ids.front() {
                Some(&id) => (id, true),
                None => {
                    self.error(ErrorKind::UnknownId, 1);
                    return;
                }
            },
            ReplyTo::Unknown => {
                self.error(ErrorKind::InvalidFrame, 1);
                return;
            }
        };
        let Some(&p) = self.pending.get(&id) else {
            self.error(ErrorKind::UnknownId, 1);
            return;
        };
        self.last_progress = now;
        let mut partial = if in_order {
            self.ordered[link].front
        } else {
            Partial::default()
        };
        if p.op == LoadOp::Get {
            if let Body::Value { value, key } = body {
                self.on_value(&p, link, &mut partial, key, value);
                if !last && in_order {
                    self.ordered[link].front = partial;
                    return;
                }
            }
        }
        // The request's reply is complete (a VALUE answering anything but a get is its whole,
        // wrong, reply).
        self.pending.remove(&id);
        if in_order {
            let ordered = &mut self.ordered[link];
            ordered.ids.pop_front();
            ordered.front = Partial::default();
        }
        if let Body::Failed(Status::ShuttingDown) = body {
            // Not run: the server is stopping. Nothing more goes to it on this connection.
            self.ctx.recorder.borrow_mut().counts.shutting_down += 1;
            self.stopping = true;
        } else if p.op == LoadOp::Get {
            self.finish_get(&p, partial, body, now);
        } else {
            self.finish(id, &p, body, now);
        }
        if p.keys > 1 {
            let keys = &mut self.ordered[link].keys;
            keys.drain(..keys.len().min(p.keys as usize));
        }
    }

    /// The index of key `i` of get `p` on socket `link`.
    fn key_index(&self, p: &Pending, link: usize, i: u32) -> Option<u64> {
        if p.keys > 1 {
            self.ordered[link].keys.get(i as usize).copied()
        } else {
            (i == 0).then_some(p.arg)
        }
    }

    /// A value answering get `p`. memcached names its key, which must be the next key asked
    /// for or a later one (those passed over are misses); percore's answers the key asked.
    fn on_value(
        &mut self,
        p: &Pending,
        link: usize,
        partial: &mut Partial,
        key: Option<&[u8]>,
        value: &[u8],
    ) {
        let key_size = self.ctx.plan.key_size;
        let mut found = None;
        for i in partial.next..p.keys {
            let Some(index) = self.key_index(p, link, i) else {
                break;
            };
            if key.is_none_or(|k| k == write_key(index, key_size, &mut self.key)) {
                found = Some((i, index));
                break;
            }
        }
        let Some((i, index)) = found else {
            // A key not asked for, one already answered, or one out of order.
            self.error(ErrorKind::WrongBody, 1);
            return;
        };
        partial.next = i + 1;
        match self.check_value(p.phase, index, value) {
            Ok(()) => partial.hits += 1,
            Err(kind) => {
                partial.wrong += 1;
                self.error(kind, 1);
            }
        }
    }

    /// Whether `value` is right for key `index`: intact, and in the --verify-keys pass the
    /// very value of its last acknowledged set.
    fn check_value(&mut self, phase: Phase, index: u64, value: &[u8]) -> Result<(), ErrorKind> {
        let ctx = &*self.ctx;
        let expected = write_key(index, ctx.plan.key_size, &mut self.key);
        if !value_is_intact(expected, value) {
            return Err(ErrorKind::CorruptValue);
        }
        if ctx.plan.is_cache() {
            // Intact is not enough: the key has one value, and a hit must be it exactly.
            let plan = &ctx.plan;
            let (len, at) = keyed_value(index, plan.value_size, ctx.pool.len());
            make_value(expected, &ctx.pool[at..], len, &mut self.value);
            return if value == self.value.as_slice() {
                Ok(())
            } else {
                Err(ErrorKind::CorruptValue)
            };
        }
        if phase != Phase::Verify {
            return Ok(());
        }
        let slots = ctx.plan.connections as u64;
        let last = self.acked[(index / slots) as usize];
        if last.deleted {
            return Err(ErrorKind::VerifyStale);
        }
        let (at, len) = (last.content as usize, last.len as usize);
        make_value(expected, &ctx.pool[at..], len, &mut self.value);
        if value == self.value.as_slice() {
            Ok(())
        } else {
            Err(ErrorKind::VerifyStale)
        }
    }

    /// The end of get `p`'s reply: every key without a value so far is a miss if `body` ends it
    /// rightly, and wrong otherwise. Each key counts once, as an operation or as an error.
    fn finish_get(&mut self, p: &Pending, partial: Partial, body: Body<'_>, now: Instant) {
        let ctx = &*self.ctx;
        let (hits, wrong) = (u64::from(partial.hits), u64::from(partial.wrong));
        let missed = u64::from(p.keys).saturating_sub(hits + wrong);
        let ended = match body {
            Body::End => Ok(()),
            // percore's miss; memcached answers a get's miss with END, never NOT_FOUND.
            Body::NotFound if ctx.plan.protocol == ProtocolKind::Percore => Ok(()),
            // percore's value, already judged.
            Body::Value { .. } => Ok(()),
            Body::Failed(status) => Err(ErrorKind::of_status(status)),
            Body::Invalid => Err(ErrorKind::InvalidFrame),
            _ => Err(ErrorKind::WrongBody),
        };
        let mut rec = ctx.recorder.borrow_mut();
        if p.phase == Phase::Verify {
            let slots = ctx.plan.connections as u64;
            let deleted = self.acked[(p.arg / slots) as usize].deleted;
            rec.counts.verified += hits;
            match ended {
                Ok(()) if missed > 0 && !deleted => rec.error(ErrorKind::VerifyMissing, missed),
                Ok(()) => rec.counts.verified += missed,
                Err(kind) => rec.error(kind, missed.max(1)),
            }
            return;
        }
        let (ok, misses) = match ended {
            Ok(()) if missed > 0 && !ctx.plan.gets_may_miss() => {
                rec.error(ErrorKind::NotFound, missed);
                (hits, 0)
            }
            Ok(()) => (hits + missed, missed),
            Err(kind) => {
                // At least one error: a wrong end is wrong even when every key had its value.
                rec.error(kind, missed.max(1));
                (hits, 0)
            }
        };
        rec.reply(p.op, p.phase, p.intended, p.sent, now, ok, misses);
        if ctx.plan.is_cache() && ok == 1 {
            if p.scan {
                rec.scan_lookup(p.phase, misses == 1);
            }
            if misses == 1 {
                self.fills.push_back(Fill {
                    key: p.arg,
                    phase: p.phase,
                    missed_at: now,
                });
            }
        }
    }

    /// The reply to request `id`, `p`, which is no get.
    fn finish(&mut self, id: u64, p: &Pending, body: Body<'_>, now: Instant) {
        let verdict = self.check(p, body);
        let writes = matches!(p.op, LoadOp::Set | LoadOp::Delete);
        if verdict.is_ok() && writes && !self.acked.is_empty() {
            // A later id is a later write of the key on this connection: it is the newer one.
            let slots = self.ctx.plan.connections as u64;
            let acked = &mut self.acked[(p.arg / slots) as usize];
            if id > acked.id {
                *acked = Acked {
                    id,
                    content: p.content as u32,
                    len: p.len as u32,
                    deleted: p.op == LoadOp::Delete,
                };
            }
        }
        let mut rec = self.ctx.recorder.borrow_mut();
        match verdict {
            Ok(()) => rec.reply(p.op, p.phase, p.intended, p.sent, now, 1, 0),
            Err(kind) => rec.error(kind, 1),
        }
    }

    /// Whether `body` is a right answer to `p`, which is no get.
    fn check(&self, p: &Pending, body: Body<'_>) -> Result<(), ErrorKind> {
        let ctx = &*self.ctx;
        match (p.op, body) {
            (_, Body::Failed(status)) => Err(ErrorKind::of_status(status)),
            (_, Body::Invalid) => Err(ErrorKind::InvalidFrame),
            (LoadOp::Set, Body::Done | Body::Stored) => Ok(()),
            // Absent afterwards either way; a miss is no error (another delete may have won).
            (LoadOp::Delete, Body::Done | Body::Deleted | Body::NotFound) => Ok(()),
            (_, Body::NotFound) => Err(ErrorKind::NotFound),
            (LoadOp::Ping, Body::Payload(payload)) => {
                let offset = p.arg as usize;
                if ctx.pool.get(offset..offset + p.len) == Some(payload) {
                    Ok(())
                } else {
                    Err(ErrorKind::WrongPayload)
                }
            }
            (LoadOp::Compute, Body::Digest(digest)) => match ctx.compute.get(p.arg as usize) {
                Some(case) if case.digest == digest => Ok(()),
                _ => Err(ErrorKind::WrongDigest),
            },
            _ => Err(ErrorKind::WrongBody),
        }
    }

    fn error(&self, kind: ErrorKind, n: u64) {
        self.ctx.recorder.borrow_mut().error(kind, n);
    }
}

/// Slot `slot`'s own key (one equal to `slot` modulo `slots`) in the block of `slots` keys
/// that `key` falls in, so that a drawn key keeps about its rank (Zipf) while each key has one
/// writer. Needs `keys >= slots`, which the plan checks.
pub fn own_key(key: u64, slot: u64, slots: u64, keys: u64) -> u64 {
    let own = key - key % slots + slot;
    if own < keys {
        own
    } else {
        // Past the end only when key's block is the last, partial one; the block before it is
        // whole because keys >= slots.
        own - slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_part_takes_its_keys_after_its_share_of_gets() {
        // Slot 1 of 4, the pass over keys 100..110 after 3 of its measured gets.
        let mut part = ScanPart {
            gets: 0,
            after: 3,
            next: 101,
            step: 4,
            end: 110,
        };
        assert_eq!(
            part.next_key(Phase::Warmup),
            None,
            "warmup gets do not count"
        );
        let keys: Vec<Option<u64>> = (0..8).map(|_| part.next_key(Phase::Measured)).collect();
        assert_eq!(
            keys,
            [
                None,
                None,
                None,
                Some(101),
                Some(105),
                Some(109),
                None,
                None
            ]
        );
    }

    #[test]
    fn each_key_has_one_writer() {
        // 10 keys over 4 slots: slot 2 owns 2 and 6; a draw of 9 (block 8..10 has no 10) maps
        // to 6, the block before.
        let owners: Vec<Vec<u64>> = (0..4)
            .map(|slot| {
                let mut own: Vec<u64> = (0..10).map(|k| own_key(k, slot, 4, 10)).collect();
                own.sort_unstable();
                own.dedup();
                own
            })
            .collect();
        assert_eq!(owners[2], [2, 6]);
        assert_eq!(own_key(9, 2, 4, 10), 6);
        assert_eq!(own_key(9, 1, 4, 10), 9);
        for (slot, own) in owners.iter().enumerate() {
            assert!(
                own.iter().all(|k| k % 4 == slot as u64 && *k < 10),
                "{own:?}"
            );
        }
    }
}
