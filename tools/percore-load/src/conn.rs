//! One load-generating connection ("slot"): its socket(s), its requests in flight, its schedule,
//! and the loop that sends what is due and checks every reply.
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
//! Memcached has no ids: its replies come in the order sent, so each socket keeps its ids in
//! flight in a queue, and a get's reply arrives as items (a VALUE per key found, then END). A
//! multi-key get (`--multiget`) is one request whose keys each count as an operation; its
//! keys wait in the socket's queue of keys, each VALUE must be for the next key asked or a
//! later one (the ones passed over are misses), and END settles the rest as misses.
//!
//! With `--verify-keys` a slot sets and deletes only its own keys (those equal to its index
//! modulo the connections), remembers per key the last acknowledged set or delete by request
//! id (its writes of a key reach the owner core in the order sent), and after the run reads
//! every such key back.

use std::cell::RefCell;
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
use percore::client::{Client, Topology};
use percore::protocol::Status;
use percore::runtime::{self, net::Conn};

use crate::cli::{Plan, Stop};
use crate::codec::{Body, Codec, Parsed, ProtocolKind, ReplyTo, Request};
use crate::stats::{ErrorKind, Phase, Recorder};
use crate::workload::{make_value, value_is_intact, write_key, KeySampler, LoadOp};

/// An open-loop request sent later than this after its intended time while the pipeline had
/// room is the generator's own lateness (the server cannot be blamed), and is counted.
pub const LATE_SEND: Duration = Duration::from_millis(1);
/// Bytes reserved per read.
const READ_CHUNK: usize = 64 << 10;
/// Distinct compute inputs; their digests are computed once per core, so checking a compute
/// reply costs a comparison, not a second computation.
const COMPUTE_CASES: usize = 16;
/// Requests in flight per connection while prefilling (at least --pipeline).
const PREFILL_PIPELINE: usize = 32;

/// One compute input (a slice of the core's byte pool) and its expected digest.
pub struct ComputeCase {
    offset: usize,
    len: usize,
    digest: Vec<u8>,
}

/// What the slots of one core share: the plan, a pool of random bytes that payloads, values
/// and compute inputs are cut from (so sending allocates nothing), and the core's recorder.
pub struct CoreCtx {
    pub plan: Rc<Plan>,
    pool: Vec<u8>,
    compute: Vec<ComputeCase>,
    keys: KeySampler,
    pub recorder: RefCell<Recorder>,
}

impl CoreCtx {
    pub fn new(plan: Rc<Plan>, core: usize) -> CoreCtx {
        let mut rng = fastrand::Rng::with_seed(plan.seed ^ (core as u64).wrapping_mul(0x9e37_79b9));
        // Twice the largest value, so values start at many different offsets.
        let pool_len = (2 * plan.value_size.max).max(4096);
        let pool: Vec<u8> = (0..pool_len).map(|_| rng.u8(..)).collect();
        let compute = if plan.mix.ops().contains(&LoadOp::Compute) {
            (0..COMPUTE_CASES)
                .map(|_| {
                    let len = plan.value_size.pick(&mut rng);
                    let offset = rng.usize(0..=pool.len() - len);
                    let digest = percore::ops::compute::digest_blocking(
                        plan.compute_algo,
                        &pool[offset..offset + len],
                        plan.compute_rounds,
                    );
                    ComputeCase {
                        offset,
                        len,
                        digest: digest.as_bytes().to_vec(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        CoreCtx {
            keys: KeySampler::new(plan.key_dist, plan.keys),
            plan,
            pool,
            compute,
            recorder: RefCell::new(Recorder::new()),
        }
    }
}

/// When a slot sends its requests.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Set keys `next`, `next + step`, ... below `end`, as fast as replies come.
    Prefill { next: u64, step: u64, end: u64 },
    /// Get `keys[next..]`, as fast as replies come (--verify-keys).
    Verify { keys: Vec<u64>, next: usize },
    /// As fast as replies come, until `end` or until `quota` measured requests were sent.
    Closed {
        measure_start: Instant,
        end: Option<Instant>,
        quota: Option<u64>,
    },
    /// Request j of the whole run is due at `start + j / rate`; this slot sends j = slot,
    /// slot + slots, ... below `j_end`, and stops at `stop_at` whatever is left (counted as
    /// unsent).
    Open {
        start: Instant,
        measure_start: Instant,
        rate: u64,
        slot: u64,
        slots: u64,
        k: u64,
        j_end: u64,
        stop_at: Option<Instant>,
    },
}

/// A request the schedule says to send now.
struct Due {
    intended: Instant,
    phase: Phase,
    key: Option<u64>,
}

impl Schedule {
    /// The measuring schedule of slot `slot` of `slots`, for a run whose clock started at
    /// `start`.
    pub fn for_run(plan: &Plan, slot: usize, start: Instant) -> Schedule {
        let measure_start = start + plan.warmup;
        let slots = plan.connections as u64;
        match plan.rate {
            None => {
                let (end, quota) = match plan.stop {
                    Stop::After(d) => (Some(measure_start + d), None),
                    Stop::Requests(n) => {
                        let share = n / slots + u64::from((slot as u64) < n % slots);
                        (None, Some(share))
                    }
                };
                Schedule::Closed {
                    measure_start,
                    end,
                    quota,
                }
            }
            Some(rate) => {
                // The first request due at or after measure start, and the end of the run.
                let index_at = |d: Duration| {
                    let scaled = d.as_nanos() * u128::from(rate);
                    u64::try_from(scaled.div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
                };
                let (j_end, stop_at) = match plan.stop {
                    Stop::After(d) => (index_at(plan.warmup + d), Some(measure_start + d)),
                    Stop::Requests(n) => (index_at(plan.warmup).saturating_add(n), None),
                };
                Schedule::Open {
                    start,
                    measure_start,
                    rate,
                    slot: slot as u64,
                    slots,
                    k: 0,
                    j_end,
                    stop_at,
                }
            }
        }
    }

    fn open_time(start: Instant, rate: u64, j: u64) -> Instant {
        let ns = u128::from(j) * 1_000_000_000 / u128::from(rate);
        start + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// The next request if it is due at `now`.
    fn due(&mut self, now: Instant) -> Option<Due> {
        if self.exhausted(now) {
            return None;
        }
        match self {
            Schedule::Prefill { next, step, .. } => {
                let key = *next;
                *next += *step;
                Some(Due {
                    intended: now,
                    phase: Phase::Prefill,
                    key: Some(key),
                })
            }
            Schedule::Verify { keys, next } => {
                let key = keys[*next];
                *next += 1;
                Some(Due {
                    intended: now,
                    phase: Phase::Verify,
                    key: Some(key),
                })
            }
            Schedule::Closed {
                measure_start,
                quota,
                ..
            } => {
                let phase = if now < *measure_start {
                    Phase::Warmup
                } else {
                    if let Some(q) = quota {
                        *q -= 1;
                    }
                    Phase::Measured
                };
                Some(Due {
                    intended: now,
                    phase,
                    key: None,
                })
            }
            Schedule::Open {
                start,
                measure_start,
                rate,
                slot,
                slots,
                k,
                ..
            } => {
                let j = *slot + *k * *slots;
                let intended = Self::open_time(*start, *rate, j);
                if intended > now {
                    return None;
                }
                *k += 1;
                let phase = if intended < *measure_start {
                    Phase::Warmup
                } else {
                    Phase::Measured
                };
                Some(Due {
                    intended,
                    phase,
                    key: None,
                })
            }
        }
    }

    /// Up to `wanted` more of the schedule's requests, to go out with the one just due as the
    /// extra keys of a multi-key get. Closed loop: out of the quota (warmup has none). Open
    /// loop: this slot's next requests, sent early, so their latency is counted from the
    /// first one's intended time. Prefill and verify send one key per request.
    fn take_more(&mut self, wanted: u64, phase: Phase) -> u64 {
        match self {
            Schedule::Closed {
                quota: Some(left), ..
            } if phase == Phase::Measured => {
                let n = wanted.min(*left);
                *left -= n;
                n
            }
            Schedule::Closed { .. } => wanted,
            Schedule::Open { .. } => {
                let n = wanted.min(self.unsent());
                if let Schedule::Open { k, .. } = self {
                    *k += n;
                }
                n
            }
            Schedule::Prefill { .. } | Schedule::Verify { .. } => 0,
        }
    }

    /// When the next request falls due, for schedules with a clock.
    fn next_at(&self) -> Option<Instant> {
        match self {
            Schedule::Open {
                start,
                rate,
                slot,
                slots,
                k,
                j_end,
                ..
            } => {
                let j = *slot + *k * *slots;
                (j < *j_end).then(|| Self::open_time(*start, *rate, j))
            }
            _ => None,
        }
    }

    /// When sending stops by the clock.
    fn stop_at(&self) -> Option<Instant> {
        match self {
            Schedule::Closed { end, .. } => *end,
            Schedule::Open { stop_at, .. } => *stop_at,
            Schedule::Prefill { .. } | Schedule::Verify { .. } => None,
        }
    }

    /// Whether nothing more will be sent.
    fn exhausted(&self, now: Instant) -> bool {
        if self.stop_at().is_some_and(|stop| now >= stop) {
            return true;
        }
        match self {
            Schedule::Prefill { next, end, .. } => next >= end,
            Schedule::Verify { keys, next } => *next >= keys.len(),
            Schedule::Closed { quota, .. } => *quota == Some(0),
            Schedule::Open {
                slot,
                slots,
                k,
                j_end,
                ..
            } => slot + k * slots >= *j_end,
        }
    }

    /// Requests the open-loop schedule asked of this slot and it did not send.
    fn unsent(&self) -> u64 {
        match self {
            Schedule::Open {
                slot,
                slots,
                k,
                j_end,
                ..
            } => {
                let j = slot + k * slots;
                if j >= *j_end {
                    0
                } else {
                    (j_end - j).div_ceil(*slots)
                }
            }
            _ => 0,
        }
    }

    fn is_open(&self) -> bool {
        matches!(self, Schedule::Open { .. })
    }
}

/// One socket and its buffers.
struct Link {
    conn: Conn,
    input: BytesMut,
    output: BytesMut,
}

/// A request in flight.
#[derive(Clone, Copy)]
struct Pending {
    op: LoadOp,
    phase: Phase,
    intended: Instant,
    sent: Instant,
    /// Keys asked for: more than 1 for a multi-key get, whose keys wait in its socket's
    /// [`InOrder::keys`].
    keys: u32,
    /// Get/set/delete: the (first) key's index; ping: the payload's offset in the pool;
    /// compute: the case.
    arg: u64,
    /// Ping: the payload's length; set: the value's.
    len: usize,
    /// Set: where the value's content starts in the pool.
    content: usize,
}

/// The last acknowledged write of one key (--verify-keys): enough to write its value again.
#[derive(Debug, Clone, Copy, Default)]
struct Acked {
    /// The write's request id; 0 for a key never acknowledged (ids start at 1).
    id: u64,
    content: u32,
    len: u32,
    /// The write was a delete: the key must be absent.
    deleted: bool,
}

/// What a socket whose replies come in order (memcached) is waiting for.
#[derive(Default)]
struct InOrder {
    /// Ids in flight, oldest first.
    ids: VecDeque<u64>,
    /// The keys of the multi-key gets in flight, oldest first, back to back.
    keys: VecDeque<u64>,
    /// How far the oldest request's reply has come.
    front: Partial,
}

/// A get's reply so far: the VALUE items before its END.
#[derive(Debug, Clone, Copy, Default)]
struct Partial {
    /// The first key a VALUE may still be for; those before it were found or passed over.
    next: u32,
    /// Keys with a right value, and with a wrong one (counted as errors when they came).
    hits: u32,
    wrong: u32,
}

/// Everything about a slot but its sockets, so replies borrowed from a socket's buffer can be
/// checked against it.
struct Book {
    ctx: Rc<CoreCtx>,
    /// This slot's index among all connections.
    index: u64,
    codec: Codec,
    pending: HashMap<u64, Pending>,
    /// Memcached answers in order: per socket, what its replies answer.
    ordered: Vec<InOrder>,
    /// A multi-key get being encoded: its key indexes, and the keys back to back.
    batch: Vec<u64>,
    batch_keys: Vec<u8>,
    next_id: u64,
    rng: fastrand::Rng,
    topology: Option<Topology>,
    value: Vec<u8>,
    key: [u8; 250],
    last_progress: Instant,
    /// A `ShuttingDown` reply came: send nothing more, collect what is in flight.
    stopping: bool,
    /// --verify-keys: the last acknowledged write of each of this slot's keys, key `index +
    /// i * connections` at `i`; empty without the flag.
    acked: Vec<Acked>,
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
            while !self.book.stopping && self.book.pending.len() < pipeline {
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
                let mut index = due.key.unwrap_or_else(|| ctx.keys.sample(&mut book.rng));
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
                        let size = plan.value_size.pick(&mut book.rng);
                        let offset = book.rng.usize(0..=ctx.pool.len() - size);
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

    /// One reply item from socket `link`; `last` when it ends its request's reply.
    fn on_reply(&mut self, link: usize, to: ReplyTo, last: bool, body: Body<'_>, now: Instant) {
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

/// Slot `slot`'s own key (one equal to `slot` modulo `slots`) in the block of `slots` keys
/// that `key` falls in, so that a drawn key keeps about its rank (Zipf) while each key has one
/// writer. Needs `keys >= slots`, which the plan checks.
fn own_key(key: u64, slot: u64, slots: u64, keys: u64) -> u64 {
    let own = key - key % slots + slot;
    if own < keys {
        own
    } else {
        // Past the end only when key's block is the last, partial one; the block before it is
        // whole because keys >= slots.
        own - slots
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open(rate: u64, slot: u64, slots: u64, start: Instant, j_end: u64) -> Schedule {
        Schedule::Open {
            start,
            measure_start: start,
            rate,
            slot,
            slots,
            k: 0,
            j_end,
            stop_at: None,
        }
    }

    #[test]
    fn open_schedule_interleaves_connections() {
        let start = Instant::now();
        // 4 ops/s over 2 connections: slot 1 sends at 0.25 s, 0.75 s, ...
        let mut s = open(4, 1, 2, start, 4);
        assert_eq!(s.next_at(), Some(start + Duration::from_millis(250)));
        assert!(s.due(start).is_none());
        let d = s.due(start + Duration::from_secs(5)).unwrap();
        assert_eq!(d.intended, start + Duration::from_millis(250));
        assert_eq!(s.next_at(), Some(start + Duration::from_millis(750)));
        assert_eq!(s.unsent(), 1);
        assert!(s.due(start + Duration::from_secs(5)).is_some());
        assert!(s.exhausted(start));
        assert_eq!(s.unsent(), 0);
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

    #[test]
    fn low_rates_leave_some_connections_idle() {
        // 1 op/s over 16 connections for 2 s: only slots 0 and 1 ever send.
        let start = Instant::now();
        for slot in 0..16 {
            let s = open(1, slot, 16, start, 2);
            assert_eq!(s.exhausted(start), slot >= 2, "slot {slot}");
        }
    }

    #[test]
    fn run_schedules_split_the_work() {
        let args =
            crate::cli::Args::try_parse_from_for_tests(&["--connections", "3", "--requests", "10"]);
        let plan = Plan::from_args(args).unwrap();
        let start = Instant::now();
        let quotas: Vec<_> = (0..3)
            .map(|slot| match Schedule::for_run(&plan, slot, start) {
                Schedule::Closed { quota, .. } => quota.unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(quotas, [4, 3, 3]);
        let args = crate::cli::Args::try_parse_from_for_tests(&[
            "--rate",
            "1000",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
        ]);
        let plan = Plan::from_args(args).unwrap();
        match Schedule::for_run(&plan, 0, start) {
            Schedule::Open { j_end, stop_at, .. } => {
                assert_eq!(j_end, 2500);
                assert_eq!(stop_at, Some(start + Duration::from_millis(2500)));
            }
            other => panic!("{other:?}"),
        }
    }
}
