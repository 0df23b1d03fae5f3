//! What a run counts: per operation, the latency from each request's intended send time (the
//! coordinated-omission-corrected number), the service time from its actual send, and a
//! per-second interval histogram; plus replies, misses, errors by kind, how connections ended
//! (and the requests lost with them), the `--verify-keys` pass, and how well the open-loop
//! schedule was kept.
//!
//! Each core has one [`Recorder`], shared by its connections through `Rc<RefCell<_>>` (one
//! thread, no locks). Once a second the core hands its interval to the main thread as a
//! [`Tick`]; at the end its whole recorder comes back and the main thread merges the cores.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use percore::protocol::Status;

use crate::workload::LoadOp;

/// Latencies are recorded in nanoseconds (what HdrHistogram's log tools assume by default),
/// up to an hour, with 3 significant digits.
const HIGHEST_NS: u64 = 3_600_000_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that HdrHistogram accepts.
    Histogram::new_with_bounds(1, HIGHEST_NS, SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

/// Histograms hold nanoseconds; the text distribution shows milliseconds.
pub const NS_PER_MS: f64 = 1e6;

pub fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / NS_PER_MS
}

/// The histogram of all operations together.
pub fn merged<'a>(hs: impl IntoIterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut all = new_histogram();
    for h in hs {
        // Same bounds everywhere, so adding cannot fail.
        let _ = all.add(h);
    }
    all
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// Why a reply was wrong or missing. Any of these makes the exit status non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A request written to the socket that had no reply when its connection ended (closed by
    /// the server, failed, or given up after --timeout without progress).
    Lost,
    /// A reply to no request in flight (unknown or repeated id).
    UnknownId,
    /// A get found nothing where the keyspace was prefilled and nothing deletes (or a
    /// ping/set/compute answered NotFound).
    NotFound,
    BadRequest,
    TooLarge,
    Overloaded,
    Internal,
    /// A status this build does not know. (`ShuttingDown` is no error: [`Counts::shutting_down`].)
    OtherStatus,
    /// A value whose checksum does not match its key and content.
    CorruptValue,
    /// A ping whose payload is not what was sent.
    WrongPayload,
    /// A compute whose digest is wrong.
    WrongDigest,
    /// A successful reply whose body does not fit the request.
    WrongBody,
    /// A frame that does not decode as a reply.
    InvalidFrame,
    /// The connection failed, or the server closed it with requests in flight (those count
    /// as [`ErrorKind::Lost`]).
    ConnectionLost,
    /// A connection made no progress for --timeout (its requests in flight are lost).
    Timeout,
    /// --verify-keys: a key whose last acknowledged set is not readable (NotFound).
    VerifyMissing,
    /// --verify-keys: a key that holds an intact value other than its last acknowledged set.
    VerifyStale,
    /// --verify-keys: a key with an acknowledged set that could not be read back because its
    /// connection had ended.
    Unverified,
}

impl ErrorKind {
    pub const COUNT: usize = 18;
    pub const ALL: [ErrorKind; ErrorKind::COUNT] = [
        ErrorKind::Lost,
        ErrorKind::UnknownId,
        ErrorKind::NotFound,
        ErrorKind::BadRequest,
        ErrorKind::TooLarge,
        ErrorKind::Overloaded,
        ErrorKind::Internal,
        ErrorKind::OtherStatus,
        ErrorKind::CorruptValue,
        ErrorKind::WrongPayload,
        ErrorKind::WrongDigest,
        ErrorKind::WrongBody,
        ErrorKind::InvalidFrame,
        ErrorKind::ConnectionLost,
        ErrorKind::Timeout,
        ErrorKind::VerifyMissing,
        ErrorKind::VerifyStale,
        ErrorKind::Unverified,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Lost => "lost",
            ErrorKind::UnknownId => "unknown_id",
            ErrorKind::NotFound => "not_found",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Internal => "internal",
            ErrorKind::OtherStatus => "other_status",
            ErrorKind::CorruptValue => "corrupt_value",
            ErrorKind::WrongPayload => "wrong_payload",
            ErrorKind::WrongDigest => "wrong_digest",
            ErrorKind::WrongBody => "wrong_body",
            ErrorKind::InvalidFrame => "invalid_frame",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::Timeout => "timeout",
            ErrorKind::VerifyMissing => "verify_missing",
            ErrorKind::VerifyStale => "verify_stale",
            ErrorKind::Unverified => "unverified",
        }
    }

    /// The error an unexpected status is counted as. `ShuttingDown` never gets here: it is
    /// counted apart, as a request the server declined to run while it stops.
    pub fn of_status(status: Status) -> ErrorKind {
        match status {
            Status::NotFound => ErrorKind::NotFound,
            Status::BadRequest => ErrorKind::BadRequest,
            Status::TooLarge => ErrorKind::TooLarge,
            Status::Overloaded => ErrorKind::Overloaded,
            Status::Internal => ErrorKind::Internal,
            _ => ErrorKind::OtherStatus,
        }
    }
}

/// Plain counters, added up across intervals and cores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Correct replies per operation (gets that missed included).
    pub ops: [u64; LoadOp::COUNT],
    /// Gets answered NotFound where that is allowed (no --prefill, or the workload deletes); a
    /// multi-key get counts each key it asked for and got no value of.
    pub misses: u64,
    pub errors: [u64; ErrorKind::COUNT],
    /// Requests sent, counting each key of a multi-key get as one.
    pub sent: u64,
    /// Open loop: requests the schedule asked for that were never sent by the end.
    pub unsent: u64,
    /// Open loop: requests sent more than [`crate::conn::LATE_SEND`] after their intended
    /// time although the pipeline had room: the generator itself fell behind.
    pub late_sends: u64,
    /// Open loop: the largest such delay, in nanoseconds.
    pub max_send_lag_ns: u64,
    /// Replies with status `ShuttingDown`: requests the server declined to run because it is
    /// stopping. Not errors; the connection that gets one sends nothing more.
    pub shutting_down: u64,
    /// Connections the server closed (EOF) with no request of ours in flight: a clean end,
    /// such as a shutdown after answering everything sent. With requests in flight the end is
    /// an error instead ([`ErrorKind::ConnectionLost`] and [`ErrorKind::Lost`]).
    pub closed_clean: u64,
    /// --verify-keys: keys read back, and those that held their last acknowledged value.
    pub verify_checked: u64,
    pub verified: u64,
    /// Cache workload: the gets of the --scan-after pass, and those of them that missed (also
    /// counted in `ops` and `misses`, which the hit ratio leaves them out of).
    pub scan_lookups: u64,
    pub scan_misses: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.ops.iter_mut().zip(&other.ops) {
            *a += b;
        }
        for (a, b) in self.errors.iter_mut().zip(&other.errors) {
            *a += b;
        }
        self.misses += other.misses;
        self.sent += other.sent;
        self.unsent += other.unsent;
        self.late_sends += other.late_sends;
        self.max_send_lag_ns = self.max_send_lag_ns.max(other.max_send_lag_ns);
        self.shutting_down += other.shutting_down;
        self.closed_clean += other.closed_clean;
        self.verify_checked += other.verify_checked;
        self.verified += other.verified;
        self.scan_lookups += other.scan_lookups;
        self.scan_misses += other.scan_misses;
    }

    pub fn total_ops(&self) -> u64 {
        self.ops.iter().sum()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Cache workload: the gets of drawn keys (the --scan-after pass left out), and how many hit.
    pub fn cache_lookups(&self) -> (u64, u64) {
        let lookups = self.ops[LoadOp::Get.index()].saturating_sub(self.scan_lookups);
        let misses = self.misses.saturating_sub(self.scan_misses);
        (lookups, lookups.saturating_sub(misses))
    }

    /// The hit ratio of [`Counts::cache_lookups`]; `None` without lookups.
    pub fn hit_ratio(&self) -> Option<f64> {
        let (lookups, hits) = self.cache_lookups();
        (lookups > 0).then(|| hits as f64 / lookups as f64)
    }
}

/// Which part of the run a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Writing the keyspace before the clock starts: checked, never timed.
    Prefill,
    /// Before --warmup has passed: checked, shown in the progress lines, not in the results.
    Warmup,
    Measured,
    /// The --verify-keys pass after the run: checked, never timed.
    Verify,
}

/// One core's histograms and counters.
pub struct Recorder {
    /// Per operation: response time minus intended send time.
    pub latency: Vec<Histogram<u64>>,
    /// Per operation: response time minus actual send time.
    pub service: Vec<Histogram<u64>>,
    /// Per operation, corrected, since the last tick (warmup included).
    pub interval: Vec<Histogram<u64>>,
    /// Measured requests only (errors are counted in every phase).
    pub counts: Counts,
    pub interval_counts: Counts,
    /// When the last measured reply arrived.
    pub last_reply: Option<Instant>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        let set = || (0..LoadOp::COUNT).map(|_| new_histogram()).collect();
        Recorder {
            latency: set(),
            service: set(),
            interval: set(),
            counts: Counts::default(),
            interval_counts: Counts::default(),
            last_reply: None,
        }
    }

    /// `ops` correct replies of one request (a multi-key get answers one per key, all with
    /// the request's latency), `misses` of them allowed misses.
    // One request's times and counts, taken apart at once: a struct would only carry them here.
    #[allow(clippy::too_many_arguments)]
    pub fn reply(
        &mut self,
        op: LoadOp,
        phase: Phase,
        intended: Instant,
        sent: Instant,
        now: Instant,
        ops: u64,
        misses: u64,
    ) {
        if matches!(phase, Phase::Prefill | Phase::Verify) || ops == 0 {
            return;
        }
        let corrected = nanos(now.saturating_duration_since(intended));
        self.interval[op.index()].saturating_record_n(corrected, ops);
        self.interval_counts.ops[op.index()] += ops;
        self.interval_counts.misses += misses;
        if phase != Phase::Measured {
            return;
        }
        self.latency[op.index()].saturating_record_n(corrected, ops);
        let service = nanos(now.saturating_duration_since(sent));
        self.service[op.index()].saturating_record_n(service, ops);
        self.counts.ops[op.index()] += ops;
        self.counts.misses += misses;
        self.last_reply = Some(now);
    }

    /// A get of the cache workload's --scan-after pass, answered rightly, after its
    /// [`Recorder::reply`].
    pub fn scan_lookup(&mut self, phase: Phase, missed: bool) {
        for (counts, counted) in [
            (
                &mut self.interval_counts,
                phase != Phase::Prefill && phase != Phase::Verify,
            ),
            (&mut self.counts, phase == Phase::Measured),
        ] {
            if counted {
                counts.scan_lookups += 1;
                counts.scan_misses += u64::from(missed);
            }
        }
    }

    /// A wrong or missing reply, in any phase.
    pub fn error(&mut self, kind: ErrorKind, n: u64) {
        self.counts.errors[kind as usize] += n;
        self.interval_counts.errors[kind as usize] += n;
    }

    /// A request sent, of `ops` operations (keys, for a multi-key get).
    pub fn sent(&mut self, phase: Phase, ops: u64) {
        if phase == Phase::Measured {
            self.counts.sent += ops;
        }
    }

    /// Takes what was recorded since the last tick.
    pub fn take_interval(&mut self) -> (Vec<Histogram<u64>>, Counts) {
        let histograms = self.interval.clone();
        for h in &mut self.interval {
            h.reset();
        }
        (histograms, std::mem::take(&mut self.interval_counts))
    }

    /// Adds another core's results to this one.
    pub fn merge(&mut self, other: &Recorder) {
        for (sets, others) in [
            (&mut self.latency, &other.latency),
            (&mut self.service, &other.service),
        ] {
            for (a, b) in sets.iter_mut().zip(others) {
                // Same bounds on both sides, so adding cannot fail.
                let _ = a.add(b);
            }
        }
        self.counts.add(&other.counts);
        self.last_reply = self.last_reply.max(other.last_reply);
    }
}

/// A core's interval, sent to the main thread once a second.
pub struct Tick {
    /// The interval ends at measure start + `index` seconds (negative or zero: warmup).
    pub index: i64,
    /// When the interval really ended (the last one of a run is short).
    pub end: Instant,
    pub latency: Vec<Histogram<u64>>,
    pub counts: Counts,
}

/// The end of interval `index`: measure start + `index` seconds.
pub fn tick_time(measure_start: Instant, index: i64) -> Instant {
    let offset = Duration::from_secs(index.unsigned_abs());
    if index >= 0 {
        measure_start + offset
    } else {
        measure_start.checked_sub(offset).unwrap_or(measure_start)
    }
}

/// The first interval's index: the first whole second after measure start - warmup.
pub fn first_tick(warmup: Duration) -> i64 {
    // The smallest k with measure_start + k s > start, i.e. k > -warmup.
    let whole = i64::try_from(warmup.as_secs()).unwrap_or(i64::MAX);
    if warmup.subsec_nanos() == 0 {
        1 - whole
    } else {
        -whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_index_their_counters() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "{}", kind.name());
        }
    }

    #[test]
    fn only_measured_replies_reach_the_results() {
        let mut r = Recorder::new();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(3);
        let t2 = t0 + Duration::from_millis(5);
        r.reply(LoadOp::Get, Phase::Prefill, t0, t0, t2, 1, 0);
        r.reply(LoadOp::Get, Phase::Warmup, t0, t0, t2, 1, 0);
        r.reply(LoadOp::Get, Phase::Measured, t0, t1, t2, 1, 1);
        r.error(ErrorKind::CorruptValue, 1);
        assert_eq!(r.counts.ops[LoadOp::Get.index()], 1);
        assert_eq!(r.counts.misses, 1);
        assert_eq!(r.latency[1].len(), 1);
        // Corrected from the intended time, service time from the real send.
        assert!(r.latency[1].max() >= 4_990_000);
        assert!(r.service[1].max() <= 2_010_000);
        let (interval, counts) = r.take_interval();
        assert_eq!(interval[1].len(), 2);
        assert_eq!(counts.errors[ErrorKind::CorruptValue as usize], 1);
        assert!(r.interval[1].is_empty());
        let mut total = Recorder::new();
        total.merge(&r);
        total.merge(&r);
        assert_eq!(total.counts.total_ops(), 2);
        assert_eq!(total.counts.total_errors(), 2);
        assert_eq!(total.latency[1].len(), 2);
        // Interval misses come with the warmup's too; the pass's lookups are left out of the
        // hit ratio.
        let mut r = Recorder::new();
        r.reply(LoadOp::Get, Phase::Warmup, t0, t0, t2, 1, 1);
        for missed in [0, 1, 1, 0] {
            r.reply(LoadOp::Get, Phase::Measured, t0, t0, t2, 1, missed);
        }
        r.reply(LoadOp::Get, Phase::Measured, t0, t0, t2, 1, 1);
        r.scan_lookup(Phase::Measured, true);
        assert_eq!(r.counts.cache_lookups(), (4, 2));
        assert_eq!(r.counts.hit_ratio(), Some(0.5));
        let (_, interval) = r.take_interval();
        assert_eq!((interval.misses, interval.scan_misses), (4, 1));
        assert_eq!(interval.cache_lookups(), (5, 2));
        assert_eq!(Counts::default().hit_ratio(), None);
        // A multi-key get: one entry per key, all with the request's latency.
        let mut r = Recorder::new();
        r.reply(LoadOp::Get, Phase::Measured, t0, t1, t2, 16, 3);
        assert_eq!(r.counts.ops[LoadOp::Get.index()], 16);
        assert_eq!(r.counts.misses, 3);
        assert_eq!(r.latency[1].len(), 16);
        assert!(r.latency[1].equivalent(r.latency[1].min(), r.latency[1].max()));
    }

    #[test]
    fn ticks_start_at_the_first_whole_second_of_the_run() {
        assert_eq!(first_tick(Duration::ZERO), 1);
        assert_eq!(first_tick(Duration::from_secs(2)), -1);
        assert_eq!(first_tick(Duration::from_millis(2500)), -2);
        assert_eq!(first_tick(Duration::from_millis(300)), 0);
        let t = Instant::now() + Duration::from_secs(10);
        assert_eq!(tick_time(t, -2), t - Duration::from_secs(2));
        assert_eq!(tick_time(t, 3), t + Duration::from_secs(3));
    }
}
