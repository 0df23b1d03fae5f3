//! Test harness: runs the real `percore` binary on 127.0.0.1 with an ephemeral port, and stops
//! it (SIGTERM, then SIGKILL) when the test is done.

#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub use percore::client::{Client, ClientError};
pub use percore::protocol::{Algo, Op, Status};
pub use percore::runtime::block_on;

mod ports;
pub use ports::free_port_run;
mod wire;
pub use wire::{frame, Wire};

use flatbuffers::FlatBufferBuilder;
use percore::protocol::fb;

/// Encodes a Request whose op is built by `build`, as a whole size-prefixed frame with the
/// `PCRQ` identifier. For requests a well-behaved client would not send.
pub fn raw_request(
    id: u64,
    build: impl FnOnce(
        &mut FlatBufferBuilder<'static>,
    ) -> (
        fb::Op,
        Option<flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>>,
    ),
) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let (op_type, op) = build(&mut fbb);
    let root = fb::Request::create(&mut fbb, &fb::RequestArgs { id, op_type, op });
    fbb.finish_size_prefixed(root, Some("PCRQ"));
    fbb.finished_data().to_vec()
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub shard_ports: Vec<u16>,
    /// The memcached listener's address, with `--memcached-listen`.
    pub memcached: Option<SocketAddr>,
    /// The Prometheus endpoint's address, with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
    stdout: Receiver<String>,
    /// Lines of stderr, when [`Server::start_with`] piped it.
    stderr: Option<Receiver<String>>,
}

/// What a stopped server left behind.
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: String,
    /// What it wrote on stderr, when [`Server::start_with`] piped it.
    pub stderr: String,
}

/// Sends each line `from` gives to the returned channel, from a thread of its own.
fn lines(from: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Server {
    /// Starts `percore --listen 127.0.0.1:0` with `args` and waits until it serves.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(args, |_| {})
    }

    /// [`Server::start`], with the command adjusted by `adjust` first (environment, limits);
    /// if it pipes stderr, the lines are kept for [`Server::stderr_so_far`] and [`Stopped`].
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_percore"));
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("PERCORE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        adjust(&mut command);
        // SAFETY: prctl is async-signal-safe. The server dies with the test process even when
        // the test is killed before its Drop can run.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("percore starts");
        let rx = lines(child.stdout.take().expect("stdout is piped"));
        let stderr = child.stderr.take().map(lines);
        let first = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let said: Vec<String> = stderr.iter().flat_map(|rx| rx.try_iter()).collect();
                panic!("percore printed no listening line; stderr: {said:?}")
            }
        };
        let listening = percore::server::listening::Listening::parse(&first)
            .unwrap_or_else(|| panic!("unexpected first line: {first}"));
        let (addr, shard_ports, memcached) =
            (listening.addr, listening.shard_ports, listening.memcached);
        Server {
            child: Some(child),
            addr,
            shard_ports,
            memcached,
            metrics: listening.metrics,
            stdout: rx,
            stderr,
        }
    }

    /// The stderr lines written since the last call (piped by [`Server::start_with`]).
    pub fn stderr_so_far(&self) -> Vec<String> {
        self.stderr.iter().flat_map(|rx| rx.try_iter()).collect()
    }

    /// Waits (at most `timeout`) for the server to exit without being told to.
    pub fn wait_exit(mut self, timeout: Duration) -> Option<Stopped> {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Some(self.collect(status))
    }

    /// The exit `status` with everything the server printed after its listening line.
    fn collect(&self, status: ExitStatus) -> Stopped {
        let mut stdout = String::new();
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let mut stderr = String::new();
        if let Some(rx) = &self.stderr {
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
                stderr.push_str(&line);
                stderr.push('\n');
            }
        }
        Stopped {
            status,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Sends SIGTERM and waits for the exit (at most `timeout`), returning the exit status and
    /// everything printed on stdout after the listening line.
    pub fn stop(self, timeout: Duration) -> Stopped {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
            .unwrap_or_else(|| panic!("percore did not exit within {timeout:?} of SIGTERM"))
    }
}

/// Lets this process open `needed` more sockets than it has now (the soft limit may be 1024).
pub fn raise_nofile(needed: u64) {
    // SAFETY: getrlimit/setrlimit on a valid, owned struct.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < needed + 256 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        assert!(
            limit.rlim_cur >= needed + 64,
            "RLIMIT_NOFILE {} is too low for {needed} sockets",
            limit.rlim_cur
        );
    }
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
pub fn proc_status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How many cores the tests run the server on: two where the machine has them.
pub fn test_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2)
}

/// The service-time table row of `op` in an exit report: its count.
pub fn report_count(stdout: &str, op: &str) -> Option<u64> {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(op))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
}

/// The sum of a `name N` field over the per-core lines of an exit report.
pub fn report_core_sum(stdout: &str, name: &str) -> u64 {
    stdout
        .lines()
        .filter(|l| l.starts_with("core "))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| *w == name)?;
            words.get(i + 1)?.parse::<u64>().ok()
        })
        .sum()
}
