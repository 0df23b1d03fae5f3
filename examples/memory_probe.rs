//! A client-side probe for the server's memory goals, driven by `tools/measure-memory.sh`; run
//! it with `cargo run --release --example memory_probe -- MODE ...`. `fill` writes distinct keys
//! (`mem:000000001`, ...) with values of random sizes until a total of value bytes has been sent,
//! pipelined over several connections, counts the replies by status, then reads back the newest
//! and the oldest 1,000 keys and checks their values: both the size and the bytes of a value are
//! derived from a hash of its key, so any reader can check them. `idle` opens many plain TCP
//! connections, sends one Ping on each, reads its reply, and then holds them all open and idle
//! until stdin closes or `--hold` passes, printing a line once all are established so that a
//! script can read the server's RSS meanwhile. `stats` prints every shard's counters. Each mode
//! prints a summary line of `name=value` fields for scripts; a server that cannot be reached is
//! an error message and exit status 1, not a panic.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use percore::client::{Client, ClientError, MAX_RESPONSE_FRAME};
use percore::config::{Dur, Size};
use percore::protocol::frame::{self, Peek};
use percore::protocol::{Op, ReplyView, RequestEncoder, ResponseView, Status};
use percore::runtime::{block_on, spawn_joinable};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

#[derive(Parser)]
#[command(about = "Memory probe for percore: fill the store, hold idle connections, read stats")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Write distinct keys until `--bytes` of values were sent, then check the newest ones.
    Fill {
        #[arg(long, default_value = "127.0.0.1:7070")]
        target: String,
        /// Total value bytes to write.
        #[arg(long, default_value = "1GiB")]
        bytes: Size,
        #[arg(long, default_value = "1024")]
        min_value: Size,
        #[arg(long, default_value = "16384")]
        max_value: Size,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 32)]
        pipeline: usize,
        /// How many of the newest (and of the oldest) keys to read back.
        #[arg(long, default_value_t = 1000)]
        check: u64,
    },
    /// Open connections, Ping each once, and keep them open and idle.
    Idle {
        #[arg(long, default_value = "127.0.0.1:7070")]
        target: String,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Hold them at most this long (by default until stdin closes).
        #[arg(long)]
        hold: Option<Dur>,
    },
    /// Print every shard's counters.
    Stats {
        #[arg(long, default_value = "127.0.0.1:7070")]
        target: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Fill {
            target,
            bytes,
            min_value,
            max_value,
            connections,
            pipeline,
            check,
        } => resolve(&target).and_then(|addr| {
            fill(FillArgs {
                addr,
                bytes: bytes.0,
                min_value: min_value.0 as usize,
                max_value: max_value.0 as usize,
                connections,
                pipeline,
                check,
            })
        }),
        Mode::Idle {
            target,
            connections,
            hold,
        } => resolve(&target).and_then(|addr| idle(addr, connections, hold.map(|d| d.0))),
        Mode::Stats { target } => resolve(&target).and_then(stats),
    };
    if let Err(e) = result {
        eprintln!("memory_probe: error: {e:#}");
        std::process::exit(1);
    }
}

fn resolve(target: &str) -> Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("`{target}` is not an address (example: 127.0.0.1:7070)"))?
        .next()
        .with_context(|| format!("`{target}` resolves to no address"))
}

async fn connect(addr: SocketAddr) -> Result<Client> {
    Client::connect(addr).await.map_err(|e| match e {
        ClientError::Io(e) => {
            anyhow::anyhow!("cannot connect to {addr}: {e} (is percore running there?)")
        }
        e => anyhow::anyhow!("cannot connect to {addr}: {e}"),
    })
}

// ---------------------------------------------------------------------------------------------
// Keys and their deterministic values.

fn key_of(index: u64) -> String {
    format!("mem:{index:09}")
}

/// The value stored under `key`: its size in `min..=max` and its bytes both come from hashes of
/// the key, so a reader needs nothing but the key to check it.
fn value_of(key: &[u8], min: usize, max: usize, out: &mut Vec<u8>) {
    let len = min + (xxh3_64(key) % (max - min + 1) as u64) as usize;
    let mut state = xxh3_64_with_seed(key, 0x5eed);
    out.clear();
    while out.len() < len {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&z.to_le_bytes()[..take]);
    }
}

fn status_name(status: Status) -> String {
    status
        .variant_name()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("Status({})", status.0))
}

// ---------------------------------------------------------------------------------------------
// fill

struct FillArgs {
    addr: SocketAddr,
    bytes: u64,
    min_value: usize,
    max_value: usize,
    connections: usize,
    pipeline: usize,
    check: u64,
}

#[derive(Default)]
struct FillState {
    /// The next key index to write (indices start at 1).
    next: u64,
    /// Value bytes of every Set sent so far.
    bytes_sent: u64,
    /// Value bytes of the Sets answered Ok.
    bytes_ok: u64,
    /// Replies by status name.
    replies: BTreeMap<String, u64>,
    /// The first error message of each non-Ok status, to show what the server said.
    first_error: BTreeMap<String, String>,
}

fn fill(args: FillArgs) -> Result<()> {
    if args.min_value == 0 || args.min_value > args.max_value {
        bail!("--min-value must be at least 1 and at most --max-value");
    }
    if args.max_value > percore::protocol::MAX_VALUE_LEN {
        bail!(
            "--max-value may be at most {} (the protocol's limit)",
            percore::protocol::MAX_VALUE_LEN
        );
    }
    if args.connections == 0 || args.pipeline == 0 {
        bail!("--connections and --pipeline must be at least 1");
    }
    block_on(async move {
        let mut clients = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            clients.push(connect(args.addr).await?);
        }
        let state = Rc::new(RefCell::new(FillState {
            next: 1,
            ..FillState::default()
        }));
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|client| {
                let state = state.clone();
                let (min, max, target, depth) =
                    (args.min_value, args.max_value, args.bytes, args.pipeline);
                spawn_joinable(async move {
                    fill_connection(client, state, min, max, target, depth).await
                })
            })
            .collect();
        for task in tasks {
            task.join().await.context("a fill connection failed")?;
        }
        let elapsed = started.elapsed();
        let state = Rc::try_unwrap(state)
            .ok()
            .expect("every task has finished")
            .into_inner();
        let keys = state.next - 1;

        let check = args.check.min(keys);
        let mut client = connect(args.addr).await?;
        let newest = read_back(
            &mut client,
            keys - check + 1..=keys,
            &args,
            args.pipeline.max(1),
        )
        .await?;
        let oldest = read_back(&mut client, 1..=check, &args, args.pipeline.max(1)).await?;

        for (status, message) in &state.first_error {
            println!("fill: first {status} reply said: {message}");
        }
        let count = |s: &str| state.replies.get(s).copied().unwrap_or(0);
        let other: u64 = state
            .replies
            .iter()
            .filter(|(s, _)| !matches!(s.as_str(), "Ok" | "Overloaded" | "TooLarge"))
            .map(|(_, n)| n)
            .sum();
        let secs = elapsed.as_secs_f64();
        println!(
            "fill summary: keys={keys} value_bytes={} value_bytes_ok={} seconds={secs:.2} \
             mib_per_s={:.0} ok={} overloaded={} too_large={} other={other} \
             newest_checked={check} newest_exact={} newest_wrong={} newest_missing={} \
             newest_error={} oldest_exact={} oldest_missing={}",
            state.bytes_sent,
            state.bytes_ok,
            state.bytes_sent as f64 / (1 << 20) as f64 / secs.max(1e-9),
            count("Ok"),
            count("Overloaded"),
            count("TooLarge"),
            newest.exact,
            newest.wrong,
            newest.missing,
            newest.error,
            oldest.exact,
            oldest.missing,
        );
        Ok(())
    })
}

async fn fill_connection(
    mut client: Client,
    state: Rc<RefCell<FillState>>,
    min: usize,
    max: usize,
    target: u64,
    depth: usize,
) -> Result<()> {
    let mut value = Vec::with_capacity(max);
    // Value length of each request in flight, by id, to count the bytes answered Ok.
    let mut inflight: HashMap<u64, usize> = HashMap::with_capacity(depth);
    loop {
        while inflight.len() < depth {
            let index = {
                let mut s = state.borrow_mut();
                if s.bytes_sent >= target {
                    break;
                }
                let index = s.next;
                s.next += 1;
                index
            };
            let key = key_of(index);
            value_of(key.as_bytes(), min, max, &mut value);
            state.borrow_mut().bytes_sent += value.len() as u64;
            let id = client.send(&Op::Set {
                key: key.as_bytes(),
                value: &value,
                ttl_ms: 0,
            });
            inflight.insert(id, value.len());
        }
        if inflight.is_empty() {
            return Ok(());
        }
        client.flush().await?;
        let response = client.recv().await?;
        let Some(len) = inflight.remove(&response.id()) else {
            bail!("a reply to request {} that was not sent", response.id());
        };
        let mut s = state.borrow_mut();
        let name = status_name(response.status());
        if response.status() == Status::Ok {
            s.bytes_ok += len as u64;
        } else if !s.first_error.contains_key(&name) {
            let message = match response.ok() {
                Err(ClientError::Status { message, .. }) => message,
                Err(e) => e.to_string(),
                Ok(_) => String::new(),
            };
            s.first_error.insert(name.clone(), message);
        }
        *s.replies.entry(name).or_default() += 1;
    }
}

#[derive(Default)]
struct ReadBack {
    exact: u64,
    wrong: u64,
    missing: u64,
    error: u64,
}

/// Gets every key of `indices`, `depth` at a time, and checks each value.
async fn read_back(
    client: &mut Client,
    indices: std::ops::RangeInclusive<u64>,
    args: &FillArgs,
    depth: usize,
) -> Result<ReadBack> {
    let mut result = ReadBack::default();
    let mut pending = indices;
    let mut inflight: HashMap<u64, u64> = HashMap::with_capacity(depth);
    let mut expected = Vec::with_capacity(args.max_value);
    loop {
        while inflight.len() < depth {
            let Some(index) = pending.next() else { break };
            let id = client.send(&Op::Get {
                key: key_of(index).as_bytes(),
            });
            inflight.insert(id, index);
        }
        if inflight.is_empty() {
            return Ok(result);
        }
        client.flush().await?;
        let response = client.recv().await?;
        let Some(index) = inflight.remove(&response.id()) else {
            bail!("a reply to request {} that was not sent", response.id());
        };
        match response.status() {
            Status::Ok => match response.view()?.body {
                ReplyView::Value { value, .. } => {
                    value_of(
                        key_of(index).as_bytes(),
                        args.min_value,
                        args.max_value,
                        &mut expected,
                    );
                    if value == expected.as_slice() {
                        result.exact += 1;
                    } else {
                        result.wrong += 1;
                    }
                }
                _ => result.error += 1,
            },
            Status::NotFound => result.missing += 1,
            _ => result.error += 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// idle

/// Connections opened before their Pings are answered: bounds the listen backlog it needs.
const IDLE_BATCH: usize = 256;

fn idle(addr: SocketAddr, count: usize, hold: Option<Duration>) -> Result<()> {
    let mut ping = bytes::BytesMut::new();
    RequestEncoder::new().encode(1, &Op::Ping { payload: b"" }, &mut ping);
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = Vec::with_capacity(count);
    while streams.len() < count {
        let batch_start = streams.len();
        let batch_end = (batch_start + IDLE_BATCH).min(count);
        for n in batch_start..batch_end {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .map_err(|e| connect_error(addr, n, e))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            (&stream)
                .write_all(&ping)
                .with_context(|| format!("sending Ping on connection {}", n + 1))?;
            streams.push(stream);
        }
        for (n, stream) in streams.iter().enumerate().skip(batch_start) {
            read_ping_reply(stream).with_context(|| {
                format!(
                    "connection {} of {count}: no Ping reply (refused over --max-connections?)",
                    n + 1
                )
            })?;
        }
    }
    println!(
        "idle: all {count} connections established and answered Ping in {:.2} s; holding them {}",
        started.elapsed().as_secs_f64(),
        match hold {
            Some(d) => format!("until stdin closes or {d:?} pass"),
            None => "until stdin closes".to_owned(),
        }
    );
    io::stdout().flush()?;

    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        let _ = tx.send(());
    });
    let held = Instant::now();
    match hold {
        Some(d) => {
            let _ = rx.recv_timeout(d);
        }
        None => {
            let _ = rx.recv();
        }
    }

    // Which ones the server closed while they were idle.
    let mut open = 0;
    let mut closed = 0;
    let mut byte = [0u8; 1];
    for stream in &streams {
        stream.set_nonblocking(true)?;
        match (&*stream).read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => open += 1,
            _ => closed += 1,
        }
    }
    println!(
        "idle summary: connections={count} held_seconds={:.2} still_open={open} closed_by_server={closed}",
        held.elapsed().as_secs_f64()
    );
    Ok(())
}

fn connect_error(addr: SocketAddr, n: usize, e: io::Error) -> anyhow::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            " (too many open files: raise the limit with `ulimit -n 65536`)"
        }
        Some(libc::EADDRNOTAVAIL) => " (out of local ports: widen net.ipv4.ip_local_port_range)",
        _ if n == 0 => " (is percore running there?)",
        _ => "",
    };
    anyhow::anyhow!(
        "cannot connect to {addr} (connection {} of the run): {e}{hint}",
        n + 1
    )
}

fn read_ping_reply(mut stream: &TcpStream) -> Result<()> {
    let mut buf = Vec::with_capacity(64);
    loop {
        match frame::peek(&buf, MAX_RESPONSE_FRAME) {
            Ok(Peek::Complete { len }) => {
                let view = ResponseView::decode(&buf[..len])?;
                if view.status != Status::Ok {
                    bail!(
                        "Ping answered {}: {}",
                        status_name(view.status),
                        view.error.unwrap_or_default()
                    );
                }
                return Ok(());
            }
            Ok(Peek::Partial { total }) => {
                let have = buf.len();
                buf.resize(total, 0);
                let n = stream.read(&mut buf[have..])?;
                if n == 0 {
                    bail!("the server closed the connection");
                }
                buf.truncate(have + n);
            }
            Err(e) => bail!("bad response framing: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// stats

fn stats(addr: SocketAddr) -> Result<()> {
    block_on(async move {
        let mut client = connect(addr).await?;
        let mut shards = client.stats().await.context("Stats request")?;
        shards.sort_by_key(|s| s.shard);
        let (mut items, mut bytes, mut evictions, mut connections) = (0, 0, 0, 0);
        for s in &shards {
            println!(
                "stats: shard {} items {} bytes_used {} evictions {} expirations {} \
                 connections {} accepted {} refused {} sets {} gets {} hits {} misses {}",
                s.shard,
                s.items,
                s.bytes_used,
                s.evictions,
                s.expirations,
                s.connections,
                s.connections_accepted,
                s.connections_refused,
                s.requests_set,
                s.requests_get,
                s.hits,
                s.misses,
            );
            items += s.items;
            bytes += s.bytes_used;
            evictions += s.evictions;
            connections += s.connections;
        }
        println!(
            "stats summary: shards={} items={items} bytes_used={bytes} evictions={evictions} \
             connections={connections}",
            shards.len()
        );
        Ok(())
    })
}
