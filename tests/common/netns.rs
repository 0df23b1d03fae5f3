//! A fleet of percore hosts in network namespaces made by the test: `tools/fleet.sh net-up`
//! makes them (the same code the script runs), this harness starts a `percore` in each host
//! namespace (each pinned to one CPU, taking turns), nutcracker in the switch namespace, and
//! runs clients there: child processes through [`Fleet::command`], and code of the test itself
//! through [`Fleet::in_switch`] (a thread that joined the namespace). Addresses are those of
//! tools/fleet.sh: host i is 10.221.14.(i+1), the switch 10.221.14.254; they exist only inside
//! the namespaces, so fleets of tests running at once do not see each other.
//!
//! Making namespaces needs root (CI runs as root). When it fails, the test fails: it does not
//! skip. Every process is killed and every namespace removed when the [`Fleet`] drops, also
//! when the test panics.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use percore::server::listening::Listening;

/// The fleet's /24, as tools/fleet.sh has it.
pub const SUBNET: &str = "10.221.14";
pub const NATIVE_PORT: u16 = 7070;
pub const SHARD_PORT_BASE: u16 = 7100;
pub const MEMCACHED_PORT: u16 = 11211;
pub const NUTCRACKER_PORT: u16 = 22121;
const NUTCRACKER_TEMPLATE: &str = include_str!("../../tools/fleet/nutcracker.yml");

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fleet.sh")
}

/// The percore-load binary, built next to percore by `cargo build --workspace`.
pub fn load_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_percore")).with_file_name("percore-load");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        bin.display()
    );
    bin
}

/// Debian's nutcracker: in PATH, or in /usr/sbin (which a PATH may lack).
fn nutcracker_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nutcracker"))
        .find(|bin| bin.exists())
        .unwrap_or_else(|| {
            panic!(
                "nutcracker is not installed: run tools/install-test-deps.sh (Debian's nutcracker)"
            )
        })
}

/// Host `i`'s address.
pub fn host_ip(i: usize) -> String {
    format!("{SUBNET}.{}", i + 1)
}

/// Host `i`'s name on nutcracker's ring (`- HOST:PORT:1 hI`), and so on every client's that
/// is to agree with it.
pub fn host_name(i: usize) -> String {
    format!("h{i}")
}

/// One running percore in its namespace.
pub struct Host {
    child: Child,
    /// Its stdout after the listening line (the exit report comes there).
    stdout: Receiver<String>,
}

pub struct Fleet {
    pub name: String,
    /// Host i, `None` while it is stopped.
    pub hosts: Vec<Option<Host>>,
    cores_per_host: usize,
    nutcracker: Option<Child>,
    dir: PathBuf,
    cpus: Vec<usize>,
}

/// Joins the network namespace `ns` in a child between fork and exec (or in this thread).
fn netns_file(ns: &str) -> File {
    File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("network namespace {ns} cannot be opened: {e}"))
}

/// Makes `command` run in namespace `ns`, dying with the test, with the memlock limit raised
/// to its hard limit (io_uring needs some) and, given `cpus`, pinned to them.
fn in_namespace(command: &mut Command, ns: &str, cpus: Vec<usize>) {
    let file = netns_file(ns);
    // SAFETY: setns, setrlimit, sched_setaffinity and prctl are async-signal-safe system calls
    // on values prepared before the fork; the file stays open in the parent until exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut limit = std::mem::zeroed::<libc::rlimit>();
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit);
            }
            if !cpus.is_empty() {
                let mut set = std::mem::zeroed::<libc::cpu_set_t>();
                for &cpu in &cpus {
                    libc::CPU_SET(cpu, &mut set);
                }
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn usable_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity on an owned, zeroed set.
    unsafe {
        let mut set = std::mem::zeroed::<libc::cpu_set_t>();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn run_script(args: &[&str]) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .map_err(|e| format!("cannot run tools/fleet.sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tools/fleet.sh {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What every host admits unless told otherwise: loopback and the fleet's subnet.
pub fn default_allow() -> String {
    format!("127.0.0.0/8,{SUBNET}.0/24")
}

impl Fleet {
    /// `k` hosts of `cores_per_host` cores each (pinned to consecutive CPUs, taking turns),
    /// and nutcracker in front of their memcached listeners.
    pub fn start(k: usize, cores_per_host: usize) -> Fleet {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "pcft{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut fleet = Fleet {
            name: name.clone(),
            hosts: Vec::new(),
            cores_per_host,
            nutcracker: None,
            dir,
            cpus: usable_cpus(),
        };
        // The fleet is dropped (and whatever was made removed) if this fails half way.
        if let Err(e) = run_script(&["net-up", &name, &k.to_string()]) {
            panic!("cannot make the fleet's network namespaces (root is needed): {e}");
        }
        for i in 0..k {
            fleet.hosts.push(None);
            fleet.start_host(i);
        }
        fleet.start_nutcracker();
        fleet
    }

    pub fn host_ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.name)
    }

    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.name)
    }

    pub fn native_addr(&self, i: usize) -> SocketAddr {
        format!("{}:{NATIVE_PORT}", host_ip(i)).parse().unwrap()
    }

    pub fn memcached_addr(&self, i: usize) -> SocketAddr {
        format!("{}:{MEMCACHED_PORT}", host_ip(i)).parse().unwrap()
    }

    pub fn nutcracker_addr(&self) -> SocketAddr {
        format!("{SUBNET}.254:{NUTCRACKER_PORT}").parse().unwrap()
    }

    /// The hosts as the native fleet client names them: by their native address.
    pub fn native_hosts(&self) -> Vec<(String, SocketAddr)> {
        (0..self.hosts.len())
            .map(|i| (self.native_addr(i).to_string(), self.native_addr(i)))
            .collect()
    }

    /// The hosts named as nutcracker names them ([`host_name`]), reached at their native
    /// address: a fleet client with these names places keys as nutcracker does.
    pub fn native_hosts_named_as_nutcracker(&self) -> Vec<(String, SocketAddr)> {
        (0..self.hosts.len())
            .map(|i| (host_name(i), self.native_addr(i)))
            .collect()
    }

    /// Starts (or restarts) percore in host namespace `i`, and waits until it serves.
    pub fn start_host(&mut self, i: usize) {
        self.start_host_allowing(i, &default_allow());
    }

    /// [`Fleet::start_host`] with `--allow allow`.
    pub fn start_host_allowing(&mut self, i: usize, allow: &str) {
        assert!(self.hosts[i].is_none(), "host {i} runs already");
        let ip = host_ip(i);
        let first_cpu = i * self.cores_per_host;
        let cpus: Vec<usize> = (0..self.cores_per_host)
            .map(|c| self.cpus[(first_cpu + c) % self.cpus.len()])
            .collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_percore"));
        command
            .args(["--listen", &format!("{ip}:{NATIVE_PORT}")])
            .args(["--shard-ports", &SHARD_PORT_BASE.to_string()])
            .args(["--memcached-listen", &format!("{ip}:{MEMCACHED_PORT}")])
            .args(["--cores", &self.cores_per_host.to_string()])
            .args(["--memory", "64MiB", "--idle-poll", "0s"])
            .env("PERCORE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        command.args(["--allow", allow]);
        let ns = self.host_ns(i);
        // Pinned to its CPUs: `--cores N` then takes the first N of them.
        in_namespace(&mut command, &ns, cpus);
        // A killed host's listening sockets can outlive it for a moment (io_uring tears its
        // requests down after the exit), so a restart may find its ports taken: it is retried.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (child, rx, first) = loop {
            let mut child = command.spawn().expect("percore starts in its namespace");
            let stdout = child.stdout.take().expect("piped");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(first) => break (child, rx, first),
                Err(_) => {
                    let status = child.wait().expect("wait");
                    assert!(
                        Instant::now() < deadline,
                        "percore in {ns} printed no listening line ({status})"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let listening =
            Listening::parse(&first).unwrap_or_else(|| panic!("unexpected first line: {first}"));
        assert_eq!(listening.addr, self.native_addr(i), "{first}");
        assert_eq!(listening.memcached, Some(self.memcached_addr(i)), "{first}");
        self.hosts[i] = Some(Host { child, stdout: rx });
    }

    /// Kills host `i` (SIGKILL: a crash, nothing drained) and waits for it to be gone.
    pub fn kill_host(&mut self, i: usize) {
        let mut host = self.hosts[i].take().expect("host runs");
        let _ = host.child.kill();
        let _ = host.child.wait();
    }

    /// Kills host `i` if it runs, and brings it back as a rebooted machine: the same address,
    /// a new network namespace, an empty store.
    ///
    /// A new namespace, as a machine comes back from a reboot: the old one's connections go with
    /// it. (A percore restarted in place also gets its ports back at once; `cargo test --lib
    /// runtime::net` checks that lingering connections do not hold them.)
    pub fn reboot_host(&mut self, i: usize) {
        self.reboot_host_allowing(i, &default_allow());
    }

    /// [`Fleet::reboot_host`] with `--allow allow`.
    pub fn reboot_host_allowing(&mut self, i: usize, allow: &str) {
        if self.hosts[i].is_some() {
            self.kill_host(i);
        }
        run_script(&["del-host", &self.name, &i.to_string()])
            .unwrap_or_else(|e| panic!("cannot remove host {i}: {e}"));
        run_script(&["add-host", &self.name, &i.to_string()])
            .unwrap_or_else(|e| panic!("cannot make host {i} again: {e}"));
        self.start_host_allowing(i, allow);
    }

    /// Stops host `i` with SIGTERM and returns its exit report.
    pub fn stop_host(&mut self, i: usize) -> String {
        let mut host = self.hosts[i].take().expect("host runs");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(host.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while host.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "host {i} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut report = String::new();
        while let Ok(line) = host.stdout.recv_timeout(Duration::from_secs(2)) {
            report.push_str(&line);
            report.push('\n');
        }
        report
    }

    /// Makes namespace `i` (the next host) and starts percore in it; nutcracker is not told.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.len();
        run_script(&["add-host", &self.name, &i.to_string()])
            .unwrap_or_else(|e| panic!("cannot add host {i}: {e}"));
        self.hosts.push(None);
        self.start_host(i);
        i
    }

    /// nutcracker's configuration for the fleet's hosts: tools/fleet/nutcracker.yml filled in.
    pub fn nutcracker_config(&self) -> String {
        let servers: Vec<String> = (0..self.hosts.len())
            .map(|i| format!("    - {}:1 {}", self.memcached_addr(i), host_name(i)))
            .collect();
        NUTCRACKER_TEMPLATE
            .replace("@LISTEN@", &self.nutcracker_addr().to_string())
            .replace("@SERVERS@", &servers.join("\n"))
    }

    /// (Re)starts nutcracker with a configuration of every host, and waits until it accepts.
    pub fn start_nutcracker(&mut self) {
        if let Some(mut old) = self.nutcracker.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let conf = self.dir.join("nutcracker.yml");
        std::fs::write(&conf, self.nutcracker_config()).unwrap();
        let mut command = Command::new(nutcracker_bin());
        command
            .arg("-c")
            .arg(&conf)
            // Stats (on port 22222) are aggregated every 200 ms, not every 30 s.
            .args(["-a", &format!("{SUBNET}.254"), "-s", "22222", "-i", "200"])
            .arg("-o")
            .arg(self.dir.join("nutcracker.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        in_namespace(&mut command, &self.switch_ns(), Vec::new());
        let child = command
            .spawn()
            .expect("nutcracker starts (tools/install-test-deps.sh installs it)");
        self.nutcracker = Some(child);
        let addr = self.nutcracker_addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .in_switch(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
            .is_err()
        {
            assert!(Instant::now() < deadline, "nutcracker does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What nutcracker logged so far.
    pub fn nutcracker_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nutcracker.log")).unwrap_or_default()
    }

    /// A command that runs in the switch namespace, where every host is reachable.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        in_namespace(&mut command, &self.switch_ns(), Vec::new());
        command
    }

    /// Runs `f` on a thread of its own inside the switch namespace (threads it starts are
    /// there too), and returns what it returns.
    pub fn in_switch<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_thread_of(&self.switch_ns(), f)
    }

    /// [`Fleet::in_switch`] in host `i`'s namespace: a client whose address is host `i`'s.
    pub fn in_host<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        in_thread_of(&self.host_ns(i), f)
    }

    /// A field of host `i`'s memcached `stats`.
    pub fn memcached_stat(&self, i: usize, name: &str) -> u64 {
        let addr = self.memcached_addr(i);
        let name = name.to_owned();
        self.in_switch(move || memcached_stat(addr, &name))
    }
}

/// Runs `f` on a thread of its own inside namespace `ns`.
fn in_thread_of<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = netns_file(ns);
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only; the file is open.
        let joined = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A field of the memcached `stats` of the server at `addr`.
pub fn memcached_stat(addr: SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"stats\r\n").unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while !text.ends_with(b"END\r\n") {
        let n = stream.read(&mut buf).expect("stats reply");
        assert!(n > 0, "closed before END");
        text.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(text).expect("stats are text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in stats: {text}"))
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(mut n) = self.nutcracker.take() {
            let _ = n.kill();
            let _ = n.wait();
        }
        for host in self.hosts.iter_mut().filter_map(Option::take) {
            let mut child = host.child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = run_script(&["net-down", &self.name]) {
            eprintln!("{e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
