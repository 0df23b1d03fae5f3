//! The checks every engine's echo must pass, over real TCP to a server the engine's own tests
//! start on an ephemeral port: each engine runs the same ones, so they answer alike.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use percore::protocol::frame::{self, Peek};
use percore::protocol::{Op, Reply, RequestEncoder, ResponseEncoder};

use crate::frames::tests::assert_reads_as;

fn connect(addr: SocketAddr) -> TcpStream {
    let client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client
}

/// Pings with payloads of `sizes`, ids from 1 (with id 0, a default left out, a Ping is laid
/// out unlike the reply head), and the replies percore writes to them.
fn pings(sizes: &[usize]) -> (BytesMut, BytesMut) {
    let (mut requests, mut want) = (BytesMut::new(), BytesMut::new());
    let (mut req, mut rep) = (RequestEncoder::new(), ResponseEncoder::new());
    for (id, &len) in (1u64..).zip(sizes) {
        let payload: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + id) as u8).collect();
        req.encode(id, &Op::Ping { payload: &payload }, &mut requests);
        rep.ok(id, &Reply::Ping { payload: &payload }, &mut want);
    }
    (requests, want)
}

/// Writes `requests` from another thread while this one reads (so the server's sends can
/// stall) and returns as many bytes as were written: the echo keeps each frame's length.
fn round_trip(addr: SocketAddr, requests: BytesMut) -> Vec<u8> {
    let mut client = connect(addr);
    let mut writer = client.try_clone().unwrap();
    let len = requests.len();
    let sent = std::thread::spawn(move || writer.write_all(&requests));
    let mut got = vec![0u8; len];
    client.read_exact(&mut got).unwrap();
    sent.join().unwrap().unwrap();
    got
}

/// Pipelined Pings of every size up to 2 MiB come back as replies that read as percore's,
/// in order, through short reads, buffer growth and short sends.
pub fn pipelined_pings_of_any_size_come_back(addr: SocketAddr) {
    let sizes: Vec<usize> = (0..64).chain([4096, 70_000, 1 << 20, 2 << 20]).collect();
    let (requests, want) = pings(&sizes);
    assert_replies(&round_trip(addr, requests), &want, &sizes, "");
}

/// `got` holds one reply per payload size, each reading as the one in `want`, and nothing more.
fn assert_replies(got: &[u8], want: &[u8], sizes: &[usize], what: &str) {
    let (mut at, mut at_want) = (0, 0);
    for (i, len) in sizes.iter().enumerate() {
        let (Ok(Peek::Complete { len: n }), Ok(Peek::Complete { len: m })) = (
            frame::peek(&got[at..], usize::MAX),
            frame::peek(&want[at_want..], usize::MAX),
        ) else {
            panic!("{what}reply {i} is not a whole frame");
        };
        let what = format!("{what}reply {i}, payload {len} bytes");
        assert_reads_as(&got[at..at + n], &want[at_want..at_want + m], &what);
        (at, at_want) = (at + n, at_want + m);
    }
    assert_eq!(at, got.len(), "{what}bytes after the last reply");
}

/// A server started with `--verbatim` sends every byte back as it came, Pings included.
pub fn verbatim_frames_come_back_unchanged(addr: SocketAddr) {
    let (requests, _) = pings(&[0, 5, 300, 100_000]);
    let want = requests.to_vec();
    assert_eq!(round_trip(addr, requests), want);
}

/// A zero length prefix is not a frame: the server closes the connection.
pub fn a_stream_that_is_not_frames_is_closed(addr: SocketAddr) {
    let mut client = connect(addr);
    client.write_all(&[0, 0, 0, 0, 1, 2, 3]).unwrap();
    let mut buf = [0u8; 16];
    let n = client.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a zero length prefix ends the connection");
}

/// Clients that go away with requests and replies in flight (half a frame sent, replies
/// unread) leave the server serving everyone else, again and again.
pub fn clients_that_leave_mid_stream_do_not_stop_the_others(addr: SocketAddr) {
    let sizes = [16; 64];
    let (requests, want) = pings(&sizes);
    for round in 0..20 {
        let mut leavers: Vec<TcpStream> = (0..8).map(|_| connect(addr)).collect();
        for (i, leaver) in leavers.iter_mut().enumerate() {
            // Whole frames and then part of one; some replies are never read.
            let cut = requests.len() - 1 - i;
            leaver.write_all(&requests[..cut]).unwrap();
        }
        drop(leavers);
        let got = round_trip(addr, requests.clone());
        assert_replies(&got, &want, &sizes, &format!("round {round}: "));
    }
}

/// A client that writes far more than the sockets hold before it reads a byte is pushed back:
/// its writes block (the server holds a bounded amount, not the stream), and once it reads,
/// every reply comes back.
pub fn a_client_that_reads_late_is_pushed_back(addr: SocketAddr) {
    // About 64 MiB: well over what loopback's socket buffers hold on both sides.
    let sizes = [60_000; 1100];
    let (requests, want) = pings(&sizes);
    let mut client = connect(addr);
    let mut writer = client.try_clone().unwrap();
    let len = requests.len();
    let sent = std::thread::spawn(move || writer.write_all(&requests));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !sent.is_finished(),
        "the server took {len} bytes without their replies being read"
    );
    let mut got = vec![0u8; len];
    client.read_exact(&mut got).unwrap();
    sent.join().unwrap().unwrap();
    assert_replies(&got, &want, &sizes, "");
}

/// The tests of one engine: `$serve(verbatim, idle_poll)` starts it on an ephemeral port and
/// returns the address. Each engine's test module calls this once, so both run every check
/// above under the same names.
macro_rules! engine_suite {
    ($serve:expr) => {
        use std::time::Duration;

        use $crate::engine_tests;

        #[test]
        fn pipelined_pings_of_any_size_come_back_as_their_replies() {
            engine_tests::pipelined_pings_of_any_size_come_back($serve(
                false,
                Duration::from_micros(100),
            ));
        }

        #[test]
        fn pings_come_back_when_the_engine_sleeps_between_events() {
            engine_tests::pipelined_pings_of_any_size_come_back($serve(false, Duration::ZERO));
        }

        #[test]
        fn a_stream_that_is_not_frames_is_closed() {
            engine_tests::a_stream_that_is_not_frames_is_closed($serve(false, Duration::ZERO));
        }

        #[test]
        fn verbatim_frames_come_back_unchanged() {
            engine_tests::verbatim_frames_come_back_unchanged($serve(true, Duration::ZERO));
        }

        #[test]
        fn clients_that_leave_mid_stream_do_not_stop_the_others() {
            engine_tests::clients_that_leave_mid_stream_do_not_stop_the_others($serve(
                false,
                Duration::ZERO,
            ));
        }

        #[test]
        fn a_client_that_reads_late_is_pushed_back() {
            engine_tests::a_client_that_reads_late_is_pushed_back($serve(false, Duration::ZERO));
        }
    };
}
pub(crate) use engine_suite;
