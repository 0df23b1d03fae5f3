//! The server: bootstrap on the main thread, then one [`shard`] per core.
//!
//! [`start`] binds every listener up front (so a taken port or a bad address is reported before
//! any thread starts), builds the cross-core mesh, starts one pinned executor per CPU and waits
//! until all are serving. [`Server::wait`] collects each core as it stops and merges their
//! reports; a core that stops before shutdown (a panic) ends the wait with an error naming it,
//! after at most the drain timeout for the others, so a dead core cannot leave the process
//! hanging on the peers whose mesh permits it stranded.
//!
//! Inside a core, a request travels: [`connection`] (read, write replies, push back) → its
//! [`codec`] (native FlatBuffers or memcached text: split the request, run it here or send it
//! through [`router`] to the owner core, where [`peer`] runs it, or to the [`compute`] queue)
//! → [`crate::ops`] (what the operation does) → [`crate::store`]. Replies made elsewhere come
//! back through the connection's [`mailbox`]; [`message`] is what travels between cores.

pub mod codec;
pub mod compute;
pub mod connection;
pub mod listening;
pub mod mailbox;
pub mod message;
pub mod metrics_http;
mod notify;
pub mod output;
pub mod peer;
pub mod pool;
pub mod router;
pub mod run;
pub mod shard;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::config::Config;
use crate::metrics::{ExitReport, ShardReport};
use crate::runtime::{self, Executor, RuntimeError};
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
    /// The address core 0 serves `/metrics` on, with `--metrics-listen`.
    pub metrics_addr: Option<SocketAddr>,
    global: Arc<Global>,
    /// Each core's executor, by shard index, until it has been joined.
    executors: Vec<Option<Executor<ShardReport>>>,
    events: Receiver<CoreEvent>,
    drain_timeout: Duration,
}

/// What the cores tell the main thread.
pub enum CoreEvent {
    /// Core `i` is connected to its peers and accepting.
    Ready(usize),
    /// Core `i`'s thread is ending, for whatever reason.
    Exited(usize),
}

/// After a core stopped early, how long past the drain timeout the others get to finish.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// How often the main thread looks whether the others have drained, after a core stopped.
const STOP_POLL: Duration = Duration::from_millis(10);

/// The error for core `index` that stopped with `outcome` while it should have been serving.
fn stopped(
    index: usize,
    cpu: usize,
    when: &str,
    outcome: Result<ShardReport, RuntimeError>,
) -> anyhow::Error {
    let reason = match outcome {
        Ok(_) => "it returned before shutdown".to_owned(),
        Err(RuntimeError::Panicked { message, .. }) => format!("panicked: {message}"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    };
    anyhow!("core {index} (CPU {cpu}) stopped{when}: {reason}")
}

/// Warns of each listener bound beyond loopback while `--allow` admits only loopback clients:
/// every remote client it was bound for would be refused at accept.
fn warn_if_unreachable(config: &Config) {
    if config.allow.reaches_beyond_loopback() {
        return;
    }
    let listeners = [
        ("--listen", Some(config.listen)),
        ("--memcached-listen", config.memcached_listen),
        ("--metrics-listen", config.metrics_listen),
    ];
    for (flag, addr) in listeners {
        if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
            tracing::warn!(
                "{flag} {addr} is reachable beyond this host, but --allow admits only loopback \
                 clients ({}): others are refused at accept. List the client networks with \
                 --allow CIDR[,CIDR...]; neither protocol authenticates or encrypts, so keep \
                 them private",
                config.allow
            );
        }
    }
}

/// Starts one pinned executor per configured CPU and returns once every core is serving.
pub fn start(config: Config) -> anyhow::Result<Server> {
    warn_if_unreachable(&config);
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

    // One core serves the metrics: a scrape gathers from every core over the mesh anyway.
    let (mut metrics_listener, metrics_addr) = match config.metrics_listen {
        Some(listen) => {
            let socket = runtime::net::ensure_port_free(listen)
                .and_then(|()| runtime::net::reuseport_listener(listen, backlog))
                .with_context(|| format!("cannot listen on {listen} (--metrics-listen)"))?;
            let addr = runtime::net::local_addr(&socket)?;
            (Some(socket), Some(addr))
        }
        None => (None, None),
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

    let global = Arc::new(Global::new(shards));
    let mut meshes = runtime::mesh::full_mesh(shards, MESH_CAPACITY).into_iter();
    let mut executors = Vec::with_capacity(shards);
    let (events_tx, events) = mpsc::channel();
    for (index, &cpu) in config.cpus.iter().enumerate() {
        let mut listeners = vec![(groups.remove(0), Protocol::Native)];
        if let Some(own) = own_listeners.get_mut(index).and_then(Option::take) {
            listeners.push((own, Protocol::Native));
        }
        if !memcached_groups.is_empty() {
            listeners.push((memcached_groups.remove(0), Protocol::Memcache));
        }
        let setup = ShardSetup {
            index,
            cpu,
            config: config.clone(),
            global: global.clone(),
            listeners,
            shard_ports: shard_ports.clone(),
            metrics_listener: metrics_listener.take(),
            mesh: meshes
                .next()
                .ok_or_else(|| anyhow!("mesh has too few ends"))?,
            ready: events_tx.clone(),
        };
        let name = format!("percore-{index}");
        let exited = events_tx.clone();
        let on_exit = move || {
            // The main thread may have returned already; then nobody needs to know.
            let _ = exited.send(CoreEvent::Exited(index));
        };
        let started =
            Executor::start_watched(cpu, &name, Some(config.idle_poll), on_exit, move || {
                run::run(setup)
            });
        match started {
            Ok(executor) => executors.push(Some(executor)),
            Err(e) => {
                global.shutdown.store(true, Ordering::Release);
                return Err(e.into());
            }
        }
    }
    drop(events_tx);
    // Every core must say it is ready. One that stops first (it could not make its executor,
    // or panicked) says so too, so its peers, which wait for it, cannot keep this waiting.
    let mut ready = 0;
    while ready < shards {
        match events.recv() {
            Ok(CoreEvent::Ready(_)) => ready += 1,
            Ok(CoreEvent::Exited(index)) => {
                global.shutdown.store(true, Ordering::Release);
                if let Some(executor) = executors[index].take() {
                    let cpu = executor.cpu();
                    return Err(stopped(index, cpu, " during start-up", executor.join()));
                }
            }
            // Unreachable: every core's thread says it exits before it lets go of its sender.
            Err(_) => return Err(anyhow!("the cores stopped during start-up")),
        }
    }
    Ok(Server {
        addr,
        cpus: config.cpus.clone(),
        shard_ports,
        memcached_addr,
        metrics_addr,
        global,
        executors,
        events,
        drain_timeout: config.drain_timeout,
    })
}

impl Server {
    /// Where this server listens, as the binary announces it.
    pub fn listening(&self) -> listening::Listening {
        listening::Listening {
            addr: self.addr,
            cpus: self.cpus.clone(),
            shard_ports: self.shard_ports.clone(),
            memcached: self.memcached_addr,
            metrics: self.metrics_addr,
        }
    }

    /// Asks every core to drain and stop (what SIGINT and SIGTERM do).
    pub fn shutdown(&self) {
        self.global.shutdown.store(true, Ordering::Release);
    }

    /// The flag that, once set, shuts the server down; for signal handlers.
    pub fn shutdown_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.global.shutdown.clone()
    }

    /// Waits for every core to finish and merges their reports.
    ///
    /// Cores are collected as they stop, in whatever order. One that stops while the server is
    /// not shutting down (it panicked) ends the wait with an error naming it: the others are
    /// told to drain, and the error is returned once their connections are closed, or after
    /// the drain timeout and [`STOP_GRACE`], whichever is first. What is left of their shutdown
    /// waits for the dead core, which will never answer or release its permits; the process's
    /// exit ends it.
    pub fn wait(mut self) -> anyhow::Result<ExitReport> {
        let mut reports: Vec<Option<ShardReport>> = self.executors.iter().map(|_| None).collect();
        let mut running = self.executors.len();
        let mut failure = None;
        let mut deadline: Option<Instant> = None;
        while running > 0 {
            let event = match deadline {
                None => self.events.recv().map_err(|_| ()),
                Some(at) => {
                    let drained = (0..self.executors.len())
                        .all(|i| self.executors[i].is_none() || self.global.is_drained(i));
                    if drained || Instant::now() >= at {
                        break;
                    }
                    match self.events.recv_timeout(STOP_POLL) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        other => other.map_err(|_| ()),
                    }
                }
            };
            // Every core's thread is gone.
            let Ok(event) = event else { break };
            let CoreEvent::Exited(index) = event else {
                continue;
            };
            let Some(executor) = self.executors.get_mut(index).and_then(Option::take) else {
                continue;
            };
            running -= 1;
            let cpu = executor.cpu();
            let outcome = executor.join();
            match outcome {
                Ok(report) if self.global.shutdown.load(Ordering::Acquire) => {
                    reports[index] = Some(report)
                }
                outcome => {
                    let error = stopped(index, cpu, "", outcome);
                    if failure.is_none() {
                        tracing::error!(
                            "{error:#}; the other cores drain (at most {:?})",
                            self.drain_timeout + STOP_GRACE
                        );
                        self.global.shutdown.store(true, Ordering::Release);
                        deadline = Some(Instant::now() + self.drain_timeout + STOP_GRACE);
                        failure = Some(error);
                    }
                }
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        Ok(ExitReport {
            shards: reports.into_iter().flatten().collect(),
        })
    }
}
