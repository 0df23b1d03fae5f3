//! memcached's `stats`: every core's counters, summed, under memcached's names.

use bytes::BytesMut;

use crate::memcache::reply;
use crate::protocol::ShardStats;

/// What `stats` reports about the server beside the counters.
#[derive(Debug, Clone, Copy)]
pub struct ServerInfo {
    pub uptime_s: u64,
    pub threads: usize,
    pub limit_maxbytes: u64,
    pub max_connections: usize,
}

fn rusage() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// Writes the general statistics, then `END`.
pub fn memcache(info: &ServerInfo, per_shard: &[ShardStats], out: &mut BytesMut) {
    let sum = |f: fn(&ShardStats) -> u64| per_shard.iter().map(f).sum::<u64>();
    let (user, system) = rusage();
    let now = crate::memcache::unix_now();
    reply::stat(out, "pid", std::process::id());
    reply::stat(out, "uptime", info.uptime_s);
    reply::stat(out, "time", now);
    reply::stat(out, "version", env!("CARGO_PKG_VERSION"));
    reply::stat(out, "pointer_size", usize::BITS);
    reply::stat(out, "rusage_user", format_args!("{user:.6}"));
    reply::stat(out, "rusage_system", format_args!("{system:.6}"));
    reply::stat(out, "max_connections", info.max_connections);
    reply::stat(out, "curr_connections", sum(|s| s.connections));
    reply::stat(out, "total_connections", sum(|s| s.connections_accepted));
    reply::stat(out, "rejected_connections", sum(|s| s.connections_refused));
    reply::stat(out, "cmd_get", sum(|s| s.requests_get));
    reply::stat(out, "cmd_set", sum(|s| s.requests_set));
    reply::stat(out, "cmd_flush", sum(|s| s.requests_flush));
    reply::stat(out, "cmd_touch", sum(|s| s.requests_touch));
    reply::stat(out, "get_hits", sum(|s| s.hits));
    reply::stat(out, "get_misses", sum(|s| s.misses));
    reply::stat(out, "get_expired", sum(|s| s.expirations));
    reply::stat(out, "delete_hits", sum(|s| s.delete_hits));
    reply::stat(out, "delete_misses", sum(|s| s.delete_misses));
    reply::stat(out, "incr_hits", sum(|s| s.incr_hits));
    reply::stat(out, "incr_misses", sum(|s| s.incr_misses));
    reply::stat(out, "decr_hits", sum(|s| s.decr_hits));
    reply::stat(out, "decr_misses", sum(|s| s.decr_misses));
    reply::stat(out, "cas_hits", sum(|s| s.cas_hits));
    reply::stat(out, "cas_misses", sum(|s| s.cas_misses));
    reply::stat(out, "cas_badval", sum(|s| s.cas_badval));
    reply::stat(out, "touch_hits", sum(|s| s.touch_hits));
    reply::stat(out, "touch_misses", sum(|s| s.touch_misses));

    reply::stat(out, "threads", info.threads);
    reply::stat(out, "limit_maxbytes", info.limit_maxbytes);
    reply::stat(out, "bytes", sum(|s| s.bytes_used));
    reply::stat(out, "curr_items", sum(|s| s.items));
    reply::stat(out, "total_items", sum(|s| s.items_stored));
    reply::stat(out, "evictions", sum(|s| s.evictions));
    reply::stat(out, "reclaimed", sum(|s| s.expirations));
    reply::stat(out, "forwarded", sum(|s| s.forwarded));
    reply::line(out, b"END");
}
