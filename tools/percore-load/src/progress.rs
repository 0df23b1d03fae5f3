//! The run as it goes: once every core has reported a second's interval, the progress line
//! (stderr: throughput, p50, p99, errors, and the cache workload's hit ratio) and the
//! HdrHistogram interval log (`--hlog`), one histogram per interval for all operations and,
//! in a mixed run, one per operation. The cache workload's lookups and hits of every interval
//! are kept for the report ([`CacheSecond`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use base64::Engine as _;
use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;

use crate::cli::Plan;
use crate::stats::{
    first_tick, merged, new_histogram, percentile_ms, tick_time, Counts, Tick, NS_PER_MS,
};
use crate::workload::LoadOp;

/// One interval being gathered from the cores.
struct Interval {
    reported: usize,
    end: Instant,
    latency: Vec<Histogram<u64>>,
    counts: Counts,
}

/// One interval's cache lookups (the --scan-after pass left out) and hits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheSecond {
    /// When the interval ended, in seconds after measure start (warmup's are 0 or less).
    pub end_s: f64,
    pub length_s: f64,
    pub lookups: u64,
    pub hits: u64,
}

/// The main thread's side of the run: gathers each second's intervals from every core, prints
/// the progress line and writes the interval log.
pub struct Progress {
    quiet: bool,
    cores: usize,
    start: Instant,
    measure_start: Instant,
    ops: Vec<LoadOp>,
    pending: BTreeMap<i64, Interval>,
    hlog: Option<HlogFile>,
    /// The cache workload's intervals so far; `None` for other workloads.
    cache: Option<Vec<CacheSecond>>,
}

/// An HdrHistogram interval log (format 1.3, as Java's `HistogramLogWriter` writes it):
/// header comments, the legend, then one line per interval histogram, compressed V2 in base64.
/// Written here rather than with the crate's `IntervalLogWriter`, which cannot put the legend
/// line in the header.
struct HlogFile {
    path: PathBuf,
    out: BufWriter<File>,
    serializer: V2DeflateSerializer,
    scratch: Vec<u8>,
}

impl HlogFile {
    /// One interval: start (seconds since StartTime), length, max (ms), histogram.
    fn write(
        &mut self,
        tag: Option<&str>,
        offset: Duration,
        length: Duration,
        h: &Histogram<u64>,
    ) -> anyhow::Result<()> {
        self.scratch.clear();
        self.serializer
            .serialize(h, &mut self.scratch)
            .map_err(|e| anyhow::anyhow!("cannot encode an --hlog histogram: {e:?}"))?;
        if let Some(tag) = tag {
            write!(self.out, "Tag={tag},")?;
        }
        writeln!(
            self.out,
            "{:.3},{:.3},{:.3},{}",
            offset.as_secs_f64(),
            length.as_secs_f64(),
            h.max() as f64 / NS_PER_MS,
            base64::engine::general_purpose::STANDARD.encode(&self.scratch)
        )
        .with_context(|| format!("cannot write --hlog {}", self.path.display()))
    }
}

impl Progress {
    pub fn new(plan: &Plan, start: Instant, cores: usize) -> anyhow::Result<Progress> {
        let measure_start = start + plan.warmup;
        let hlog = match &plan.hlog {
            None => None,
            Some(path) => {
                let file = File::create(path)
                    .with_context(|| format!("cannot create --hlog {}", path.display()))?;
                let mut out = BufWriter::new(file);
                // The wall-clock time of measure start.
                let now = Instant::now();
                let wall = if measure_start >= now {
                    SystemTime::now() + (measure_start - now)
                } else {
                    SystemTime::now() - (now - measure_start)
                };
                let epoch = wall
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                writeln!(
                    out,
                    "#[Logged with percore-load {}: {}]",
                    env!("CARGO_PKG_VERSION"),
                    plan.describe()
                )?;
                writeln!(out, "#[Histogram log format version 1.3]")?;
                writeln!(out, "#[StartTime: {epoch:.3} (seconds since epoch)]")?;
                writeln!(out, "#[BaseTime: {epoch:.3} (seconds since epoch)]")?;
                writeln!(out, "#[Values are latencies in nanoseconds, from each request's intended send time]")?;
                writeln!(
                    out,
                    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
                )?;
                Some(HlogFile {
                    path: path.clone(),
                    out,
                    serializer: V2DeflateSerializer::new(),
                    scratch: Vec::new(),
                })
            }
        };
        Ok(Progress {
            quiet: plan.quiet,
            cores,
            start,
            measure_start,
            ops: plan.ops(),
            pending: BTreeMap::new(),
            hlog,
            cache: plan.is_cache().then(Vec::new),
        })
    }

    /// One core's interval.
    pub fn add(&mut self, tick: Tick) -> anyhow::Result<()> {
        let interval = self.pending.entry(tick.index).or_insert_with(|| Interval {
            reported: 0,
            end: tick.end,
            latency: (0..LoadOp::COUNT).map(|_| new_histogram()).collect(),
            counts: Counts::default(),
        });
        interval.reported += 1;
        interval.end = interval.end.max(tick.end);
        for (a, b) in interval.latency.iter_mut().zip(&tick.latency) {
            let _ = a.add(b);
        }
        interval.counts.add(&tick.counts);
        // Show every interval all cores have reported, in order.
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().reported < self.cores {
                break;
            }
            let (index, interval) = entry.remove_entry();
            self.show(index, interval)?;
        }
        Ok(())
    }

    /// The cache workload's intervals (empty for other workloads).
    pub fn take_cache_seconds(&mut self) -> Vec<CacheSecond> {
        self.cache.take().unwrap_or_default()
    }

    /// Shows what is left once every core has finished.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        while let Some((index, interval)) = self.pending.pop_first() {
            self.show(index, interval)?;
        }
        if let Some(hlog) = &mut self.hlog {
            hlog.out
                .flush()
                .with_context(|| format!("cannot write --hlog {}", hlog.path.display()))?;
        }
        Ok(())
    }

    fn show(&mut self, index: i64, interval: Interval) -> anyhow::Result<()> {
        let begin = if index <= first_tick(self.measure_start - self.start) {
            self.start
        } else {
            tick_time(self.measure_start, index - 1)
        };
        let length = interval.end.saturating_duration_since(begin);
        if length.is_zero() {
            return Ok(());
        }
        let all = merged(&interval.latency);
        let (lookups, hits) = interval.counts.cache_lookups();
        if let Some(cache) = &mut self.cache {
            cache.push(CacheSecond {
                end_s: signed_secs(interval.end, self.measure_start),
                length_s: length.as_secs_f64(),
                lookups,
                hits,
            });
        }
        // The last interval of a run is often a sliver (replies still arriving after the end):
        // a rate over a few milliseconds would only mislead, so it goes to the log only.
        if !self.quiet && length >= Duration::from_millis(100) {
            let ops = interval.counts.total_ops();
            let (p50, p99) = if all.is_empty() {
                (0.0, 0.0)
            } else {
                (percentile_ms(&all, 0.5), percentile_ms(&all, 0.99))
            };
            let hit_ratio = match (&self.cache, lookups) {
                (None, _) => String::new(),
                (Some(_), 0) => "  hit -".to_owned(),
                (Some(_), n) => format!("  hit {:.4}", hits as f64 / n as f64),
            };
            eprintln!(
                "[{:>6.1}s] {:>10.0} ops/s  p50 {p50:>8.3} ms  p99 {p99:>8.3} ms  errors {}{hit_ratio}{}",
                interval
                    .end
                    .saturating_duration_since(self.start)
                    .as_secs_f64(),
                ops as f64 / length.as_secs_f64(),
                interval.counts.total_errors(),
                if index <= 0 { "  (warmup)" } else { "" },
            );
        }
        if index > 0 {
            if let Some(hlog) = &mut self.hlog {
                let offset = begin.saturating_duration_since(self.measure_start);
                hlog.write(None, offset, length, &all)?;
                if self.ops.len() > 1 {
                    for op in &self.ops {
                        hlog.write(
                            Some(op.name()),
                            offset,
                            length,
                            &interval.latency[op.index()],
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `at - from` in seconds, negative when `at` is earlier.
fn signed_secs(at: Instant, from: Instant) -> f64 {
    if at >= from {
        (at - from).as_secs_f64()
    } else {
        -(from - at).as_secs_f64()
    }
}
