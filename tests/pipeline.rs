//! Pipelining and cross-core routing against the real binary.

mod common;
use std::collections::HashSet;

use common::*;
use percore::protocol::shard::owner_of;
use percore::protocol::{ReplyView, ResponseView};

/// 10,000 requests written in one burst: every one is answered exactly once.
#[test]
fn a_burst_of_ten_thousand_requests_is_answered_exactly_once() {
    let server = Server::start(&["--cores", &test_cores().to_string()]);
    block_on(async {
        let mut c = Client::connect(server.addr).await.unwrap();
        let value = [7u8; 32];
        let mut keys = Vec::new();
        for i in 0..10_000u32 {
            let key = format!("burst:{}", i % 500);
            keys.push(key);
        }
        let mut expected = HashSet::new();
        for (i, key) in keys.iter().enumerate() {
            let op = match i % 3 {
                0 => Op::Set {
                    key: key.as_bytes(),
                    value: &value,
                    ttl_ms: 0,
                },
                1 => Op::Get {
                    key: key.as_bytes(),
                },
                _ => Op::Ping { payload: b"p" },
            };
            expected.insert(c.send(&op));
        }
        assert!(c.queued() > 100_000, "the burst is one large write");
        c.flush().await.unwrap();
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let r = c.recv().await.unwrap();
            assert!(expected.contains(&r.id()), "reply to unknown id {}", r.id());
            assert!(seen.insert(r.id()), "id {} answered twice", r.id());
            assert!(
                matches!(r.status(), Status::Ok | Status::NotFound),
                "unexpected status {:?}",
                r.status()
            );
        }
        assert_eq!(seen, expected);
    });
}

/// Keys owned by every shard, written through one core and read back through every other
/// (and its own), so requests are forwarded between cores and answered on the right
/// connection.
#[test]
fn keys_of_every_shard_are_readable_through_every_core() {
    let cores = test_cores();
    let base = free_port_run(cores as u16);
    let server = Server::start(&[
        "--cores",
        &cores.to_string(),
        "--shard-ports",
        &base.to_string(),
    ]);
    assert_eq!(server.shard_ports.len(), cores);
    block_on(async {
        let mut conns = Vec::new();
        for &port in &server.shard_ports {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let mut c = Client::connect(addr).await.unwrap();
            let topo = c.hello("forwarding-test").await.unwrap();
            assert_eq!(topo.shard_ports, server.shard_ports);
            assert_eq!(
                server.shard_ports[topo.shard as usize], port,
                "port i is core i"
            );
            conns.push(c);
        }
        // Ten keys owned by each shard.
        let mut keys = vec![Vec::new(); cores];
        let mut i = 0;
        while keys.iter().any(|k| k.len() < 10) {
            let key = format!("owned:{i}");
            let owner = owner_of(key.as_bytes(), cores);
            if keys[owner].len() < 10 {
                keys[owner].push(key);
            }
            i += 1;
        }
        for (writer, c) in conns.iter_mut().enumerate() {
            for key in keys.iter().flatten() {
                let value = format!("{key} via {writer}");
                c.set(key.as_bytes(), value.as_bytes(), 0).await.unwrap();
            }
        }
        // The last writer's values are what every core reads.
        let last = cores - 1;
        for c in conns.iter_mut() {
            for key in keys.iter().flatten() {
                let (value, _) = c
                    .get(key.as_bytes())
                    .await
                    .unwrap()
                    .expect("key is present");
                assert_eq!(value, format!("{key} via {last}").into_bytes());
            }
        }
        let stats = conns[0].stats().await.unwrap();
        let forwarded: u64 = stats.iter().map(|s| s.forwarded).sum();
        let items: u64 = stats.iter().map(|s| s.items).sum();
        assert_eq!(items, 10 * cores as u64);
        for s in &stats {
            assert_eq!(s.items, 10, "shard {} holds exactly its own keys", s.shard);
        }
        if cores > 1 {
            // Each connection sent (cores-1)/cores of its requests elsewhere.
            let per_conn = 2 * 10 * (cores as u64 - 1);
            assert_eq!(forwarded, per_conn * cores as u64);
        }
    });
}

/// Pipelined requests on one connection whose keys live on different cores: replies may come
/// back out of order, and each still matches its request.
#[test]
fn pipelined_replies_match_their_requests_across_cores() {
    let server = Server::start(&["--cores", &test_cores().to_string()]);
    block_on(async {
        let mut c = Client::connect(server.addr).await.unwrap();
        let mut expected = std::collections::HashMap::new();
        for i in 0..2_000u32 {
            let key = format!("pipe:{i}");
            let value = format!("value of {key}");
            c.send(&Op::Set {
                key: key.as_bytes(),
                value: value.as_bytes(),
                ttl_ms: 0,
            });
            let id = c.send(&Op::Get {
                key: key.as_bytes(),
            });
            expected.insert(id, value);
        }
        c.flush().await.unwrap();
        let mut checked = 0;
        for _ in 0..4_000 {
            let r = c.recv().await.unwrap();
            let view = r.ok().unwrap();
            if let Some(value) = expected.remove(&r.id()) {
                match view.body {
                    percore::protocol::ReplyView::Value { value: got, .. } => {
                        assert_eq!(got, value.as_bytes());
                        checked += 1;
                    }
                    other => panic!("get {} answered {other:?}", r.id()),
                }
            }
        }
        assert_eq!(checked, 2_000);
        assert!(expected.is_empty());
    });
}

/// Items with a TTL report what remains and disappear when it runs out.
#[test]
fn ttl_expires_items() {
    let server = Server::start(&["--cores", &test_cores().to_string()]);
    block_on(async {
        let mut c = Client::connect(server.addr).await.unwrap();
        c.set(b"short", b"lived", 300).await.unwrap();
        c.set(b"long", b"lived", 0).await.unwrap();
        let (_, ttl) = c
            .get(b"short")
            .await
            .unwrap()
            .expect("present before expiry");
        assert!(ttl > 0 && ttl <= 300, "remaining ttl {ttl}");
        percore::runtime::sleep(std::time::Duration::from_millis(450)).await;
        assert_eq!(c.get(b"short").await.unwrap(), None);
        assert_eq!(c.get(b"long").await.unwrap(), Some((b"lived".to_vec(), 0)));
        let stats = c.stats().await.unwrap();
        assert_eq!(stats.iter().map(|s| s.expirations).sum::<u64>(), 1);
    });
}

/// A store written far past --memory evicts old items instead of refusing writes, keeps the
/// newest, and its sweep reclaims expired items nobody reads.
#[test]
fn a_full_store_evicts_and_the_sweep_reclaims_expired_items() {
    let server = Server::start(&["--cores", "1", "--memory", "4MiB"]);
    block_on(async {
        let mut c = Client::connect(server.addr).await.unwrap();
        let value = vec![5u8; 10_000];
        let n = 2_000u32;
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            for i in chunk {
                let key = format!("fill:{i}");
                c.send(&Op::Set {
                    key: key.as_bytes(),
                    value: &value,
                    ttl_ms: 0,
                });
            }
            c.flush().await.unwrap();
            for _ in chunk {
                assert_eq!(c.recv().await.unwrap().status(), Status::Ok);
            }
        }
        let stats = c.stats().await.unwrap();
        assert!(stats[0].evictions > 0, "{stats:?}");
        assert_eq!(stats[0].items + stats[0].evictions, n as u64);
        assert!(stats[0].bytes_used <= 4 << 20);
        for i in n - 50..n {
            let key = format!("fill:{i}");
            assert_eq!(
                c.get(key.as_bytes()).await.unwrap().map(|(v, _)| v),
                Some(value.clone())
            );
        }

        for i in 0..100u32 {
            c.set(format!("ttl:{i}").as_bytes(), b"short-lived", 100)
                .await
                .unwrap();
        }
        let before = c.stats().await.unwrap()[0].expirations;
        percore::runtime::sleep(std::time::Duration::from_millis(600)).await;
        // Nobody read them: only the sweep can have reclaimed them.
        let after = c.stats().await.unwrap()[0].expirations;
        assert_eq!(after - before, 100);
    });
}

/// Requests already buffered behind one whose reply fills the output buffer are answered too,
/// whether or not the client has half-closed. The connection used to wait for a completion
/// from another core that never came: of 64 pipelined Gets of a 512 KiB value, one was
/// answered.
#[test]
fn requests_buffered_behind_a_large_reply_are_all_answered() {
    const VALUE: usize = 512 << 10;
    const GETS: u64 = 64;
    let server = Server::start(&["--cores", "1"]);
    Wire::connect(server.addr).set(b"big", &vec![0x5a; VALUE]);
    for half_close in [false, true] {
        let mut wire = Wire::connect(server.addr);
        let burst: Vec<u8> = (0..GETS)
            .flat_map(|id| frame(id, &Op::Get { key: b"big" }))
            .collect();
        wire.send(&burst);
        if half_close {
            wire.s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        for id in 0..GETS {
            // Wire's read timeout turns a stall into a failure.
            let reply = wire
                .recv()
                .unwrap_or_else(|e| panic!("half-closed {half_close}: reply {id} of {GETS}: {e}"));
            let reply = ResponseView::decode(&reply).unwrap();
            assert_eq!((reply.id, reply.status), (id, Status::Ok));
            assert!(matches!(reply.body, ReplyView::Value { value, .. } if value.len() == VALUE));
        }
        if half_close {
            let end =
                wire.expect_end(std::time::Instant::now() + std::time::Duration::from_secs(10));
            assert!(end.is_empty(), "nothing after the last reply");
        }
    }
}
