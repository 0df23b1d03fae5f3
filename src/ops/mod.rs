//! What each operation does, independent of where it runs.
//!
//! The server's router ([`crate::server`]) decides *where* a request executes (here, on the core
//! that owns its key, or in the compute queue); these functions are the *what*: [`kv`] for Get,
//! Set and Delete against a [`Store`](crate::store::Store), [`compute`] for the CPU-bound
//! digests, and [`hello`] and [`ping`] below. Stats is gathered from every core by the server.

pub mod compute;
pub mod kv;
pub mod memcache;
pub mod stats;

use crate::protocol::Reply;

/// The reply to `Hello`: the topology a shard-aware client needs.
pub fn hello(shard: usize, shard_count: usize, shard_ports: &[u16]) -> Reply<'_> {
    Reply::Hello {
        shard_count: shard_count as u32,
        shard: shard as u32,
        shard_ports,
    }
}

/// The reply to `Ping`: the payload, echoed.
pub fn ping(payload: &[u8]) -> Reply<'_> {
    Reply::Ping { payload }
}
