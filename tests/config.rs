//! Settings the server cannot honour are refused at start with exit status 2 and a message
//! naming the flag, never a crash later (an abort, a panic at shutdown, a core that dies).

mod common;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `percore --listen 127.0.0.1:0 ARGS` (adjusted by `adjust`) and returns its exit status
/// and stderr. Panics if it is still running after a few seconds: it accepted the settings.
fn refusal_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> (ExitStatus, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_percore"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("PERCORE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    adjust(&mut command);
    let mut child = command.spawn().expect("percore runs");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("percore {args:?} was accepted: still running after 5s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    (status, stderr)
}

fn refusal(args: &[&str]) -> (ExitStatus, String) {
    refusal_with(args, |_| {})
}

/// Exit status 2, and the message names `flag`.
fn assert_refused(args: &[&str], flag: &str) {
    let (status, stderr) = refusal(args);
    assert_eq!(status.code(), Some(2), "{args:?}: {status:?}\n{stderr}");
    assert!(
        stderr.contains("percore: error:") || stderr.contains("error: invalid value"),
        "{args:?}: {stderr}"
    );
    assert!(
        stderr.contains(flag),
        "{args:?} should name {flag}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

/// The range was expanded into a vector before it was checked: an 800 GB allocation, abort.
#[test]
fn a_huge_cpu_range_is_refused() {
    assert_refused(&["--cores", "0-99999999999"], "--cores");
}

/// The compute queue and its buffer pool were sized from it at start: overflow, panic.
#[test]
fn a_huge_compute_queue_is_refused() {
    assert_refused(
        &["--compute-queue", "18446744073709551615", "--cores", "1"],
        "--compute-queue",
    );
    assert_refused(&["--compute-queue", "65537", "--cores", "1"], "65536");
}

/// Accepted, then the drain's deadline (now + the timeout) overflowed the clock at shutdown and
/// every core with a connection panicked.
#[test]
fn an_absurd_drain_timeout_is_refused() {
    assert_refused(
        &["--drain-timeout", "300000000000y", "--cores", "1"],
        "--drain-timeout",
    );
}

/// Accepted, then a Ping of more than 2 GiB made the FlatBuffers builder panic and killed the
/// core that answered it.
#[test]
fn a_max_frame_past_what_a_reply_can_hold_is_refused() {
    assert_refused(&["--max-frame", "3GiB", "--cores", "1"], "--max-frame");
    assert_refused(&["--max-frame", "2GiB", "--cores", "1"], "2047MiB");
}

/// Accepted, then a store of more than 2^32 slots in a class would number them past u32.
#[test]
fn more_memory_per_core_than_slot_numbers_reach_is_refused() {
    assert_refused(&["--memory", "300GiB", "--cores", "1"], "--memory");
}

/// Every refusal exits 2, not only those clap makes while parsing.
#[test]
fn every_refused_setting_exits_with_status_2() {
    assert_refused(&["--max-inflight", "0"], "--max-inflight");
    assert_refused(&["--cores", "4096-4096"], "CPU 4096 does not exist");
    assert_refused(&["--memory", "lots"], "--memory");
}

/// Limits the open-file limit of the child to `soft` and `hard` before it runs.
fn nofile(command: &mut Command, soft: u64, hard: u64) {
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Connections the open-file limit cannot hold are refused with the numbers, instead of
/// every accept past the limit failing with EMFILE.
#[test]
fn more_connections_than_the_open_file_limit_holds_are_refused() {
    let (status, stderr) = refusal_with(&["--max-connections", "1000", "--cores", "1"], |c| {
        nofile(c, 200, 200)
    });
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--max-connections 1000") && stderr.contains("open-file limit is 200"),
        "{stderr}"
    );
}

/// The soft limit is raised to the hard one, which is then enough.
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let server = Server::start_with(&["--max-connections", "1000", "--cores", "1"], |c| {
        nofile(c, 200, 4096)
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
    block_on(async {
        let mut c = Client::connect(server.addr).await.unwrap();
        assert_eq!(c.ping(b"up").await.unwrap(), b"up");
    });
}
