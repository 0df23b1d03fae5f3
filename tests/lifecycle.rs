//! Connection limits and shutdown, against the real binary.

mod common;
use std::time::Duration;

use common::*;

/// Connections past --max-connections are closed at once and counted; the others are served.
#[test]
fn connections_over_the_limit_are_refused_and_counted() {
    let server = Server::start(&[
        "--cores",
        &test_cores().to_string(),
        "--max-connections",
        "3",
    ]);
    block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut c = Client::connect(server.addr).await.unwrap();
            assert_eq!(c.ping(b"in").await.unwrap(), b"in");
            held.push(c);
        }
        for _ in 0..4 {
            let mut extra = Client::connect(server.addr).await.unwrap();
            let refused = extra.ping(b"over the limit").await;
            assert!(
                refused.is_err(),
                "the fourth connection must be closed, got {refused:?}"
            );
        }
        for c in held.iter_mut() {
            assert_eq!(c.ping(b"still served").await.unwrap(), b"still served");
        }
        let stats = held[0].stats().await.unwrap();
        assert_eq!(stats.iter().map(|s| s.connections_refused).sum::<u64>(), 4);
        assert_eq!(stats.iter().map(|s| s.connections).sum::<u64>(), 3);

        // A slot freed by a client that leaves can be used again.
        drop(held.pop());
        let mut retry = None;
        for _ in 0..50 {
            let mut c = Client::connect(server.addr).await.unwrap();
            if c.ping(b"again").await.is_ok() {
                retry = Some(c);
                break;
            }
            percore::runtime::sleep(Duration::from_millis(20)).await;
        }
        assert!(retry.is_some(), "a freed slot is reusable");
    });
}

/// SIGTERM while clients are pipelining: the server answers everything it read, what arrives
/// during the drain with ShuttingDown, prints the exit report and exits 0; a client that stops
/// sending at ShuttingDown gets a reply to every request it sent.
#[test]
fn sigterm_under_load_answers_everything_read_and_prints_the_report() {
    let server = Server::start(&["--cores", &test_cores().to_string()]);
    let addr = server.addr;
    let pid = server.pid();
    let clients: Vec<_> = (0..4)
        .map(|n| {
            std::thread::spawn(move || {
                block_on(async move {
                    let mut c = Client::connect(addr).await.unwrap();
                    let mut sent = 0u64;
                    let mut answered = 0u64;
                    let mut told_to_stop = false;
                    let value = [n as u8; 64];
                    // Keep 64 requests in flight until the server says it is shutting down,
                    // then collect the replies still owed.
                    loop {
                        while !told_to_stop && sent - answered < 64 {
                            let key = format!("load:{n}:{}", sent % 1000);
                            let op = if sent % 2 == 0 {
                                Op::Set {
                                    key: key.as_bytes(),
                                    value: &value,
                                    ttl_ms: 0,
                                }
                            } else {
                                Op::Get {
                                    key: key.as_bytes(),
                                }
                            };
                            c.send(&op);
                            sent += 1;
                        }
                        if told_to_stop && sent == answered {
                            break;
                        }
                        if c.flush().await.is_err() {
                            break;
                        }
                        match c.recv().await {
                            Ok(r) => {
                                let status = r.status();
                                assert!(
                                    matches!(
                                        status,
                                        Status::Ok | Status::NotFound | Status::ShuttingDown
                                    ),
                                    "status {status:?}"
                                );
                                told_to_stop |= status == Status::ShuttingDown;
                                answered += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    assert_eq!(sent, answered, "a request went unanswered");
                    answered
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(pid, server.pid());
    let stopped = server.stop(Duration::from_secs(15));
    let answered: u64 = clients.into_iter().map(|t| t.join().unwrap()).sum();

    assert!(stopped.status.success(), "exit status {:?}", stopped.status);
    let out = &stopped.stdout;
    assert!(out.contains("percore exit report"), "no report in:\n{out}");
    let reported = report_count(out, "set").unwrap() + report_count(out, "get").unwrap();
    assert!(answered > 1_000, "the load ran ({answered} replies)");
    // Every request the server read was answered, and every answer reached a client.
    assert_eq!(report_core_sum(out, "unanswered"), 0, "report:\n{out}");
    assert_eq!(reported, answered, "report:\n{out}");
    assert_eq!(report_core_sum(out, "requests"), answered);
}

/// A second server on a port that is taken says so and exits, instead of sharing the port
/// through SO_REUSEPORT; so do impossible settings.
#[test]
fn a_taken_port_and_bad_settings_are_clear_errors() {
    let server = Server::start(&["--cores", "1"]);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(args)
            .output()
            .expect("percore runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let taken = server.addr.to_string();
    let (ok, err) = run(&["--listen", &taken, "--cores", "1"]);
    assert!(!ok);
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
    let (ok, err) = run(&["--listen", "127.0.0.1:0", "--cores", "4096-4096"]);
    assert!(!ok);
    assert!(err.contains("CPU 4096 does not exist"), "{err}");
    let (ok, err) = run(&["--listen", "127.0.0.1:0", "--memory", "lots"]);
    assert!(!ok);
    assert!(err.contains("not a size"), "{err}");
    // The first server is untouched.
    block_on(async {
        let mut c = Client::connect(server.addr).await.unwrap();
        assert_eq!(c.ping(b"still mine").await.unwrap(), b"still mine");
    });
}

/// A core that dies (a panic in one of its tasks; here the debug builds' test-only
/// PERCORE_TEST_PANIC_CORE) ends the process with an error naming it and status 1, soon,
/// although the rest of the other cores' shutdown waits for it forever: clients keep requests
/// in flight to every core's keys, so some of them hold permits to the dead core.
#[test]
fn a_core_that_dies_ends_the_process_with_an_error_naming_it() {
    let cores = test_cores();
    let victim = cores - 1;
    let server = Server::start_with(
        &["--cores", &cores.to_string(), "--drain-timeout", "1s"],
        |c| {
            c.env("PERCORE_TEST_PANIC_CORE", format!("{victim}:500ms"))
                .stderr(std::process::Stdio::piped());
        },
    );
    let addr = server.addr;
    let clients: Vec<_> = (0..4)
        .map(|n| {
            std::thread::spawn(move || {
                block_on(async move {
                    let Ok(mut c) = Client::connect(addr).await else {
                        return;
                    };
                    let value = [n as u8; 64];
                    for i in 0u64.. {
                        for j in 0..32 {
                            let key = format!("dies:{n}:{}", (i * 32 + j) % 1000);
                            c.send(&Op::Set {
                                key: key.as_bytes(),
                                value: &value,
                                ttl_ms: 0,
                            });
                        }
                        if c.flush().await.is_err() {
                            return;
                        }
                        for _ in 0..32 {
                            if c.recv().await.is_err() {
                                return;
                            }
                        }
                    }
                })
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let stopped = server
        .wait_exit(Duration::from_secs(20))
        .expect("the process exits by itself after a core died");
    let took = started.elapsed();
    for c in clients {
        c.join().unwrap();
    }
    let err = &stopped.stderr;
    assert_eq!(
        stopped.status.code(),
        Some(1),
        "{:?}\n{err}",
        stopped.status
    );
    let prefix = format!("percore: error: core {victim} (CPU ");
    let line = err
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{err}"));
    assert!(
        line.contains(") stopped: panicked: PERCORE_TEST_PANIC_CORE"),
        "{line}"
    );
    // Dead at 0.5 s; the others drain for at most --drain-timeout and a second more.
    assert!(took < Duration::from_secs(5), "exited {took:?} after start");
}

/// The lowest descriptor number process `pid` has free: with its soft open-file limit at this,
/// its next open fails (the limit bounds the numbers, and a new descriptor takes the lowest).
fn lowest_free_fd(pid: i32) -> u64 {
    let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).unwrap()
}

/// Process `pid`'s open-file limit (soft, hard).
fn nofile_of(pid: i32) -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads nothing and writes the struct it is given.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    (limit.rlim_cur, limit.rlim_max)
}

/// Sets process `pid`'s soft open-file limit, keeping the hard one (so it can be raised again).
fn set_soft_nofile(pid: i32, soft: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: nofile_of(pid).1,
    };
    // SAFETY: prlimit reads the struct it is given and writes nothing.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// Out of file descriptors, every accept fails (EMFILE). Each listener backs off (10 ms,
/// doubling to 1 s) and counts the failures, a core logs them at most once a second, and the
/// connections already open are served throughout; once descriptors are free again, the
/// connections that waited are taken.
#[test]
fn accepts_that_fail_for_want_of_descriptors_back_off_and_are_counted() {
    let cores = test_cores();
    let server = Server::start_with(
        &["--cores", &cores.to_string(), "--max-connections", "1000"],
        |c| {
            c.stderr(std::process::Stdio::piped());
        },
    );
    let pid = server.pid();
    let addr = server.addr;
    let (soft, _) = nofile_of(pid);
    let attempts = block_on(async {
        let mut kept = Client::connect(addr).await.unwrap();
        assert_eq!(kept.ping(b"before").await.unwrap(), b"before");
        // Not a descriptor to spare: the next accept on any core fails.
        set_soft_nofile(pid, lowest_free_fd(pid));
        let started = std::time::Instant::now();
        let mut waiting = Vec::new();
        while started.elapsed() < Duration::from_millis(2500) {
            for _ in 0..2 {
                waiting.push(std::net::TcpStream::connect(addr).unwrap());
            }
            assert_eq!(kept.ping(b"during").await.unwrap(), b"during");
            percore::runtime::sleep(Duration::from_millis(25)).await;
        }
        set_soft_nofile(pid, soft);
        // A connection that waited is taken by its listener's next accept, at most one
        // back-off (1 s) away.
        let mut first = Wire {
            s: waiting.swap_remove(0),
        };
        first
            .s
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        first.ping(7);
        assert_eq!(kept.ping(b"after").await.unwrap(), b"after");
        waiting.len() + 1
    });
    let stopped = server.stop(Duration::from_secs(15));
    assert!(stopped.status.success(), "{:?}", stopped.status);
    let failed = report_core_sum(&stopped.stdout, "accept_errors");
    let logged: Vec<&str> = stopped
        .stderr
        .lines()
        .filter(|l| l.contains("accept failed"))
        .collect();
    assert!(failed >= 1, "no failed accept counted:\n{}", stopped.stdout);
    // 2.5 s of failures: at most a line a second per core, each with its count.
    assert!(
        !logged.is_empty() && logged.len() <= 4 * cores,
        "{} lines for {failed} failed accepts and {attempts} connections:\n{}",
        logged.len(),
        stopped.stderr
    );
    assert!(logged.iter().all(|l| l.contains("failures")), "{logged:?}");
    assert!(logged.len() * 10 < attempts, "{} lines", logged.len());
}

/// Whole reply frames in `bytes`.
fn whole_frames(mut bytes: &[u8]) -> u64 {
    let mut n = 0;
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        if bytes.len() < 4 + len {
            break;
        }
        bytes = &bytes[4 + len..];
        n += 1;
    }
    n
}

/// Reads `s` until it ends, fails or is silent for `patience`; returns the whole frames it got.
fn frames_until_closed(s: &mut std::net::TcpStream, patience: Duration) -> u64 {
    use std::io::Read;
    s.set_read_timeout(Some(patience)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    whole_frames(&got)
}

/// A connection that reaches a core after its drain began is closed before anything is read
/// from it; the others are answered (ShuttingDown counts): no request the server read is
/// dropped, which the exit report shows as `requests` equal to the replies clients got and
/// `unanswered` 0.
///
/// A slip needs an accept that returns after the drain began on a core that lives on. Here:
/// connections wait in the backlog of core 0's own port while the server is out of descriptors
/// (each accept fails and backs off), the drain begins, descriptors come back; a client of
/// core 1 that keeps pipelining holds the drain, and with it core 0, open meanwhile. Before
/// the fix core 0 took them, read their requests and exited under them with the replies
/// unwritten and uncounted (`unanswered` 0). Other clients connect in a loop through the drain
/// window.
#[test]
fn connections_that_arrive_during_the_drain_are_closed_before_anything_is_read() {
    use std::io::Write;
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    if test_cores() < 2 {
        eprintln!("skipped: needs two cores");
        return;
    }
    let base = free_port_run(2);
    let server = Server::start_with(&["--cores", "2", "--shard-ports", &base.to_string()], |c| {
        c.stderr(std::process::Stdio::piped());
    });
    let pid = server.pid();
    let core = |i: u16| SocketAddr::from(([127, 0, 0, 1], base + i));
    let main = server.addr;
    let (soft, _) = nofile_of(pid);

    // Core 1's client: 16 Pings in flight until released, then it takes what it is owed.
    let release = Arc::new(AtomicBool::new(false));
    let holder = {
        let release = release.clone();
        let addr = core(1);
        std::thread::spawn(move || {
            block_on(async move {
                let mut c = Client::connect(addr).await.unwrap();
                let (mut sent, mut answered) = (0u64, 0u64);
                loop {
                    let stop = release.load(Ordering::Acquire);
                    while !stop && sent - answered < 16 {
                        c.send(&Op::Ping { payload: b"hold" });
                        sent += 1;
                    }
                    if stop && sent == answered {
                        return answered;
                    }
                    c.flush().await.unwrap();
                    c.recv().await.expect("the holder is answered");
                    answered += 1;
                }
            })
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    // Out of descriptors; connections to core 0 wait, each with a burst of Pings written (as
    // far as the socket takes them; the replies are more than socket buffers hold) and
    // nothing read until the server has exited. The limit sits 16 below the lowest free
    // descriptor, so that one the server closes meanwhile (its cores share the table) does
    // not let an accept through before the drain.
    set_soft_nofile(pid, lowest_free_fd(pid).saturating_sub(16));
    // An accept io_uring already has in flight keeps the limit it was submitted under: one
    // connection, served and gone before the drain, uses it up.
    let mut spent = Wire::connect(core(0));
    spent.ping(1);
    drop(spent);
    std::thread::sleep(Duration::from_millis(100));
    let burst: Vec<u8> = (0..300_000u64)
        .flat_map(|id| frame(id, &Op::Ping { payload: b"wait" }))
        .collect();
    let burst = Arc::new(burst);
    let read_now = Arc::new(AtomicBool::new(false));
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let (burst, read_now) = (burst.clone(), read_now.clone());
            let mut s = TcpStream::connect(core(0)).unwrap();
            std::thread::spawn(move || {
                let mut writer = s.try_clone().unwrap();
                let w = std::thread::spawn(move || {
                    let _ = writer.write_all(&burst);
                });
                while !read_now.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let got = frames_until_closed(&mut s, Duration::from_secs(10));
                w.join().unwrap();
                got
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    server.signal(libc::SIGTERM);
    // Every core checks for shutdown at least every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    set_soft_nofile(pid, soft);

    // Through the drain window, connect and send one Ping, again and again.
    let started = std::time::Instant::now();
    let mut looped = 0u64;
    let mut looped_replies = 0u64;
    while started.elapsed() < Duration::from_millis(1200) {
        for addr in [main, core(0), core(1)] {
            if let Ok(mut s) = TcpStream::connect(addr) {
                looped += 1;
                if s.write_all(&frame(1, &Op::Ping { payload: b"late" }))
                    .is_ok()
                {
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    // A reply, if any, comes at once; a connection nobody serves is closed when
                    // the process exits, which waits for this loop to end.
                    looped_replies += frames_until_closed(&mut s, Duration::from_secs(1));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    release.store(true, Ordering::Release);
    let held = holder.join().unwrap();
    // The server is done once core 1's client has left. The waiting clients read only after
    // it exited: what it read from them and had not answered by then is lost to them.
    let stopped = server.wait_exit(Duration::from_secs(20));
    read_now.store(true, Ordering::Release);
    let waited: Vec<u64> = waiting.into_iter().map(|t| t.join().unwrap()).collect();
    let stopped = stopped.expect("the server exits after the drain, whatever its clients do");
    assert!(stopped.status.success(), "{:?}", stopped.status);
    let out = &stopped.stdout;
    // The one Ping of the connection that used up the accept in flight, and the rest.
    let replies = 1 + held + looped_replies + waited.iter().sum::<u64>();
    assert_eq!(report_core_sum(out, "unanswered"), 0, "report:\n{out}");
    assert_eq!(
        report_core_sum(out, "requests"),
        replies,
        "requests read and replies received (holder {held}, {looped} looped connections \
         {looped_replies}, waiting connections {waited:?}); report:\n{out}"
    );
    // Accepted, if at all, only after the drain began: closed before anything was read.
    assert!(waited.iter().all(|&n| n == 0), "{waited:?}; report:\n{out}");
}
