//! `--metrics-listen` checked by Prometheus's own tools (Debian's `prometheus` package, which
//! tools/install-test-deps.sh installs): `promtool check metrics` lints the classic text
//! format, and a real Prometheus server scrapes percore every second while the test sends a
//! known number of requests, then reads the counter back through Prometheus's query API.
//!
//! Without the tools the tests say so and pass, except under CI=true, where they fail.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{frame, free_port_run, test_cores, Op, Server, Status, Wire};

/// The path of `tool` on PATH; `None` (after saying so) when it is missing outside CI.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let hint = "install Debian's prometheus package (tools/install-test-deps.sh)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is not on PATH under CI=true: {hint}"
        );
        eprintln!("skipped: {name} is not on PATH; {hint}");
    }
    found
}

/// One HTTP/1.0 exchange (so the reply is not chunked and ends with the connection): the
/// status code, the headers' text and the body.
fn http_get(addr: SocketAddr, target: &str, accept: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("a whole reply");
    let reply = String::from_utf8(reply).expect("the reply is UTF-8");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, head.to_owned(), body.to_owned())
}

fn scrape(metrics: SocketAddr, accept: &str) -> (String, String) {
    let (code, head, body) = http_get(metrics, "/metrics", accept);
    assert_eq!(code, 200, "{head}\n{body}");
    (head, body)
}

/// The value of the classic-format sample `series` (name and labels as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The sum over the cores of the classic-format series `name` that has only a core label.
fn sum_plain(text: &str, name: &str) -> f64 {
    (0..test_cores())
        .map(|core| {
            let series = format!("{name}{{core=\"{core}\"}}");
            sample(text, &series).unwrap_or_else(|| panic!("no {series}:\n{text}"))
        })
        .sum()
}

/// Sends `n` pings on one connection, each answered before the next.
fn pings(addr: SocketAddr, n: u64) {
    let mut w = Wire::connect(addr);
    for id in 1..=n {
        w.ping(id);
    }
}

#[test]
fn the_classic_format_lints_clean_under_promtool() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let server = Server::start(&[
        "--cores",
        &test_cores().to_string(),
        "--metrics-listen",
        "127.0.0.1:0",
        "--memcached-listen",
        "127.0.0.1:0",
    ]);
    let metrics = server
        .metrics
        .expect("the listening line names the metrics address");
    // Traffic of every kind, so that the histograms and counters hold something.
    pings(server.addr, 25);
    let mut w = Wire::connect(server.addr);
    for i in 0..20u32 {
        let key = format!("key-{i}");
        w.set(key.as_bytes(), b"value");
        assert_eq!(w.get_len(1000 + u64::from(i), key.as_bytes()), Some(5));
    }
    let (_, status, _) = w.call(&frame(7, &Op::Get { key: b"absent" }));
    assert_eq!(status, Status::NotFound);
    let mut mc = TcpStream::connect(server.memcached.unwrap()).unwrap();
    mc.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    mc.write_all(b"set mc 0 0 2\r\nhi\r\nget mc\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"END\r\n") {
        let n = mc.read(&mut buf).unwrap();
        assert!(n > 0, "memcached connection ended: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }

    let (head, text) = scrape(metrics, "text/plain;version=0.0.4");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool failed: {findings}\n{text}");
    assert_eq!(findings.trim(), "", "promtool's lint findings");

    // What was sent is what is counted, summed over the cores.
    let sum = |name: &str, labels: &str| -> f64 {
        (0..test_cores())
            .map(|core| {
                let series = format!("{name}{{core=\"{core}\",{labels}}}");
                sample(&text, &series).unwrap_or_else(|| panic!("no {series}:\n{text}"))
            })
            .sum()
    };
    assert_eq!(
        sum("percore_requests_total", "op=\"ping\",protocol=\"native\""),
        25.0
    );
    assert_eq!(
        sum("percore_requests_total", "op=\"set\",protocol=\"native\""),
        20.0
    );
    assert_eq!(
        sum("percore_requests_total", "op=\"get\",protocol=\"native\""),
        21.0
    );
    assert_eq!(
        sum(
            "percore_requests_total",
            "op=\"get\",protocol=\"memcached\""
        ),
        1.0
    );
    assert_eq!(sum("percore_replies_total", "status=\"not_found\""), 1.0);
    assert_eq!(sum("percore_replies_total", "status=\"ok\""), 65.0);
    assert_eq!(
        sum("percore_service_time_seconds_count", "op=\"ping\""),
        25.0
    );
    assert_eq!(
        sum(
            "percore_service_time_seconds_bucket",
            "op=\"ping\",le=\"+Inf\""
        ),
        25.0
    );
    // The scrapes are not among percore's connections: the two Wires and the memcached one.
    assert_eq!(sum_plain(&text, "percore_connections_accepted_total"), 3.0);
    assert!(text.contains("percore_build_info{version=\""), "{text}");

    // The same series in OpenMetrics, when asked for.
    let (head, om) = scrape(metrics, "application/openmetrics-text;version=1.0.0");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE percore_requests counter"), "{om}");
    drop((w, mc));
    server.stop(Duration::from_secs(10));
}

/// A Prometheus server of its own: temporary configuration and storage, on a free port.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Prometheus {
    fn start(binary: &PathBuf, target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("percore-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let dir = TempDir(dir);
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: percore\n    static_configs:\n      - targets: \
                 ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port_run(1);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready =
                TcpStream::connect(addr).is_ok() && http_get(addr, "/-/ready", "*/*").0 == 200;
            if ready {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Evaluates `query` now: the vector's samples as (labels, sample timestamp, value).
    fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let mut encoded = String::new();
        for b in query.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let (code, head, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={encoded}"),
            "application/json",
        );
        assert_eq!(code, 200, "{head}\n{body}");
        let reply: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(reply["status"], "success", "{body}");
        reply["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok());
                (r["metric"].clone(), value.expect("a sample value"))
            })
            .collect()
    }

    /// The single value `query` gives, once it gives one.
    fn value(&self, query: &str) -> Option<f64> {
        match self.query(query).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until `query` gives a value that `done` accepts; returns it.
fn wait_for(prometheus: &Prometheus, query: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = prometheus.value(query) {
            if done(v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{query} gave {:?}",
            prometheus.query(query)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_exactly_the_requests_sent() {
    let Some(binary) = tool("prometheus") else {
        return;
    };
    let server = Server::start(&[
        "--cores",
        &test_cores().to_string(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let prometheus = Prometheus::start(&binary, server.metrics.unwrap());
    wait_for(&prometheus, "up{job=\"percore\"}", |up| up == 1.0);

    const PINGS: u64 = 1234;
    let counter = "sum(percore_requests_total{job=\"percore\",op=\"ping\",protocol=\"native\"})";
    // Every core's series has been scraped at least once before the requests.
    let before = wait_for(
        &prometheus,
        "count(percore_requests_total{job=\"percore\",op=\"ping\",protocol=\"native\"})",
        |n| n == test_cores() as f64,
    );
    assert_eq!(before, test_cores() as f64);
    let before = prometheus.value(counter).expect("the counter is there");
    pings(server.addr, PINGS);
    let sent_at = unix_now();
    // Wait for a scrape that began after the last reply: every core's sample is newer.
    let stamped =
        "min(timestamp(percore_requests_total{job=\"percore\",op=\"ping\",protocol=\"native\"}))";
    wait_for(&prometheus, stamped, |t| t > sent_at + 0.01);
    let after = prometheus.value(counter).expect("the counter is there");
    eprintln!("prometheus read percore_requests_total{{op=\"ping\"}}: {before} before, {after} after {PINGS} pings");
    assert_eq!(after - before, PINGS as f64);
    // The scrapes are not among percore's connections: the pings' one is all there was.
    let accepted = prometheus
        .value("sum(percore_connections_accepted_total{job=\"percore\"})")
        .unwrap();
    assert_eq!(accepted, 1.0);
    drop(prometheus);
    server.stop(Duration::from_secs(10));
}

#[test]
fn connections_closed_by_a_timeout_are_counted_by_reason() {
    let server = Server::start(&[
        "--cores",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
        "--idle-timeout",
        "300ms",
        "--frame-timeout",
        "300ms",
    ]);
    let metrics = server.metrics.unwrap();
    let idle = TcpStream::connect(server.addr).unwrap();
    let mut partial = TcpStream::connect(server.addr).unwrap();
    // Half a length prefix: a frame that has started and never completes.
    partial.write_all(&[8, 0]).unwrap();
    let mut left = Wire::connect(server.addr);
    left.ping(1);
    drop(left);
    let closed = |reason: &str| {
        let (_, text) = scrape(metrics, "text/plain");
        let series = format!("percore_connections_closed_total{{core=\"0\",reason=\"{reason}\"}}");
        sample(&text, &series).unwrap_or_else(|| panic!("no {series}:\n{text}"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while closed("idle_timeout") + closed("frame_timeout") + closed("other") < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the connections were not all closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(closed("idle_timeout"), 1.0);
    assert_eq!(closed("frame_timeout"), 1.0);
    assert_eq!(closed("other"), 1.0, "the client that left");
    assert_eq!(closed("slow_reader"), 0.0);
    drop((idle, partial));
    server.stop(Duration::from_secs(10));
}
