//! Every operation and status, over real TCP against the real binary.

mod common;
use common::*;

#[test]
fn every_operation_answers_as_documented() {
    let server = Server::start(&["--cores", &test_cores().to_string()]);
    block_on(async {
        let mut c = Client::connect(server.addr).await.unwrap();

        let topo = c.hello("ops-test").await.unwrap();
        assert_eq!(topo.protocol_version, 1);
        assert_eq!(topo.shard_count as usize, test_cores());
        assert!(topo.shard < topo.shard_count);
        assert!(topo.shard_ports.is_empty());

        assert_eq!(c.ping(b"hello").await.unwrap(), b"hello");
        assert_eq!(c.ping(b"").await.unwrap(), b"");

        assert_eq!(c.get(b"k1").await.unwrap(), None);
        c.set(b"k1", b"v1", 0).await.unwrap();
        assert_eq!(c.get(b"k1").await.unwrap(), Some((b"v1".to_vec(), 0)));
        c.set(b"k1", b"a longer value", 0).await.unwrap();
        assert_eq!(
            c.get(b"k1").await.unwrap(),
            Some((b"a longer value".to_vec(), 0))
        );
        assert!(c.delete(b"k1").await.unwrap());
        assert!(!c.delete(b"k1").await.unwrap());
        assert_eq!(c.get(b"k1").await.unwrap(), None);

        let crc = c.compute(Algo::Crc32c, b"123456789", 1).await.unwrap();
        assert_eq!(crc, [0xe3, 0x06, 0x92, 0x83]);
        let sha = c.compute(Algo::Sha256, b"abc", 1).await.unwrap();
        assert_eq!(&sha[..4], &[0xba, 0x78, 0x16, 0xbf]);
        let sha2 = c.compute(Algo::Sha256, b"abc", 2).await.unwrap();
        assert_eq!(sha2, c.compute(Algo::Sha256, &sha, 1).await.unwrap());

        let stats = c.stats().await.unwrap();
        assert_eq!(stats.len(), test_cores());
        for (i, s) in stats.iter().enumerate() {
            assert_eq!(s.shard as usize, i);
        }
        let sum = |f: fn(&percore::protocol::ShardStats) -> u64| stats.iter().map(f).sum::<u64>();
        assert_eq!(sum(|s| s.requests_set), 2);
        assert_eq!(sum(|s| s.requests_get), 4);
        assert_eq!(sum(|s| s.requests_delete), 2);
        assert_eq!(sum(|s| s.requests_compute), 4);
        assert_eq!(sum(|s| s.hits), 2);
        assert_eq!(sum(|s| s.misses), 2);
        assert_eq!(sum(|s| s.items), 0);
        assert!(sum(|s| s.connections) >= 1);
    });
}

/// A response with a broken length prefix makes the client give up on the connection instead
/// of misreading whatever follows.
#[test]
fn the_client_stops_at_a_broken_response_frame() {
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = fake.accept().unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
        // A zero length prefix, then bytes that would look like a frame.
        s.write_all(&[0, 0, 0, 0, 8, 0, 0, 0]).unwrap();
        let _ = s.read(&mut buf);
    });
    block_on(async {
        let mut c = Client::connect(addr).await.unwrap();
        let first = c.ping(b"x").await;
        assert!(matches!(first, Err(ClientError::Invalid(_))), "{first:?}");
        let second = c.ping(b"y").await;
        assert!(matches!(second, Err(ClientError::Closed)), "{second:?}");
    });
    server.join().unwrap();
}
