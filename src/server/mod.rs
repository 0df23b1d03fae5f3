//! The server: bootstrap on the main thread, then one [`shard`] per core.
//!
//! [`start`] binds every listener up front (so a taken port or a bad address is reported before
//! any thread starts), builds the cross-core mesh, starts one pinned executor per CPU and waits
//! until all are serving. [`Server::wait`] joins them after shutdown and merges their reports.
//!
//! Inside a core, a request travels: [`connection`] (read, write replies, push back) → its
//! [`codec`] (native FlatBuffers or memcached text: split the request, run it here or send it
//! through [`router`] to the owner core, where [`peer`] runs it, or to the [`compute`] queue)
//! → [`crate::ops`] (what the operation does) → [`crate::store`]. Replies made elsewhere come
//! back through the connection's [`mailbox`]; [`message`] is what travels between cores.

pub mod codec;
pub mod compute;
pub mod connection;
pub mod mailbox;
pub mod message;
mod notify;
pub mod output;
pub mod peer;
pub mod pool;
pub mod router;
pub mod run;
pub mod shard;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, Context};

use crate::config::Config;
use crate::metrics::{ExitReport, ShardReport};
use crate::runtime::{self, Executor};
use codec::Protocol;
use run::ShardSetup;
use shard::{Global, MESH_CAPACITY};

/// A running server.
pub struct Server {
    /// The address every core listens on (the actual port when `--listen` asked for port 0).
    pub addr: SocketAddr,
    /// The CPUs the cores run on, in shard order.
    pub cpus: Vec<usize>,
    /// Each shard's own port, with `--shard-ports`.
    pub shard_ports: Vec<u16>,
    /// The address every core serves memcached's protocol on, with `--memcached-listen`.
    pub memcached_addr: Option<SocketAddr>,
    global: Arc<Global>,
    executors: Vec<Executor<ShardReport>>,
}

/// Starts one pinned executor per configured CPU and returns once every core is serving.
pub fn start(config: Config) -> anyhow::Result<Server> {
    let shards = config.shard_count();
    let backlog = config.backlog as i32;
    let mut groups = runtime::net::reuseport_group(config.listen, shards, backlog)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = runtime::net::local_addr(&groups[0])?;
    let (mut memcached_groups, memcached_addr) = match config.memcached_listen {
        Some(listen) => {
            let group = runtime::net::reuseport_group(listen, shards, backlog)
                .with_context(|| format!("cannot listen on {listen} (--memcached-listen)"))?;
            let addr = runtime::net::local_addr(&group[0])?;
            (group, Some(addr))
        }
        None => (Vec::new(), None),
    };

    let mut shard_ports = Vec::new();
    let mut own_listeners = Vec::new();
    if let Some(base) = config.shard_ports {
        for i in 0..shards {
            let port = base + i as u16;
            let own = SocketAddr::new(addr.ip(), port);
            let socket = runtime::net::ensure_port_free(own)
                .and_then(|()| runtime::net::reuseport_listener(own, backlog))
                .with_context(|| {
                    format!("cannot listen on shard port {own} (--shard-ports {base})")
                })?;
            own_listeners.push(Some(socket));
            shard_ports.push(port);
        }
    }

    let global = Arc::new(Global::new());
    let mut meshes = runtime::mesh::full_mesh(shards, MESH_CAPACITY).into_iter();
    let mut executors = Vec::with_capacity(shards);
    let mut ready = Vec::with_capacity(shards);
    for (index, &cpu) in config.cpus.iter().enumerate() {
        let mut listeners = vec![(groups.remove(0), Protocol::Native)];
        if let Some(own) = own_listeners.get_mut(index).and_then(Option::take) {
            listeners.push((own, Protocol::Native));
        }
        if !memcached_groups.is_empty() {
            listeners.push((memcached_groups.remove(0), Protocol::Memcache));
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let setup = ShardSetup {
            index,
            cpu,
            config: config.clone(),
            global: global.clone(),
            listeners,
            shard_ports: shard_ports.clone(),
            mesh: meshes
                .next()
                .ok_or_else(|| anyhow!("mesh has too few ends"))?,
            ready: ready_tx,
        };
        let name = format!("percore-{index}");
        executors.push(Executor::start(cpu, &name, move || run::run(setup))?);
        ready.push(ready_rx);
    }
    // A core that fails to start drops its setup, and with it the sender, without a word.
    for (index, rx) in ready.into_iter().enumerate() {
        if rx.recv().is_err() {
            global.shutdown.store(true, Ordering::Release);
            let cpu = config.cpus[index];
            let executor = executors.swap_remove(index);
            return Err(match executor.join() {
                Err(e) => anyhow!(e),
                Ok(_) => anyhow!("core {index} (CPU {cpu}) stopped during start-up"),
            });
        }
    }
    Ok(Server {
        addr,
        cpus: config.cpus.clone(),
        shard_ports,
        memcached_addr,
        global,
        executors,
    })
}

impl Server {
    /// Asks every core to drain and stop (what SIGINT and SIGTERM do).
    pub fn shutdown(&self) {
        self.global.shutdown.store(true, Ordering::Release);
    }

    /// The flag that, once set, shuts the server down; for signal handlers.
    pub fn shutdown_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.global.shutdown.clone()
    }

    /// Waits for every core to finish and merges their reports.
    pub fn wait(self) -> anyhow::Result<ExitReport> {
        let mut shards = Vec::with_capacity(self.executors.len());
        for executor in self.executors {
            shards.push(executor.join()?);
        }
        Ok(ExitReport { shards })
    }
}
