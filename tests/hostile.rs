//! Hostile clients against the real binary on 127.0.0.1: slowloris tricklers, a client that
//! never reads its replies, a connection flood past `--max-connections`, malformed and
//! adversarial FlatBuffers, and clients that vanish mid-frame or mid-reply. Each test checks
//! that the hostile client gets the documented treatment and that a well-behaved client beside
//! it does not notice, through the server's own `Stats` (connections, refused, buffers lent)
//! and `/proc` (RSS, CPU time) where the protocol has no word for it.
//!
//! The tests speak the protocol over plain blocking `std` sockets rather than the async client:
//! they need to do what a client must not (never read, reset mid-reply, send half a frame), and
//! hundreds of sockets driven from one thread by `poll(2)` are easiest that way. They run one at
//! a time (a process-wide lock) so that one test's attack is not another test's noise.

mod common;
use common::*;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flatbuffers::FlatBufferBuilder;
use percore::protocol::shard::owner_of;
use percore::protocol::{fb, ResponseView, ShardStats};
use percore::server::mailbox::OWED_HARD_CAP;
use percore::server::output::OUTPUT_SOFT_CAP;
use percore::server::peer::REPLY_BACKLOG;

static SERIAL: Mutex<()> = Mutex::new(());

/// One hostile test at a time: a latency comparison must not see another test's attack.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sum(stats: &[ShardStats], field: impl Fn(&ShardStats) -> u64) -> u64 {
    stats.iter().map(field).sum()
}

/// Polls `check` until it returns Ok, failing with its last complaint at the deadline.
fn poll_until(timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(why) if Instant::now() > deadline => panic!("not within {timeout:?}: {why}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((f[11] + f[12]) * 1000 / hz)
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    assert!(samples.len() >= 100, "too few samples for a p99");
    samples.sort();
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// ---- slowloris ------------------------------------------------------------------------------

const TRICKLERS: usize = 400;
const TRICKLE_EVERY: Duration = Duration::from_millis(200);
const FRAME_TIMEOUT: Duration = Duration::from_secs(2);
const ROUNDS: usize = 7;
const WINDOW: Duration = Duration::from_millis(800);
/// The trickling thread wakes this often and writes to every socket then due: 100 wake-ups a
/// second rather than 2000, so that the attacker's own CPU use on a 2-core machine is not
/// what the probe measures.
const TRICKLE_TICK: Duration = Duration::from_millis(10);

/// Pings one at a time for `window` and returns each round trip.
fn sample_pings(probe: &mut Wire, window: Duration) -> Vec<Duration> {
    let ping = frame(42, &Op::Ping { payload: &[7; 32] });
    let end = Instant::now() + window;
    let mut samples = Vec::with_capacity(16 << 10);
    while Instant::now() < end {
        let t = Instant::now();
        probe.send(&ping);
        let reply = probe.recv().expect("ping reply");
        samples.push(t.elapsed());
        assert_eq!(ResponseView::decode(&reply).unwrap().id, 42);
    }
    samples
}

/// Sends `frame` one byte every `TRICKLE_EVERY` on every socket, the sockets' schedules spread
/// evenly over the interval (400 independent clients do not write in lockstep), until the
/// server has closed them all or `give_up` passes. Returns, per socket, how long after its
/// first byte the server closed it (EOF or reset), or why it is a failure.
fn trickle(
    socks: Vec<TcpStream>,
    frame: &[u8],
    give_up: Duration,
) -> Vec<Result<Duration, String>> {
    let n = socks.len();
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    let start = Instant::now();
    let mut due: Vec<Instant> = (0..n)
        .map(|i| start + TRICKLE_EVERY.mul_f64(i as f64 / n as f64))
        .collect();
    let mut first: Vec<Option<Instant>> = vec![None; n];
    let mut sent = vec![0usize; n];
    let mut end: Vec<Option<Result<Duration, String>>> = vec![None; n];
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while end.iter().any(Option::is_none) && start.elapsed() < give_up {
        let now = Instant::now();
        for i in 0..n {
            if end[i].is_some() || due[i] > now {
                continue;
            }
            due[i] += TRICKLE_EVERY;
            if sent[i] == frame.len() {
                end[i] = Some(Err(
                    "sent the whole frame: the server never timed it out".into()
                ));
                continue;
            }
            match (&socks[i]).write(&frame[sent[i]..sent[i] + 1]) {
                Ok(_) => {
                    sent[i] += 1;
                    first[i].get_or_insert(now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Writing to a connection the server closed: the read below says when.
                Err(_) => {}
            }
        }
        let next = due
            .iter()
            .zip(&end)
            .filter(|(_, e)| e.is_none())
            .map(|(d, _)| *d)
            .min();
        let wait = next.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        // At least a tick: a zero timeout would make this thread spin and steal a core from
        // the server and the probe.
        let wait_ms = wait.max(TRICKLE_TICK).as_millis() as i32;
        // SAFETY: fds is a valid array of pollfd; closed entries have fd -1 and are ignored.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        let now = Instant::now();
        for i in 0..n {
            if fds[i].fd < 0 || fds[i].revents == 0 {
                continue;
            }
            let mut buf = [0u8; 64];
            let outcome = match (&socks[i]).read(&mut buf) {
                Ok(0) => Some(Ok(())),
                Ok(_) => Some(Err("the server replied to a partial frame".to_string())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Some(Ok(())),
                Err(e) => Some(Err(format!("read failed: {e}"))),
            };
            if let Some(outcome) = outcome {
                fds[i].fd = -1;
                end[i] = Some(outcome.and_then(|()| {
                    first[i]
                        .map(|f| now.saturating_duration_since(f))
                        .ok_or_else(|| "closed before its first byte".to_string())
                }));
            }
        }
    }
    end.into_iter()
        .map(|e| e.unwrap_or_else(|| Err(format!("still open after {give_up:?}"))))
        .collect()
}

/// 400 connections trickle a valid frame one byte every 200 ms. `--frame-timeout 2s` closes
/// every one of them between 2 s and one tick (plus slack) after its first byte, the connection
/// count drops back, and a well-behaved client's ping p99 stays within 2x of its baseline.
///
/// The latency comparison on a shared, noisy 2-core machine (other builds and benchmarks run
/// beside it): baseline and attack phases alternate, ROUNDS of each, on the same probe
/// connection, each a window of back-to-back pings (10,000 to 40,000 samples, so a p99 rests on
/// a hundred or more). Each round's attack p99 is divided by the p99 of the baseline window
/// just before it, and the median of those ratios must be at most 2: a burst of outside noise
/// that hits one window moves one ratio of seven, not the median, while a server that the
/// tricklers really slow raises every attack window. The attack window starts once every
/// trickler has sent its first byte and ends before the first can time out, so it measures the
/// trickling, not the closing; the tricklers write on a 10 ms tick so that the test's own CPU
/// use stays small beside the server's.
///
/// The server runs with `--idle-poll 0`, the setting for cores it does not have to itself: here
/// its two cores are the machine's only two, shared with the probe and the trickler threads.
/// With 20 us of polling the unoptimized build measured median ratios of 2.5 to 3.6, the release
/// build 1.6 and 1.7 (docs/performance.md, "The idle-poll window"). The tests' server is built
/// with opt-level 1 (Cargo.toml says why).
#[test]
fn slowloris_tricklers_time_out_without_slowing_other_clients() {
    let _serial = serial();
    raise_nofile(TRICKLERS as u64);
    let server = Server::start(&[
        "--cores",
        &test_cores().to_string(),
        "--frame-timeout",
        "2s",
        "--idle-poll",
        "0",
    ]);
    let mut probe = Wire::connect(server.addr);
    sample_pings(&mut probe, Duration::from_millis(300));
    // About 250 bytes: at 5 bytes a second it would take 50 s to complete.
    let slow_frame = frame(
        7,
        &Op::Ping {
            payload: &[0x55; 200],
        },
    );

    let (mut baseline, mut attack) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let b = sample_pings(&mut probe, WINDOW);
        let b_n = b.len();
        baseline.push(p99(b));

        let socks: Vec<TcpStream> = (0..TRICKLERS)
            .map(|_| TcpStream::connect(server.addr).expect("trickler connects"))
            .collect();
        poll_until(Duration::from_secs(10), || {
            let open = sum(&probe.stats(), |s| s.connections);
            (open == TRICKLERS as u64 + 1)
                .then_some(())
                .ok_or(format!("{open} connections open"))
        });
        let frame_bytes = slow_frame.clone();
        let started = Instant::now();
        let tricklers = std::thread::spawn(move || {
            trickle(socks, &frame_bytes, FRAME_TIMEOUT + Duration::from_secs(4))
        });
        // Every trickler has sent a byte one interval after the start.
        std::thread::sleep(TRICKLE_EVERY.saturating_sub(started.elapsed()));
        let a = sample_pings(&mut probe, WINDOW);
        let a_n = a.len();
        attack.push(p99(a));
        let measured_until = started.elapsed();

        let ends = tricklers.join().unwrap();
        let mut closed_after = Vec::new();
        for (i, end) in ends.into_iter().enumerate() {
            let after = end.unwrap_or_else(|why| panic!("round {round}, trickler {i}: {why}"));
            closed_after.push(after);
        }
        closed_after.sort();
        let (first, last) = (closed_after[0], closed_after[TRICKLERS - 1]);
        eprintln!(
            "slowloris round {round}: baseline p99 {:?} ({b_n} pings), attack p99 {:?} \
             ({a_n} pings, window ended {measured_until:?} after the start), tricklers closed \
             {first:?}..{last:?} after their first byte",
            baseline[round], attack[round]
        );
        // The server saw each first byte after the client sent it, so no close can come sooner.
        assert!(first >= FRAME_TIMEOUT, "a trickler closed after {first:?}");
        // One 100 ms tick of the timeout sweep, plus slack for a loaded machine.
        assert!(
            last <= FRAME_TIMEOUT + Duration::from_millis(1500),
            "a trickler closed only after {last:?}"
        );
        poll_until(Duration::from_secs(5), || {
            let open = sum(&probe.stats(), |s| s.connections);
            (open == 1)
                .then_some(())
                .ok_or(format!("{open} connections open"))
        });
    }
    let stats = probe.stats();
    assert_eq!(
        sum(&stats, |s| s.connections_accepted),
        1 + (ROUNDS * TRICKLERS) as u64
    );
    // Each attack window against the baseline window just before it: noise on a shared
    // machine comes in bursts of seconds, which adjacent windows share more often than not.
    let ratios: Vec<f64> = attack
        .iter()
        .zip(&baseline)
        .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
        .collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let ratio = sorted[ROUNDS / 2];
    eprintln!(
        "slowloris: median of attack/baseline p99 ratios {ratio:.2} (ratios {ratios:.2?}); \
         median p99 baseline {:?}, attack {:?}",
        median(baseline.clone()),
        median(attack.clone())
    );
    assert!(
        ratio <= 2.0,
        "ping p99 under slowloris is {ratio:.2}x its baseline (median of {ROUNDS} rounds; \
         baseline p99s {baseline:?}, attack p99s {attack:?})"
    );
}

// ---- a client that never reads --------------------------------------------------------------

const BIG: usize = 512 << 10;
/// `--max-inflight` of the slow-reader test. Forwarded Gets are in flight before their replies
/// exist, so a connection that never reads can be owed this many replies on top of its output
/// cap: the memory bound is cap + MAX_INFLIGHT replies. With the default (1024) the owed cap
/// and the reply backlog bound it instead (the next test); 8 keeps it a few MiB.
const MAX_INFLIGHT: usize = 8;
const BIG_KEYS: usize = 8;

fn big_key(i: usize) -> Vec<u8> {
    format!("big:{i}").into_bytes()
}

/// A kernel TCP buffer limit from /proc/sys/net/ipv4 (the third, maximal, value).
fn tcp_mem_max(name: &str) -> usize {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// A client that pipelines Gets and never reads their replies.
struct Unread {
    socket: TcpStream,
    /// Bytes of requests written before the server stopped taking them (or 2 s passed).
    written: usize,
    /// Bytes of all the requests meant to be written.
    request_bytes: usize,
    /// The write error that ended the writing early, if any.
    error: Option<io::Error>,
}

/// Connects to `addr` and writes `count` Gets of `keys` (in turn) without reading, for at most
/// 2 s: a server that stops reading at its caps stops taking them well before.
fn send_gets_never_reading(addr: SocketAddr, keys: &[Vec<u8>], count: usize) -> Unread {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut requests = Vec::new();
    for n in 0..count {
        let key = &keys[n % keys.len()];
        requests.extend_from_slice(&frame(n as u64 + 1, &Op::Get { key }));
    }
    let (mut written, mut error) = (0, None);
    let write_until = Instant::now() + Duration::from_secs(2);
    while written < requests.len() && Instant::now() < write_until {
        match socket.write(&requests[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    Unread {
        socket,
        written,
        request_bytes: requests.len(),
        error,
    }
}

/// A client pipelines thousands of Gets of 512 KiB values and never reads. The server answers
/// only as much as the kernel's socket buffers and its 256 KiB output cap take, then stops
/// reading that socket (the count of Gets it took stops moving, far below what was sent), does
/// not spin on it (little CPU while stuck), holds only about the cap in memory (RSS within a
/// bound derived from the cap and the value size), and a client on the same core and one on
/// the other keep getting prompt answers, large values included.
#[test]
fn a_client_that_never_reads_is_capped_and_does_not_hurt_others() {
    let _serial = serial();
    let cores = test_cores();
    let base = free_port_run(cores as u16);
    let server = Server::start(&[
        "--cores",
        &cores.to_string(),
        "--shard-ports",
        &base.to_string(),
        "--max-inflight",
        &MAX_INFLIGHT.to_string(),
        "--idle-timeout",
        "4s",
    ]);
    let pid = server.pid();
    let port = |i: usize| SocketAddr::from(([127, 0, 0, 1], server.shard_ports[i]));
    let mut setter = Wire::connect(server.addr);
    let value = vec![0x5A; BIG];
    for i in 0..BIG_KEYS {
        setter.set(&big_key(i), &value);
    }
    // A client on every core, so one shares the slow reader's core.
    let mut others: Vec<Wire> = (0..cores).map(|i| Wire::connect(port(i))).collect();
    let serve_others = |others: &mut Vec<Wire>| -> Duration {
        let mut slowest = Duration::ZERO;
        for (n, w) in others.iter_mut().enumerate() {
            for i in 0..BIG_KEYS {
                let t = Instant::now();
                assert_eq!(
                    w.get_len(100 + i as u64, &big_key(i)),
                    Some(BIG),
                    "client {n}"
                );
                w.ping(200 + i as u64);
                slowest = slowest.max(t.elapsed());
            }
        }
        slowest
    };
    // Warm up: the allocator has now seen replies of this size on every core.
    for _ in 0..3 {
        serve_others(&mut others);
    }
    let slowest_before = serve_others(&mut others);
    let rss_before = proc_status_kib(pid, "VmRSS");
    let stats_before = others[0].stats();
    let gets_before = sum(&stats_before, |s| s.requests_get);
    let lent_before = sum(&stats_before, |s| s.buffers_lent);

    // The slow reader, on core 0's own port. With two cores its Gets ask only for keys the
    // other core owns: forwarded, their replies come back later, so no reply fills the output
    // while the server is still taking frames (the worst case for the output cap).
    let keys: Vec<Vec<u8>> = (0..BIG_KEYS)
        .map(big_key)
        .filter(|k| cores == 1 || owner_of(k, cores) != 0)
        .collect();
    assert!(!keys.is_empty(), "some big key belongs to core 1");
    const SENT: usize = 4096;
    let unread = send_gets_never_reading(port(0), &keys, SENT);
    if let Some(e) = unread.error {
        panic!("slow reader's write failed: {e}");
    }
    let (slow, written, request_bytes) = (unread.socket, unread.written, unread.request_bytes);
    // The server stops taking this client's Gets: the count holds still over several polls.
    let mut last = (0, Instant::now());
    poll_until(Duration::from_secs(10), || {
        // Keep the other clients from idling out meanwhile.
        others.iter_mut().for_each(|w| w.ping(9));
        let gets = sum(&others[0].stats(), |s| s.requests_get) - gets_before;
        if gets != last.0 {
            last = (gets, Instant::now());
        }
        (gets > 0 && last.1.elapsed() >= Duration::from_millis(600))
            .then_some(())
            .ok_or(format!(
                "the server has taken {gets} Gets and is still taking more"
            ))
    });
    let taken = last.0 as usize;
    let rss_during = proc_status_kib(pid, "VmRSS");
    // CPU over a quiet half second in which only the stuck client is there to serve: a
    // connection waiting for its socket to drain must wait, not poll.
    let (cpu_before, quiet_since) = (cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_millis(500));
    let (cpu_used, cpu_wall) = (cpu_time(pid) - cpu_before, quiet_since.elapsed());

    let slowest_during = serve_others(&mut others);
    // Another client's Gets above are counted too; the slow reader's did not move.
    let taken_after =
        sum(&others[0].stats(), |s| s.requests_get) - gets_before - (cores * BIG_KEYS) as u64;
    let rss_after = proc_status_kib(pid, "VmRSS").max(rss_during);

    // What may leave the server without the client reading: its socket's send buffer (up to
    // tcp_wmem's maximum), the client's receive buffer, and the output cap, each a number of
    // whole replies, plus one reply over the cap and one being written.
    let rcvbuf = socket2::SockRef::from(&slow).recv_buffer_size().unwrap();
    let in_flight_bytes = tcp_mem_max("tcp_wmem") + rcvbuf + OUTPUT_SOFT_CAP;
    // Replies to in-flight forwarded Gets come back whether or not the output has room.
    let max_taken = in_flight_bytes / BIG + 2 + MAX_INFLIGHT;
    // Memory the server may hold for it: the output up to the cap plus one reply past it, the
    // replies owed to its in-flight requests, the reply being encoded, an input buffer, and
    // 2 MiB for the allocator's rounding.
    let owed = OUTPUT_SOFT_CAP + (MAX_INFLIGHT + 2) * BIG + (256 << 10);
    let rss_bound = rss_before + (owed >> 10) as u64 + 2048;
    eprintln!(
        "slow reader: wrote {written} of {request_bytes} bytes ({SENT} Gets); the server took {taken} Gets \
         (bound {max_taken}: wmem max {} + rcvbuf {rcvbuf} + cap {OUTPUT_SOFT_CAP}); RSS \
         {rss_before} KiB before, {rss_during} KiB while stuck, {rss_after} KiB after serving \
         others (bound {rss_bound}); server CPU \
         {cpu_used:?} in {cpu_wall:?} while stuck; other clients' slowest get+ping {slowest_before:?} \
         before, {slowest_during:?} during",
        tcp_mem_max("tcp_wmem"),
    );
    assert!(
        taken <= max_taken,
        "the server took {taken} Gets from a client that reads nothing (at most {max_taken} fit)"
    );
    assert_eq!(
        taken_after, taken as u64,
        "the server went on reading the slow reader"
    );
    assert!(
        rss_after <= rss_bound,
        "RSS grew from {rss_before} KiB to {rss_after} KiB (bound {rss_bound} KiB)"
    );
    assert!(
        cpu_used < cpu_wall / 4,
        "the server used {cpu_used:?} of CPU in {cpu_wall:?} with one stuck client"
    );
    // Prompt: a stall behind the slow reader would be seconds (until a timeout), not this.
    assert!(
        slowest_during < Duration::from_millis(500).max(slowest_before * 4),
        "other clients' slowest request took {slowest_during:?} (before: {slowest_before:?})"
    );

    // The slow reader leaves. Its reset may never reach the server: the client's receive
    // window is zero, and the server's TCP learns that the peer is gone only at its next
    // zero-window probe, which backs off to minutes. `--idle-timeout` (4 s here) is what
    // closes a connection whose writes make no progress; then everything it held goes back:
    // the connection count falls to the other clients (the setter idled out too) and no
    // buffer stays lent.
    drop(slow);
    let closing = Instant::now();
    poll_until(Duration::from_secs(10), || {
        others.iter_mut().for_each(|w| w.ping(9));
        let stats = others[0].stats();
        let open = sum(&stats, |s| s.connections);
        let lent: Vec<u64> = stats.iter().map(|s| s.buffers_lent).collect();
        (open == cores as u64 && sum(&stats, |s| s.buffers_lent) == lent_before)
            .then_some(())
            .ok_or(format!(
                "{open} connections open, buffers lent {lent:?} (before: {lent_before})"
            ))
    });
    eprintln!(
        "slow reader: closed by the server {:?} after it left",
        closing.elapsed()
    );
}

/// The slow reader again, with the default `--max-inflight` (1024). The server takes hundreds
/// of its Gets before any reply exists, all for 512 KiB values the other core owns, so hundreds
/// of large replies come back at once. What it may hold for them is what the client is owed, up
/// to `OWED_HARD_CAP` (where it closes the connection as a slow reader), plus the replies the
/// owner has on their way back, up to `REPLY_BACKLOG`. The server's peak RSS over three such
/// clients, one after another, stays within that and a margin: it rose by 71.9-75.9 MiB. Without
/// the backlog bound, and with the owed replies copied into the output, it rose by 189-224 MiB
/// (5 of 5 release runs); without the backlog bound alone, by 91-123 MiB. Each connection is
/// closed, the other client is still served, and every buffer comes back.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "needs the optimized server: a debug owner is too slow to outrun the origin, so the \
              burst it guards against barely forms (the old code passed in debug); .ci/run runs \
              it with --release"
)]
fn a_burst_of_large_forwarded_gets_is_held_to_the_owed_cap_and_the_reply_backlog() {
    let _serial = serial();
    if test_cores() < 2 {
        eprintln!("skipped: one core forwards nothing");
        return;
    }
    let base = free_port_run(2);
    let server = Server::start(&["--cores", "2", "--shard-ports", &base.to_string()]);
    let pid = server.pid();
    let core0 = SocketAddr::from(([127, 0, 0, 1], server.shard_ports[0]));
    let keys: Vec<Vec<u8>> = (0..)
        .map(big_key)
        .filter(|k| owner_of(k, 2) == 1)
        .take(BIG_KEYS)
        .collect();
    let mut other = Wire::connect(core0);
    let value = vec![0x5A; BIG];
    for key in &keys {
        other.set(key, &value);
    }
    // Warm up: both cores' pools and allocators have now seen replies of this size.
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(other.get_len(i as u64, key), Some(BIG));
    }
    let lent_before = sum(&other.stats(), |s| s.buffers_lent);
    let peak_before = proc_status_kib(pid, "VmHWM");

    // How large a burst gets depends on how far the owner runs ahead of the origin, which
    // varies from run to run: three bursts, and the peak over all of them.
    for burst in 0..3 {
        // A write error is no failure: the server may close it as a slow reader meanwhile.
        let unread = send_gets_never_reading(core0, &keys, 4096);
        // Owed more than the cap, the connection is closed; the other client stays.
        poll_until(Duration::from_secs(10), || {
            let open = sum(&other.stats(), |s| s.connections);
            (open == 1)
                .then_some(())
                .ok_or(format!("burst {burst}: {open} connections open"))
        });
        eprintln!(
            "burst {burst} of forwarded Gets: wrote {} bytes; peak RSS now {} KiB",
            unread.written,
            proc_status_kib(pid, "VmHWM")
        );
    }
    let peak_after = proc_status_kib(pid, "VmHWM");
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(other.get_len(100 + i as u64, key), Some(BIG));
    }
    poll_until(Duration::from_secs(5), || {
        let lent = sum(&other.stats(), |s| s.buffers_lent);
        (lent == lent_before)
            .then_some(())
            .ok_or(format!("{lent} buffers lent (before: {lent_before})"))
    });
    // What the connection may be owed, the replies on their way back, and 16 MiB for the
    // replies being encoded and sent, the pooled buffers they travel in and the allocator.
    let bound = ((OWED_HARD_CAP + REPLY_BACKLOG) >> 10) as u64 + (16 << 10);
    let grew = peak_after.saturating_sub(peak_before);
    eprintln!(
        "bursts of forwarded Gets: peak RSS {peak_before} KiB before, {peak_after} KiB after: \
         +{grew} KiB (bound {bound} KiB)"
    );
    assert!(
        grew <= bound,
        "peak RSS grew by {grew} KiB with clients that read nothing (bound {bound} KiB)"
    );
}

// ---- connection flood -----------------------------------------------------------------------

/// 300 connections past `--max-connections 16`, opened as fast as the test can: every one is
/// closed at once (within a second of its connect) without a byte of reply, all 300 are
/// counted as refused, and the 16 admitted connections go on being served.
/// A client that sends, half-closes (`shutdown(SHUT_WR)`, as `nc -N` does) and then stops
/// reading leaves its connection with replies it cannot write. The core must wait for room
/// like for any slow reader, not spin: a half-closed socket is still writable, and the write
/// path once took the peer's end of stream for an error that would make every send fail, so it
/// retried at once, forever, and nothing else on the core ran.
#[test]
fn a_half_closed_client_that_stops_reading_does_not_stall_its_core() {
    let _serial = serial();
    // One core, polling (the default), so the bystander shares the stuck connection's core.
    let server = Server::start(&["--cores", "1"]);
    let mut bystander = Wire::connect(server.addr);
    bystander.set(b"big", &vec![0x5a; BIG]);

    let mut stuck = TcpStream::connect(server.addr).expect("connect");
    let gets: Vec<u8> = (0..64)
        .flat_map(|id| frame(id, &Op::Get { key: b"big" }))
        .collect();
    stuck.write_all(&gets).expect("send");
    stuck
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    // Take a little of the 32 MiB of replies, then stop reading for good.
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut taken = vec![0u8; 64 << 10];
    stuck.read_exact(&mut taken).expect("the first replies");

    // Once the socket buffers are full, the core has nothing to do but wait.
    std::thread::sleep(Duration::from_millis(500));
    let (cpu0, wall0) = (cpu_time(server.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let (cpu, wall) = (cpu_time(server.pid()) - cpu0, wall0.elapsed());
    assert!(
        cpu < wall / 2,
        "the server used {cpu:?} of CPU in {wall:?} while its only busy client was stuck"
    );
    let asked = Instant::now();
    bystander.ping(1);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "a ping on the same core took {:?}",
        asked.elapsed()
    );
    drop(stuck);
}

#[test]
fn a_connection_flood_past_the_limit_is_refused_at_once_and_counted() {
    let _serial = serial();
    const LIMIT: usize = 16;
    const FLOOD: usize = 300;
    raise_nofile((LIMIT + FLOOD) as u64);
    let server = Server::start(&[
        "--cores",
        &test_cores().to_string(),
        "--max-connections",
        &LIMIT.to_string(),
    ]);
    let mut held: Vec<Wire> = (0..LIMIT).map(|_| Wire::connect(server.addr)).collect();
    for (i, w) in held.iter_mut().enumerate() {
        w.ping(i as u64 + 1);
    }

    let flood_started = Instant::now();
    let ping = frame(
        9,
        &Op::Ping {
            payload: b"let me in",
        },
    );
    let flood: Vec<(TcpStream, Instant)> = (0..FLOOD)
        .map(|i| {
            let mut s = TcpStream::connect(server.addr).expect("the kernel accepts the handshake");
            let at = Instant::now();
            // Half of them also ask for something; the answer must still be nothing.
            if i % 2 == 0 {
                let _ = s.write_all(&ping);
            }
            s.set_nonblocking(true).unwrap();
            (s, at)
        })
        .collect();
    let mut fds: Vec<libc::pollfd> = flood
        .iter()
        .map(|(s, _)| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut closed_after: Vec<Option<Duration>> = vec![None; FLOOD];
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed_after.iter().any(Option::is_none) && Instant::now() < deadline {
        // SAFETY: a valid pollfd array; finished entries are -1 and ignored.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        let now = Instant::now();
        for (i, (s, at)) in flood.iter().enumerate() {
            if fds[i].fd < 0 || fds[i].revents == 0 {
                continue;
            }
            let mut buf = [0u8; 64];
            match (&*s).read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(n) => panic!("a refused connection got {n} bytes of reply"),
                Err(e) => panic!("unexpected error on a refused connection: {e}"),
            }
            fds[i].fd = -1;
            closed_after[i] = Some(now - *at);
        }
    }
    let open = closed_after.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} connections over the limit were not closed");
    let mut closed_after: Vec<Duration> = closed_after.into_iter().flatten().collect();
    closed_after.sort();
    let (median_close, slowest_close) = (closed_after[FLOOD / 2], closed_after[FLOOD - 1]);

    let mut stats = Vec::new();
    poll_until(Duration::from_secs(5), || {
        stats = held[0].stats();
        let refused = sum(&stats, |s| s.connections_refused);
        (refused == FLOOD as u64)
            .then_some(())
            .ok_or(format!("{refused} refused"))
    });
    eprintln!(
        "flood: {FLOOD} connections over a limit of {LIMIT}, opened in {:?}; closed after \
         median {median_close:?}, slowest {slowest_close:?}; refused per core {:?}",
        flood_started.elapsed(),
        stats
            .iter()
            .map(|s| s.connections_refused)
            .collect::<Vec<_>>()
    );
    assert!(
        slowest_close < Duration::from_secs(1),
        "a refused connection stayed open {slowest_close:?}"
    );
    assert_eq!(sum(&stats, |s| s.connections), LIMIT as u64);
    assert_eq!(sum(&stats, |s| s.connections_accepted), LIMIT as u64);
    for (i, w) in held.iter_mut().enumerate() {
        w.ping(100 + i as u64);
    }
}

// ---- malformed input ------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Replaces the u32 just before the first occurrence of `marker` (a vector's or string's
/// length field) with `len`.
fn patch_len_before(frame: &mut [u8], marker: &[u8], len: u32) {
    let at = frame
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker in frame");
    frame[at - 4..at].copy_from_slice(&len.to_le_bytes());
}

/// A Ping request whose Request table also carries an unknown field (id 3, from "a newer
/// schema") holding a chain of `depth` tables nested one in the next.
fn ping_with_deep_unknown_field(id: u64, depth: usize) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let innermost = fbb.start_table();
    let mut inner = fbb.end_table(innermost);
    for _ in 1..depth {
        let t = fbb.start_table();
        fbb.push_slot_always(4, inner);
        inner = fbb.end_table(t);
    }
    let payload = fbb.create_vector(b"deep");
    let ping = fb::Ping::create(
        &mut fbb,
        &fb::PingArgs {
            payload: Some(payload),
        },
    );
    let t = fbb.start_table();
    fbb.push_slot::<u64>(fb::Request::VT_ID, id, 0);
    fbb.push_slot_always(fb::Request::VT_OP, ping.as_union_value());
    fbb.push_slot_always(10, inner); // field 3: unknown to this schema
    fbb.push_slot::<u8>(fb::Request::VT_OP_TYPE, fb::Op::Ping.0, 0);
    let root = fbb.end_table(t);
    fbb.finish_size_prefixed(root, Some("PCRQ"));
    fbb.finished_data().to_vec()
}

/// Malformed input that tests/bad_input.rs does not already send, each case on a connection
/// that is then used again (where the documented answer keeps it open) and with a bystander
/// connection checked after every case:
///
/// - 200 frames of random bytes with the `PCRQ` identifier in place (the verifier, not the
///   identifier check, must reject them): id 0 `BadRequest` each, in order;
/// - an unframed stream of random bytes: its first 4 bytes are the prefix, so `TooLarge` (or
///   `BadRequest` for 0) with id 0, then the connection closes;
/// - frames cut short and then the client half-closes: the whole frames before are answered,
///   the partial one is dropped, the connection ends;
/// - prefixes of 2^31 and 2^32-1 (`TooLarge`, close), and a prefix of exactly `--max-frame`
///   with that much garbage behind it (accepted as a frame: `BadRequest`, the connection goes on);
/// - valid requests with the wrong identifier, none at all, or a body under 8 bytes;
/// - FlatBuffers that claim huge vectors or strings, or a root offset far past the buffer: the
///   verifier's `verification failed`;
/// - a request carrying 1000 nested tables in a field unknown to the schema: the verifier's
///   depth limit (16) cannot be reached through the schema's own fields (Request → op table →
///   vector is the deepest path), so the documented answer is that unknown fields are ignored:
///   the Ping is answered with its id and payload, with no stack or time blow-up.
#[test]
fn malformed_and_adversarial_frames_get_documented_answers() {
    let _serial = serial();
    let server = Server::start(&["--cores", &test_cores().to_string()]);
    let mut bystander = Wire::connect(server.addr);
    bystander.set(b"bystander", b"safe");
    let mut check_bystander = |case: &str| {
        assert_eq!(
            bystander.get_len(77, b"bystander"),
            Some(4),
            "bystander after {case}"
        );
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut victim = Wire::connect(server.addr);

    // Random bodies behind a valid prefix and identifier, pipelined.
    let mut batch = Vec::new();
    for _ in 0..200 {
        let n = 8 + (rng.next() % 600) as usize;
        let mut body = rng.bytes(n);
        body[4..8].copy_from_slice(b"PCRQ");
        batch.extend_from_slice(&(n as u32).to_le_bytes());
        batch.extend_from_slice(&body);
    }
    victim.send(&batch);
    for i in 0..200 {
        let (id, status, error) = victim.answer();
        assert_eq!(
            (id, status),
            (0, Status::BadRequest),
            "random frame {i}: {error}"
        );
        assert!(
            error.contains("verification failed"),
            "random frame {i}: {error}"
        );
    }
    victim.ping(1);
    check_bystander("random frames");

    // An unframed random stream.
    let mut c = Wire::connect(server.addr);
    let noise = rng.bytes(4096);
    let prefix = u32::from_le_bytes(noise[..4].try_into().unwrap()) as usize;
    let expected = match prefix {
        0 => Status::BadRequest,
        n if n > 2 << 20 => Status::TooLarge,
        _ => unreachable!("this seed's stream starts with a prefix over --max-frame"),
    };
    c.send(&noise);
    let (id, status, error) = c.answer();
    assert_eq!((id, status), (0, expected), "prefix {prefix}: {error}");
    c.expect_end(Instant::now() + Duration::from_secs(5));
    check_bystander("random stream");

    // Cut short, then the client half-closes: the ping before is answered, then EOF.
    for cut in [2usize, 4, 20] {
        let mut c = Wire::connect(server.addr);
        let mut bytes = frame(5, &Op::Ping { payload: b"whole" });
        let partial = frame(6, &Op::Ping { payload: &[1; 64] });
        bytes.extend_from_slice(&partial[..cut]);
        c.send(&bytes);
        c.s.shutdown(std::net::Shutdown::Write).unwrap();
        let (id, status, _) = c.answer();
        assert_eq!((id, status), (5, Status::Ok), "cut at {cut}");
        let rest = c.expect_end(Instant::now() + Duration::from_secs(5));
        assert!(
            rest.is_empty(),
            "cut at {cut}: {} bytes after the reply",
            rest.len()
        );
    }
    check_bystander("truncated frames");

    // Oversize prefixes: answered, then closed.
    for prefix in [1u32 << 31, u32::MAX] {
        let mut c = Wire::connect(server.addr);
        let mut bytes = prefix.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xFF; 64]);
        let (id, status, error) = c.call(&bytes);
        assert_eq!(
            (id, status),
            (0, Status::TooLarge),
            "prefix {prefix}: {error}"
        );
        assert!(error.contains("over the limit"), "{error}");
        c.expect_end(Instant::now() + Duration::from_secs(5));
    }
    check_bystander("oversize prefixes");

    // Exactly --max-frame: a legal frame whose bytes are garbage.
    let max = 2usize << 20;
    let mut bytes = (max as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&vec![0xA5; max]);
    let (id, status, error) = victim.call(&bytes);
    assert_eq!((id, status), (0, Status::BadRequest), "{error}");
    victim.ping(2);
    check_bystander("a frame of --max-frame bytes");

    // Wrong, missing or cut-off file identifiers on otherwise valid requests.
    let ping = |identifier: Option<&str>| {
        let mut fbb = FlatBufferBuilder::new();
        let payload = fbb.create_vector(b"id?");
        let p = fb::Ping::create(
            &mut fbb,
            &fb::PingArgs {
                payload: Some(payload),
            },
        );
        let root = fb::Request::create(
            &mut fbb,
            &fb::RequestArgs {
                id: 31,
                op_type: fb::Op::Ping,
                op: Some(p.as_union_value()),
            },
        );
        fbb.finish_size_prefixed(root, identifier);
        fbb.finished_data().to_vec()
    };
    let mut short = 5u32.to_le_bytes().to_vec();
    short.extend_from_slice(b"PCRQ!");
    for (name, bytes) in [
        ("identifier PCRS", ping(Some("PCRS"))),
        ("identifier pcrq", ping(Some("pcrq"))),
        ("no identifier", ping(None)),
        ("a 5-byte body", short),
    ] {
        let (id, status, error) = victim.call(&bytes);
        assert_eq!((id, status), (0, Status::BadRequest), "{name}: {error}");
        assert!(error.contains("identifier is not PCRQ"), "{name}: {error}");
    }
    victim.ping(3);
    check_bystander("wrong identifiers");

    // FlatBuffers that claim more than they hold.
    let payload_marker = [0xEEu8; 16];
    let ping_frame = raw_request(41, |fbb| {
        let p = fbb.create_vector(&payload_marker);
        let t = fb::Ping::create(fbb, &fb::PingArgs { payload: Some(p) });
        (fb::Op::Ping, Some(t.as_union_value()))
    });
    let hello_frame = raw_request(42, |fbb| {
        let s = fbb.create_string("HOSTILE-CLIENT");
        let t = fb::Hello::create(fbb, &fb::HelloArgs { client: Some(s) });
        (fb::Op::Hello, Some(t.as_union_value()))
    });
    let set_frame = raw_request(43, |fbb| {
        let v = fbb.create_vector(&[0xDDu8; 24]);
        let k = fbb.create_vector(b"KEYKEY");
        let t = fb::Set::create(
            fbb,
            &fb::SetArgs {
                key: Some(k),
                value: Some(v),
                ttl_ms: 0,
            },
        );
        (fb::Op::Set, Some(t.as_union_value()))
    });
    // The unpatched frames are answered normally: the patches below are what breaks them.
    assert_eq!(victim.call(&ping_frame).1, Status::Ok);
    assert_eq!(victim.call(&hello_frame).1, Status::Ok);
    assert_eq!(victim.call(&set_frame).1, Status::Ok);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for len in [0x7FFF_FFFFu32, u32::MAX, 0x10_0000] {
        let mut f = ping_frame.clone();
        patch_len_before(&mut f, &payload_marker, len);
        cases.push(("a Ping payload longer than the buffer", f));
        let mut f = hello_frame.clone();
        patch_len_before(&mut f, b"HOSTILE-CLIENT", len);
        cases.push(("a Hello string longer than the buffer", f));
    }
    let mut f = set_frame.clone();
    let whole = f.len() as u32;
    patch_len_before(&mut f, &[0xDD; 24], whole);
    cases.push(("a Set value as long as the whole frame", f));
    let mut f = set_frame.clone();
    patch_len_before(&mut f, b"KEYKEY", 0xFFFF_FFF0);
    cases.push(("a Set key that wraps the address space", f));
    let mut f = ping_frame.clone();
    f[4..8].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    cases.push(("a root offset far past the buffer", f));
    let mut f = ping_frame.clone();
    // The root table starts with its soffset to the vtable: point it far before the buffer.
    let root = 4 + u32::from_le_bytes(f[4..8].try_into().unwrap()) as usize;
    f[root..root + 4].copy_from_slice(&0x7FFF_0000i32.to_le_bytes());
    cases.push(("a vtable offset outside the buffer", f));
    for (name, bytes) in &cases {
        let (id, status, error) = victim.call(bytes);
        assert_eq!((id, status), (0, Status::BadRequest), "{name}: {error}");
        assert!(error.contains("verification failed"), "{name}: {error}");
    }
    victim.ping(4);
    check_bystander("huge vectors");

    // Deep nesting where the verifier does not go: ignored, answered as the Ping it is.
    let deep = ping_with_deep_unknown_field(51, 1000);
    victim.send(&deep);
    let f = victim.recv().unwrap();
    let v = ResponseView::decode(&f).unwrap();
    assert_eq!((v.id, v.status), (51, Status::Ok), "{:?}", v.error);
    assert!(matches!(
        v.body,
        percore::protocol::ReplyView::Ping { payload: b"deep" }
    ));
    victim.ping(5);
    check_bystander("deep nesting");

    let stats = bystander.stats();
    assert_eq!(stats.len(), test_cores());
}

// ---- vanishing clients ----------------------------------------------------------------------

/// Sets SO_LINGER 0, so that dropping the socket sends a reset instead of a FIN.
fn reset_on_close(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// Clients vanish mid-frame (FIN or reset after half a frame) and mid-reply (pipelined Gets of
/// 256 KiB values, forwarded or local, and Compute jobs, then a reset or a close as soon as the
/// first reply bytes arrive). Afterwards every core's connection count and `buffers_lent` come
/// back to where they were before: nothing the server lent to those connections, or to their
/// requests still running on another core or in the compute queue, stays out.
#[test]
fn vanishing_clients_leave_no_connection_or_buffer_behind() {
    let _serial = serial();
    const VALUE: usize = 256 << 10;
    let server = Server::start(&["--cores", &test_cores().to_string()]);
    let mut observer = Wire::connect(server.addr);
    let value = vec![0x3C; VALUE];
    for i in 0..BIG_KEYS {
        observer.set(&big_key(i), &value);
    }
    let baseline = observer.stats();
    let lent: Vec<u64> = baseline.iter().map(|s| s.buffers_lent).collect();
    eprintln!(
        "vanishing: at rest, buffers lent per core {lent:?}, free {:?}",
        baseline.iter().map(|s| s.buffers_free).collect::<Vec<_>>()
    );

    let mut gets = Vec::new();
    for n in 0..64u64 {
        gets.extend_from_slice(&frame(
            n + 1,
            &Op::Get {
                key: &big_key(n as usize % BIG_KEYS),
            },
        ));
    }
    let compute = frame(
        99,
        &Op::Compute {
            algo: Algo::Sha256,
            input: &[1; 64],
            rounds: 5_000,
        },
    );
    let half = frame(3, &Op::Ping { payload: &[9; 100] });
    for round in 0..40 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        match round % 4 {
            // Mid-reply: wait for the first reply bytes, then reset (or close with unread data,
            // which the kernel also turns into a reset).
            0 | 1 => {
                s.write_all(&compute).unwrap();
                s.write_all(&gets).unwrap();
                let mut first = [0u8; 1];
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.read_exact(&mut first).expect("the replies start");
                if round % 4 == 0 {
                    reset_on_close(&s);
                }
            }
            // Mid-frame: a whole ping and half a frame, then a reset or a FIN.
            _ => {
                s.write_all(&frame(1, &Op::Ping { payload: b"p" })).unwrap();
                s.write_all(&half[..half.len() / 2]).unwrap();
                if round % 4 == 2 {
                    reset_on_close(&s);
                }
            }
        }
        drop(s);
    }

    let mut last = Vec::new();
    poll_until(Duration::from_secs(10), || {
        last = observer.stats();
        let open = sum(&last, |s| s.connections);
        let now: Vec<u64> = last.iter().map(|s| s.buffers_lent).collect();
        // Until every client has been accepted (the last may still be in the listen queue when
        // the others are gone), then until what they held has come back.
        let accepted = sum(&last, |s| s.connections_accepted);
        (accepted == 41 && open == 1 && now == lent)
            .then_some(())
            .ok_or(format!(
                "{accepted} accepted, {open} connections open, buffers lent per core {now:?} \
                 (at rest {lent:?})"
            ))
    });
    eprintln!(
        "vanishing: after 40 vanished clients, buffers lent per core {:?}, free {:?}, accepted {}",
        last.iter().map(|s| s.buffers_lent).collect::<Vec<_>>(),
        last.iter().map(|s| s.buffers_free).collect::<Vec<_>>(),
        sum(&last, |s| s.connections_accepted)
    );
    assert_eq!(sum(&last, |s| s.connections_accepted), 41);
    // The cache is intact and serves a well-behaved client.
    assert_eq!(observer.get_len(5, &big_key(0)), Some(VALUE));
}
