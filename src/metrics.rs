//! Per-core counters and service-time histograms, and the exit report that merges them.
//!
//! Each core owns its [`Metrics`]: plain integers and HdrHistograms touched only by that core.
//! At exit every core hands its metrics to the main thread, which merges them into the
//! [`ExitReport`] printed on stdout.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::protocol::{OpKind, ShardStats};
use crate::store::StoreStats;

/// Service times above this are recorded as this (10 s).
const MAX_RECORDED_NS: u64 = 10_000_000_000;

fn new_histogram() -> Histogram<u64> {
    // 1 ns resolution, 3 significant digits: about 0.1% error at any magnitude.
    Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("constant bounds are valid")
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
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.latency[kind.index()].saturating_record_n(ns.clamp(1, MAX_RECORDED_NS), count);
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
