//! What `/metrics` says: every core's [`CoreSnapshot`] as Prometheus series, encoded by the
//! Prometheus project's Rust client (`prometheus-client`) in either of its formats.
//!
//! One description of the series ([`Snapshots`], a `prometheus-client` collector) feeds both
//! encoders: the classic text format (version 0.0.4, what `promtool check metrics` lints) and
//! OpenMetrics 1.0 (what Prometheus asks for first). Writing either format by hand would be a
//! second implementation of a format that a maintained crate already gets right, escaping
//! included. Nothing here runs on the request path: a scrape builds this from snapshots the
//! cores sent over the mesh.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::{ClosedBy, CoreSnapshot, LATENCY_BUCKETS_NS};
use crate::protocol::{OpKind, Status};

/// The two text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, version 0.0.4.
    Classic,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a reply in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality no lower than the classic format's (as
    /// Prometheus's own header does), the classic format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        let mut openmetrics: f32 = 0.0;
        let mut classic: f32 = 0.0;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => classic = classic.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= classic {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }
}

/// Encodes `cores` in `format`.
pub fn encode(cores: Vec<CoreSnapshot>, format: Format) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshots { cores }));
    let mut out = String::with_capacity(64 << 10);
    match format {
        Format::Classic => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

/// Every core's snapshot, as a collector of constant series.
#[derive(Debug)]
struct Snapshots {
    cores: Vec<CoreSnapshot>,
}

/// The name of a native reply's status, in the label's lower case.
fn status_name(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::NotFound => "not_found",
        Status::BadRequest => "bad_request",
        Status::TooLarge => "too_large",
        Status::Overloaded => "overloaded",
        Status::ShuttingDown => "shutting_down",
        Status::Internal => "internal",
        _ => "unknown",
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Snapshots {
    /// One series per core of the counter or gauge `name`, with `value` of each core.
    fn per_core(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        metric_type: MetricType,
        value: impl Fn(&CoreSnapshot) -> u64,
    ) -> fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
        for core in &self.cores {
            let id = core.core.to_string();
            let labels: Labels<'_> = vec![("core", &id)];
            let mut series = family.encode_family(&labels)?;
            match metric_type {
                MetricType::Counter => {
                    series.encode_counter::<NoLabelSet, _, u64>(&value(core), None)?
                }
                _ => series.encode_gauge(&value(core))?,
            }
        }
        Ok(())
    }
}

impl Collector for Snapshots {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        info.encode(encoder.encode_descriptor(
            "percore_build",
            "The version of the running percore.",
            None,
            info.metric_type(),
        )?)?;

        let mut family = encoder.encode_descriptor(
            "percore_requests",
            "Requests read, by operation and protocol.",
            None,
            MetricType::Counter,
        )?;
        for core in &self.cores {
            let id = core.core.to_string();
            for kind in OpKind::ALL {
                let all = core.requests[kind.index()];
                let memcache = core.memcache_requests[kind.index()];
                for (protocol, n) in [
                    ("native", all.saturating_sub(memcache)),
                    ("memcached", memcache),
                ] {
                    let labels: Labels<'_> =
                        vec![("core", &id), ("op", kind.name()), ("protocol", protocol)];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "percore_replies",
            "Replies of the native protocol, by status.",
            None,
            MetricType::Counter,
        )?;
        for core in &self.cores {
            let id = core.core.to_string();
            for &status in Status::ENUM_VALUES {
                let n = core.replies.get(status.0 as usize).copied().unwrap_or(0);
                let labels: Labels<'_> = vec![("core", &id), ("status", status_name(status))];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }

        use MetricType::{Counter, Gauge};
        let e = &mut encoder;
        self.per_core(
            e,
            "percore_store_hits",
            "Reads that found their key.",
            Counter,
            |c| c.store.hits,
        )?;
        self.per_core(
            e,
            "percore_store_misses",
            "Reads that did not find their key.",
            Counter,
            |c| c.store.misses,
        )?;
        self.per_core(
            e,
            "percore_store_evictions",
            "Items evicted to make room.",
            Counter,
            |c| c.store.evictions,
        )?;
        self.per_core(
            e,
            "percore_store_expirations",
            "Items removed because their TTL ran out.",
            Counter,
            |c| c.store.expirations,
        )?;
        self.per_core(e, "percore_store_items", "Items stored now.", Gauge, |c| {
            c.store.items
        })?;
        self.per_core(
            e,
            "percore_store_used_bytes",
            "Bytes the stored items take (chunks and index entries).",
            Gauge,
            |c| c.store.bytes_used,
        )?;
        self.per_core(
            e,
            "percore_store_reserved_bytes",
            "Bytes of segments the store has allocated, at most its share of --memory.",
            Gauge,
            |c| c.store.bytes_reserved,
        )?;
        self.per_core(
            e,
            "percore_connections_open",
            "Connections open now.",
            Gauge,
            |c| c.connections_open,
        )?;
        self.per_core(
            e,
            "percore_connections_accepted",
            "Connections accepted and served.",
            Counter,
            |c| c.connections_accepted,
        )?;
        self.per_core(
            e,
            "percore_connections_refused",
            "Connections closed at accept: --max-connections were open.",
            Counter,
            |c| c.connections_refused,
        )?;
        self.per_core(
            e,
            "percore_connections_disallowed",
            "Connections closed at accept: the client's address is outside --allow.",
            Counter,
            |c| c.connections_disallowed,
        )?;
        self.per_core(
            e,
            "percore_accept_errors",
            "Accepts that failed (typically out of file descriptors).",
            Counter,
            |c| c.accept_errors,
        )?;

        let mut family = encoder.encode_descriptor(
            "percore_connections_closed",
            "Connections ended, by reason (other: the client left, the socket failed or the \
             stream broke the protocol).",
            None,
            MetricType::Counter,
        )?;
        for core in &self.cores {
            let id = core.core.to_string();
            for reason in ClosedBy::ALL {
                let labels: Labels<'_> = vec![("core", &id), ("reason", reason.name())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&core.closed[reason as usize], None)?;
            }
        }

        let e = &mut encoder;
        self.per_core(
            e,
            "percore_forwarded",
            "Requests sent to the core that owns their key.",
            Counter,
            |c| c.forwarded,
        )?;
        self.per_core(
            e,
            "percore_rejected",
            "Requests answered with an error before they ran (bad frames and fields).",
            Counter,
            |c| c.rejected,
        )?;
        self.per_core(
            e,
            "percore_unanswered",
            "Requests read whose connection closed before their reply was written.",
            Counter,
            |c| c.unanswered,
        )?;
        self.per_core(
            e,
            "percore_compute_queue_depth",
            "Compute requests waiting in the core's queue now.",
            Gauge,
            |c| c.compute_queue_depth,
        )?;
        self.per_core(
            e,
            "percore_compute_overloaded",
            "Compute requests answered Overloaded: the core's compute queue was full.",
            Counter,
            |c| c.compute_overloaded,
        )?;

        let mut family = encoder.encode_descriptor(
            "percore_service_time",
            "Service time per operation: from the whole request read to its reply queued for \
             writing.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for core in &self.cores {
            let id = core.core.to_string();
            for kind in OpKind::ALL {
                let latency = &core.latency[kind.index()];
                let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_NS
                    .iter()
                    .map(|&ns| ns as f64 / 1e9)
                    .zip(latency.per_bucket)
                    .collect();
                let labels: Labels<'_> = vec![("core", &id), ("op", kind.name())];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        latency.sum_ns as f64 / 1e9,
                        latency.count,
                        &buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::StoreStats;
    use std::time::Duration;

    #[test]
    fn accept_headers_choose_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("text/plain;q=1, application/openmetrics-text;q=0.5")),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Classic
        );
    }

    fn snapshot() -> CoreSnapshot {
        let mut m = Metrics::new(1);
        m.requests[OpKind::Get.index()] = 5;
        m.memcache_requests[OpKind::Get.index()] = 2;
        m.record_n(OpKind::Get, Duration::from_micros(30), 5);
        m.snapshot(
            3,
            &StoreStats::default(),
            [0; crate::metrics::STATUS_COUNT],
            0,
        )
    }

    #[test]
    fn both_formats_carry_the_same_series() {
        for format in [Format::Classic, Format::OpenMetrics] {
            let text = encode(vec![snapshot()], format).unwrap();
            for line in [
                "percore_requests_total{core=\"1\",op=\"get\",protocol=\"native\"} 3",
                "percore_requests_total{core=\"1\",op=\"get\",protocol=\"memcached\"} 2",
                "percore_service_time_seconds_count{core=\"1\",op=\"get\"} 5",
            ] {
                assert!(text.contains(line), "{format:?} lacks {line}:\n{text}");
            }
            assert!(text.contains("percore_build_info{version=\""), "{text}");
            // 30 us: above the 25 us bound, within the 50 us one (each format writes the
            // bound its own way).
            let bucket = |le: f64| {
                text.lines()
                    .filter(|l| l.starts_with("percore_service_time_seconds_bucket{"))
                    .filter(|l| l.contains("core=\"1\"") && l.contains("op=\"get\""))
                    .find_map(|l| {
                        let (_, rest) = l.split_once("le=\"")?;
                        let (bound, _) = rest.split_once('"')?;
                        let (_, count) = l.rsplit_once(' ')?;
                        (bound.parse::<f64>().ok()? == le).then(|| count.parse::<u64>().ok())?
                    })
            };
            assert_eq!(bucket(25e-6), Some(0), "{format:?}:\n{text}");
            assert_eq!(bucket(50e-6), Some(5), "{format:?}:\n{text}");
        }
    }
}
