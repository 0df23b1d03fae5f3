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
    stdout: Receiver<String>,
}

/// What a stopped server left behind.
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: String,
}

impl Server {
    /// Starts `percore --listen 127.0.0.1:0` with `args` and waits until it serves.
    pub fn start(args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_percore"));
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("PERCORE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe. The server dies with the test process even when
        // the test is killed before its Drop can run.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("percore starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("percore prints its listening line");
        // "percore listening on 127.0.0.1:PORT with N cores (cpus ..)[, shard ports A..=B]"
        let addr = first
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {first}"));
        let shard_ports = match first.split_once("shard ports ") {
            Some((_, range)) => {
                let range = range.split(',').next().unwrap_or(range);
                let (a, b) = range.split_once("..=").expect("a port range");
                (a.parse().unwrap()..=b.parse().unwrap()).collect()
            }
            None => Vec::new(),
        };
        let memcached = first
            .split_once("memcached on ")
            .map(|(_, addr)| addr.trim().parse().expect("a memcached address"));
        Server {
            child: Some(child),
            addr,
            shard_ports,
            memcached,
            stdout: rx,
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
    pub fn stop(mut self, timeout: Duration) -> Stopped {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("percore did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        Stopped { status, stdout }
    }
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
