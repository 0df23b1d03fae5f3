//! The command line, and the checked [`Plan`] a run follows.
//!
//! Cores, durations and sizes parse with `percore::config` types, so `percore` and
//! `percore-load` read `--cores 0,2-3`, `250ms` and `64KiB` the same way.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use percore::config::{CoreSpec, Dur};
use percore::protocol::{Algo, MAX_COMPUTE_ROUNDS, MAX_KEY_LEN, MAX_VALUE_LEN};

use crate::codec::ProtocolKind;
use crate::workload::{min_key_size, KeyDist, LoadOp, Mix, ValueSize, CHECKSUM_LEN};

/// Most keys in one get command: a line of 250-byte keys then stays within 64 KiB.
pub const MAX_MULTIGET: usize = 256;

/// percore-load: the load generator bundled with percore.
///
/// Runs one pinned executor per chosen CPU, spreads --connections across them and across the
/// --target servers, and keeps up to --pipeline requests in flight on each connection. Without
/// --rate it runs closed loop (each connection sends as fast as replies come back); with
/// --rate it runs open loop: the total rate is spread evenly over the connections on a fixed
/// schedule, and latency is measured from each request's intended send time, so a stalled
/// server fills the tail instead of hiding (wrk2's coordinated-omission correction). The
/// service time from the actual send is kept too.
///
/// Every reply is checked: matched by id (memcached: by order), expected status, and each
/// value's checksum (values end with a CRC-32C over key and content). Wrong replies, and
/// requests lost with their connection (written, no reply when it ended), are counted by kind
/// and make the exit status 1. A connection the server closes after answering everything sent is a clean end;
/// a `ShuttingDown` reply is not an error (that connection sends nothing more).
///
/// A progress line goes to stderr every second; at the end, throughput, errors and per
/// operation the HdrHistogram percentile distribution (latency in milliseconds) go to stdout.
#[derive(Debug, Parser)]
#[command(name = "percore-load", version, max_term_width = 100)]
pub struct Args {
    /// Server to load, HOST:PORT; repeat it to load several servers, connections are spread
    /// across them round-robin [default: 127.0.0.1:7070]
    #[arg(long = "target", value_name = "ADDR")]
    pub targets: Vec<String>,

    /// CPUs the load generator runs on: a count (first N usable) or a list like 0,2-3; one
    /// pinned executor per CPU, connections spread across them [default: 1]
    #[arg(long, value_name = "N|LIST")]
    pub cores: Option<CoreSpec>,

    /// Connections in total, across all cores and targets
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub connections: usize,

    /// Requests each connection may have in flight at once
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub pipeline: usize,

    /// Open loop at this many requests per second in total, spread evenly over the connections
    /// on a fixed schedule [default: closed loop]
    #[arg(long, value_name = "OPS_PER_SEC")]
    pub rate: Option<u64>,

    /// How long to measure, after --warmup [default: 10s unless --requests is given]
    #[arg(long, value_name = "DUR", conflicts_with = "requests")]
    pub duration: Option<Dur>,

    /// Measure this many requests in total instead of running for a --duration
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,

    /// Load sent before measuring starts; its replies are checked but not counted
    #[arg(long, value_name = "DUR", default_value = "0s")]
    pub warmup: Dur,

    /// How long each load core keeps polling its sockets after the last reply before it
    /// sleeps (as the server's --idle-poll); 0 never polls, for CPUs shared with the server
    #[arg(long, value_name = "DUR", default_value = "20us")]
    pub idle_poll: Dur,

    /// What to send: ping (echo a payload of --value-size), get, set, delete, mixed (--mix),
    /// compute, or cache: cache-aside, a get of a drawn key and, when it misses, a set of that
    /// key (the fill). A key's value is fixed by the key, its size too (uniform over a
    /// --value-size range), so every hit is compared byte for byte. --rate and --requests
    /// count the gets; fills go out on top, as soon as the miss is seen. Reports the hit ratio,
    /// overall and per second
    #[arg(long, value_enum, default_value_t = WorkloadKind::Ping)]
    pub workload: WorkloadKind,

    /// Operation weights of the mixed workload, OP:WEIGHT,... with OP one of get, set, delete,
    /// ping, compute
    #[arg(long, value_name = "MIX", default_value = "get:90,set:10")]
    pub mix: Mix,

    /// Keys per get command (at most 256), memcached's batching of gets (--protocol memcached,
    /// a workload with get). Each line's keys are drawn independently (a key may repeat); the
    /// reply must give their VALUEs in request order (a key without one is a miss), then END.
    /// Each key is one op: --requests, --rate and the throughput count keys, and each key has
    /// its own entry in the latency histograms, all with its line's latency (intended send to
    /// END). --pipeline counts lines in flight, and --mix draws a line as one get. The
    /// --prefill and --verify-keys passes send one key per command
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub multiget: usize,

    /// Keys in the keyspace
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub keys: u64,

    /// Bytes per key: `k` and the key's number, zero-padded (at least enough digits for --keys)
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub key_size: usize,

    /// Bytes per value (and ping payload, compute input): N, or MIN-MAX drawn uniformly; values
    /// are at least 4 bytes, their checksum
    #[arg(long, value_name = "N|MIN-MAX", default_value = "100")]
    pub value_size: ValueSize,

    /// How keys are drawn: uniform, or zipf:S (rank r with probability proportional to 1/r^S)
    #[arg(long, value_name = "DIST", default_value = "uniform")]
    pub key_dist: KeyDist,

    /// Set every key once before measuring, so gets hit; a get that then misses is an error
    /// (unless the workload deletes)
    #[arg(long)]
    pub prefill: bool,

    /// After the run, read back every key a set or delete was acknowledged for and check that
    /// it holds the last acknowledged value, byte for byte, or nothing after a delete. So that
    /// the last one is known, each key is then written by one connection only (connection i
    /// sets and deletes the keys equal to i modulo --connections; gets still read any key),
    /// which keeps its writes in order; a missing key or another value is an error
    #[arg(long)]
    pub verify_keys: bool,

    /// Learn the topology with Hello and send each key straight to the core that owns it,
    /// through the server's --shard-ports
    #[arg(long)]
    pub shard_aware: bool,

    /// Wire protocol: percore, or memcached (text protocol: get, set, delete, --multiget)
    #[arg(long, value_enum, default_value_t = ProtocolKind::Percore)]
    pub protocol: ProtocolKind,

    /// Hash of the compute workload
    #[arg(long, value_enum, default_value_t = AlgoArg::Crc32c)]
    pub compute_algo: AlgoArg,

    /// Rounds per compute request
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub compute_rounds: u32,

    /// Give up on a connection whose requests in flight get no reply for this long (they
    /// count as lost)
    #[arg(long, value_name = "DUR", default_value = "5s")]
    pub timeout: Dur,

    /// Seed of the key, size and operation draws, so runs can be repeated (the bytes of values
    /// do not depend on it)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,

    /// Also write the results as one JSON object to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Also write the percentile distribution of all operations to FILE (HdrHistogram text
    /// format, for the HdrHistogram plotter); with several operations, each also gets
    /// FILE's stem + .OP + extension
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Also write an HdrHistogram interval log to FILE: one histogram per second (all
    /// operations untagged, and each operation tagged with its name)
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,

    /// No progress lines on stderr
    #[arg(long)]
    pub quiet: bool,

    /// Cache workload: after this many measured gets in total (each connection after its
    /// share, so the point is the same in the request stream whatever the server's speed), the
    /// gets stop drawing keys and pass once, in order, over --scan-keys keys outside the
    /// keyspace (so cold), filling each as it misses, then draw again. The pass's own lookups
    /// count against --requests but apart from the hit ratio
    #[arg(long, value_name = "N", requires = "scan_keys")]
    pub scan_after: Option<u64>,

    /// Keys of the --scan-after pass, spread over the connections
    #[arg(long, value_name = "N", requires = "scan_after")]
    pub scan_keys: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    Ping,
    Get,
    Set,
    Delete,
    Mixed,
    Compute,
    Cache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AlgoArg {
    Crc32c,
    Sha256,
}

/// When the run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    After(Duration),
    Requests(u64),
}

/// The cache workload's one-time pass over cold keys (--scan-after, --scan-keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Measured gets before it, over all connections.
    pub after: u64,
    /// Key indexes `keys..keys + count`, past the keyspace.
    pub count: u64,
}

/// A checked run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub targets: Vec<SocketAddr>,
    pub cpus: Vec<usize>,
    pub connections: usize,
    pub pipeline: usize,
    pub rate: Option<u64>,
    pub stop: Stop,
    pub warmup: Duration,
    pub idle_poll: Duration,
    pub workload: WorkloadKind,
    pub mix: Mix,
    /// Keys per get command (1 but with --multiget).
    pub multiget: usize,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: ValueSize,
    pub key_dist: KeyDist,
    pub prefill: bool,
    pub verify_keys: bool,
    pub shard_aware: bool,
    pub protocol: ProtocolKind,
    pub compute_algo: Algo,
    pub compute_rounds: u32,
    pub timeout: Duration,
    pub seed: u64,
    pub json: Option<PathBuf>,
    pub hgrm: Option<PathBuf>,
    pub hlog: Option<PathBuf>,
    pub quiet: bool,
    pub scan: Option<Scan>,
}

impl Plan {
    pub fn from_args(args: Args) -> anyhow::Result<Plan> {
        let targets = if args.targets.is_empty() {
            vec!["127.0.0.1:7070".to_owned()]
        } else {
            args.targets.clone()
        };
        let targets = targets
            .iter()
            .map(|t| {
                t.to_socket_addrs()
                    .with_context(|| format!("--target {t}: not an address"))?
                    .next()
                    .with_context(|| format!("--target {t}: resolves to no address"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cpus = args
            .cores
            .clone()
            .unwrap_or(CoreSpec::Count(1))
            .resolve(&percore::config::usable_cpus())?;
        if args.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if args.pipeline == 0 {
            bail!("--pipeline must be at least 1");
        }
        if args.rate == Some(0) {
            bail!("--rate must be at least 1 request per second");
        }
        let stop = match (args.duration, args.requests) {
            (_, Some(0)) => bail!("--requests must be at least 1"),
            (_, Some(n)) => Stop::Requests(n),
            (Some(d), None) if d.0.is_zero() => bail!("--duration must be more than 0"),
            (Some(d), None) => Stop::After(d.0),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        if args.keys == 0 {
            bail!("--keys must be at least 1");
        }
        let scan = match (args.scan_after, args.scan_keys) {
            (Some(after), Some(count)) => {
                if args.workload != WorkloadKind::Cache {
                    bail!("--scan-after and --scan-keys are a pass of the cache workload: use --workload cache");
                }
                if count == 0 {
                    bail!("--scan-keys must be at least 1");
                }
                if args.keys.checked_add(count).is_none() {
                    bail!("--keys plus --scan-keys is more keys than there are numbers");
                }
                Some(Scan { after, count })
            }
            // clap makes each flag require the other.
            _ => None,
        };
        let need = min_key_size(args.keys + scan.map_or(0, |s| s.count));
        if args.key_size < need || args.key_size > MAX_KEY_LEN {
            bail!(
                "--key-size {}: {} keys need keys of {need} to {MAX_KEY_LEN} bytes",
                args.key_size,
                args.keys + scan.map_or(0, |s| s.count)
            );
        }
        if args.value_size.max > MAX_VALUE_LEN {
            bail!("--value-size: values are at most {MAX_VALUE_LEN} bytes");
        }
        let mix = match args.workload {
            WorkloadKind::Ping => Mix::only(LoadOp::Ping),
            WorkloadKind::Get => Mix::only(LoadOp::Get),
            WorkloadKind::Set => Mix::only(LoadOp::Set),
            WorkloadKind::Delete => Mix::only(LoadOp::Delete),
            WorkloadKind::Compute => Mix::only(LoadOp::Compute),
            WorkloadKind::Mixed => args.mix.clone(),
            // The draws are gets; sets follow misses (`Plan::ops` adds them).
            WorkloadKind::Cache => Mix::only(LoadOp::Get),
        };
        let mut ops = mix.ops();
        if args.workload == WorkloadKind::Cache {
            ops.push(LoadOp::Set);
            if args.verify_keys {
                bail!("--verify-keys needs every write kept, and a cache evicts: the cache workload compares every hit byte for byte instead");
            }
            if args.multiget > 1 {
                bail!("--multiget: the cache workload sends one key per get, to fill each miss");
            }
        }
        if ops.contains(&LoadOp::Set) && args.value_size.min < CHECKSUM_LEN {
            bail!("--value-size: values carry a {CHECKSUM_LEN}-byte checksum, so they are at least {CHECKSUM_LEN} bytes");
        }
        if args.prefill && args.value_size.min < CHECKSUM_LEN {
            bail!(
                "--prefill writes values, which are at least {CHECKSUM_LEN} bytes (--value-size)"
            );
        }
        if args.verify_keys {
            let writes = ops.contains(&LoadOp::Set) || ops.contains(&LoadOp::Delete);
            if !writes && !args.prefill {
                bail!("--verify-keys reads back acknowledged sets and deletes: use --prefill or a workload with set or delete");
            }
            if args.keys < args.connections as u64 {
                bail!("--verify-keys gives each connection its own keys to set: --keys must be at least --connections");
            }
        }
        if args.compute_rounds == 0 || args.compute_rounds > MAX_COMPUTE_ROUNDS {
            bail!("--compute-rounds must be 1..={MAX_COMPUTE_ROUNDS}");
        }
        if args.multiget == 0 || args.multiget > MAX_MULTIGET {
            bail!("--multiget must be 1..={MAX_MULTIGET}");
        }
        if args.multiget > 1 {
            if args.protocol != ProtocolKind::Memcached {
                bail!("--multiget needs --protocol memcached (percore's Get takes one key)");
            }
            if !ops.contains(&LoadOp::Get) {
                bail!("--multiget batches gets: use --workload get, or mixed with get in --mix");
            }
        }
        if args.protocol == ProtocolKind::Memcached {
            if ops
                .iter()
                .any(|op| !matches!(op, LoadOp::Get | LoadOp::Set | LoadOp::Delete))
            {
                bail!("--protocol memcached speaks get, set and delete only (--workload get, set, delete, or mixed without ping and compute)");
            }
            if args.shard_aware {
                bail!("--shard-aware needs the percore protocol (Hello)");
            }
        }
        if args.timeout.0.is_zero() {
            bail!("--timeout must be more than 0");
        }
        Ok(Plan {
            targets,
            cpus,
            connections: args.connections,
            pipeline: args.pipeline,
            rate: args.rate,
            stop,
            warmup: args.warmup.0,
            idle_poll: args.idle_poll.0,
            workload: args.workload,
            mix,
            multiget: args.multiget,
            keys: args.keys,
            key_size: args.key_size,
            value_size: args.value_size,
            key_dist: args.key_dist,
            prefill: args.prefill,
            verify_keys: args.verify_keys,
            shard_aware: args.shard_aware,
            protocol: args.protocol,
            compute_algo: match args.compute_algo {
                AlgoArg::Crc32c => Algo::Crc32c,
                AlgoArg::Sha256 => Algo::Sha256,
            },
            compute_rounds: args.compute_rounds,
            timeout: args.timeout.0,
            seed: args.seed,
            json: args.json,
            hgrm: args.hgrm,
            hlog: args.hlog,
            quiet: args.quiet,
            scan,
        })
    }

    /// One line describing the run, for the report.
    pub fn describe(&self) -> String {
        let mode = match self.rate {
            Some(r) => format!("open loop at {r} ops/s"),
            None => "closed loop".to_owned(),
        };
        let stop = match self.stop {
            Stop::After(d) => format!("{:.1} s", d.as_secs_f64()),
            Stop::Requests(n) => format!("{n} requests"),
        };
        let targets = self
            .targets
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut line = format!(
            "{mode}, {stop}, workload {} ({}), {} connections x pipeline {} on {} core(s), target {targets}{}",
            format!("{:?}", self.workload).to_lowercase(),
            if self.is_cache() {
                "get, and set on a miss".to_owned()
            } else {
                self.mix.to_string()
            },
            self.connections,
            self.pipeline,
            self.cpus.len(),
            if self.shard_aware { ", shard-aware" } else { "" },
        );
        if self.multiget > 1 {
            line += &format!(", {} keys per get", self.multiget);
        }
        if self.verify_keys {
            line += ", verify-keys";
        }
        if let Some(scan) = self.scan {
            line += &format!(
                ", a pass over {} cold keys after {} gets",
                scan.count, scan.after
            );
        }
        line
    }

    /// The operations the run sends: the mix's, and for the cache workload the sets that fill
    /// its misses.
    pub fn ops(&self) -> Vec<LoadOp> {
        let mut ops = self.mix.ops();
        if self.is_cache() && !ops.contains(&LoadOp::Set) {
            ops.push(LoadOp::Set);
        }
        ops
    }

    /// The cache-aside workload: gets, and a set after each miss.
    pub fn is_cache(&self) -> bool {
        self.workload == WorkloadKind::Cache
    }

    /// Whether a get may miss without being wrong: the keyspace was not prefilled, or the
    /// workload deletes.
    pub fn gets_may_miss(&self) -> bool {
        !self.prefill || self.is_cache() || self.mix.ops().contains(&LoadOp::Delete)
    }
}

#[cfg(test)]
impl Args {
    /// Parses a command line against a made-up target, for unit tests.
    pub fn try_parse_from_for_tests(extra: &[&str]) -> Args {
        let mut all = vec!["percore-load", "--target", "127.0.0.1:1"];
        all.extend_from_slice(extra);
        Args::try_parse_from(all).expect("a valid test command line")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let mut all = vec!["percore-load", "--target", "127.0.0.1:1"];
        all.extend_from_slice(args);
        Plan::from_args(Args::try_parse_from(all)?)
    }

    #[test]
    fn defaults_and_checks() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.stop, Stop::After(Duration::from_secs(10)));
        assert_eq!(p.mix.ops(), vec![LoadOp::Ping]);
        assert_eq!(p.cpus.len(), 1);
        assert!(plan(&["--requests", "5", "--duration", "1s"]).is_err());
        assert!(plan(&["--keys", "1000000", "--key-size", "4"]).is_err());
        assert!(plan(&["--workload", "set", "--value-size", "2"]).is_err());
        assert!(
            plan(&["--workload", "get", "--verify-keys"]).is_err(),
            "no sets"
        );
        assert!(plan(&["--workload", "set", "--verify-keys", "--keys", "15"]).is_err());
        assert!(plan(&["--workload", "get", "--prefill", "--verify-keys"]).is_ok());
        assert!(
            plan(&["--protocol", "memcached"]).is_err(),
            "ping over memcached"
        );
        assert!(plan(&["--protocol", "memcached", "--workload", "mixed"]).is_ok());
        assert!(plan(&["--protocol", "memcached", "--workload", "delete"]).is_ok());
        let p = plan(&[
            "--protocol",
            "memcached",
            "--workload",
            "mixed",
            "--mix",
            "get:8,set:1,delete:1",
            "--multiget",
            "16",
            "--prefill",
        ])
        .unwrap();
        assert_eq!(p.multiget, 16);
        assert!(p.gets_may_miss(), "deletes make prefilled gets miss");
        assert!(p.describe().contains("16 keys per get"), "{}", p.describe());
        assert!(
            plan(&["--workload", "get", "--multiget", "2"]).is_err(),
            "multiget over percore"
        );
        assert!(plan(&[
            "--protocol",
            "memcached",
            "--workload",
            "set",
            "--multiget",
            "2"
        ])
        .is_err());
        assert!(plan(&[
            "--protocol",
            "memcached",
            "--workload",
            "get",
            "--multiget",
            "0"
        ])
        .is_err());
        assert!(plan(&[
            "--protocol",
            "memcached",
            "--workload",
            "get",
            "--multiget",
            "257"
        ])
        .is_err());
        assert!(plan(&["--workload", "delete", "--verify-keys"]).is_ok());
        assert!(!plan(&["--workload", "get", "--prefill"])
            .unwrap()
            .gets_may_miss());
        let p = plan(&[
            "--workload",
            "mixed",
            "--mix",
            "get:1,set:3",
            "--rate",
            "100",
        ])
        .unwrap();
        assert_eq!(p.mix.ops(), vec![LoadOp::Get, LoadOp::Set]);
        assert_eq!(p.rate, Some(100));
    }

    #[test]
    fn cache_workload_checks() {
        let p = plan(&["--workload", "cache", "--prefill", "--mix", "set:1"]).unwrap();
        assert_eq!(
            p.ops(),
            vec![LoadOp::Get, LoadOp::Set],
            "--mix is not the cache's"
        );
        assert!(p.gets_may_miss(), "a cache misses even after a prefill");
        assert!(plan(&["--workload", "cache", "--protocol", "memcached"]).is_ok());
        assert!(plan(&["--workload", "cache", "--verify-keys", "--prefill"]).is_err());
        assert!(plan(&[
            "--workload",
            "cache",
            "--protocol",
            "memcached",
            "--multiget",
            "4"
        ])
        .is_err());
        assert!(plan(&["--workload", "cache", "--value-size", "3"]).is_err());
        let p = plan(&[
            "--workload",
            "cache",
            "--keys",
            "1000",
            "--key-size",
            "5",
            "--scan-after",
            "2000",
            "--scan-keys",
            "9000",
        ])
        .unwrap();
        assert_eq!(
            p.scan,
            Some(Scan {
                after: 2000,
                count: 9000
            })
        );
        assert!(
            p.describe().contains("9000 cold keys after 2000 gets"),
            "{}",
            p.describe()
        );
        // The pass's keys are past the keyspace, so they must fit the key size too.
        assert!(plan(&[
            "--workload",
            "cache",
            "--keys",
            "1000",
            "--key-size",
            "5",
            "--scan-after",
            "2000",
            "--scan-keys",
            "10000"
        ])
        .is_err());
        assert!(
            plan(&["--workload", "cache", "--scan-after", "2000"]).is_err(),
            "no --scan-keys"
        );
        assert!(plan(&[
            "--workload",
            "get",
            "--scan-after",
            "2000",
            "--scan-keys",
            "5"
        ])
        .is_err());
        assert!(plan(&[
            "--workload",
            "cache",
            "--scan-after",
            "2000",
            "--scan-keys",
            "0"
        ])
        .is_err());
    }
}
