//! The line the `percore` binary prints on stdout once every core is serving, and its reader:
//! what tests and tools learn the chosen ports from. One type writes and reads it, so the two
//! cannot drift apart.
//!
//! `percore listening on ADDR with N cores (cpus A,B)[, shard ports P..=Q][, memcached on ADDR]`
//! `[, metrics on ADDR]`

use std::fmt;
use std::net::SocketAddr;

/// Where a running server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub addr: SocketAddr,
    pub cpus: Vec<usize>,
    /// Each core's own port, with `--shard-ports`.
    pub shard_ports: Vec<u16>,
    /// The memcached listener, with `--memcached-listen`.
    pub memcached: Option<SocketAddr>,
    /// The Prometheus endpoint, with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
}

impl fmt::Display for Listening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus: Vec<String> = self.cpus.iter().map(|c| c.to_string()).collect();
        write!(
            f,
            "percore listening on {} with {} cores (cpus {})",
            self.addr,
            self.cpus.len(),
            cpus.join(",")
        )?;
        if let (Some(first), Some(last)) = (self.shard_ports.first(), self.shard_ports.last()) {
            write!(f, ", shard ports {first}..={last}")?;
        }
        if let Some(addr) = self.memcached {
            write!(f, ", memcached on {addr}")?;
        }
        if let Some(addr) = self.metrics {
            write!(f, ", metrics on {addr}")?;
        }
        Ok(())
    }
}

impl Listening {
    /// Reads the line back; `None` when it is not one.
    pub fn parse(line: &str) -> Option<Listening> {
        let rest = line.trim().strip_prefix("percore listening on ")?;
        let (addr, rest) = rest.split_once(" with ")?;
        let (_, rest) = rest.split_once("(cpus ")?;
        let (cpus, rest) = rest.split_once(')')?;
        let cpus = cpus
            .split(',')
            .map(|c| c.parse().ok())
            .collect::<Option<Vec<usize>>>()?;
        let mut shard_ports = Vec::new();
        let mut memcached = None;
        let mut metrics = None;
        for part in rest.split(", ").filter(|p| !p.is_empty()) {
            if let Some(range) = part.strip_prefix("shard ports ") {
                let (a, b) = range.split_once("..=")?;
                shard_ports = (a.parse().ok()?..=b.parse().ok()?).collect();
            } else if let Some(addr) = part.strip_prefix("memcached on ") {
                memcached = Some(addr.parse().ok()?);
            } else if let Some(addr) = part.strip_prefix("metrics on ") {
                metrics = Some(addr.parse().ok()?);
            } else {
                return None;
            }
        }
        Some(Listening {
            addr: addr.parse().ok()?,
            cpus,
            shard_ports,
            memcached,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_back_as_written() {
        let all = Listening {
            addr: "127.0.0.1:7070".parse().unwrap(),
            cpus: vec![0, 1],
            shard_ports: vec![9000, 9001],
            memcached: Some("[::1]:11311".parse().unwrap()),
            metrics: Some("127.0.0.1:9464".parse().unwrap()),
        };
        let line = all.to_string();
        assert_eq!(
            line,
            "percore listening on 127.0.0.1:7070 with 2 cores (cpus 0,1), shard ports \
             9000..=9001, memcached on [::1]:11311, metrics on 127.0.0.1:9464"
        );
        assert_eq!(Listening::parse(&line), Some(all));
        let bare = Listening {
            addr: "127.0.0.1:1".parse().unwrap(),
            cpus: vec![3],
            shard_ports: vec![],
            memcached: None,
            metrics: None,
        };
        assert_eq!(Listening::parse(&bare.to_string()), Some(bare));
        assert_eq!(Listening::parse("percore: error: no"), None);
    }
}
