//! peer-echo: a length-prefixed echo, the floor under percore's protocol, on three engines.
//!
//! - [`epoll_engine`] (the default): a pinned thread per core, epoll, one `recv` and one `send`
//!   per batch, polling for `--idle-poll` before it sleeps as percore does.
//! - [`uring_engine`]: a pinned thread per core on its own io_uring, multishot accept and
//!   receive into provided buffers, one `send` per connection per batch of completions, the
//!   same `--idle-poll`. With the epoll engine it is the floor: percore against the faster of
//!   the two measures everything percore does above the kernel's sockets.
//! - [`glommio_engine`]: percore's own runtime below the protocol (pinned glommio executors,
//!   `percore::runtime`'s connections). percore against it measures the protocol and the
//!   request path alone.
//!
//! Both split the stream by length prefix only and send every whole frame straight back, with
//! Ping requests turned into their replies in place ([`frames`]), so that percore-load, which
//! checks every reply, accepts the echo. With `--verbatim` the bytes go back unchanged.

#[cfg(test)]
mod engine_tests;
mod epoll_engine;
mod frames;
mod glommio_engine;
mod uring_engine;

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use percore::config::{usable_cpus, CoreSpec, Dur};
use percore::runtime::net;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    /// A thread per core on epoll with plain recv and send: the floor
    Epoll,
    /// A thread per core on its own io_uring, multishot receive: the floor (Linux 6.1 or later)
    Uring,
    /// percore's glommio runtime, as percore uses it
    Glommio,
}

/// peer-echo: a length-prefixed echo of Ping frames (a benchmark peer, the floor under percore).
#[derive(Debug, Parser)]
#[command(name = "peer-echo", version, max_term_width = 100)]
struct Args {
    /// Address every core listens on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,

    /// CPUs to run on: a count (the first N usable) or a list like 0,2-3 [default: all usable]
    #[arg(long, value_name = "N|LIST")]
    cores: Option<CoreSpec>,

    /// What moves the bytes
    #[arg(long, value_enum, default_value_t = Engine::Epoll)]
    engine: Engine,

    /// With the epoll and uring engines, how long a core keeps polling after its last event
    /// before it sleeps in the kernel (percore's --idle-poll has the same default); 0 never polls
    #[arg(long, value_name = "DUR", default_value = "100us")]
    idle_poll: Dur,

    /// Echo frames unchanged instead of turning Ping requests into Ping replies
    #[arg(long)]
    verbatim: bool,

    /// Listen backlog of each core's socket
    #[arg(long, value_name = "N", default_value_t = 1024)]
    backlog: i32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cpus = args
        .cores
        .clone()
        .unwrap_or(CoreSpec::Count(usable_cpus().len().max(1)))
        .resolve(&usable_cpus())?;
    let sockets = net::reuseport_group(args.listen, cpus.len(), args.backlog)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = net::local_addr(&sockets[0])?;
    let mut glommio = Vec::new();
    let mut threads = Vec::new();
    for (&cpu, socket) in cpus.iter().zip(sockets) {
        match args.engine {
            Engine::Glommio => glommio.push(glommio_engine::start(cpu, socket, args.verbatim)?),
            Engine::Epoll => threads.push(epoll_engine::start(
                cpu,
                socket,
                args.verbatim,
                args.idle_poll.0,
            )?),
            Engine::Uring => threads.push(uring_engine::start(
                Some(cpu),
                socket.into(),
                args.verbatim,
                args.idle_poll.0,
            )?),
        }
    }
    let engine = match args.engine {
        Engine::Epoll => "epoll",
        Engine::Glommio => "glommio",
        Engine::Uring => "uring",
    };
    println!(
        "peer-echo listening on {bound} with {} cores (cpus {cpus:?}), engine {engine}{}",
        cpus.len(),
        if args.verbatim { ", verbatim" } else { "" }
    );
    for executor in glommio {
        executor.join()?;
    }
    for thread in threads {
        match thread.join() {
            Ok(result) => result.with_context(|| format!("an {engine} thread stopped"))?,
            Err(_) => anyhow::bail!("an {engine} thread panicked"),
        }
    }
    Ok(())
}
