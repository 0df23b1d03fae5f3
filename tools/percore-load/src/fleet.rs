//! `--distribute`: one load generator over a fleet. Each slot connects to every `--target` host
//! (with the percore protocol, to every core of it through its `--shard-ports`, as
//! `--shard-aware` does for one host) and sends each key to the host that owns it on the ketama
//! ring of the targets (`percore::client::fleet::Ring`, named as `--target NAME=ADDR` says, else
//! by the address as written), then to
//! the core that owns it there. What each host was sent, and the errors its replies and its
//! connections caused, are tallied per host and reported.
//!
//! A host whose connection fails (or that stops answering for --timeout) is marked down for the
//! rest of the slot's run: what was in flight to it counts as lost, what would go to it later
//! is counted as `host_down` errors without being sent, and the other hosts' keys go on.

use std::fmt::Write as _;

use percore::client::fleet::Ring;
use percore::client::Topology;
use serde_json::{json, Value};

use crate::cli::Plan;
use crate::stats::Recorder;

/// How keys are spread over the `--target` hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribute {
    /// ketama over md5, 160 points per host named by its address, as memcached clients and
    /// twemproxy (`hash: md5`, `distribution: ketama`) do it
    Ketama,
}

/// The ring of a plan's targets.
pub fn ring(plan: &Plan) -> Ring {
    Ring::ketama(&plan.target_names)
}

/// What one host of the fleet was sent, over the whole run (prefill and verify included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostTally {
    /// Operations sent to it (keys).
    pub sent: u64,
    /// Errors its replies caused, requests lost with its connections, and operations not sent
    /// because it was down.
    pub errors: u64,
    /// Operations not sent because it was down (counted in `errors` too).
    pub down: u64,
    /// Its connections that ended with requests in flight or failed.
    pub connections_lost: u64,
}

impl HostTally {
    pub fn add(&mut self, other: &HostTally) {
        self.sent += other.sent;
        self.errors += other.errors;
        self.down += other.down;
        self.connections_lost += other.connections_lost;
    }
}

/// Adds `other`'s per-host tallies into `into`.
pub fn merge(into: &mut Vec<HostTally>, other: &[HostTally]) {
    if into.len() < other.len() {
        into.resize(other.len(), HostTally::default());
    }
    for (a, b) in into.iter_mut().zip(other) {
        a.add(b);
    }
}

/// Host `host`'s tally in `rec`, made if needed.
pub fn tally(rec: &mut Recorder, host: usize) -> &mut HostTally {
    if rec.hosts.len() <= host {
        rec.hosts.resize(host + 1, HostTally::default());
    }
    &mut rec.hosts[host]
}

/// Where a slot's links to one host start, and the host's topology (percore protocol).
pub struct HostLinks {
    pub first_link: usize,
    pub topology: Option<Topology>,
}

/// How a distributing slot finds a key's link.
pub struct Routes {
    pub ring: Ring,
    pub hosts: Vec<HostLinks>,
    /// The host of each link.
    pub link_host: Vec<usize>,
}

impl Routes {
    /// The link of the core that owns `key` on the host that owns it, and that host.
    pub fn link_of(&self, key: &[u8]) -> (usize, usize) {
        let host = self
            .ring
            .host_of(key)
            .min(self.hosts.len().saturating_sub(1));
        let h = &self.hosts[host];
        let shard = h.topology.as_ref().map_or(0, |t| t.owner_of(key));
        let last = self
            .hosts
            .get(host + 1)
            .map_or(self.link_host.len(), |n| n.first_link);
        ((h.first_link + shard).min(last.saturating_sub(1)), host)
    }
}

/// The per-host lines of the exit report.
pub fn report_lines(plan: &Plan, hosts: &[HostTally]) -> String {
    let mut out = String::new();
    let total: u64 = hosts.iter().map(|h| h.sent).sum::<u64>().max(1);
    let _ = writeln!(out, "Per host (all phases):");
    for (i, (target, name)) in plan.targets.iter().zip(&plan.target_names).enumerate() {
        let h = hosts.get(i).copied().unwrap_or_default();
        let at = if *name == target.to_string() {
            String::new()
        } else {
            format!(" ({target})")
        };
        let _ = writeln!(
            out,
            "  host {i} {name}{at}: sent {} ({:.1}%), errors {} (not sent, host down: {}), connections lost {}",
            h.sent,
            100.0 * h.sent as f64 / total as f64,
            h.errors,
            h.down,
            h.connections_lost,
        );
    }
    out
}

/// The per-host part of the JSON summary.
pub fn json_hosts(plan: &Plan, hosts: &[HostTally]) -> Value {
    plan.targets
        .iter()
        .zip(&plan.target_names)
        .enumerate()
        .map(|(i, (target, name))| {
            let h = hosts.get(i).copied().unwrap_or_default();
            json!({
                "target": target.to_string(),
                "name": name,
                "sent": h.sent,
                "errors": h.errors,
                "host_down": h.down,
                "connections_lost": h.connections_lost,
            })
        })
        .collect()
}
