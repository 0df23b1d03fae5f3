//! What the run shows at its end: the report (stdout: throughput, errors, lost requests, how
//! connections ended, the --verify-keys result, the distributions), the percentile distributions in
//! HdrHistogram's text format (`--hgrm`) and the JSON summary (`--json`).
//!
//! The distribution format is HdrHistogram's `outputPercentileDistribution` (what wrk2's
//! `--latency` prints and the HdrHistogram plotter reads), with values in milliseconds.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::cli::Plan;
use crate::engine::Outcome;
use crate::stats::{merged, percentile_ms, ErrorKind, NS_PER_MS};
use crate::workload::LoadOp;

const NS_PER_US: f64 = 1e3;
/// Percentile ticks per half distance, as HdrHistogram and wrk2 print by default.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// A histogram's percentile distribution in HdrHistogram's text format, values divided by
/// `scale`.
pub fn percentile_distribution(h: &Histogram<u64>, scale: f64) -> String {
    let mut out = String::new();
    let digits = usize::from(h.sigfig());
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:>12.digits$} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:>12.digits$} {q:>2.12} {total:>10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {sub_buckets:>12}]",
        h.buckets()
    );
    out
}

fn summary_us(h: &Histogram<u64>) -> Value {
    let q = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / NS_PER_US
        }
    };
    json!({
        "count": h.len(),
        "mean": if h.is_empty() { 0.0 } else { h.mean() / NS_PER_US },
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "p999": q(0.999),
        "p9999": q(0.9999),
        "max": if h.is_empty() { 0.0 } else { h.max() as f64 / NS_PER_US },
    })
}

fn throughput(outcome: &Outcome) -> f64 {
    outcome.total.counts.total_ops() as f64 / outcome.duration.as_secs_f64()
}

/// The JSON summary scripts rely on.
pub fn json_summary(plan: &Plan, outcome: &Outcome) -> Value {
    let counts = &outcome.total.counts;
    let errors: Map<String, Value> = ErrorKind::ALL
        .iter()
        .map(|k| (k.name().to_owned(), json!(counts.errors[*k as usize])))
        .collect();
    let ops = plan.ops();
    let per_op = |hs: &[Histogram<u64>]| -> Map<String, Value> {
        ops.iter()
            .map(|op| (op.name().to_owned(), summary_us(&hs[op.index()])))
            .collect()
    };
    let ops_by_kind: Map<String, Value> = ops
        .iter()
        .map(|op| (op.name().to_owned(), json!(counts.ops[op.index()])))
        .collect();
    json!({
        "throughput": throughput(outcome),
        "ops": counts.total_ops(),
        "ops_by_operation": ops_by_kind,
        "errors": errors,
        "errors_total": counts.total_errors(),
        "duration_s": outcome.duration.as_secs_f64(),
        "latency_us": per_op(&outcome.total.latency),
        "service_time_us": per_op(&outcome.total.service),
        "requests_sent": counts.sent,
        "lost": counts.errors[ErrorKind::Lost as usize],
        "shutting_down": counts.shutting_down,
        "closed_clean": counts.closed_clean,
        "verify": plan.verify_keys.then(|| json!({
            "checked": counts.verify_checked,
            "verified": counts.verified,
        })),
        "get_misses": counts.misses,
        "mode": if plan.rate.is_some() { "open" } else { "closed" },
        "rate": plan.rate,
        "unsent": counts.unsent,
        "late_sends": counts.late_sends,
        "max_send_lag_us": counts.max_send_lag_ns as f64 / NS_PER_US,
        "connections": plan.connections,
        "pipeline": plan.pipeline,
        "cores": plan.cpus.len(),
        "workload": format!("{:?}", plan.workload).to_lowercase(),
        "mix": plan.mix.to_string(),
        "targets": plan.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "hit_ratio": plan.is_cache().then(|| counts.hit_ratio()),
        "cache": plan.is_cache().then(|| cache_summary(plan, outcome)),
    })
}

/// The cache workload's part of the JSON: what the hit ratio is made of, and its intervals.
fn cache_summary(plan: &Plan, outcome: &Outcome) -> Value {
    let counts = &outcome.total.counts;
    let (lookups, hits) = counts.cache_lookups();
    let seconds: Vec<Value> = outcome
        .cache_seconds
        .iter()
        .map(|s| {
            json!({
                "end_s": s.end_s,
                "length_s": s.length_s,
                "lookups": s.lookups,
                "hits": s.hits,
                "hit_ratio": (s.lookups > 0).then(|| s.hits as f64 / s.lookups as f64),
            })
        })
        .collect();
    json!({
        "lookups": lookups,
        "hits": hits,
        "misses": lookups - hits,
        "fills": counts.ops[LoadOp::Set.index()],
        "scan": plan.scan.map(|scan| json!({
            "after": scan.after,
            "keys": scan.count,
            "lookups": counts.scan_lookups,
            "misses": counts.scan_misses,
        })),
        "per_second": seconds,
    })
}

/// Warnings about the run's own trustworthiness (the generator falling behind its schedule).
pub fn warnings(plan: &Plan, outcome: &Outcome) -> Vec<String> {
    let counts = &outcome.total.counts;
    let mut out = Vec::new();
    if let Some(rate) = plan.rate {
        if counts.unsent > 0 {
            out.push(format!(
                "the asked rate was not reached: {} of the requests scheduled at {rate} ops/s were never sent \
                 (sent {:.0} ops/s; the server was too slow or the generator fell behind)",
                counts.unsent,
                counts.sent as f64 / outcome.duration.as_secs_f64(),
            ));
        }
        if counts.late_sends * 100 > counts.sent.max(1) {
            out.push(format!(
                "the generator could not keep up with its own schedule: {} of {} requests went out more \
                 than 1 ms late with the pipeline free (worst {:.1} ms); use more --cores or fewer \
                 --connections",
                counts.late_sends,
                counts.sent,
                counts.max_send_lag_ns as f64 / NS_PER_MS,
            ));
        }
    }
    if outcome.dropped_ticks > 0 {
        out.push(format!(
            "{} one-second intervals were dropped from the progress lines and --hlog (main thread behind)",
            outcome.dropped_ticks
        ));
    }
    out
}

/// The exit report.
pub fn text_report(plan: &Plan, outcome: &Outcome) -> String {
    let counts = &outcome.total.counts;
    let mut out = String::new();
    let _ = writeln!(out, "percore-load: {}", plan.describe());
    let _ = writeln!(
        out,
        "Throughput: {:.1} ops/s ({} ops in {:.3} s, {} requests sent)",
        throughput(outcome),
        counts.total_ops(),
        outcome.duration.as_secs_f64(),
        counts.sent,
    );
    if plan.mix.ops().contains(&LoadOp::Get) {
        let _ = writeln!(out, "Get misses: {}", counts.misses);
    }
    if plan.is_cache() {
        let (lookups, hits) = counts.cache_lookups();
        let ratio = counts
            .hit_ratio()
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.4}"));
        let _ = writeln!(
            out,
            "Cache: hit ratio {ratio} ({hits} hits of {lookups} gets; {} fills)",
            counts.ops[LoadOp::Set.index()]
        );
        if let Some(scan) = plan.scan {
            let _ = writeln!(
                out,
                "Scan pass: {} of {} cold keys looked up ({} missed), left out of the hit ratio",
                counts.scan_lookups, scan.count, counts.scan_misses
            );
        }
        let per_second: Vec<String> = outcome
            .cache_seconds
            .iter()
            .filter(|s| s.end_s > 0.0 && s.length_s >= 0.1 && s.lookups > 0)
            .map(|s| format!("{:.3}", s.hits as f64 / s.lookups as f64))
            .collect();
        if !per_second.is_empty() {
            let _ = writeln!(out, "Hit ratio per second: {}", per_second.join(" "));
        }
    }
    let errors: Vec<String> = ErrorKind::ALL
        .iter()
        .filter(|k| counts.errors[**k as usize] > 0)
        .map(|k| format!("{} {}", k.name(), counts.errors[*k as usize]))
        .collect();
    if errors.is_empty() {
        let _ = writeln!(out, "Errors: none");
    } else {
        let _ = writeln!(
            out,
            "Errors: {} ({})",
            counts.total_errors(),
            errors.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "Lost: {} (requests written with no reply when their connection ended)",
        counts.errors[ErrorKind::Lost as usize]
    );
    if counts.closed_clean > 0 {
        let _ = writeln!(
            out,
            "Closed by the server after answering every request sent: {} connection(s)",
            counts.closed_clean
        );
    }
    if counts.shutting_down > 0 {
        let _ = writeln!(
            out,
            "ShuttingDown replies: {} (not errors: requests the stopping server did not run)",
            counts.shutting_down
        );
    }
    if plan.verify_keys {
        let _ = writeln!(
            out,
            "Verified keys: {} of {} read back with their last acknowledged value (or absent after a delete)",
            counts.verified, counts.verify_checked
        );
    }
    if let Some(rate) = plan.rate {
        let _ = writeln!(
            out,
            "Schedule: asked {rate} ops/s; unsent {}; sent late by the generator {} (worst {:.3} ms)",
            counts.unsent,
            counts.late_sends,
            counts.max_send_lag_ns as f64 / NS_PER_MS
        );
    }
    for w in warnings(plan, outcome) {
        let _ = writeln!(out, "Warning: {w}");
    }
    for op in plan.ops() {
        let latency = &outcome.total.latency[op.index()];
        let what = if plan.rate.is_some() {
            "latency from intended send time (corrected for coordinated omission)"
        } else {
            "latency (closed loop: from send)"
        };
        let _ = writeln!(
            out,
            "\n{} {what}, milliseconds, {} replies:",
            op.name(),
            latency.len()
        );
        out.push_str(&percentile_distribution(latency, NS_PER_MS));
        if plan.rate.is_some() {
            let service = &outcome.total.service[op.index()];
            if !service.is_empty() {
                let _ = writeln!(
                    out,
                    "{} service time from actual send (uncorrected), ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                    op.name(),
                    percentile_ms(service, 0.5),
                    percentile_ms(service, 0.9),
                    percentile_ms(service, 0.99),
                    percentile_ms(service, 0.999),
                    service.max() as f64 / NS_PER_MS,
                );
            }
        }
    }
    out
}

/// `dir/name.hgrm` for op `get` becomes `dir/name.get.hgrm`.
fn per_op_path(path: &Path, op: LoadOp) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{}.{}", op.name(), ext.to_string_lossy()),
        None => format!("{stem}.{}", op.name()),
    };
    path.with_file_name(name)
}

/// Writes the --hgrm and --json files the plan asks for.
pub fn write_files(plan: &Plan, outcome: &Outcome) -> anyhow::Result<()> {
    if let Some(path) = &plan.hgrm {
        let ops = plan.ops();
        let all = merged(&outcome.total.latency);
        std::fs::write(path, percentile_distribution(&all, NS_PER_MS))
            .with_context(|| format!("cannot write --hgrm {}", path.display()))?;
        if ops.len() > 1 {
            for op in ops {
                let op_path = per_op_path(path, op);
                let text = percentile_distribution(&outcome.total.latency[op.index()], NS_PER_MS);
                std::fs::write(&op_path, text)
                    .with_context(|| format!("cannot write {}", op_path.display()))?;
            }
        }
    }
    if let Some(path) = &plan.json {
        let text = serde_json::to_string_pretty(&json_summary(plan, outcome))?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write --json {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn distribution_has_the_hdrhistogram_layout() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            h.record(i * 1_000).unwrap(); // 1 us .. 1 ms
        }
        let text = percentile_distribution(&h, NS_PER_MS);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // First row: the lowest value at percentile 0.
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first[0], "0.001");
        assert_eq!(first[1], "0.000000000000");
        assert_eq!(first[2], "1");
        assert_eq!(first[3], "1.00");
        // Last data row: percentile 1 with the total count and no 1/(1-p).
        let last_row = lines[lines.len() - 4];
        let last: Vec<&str> = last_row.split_whitespace().collect();
        assert_eq!(last.len(), 3, "{last_row}");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        assert!(lines[lines.len() - 3].starts_with("#[Mean    =        0.50"));
        assert!(lines[lines.len() - 2].starts_with("#[Max     =        1.000"));
        assert!(lines[lines.len() - 2].ends_with("Total count    =         1000]"));
        assert!(lines[lines.len() - 1].starts_with("#[Buckets ="));
        // Counts never go down.
        let mut previous = 0;
        for row in &lines[2..lines.len() - 3] {
            let count: u64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert!(count >= previous);
            previous = count;
        }
    }

    #[test]
    fn an_empty_distribution_still_has_its_frame() {
        let text = percentile_distribution(&new_histogram(), NS_PER_MS);
        assert!(text.contains("Total count    =            0]"));
    }

    #[test]
    fn per_op_files_keep_the_extension() {
        assert_eq!(
            per_op_path(Path::new("/tmp/run.hgrm"), LoadOp::Get),
            PathBuf::from("/tmp/run.get.hgrm")
        );
        assert_eq!(
            per_op_path(Path::new("out"), LoadOp::Set),
            PathBuf::from("out.set")
        );
    }
}
