//! The memcached front end over real TCP: both protocols on one store, replies in order across
//! cores, many-key gets, memcached's answers to bad input, and the limits that keep a client
//! from holding memory. Third-party clients and tools are in `tests/memcached_third_party.rs`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{block_on, test_cores, Client, Op, Server, Status};
use percore::protocol::shard::owner_of;

fn server() -> Server {
    let cores = test_cores().to_string();
    Server::start(&[
        "--cores",
        &cores,
        "--memcached-listen",
        "127.0.0.1:0",
        "--memory",
        "64MiB",
    ])
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.memcached.expect("memcached listener")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends `request` and reads until the reply is `expected`'s length, then compares.
fn exchange(stream: &mut TcpStream, request: &[u8], expected: &[u8]) {
    stream.write_all(request).unwrap();
    let mut got = vec![0u8; expected.len()];
    stream.read_exact(&mut got).unwrap_or_else(|e| {
        panic!(
            "reading {} bytes for {:?}: {e}",
            expected.len(),
            String::from_utf8_lossy(request)
        )
    });
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected),
        "reply to {:?}",
        String::from_utf8_lossy(&request[..request.len().min(200)])
    );
}

/// Keys `k0..` owned by each core.
fn keys_by_core(cores: usize, per_core: usize) -> Vec<Vec<String>> {
    let mut by_core = vec![Vec::new(); cores];
    let mut i = 0;
    while by_core.iter().any(|k| k.len() < per_core) {
        let key = format!("key-{i}");
        let owner = owner_of(key.as_bytes(), cores);
        if by_core[owner].len() < per_core {
            by_core[owner].push(key);
        }
        i += 1;
    }
    by_core
}

#[test]
fn a_key_set_over_one_protocol_reads_back_identical_over_the_other() {
    let server = server();
    let mut text = connect(&server);
    let value: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let mut request = b"set from-text 7 0 5000\r\n".to_vec();
    request.extend_from_slice(&value);
    request.extend_from_slice(b"\r\n");
    exchange(&mut text, &request, b"STORED\r\n");
    block_on(async {
        let mut native = Client::connect(server.addr).await.unwrap();
        let got = native.get(b"from-text").await.unwrap();
        assert_eq!(got.map(|(v, _)| v), Some(value.clone()));
        native
            .set(b"from-native", b"binary\r\n\0value", 0)
            .await
            .unwrap();
    });
    exchange(
        &mut text,
        b"get from-native\r\n",
        b"VALUE from-native 0 14\r\nbinary\r\n\0value\r\nEND\r\n",
    );
}

#[test]
fn pipelined_replies_come_back_in_request_order_across_cores() {
    let server = server();
    let cores = test_cores();
    let by_core = keys_by_core(cores, 50);
    let mut stream = connect(&server);
    // Interleave keys of every core so local replies are ready before forwarded ones.
    let mut keys = Vec::new();
    for i in 0..50 {
        for core in &by_core {
            keys.push(core[i].clone());
        }
    }
    let (mut request, mut expected) = (Vec::new(), Vec::new());
    for (i, key) in keys.iter().enumerate() {
        let value = format!("value-{i}-{key}");
        request.extend_from_slice(
            format!("set {key} {i} 0 {}\r\n{value}\r\n", value.len()).as_bytes(),
        );
        expected.extend_from_slice(b"STORED\r\n");
        if i % 3 == 0 {
            request.extend_from_slice(format!("get {key}\r\n").as_bytes());
            expected.extend_from_slice(
                format!("VALUE {key} {i} {}\r\n{value}\r\nEND\r\n", value.len()).as_bytes(),
            );
        }
        if i % 7 == 0 {
            request.extend_from_slice(b"mn\r\n");
            expected.extend_from_slice(b"MN\r\n");
        }
    }
    exchange(&mut stream, &request, &expected);

    // One get of every key: the VALUEs in the order asked, then END.
    let mut get = b"get".to_vec();
    let mut want = Vec::new();
    for (i, key) in keys.iter().enumerate().rev() {
        get.extend_from_slice(format!(" {key} missing-{i}").as_bytes());
        let value = format!("value-{i}-{key}");
        want.extend_from_slice(
            format!("VALUE {key} {i} {}\r\n{value}\r\n", value.len()).as_bytes(),
        );
    }
    get.extend_from_slice(b"\r\n");
    want.extend_from_slice(b"END\r\n");
    exchange(&mut stream, &get, &want);
}

#[test]
fn a_get_of_more_keys_than_the_in_flight_window_still_answers_all_in_order() {
    let cores = test_cores().to_string();
    let server = Server::start(&[
        "--cores",
        &cores,
        "--memcached-listen",
        "127.0.0.1:0",
        "--max-inflight",
        "4",
    ]);
    let mut stream = connect(&server);
    let (mut sets, mut stored) = (Vec::new(), Vec::new());
    let (mut get, mut want) = (b"get".to_vec(), Vec::new());
    for i in 0..300 {
        sets.extend_from_slice(
            format!("set m{i} 0 0 {}\r\n{i}\r\n", i.to_string().len()).as_bytes(),
        );
        stored.extend_from_slice(b"STORED\r\n");
        get.extend_from_slice(format!(" m{i}").as_bytes());
        want.extend_from_slice(
            format!("VALUE m{i} 0 {}\r\n{i}\r\n", i.to_string().len()).as_bytes(),
        );
    }
    get.extend_from_slice(b"\r\n");
    want.extend_from_slice(b"END\r\n");
    exchange(&mut stream, &sets, &stored);
    exchange(&mut stream, &get, &want);
}

#[test]
fn classic_commands_behave_as_memcached_documents() {
    let server = server();
    let mut s = connect(&server);
    exchange(
        &mut s,
        b"add a 1 0 1\r\nx\r\nadd a 1 0 1\r\ny\r\n",
        b"STORED\r\nNOT_STORED\r\n",
    );
    exchange(&mut s, b"replace nope 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    exchange(
        &mut s,
        b"append a 0 0 2\r\nyz\r\nprepend a 0 0 1\r\nw\r\n",
        b"STORED\r\nSTORED\r\n",
    );
    exchange(&mut s, b"get a\r\n", b"VALUE a 1 4\r\nwxyz\r\nEND\r\n");
    exchange(
        &mut s,
        b"set n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\n",
        b"STORED\r\n15\r\n0\r\n",
    );
    exchange(
        &mut s,
        b"set big 0 0 20\r\n18446744073709551615\r\nincr big 1\r\n",
        b"STORED\r\n0\r\n",
    );
    exchange(
        &mut s,
        b"incr a 1\r\nincr missing 1\r\n",
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\nNOT_FOUND\r\n",
    );
    exchange(
        &mut s,
        b"delete a\r\ndelete a\r\n",
        b"DELETED\r\nNOT_FOUND\r\n",
    );
    exchange(
        &mut s,
        b"touch n 100\r\ntouch gone 1\r\n",
        b"TOUCHED\r\nNOT_FOUND\r\n",
    );
    exchange(
        &mut s,
        b"set q 0 0 1 noreply\r\nq\r\nget q\r\n",
        b"VALUE q 0 1\r\nq\r\nEND\r\n",
    );
    exchange(
        &mut s,
        b"set e 0 -1 1\r\ne\r\nget e\r\n",
        b"STORED\r\nEND\r\n",
    );
    exchange(&mut s, b"verbosity 1\r\nmn\r\n", b"OK\r\nMN\r\n");
    exchange(&mut s, b"flush_all\r\nget n q\r\n", b"OK\r\nEND\r\n");
    exchange(&mut s, b"set t 0 1 1\r\nt\r\n", b"STORED\r\n");
    std::thread::sleep(Duration::from_millis(2100));
    exchange(&mut s, b"get t\r\n", b"END\r\n");
}

#[test]
fn gets_and_cas_race_so_exactly_one_writer_wins() {
    let server = server();
    let mut a = connect(&server);
    let mut b = connect(&server);
    exchange(&mut a, b"set c 0 0 1\r\n0\r\n", b"STORED\r\n");
    let cas_of = |s: &mut TcpStream| {
        s.write_all(b"gets c\r\n").unwrap();
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while !got.ends_with(b"END\r\n") {
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&got).into_owned();
        line.split_whitespace()
            .nth(4)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let (ca, cb) = (cas_of(&mut a), cas_of(&mut b));
    assert_eq!(ca, cb);
    exchange(
        &mut a,
        format!("cas c 0 0 1 {ca}\r\na\r\n").as_bytes(),
        b"STORED\r\n",
    );
    exchange(
        &mut b,
        format!("cas c 0 0 1 {cb}\r\nb\r\n").as_bytes(),
        b"EXISTS\r\n",
    );
    exchange(&mut b, b"cas none 0 0 1 1\r\nb\r\n", b"NOT_FOUND\r\n");
    exchange(&mut b, b"get c\r\n", b"VALUE c 0 1\r\na\r\nEND\r\n");
}

#[test]
fn meta_commands() {
    let server = server();
    let mut s = connect(&server);
    exchange(&mut s, b"ms mk 2 T0 F5\r\nhi\r\n", b"HD\r\n");
    exchange(
        &mut s,
        b"mg mk v f t k O77\r\n",
        b"VA 2 f5 t-1 kmk O77\r\nhi\r\n",
    );
    exchange(
        &mut s,
        b"mg nothere v\r\nmg nothere v q\r\nmn\r\n",
        b"EN\r\nMN\r\n",
    );
    exchange(
        &mut s,
        b"ms bWs= 1 b\r\nx\r\nmg bWs= b v k\r\n",
        b"HD\r\nVA 1 kbWs= b\r\nx\r\n",
    );
    exchange(
        &mut s,
        b"ma cnt N0 J5 v\r\nma cnt D3 v\r\nma cnt MD D10 v\r\n",
        b"VA 1\r\n5\r\nVA 1\r\n8\r\nVA 1\r\n0\r\n",
    );
    exchange(
        &mut s,
        b"md mk\r\nmd mk\r\nmd mk q\r\nmn\r\n",
        // `q` hides HD, not NF (memcached's rule).
        b"HD\r\nNF\r\nNF\r\nMN\r\n",
    );
    exchange(&mut s, b"mg x !\r\n", b"CLIENT_ERROR invalid flag\r\n");
}

#[test]
fn bad_input_gets_memcached_answers_and_the_stream_stays_in_step() {
    let server = server();
    let mut s = connect(&server);
    exchange(&mut s, b"bogus\r\n", b"ERROR\r\n");
    let long_key = format!("get {}\r\n", "k".repeat(251));
    exchange(
        &mut s,
        long_key.as_bytes(),
        b"CLIENT_ERROR bad command line format\r\n",
    );
    exchange(
        &mut s,
        b"get bad\0key\r\n",
        b"CLIENT_ERROR bad command line format\r\n",
    );
    exchange(
        &mut s,
        b"set k 0 0 2\r\nabc\r\n",
        b"CLIENT_ERROR bad data chunk\r\nERROR\r\n",
    );
    // Too large: answered at once, its data block discarded as it arrives.
    let n = (1 << 20) + 1;
    s.write_all(format!("set huge 0 0 {n}\r\n").as_bytes())
        .unwrap();
    let mut head = [0u8; 41];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[..], b"SERVER_ERROR object too large for cache\r\n");
    let chunk = vec![b'z'; 64 << 10];
    let mut left = n + 2;
    while left > 0 {
        let take = left.min(chunk.len());
        s.write_all(&chunk[..take]).unwrap();
        left -= take;
    }
    exchange(
        &mut s,
        b"get huge\r\nversion\r\n",
        format!("END\r\nVERSION {}\r\n", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    // The largest value fits.
    let mut max = format!("set max 0 0 {}\r\n", 1 << 20).into_bytes();
    max.extend(std::iter::repeat_n(b'm', 1 << 20));
    max.extend_from_slice(b"\r\n");
    exchange(&mut s, &max, b"STORED\r\n");

    // A line over the limit is answered and the connection closed; others are unaffected.
    let mut other = connect(&server);
    s.write_all(&vec![b'a'; 70 << 10]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        "CLIENT_ERROR line too long\r\n"
    );
    exchange(&mut other, b"mn\r\n", b"MN\r\n");
}

#[test]
fn stats_counts_what_was_sent() {
    let server = server();
    let mut s = connect(&server);
    let stat = |s: &mut TcpStream, name: &str| -> u64 {
        s.write_all(b"stats\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"END\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    };
    let (gets, sets, items) = (
        stat(&mut s, "cmd_get"),
        stat(&mut s, "cmd_set"),
        stat(&mut s, "curr_items"),
    );
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..40 {
        request.extend_from_slice(format!("set s{i} 0 0 1\r\nv\r\n").as_bytes());
        expected.extend_from_slice(b"STORED\r\n");
    }
    request.extend_from_slice(b"get s0 s1 s2 s3 nope\r\n");
    for i in 0..4 {
        expected.extend_from_slice(format!("VALUE s{i} 0 1\r\nv\r\n").as_bytes());
    }
    expected.extend_from_slice(b"END\r\n");
    exchange(&mut s, &request, &expected);
    assert_eq!(stat(&mut s, "cmd_set") - sets, 40);
    assert_eq!(stat(&mut s, "cmd_get") - gets, 5);
    assert_eq!(stat(&mut s, "curr_items") - items, 40);
    assert_eq!(stat(&mut s, "threads"), test_cores() as u64);
    block_on(async {
        let mut native = Client::connect(server.addr).await.unwrap();
        let reply = native.call(&Op::Get { key: b"s7" }).await.unwrap();
        assert_eq!(reply.status(), Status::Ok);
    });
}
