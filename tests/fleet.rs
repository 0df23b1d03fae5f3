//! percore as a fleet, on hosts made here: network namespaces joined by a bridge
//! (tests/common/netns.rs, over tools/fleet.sh), one percore in each, nutcracker (twemproxy) in
//! front. Needs root to make the namespaces, and fails (does not skip) without it; needs
//! nutcracker (tools/install-test-deps.sh) and percore-load built (`cargo build --workspace`).
//!
//! - through nutcracker, every reply checked: each host holds about a third of the keys, and
//!   exactly the keys the native client's ketama ring gives it (the two place keys alike);
//! - the native fleet client and `percore-load --distribute`: every key on its ring host and
//!   its core there, the same across runs, and no request forwarded between cores;
//! - a host killed mid-run: its keys fail as errors (native client) or fail over (nutcracker
//!   ejects it), other hosts' keys are unaffected, it serves again when back; no wrong value;
//! - a host added: only its share (about 1/(K+1)) of the keys moves, all of them to it;
//! - `--allow`: a host admitting only the switch serves it, and closes connections from
//!   another host of the subnet at accept, on every listener.
//!
//! The tests take turns (each loads every CPU); the file runs in about half a minute.

mod common;
#[path = "common/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Output;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netns::{load_bin, Fleet};
use percore::client::fleet::{FleetClient, FleetError, FleetOptions, Ring};
use percore::client::Client;
use percore::protocol::shard::owner_of;
use percore::runtime::block_on;

/// One fleet at a time: each loads every CPU of the machine.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(i: usize) -> Vec<u8> {
    format!("fleet:{i:06}").into_bytes()
}

fn value(i: usize, generation: u32) -> Vec<u8> {
    format!("value {i} generation {generation} {}", "x".repeat(i % 50)).into_bytes()
}

/// percore-load's key `index` of `--key-size 16`: `k` and the number, zero-padded.
fn load_key(index: usize) -> Vec<u8> {
    format!("k{index:015}").into_bytes()
}

/// Timeouts far beyond what a healthy host needs even on a loaded CI machine (a timeout here
/// would be an error the test did not cause); a killed host is noticed at once anyway (its
/// address refuses connections), and retried soon.
fn options() -> FleetOptions {
    FleetOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        retry_after: Duration::from_millis(200),
    }
}

/// Runs percore-load in the switch namespace with `args` and `--json`, and returns its exit,
/// output and JSON.
fn load(fleet: &Fleet, args: &[&str]) -> (Output, serde_json::Value) {
    let json = std::env::temp_dir().join(format!("{}-load-{}.json", fleet.name, rand_suffix()));
    let out = fleet
        .command(load_bin())
        .args(["--cores", "1", "--quiet", "--idle-poll", "0s"])
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("percore-load runs");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "percore-load wrote no JSON ({})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&json);
    (out, serde_json::from_str(&text).expect("JSON"))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The native targets of `fleet`, as `--target` arguments.
fn target_args(fleet: &Fleet, addr: impl Fn(usize) -> SocketAddr) -> Vec<String> {
    (0..fleet.hosts.len())
        .flat_map(|i| ["--target".to_owned(), addr(i).to_string()])
        .collect()
}

/// Every host's per-core (items, forwarded), read over the native protocol.
fn native_stats(fleet: &Fleet) -> Vec<Vec<(u64, u64)>> {
    let hosts = fleet.native_hosts();
    fleet.in_switch(move || {
        block_on(async move {
            let mut out = Vec::new();
            for (_, addr) in hosts {
                let mut client = Client::connect(addr).await.expect("connect for Stats");
                let stats = client.stats().await.expect("Stats");
                out.push(stats.iter().map(|s| (s.items, s.forwarded)).collect());
            }
            out
        })
    })
}

/// How many of `keys` the ring of `names` gives each host.
fn predicted(names: &[String], keys: impl Iterator<Item = Vec<u8>>) -> Vec<u64> {
    let ring = Ring::ketama(names);
    let mut per_host = vec![0u64; names.len()];
    for k in keys {
        per_host[ring.host_of(&k)] += 1;
    }
    per_host
}

#[test]
fn through_nutcracker_every_reply_is_right_and_each_host_holds_a_third() {
    let _turn = turn();
    let fleet = Fleet::start(3, 1);
    let keys = 6000;
    let nutcracker = fleet.nutcracker_addr().to_string();
    let (out, json) = load(
        &fleet,
        &[
            "--protocol",
            "memcached",
            "--target",
            &nutcracker,
            "--workload",
            "mixed",
            "--mix",
            "get:80,set:20",
            "--keys",
            &keys.to_string(),
            "--prefill",
            "--verify-keys",
            "--requests",
            "20000",
            "--connections",
            "4",
            "--pipeline",
            "8",
        ],
    );
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(json["errors_total"], 0, "{}", stdout(&out));
    assert_eq!(json["get_misses"], 0, "prefilled, nothing deletes");
    assert_eq!(json["verify"]["verified"], keys, "{}", stdout(&out));

    let items: Vec<u64> = (0..3)
        .map(|i| fleet.memcached_stat(i, "curr_items"))
        .collect();
    eprintln!("keys per host through nutcracker (K=3, {keys} keys): {items:?}");
    assert_eq!(items.iter().sum::<u64>(), keys, "every key stored once");
    for &n in &items {
        let share = n as f64 / keys as f64;
        assert!((0.25..0.42).contains(&share), "{items:?}");
    }
    // nutcracker's ring (md5 ketama over the servers' names) is the native client's: the same
    // hosts get the very same keys.
    let names: Vec<String> = (0..3).map(netns::host_name).collect();
    assert_eq!(items, predicted(&names, (0..keys as usize).map(load_key)));

    // And percore-load --distribute straight to the memcached listeners, its hosts named the
    // same, finds every key where nutcracker put it: a get that misses there is an error.
    let targets: Vec<String> = (0..3)
        .flat_map(|i| {
            [
                "--target".to_owned(),
                format!("{}={}", netns::host_name(i), fleet.memcached_addr(i)),
            ]
        })
        .collect();
    let mut args: Vec<&str> = targets.iter().map(String::as_str).collect();
    let keys_arg = keys.to_string();
    args.extend([
        "--protocol",
        "memcached",
        "--distribute",
        "ketama",
        "--workload",
        "get",
        "--keys",
        &keys_arg,
        "--requests",
        "6000",
        "--connections",
        "2",
        "--pipeline",
        "8",
    ]);
    let (out, json) = load(&fleet, &args);
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(json["errors_total"], 0, "{}", stdout(&out));
    assert_eq!(
        json["get_misses"], 0,
        "a key was not where nutcracker put it"
    );
    assert_eq!(json["hosts"][1]["name"], "h1");
}

#[test]
fn the_native_fleet_client_sends_each_key_to_its_host_and_core_only() {
    let _turn = turn();
    let cores = common::test_cores();
    let fleet = Fleet::start(3, cores);
    let hosts = fleet.native_hosts();
    let names: Vec<String> = hosts.iter().map(|(n, _)| n.clone()).collect();
    let n = 3000;

    let written = hosts.clone();
    let counts = fleet.in_switch(move || {
        block_on(async move {
            let mut fleet = FleetClient::new(&written, options());
            for i in 0..n {
                fleet.set(&key(i), &value(i, 1), 0).await.expect("set");
            }
            for i in 0..n {
                let got = fleet.get(&key(i)).await.expect("get");
                assert_eq!(got.map(|(v, _)| v), Some(value(i, 1)), "key {i}");
            }
            fleet.counts()
        })
    });
    // A second client, as another run would: the same keys on the same hosts.
    let again = hosts.clone();
    fleet.in_switch(move || {
        block_on(async move {
            let mut fleet = FleetClient::new(&again, options());
            for i in 0..n {
                let got = fleet.get(&key(i)).await.expect("get");
                assert_eq!(
                    got.map(|(v, _)| v),
                    Some(value(i, 1)),
                    "key {i}, second run"
                );
            }
        })
    });

    let expected_hosts = predicted(&names, (0..n).map(key));
    let stats = native_stats(&fleet);
    for (h, per_core) in stats.iter().enumerate() {
        let items: u64 = per_core.iter().map(|s| s.0).sum();
        assert_eq!(items, expected_hosts[h], "host {h}: {stats:?}");
        // Each core holds exactly the keys it owns: nothing went through another core.
        let ring = Ring::ketama(&names);
        let mut per_core_expected = vec![0u64; per_core.len()];
        for i in (0..n).filter(|&i| ring.host_of(&key(i)) == h) {
            per_core_expected[owner_of(&key(i), per_core.len())] += 1;
        }
        let per_core_items: Vec<u64> = per_core.iter().map(|s| s.0).collect();
        assert_eq!(per_core_items, per_core_expected, "host {h}");
        assert!(per_core.iter().all(|s| s.1 == 0), "forwarded: {stats:?}");
    }
    let requests: Vec<u64> = counts.iter().map(|c| c.requests).collect();
    assert_eq!(
        requests,
        expected_hosts.iter().map(|h| h * 2).collect::<Vec<_>>()
    );
    assert!(counts.iter().all(|c| c.errors == 0), "{counts:?}");

    // percore-load --distribute routes the same way: its keys land on the ring's hosts, each on
    // its own core, and nothing is forwarded. Run twice with a keyspace of its own.
    let keys = 4000usize;
    let targets = target_args(&fleet, |i| fleet.native_addr(i));
    let mut args: Vec<&str> = targets.iter().map(String::as_str).collect();
    let keys_arg = keys.to_string();
    args.extend([
        "--distribute",
        "ketama",
        "--workload",
        "mixed",
        "--mix",
        "get:90,set:10",
        "--keys",
        &keys_arg,
        "--prefill",
        "--verify-keys",
        "--requests",
        "20000",
        "--connections",
        "4",
        "--pipeline",
        "8",
    ]);
    let mut per_host_runs = Vec::new();
    for _ in 0..2 {
        let (out, json) = load(&fleet, &args);
        assert!(out.status.success(), "{}", stdout(&out));
        assert_eq!(json["errors_total"], 0, "{}", stdout(&out));
        let hosts = json["hosts"].as_array().expect("per-host report").clone();
        assert_eq!(hosts.len(), 3);
        assert!(stdout(&out).contains("Per host (all phases):"));
        per_host_runs.push(hosts);
    }
    eprintln!("percore-load --distribute per host: {per_host_runs:?}");
    let load_expected = predicted(&names, (0..keys).map(load_key));
    let stats = native_stats(&fleet);
    for (h, per_core) in stats.iter().enumerate() {
        let items: u64 = per_core.iter().map(|s| s.0).sum();
        assert_eq!(items, expected_hosts[h] + load_expected[h], "host {h}");
        assert!(per_core.iter().all(|s| s.1 == 0), "forwarded: {stats:?}");
    }

    // The forwarded counters do count: the same gets through each host's shared port reach
    // any core, and those that land on a non-owner are forwarded.
    if cores > 1 {
        let hosts = hosts.clone();
        fleet.in_switch(move || {
            block_on(async move {
                let ring = Ring::ketama(&names);
                for (h, (_, addr)) in hosts.iter().enumerate() {
                    let mut plain = Client::connect(*addr).await.unwrap();
                    for i in (0..n).filter(|&i| ring.host_of(&key(i)) == h) {
                        assert!(plain.get(&key(i)).await.unwrap().is_some());
                    }
                }
            })
        });
        let forwarded: u64 = native_stats(&fleet).iter().flatten().map(|s| s.1).sum();
        assert!(
            forwarded > 0,
            "gets through the shared port were never forwarded"
        );
    }
}

/// nutcracker's stats (JSON on its stats port): the number of times `server` was ejected.
fn nutcracker_ejects(fleet: &Fleet) -> u64 {
    let addr: SocketAddr = format!("{}.254:22222", netns::SUBNET).parse().unwrap();
    let text = fleet.in_switch(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    });
    let json: serde_json::Value = serde_json::from_str(&text).expect("nutcracker stats JSON");
    json["percore"]["server_ejects"]
        .as_u64()
        .unwrap_or_else(|| panic!("no server_ejects in {text}"))
}

/// Sends `get` of every key in `keys` to the memcached-protocol server at `addr` and returns
/// the value of each (ASCII values only). A `SERVER_ERROR` (nutcracker's answer when it could
/// not reach the server in time) is retried, as twemproxy asks of its clients; ten in a row for
/// one key fail the test.
fn memcached_get_all(addr: SocketAddr, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let mut line = b"get ".to_vec();
        line.extend_from_slice(key);
        line.extend_from_slice(b"\r\n");
        let mut attempts = 0;
        let text = loop {
            stream.write_all(&line).unwrap();
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            let complete = |r: &[u8]| {
                r.ends_with(b"END\r\n") || (r.starts_with(b"SERVER_ERROR") && r.ends_with(b"\r\n"))
            };
            while !complete(&reply) {
                let n = stream.read(&mut buf).expect("get reply");
                assert!(n > 0, "closed");
                reply.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8(reply).expect("ASCII");
            if !text.starts_with("SERVER_ERROR") {
                break text;
            }
            attempts += 1;
            assert!(attempts < 10, "get {key:?}: {text}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let found = text
            .strip_prefix("VALUE ")
            .and_then(|rest| rest.split_once("\r\n"))
            .map(|(_, data)| data.trim_end_matches("\r\nEND\r\n").as_bytes().to_vec());
        out.push(found);
    }
    out
}

#[test]
fn a_host_killed_mid_run_fails_alone_and_serves_again_when_back() {
    let _turn = turn();
    let mut fleet = Fleet::start(3, 1);
    let hosts = fleet.native_hosts();
    let names: Vec<String> = hosts.iter().map(|(n, _)| n.clone()).collect();
    let ring = Ring::ketama(&names);
    let n = 1500;
    let victim = 1;
    let on_victim = (0..n).filter(|&i| ring.host_of(&key(i)) == victim).count();

    // The native fleet client, one phase at a time in the same client: all up, victim down,
    // victim back (empty: it lost its store).
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    let client_hosts = hosts.clone();
    let client = {
        let file = std::fs::File::open(format!("/run/netns/{}", fleet.switch_ns())).unwrap();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only; the file is open.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            block_on(async move {
                let mut fleet = FleetClient::new(&client_hosts, options());
                for i in 0..n {
                    fleet.set(&key(i), &value(i, 1), 0).await.expect("set");
                }
                tx.send("written").unwrap();
                back_rx.recv().unwrap(); // the victim is dead now
                let (mut failed, mut wrong) = (0, 0);
                for i in 0..n {
                    match fleet.get(&key(i)).await {
                        Ok(Some((v, _))) if v == value(i, 1) => {
                            assert_ne!(fleet.host_of(&key(i)), victim)
                        }
                        Ok(_) => wrong += 1,
                        Err(e @ FleetError::Unreachable { .. }) => {
                            assert_eq!(e.host(), victim, "{e}");
                            failed += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                tx.send("read while down").unwrap();
                back_rx.recv().unwrap(); // the victim runs again
                runtime_sleep(options().retry_after).await;
                let mut missing_after = 0;
                for i in 0..n {
                    match fleet.get(&key(i)).await.expect("every host is up") {
                        Some((v, _)) => assert_eq!(v, value(i, 1), "key {i}"),
                        None => {
                            assert_eq!(fleet.host_of(&key(i)), victim);
                            missing_after += 1;
                        }
                    }
                }
                let victims: Vec<usize> = (0..n)
                    .filter(|&i| fleet.host_of(&key(i)) == victim)
                    .collect();
                for i in victims {
                    fleet
                        .set(&key(i), &value(i, 2), 0)
                        .await
                        .expect("set again");
                    let got = fleet.get(&key(i)).await.expect("get again");
                    assert_eq!(got.map(|(v, _)| v), Some(value(i, 2)));
                }
                (failed, wrong, missing_after, fleet.counts())
            })
        })
    };
    assert_eq!(rx.recv().unwrap(), "written");
    fleet.kill_host(victim);
    back_tx.send(()).unwrap();
    assert_eq!(rx.recv().unwrap(), "read while down");
    fleet.reboot_host(victim);
    back_tx.send(()).unwrap();
    let (failed, wrong, missing_after, counts) = client.join().unwrap();
    eprintln!(
        "native client, host {victim} killed: {failed} errors (its {on_victim} keys), {wrong} \
         wrong values; back: {missing_after} misses (its store was lost); counts {counts:?}"
    );
    assert_eq!(wrong, 0);
    assert_eq!(failed, on_victim, "exactly the victim's keys failed");
    assert_eq!(missing_after, on_victim, "the restarted victim is empty");
    assert!(counts[victim].connects >= 2, "reconnected: {counts:?}");
    for (h, c) in counts.iter().enumerate() {
        if h != victim {
            assert_eq!(c.errors, 0, "host {h}: {counts:?}");
        }
    }

    // percore-load --distribute while the victim dies: its requests are errors, and no other
    // host's.
    let targets = target_args(&fleet, |i| fleet.native_addr(i));
    let mut args: Vec<String> = targets;
    args.extend(
        [
            "--distribute",
            "ketama",
            "--workload",
            "mixed",
            "--mix",
            "get:80,set:20",
            "--keys",
            "3000",
            "--duration",
            "3s",
            "--rate",
            "6000",
            "--connections",
            "4",
            "--pipeline",
            "8",
        ]
        .map(String::from),
    );
    let run = {
        let args = args.clone();
        let command = fleet.command(load_bin());
        spawn_load(command, args, &fleet.name)
    };
    std::thread::sleep(Duration::from_millis(1200));
    fleet.kill_host(victim);
    let (out, json) = run.finish();
    eprintln!(
        "percore-load --distribute, host {victim} killed at 1.2 s:\n{}",
        stdout(&out)
    );
    let errors = &json["errors"];
    for kind in [
        "corrupt_value",
        "wrong_body",
        "wrong_payload",
        "verify_stale",
    ] {
        assert_eq!(errors[kind], 0, "{kind}: {}", stdout(&out));
    }
    let per_host = json["hosts"].as_array().unwrap();
    assert!(per_host[victim]["errors"].as_u64().unwrap() > 0);
    // Each slot's link to it ended: lost with requests in flight, or closed with none (a
    // killed process's sockets may close cleanly; what follows is host_down all the same).
    let ended = per_host[victim]["connections_lost"].as_u64().unwrap()
        + json["closed_clean"].as_u64().unwrap();
    assert_eq!(ended, 4, "each slot's link to it: {}", stdout(&out));
    assert!(errors["host_down"].as_u64().unwrap() > 0);
    for (h, host) in per_host.iter().enumerate() {
        if h != victim {
            assert_eq!(host["errors"], 0, "host {h}: {}", stdout(&out));
            assert!(host["sent"].as_u64().unwrap() > 0);
        }
    }
    fleet.reboot_host(victim);

    // Through nutcracker: the victim is ejected, its keys go to the other hosts meanwhile, and
    // it is used again after server_retry_timeout.
    let ejects_before = nutcracker_ejects(&fleet);
    let nutcracker = fleet.nutcracker_addr().to_string();
    let twem_args: Vec<String> = [
        "--protocol",
        "memcached",
        "--target",
        &nutcracker,
        "--workload",
        "mixed",
        "--mix",
        "get:80,set:20",
        "--keys",
        "3000",
        "--duration",
        "4s",
        "--rate",
        "4000",
        "--connections",
        "4",
        "--pipeline",
        "8",
        "--timeout",
        "3s",
    ]
    .map(String::from)
    .to_vec();
    let run = spawn_load(fleet.command(load_bin()), twem_args, &fleet.name);
    std::thread::sleep(Duration::from_millis(1000));
    fleet.kill_host(victim);
    std::thread::sleep(Duration::from_millis(1000));
    fleet.reboot_host(victim);
    let (out, json) = run.finish();
    eprintln!(
        "percore-load through nutcracker, host {victim} killed at 1 s, back at 2 s:\n{}",
        stdout(&out)
    );
    // nutcracker answers what it could not get from the victim with SERVER_ERROR (counted as
    // `internal`), until it ejects it; nothing else is wrong, nothing lost.
    assert_eq!(
        json["errors_total"],
        json["errors"]["internal"],
        "{}",
        stdout(&out)
    );
    assert!(json["ops"].as_u64().unwrap() > 8000, "{}", stdout(&out));
    let deadline = Instant::now() + Duration::from_secs(3);
    while nutcracker_ejects(&fleet) <= ejects_before {
        assert!(
            Instant::now() < deadline,
            "nutcracker never ejected the victim: {}",
            fleet.nutcracker_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back in the ring: a key the ring gives the victim is stored there again.
    let memcached_names: Vec<String> = (0..3).map(netns::host_name).collect();
    let twem_ring = Ring::ketama(&memcached_names);
    let probe = (0..)
        .map(key)
        .find(|k| twem_ring.host_of(k) == victim)
        .unwrap();
    let victim_addr = fleet.memcached_addr(victim);
    let nut = fleet.nutcracker_addr();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = probe.clone();
        let stored_there = fleet.in_switch(move || {
            let mut s = TcpStream::connect_timeout(&nut, Duration::from_secs(2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut line = b"set ".to_vec();
            line.extend_from_slice(&probe);
            line.extend_from_slice(b" 0 0 4\r\nback\r\n");
            s.write_all(&line).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            let stored = buf[..n].starts_with(b"STORED");
            stored && memcached_get_all(victim_addr, &[probe])[0].as_deref() == Some(b"back")
        });
        if stored_there {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the victim never got its keys back from nutcracker"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn runtime_sleep(d: Duration) {
    percore::runtime::sleep(d).await
}

/// A percore-load started in the background.
struct Background {
    child: std::process::Child,
    json: std::path::PathBuf,
}

fn spawn_load(mut command: std::process::Command, args: Vec<String>, name: &str) -> Background {
    let json = std::env::temp_dir().join(format!("{name}-bg-{}.json", rand_suffix()));
    let child = command
        .args(["--cores", "1", "--quiet", "--idle-poll", "0s"])
        .args(&args)
        .arg("--json")
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("percore-load starts");
    Background { child, json }
}

impl Background {
    /// Waits for the end (killing it, and failing, if it runs 30 s: every run here is shorter)
    /// and returns its output and JSON.
    fn finish(mut self) -> (Output, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("percore-load did not end within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.child.wait_with_output().expect("percore-load ends");
        let text = std::fs::read_to_string(&self.json).unwrap_or_else(|_| {
            panic!(
                "no JSON ({}):\n{}\n{}",
                out.status,
                stdout(&out),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let _ = std::fs::remove_file(&self.json);
        (out, serde_json::from_str(&text).unwrap())
    }
}

#[test]
fn a_closed_loop_whose_every_key_lives_on_a_killed_host_ends_on_time() {
    let _turn = turn();
    let mut fleet = Fleet::start(2, 1);
    // One key, so every request goes to one host; kill that one and the slots have nothing
    // left to send but requests that cannot go anywhere.
    let names: Vec<String> = (0..2).map(|i| fleet.native_addr(i).to_string()).collect();
    let owner = Ring::ketama(&names).host_of(&load_key(0));
    let mut args = target_args(&fleet, |i| fleet.native_addr(i));
    args.extend(
        [
            "--distribute",
            "ketama",
            "--workload",
            "get",
            "--keys",
            "1",
            "--duration",
            "3s",
            "--connections",
            "2",
            "--pipeline",
            "4",
        ]
        .map(String::from),
    );
    let started = Instant::now();
    let run = spawn_load(fleet.command(load_bin()), args, &fleet.name);
    std::thread::sleep(Duration::from_millis(1000));
    fleet.kill_host(owner);
    let (out, json) = run.finish();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a 3 s run took {:?}",
        started.elapsed()
    );
    let hosts = json["hosts"].as_array().unwrap();
    assert!(
        hosts[owner]["host_down"].as_u64().unwrap() > 0,
        "{}",
        stdout(&out)
    );
    assert_eq!(hosts[1 - owner]["sent"], 0, "{}", stdout(&out));
    assert_eq!(json["errors"]["corrupt_value"], 0);
}

#[test]
fn a_host_added_takes_about_a_quarter_of_the_keys_and_no_other_key_moves() {
    let _turn = turn();
    let mut fleet = Fleet::start(3, 1);
    let n = 4000;
    // Named as nutcracker names them, so that it can be checked against nutcracker below.
    let three = fleet.native_hosts_named_as_nutcracker();
    fleet.in_switch(move || {
        block_on(async move {
            let mut fleet = FleetClient::new(&three, options());
            for i in 0..n {
                fleet.set(&key(i), &value(i, 1), 0).await.expect("set");
            }
        })
    });
    let added = fleet.add_host();
    assert_eq!(added, 3);
    let four = fleet.native_hosts_named_as_nutcracker();
    let (moved, kept) = fleet.in_switch(move || {
        block_on(async move {
            let mut fleet = FleetClient::new(&four, options());
            let (mut moved, mut kept) = (0, 0);
            for i in 0..n {
                match fleet.get(&key(i)).await.expect("get") {
                    // Still where it was, with its value.
                    Some((v, _)) => {
                        assert_eq!(v, value(i, 1));
                        assert_ne!(fleet.host_of(&key(i)), added);
                        kept += 1;
                    }
                    // Moved, and only to the new host.
                    None => {
                        assert_eq!(fleet.host_of(&key(i)), added, "key {i} moved elsewhere");
                        moved += 1;
                    }
                }
            }
            (moved, kept)
        })
    });
    let share = moved as f64 / n as f64;
    eprintln!(
        "host added to 3: {moved} of {n} keys moved ({:.1}%), {kept} stayed",
        share * 100.0
    );
    assert!((0.18..0.32).contains(&share), "moved {share}");

    // nutcracker with the fourth host in its configuration agrees: the moved keys miss through
    // it, the others hit.
    fleet.start_nutcracker();
    let nut = fleet.nutcracker_addr();
    let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
    let got = fleet.in_switch(move || memcached_get_all(nut, &keys));
    let misses = got.iter().filter(|v| v.is_none()).count();
    assert_eq!(misses, moved, "nutcracker places keys as the native ring");
    for (i, v) in got.iter().enumerate() {
        if let Some(v) = v {
            assert_eq!(v, &value(i, 1));
        }
    }
}

/// Connects to `addr`, sends `bytes`, and returns what came back before the server closed
/// (`None` if it answered and kept the connection open for 2 s).
fn send_and_read_to_close(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("TCP connects");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // The server may have closed already: a failed write is a refusal too.
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

#[test]
fn allow_serves_the_listed_network_and_closes_other_hosts_at_accept() {
    let _turn = turn();
    let mut fleet = Fleet::start(2, 1);
    // Host 0 admits only the switch, where the clients run; host 1, on the same subnet, is
    // outside its list.
    fleet.reboot_host_allowing(0, &format!("{}.254/32", netns::SUBNET));
    let native = fleet.native_addr(0);
    let shard = SocketAddr::new(native.ip(), netns::SHARD_PORT_BASE);
    let memcached = fleet.memcached_addr(0);

    let served = fleet.in_switch(move || {
        let version = send_and_read_to_close(memcached, b"version\r\nquit\r\n");
        let pings = block_on(async move {
            let mut out = Vec::new();
            for addr in [native, shard] {
                let mut client = Client::connect(addr).await.expect("connect");
                out.push(client.ping(b"allowed").await.expect("ping"));
            }
            out
        });
        (version, pings)
    });
    let version = String::from_utf8(served.0.expect("quit closes")).unwrap();
    assert!(version.starts_with("VERSION "), "{version}");
    assert_eq!(served.1, [b"allowed".to_vec(), b"allowed".to_vec()]);

    let refused = fleet.in_host(1, move || {
        [native, shard, memcached].map(|addr| send_and_read_to_close(addr, b"version\r\n"))
    });
    for (what, got) in ["native", "shard port", "memcached"].iter().zip(&refused) {
        assert_eq!(
            got.as_deref(),
            Some(&b""[..]),
            "{what}: a host outside --allow must be closed before anything is read"
        );
    }
    let report = fleet.stop_host(0);
    assert_eq!(
        common::report_core_sum(&report, "disallowed"),
        3,
        "{report}"
    );
}
