//! Per-core counters and service-time histograms, and the exit report that merges them.
//!
//! Each core owns its [`Metrics`]: plain integers and HdrHistograms touched only by that core.
//! At exit every core hands its metrics to the main thread, which merges them into the
//! [`ExitReport`] printed on stdout. While the server runs, a core sums up its metrics into a
//! [`CoreSnapshot`] when `--metrics-listen` asks for them (over the mesh, like Stats); the
//! snapshot carries each service-time histogram already cut into Prometheus buckets, so what
//! travels between cores is a few kilobytes, not the HdrHistograms.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::protocol::{OpKind, ShardStats, Status};
use crate::store::StoreStats;

/// Service times above this are recorded as this (10 s).
const MAX_RECORDED_NS: u64 = 10_000_000_000;

fn new_histogram() -> Histogram<u64> {
    // 1 ns resolution, 3 significant digits: about 0.1% error at any magnitude.
    Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("constant bounds are valid")
}

/// Why a connection ended, for the closed-by-reason counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The client left, the socket failed, or the stream broke the protocol.
    Other,
    IdleTimeout,
    FrameTimeout,
    SlowReader,
    DrainTimeout,
}

impl ClosedBy {
    pub const COUNT: usize = 5;
    pub const ALL: [ClosedBy; ClosedBy::COUNT] = [
        ClosedBy::Other,
        ClosedBy::IdleTimeout,
        ClosedBy::FrameTimeout,
        ClosedBy::SlowReader,
        ClosedBy::DrainTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClosedBy::Other => "other",
            ClosedBy::IdleTimeout => "idle_timeout",
            ClosedBy::FrameTimeout => "frame_timeout",
            ClosedBy::SlowReader => "slow_reader",
            ClosedBy::DrainTimeout => "drain_timeout",
        }
    }
}

/// Upper bounds of the service-time histogram's buckets in `/metrics`, in nanoseconds: 1, 2.5,
/// 5 per decade from 1 us to 1 s.
pub const LATENCY_BUCKETS_NS: [u64; 19] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Statuses a native reply can carry.
pub const STATUS_COUNT: usize = Status::ENUM_MAX as usize + 1;

/// One operation's service times cut into [`LATENCY_BUCKETS_NS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyBuckets {
    /// Samples in each bucket (not cumulative); the last one holds those above 1 s.
    pub per_bucket: [u64; LATENCY_BUCKETS_NS.len() + 1],
    pub count: u64,
    pub sum_ns: u64,
}

impl LatencyBuckets {
    /// Cuts `h` into buckets. A sample counts in the bucket of the lowest value its
    /// HdrHistogram slot stands for, so a bucket's bound is met within the histogram's 0.1%.
    pub fn from_histogram(h: &Histogram<u64>, sum_ns: u64) -> LatencyBuckets {
        let mut per_bucket = [0; LATENCY_BUCKETS_NS.len() + 1];
        for slot in h.iter_recorded() {
            let value = h.lowest_equivalent(slot.value_iterated_to());
            let bucket = LATENCY_BUCKETS_NS.partition_point(|&bound| bound < value);
            per_bucket[bucket] += slot.count_at_value();
        }
        LatencyBuckets {
            per_bucket,
            count: h.len(),
            sum_ns,
        }
    }
}

/// What one core tells a scrape of `/metrics`: its counters, its store's, and its service
/// times in Prometheus buckets.
#[derive(Debug, Clone)]
pub struct CoreSnapshot {
    pub core: u32,
    pub cpu: usize,
    /// Requests read, by operation, over both protocols.
    pub requests: [u64; OpKind::COUNT],
    /// Of `requests`, those read over memcached's text protocol.
    pub memcache_requests: [u64; OpKind::COUNT],
    /// Native replies encoded, by status value.
    pub replies: [u64; STATUS_COUNT],
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_disallowed: u64,
    pub accept_errors: u64,
    pub closed: [u64; ClosedBy::COUNT],
    pub forwarded: u64,
    pub rejected: u64,
    pub unanswered: u64,
    pub compute_queue_depth: u64,
    pub compute_overloaded: u64,
    pub store: StoreStats,
    pub latency: [LatencyBuckets; OpKind::COUNT],
}

/// One core's counters and histograms.
pub struct Metrics {
    pub shard: u32,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Connections closed at accept because their peer is outside `--allow`.
    pub connections_disallowed: u64,
    /// Accepts that failed (EMFILE, ENFILE: out of file descriptors), each followed by a wait.
    pub accept_errors: u64,
    /// Requests this core read from its connections, by operation.
    pub requests: [u64; OpKind::COUNT],
    /// Requests answered with an error before they could run: bad frames, bad fields.
    pub rejected: u64,
    /// Requests this core read whose connection closed before the reply could be written.
    pub unanswered: u64,
    /// Requests this core sent to the core that owns their key.
    pub forwarded: u64,
    /// Gathers over every core this core started (Stats, flush_all); concurrent Stats share one.
    pub gathers: u64,
    /// Service time (read to reply queued for writing) by operation, in nanoseconds.
    pub latency: [Histogram<u64>; OpKind::COUNT],
    /// Of `requests`, those read over memcached's text protocol.
    pub memcache_requests: [u64; OpKind::COUNT],
    /// Connections ended, by why.
    pub closed: [u64; ClosedBy::COUNT],
    /// Compute requests answered `Overloaded` because the compute queue was full.
    pub compute_overloaded: u64,
    /// The sum of the service times in `latency`, in nanoseconds (for the Prometheus `_sum`).
    pub latency_sum_ns: [u64; OpKind::COUNT],
}

impl Metrics {
    pub fn new(shard: u32) -> Metrics {
        Metrics {
            shard,
            connections_open: 0,
            connections_accepted: 0,
            connections_refused: 0,
            connections_disallowed: 0,
            accept_errors: 0,
            requests: [0; OpKind::COUNT],
            rejected: 0,
            unanswered: 0,
            forwarded: 0,
            gathers: 0,
            latency: std::array::from_fn(|_| new_histogram()),
            memcache_requests: [0; OpKind::COUNT],
            closed: [0; ClosedBy::COUNT],
            compute_overloaded: 0,
            latency_sum_ns: [0; OpKind::COUNT],
        }
    }

    /// Records one answered request of `kind` that took `elapsed`.
    #[inline]
    pub fn record(&mut self, kind: OpKind, elapsed: Duration) {
        self.record_n(kind, elapsed, 1);
    }

    /// Records `count` answered requests of `kind` that each took `elapsed`.
    #[inline]
    pub fn record_n(&mut self, kind: OpKind, elapsed: Duration, count: u64) {
        let ns = u64::try_from(elapsed.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_RECORDED_NS);
        self.latency[kind.index()].saturating_record_n(ns, count);
        let sum = &mut self.latency_sum_ns[kind.index()];
        *sum = sum.saturating_add(ns.saturating_mul(count));
    }

    /// A connection ended, for `reason`.
    pub fn connection_closed(&mut self, reason: ClosedBy) {
        self.closed[reason as usize] += 1;
    }

    /// This core's part of a `/metrics` scrape.
    pub fn snapshot(
        &self,
        cpu: usize,
        store: &StoreStats,
        replies: [u64; STATUS_COUNT],
        compute_queue_depth: usize,
    ) -> CoreSnapshot {
        CoreSnapshot {
            core: self.shard,
            cpu,
            requests: self.requests,
            memcache_requests: self.memcache_requests,
            replies,
            connections_open: self.connections_open,
            connections_accepted: self.connections_accepted,
            connections_refused: self.connections_refused,
            connections_disallowed: self.connections_disallowed,
            accept_errors: self.accept_errors,
            closed: self.closed,
            forwarded: self.forwarded,
            rejected: self.rejected,
            unanswered: self.unanswered,
            compute_queue_depth: compute_queue_depth as u64,
            compute_overloaded: self.compute_overloaded,
            store: *store,
            latency: std::array::from_fn(|i| {
                LatencyBuckets::from_histogram(&self.latency[i], self.latency_sum_ns[i])
            }),
        }
    }

    /// The counters `Stats` reports for this core.
    pub fn shard_stats(&self, store: &StoreStats) -> ShardStats {
        let r = &self.requests;
        ShardStats {
            shard: self.shard,
            connections: self.connections_open,
            connections_accepted: self.connections_accepted,
            connections_refused: self.connections_refused,
            requests_hello: r[OpKind::Hello.index()],
            requests_ping: r[OpKind::Ping.index()],
            requests_get: r[OpKind::Get.index()],
            requests_set: r[OpKind::Set.index()],
            requests_delete: r[OpKind::Delete.index()],
            requests_compute: r[OpKind::Compute.index()],
            requests_stats: r[OpKind::Stats.index()],
            hits: store.hits,
            misses: store.misses,
            evictions: store.evictions,
            expirations: store.expirations,
            items: store.items,
            bytes_used: store.bytes_used,
            forwarded: self.forwarded,
            // Filled by the shard, which owns the pools.
            buffers_lent: 0,
            buffers_free: 0,
            requests_touch: r[OpKind::Touch.index()],
            requests_arith: r[OpKind::Arith.index()],
            requests_flush: r[OpKind::Flush.index()],
            items_stored: store.items_stored,
            delete_hits: store.outcomes.delete_hits,
            delete_misses: store.outcomes.delete_misses,
            incr_hits: store.outcomes.incr_hits,
            incr_misses: store.outcomes.incr_misses,
            decr_hits: store.outcomes.decr_hits,
            decr_misses: store.outcomes.decr_misses,
            cas_hits: store.outcomes.cas_hits,
            cas_misses: store.outcomes.cas_misses,
            cas_badval: store.outcomes.cas_badval,
            touch_hits: store.outcomes.touch_hits,
            touch_misses: store.outcomes.touch_misses,
        }
    }
}

/// What one core hands back at exit.
pub struct ShardReport {
    pub cpu: usize,
    pub metrics: Metrics,
    pub store: StoreStats,
}

/// The report printed at exit: service time per operation merged across cores, then a line
/// per core.
pub struct ExitReport {
    pub shards: Vec<ShardReport>,
}

impl ExitReport {
    /// The service-time histogram of `kind`, merged across cores.
    pub fn merged(&self, kind: OpKind) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in &self.shards {
            // Same bounds on every core, so adding cannot fail.
            let _ = h.add(&s.metrics.latency[kind.index()]);
        }
        h
    }

    pub fn total_requests(&self) -> u64 {
        self.shards.iter().flat_map(|s| s.metrics.requests).sum()
    }

    pub fn total_unanswered(&self) -> u64 {
        self.shards.iter().map(|s| s.metrics.unanswered).sum()
    }
}

fn us(ns: f64) -> f64 {
    ns / 1_000.0
}

impl fmt::Display for ExitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "percore exit report: service time per operation in microseconds, all cores"
        )?;
        writeln!(
            f,
            "{:<8} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "op", "count", "mean", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        )?;
        for kind in OpKind::ALL {
            let h = self.merged(kind);
            if h.is_empty() {
                writeln!(
                    f,
                    "{:<8} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    kind.name(),
                    0,
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-"
                )?;
                continue;
            }
            let q = |p: f64| us(h.value_at_quantile(p) as f64);
            writeln!(
                f,
                "{:<8} {:>12} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                kind.name(),
                h.len(),
                us(h.mean()),
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                q(0.9999),
                us(h.max() as f64),
            )?;
        }
        writeln!(f)?;
        for s in &self.shards {
            let m = &s.metrics;
            writeln!(
                f,
                "core {:>3} (cpu {:>3}): requests {} connections {} refused {} disallowed {} \
                 accept_errors {} \
                 forwarded {} rejected {} unanswered {} items {} bytes {} reserved {} hits {} \
                 misses {} expirations {} evictions {} gathers {}",
                m.shard,
                s.cpu,
                m.requests.iter().sum::<u64>(),
                m.connections_accepted,
                m.connections_refused,
                m.connections_disallowed,
                m.accept_errors,
                m.forwarded,
                m.rejected,
                m.unanswered,
                s.store.items,
                s.store.bytes_used,
                s.store.bytes_reserved,
                s.store.hits,
                s.store.misses,
                s.store.expirations,
                s.store.evictions,
                m.gathers,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_times_fall_in_the_bucket_of_their_bound() {
        let mut m = Metrics::new(0);
        // On a bound, just past it, far past the last one.
        m.record(OpKind::Get, Duration::from_micros(1));
        m.record(OpKind::Get, Duration::from_nanos(1_000_000));
        m.record_n(OpKind::Get, Duration::from_micros(1_100), 2);
        m.record(OpKind::Get, Duration::from_secs(3));
        let b = LatencyBuckets::from_histogram(&m.latency[OpKind::Get.index()], 0);
        let at = |ns: u64| LATENCY_BUCKETS_NS.iter().position(|&b| b == ns).unwrap();
        assert_eq!(b.per_bucket[at(1_000)], 1);
        assert_eq!(b.per_bucket[at(1_000_000)], 1);
        assert_eq!(b.per_bucket[at(2_500_000)], 2);
        assert_eq!(b.per_bucket[LATENCY_BUCKETS_NS.len()], 1);
        assert_eq!(b.per_bucket.iter().sum::<u64>(), 5);
        assert_eq!(b.count, 5);
        assert_eq!(
            m.latency_sum_ns[OpKind::Get.index()],
            1_000 + 1_000_000 + 2_200_000 + 3_000_000_000
        );
    }
}
