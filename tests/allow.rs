//! `--allow`: a connection from outside the listed networks is closed at accept on every
//! listener (native, shard ports, memcached, metrics), counted in the exit report and logged at most once a second per core; a listener
//! reachable beyond loopback while only loopback is admitted warns at start. The clients here
//! are sources of 127.0.0.0/8 (all loopback on Linux); tests/fleet.rs checks the same across
//! network namespaces.

mod common;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Asks a memcached listener for its version and returns the reply line.
fn memcached_version(wire: &mut Wire) -> String {
    wire.send(b"version\r\n");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        wire.s.read_exact(&mut byte).expect("a version reply");
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).trim_end().to_owned()
}

#[test]
fn only_clients_inside_allow_are_served_on_every_listener() {
    let cores = test_cores();
    let base = free_port_run(cores as u16);
    let server = Server::start_with(
        &[
            "--cores",
            &cores.to_string(),
            "--allow",
            "127.0.0.2,127.0.9.0/24",
            "--memcached-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--shard-ports",
            &base.to_string(),
        ],
        |c| {
            c.stderr(Stdio::piped());
        },
    );
    let memcached = server.memcached.expect("a memcached listener");
    let metrics = server.metrics.expect("a metrics listener");
    let mut native: Vec<SocketAddr> = vec![server.addr];
    native.extend(
        server
            .shard_ports
            .iter()
            .map(|&p| SocketAddr::new(ip("127.0.0.1"), p)),
    );

    let started = Instant::now();
    let mut refused = 0;
    for source in ["127.0.0.2", "127.0.9.77"] {
        for &addr in &native {
            Wire::connect_from(ip(source), addr).ping(7);
        }
        let mut text = Wire::connect_from(ip(source), memcached);
        assert!(memcached_version(&mut text).starts_with("VERSION "));
        let mut scrape = Wire::connect_from(ip(source), metrics);
        scrape.send(b"GET /metrics HTTP/1.1\r\nHost: percore\r\nConnection: close\r\n\r\n");
        let reply = scrape.expect_end(Instant::now() + Duration::from_secs(10));
        assert!(
            reply.starts_with(b"HTTP/1.1 200"),
            "{source} scraped: {reply:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for source in ["127.0.0.1", "127.0.0.3", "127.0.10.1"] {
        for &addr in native.iter().chain([&memcached, &metrics]) {
            // Closed before the server reads a byte: nothing needs sending to find out.
            let said = Wire::connect_from(ip(source), addr).expect_end(deadline);
            assert!(said.is_empty(), "{source} -> {addr} was answered: {said:?}");
            refused += 1;
        }
    }
    let elapsed = started.elapsed();
    // The clients that were allowed are still served, and /metrics counts the refusals.
    Wire::connect_from(ip("127.0.0.2"), server.addr).ping(8);
    let mut scrape = Wire::connect_from(ip("127.0.0.2"), metrics);
    scrape.send(b"GET /metrics HTTP/1.1\r\nHost: percore\r\nConnection: close\r\n\r\n");
    let page = String::from_utf8(scrape.expect_end(deadline)).unwrap();
    let counted: u64 = page
        .lines()
        .filter(|l| l.starts_with("percore_connections_disallowed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, refused, "{page}");

    let stopped = server.stop(Duration::from_secs(10));
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(
        report_core_sum(&stopped.stdout, "disallowed"),
        refused,
        "{}",
        stopped.stdout
    );
    let lines: Vec<&str> = stopped
        .stderr
        .lines()
        .filter(|l| l.contains("outside --allow"))
        .collect();
    assert!(!lines.is_empty(), "a refusal is logged: {}", stopped.stderr);
    assert!(
        lines.iter().all(|l| l.contains("127.0.9.0/24")),
        "the log names the list: {lines:?}"
    );
    // At most one line per core per started second (and the first).
    let most = cores as u64 * (elapsed.as_secs() + 2);
    assert!(
        (lines.len() as u64) <= most.min(refused),
        "{} lines for {refused} refusals in {elapsed:?} on {cores} cores: {lines:?}",
        lines.len()
    );
}

/// Starts `percore ARGS` on one core with stderr piped, waits for its listening line, stops it
/// and returns everything it wrote on stderr. Its stdout is closed after the first line, as by
/// `percore | head -1`: the exit report is lost, but the server must still exit 0.
fn stderr_of_a_start(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["--cores", "1"])
        .args(args)
        .env("PERCORE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("percore starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("percore listening on"), "{first}");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_listener_beyond_loopback_warns_while_only_loopback_is_admitted() {
    // Bound to every interface for a moment; nothing connects, and only loopback is admitted.
    let stderr = stderr_of_a_start(&["--listen", "0.0.0.0:0"]);
    assert!(
        stderr.contains("--listen 0.0.0.0:") && stderr.contains("admits only loopback"),
        "{stderr}"
    );
    let stderr = stderr_of_a_start(&["--listen", "127.0.0.1:0", "--memcached-listen", "0.0.0.0:0"]);
    assert!(stderr.contains("--memcached-listen 0.0.0.0:"), "{stderr}");
    assert!(!stderr.contains("--listen 127.0.0.1"), "{stderr}");

    let quiet = stderr_of_a_start(&["--listen", "0.0.0.0:0", "--allow", "10.0.0.0/8"]);
    assert!(!quiet.contains("admits only loopback"), "{quiet}");
    let quiet = stderr_of_a_start(&["--listen", "127.0.0.1:0"]);
    assert!(!quiet.contains("admits only loopback"), "{quiet}");
}

#[test]
fn a_bad_allow_list_is_refused_at_start() {
    for bad in ["10.0.0.0/33", "10.0.0.0/8,", "localhost"] {
        let out = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["--listen", "127.0.0.1:0", "--allow", bad])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--allow") && !stderr.contains("panicked"),
            "{bad}: {stderr}"
        );
    }
}
