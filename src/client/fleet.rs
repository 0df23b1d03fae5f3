//! A client for a fleet of percore hosts: each key goes to the host that owns it by consistent
//! hashing, then to the core that owns it inside that host, so a request crosses no host and no
//! core that does not own its key.
//!
//! **The ring is ketama, as memcached clients build it** (libmemcached, spymemcached, and
//! twemproxy's `distribution: ketama` with `hash: md5`): each host named `NAME` gets 160 points,
//! four from each of `md5("NAME-0")` .. `md5("NAME-39")` (the digest's four little-endian
//! 32-bit words); a key belongs to the first point at or after the little-endian first word of
//! `md5(key)`, wrapping round. Ketama rather than rendezvous or jump hashing because it is what
//! the rest of the memcached world already runs: named the same, this client and twemproxy put
//! every key on the same host (tests/fleet.rs checks it against nutcracker), so a fleet can be
//! reached both ways at once. Jump hashing balances better and needs no table, but hosts can
//! only be added or removed at the end of the list; rendezvous costs a hash per host per key.
//! With 160 points per host, adding a host to K moves about 1/(K+1) of the keys.
//!
//! **Inside a host** [`FleetClient`] learns the topology with `Hello` and keeps one connection
//! per core, to that core's `--shard-ports` port, and sends a key to its owner
//! (`xxh3_64(key) % cores`). A host with several cores and no shard ports is refused: reaching
//! it would cost a hop between cores.
//!
//! **Failure.** A host whose connection fails, or that does not answer within the request
//! timeout, is marked down: its requests fail at once with [`FleetError::Unreachable`] (never
//! another host's value: keys are not moved to other hosts, so a host coming back never serves
//! stale copies written elsewhere meanwhile) and the client tries it again after
//! [`FleetOptions::retry_after`]. The other hosts are not affected.
//!
//! ```no_run
//! use percore::client::fleet::{FleetClient, FleetOptions};
//!
//! percore::runtime::block_on(async {
//!     // Named as twemproxy names its servers (`- 10.0.0.1:11211:1 h0`), so both agree.
//!     let hosts = [
//!         ("h0".to_owned(), "10.0.0.1:7070".parse().unwrap()),
//!         ("h1".to_owned(), "10.0.0.2:7070".parse().unwrap()),
//!     ];
//!     let mut fleet = FleetClient::new(&hosts, FleetOptions::default());
//!     fleet.set(b"user:42", b"Ada", 0).await?;
//!     assert_eq!(fleet.get(b"user:42").await?.map(|(v, _)| v), Some(b"Ada".to_vec()));
//!     Ok::<(), percore::client::fleet::FleetError>(())
//! })
//! .unwrap();
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use super::{Client, ClientError, Topology};
use crate::protocol::ShardStats;
use crate::runtime;

/// Points each host has on the ring (ketama's 160: 40 md5 digests of 4 points each).
pub const POINTS_PER_HOST: usize = 160;
const POINTS_PER_DIGEST: usize = 4;

/// The ketama ring over a list of host names.
#[derive(Debug, Clone)]
pub struct Ring {
    /// (point, host index), sorted by point, then host, so equal points resolve the same way
    /// every time.
    points: Vec<(u32, u32)>,
    hosts: usize,
}

/// The first little-endian 32-bit word of `md5(key)`: where a key falls on the ring.
pub fn key_point(key: &[u8]) -> u32 {
    let digest = Md5::digest(key);
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

impl Ring {
    /// The ring of `names`, one host per name, in order (host `i` is `names[i]`).
    pub fn ketama<S: AsRef<str>>(names: &[S]) -> Ring {
        let mut points = Vec::with_capacity(names.len() * POINTS_PER_HOST);
        for (host, name) in names.iter().enumerate() {
            for i in 0..POINTS_PER_HOST / POINTS_PER_DIGEST {
                let digest = Md5::digest(format!("{}-{i}", name.as_ref()).as_bytes());
                for word in digest.chunks_exact(4) {
                    let point = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    points.push((point, host as u32));
                }
            }
        }
        points.sort_unstable();
        Ring {
            points,
            hosts: names.len(),
        }
    }

    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// The host that owns `key`; 0 on a ring without hosts.
    pub fn host_of(&self, key: &[u8]) -> usize {
        let point = key_point(key);
        let at = self.points.partition_point(|&(p, _)| p < point);
        let (_, host) = self
            .points
            .get(at)
            .or(self.points.first())
            .copied()
            .unwrap_or((0, 0));
        host as usize
    }
}

/// Timeouts and retry of a [`FleetClient`].
#[derive(Debug, Clone, Copy)]
pub struct FleetOptions {
    /// How long connecting to a host (and its `Hello`) may take.
    pub connect_timeout: Duration,
    /// How long a request may wait for its reply before its host is marked down.
    pub request_timeout: Duration,
    /// How long a host marked down is left alone before it is tried again.
    pub retry_after: Duration,
}

impl Default for FleetOptions {
    fn default() -> FleetOptions {
        FleetOptions {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The host could not be reached, its connection failed, or it did not answer in time.
    /// Nothing about the key's value is known.
    #[error("host {host} ({addr}) is unreachable: {reason}")]
    Unreachable {
        host: usize,
        addr: SocketAddr,
        reason: String,
    },
    /// The host answered `Hello` with a topology this client cannot route by.
    #[error("host {host} ({addr}): {reason}")]
    Topology {
        host: usize,
        addr: SocketAddr,
        reason: String,
    },
    /// The host answered, with an error (a status other than `Ok`, or a reply that does not
    /// fit the request). Its connection goes on.
    #[error("host {host}: {source}")]
    Server {
        host: usize,
        #[source]
        source: ClientError,
    },
    /// The client was given no hosts, or asked about a host it does not have.
    #[error("no host {host} in a fleet of {hosts}")]
    NoSuchHost { host: usize, hosts: usize },
}

impl FleetError {
    /// The host the failed request was for.
    pub fn host(&self) -> usize {
        match self {
            FleetError::Unreachable { host, .. }
            | FleetError::Topology { host, .. }
            | FleetError::Server { host, .. }
            | FleetError::NoSuchHost { host, .. } => *host,
        }
    }
}

/// What one host was sent, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCounts {
    /// Requests routed to the host (sent, or failed because it was down).
    pub requests: u64,
    /// Those that failed: unreachable, timed out or answered with an error.
    pub errors: u64,
    /// Times its connections were (re)made.
    pub connects: u64,
}

enum Link {
    /// One client per core of the host, index = shard.
    Up {
        topology: Topology,
        shards: Vec<Client>,
    },
    Down {
        retry_at: Instant,
        reason: String,
    },
}

struct Host {
    addr: SocketAddr,
    link: Link,
    counts: HostCounts,
}

/// A native-protocol client over a fleet; see the module documentation. One request at a time
/// (each call waits for its reply), on the runtime's executor.
pub struct FleetClient {
    ring: Ring,
    hosts: Vec<Host>,
    options: FleetOptions,
}

/// How a ClientError affects the host's connection.
fn breaks_connection(e: &ClientError) -> bool {
    !matches!(e, ClientError::Status { .. } | ClientError::UnexpectedBody)
}

/// `fut`, or `None` after `limit`.
async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    let timer = async {
        runtime::sleep(limit).await;
        None
    };
    futures_lite::future::or(async { Some(fut.await) }, timer).await
}

impl FleetClient {
    /// A client of the hosts `hosts` (name on the ring, native address). Nothing is connected
    /// yet: each host is connected on its first request.
    pub fn new(hosts: &[(String, SocketAddr)], options: FleetOptions) -> FleetClient {
        let names: Vec<&str> = hosts.iter().map(|(name, _)| name.as_str()).collect();
        let now = Instant::now();
        FleetClient {
            ring: Ring::ketama(&names),
            hosts: hosts
                .iter()
                .map(|&(_, addr)| Host {
                    addr,
                    link: Link::Down {
                        retry_at: now,
                        reason: "not connected yet".to_owned(),
                    },
                    counts: HostCounts::default(),
                })
                .collect(),
            options,
        }
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The host that owns `key`.
    pub fn host_of(&self, key: &[u8]) -> usize {
        self.ring.host_of(key)
    }

    /// What each host was sent so far, in host order.
    pub fn counts(&self) -> Vec<HostCounts> {
        self.hosts.iter().map(|h| h.counts).collect()
    }

    /// Whether host `host` is connected now.
    pub fn is_up(&self, host: usize) -> bool {
        matches!(self.hosts.get(host).map(|h| &h.link), Some(Link::Up { .. }))
    }

    /// Connects host `host` unless it is up or its retry time has not come.
    async fn ensure_up(&mut self, host: usize) -> Result<(), FleetError> {
        let options = self.options;
        let hosts = self.hosts.len();
        let Some(h) = self.hosts.get_mut(host) else {
            return Err(FleetError::NoSuchHost { host, hosts });
        };
        let addr = h.addr;
        match &h.link {
            Link::Up { .. } => return Ok(()),
            Link::Down { retry_at, reason } if Instant::now() < *retry_at => {
                return Err(FleetError::Unreachable {
                    host,
                    addr,
                    reason: format!("down ({reason}); not retried yet"),
                });
            }
            Link::Down { .. } => {}
        }
        match within(options.connect_timeout, connect_host(host, addr)).await {
            Some(Ok((topology, shards))) => {
                h.counts.connects += 1;
                h.link = Link::Up { topology, shards };
                Ok(())
            }
            Some(Err(e)) => {
                h.link = Link::Down {
                    retry_at: Instant::now() + options.retry_after,
                    reason: e.to_string(),
                };
                Err(e)
            }
            None => {
                let reason = format!("no connection within {:?}", options.connect_timeout);
                h.link = Link::Down {
                    retry_at: Instant::now() + options.retry_after,
                    reason: reason.clone(),
                };
                Err(FleetError::Unreachable { host, addr, reason })
            }
        }
    }

    /// Runs `call` on the connection to the core of the host that owns `key`.
    async fn on_owner<T, F>(&mut self, key: &[u8], call: F) -> Result<T, FleetError>
    where
        F: AsyncFnOnce(&mut Client) -> Result<T, ClientError>,
    {
        let host = self.ring.host_of(key);
        if host >= self.hosts.len() {
            return Err(FleetError::NoSuchHost {
                host,
                hosts: self.hosts.len(),
            });
        }
        self.hosts[host].counts.requests += 1;
        let result = self.on_owner_of(host, key, call).await;
        if result.is_err() {
            self.hosts[host].counts.errors += 1;
        }
        result
    }

    async fn on_owner_of<T, F>(&mut self, host: usize, key: &[u8], call: F) -> Result<T, FleetError>
    where
        F: AsyncFnOnce(&mut Client) -> Result<T, ClientError>,
    {
        self.ensure_up(host).await?;
        let timeout = self.options.request_timeout;
        let retry_after = self.options.retry_after;
        let h = &mut self.hosts[host];
        let addr = h.addr;
        let Link::Up { topology, shards } = &mut h.link else {
            return Err(not_up(host, addr));
        };
        let shard = topology.owner_of(key).min(shards.len() - 1);
        let outcome = within(timeout, call(&mut shards[shard])).await;
        let reason = match outcome {
            Some(Ok(value)) => return Ok(value),
            Some(Err(e)) if !breaks_connection(&e) => {
                return Err(FleetError::Server { host, source: e })
            }
            Some(Err(e)) => e.to_string(),
            None => format!("no reply within {timeout:?}"),
        };
        // The connection's stream can no longer be trusted (a late reply would answer the next
        // request): drop every connection to the host.
        h.link = Link::Down {
            retry_at: Instant::now() + retry_after,
            reason: reason.clone(),
        };
        Err(FleetError::Unreachable { host, addr, reason })
    }

    /// The value of `key` and its remaining TTL in ms, or `None` when absent.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, FleetError> {
        self.on_owner(key, async |c: &mut Client| c.get(key).await)
            .await
    }

    pub async fn set(&mut self, key: &[u8], value: &[u8], ttl_ms: u32) -> Result<(), FleetError> {
        self.on_owner(key, async |c: &mut Client| c.set(key, value, ttl_ms).await)
            .await
    }

    /// True if the key existed.
    pub async fn delete(&mut self, key: &[u8]) -> Result<bool, FleetError> {
        self.on_owner(key, async |c: &mut Client| c.delete(key).await)
            .await
    }

    /// Every core's counters of host `host`.
    pub async fn stats(&mut self, host: usize) -> Result<Vec<ShardStats>, FleetError> {
        self.ensure_up(host).await?;
        let h = &mut self.hosts[host];
        let Link::Up { shards, .. } = &mut h.link else {
            return Err(not_up(host, h.addr));
        };
        match within(self.options.request_timeout, shards[0].stats()).await {
            Some(Ok(stats)) => Ok(stats),
            Some(Err(e)) => Err(FleetError::Server { host, source: e }),
            None => Err(FleetError::Unreachable {
                host,
                addr: h.addr,
                reason: "no reply to Stats in time".to_owned(),
            }),
        }
    }
}

/// What a host that `ensure_up` did not bring up answers (it always does, or says why not).
fn not_up(host: usize, addr: SocketAddr) -> FleetError {
    FleetError::Unreachable {
        host,
        addr,
        reason: "not connected".to_owned(),
    }
}

/// Connects to every core of the host at `addr`: `Hello` on its address, then one connection
/// per shard port, each checked to be owned by the core it is for.
async fn connect_host(
    host: usize,
    addr: SocketAddr,
) -> Result<(Topology, Vec<Client>), FleetError> {
    let unreachable = |e: ClientError| FleetError::Unreachable {
        host,
        addr,
        reason: e.to_string(),
    };
    let topology_error = |reason: String| FleetError::Topology { host, addr, reason };
    let mut first = Client::connect(addr).await.map_err(unreachable)?;
    let topology = first.hello("percore-fleet").await.map_err(unreachable)?;
    let cores = topology.shard_count as usize;
    if cores == 0 {
        return Err(topology_error("Hello reports 0 shards".to_owned()));
    }
    if topology.shard_ports.is_empty() {
        if cores > 1 {
            return Err(topology_error(format!(
                "{cores} cores and no shard ports: start it with --shard-ports, or every \
                 request could cross a core"
            )));
        }
        return Ok((topology, vec![first]));
    }
    if topology.shard_ports.len() != cores {
        return Err(topology_error(format!(
            "Hello reports {cores} shards but {} shard ports",
            topology.shard_ports.len()
        )));
    }
    let mut shards = Vec::with_capacity(cores);
    for (shard, &port) in topology.shard_ports.iter().enumerate() {
        let shard_addr = SocketAddr::new(addr.ip(), port);
        let mut client = Client::connect(shard_addr).await.map_err(unreachable)?;
        let seen = client.hello("percore-fleet").await.map_err(unreachable)?;
        if seen.shard as usize != shard || seen.shard_count != topology.shard_count {
            return Err(topology_error(format!(
                "shard port {port} is served by core {} of {}, not core {shard} of {cores}",
                seen.shard, seen.shard_count
            )));
        }
        shards.push(client);
    }
    Ok((topology, shards))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> impl Iterator<Item = Vec<u8>> {
        (0..n).map(|i| format!("key:{i:08}").into_bytes())
    }

    #[test]
    fn ketama_points_are_md5_words_of_name_dash_index() {
        // The first word of md5("a-0"), little-endian, is one of host 0's points.
        let ring = Ring::ketama(&["a"]);
        assert_eq!(ring.points.len(), POINTS_PER_HOST);
        let digest = Md5::digest(b"a-0");
        let first = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
        assert!(ring.points.contains(&(first, 0)));
        assert!(ring.points.windows(2).all(|w| w[0] <= w[1]));
        // The key point is md5's first word, little-endian: md5("") starts d4 1d 8c d9.
        assert_eq!(key_point(b""), 0xd98c_1dd4);
    }

    #[test]
    fn a_key_goes_to_the_first_point_at_or_after_it() {
        let ring = Ring::ketama(&["h0", "h1", "h2"]);
        for key in keys(2000) {
            let point = key_point(&key);
            let expected = ring
                .points
                .iter()
                .find(|&&(p, _)| p >= point)
                .unwrap_or(&ring.points[0])
                .1 as usize;
            assert_eq!(ring.host_of(&key), expected);
        }
    }

    #[test]
    fn each_of_three_hosts_gets_about_a_third() {
        let ring = Ring::ketama(&["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]);
        let n = 30_000;
        let mut per_host = [0usize; 3];
        for key in keys(n) {
            per_host[ring.host_of(&key)] += 1;
        }
        for count in per_host {
            let share = count as f64 / n as f64;
            assert!((0.25..0.42).contains(&share), "{per_host:?}");
        }
    }

    #[test]
    fn adding_a_host_moves_about_one_in_k_plus_one_keys_and_only_to_it() {
        let names = ["h0", "h1", "h2", "h3"];
        let before = Ring::ketama(&names[..3]);
        let after = Ring::ketama(&names);
        let n = 40_000;
        let mut moved = 0;
        for key in keys(n) {
            let (a, b) = (before.host_of(&key), after.host_of(&key));
            if a != b {
                assert_eq!(b, 3, "a key moved between old hosts");
                moved += 1;
            }
        }
        let share = moved as f64 / n as f64;
        assert!((0.18..0.32).contains(&share), "moved {share}");
    }

    #[test]
    fn placement_depends_on_names_not_on_their_order() {
        let a = Ring::ketama(&["x", "y", "z"]);
        let b = Ring::ketama(&["z", "x", "y"]);
        let rename = [1, 2, 0]; // host i of a is host rename[i] of b
        for key in keys(3000) {
            assert_eq!(rename[a.host_of(&key)], b.host_of(&key));
        }
    }

    #[test]
    fn an_empty_ring_answers_host_zero_and_an_empty_fleet_an_error() {
        assert_eq!(Ring::ketama::<&str>(&[]).host_of(b"k"), 0);
        let mut fleet = FleetClient::new(&[], FleetOptions::default());
        let got = crate::runtime::block_on(async move { fleet.get(b"k").await });
        assert!(matches!(
            got,
            Err(FleetError::NoSuchHost { host: 0, hosts: 0 })
        ));
        let mut fleet = FleetClient::new(&[], FleetOptions::default());
        let got = crate::runtime::block_on(async move { fleet.stats(3).await });
        assert!(matches!(
            got,
            Err(FleetError::NoSuchHost { host: 3, hosts: 0 })
        ));
    }
}
