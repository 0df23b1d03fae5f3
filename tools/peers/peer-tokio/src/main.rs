//! peer-tokio: percore's protocol and operations served the way a competent Rust engineer would
//! write it on tokio, so that the benchmark compares thread-per-core against work stealing and
//! not good code against bad code.
//!
//! Everything but the runtime is percore's own: frames are split with
//! `percore::protocol::frame::peek`, verified and read in place with `Request::decode`, executed
//! with `percore::ops` against `percore::store::Store`, and answered with `ResponseEncoder`. What
//! differs is how the work is scheduled: a multi-thread runtime with `--cores` workers, a task
//! per connection that any worker may run (work stealing), and one store split into
//! lock-protected shards that every worker reaches. Each connection coalesces the replies to one
//! read into one write, as percore does. Compute small enough to finish in microseconds runs
//! inline; larger jobs go to tokio's blocking pool, bounded so that a flood answers `Overloaded`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::{Buf, BytesMut};
use clap::Parser;
use parking_lot::Mutex;
use percore::config::Size;
use percore::error::RequestError;
use percore::ops;
use percore::ops::compute::digest_blocking;
use percore::protocol::frame::{self, Peek};
use percore::protocol::shard::key_hash;
use percore::protocol::{Algo, Op, Reply, Request, ResponseEncoder, ShardStats};
use percore::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// peer-tokio: percore's protocol on a tokio multi-thread runtime (a benchmark peer).
#[derive(Debug, Parser)]
#[command(name = "peer-tokio", version, max_term_width = 100)]
struct Args {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,

    /// Worker threads of the runtime (the CPUs it may use are set with taskset)
    #[arg(long, value_name = "N", default_value_t = 1)]
    cores: usize,

    /// Memory for stored items, split evenly across the store's shards
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    memory: Size,

    /// Lock-protected shards of the store [default: 16 per worker]
    #[arg(long, value_name = "N")]
    shards: Option<usize>,

    /// Largest frame accepted
    #[arg(long, value_name = "SIZE", default_value = "2MiB")]
    max_frame: Size,

    /// Compute jobs queued for the blocking pool at once; past it Compute answers Overloaded
    #[arg(long, value_name = "N", default_value_t = 256)]
    compute_queue: usize,
}

/// Bytes asked of each read at least.
const READ_CHUNK: usize = 16 << 10;
/// Stop answering further frames of a batch once this much output waits to be written, so
/// one connection's output stays bounded (percore's cap).
const OUTPUT_SOFT_CAP: usize = 256 << 10;
/// Compute that hashes at most this many bytes in total runs inline on the worker: a few
/// microseconds, less than the round trip to the blocking pool would cost.
const INLINE_COMPUTE_BYTES: usize = 16 << 10;

/// What every connection task shares.
struct State {
    shards: Box<[Mutex<Store>]>,
    /// Slots for compute jobs in the blocking pool.
    compute_slots: Arc<Semaphore>,
    epoch: Instant,
    max_frame: usize,
    connections_accepted: AtomicU64,
}

impl State {
    /// The shard that holds a key with this hash. The store's own hash table indexes by the low
    /// bits and tags by the top 7, so the shard is taken from the middle: picking it from the
    /// low bits would leave every shard's table using a fraction of its buckets.
    fn shard(&self, hash: u64) -> &Mutex<Store> {
        &self.shards[((hash >> 32) as usize) % self.shards.len()]
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A compute job's result, sent back to its connection's task.
struct ComputeDone {
    id: u64,
    digest: percore::ops::compute::Digest,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.cores >= 1, "--cores must be at least 1");
    let shard_count = args.shards.unwrap_or(16 * args.cores).max(1);
    let budget = (args.memory.0 as usize / shard_count).max(1);
    let state = Arc::new(State {
        shards: (0..shard_count)
            .map(|_| Mutex::new(Store::new(budget)))
            .collect(),
        compute_slots: Arc::new(Semaphore::new(args.compute_queue.max(1))),
        epoch: Instant::now(),
        max_frame: args.max_frame.0 as usize,
        connections_accepted: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.cores)
        .thread_name("peer-tokio")
        .enable_io()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        println!(
            "peer-tokio listening on {} with {} workers, {shard_count} store shards",
            listener.local_addr()?,
            args.cores
        );
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: keep serving the connections we have.
                Err(e) => {
                    eprintln!("peer-tokio: accept failed: {e}");
                    continue;
                }
            };
            state.connections_accepted.fetch_add(1, Ordering::Relaxed);
            let state = state.clone();
            tokio::spawn(async move {
                // A failed connection only ends itself.
                let _ = serve(stream, &state).await;
            });
        }
    })
}

/// Serves one connection: read, answer every whole frame, write the batch's replies at once.
async fn serve(stream: TcpStream, state: &Arc<State>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ComputeDone>();
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::with_capacity(READ_CHUNK);
    let mut encoder = ResponseEncoder::new();
    // Compute jobs in the blocking pool whose replies have not come back.
    let mut deferred = 0usize;
    let mut peer_closed = false;
    loop {
        while output.len() < OUTPUT_SOFT_CAP {
            let len = match frame::peek(&input, state.max_frame) {
                Ok(Peek::Complete { len }) => len,
                Ok(Peek::Partial { .. }) => break,
                Err(error) => {
                    // The framing can no longer be trusted: answer, then close.
                    encoder.error(0, &error, &mut output);
                    writer.write_all(&output).await?;
                    return writer.shutdown().await;
                }
            };
            if handle(state, &input[..len], &mut encoder, &mut output, &done_tx) {
                deferred += 1;
            }
            input.advance(len);
        }
        if !output.is_empty() {
            writer.write_all(&output).await?;
            output.clear();
        }
        let has_frame = matches!(
            frame::peek(&input, state.max_frame),
            Ok(Peek::Complete { .. })
        );
        if has_frame {
            continue;
        }
        if peer_closed {
            if deferred == 0 {
                return Ok(());
            }
            if let Some(done) = done_rx.recv().await {
                deferred -= 1;
                encode_digest(&mut encoder, done, &mut output);
            }
            continue;
        }
        let want = match frame::peek(&input, state.max_frame) {
            Ok(Peek::Partial { total }) => (total - input.len()).max(READ_CHUNK),
            _ => READ_CHUNK,
        };
        input.reserve(want);
        tokio::select! {
            read = reader.read_buf(&mut input) => {
                if read? == 0 {
                    peer_closed = true;
                }
            }
            Some(done) = done_rx.recv(), if deferred > 0 => {
                deferred -= 1;
                encode_digest(&mut encoder, done, &mut output);
                while let Ok(done) = done_rx.try_recv() {
                    deferred -= 1;
                    encode_digest(&mut encoder, done, &mut output);
                }
            }
        }
    }
}

fn encode_digest(encoder: &mut ResponseEncoder, done: ComputeDone, output: &mut BytesMut) {
    let reply = Reply::Digest {
        digest: done.digest.as_bytes(),
    };
    encoder.ok(done.id, &reply, output);
}

/// Answers one request into `output`, or hands it to the blocking pool and returns true.
fn handle(
    state: &Arc<State>,
    frame: &[u8],
    encoder: &mut ResponseEncoder,
    output: &mut BytesMut,
    done_tx: &mpsc::UnboundedSender<ComputeDone>,
) -> bool {
    let request = match Request::decode(frame) {
        Ok(request) => request,
        Err(rejected) => {
            encoder.error(rejected.id, &rejected.error, output);
            return false;
        }
    };
    let id = request.id;
    match request.op {
        Op::Hello { .. } => encoder.ok(id, &ops::hello(0, 1, &[]), output),
        Op::Ping { payload } => encoder.ok(id, &ops::ping(payload), output),
        Op::Get { key } | Op::Set { key, .. } | Op::Delete { key } => {
            let hash = key_hash(key);
            let now_ms = state.now_ms();
            let mut store = state.shard(hash).lock();
            // The reply borrows the stored value: encode it before the lock is released.
            let result = ops::kv::execute(&mut store, hash, &request.op, now_ms);
            encoder.encode(id, result, output);
        }
        Op::Compute {
            algo,
            input,
            rounds,
        } => {
            let digest_len = if algo == Algo::Sha256 { 32 } else { 4 };
            let hashed = input.len() + digest_len * (rounds as usize - 1);
            if hashed <= INLINE_COMPUTE_BYTES {
                let digest = digest_blocking(algo, input, rounds);
                encoder.ok(
                    id,
                    &Reply::Digest {
                        digest: digest.as_bytes(),
                    },
                    output,
                );
            } else {
                let Ok(slot) = state.compute_slots.clone().try_acquire_owned() else {
                    encoder.error(id, &RequestError::ComputeQueueFull, output);
                    return false;
                };
                let input = input.to_vec();
                let done_tx = done_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let digest = digest_blocking(algo, &input, rounds);
                    drop(slot);
                    // The connection may be gone; then nobody wants the reply.
                    let _ = done_tx.send(ComputeDone { id, digest });
                });
                return true;
            }
        }
        Op::Stats => {
            let stats = ShardStats {
                connections_accepted: state.connections_accepted.load(Ordering::Relaxed),
                ..ShardStats::default()
            };
            let per_shard = [stats];
            encoder.ok(
                id,
                &Reply::Stats {
                    per_shard: &per_shard,
                },
                output,
            );
        }
    }
    false
}
