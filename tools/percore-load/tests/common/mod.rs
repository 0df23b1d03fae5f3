//! Test harness for percore-load: runs the real `percore` server (the sibling of the
//! percore-load binary in the workspace's target directory) on 127.0.0.1 with ephemeral ports,
//! or a server of the memcached text protocol ([`TextServer`]), runs percore-load against it
//! with a time limit (to the end, or in the background while the test acts on the server), and
//! parses what both printed and wrote. Every process started here is killed when its guard
//! drops.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The server's harness has the same need; one implementation serves both.
#[path = "../../../../tests/common/ports.rs"]
mod ports;
pub use ports::free_port_run;

pub fn load_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_percore-load"))
}

/// The `percore` server binary, built by `cargo build --workspace` next to percore-load.
pub fn server_bin() -> PathBuf {
    let load = load_bin();
    let dir = load.parent().expect("the binary has a directory");
    let server = dir.join("percore");
    assert!(
        server.exists(),
        "{} is missing: build the whole workspace first (`cargo build --workspace`, or run \
         `cargo test --workspace`)",
        server.display()
    );
    server
}

/// A running `percore`, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub shard_ports: Vec<u16>,
    /// Its stdout after the listening line, a line at a time (the exit report comes here).
    stdout: mpsc::Receiver<String>,
}

/// What a server stopped with SIGTERM left.
pub struct Stopped {
    pub status: ExitStatus,
    /// Everything printed on stdout after the listening line: the exit report.
    pub report: String,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(server_bin())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("PERCORE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("percore starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("percore did not print its listening line");
            }
        };
        let listening = percore::server::listening::Listening::parse(&first)
            .unwrap_or_else(|| panic!("unexpected first line: {first}"));
        let (addr, shard_ports) = (listening.addr, listening.shard_ports);
        Server {
            child,
            addr,
            shard_ports,
            stdout: rx,
        }
    }

    /// Sends SIGTERM, waits up to `timeout` for the exit and returns its status and report.
    pub fn stop(&mut self, timeout: Duration) -> Stopped {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for percore") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "percore did not exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, which the exit has caused.
        let report = self.stdout.iter().collect::<Vec<_>>().join("\n");
        Stopped { status, report }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which server of the memcached text protocol a test loads. The memcached tests take it as a
/// parameter, so the same checks can run against every implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextServerKind {
    /// memcached itself, from PATH, one worker thread.
    Memcached,
    /// percore's memcached listener (`--memcached-listen`), on two cores where there are two.
    Percore,
}

/// A running server of the memcached text protocol on 127.0.0.1, killed on drop.
pub struct TextServer {
    child: Child,
    pub addr: SocketAddr,
}

impl TextServer {
    /// Starts a fresh one (nothing stored) and waits until it accepts connections.
    pub fn start(kind: TextServerKind) -> TextServer {
        TextServer::start_with_memory(kind, None)
    }

    /// Starts a fresh one with `memory_mib` MiB for items (memcached's `-m`, percore's
    /// `--memory`, over all its cores), or each server's default.
    pub fn start_with_memory(kind: TextServerKind, memory_mib: Option<u64>) -> TextServer {
        let memory = memory_mib.map(|mib| mib.to_string());
        match kind {
            TextServerKind::Percore => {
                let cores = std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(2)
                    .to_string();
                let mut child = Command::new(server_bin())
                    .args([
                        "--listen",
                        "127.0.0.1:0",
                        "--memcached-listen",
                        "127.0.0.1:0",
                    ])
                    .args(["--cores", &cores])
                    .args(
                        memory
                            .iter()
                            .flat_map(|mib| ["--memory".to_owned(), format!("{mib}MiB")]),
                    )
                    .env("PERCORE_LOG", "warn")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("percore starts");
                let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
                let mut first = String::new();
                stdout.read_line(&mut first).expect("the listening line");
                // Keep draining so the server never blocks on a full pipe.
                std::thread::spawn(move || for _ in stdout.lines().map_while(Result::ok) {});
                let addr = percore::server::listening::Listening::parse(&first)
                    .and_then(|l| l.memcached)
                    .unwrap_or_else(|| panic!("no memcached address in: {first}"));
                TextServer { child, addr }
            }
            TextServerKind::Memcached => {
                let memcached = find_in_path("memcached").unwrap_or_else(|| {
                    panic!(
                        "memcached is not installed, and the memcached protocol tests load a \
                         real one: run `apt-get install memcached`"
                    )
                });
                // The port is free when chosen, but another process may take it before
                // memcached binds it: then memcached exits, and another port is tried.
                for _ in 0..5 {
                    let port = free_port_run(1);
                    let child = Command::new(&memcached)
                        .args([
                            "-p",
                            &port.to_string(),
                            "-l",
                            "127.0.0.1",
                            "-U",
                            "0",
                            "-t",
                            "1",
                        ])
                        // memcached refuses to run as root without a user to switch to; as
                        // anyone else it ignores -u.
                        .args(["-u", "nobody"])
                        .args(memory.iter().flat_map(|mib| ["-m", mib.as_str()]))
                        .stdout(Stdio::null())
                        .stderr(Stdio::inherit())
                        .spawn()
                        .expect("memcached starts");
                    let mut server = TextServer {
                        child,
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    };
                    if server.wait_listening(Duration::from_secs(10)) {
                        return server;
                    }
                }
                panic!("memcached did not start listening on any of 5 ports");
            }
        }
    }

    /// Whether it accepts a connection within `limit` (false if it exited first).
    fn wait_listening(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if TcpStream::connect(self.addr).is_ok() {
                return true;
            }
            if self
                .child
                .try_wait()
                .expect("wait for the server")
                .is_some()
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for TextServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first executable file called `name` in PATH.
fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A scratch directory for one test, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "percore-load-test-{}-{name}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a percore-load run left.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<serde_json::Value>,
}

impl Run {
    pub fn json(&self) -> &serde_json::Value {
        self.json.as_ref().unwrap_or_else(|| {
            panic!(
                "no JSON written\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn assert_clean(&self) {
        assert!(
            self.status.success(),
            "percore-load failed ({})\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        assert_eq!(self.json()["errors_total"], 0, "{}", self.stdout);
    }

    pub fn errors(&self, kind: &str) -> u64 {
        self.json()["errors"][kind].as_u64().unwrap()
    }
}

/// Kills the load generator if it outlives its test.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs percore-load with `args` (always on one core, JSON to a scratch file), killing it after
/// `limit`.
pub fn run_load(args: &[&str], limit: Duration) -> Run {
    spawn_load(args).wait(limit)
}

/// A percore-load running in the background.
pub struct Loading {
    guard: Guard,
    args: Vec<String>,
    scratch: Scratch,
}

/// Starts percore-load with `args` (always on one core, JSON to a scratch file).
pub fn spawn_load(args: &[&str]) -> Loading {
    let scratch = Scratch::new("run");
    let child = Command::new(load_bin())
        .args(["--cores", "1"])
        .args(args)
        .arg("--json")
        .arg(scratch.path("out.json"))
        .stdout(std::fs::File::create(scratch.path("stdout")).unwrap())
        .stderr(std::fs::File::create(scratch.path("stderr")).unwrap())
        .spawn()
        .expect("percore-load starts");
    Loading {
        guard: Guard(child),
        args: args.iter().map(|a| a.to_string()).collect(),
        scratch,
    }
}

impl Loading {
    /// What it has written to stderr so far (the progress lines).
    pub fn stderr(&self) -> String {
        read(&self.scratch.path("stderr"))
    }

    /// Polls until `ready` holds for the stderr so far, failing after `limit` or if the run
    /// ends first.
    pub fn wait_for_stderr(&mut self, limit: Duration, ready: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let stderr = self.stderr();
            if ready(&stderr) {
                return;
            }
            if let Some(status) = self.guard.0.try_wait().unwrap() {
                panic!("percore-load ended ({status}) before it was ready:\n{stderr}");
            }
            assert!(
                Instant::now() < deadline,
                "percore-load not ready within {limit:?}:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit (killing it after `limit`) and collects what it printed and wrote.
    pub fn wait(mut self, limit: Duration) -> Run {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.guard.0.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                panic!(
                    "percore-load {:?} ran over {limit:?}\nstderr so far:\n{}",
                    self.args,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            status,
            stdout: read(&self.scratch.path("stdout")),
            stderr: self.stderr(),
            json: std::fs::read_to_string(self.scratch.path("out.json"))
                .ok()
                .map(|t| serde_json::from_str(&t).expect("--json writes valid JSON")),
        }
    }
}

/// The count of `op` in the service-time table of a server's exit report.
pub fn report_count(report: &str, op: &str) -> u64 {
    report
        .lines()
        .find(|l| l.split_whitespace().next() == Some(op))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no `{op}` row in the exit report:\n{report}"))
}

/// The sum of a `name N` field over the per-core lines of a server's exit report.
pub fn report_core_sum(report: &str, name: &str) -> u64 {
    let cores: Vec<&str> = report.lines().filter(|l| l.starts_with("core ")).collect();
    assert!(!cores.is_empty(), "no per-core lines in:\n{report}");
    cores
        .iter()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == name);
            at.and_then(|i| words.get(i + 1)?.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no `{name} N` in: {l}"))
        })
        .sum()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Checks that the JSON's counts agree with each other and with `expected_ops` operations.
pub fn assert_counts_add_up(json: &serde_json::Value, expected_ops: &[&str]) {
    let ops = json["ops"].as_u64().unwrap();
    let by_op = json["ops_by_operation"].as_object().unwrap();
    let latency = json["latency_us"].as_object().unwrap();
    let mut names: Vec<&str> = latency.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want = expected_ops.to_vec();
    want.sort_unstable();
    assert_eq!(names, want, "operations in latency_us");
    let sum_by_op: u64 = by_op.values().map(|v| v.as_u64().unwrap()).sum();
    let sum_counts: u64 = latency.values().map(|v| v["count"].as_u64().unwrap()).sum();
    assert_eq!(sum_by_op, ops, "ops_by_operation adds up to ops");
    assert_eq!(sum_counts, ops, "latency counts add up to ops");
    let errors: u64 = json["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(errors, json["errors_total"].as_u64().unwrap());
    // Every measured request was answered (or counted as an error).
    let sent = json["requests_sent"].as_u64().unwrap();
    assert!(sent >= ops, "sent {sent} < ops {ops}");
    assert!(
        sent <= ops + errors,
        "sent {sent}, ops {ops}, errors {errors}"
    );
    let duration = json["duration_s"].as_f64().unwrap();
    let throughput = json["throughput"].as_f64().unwrap();
    assert!((throughput * duration - ops as f64).abs() < 1.0 + ops as f64 * 1e-9);
    for (op, l) in latency {
        if l["count"].as_u64().unwrap() == 0 {
            continue;
        }
        let p = |k: &str| l[k].as_f64().unwrap();
        assert!(
            p("p50") <= p("p90")
                && p("p90") <= p("p99")
                && p("p99") <= p("p999")
                && p("p999") <= p("p9999")
                && p("p9999") <= p("max"),
            "{op}: percentiles out of order: {l}"
        );
        assert!(p("mean") > 0.0 && p("mean") <= p("max"));
    }
}
