//! One load-generating connection ("slot"): its socket(s), and the loop that sends what is due
//! and hands every reply to [`crate::check`].
//!
//! A slot owns one socket, or with `--shard-aware` one socket per server core (each to that
//! core's shard port), and sends each key to the socket of the core that owns it. Up to
//! `--pipeline` requests are in flight per slot, tracked by id in a map that cannot grow past
//! that. The loop is a single task per slot: it sends everything the [`Schedule`] says is due,
//! writes once, then waits for whichever comes first: a reply, the next intended send time,
//! the end of the run, or `--timeout` without progress. Waiting on a read and a timer together
//! is safe because `Conn::read_into` consumes nothing until it completes.
//!
//! How a connection ends is counted: closed by the server with nothing in flight (a clean end,
//! as in a shutdown that answered everything sent), or with requests in flight, which are then
//! lost. A `ShuttingDown` reply is no error; the slot sends nothing more after one.
//!
//! The cache workload's sets of missed keys ([`Fill`]) go out before anything the schedule
//! has due, outside it (--rate and --requests count the gets).
//!
//! With `--verify-keys` a slot writes only its own keys ([`own_key`]) and, after its run, reads
//! every key it wrote back ([`Slot::verify`]).

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use percore::client::Client;
use percore::runtime::{self, net::Conn};

use crate::check::{own_key, Acked, Book, Fill, InOrder, Pending, ScanPart};
use crate::codec::{Codec, Parsed, ProtocolKind, Request};
use crate::context::CoreCtx;
use crate::schedule::{Due, Schedule};
use crate::stats::{ErrorKind, Phase};
use crate::workload::{keyed_value, make_value, write_key, LoadOp};

/// An open-loop request sent later than this after its intended time while the pipeline had
/// room is the generator's own lateness (the server cannot be blamed), and is counted.
pub const LATE_SEND: Duration = Duration::from_millis(1);
/// Bytes reserved per read.
const READ_CHUNK: usize = 64 << 10;
/// Requests in flight per connection while prefilling (at least --pipeline).
const PREFILL_PIPELINE: usize = 32;

/// One socket and its buffers.
struct Link {
    conn: Conn,
    input: BytesMut,
    output: BytesMut,
}

/// A load-generating connection.
pub struct Slot {
    links: Vec<Link>,
    book: Book,
    /// A slot whose connection ended stops; its requests in flight were counted as lost.
    dead: bool,
}

impl Slot {
    /// Connects slot `index` to its target (to every shard port of it with --shard-aware).
    pub async fn connect(index: usize, ctx: Rc<CoreCtx>) -> anyhow::Result<Slot> {
        let plan = &ctx.plan;
        let target = plan.targets[index % plan.targets.len()];
        let (addrs, topology) = if plan.shard_aware {
            let mut client = Client::connect(target)
                .await
                .with_context(|| format!("cannot connect to {target}"))?;
            let topology = client
                .hello("percore-load")
                .await
                .with_context(|| format!("Hello to {target} failed"))?;
            if topology.shard_ports.is_empty() {
                bail!("--shard-aware: {target} has no shard ports (start percore with --shard-ports BASE)");
            }
            if topology.shard_ports.len() != topology.shard_count as usize {
                bail!(
                    "{target} reports {} shards but {} shard ports",
                    topology.shard_count,
                    topology.shard_ports.len()
                );
            }
            let addrs = topology
                .shard_ports
                .iter()
                .map(|&port| SocketAddr::new(target.ip(), port))
                .collect::<Vec<_>>();
            (addrs, Some(topology))
        } else {
            (vec![target], None)
        };
        let mut links = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let conn = Conn::connect(addr)
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            links.push(Link {
                conn,
                input: BytesMut::with_capacity(READ_CHUNK),
                output: BytesMut::with_capacity(READ_CHUNK),
            });
        }
        let rng = fastrand::Rng::with_seed(plan.seed.wrapping_add((index as u64 + 1) << 32));
        let acked = if plan.verify_keys {
            let slots = plan.connections as u64;
            let own = plan.keys.saturating_sub(index as u64).div_ceil(slots);
            vec![Acked::default(); own as usize]
        } else {
            Vec::new()
        };
        let book = Book {
            index: index as u64,
            stopping: false,
            acked,
            codec: Codec::new(plan.protocol),
            pending: HashMap::with_capacity(plan.pipeline.max(PREFILL_PIPELINE)),
            ordered: links.iter().map(|_| InOrder::default()).collect(),
            batch: Vec::new(),
            batch_keys: Vec::new(),
            next_id: 1,
            rng,
            topology,
            value: Vec::new(),
            key: [0; 250],
            last_progress: Instant::now(),
            fills: VecDeque::with_capacity(if plan.is_cache() { plan.pipeline } else { 0 }),
            scan: plan.scan.map(|scan| {
                let (slot, slots) = (index as u64, plan.connections as u64);
                ScanPart {
                    gets: 0,
                    after: scan.after / slots + u64::from(slot < scan.after % slots),
                    next: plan.keys + slot,
                    step: slots,
                    end: plan.keys + scan.count,
                }
            }),
            ctx,
        };
        Ok(Slot {
            links,
            book,
            dead: false,
        })
    }

    /// Sets this slot's share of the keyspace (keys index, index + connections, ...).
    pub async fn prefill(&mut self, index: usize) {
        let plan = &self.book.ctx.plan;
        let mut schedule = Schedule::Prefill {
            next: index as u64,
            step: plan.connections as u64,
            end: plan.keys,
        };
        let pipeline = plan.pipeline.max(PREFILL_PIPELINE);
        self.drive(&mut schedule, pipeline).await;
    }

    /// Runs the measuring schedule.
    pub async fn run(&mut self, mut schedule: Schedule) {
        let pipeline = self.book.ctx.plan.pipeline;
        self.drive(&mut schedule, pipeline).await;
        let unsent = schedule.unsent();
        self.book.ctx.recorder.borrow_mut().counts.unsent += unsent;
    }

    /// --verify-keys: reads back every key of this slot with an acknowledged set. Run after
    /// [`Slot::run`], when all of this slot's sets have been answered; no other slot sets
    /// these keys, so each must hold exactly its last acknowledged value.
    pub async fn verify(&mut self) {
        let slots = self.book.ctx.plan.connections as u64;
        let keys: Vec<u64> = (0u64..)
            .zip(&self.book.acked)
            .filter(|(_, a)| a.id != 0)
            .map(|(i, _)| self.book.index + i * slots)
            .collect();
        let mut schedule = Schedule::Verify { keys, next: 0 };
        if !self.book.stopping {
            let pipeline = self.book.ctx.plan.pipeline.max(PREFILL_PIPELINE);
            self.drive(&mut schedule, pipeline).await;
        }
        // Keys not read back because the connection ended (or the server is stopping).
        if let Schedule::Verify { keys, next } = &schedule {
            let left = (keys.len() - next) as u64;
            if left > 0 {
                let mut rec = self.book.ctx.recorder.borrow_mut();
                rec.error(ErrorKind::Unverified, left);
            }
        }
    }

    async fn drive(&mut self, schedule: &mut Schedule, pipeline: usize) {
        if self.dead {
            return;
        }
        let timeout = self.book.ctx.plan.timeout;
        let open = schedule.is_open();
        // When the pipeline last went from full to having room: a send due before that was
        // held back by the server, not by this generator.
        let mut room_since = Instant::now();
        let mut was_full = false;
        loop {
            let now = Instant::now();
            if schedule.exhausted(now) {
                // The run is over: a miss seen now is not filled.
                self.book.fills.clear();
            }
            while !self.book.stopping && self.book.pending.len() < pipeline {
                if let Some(fill) = self.book.fills.pop_front() {
                    let Fill {
                        key,
                        phase,
                        missed_at,
                    } = fill;
                    let due = Due {
                        intended: missed_at,
                        phase,
                        key: Some(key),
                    };
                    self.issue(due, LoadOp::Set, 1, now);
                    continue;
                }
                let Some(due) = schedule.due(now) else { break };
                if open && due.phase != Phase::Prefill {
                    let lag = now.saturating_duration_since(due.intended.max(room_since));
                    if lag > LATE_SEND {
                        let mut rec = self.book.ctx.recorder.borrow_mut();
                        rec.counts.late_sends += 1;
                        let lag_ns = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX);
                        rec.counts.max_send_lag_ns = rec.counts.max_send_lag_ns.max(lag_ns);
                    }
                }
                let op = self.book.pick(due.phase);
                let multiget = self.book.ctx.plan.multiget as u64;
                let keys = match (op, due.phase) {
                    (LoadOp::Get, Phase::Warmup | Phase::Measured) if multiget > 1 => {
                        1 + schedule.take_more(multiget - 1, due.phase)
                    }
                    _ => 1,
                };
                self.issue(due, op, keys as usize, now);
            }
            if self.book.pending.len() >= pipeline {
                was_full = true;
            }
            for link in &mut self.links {
                if link.output.is_empty() {
                    continue;
                }
                if link.conn.write_all(&link.output).await.is_err() {
                    self.end(End::Failed);
                    return;
                }
                link.output.clear();
            }
            let exhausted = self.book.stopping || schedule.exhausted(Instant::now());
            if exhausted && self.book.pending.is_empty() {
                return;
            }
            // Wake for the next send if there is room for it, for the end of the run, and for
            // the timeout of the requests in flight.
            let mut wake = None;
            if !exhausted {
                if self.book.pending.len() < pipeline {
                    wake = schedule.next_at();
                }
                wake = earliest(wake, schedule.stop_at());
            }
            if !self.book.pending.is_empty() {
                wake = earliest(wake, Some(self.book.last_progress + timeout));
            }
            match wait_readable(&mut self.links, wake).await {
                None => {
                    if !self.book.pending.is_empty()
                        && Instant::now() >= self.book.last_progress + timeout
                    {
                        self.end(End::TimedOut);
                        return;
                    }
                }
                Some((_, Ok(0))) => {
                    self.end(End::Closed);
                    return;
                }
                Some((_, Err(_))) => {
                    self.end(End::Failed);
                    return;
                }
                Some((i, Ok(_))) => {
                    if self.take_replies(i).is_err() {
                        self.end(End::Failed);
                        return;
                    }
                    if was_full && self.book.pending.len() < pipeline {
                        was_full = false;
                        room_since = Instant::now();
                    }
                }
            }
        }
    }

    /// Checks every whole reply in socket `i`'s buffer. An error means the stream is broken.
    fn take_replies(&mut self, i: usize) -> Result<(), String> {
        let now = Instant::now();
        let link = &mut self.links[i];
        loop {
            match self.book.codec.parse(&link.input) {
                Parsed::Incomplete => return Ok(()),
                Parsed::Broken(why) => return Err(why),
                Parsed::Reply {
                    len,
                    to,
                    last,
                    body,
                } => {
                    self.book.on_reply(i, to, last, body, now);
                    link.input.advance(len);
                }
            }
        }
    }

    /// The connection is over: every request in flight is lost. The server closing it with
    /// nothing in flight is a clean end, not an error.
    fn end(&mut self, how: End) {
        // Every key asked for, but those whose wrong value was already counted.
        let asked: u64 = self.book.pending.values().map(|p| u64::from(p.keys)).sum();
        let judged: u64 = self
            .book
            .ordered
            .iter()
            .filter(|o| {
                o.ids
                    .front()
                    .is_some_and(|id| self.book.pending.contains_key(id))
            })
            .map(|o| u64::from(o.front.wrong))
            .sum();
        let lost = asked.saturating_sub(judged);
        let mut rec = self.book.ctx.recorder.borrow_mut();
        match how {
            End::Closed if self.book.pending.is_empty() => rec.counts.closed_clean += 1,
            End::Closed | End::Failed => rec.error(ErrorKind::ConnectionLost, 1),
            End::TimedOut => rec.error(ErrorKind::Timeout, 1),
        }
        if lost > 0 {
            rec.error(ErrorKind::Lost, lost);
        }
        self.book.pending.clear();
        for o in &mut self.book.ordered {
            *o = InOrder::default();
        }
        self.dead = true;
    }

    /// Encodes one request (of `keys` keys for a get) into the output of the socket its key
    /// belongs to.
    fn issue(&mut self, due: Due, op: LoadOp, keys: usize, now: Instant) {
        let book = &mut self.book;
        let ctx = &*book.ctx;
        let plan = &ctx.plan;
        let id = book.next_id;
        book.next_id += 1;
        let arg;
        let mut len = 0;
        let mut content = 0;
        let mut key_bytes: Option<&[u8]> = None;
        let mut scan = false;
        let request = match op {
            LoadOp::Ping => {
                len = plan.value_size.pick(&mut book.rng);
                let offset = book.rng.usize(0..=ctx.pool.len() - len);
                arg = offset as u64;
                Request::Ping {
                    payload: &ctx.pool[offset..offset + len],
                }
            }
            LoadOp::Get if keys > 1 => {
                book.batch.clear();
                book.batch_keys.clear();
                for i in 0..keys {
                    let index = match (i, due.key) {
                        (0, Some(key)) => key,
                        _ => ctx.keys.sample(&mut book.rng),
                    };
                    book.batch.push(index);
                    let key = write_key(index, plan.key_size, &mut book.key);
                    book.batch_keys.extend_from_slice(key);
                }
                arg = book.batch[0];
                Request::MultiGet {
                    keys: &book.batch_keys,
                    key_len: plan.key_size,
                }
            }
            LoadOp::Get | LoadOp::Set | LoadOp::Delete => {
                let pass_key = match (op, due.key, &mut book.scan) {
                    (LoadOp::Get, None, Some(part)) => part.next_key(due.phase),
                    _ => None,
                };
                scan = pass_key.is_some();
                let mut index = due
                    .key
                    .or(pass_key)
                    .unwrap_or_else(|| ctx.keys.sample(&mut book.rng));
                if op != LoadOp::Get && !book.acked.is_empty() {
                    index = own_key(index, book.index, plan.connections as u64, plan.keys);
                }
                arg = index;
                let key = write_key(index, plan.key_size, &mut book.key);
                key_bytes = Some(key);
                match op {
                    LoadOp::Get => Request::Get { key },
                    LoadOp::Delete => Request::Delete { key },
                    _ => {
                        let (size, offset) = if plan.is_cache() {
                            keyed_value(index, plan.value_size, ctx.pool.len())
                        } else {
                            let size = plan.value_size.pick(&mut book.rng);
                            (size, book.rng.usize(0..=ctx.pool.len() - size))
                        };
                        (len, content) = (size, offset);
                        make_value(key, &ctx.pool[offset..], size, &mut book.value);
                        Request::Set {
                            key,
                            value: &book.value,
                        }
                    }
                }
            }
            LoadOp::Compute => {
                let case = book.rng.usize(0..ctx.compute.len());
                arg = case as u64;
                let c = &ctx.compute[case];
                Request::Compute {
                    algo: plan.compute_algo,
                    input: &ctx.pool[c.offset..c.offset + c.len],
                    rounds: plan.compute_rounds,
                }
            }
        };
        // A multi-key get is memcached's, which has no topology: it goes to socket 0.
        let link = match (&book.topology, key_bytes) {
            (Some(topology), Some(key)) => topology.owner_of(key).min(self.links.len() - 1),
            (Some(_), None) => book.rng.usize(0..self.links.len()),
            (None, _) => 0,
        };
        book.codec
            .encode(id, &request, &mut self.links[link].output);
        if plan.protocol == ProtocolKind::Memcached {
            let ordered = &mut book.ordered[link];
            ordered.ids.push_back(id);
            if keys > 1 {
                ordered.keys.extend(&book.batch);
            }
        }
        if book.pending.is_empty() {
            book.last_progress = now;
        }
        book.pending.insert(
            id,
            Pending {
                op,
                phase: due.phase,
                intended: due.intended,
                sent: now,
                keys: keys as u32,
                arg,
                len,
                content,
                scan,
            },
        );
        let mut rec = ctx.recorder.borrow_mut();
        rec.sent(due.phase, keys as u64);
        if due.phase == Phase::Verify {
            rec.counts.verify_checked += 1;
        }
    }
}

impl Book {
    /// The operation of the next request due in `phase`.
    fn pick(&mut self, phase: Phase) -> LoadOp {
        match phase {
            Phase::Prefill => LoadOp::Set,
            Phase::Verify => LoadOp::Get,
            Phase::Warmup | Phase::Measured => self.ctx.plan.mix.pick(&mut self.rng),
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The server closed it (EOF).
    Closed,
    /// A read or write failed, or the reply stream broke.
    Failed,
    /// No reply for --timeout.
    TimedOut,
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

type ReadResult = (usize, io::Result<usize>);

/// Waits until one of the sockets has bytes (or is closed), or until `wake`. Returns which
/// socket and what its read returned, or `None` at `wake`.
async fn wait_readable(links: &mut [Link], wake: Option<Instant>) -> Option<ReadResult> {
    let sleep = match wake {
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            Some(left)
        }
        None => None,
    };
    let timer = async move {
        match sleep {
            Some(d) => runtime::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
        None
    };
    if let [link] = links {
        let read = async { Some((0, link.conn.read_into(&mut link.input, READ_CHUNK).await)) };
        return futures_lite::future::or(read, timer).await;
    }
    // Several sockets (--shard-aware): poll a read on each; the ones that lose the race are
    // dropped, which consumes nothing.
    let mut reads: Vec<Pin<Box<dyn Future<Output = ReadResult> + '_>>> = links
        .iter_mut()
        .enumerate()
        .map(|(i, link)| {
            let Link { conn, input, .. } = link;
            Box::pin(async move { (i, conn.read_into(input, READ_CHUNK).await) })
                as Pin<Box<dyn Future<Output = ReadResult> + '_>>
        })
        .collect();
    let any = poll_fn(|cx| {
        for read in reads.iter_mut() {
            if let Poll::Ready(result) = read.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
        }
        Poll::Pending
    });
    futures_lite::future::or(any, timer).await
}
