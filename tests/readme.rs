//! The README's quick start, run as written: the fenced block after the `quick-start` marker
//! comment is handed to bash in the repository's root, and what the README says it prints is
//! checked. So the quick start cannot go stale.
//!
//! It builds and runs the release binaries on the fixed ports the README names, so it runs in
//! the optimized step of `.ci/run` (`cargo test --release --test readme`), not in the debug one.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MARKER: &str = "<!-- quick-start:";
/// The ports the quick start's server takes.
const PORTS: [u16; 3] = [7070, 11311, 9464];
/// The whole quick start, build included, must end within this.
const LIMIT: Duration = Duration::from_secs(600);

/// The lines of the first fenced block after the marker.
fn quick_start(readme: &str) -> Vec<String> {
    let after = readme
        .split_once(MARKER)
        .map(|(_, rest)| rest)
        .expect("README.md has the quick-start marker");
    let mut lines = after.lines().skip(1).skip_while(|l| l.trim().is_empty());
    let fence = lines.next().expect("a fenced block follows the marker");
    assert!(
        fence.starts_with("```"),
        "the marker must be followed by a fenced block, not {fence:?}"
    );
    let block: Vec<String> = lines
        .take_while(|l| !l.starts_with("```"))
        .map(str::to_owned)
        .collect();
    assert!(!block.is_empty(), "the quick-start block is empty");
    block
}

#[test]
fn the_marker_finds_the_block() {
    let text = "intro\n<!-- quick-start: x -->\n```sh\na\nb\n```\nafter\n```sh\nc\n```\n";
    assert_eq!(quick_start(text), ["a", "b"]);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "builds and runs the release binaries: `cargo test --release --test readme` (CI runs it)"
)]
fn the_quick_start_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = quick_start(&readme);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the quick start needs 2 CPUs, this machine has {cpus}"
        );
        eprintln!("skipped: the quick start needs 2 CPUs, this machine has {cpus}");
        return;
    }
    for port in PORTS {
        if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
            panic!("port {port}, which the quick start uses, is taken: {e}");
        }
    }
    let plot = root.join("target/latency.svg");
    let _ = std::fs::remove_file(&plot);

    let mut script = String::from("set -euo pipefail\n");
    for line in &block {
        script.push_str(line);
        script.push('\n');
    }
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(&script)
        .current_dir(root)
        // As on a fresh clone: the build goes to the clone's target/.
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so whatever it started is ended with it.
        .process_group(0);
    let mut child = command.spawn().expect("bash runs");
    let group = child.id() as i32;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: kill takes no pointers; the group is the one the script ran in.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
    let out = out_reader.join().unwrap();
    let err = err_reader.join().unwrap();
    let said = format!("stdout:\n{out}\nstderr:\n{err}");
    let status = status.unwrap_or_else(|| panic!("the quick start ran over {LIMIT:?}\n{said}"));
    assert!(status.success(), "the quick start failed: {status}\n{said}");

    // What the README says each command does.
    assert!(
        out.contains(
            "percore listening on 127.0.0.1:7070 with 1 cores (cpus 0), memcached on \
             127.0.0.1:11311, metrics on 127.0.0.1:9464"
        ),
        "{said}"
    );
    assert_eq!(out.matches("Errors: none").count(), 2, "{said}");
    assert!(out.contains("workload mixed (get:90,set:10)"), "{said}");
    let memcached_gets: Vec<u64> = out
        .lines()
        .filter(|l| l.starts_with("percore_requests_total{") && l.contains("op=\"get\""))
        .filter(|l| l.contains("protocol=\"memcached\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect();
    assert!(
        memcached_gets.len() == 1 && memcached_gets[0] > 0,
        "the metrics show the memcached gets: {said}"
    );
    assert!(out.contains("percore exit report"), "{said}");
    let svg = std::fs::read_to_string(&plot).expect("the first load run wrote its plot");
    assert!(
        svg.starts_with("<svg") && svg.contains("get latency"),
        "{}",
        &svg[..200.min(svg.len())]
    );
}
