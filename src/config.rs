//! The server's settings: command line, optional TOML file with the same keys, defaults, the
//! parsers for sizes (`64MiB`), durations (`250ms`) and core lists (`4`, `0,2-3`), and the
//! checks of the settings against the machine (its CPUs, its open-file limit).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;

pub use crate::allow::AllowList;

/// A size in bytes, written `65536`, `64KiB`, `256MiB`, `1GiB` (or `64MB` for powers of ten).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Size(n));
        }
        t.parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|_| format!("`{s}` is not a size (examples: 65536, 64KiB, 256MiB, 1GiB)"))
    }
}

/// A duration, written `30s`, `250ms`, `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|_| format!("`{s}` is not a duration (examples: 30s, 250ms, 5m)"))
    }
}

/// The highest CPU number a `--cores` list may name: Linux supports at most 8192 CPUs
/// (`CONFIG_NR_CPUS`), so a list is checked against this before any range is expanded.
pub const MAX_CPU: usize = 8191;

/// Which CPUs to run on: a count (`4`: the first four usable CPUs) or a list (`0,2-3`).
/// A single CPU is written as a range, `3-3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSpec {
    Count(usize),
    List(Vec<usize>),
}

impl FromStr for CoreSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("`{s}` is not a core count or list (examples: 4, 0,2-3, 3-3)");
        if let Ok(n) = s.parse::<usize>() {
            return if n == 0 {
                Err("--cores must be at least 1".into())
            } else {
                Ok(CoreSpec::Count(n))
            };
        }
        // Every range is checked against MAX_CPU before it is expanded, and a CPU named twice
        // is refused as it comes, so the list never holds more than MAX_CPU + 1 entries.
        let mut cpus = Vec::new();
        let mut seen = vec![false; MAX_CPU + 1];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (
                    a.trim().parse::<usize>().map_err(|_| bad())?,
                    b.trim().parse::<usize>().map_err(|_| bad())?,
                ),
                None => {
                    let cpu = part.parse::<usize>().map_err(|_| bad())?;
                    (cpu, cpu)
                }
            };
            if a > b {
                return Err(bad());
            }
            if b > MAX_CPU {
                return Err(format!(
                    "CPU {b} is above {MAX_CPU}, the highest CPU number Linux supports"
                ));
            }
            for (cpu, seen) in seen.iter_mut().enumerate().take(b + 1).skip(a) {
                if std::mem::replace(seen, true) {
                    return Err(format!("`{s}` names CPU {cpu} twice"));
                }
                cpus.push(cpu);
            }
        }
        if cpus.is_empty() {
            return Err(bad());
        }
        Ok(CoreSpec::List(cpus))
    }
}

impl CoreSpec {
    /// Resolves the spec against the CPUs this process may run on (its affinity mask, so
    /// `taskset` works).
    pub fn resolve(&self, usable: &[usize]) -> anyhow::Result<Vec<usize>> {
        let show = usable
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
        match self {
            CoreSpec::Count(n) if *n > usable.len() => {
                bail!(
                    "--cores {n}: only {} CPUs are usable here ({show})",
                    usable.len()
                )
            }
            CoreSpec::Count(n) => Ok(usable[..*n].to_vec()),
            CoreSpec::List(cpus) => {
                for cpu in cpus {
                    if !usable.contains(cpu) {
                        bail!("CPU {cpu} does not exist or is outside this process's affinity mask (usable: {show})");
                    }
                }
                Ok(cpus.clone())
            }
        }
    }
}

/// The CPUs this process may run on.
pub fn usable_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    cpus.sort_unstable();
    cpus
}

macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw { Int(u64), Str(String) }
                let text = match Raw::deserialize(d)? {
                    Raw::Int(n) => n.to_string(),
                    Raw::Str(s) => s,
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(Size, Dur, CoreSpec, AllowList);

/// percore: a thread-per-core key-value and RPC server.
///
/// One io_uring executor is pinned to each chosen CPU. Every core listens on the same address
/// (SO_REUSEPORT) and owns one shard of the keyspace; a request for a key another core owns is
/// forwarded there. SIGINT or SIGTERM stops accepting, finishes what is in flight and prints
/// the latency report.
///
/// Every option can also be set in the --config file under the same name (`max-inflight = 512`);
/// the command line wins.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(name = "percore", version, max_term_width = 100)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Options {
    /// Address to listen on, IPv4 or IPv6 [default: 127.0.0.1:7070]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// CPUs to run on: a count (first N usable) or a list like 0,2-3 [default: all usable]
    #[arg(long, value_name = "N|LIST")]
    pub cores: Option<CoreSpec>,

    /// Memory for stored items, split evenly across cores; at most 262143MiB per core
    /// [default: 256MiB]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<Size>,

    /// Open connections allowed at once, across all cores; more are closed at accept. Each
    /// takes a file descriptor: the open-file limit (RLIMIT_NOFILE, raised to its hard limit at
    /// start) must hold them and 32 + 16 per core more [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Largest frame (length prefix) accepted; larger closes the connection. At most 2047MiB:
    /// the reply to a frame (a Ping echoes it) must fit in a FlatBuffer, which stops at 2GiB
    /// [default: 2MiB]
    #[arg(long, value_name = "SIZE")]
    pub max_frame: Option<Size>,

    /// Requests one connection may have in progress; past it the server stops reading that
    /// socket [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_inflight: Option<usize>,

    /// Close a connection that has done nothing for this long [default: 300s]
    #[arg(long, value_name = "DUR")]
    pub idle_timeout: Option<Dur>,

    /// A frame that has started must complete within this (against slowloris) [default: 10s]
    #[arg(long, value_name = "DUR")]
    pub frame_timeout: Option<Dur>,

    /// Also serve memcached's text protocol (classic and meta commands) on this address, on
    /// every core and the same store [default: off]
    #[arg(long, value_name = "ADDR")]
    pub memcached_listen: Option<SocketAddr>,

    /// Client networks accepted on every listener, by commas: 10.0.0.0/8,192.168.1.7,fd00::/8.
    /// A connection from anywhere else is closed at accept. The list is exact: include
    /// 127.0.0.0/8 to keep loopback. Neither protocol authenticates or encrypts: keep a fleet on
    /// a private network [default: loopback only, 127.0.0.0/8,::1]
    #[arg(long, value_name = "CIDR[,CIDR...]")]
    pub allow: Option<AllowList>,

    /// Serve Prometheus metrics (GET /metrics, classic text or OpenMetrics) on this address,
    /// from the first core [default: off]
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Core i also listens alone on port BASE+i, for shard-aware clients [default: off]
    #[arg(long, value_name = "BASE")]
    pub shard_ports: Option<u16>,

    /// Compute requests queued per core; past it Compute answers Overloaded [default: 256, at
    /// most 65536]
    #[arg(long, value_name = "N")]
    pub compute_queue: Option<usize>,

    /// Bytes of replies one core may hold for clients that have not read them, across its
    /// connections; past it, connections that owe more than 256 KiB stop being read, and those
    /// that take nothing for 100 ms are closed as slow readers [default: 64MiB]
    #[arg(long, value_name = "SIZE")]
    pub owed_budget: Option<Size>,

    /// On SIGINT/SIGTERM, how long to wait for in-flight requests [default: 5s, at most 1h]
    #[arg(long, value_name = "DUR")]
    pub drain_timeout: Option<Dur>,

    /// Listen backlog of each core's socket [default: 1024]
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,

    /// How long a core keeps polling its sockets after the last arrival before it sleeps:
    /// longer spends more CPU on a quiet core, shorter pays a wake-up more often under load;
    /// 0 never polls [default: 100us]
    #[arg(long, value_name = "DUR")]
    pub idle_poll: Option<Dur>,

    /// Read settings from this TOML file (same names as the options)
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// The server's effective settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub memcached_listen: Option<SocketAddr>,
    pub allow: AllowList,

    pub metrics_listen: Option<SocketAddr>,
    pub cpus: Vec<usize>,
    pub memory: u64,
    pub max_connections: usize,
    pub max_frame: usize,
    pub max_inflight: usize,
    pub idle_timeout: Duration,
    pub frame_timeout: Duration,
    pub shard_ports: Option<u16>,
    pub compute_queue: usize,
    pub owed_budget: usize,
    pub drain_timeout: Duration,
    pub backlog: u32,
    pub idle_poll: Duration,
}

impl Options {
    /// Fills what the command line left out from the config file, then from the defaults, and
    /// checks the result.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<Options>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Options::default(),
        };
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                self.$field.or(file.$field).unwrap_or($default)
            };
        }
        let cores = self.cores.or(file.cores);
        let usable = usable_cpus();
        if usable.is_empty() {
            bail!("cannot read this process's CPU affinity mask");
        }
        let cpus = match cores {
            Some(spec) => spec.resolve(&usable)?,
            None => usable,
        };
        let config = Config {
            listen: pick!(listen, SocketAddr::from(([127, 0, 0, 1], 7070))),
            memcached_listen: self.memcached_listen.or(file.memcached_listen),
            allow: self.allow.or(file.allow).unwrap_or_default(),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            cpus,
            memory: pick!(memory, Size(256 << 20)).0,
            max_connections: pick!(max_connections, 10_000),
            max_frame: pick!(max_frame, Size(crate::protocol::DEFAULT_MAX_FRAME as u64)).0 as usize,
            max_inflight: pick!(max_inflight, 1024),
            idle_timeout: pick!(idle_timeout, Dur(Duration::from_secs(300))).0,
            frame_timeout: pick!(frame_timeout, Dur(Duration::from_secs(10))).0,
            shard_ports: self.shard_ports.or(file.shard_ports),
            compute_queue: pick!(compute_queue, 256),
            owed_budget: pick!(owed_budget, Size(64 << 20)).0.min(usize::MAX as u64) as usize,
            drain_timeout: pick!(drain_timeout, Dur(Duration::from_secs(5))).0,
            backlog: pick!(backlog, 1024),
            idle_poll: pick!(idle_poll, Dur(crate::runtime::DEFAULT_IDLE_POLL)).0,
        };
        config.validate()?;
        Ok(config)
    }
}

/// `--compute-queue` at most: the queue and the pool that lends its jobs buffers are sized for
/// it at start, and a deeper queue only adds latency (each job takes up to milliseconds).
pub const MAX_COMPUTE_QUEUE: usize = 65_536;
/// `--drain-timeout` at most. The drain's deadline is a timer at now plus this, which must be a
/// time the clock can represent; a drain of more than an hour is not a drain.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);

/// File descriptors the process needs beside its connections and its cores: stdio, logging,
/// what it inherits.
pub const FDS_HEADROOM: u64 = 32;
/// File descriptors each core needs beside its connections: its io_uring rings (3), eventfd
/// and epoll set, up to three listeners, and a connection being accepted (or refused) on each.
pub const FDS_PER_CORE: u64 = 16;

impl Config {
    fn validate(&self) -> anyhow::Result<()> {
        use crate::protocol::{MAX_FRAME_LIMIT, MAX_KEY_LEN, MAX_VALUE_LEN};
        // The largest valid request (a Set of a 250-byte key and a 1 MiB value) must fit.
        let min_frame = MAX_VALUE_LEN + MAX_KEY_LEN + 1024;
        if self.max_frame < min_frame || self.max_frame > MAX_FRAME_LIMIT {
            bail!(
                "--max-frame {}: must be between {min_frame} bytes (a maximal Set) and {}MiB \
                 (the reply to a frame must fit in a FlatBuffer, which stops at 2GiB)",
                self.max_frame,
                MAX_FRAME_LIMIT >> 20
            );
        }
        if self.max_inflight == 0 {
            bail!("--max-inflight must be at least 1");
        }
        if self.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if self.owed_budget < 1 << 20 {
            bail!("--owed-budget must be at least 1MiB (one largest value)");
        }
        if self.compute_queue == 0 || self.compute_queue > MAX_COMPUTE_QUEUE {
            bail!(
                "--compute-queue {}: must be between 1 and {MAX_COMPUTE_QUEUE}",
                self.compute_queue
            );
        }
        if self.drain_timeout > MAX_DRAIN_TIMEOUT {
            bail!(
                "--drain-timeout {}: must be at most {}",
                humantime::format_duration(self.drain_timeout),
                humantime::format_duration(MAX_DRAIN_TIMEOUT)
            );
        }
        if self.idle_timeout.is_zero() || self.frame_timeout.is_zero() {
            bail!("--idle-timeout and --frame-timeout must be above zero");
        }
        if self.idle_poll > Duration::from_secs(1) {
            bail!("--idle-poll must be at most 1s: a quiet core spins for that long");
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            bail!("--backlog must be between 1 and {}", i32::MAX);
        }
        let shards = self.cpus.len() as u64;
        if self.memory / shards < 1 << 20 {
            bail!(
                "--memory must give every core at least 1MiB ({} cores)",
                shards
            );
        }
        // A store numbers its segments with 18 bits of an index entry; past this budget it
        // would have more.
        let max_per_core = crate::store::MAX_BUDGET as u64;
        if self.memory / shards > max_per_core {
            bail!(
                "--memory {}MiB over {shards} cores is {}MiB per core; a core's store holds at \
                 most {}MiB (it numbers its segments with 18 bits): use more cores or less memory",
                self.memory >> 20,
                (self.memory / shards) >> 20,
                max_per_core >> 20,
            );
        }
        if let Some(base) = self.shard_ports {
            let last = u32::from(base) + self.cpus.len() as u32 - 1;
            if base == 0 || last > u32::from(u16::MAX) {
                bail!("--shard-ports {base}: ports {base}..={last} are not all valid TCP ports");
            }
        }
        Ok(())
    }

    /// File descriptors these settings may need at once: one per connection, and headroom.
    pub fn fds_needed(&self) -> u64 {
        self.max_connections as u64 + FDS_HEADROOM + FDS_PER_CORE * self.cpus.len() as u64
    }

    /// Raises the soft open-file limit (RLIMIT_NOFILE) to the hard one, and refuses settings
    /// whose connections it cannot hold: past it every accept fails with EMFILE.
    pub fn ensure_fd_limit(&self) -> anyhow::Result<()> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!("cannot read the open-file limit: {e}");
            return Ok(());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: setrlimit reads the struct it is given.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit.rlim_cur = limit.rlim_max;
            } else {
                let e = std::io::Error::last_os_error();
                tracing::warn!(
                    soft = limit.rlim_cur,
                    hard = limit.rlim_max,
                    "cannot raise the open-file limit: {e}"
                );
            }
        }
        self.check_fd_limit(limit.rlim_cur, limit.rlim_max)
    }

    fn check_fd_limit(&self, soft: u64, hard: u64) -> anyhow::Result<()> {
        let needed = self.fds_needed();
        if needed <= soft {
            return Ok(());
        }
        let headroom = needed - self.max_connections as u64;
        bail!(
            "--max-connections {} needs {needed} file descriptors (one per connection, and \
             {FDS_HEADROOM} + {FDS_PER_CORE} per core for listeners, io_uring and the like), but \
             the open-file limit is {soft} (hard limit {hard}): raise it (`ulimit -n`, \
             LimitNOFILE= in a systemd unit) or give --max-connections at most {}",
            self.max_connections,
            soft.saturating_sub(headroom)
        )
    }

    pub fn shard_count(&self) -> usize {
        self.cpus.len()
    }

    /// The memory budget of each core's store.
    pub fn memory_per_shard(&self) -> usize {
        (self.memory / self.cpus.len() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_core_lists_parse() {
        assert_eq!("64MiB".parse::<Size>(), Ok(Size(64 << 20)));
        assert_eq!("4096".parse::<Size>(), Ok(Size(4096)));
        assert!("lots".parse::<Size>().is_err());
        assert_eq!("250ms".parse::<Dur>(), Ok(Dur(Duration::from_millis(250))));
        assert!("soon".parse::<Dur>().is_err());
        assert_eq!("4".parse::<CoreSpec>(), Ok(CoreSpec::Count(4)));
        assert_eq!(
            "0,2-3".parse::<CoreSpec>(),
            Ok(CoreSpec::List(vec![0, 2, 3]))
        );
        assert!("0".parse::<CoreSpec>().is_err());
        assert!("1,1".parse::<CoreSpec>().is_err());
        assert!("3-1".parse::<CoreSpec>().is_err());
    }

    #[test]
    fn core_specs_resolve_against_the_usable_cpus() {
        let usable = [0, 1, 2];
        assert_eq!(CoreSpec::Count(2).resolve(&usable).unwrap(), vec![0, 1]);
        assert!(CoreSpec::Count(4).resolve(&usable).is_err());
        assert_eq!(CoreSpec::List(vec![2]).resolve(&usable).unwrap(), vec![2]);
        assert!(CoreSpec::List(vec![7]).resolve(&usable).is_err());
    }

    /// The defaults on `cores` CPUs, as `into_config` would make them.
    fn config(cores: usize) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            memcached_listen: None,
            allow: AllowList::loopback(),
            metrics_listen: None,
            cpus: (0..cores).collect(),
            memory: 256 << 20,
            max_connections: 10_000,
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            max_inflight: 1024,
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(10),
            shard_ports: None,
            compute_queue: 256,
            owed_budget: 64 << 20,
            drain_timeout: Duration::from_secs(5),
            backlog: 1024,
            idle_poll: Duration::from_micros(100),
        }
    }

    fn refused(change: impl FnOnce(&mut Config), cores: usize) -> Option<String> {
        let mut c = config(cores);
        change(&mut c);
        c.validate().err().map(|e| e.to_string())
    }

    #[test]
    fn core_lists_are_bounded_before_they_are_expanded() {
        let err = "0-99999999999".parse::<CoreSpec>().unwrap_err();
        assert!(err.contains("99999999999") && err.contains("8191"), "{err}");
        assert!("0,99999999999".parse::<CoreSpec>().is_err());
        let all = "0-8191".parse::<CoreSpec>().unwrap();
        assert_eq!(all, CoreSpec::List((0..=MAX_CPU).collect()));
        let err = "0-8191,0-8191".parse::<CoreSpec>().unwrap_err();
        assert!(err.contains("CPU 0 twice"), "{err}");
        // A count is not a list: it is checked against the usable CPUs, allocating nothing.
        assert!(CoreSpec::Count(usize::MAX).resolve(&[0, 1]).is_err());
    }

    #[test]
    fn values_that_would_crash_the_server_are_refused_with_their_bound() {
        assert_eq!(refused(|_| {}, 1), None);

        use crate::protocol::MAX_FRAME_LIMIT;
        assert_eq!(refused(|c| c.max_frame = MAX_FRAME_LIMIT, 1), None);
        let err = refused(|c| c.max_frame = MAX_FRAME_LIMIT + 1, 1).unwrap();
        assert!(
            err.contains("--max-frame") && err.contains("2047MiB"),
            "{err}"
        );
        assert!(refused(|c| c.max_frame = 3 << 30, 1).is_some());
        const { assert!(MAX_FRAME_LIMIT < flatbuffers::FLATBUFFERS_MAX_BUFFER_SIZE) };

        assert_eq!(refused(|c| c.compute_queue = MAX_COMPUTE_QUEUE, 1), None);
        let err = refused(|c| c.compute_queue = MAX_COMPUTE_QUEUE + 1, 1).unwrap();
        assert!(
            err.contains("--compute-queue") && err.contains("65536"),
            "{err}"
        );
        assert!(refused(|c| c.compute_queue = usize::MAX, 1).is_some());

        assert_eq!(refused(|c| c.drain_timeout = MAX_DRAIN_TIMEOUT, 1), None);
        let err = refused(|c| c.drain_timeout = Duration::MAX, 1).unwrap();
        assert!(
            err.contains("--drain-timeout") && err.contains("1h"),
            "{err}"
        );
        let just_over = MAX_DRAIN_TIMEOUT + Duration::from_nanos(1);
        assert!(refused(|c| c.drain_timeout = just_over, 1).is_some());

        let most = crate::store::MAX_BUDGET as u64;
        assert_eq!(refused(|c| c.memory = most, 1), None);
        assert_eq!(refused(|c| c.memory = 2 * most, 2), None);
        let err = refused(|c| c.memory = most + 1, 1).unwrap();
        assert!(
            err.contains("--memory") && err.contains("262143MiB"),
            "{err}"
        );
        assert!(refused(|c| c.memory = u64::MAX, 2).is_some());
    }

    #[test]
    fn connections_must_fit_in_the_open_file_limit() {
        let mut c = config(2);
        c.max_connections = 1000;
        let needed = 1000 + FDS_HEADROOM + 2 * FDS_PER_CORE;
        assert_eq!(c.fds_needed(), needed);
        assert!(c.check_fd_limit(needed, needed).is_ok());
        let err = c.check_fd_limit(needed - 1, 4096).unwrap_err().to_string();
        assert!(
            err.contains("--max-connections 1000")
                && err.contains(&format!("needs {needed}"))
                && err.contains(&format!("limit is {}", needed - 1))
                && err.contains("hard limit 4096")
                && err.contains("at most 999"),
            "{err}"
        );
        // No limit at all still gets a message, not an underflow.
        assert!(c.check_fd_limit(0, 0).is_err());
    }

    #[test]
    fn config_file_fills_gaps_and_command_line_wins() {
        let file: Options =
            toml::from_str("max-inflight = 7\nmemory = \"64MiB\"\nidle-timeout = \"2s\"").unwrap();
        assert_eq!(file.max_inflight, Some(7));
        assert_eq!(file.memory, Some(Size(64 << 20)));
        assert!(toml::from_str::<Options>("no-such-key = 1").is_err());
        let file: Options = toml::from_str("allow = \"10.0.0.0/8, ::1\"").unwrap();
        assert_eq!(
            file.allow.map(|a| a.to_string()).as_deref(),
            Some("10.0.0.0/8,::1/128")
        );
        assert!(toml::from_str::<Options>("allow = \"10.0.0.0/99\"").is_err());
    }
}
