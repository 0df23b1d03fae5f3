//! percore: a thread-per-core io_uring key-value and RPC server, its client, and the protocol
//! both speak.
//!
//! One glommio executor runs pinned on each chosen CPU and owns a shard of the keyspace; cores
//! share nothing and talk only through bounded request/reply channels. `docs/architecture.md`
//! follows a request through the parts and says where each limit is enforced. Where things
//! live:
//!
//! - [`protocol`]: the wire format (length-prefixed FlatBuffers), frame splitting, request and
//!   response codecs, key-to-shard hashing. Shared by everything below.
//! - [`runtime`]: the only module that touches glommio: pinned executors, socket2 listeners,
//!   connections, and the cross-core mesh.
//! - [`server`]: bootstrap, then per core: accept, [`server::connection`] (read, write, push
//!   back) driving a [`server::codec`] (native or memcached), forwarding to the owner core, the
//!   compute queue, shutdown.
//! - [`memcache`]: memcached's text protocol (classic and meta commands), as [`protocol`] is
//!   percore's: the server's parser and replies, and [`memcache::client`], which encodes
//!   commands and splits replies for the load generator and the tests.
//! - [`ops`]: what each operation does; [`store`]: one core's shard of the cache.
//! - [`metrics`]: per-core counters and latency histograms, and the exit report;
//!   [`exposition`]: the same as Prometheus series for `--metrics-listen`.
//! - [`client`]: an async client with pipelining, used by the tests and `percore-load`.
//! - [`config`]: command line and config file, with [`allow`], the client networks admitted;
//!   [`error`]: request errors and their statuses.

pub mod allow;
pub mod client;
pub mod config;
pub mod error;
pub mod exposition;
pub mod memcache;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod store;
