//! Every bad input in docs/protocol.md's "Bad input" list gets its documented answer, and never
//! disturbs another connection.

mod common;
use common::*;
use percore::protocol::fb;

/// Sends one frame and returns the reply's (id, status, error).
async fn answer(c: &mut Client, frame: &[u8]) -> (u64, Status, String) {
    c.send_raw(frame);
    c.flush().await.unwrap();
    let r = c.recv().await.unwrap();
    let view = r.view().unwrap();
    (
        view.id,
        view.status,
        view.error.unwrap_or_default().to_owned(),
    )
}

#[test]
fn requests_that_break_a_rule_get_their_id_and_the_connection_goes_on() {
    let server = Server::start(&["--cores", &test_cores().to_string()]);
    block_on(async {
        let mut c = Client::connect(server.addr).await.unwrap();
        let big_key = [b'k'; 251];
        let big_value = vec![0u8; (1 << 20) + 1];
        let cases: [(Op, Status, &str); 6] = [
            (Op::Get { key: b"" }, Status::BadRequest, "key is empty"),
            (
                Op::Set {
                    key: b"",
                    value: b"v",
                    ttl_ms: 0,
                },
                Status::BadRequest,
                "key is empty",
            ),
            (Op::Get { key: &big_key }, Status::TooLarge, "251 bytes"),
            (
                Op::Set {
                    key: b"k",
                    value: &big_value,
                    ttl_ms: 0,
                },
                Status::TooLarge,
                "1048577",
            ),
            (
                Op::Compute {
                    algo: Algo::Sha256,
                    input: b"x",
                    rounds: 0,
                },
                Status::BadRequest,
                "rounds",
            ),
            (
                Op::Compute {
                    algo: Algo(7),
                    input: b"x",
                    rounds: 1,
                },
                Status::BadRequest,
                "algorithm",
            ),
        ];
        for (i, (op, status, reason)) in cases.iter().enumerate() {
            let id = 100 + i as u64;
            c.send_with_id(id, op);
            c.flush().await.unwrap();
            let r = c.recv().await.unwrap();
            let view = r.view().unwrap();
            assert_eq!((view.id, view.status), (id, *status), "case {i}: {op:?}");
            let error = view.error.unwrap_or_default();
            assert!(
                error.contains(reason),
                "case {i}: error {error:?} should mention {reason:?}"
            );
        }

        // A Get without its key.
        let missing = raw_request(200, |fbb| {
            let get = fb::Get::create(fbb, &fb::GetArgs { key: None });
            (fb::Op::Get, Some(get.as_union_value()))
        });
        let (id, status, error) = answer(&mut c, &missing).await;
        assert_eq!((id, status), (200, Status::BadRequest));
        assert!(error.contains("key"), "{error}");

        // A union member this server does not know.
        let unknown = raw_request(201, |fbb| {
            let ping = fb::Ping::create(fbb, &fb::PingArgs { payload: None });
            (fb::Op(99), Some(ping.as_union_value()))
        });
        let (id, status, error) = answer(&mut c, &unknown).await;
        assert_eq!((id, status), (201, Status::BadRequest));
        assert!(error.contains("unknown operation"), "{error}");

        // No op at all.
        let none = raw_request(202, |_| (fb::Op::NONE, None));
        let (id, status, _) = answer(&mut c, &none).await;
        assert_eq!((id, status), (202, Status::BadRequest));

        // The connection still works.
        assert_eq!(c.ping(b"still here").await.unwrap(), b"still here");
    });
}

#[test]
fn frames_that_do_not_verify_get_id_zero_and_the_connection_goes_on() {
    let server = Server::start(&["--cores", &test_cores().to_string()]);
    block_on(async {
        let mut c = Client::connect(server.addr).await.unwrap();
        let mut garbage = 16u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xAB; 16]);
        let (id, status, _) = answer(&mut c, &garbage).await;
        assert_eq!((id, status), (0, Status::BadRequest));

        // A valid Response sent as a request: wrong file identifier.
        let mut response = bytes::BytesMut::new();
        percore::protocol::ResponseEncoder::new().ok(
            5,
            &percore::protocol::Reply::Empty,
            &mut response,
        );
        let (id, status, error) = answer(&mut c, &response).await;
        assert_eq!((id, status), (0, Status::BadRequest));
        assert!(error.contains("identifier"), "{error}");

        // A valid request whose buffer is cut short inside the same frame length.
        let mut cut = raw_request(9, |fbb| {
            let p = fbb.create_vector(&[1u8; 64]);
            let ping = fb::Ping::create(fbb, &fb::PingArgs { payload: Some(p) });
            (fb::Op::Ping, Some(ping.as_union_value()))
        });
        cut.truncate(cut.len() - 40);
        let len = (cut.len() - 4) as u32;
        cut[..4].copy_from_slice(&len.to_le_bytes());
        let (id, status, _) = answer(&mut c, &cut).await;
        assert_eq!((id, status), (0, Status::BadRequest));

        assert_eq!(c.ping(b"ok").await.unwrap(), b"ok");
    });
}

/// A zero or oversize length prefix: one reply with id 0, then the server closes; other
/// connections carry on.
#[test]
fn broken_framing_is_answered_then_closed_without_touching_others() {
    let server = Server::start(&["--cores", &test_cores().to_string(), "--max-frame", "2MiB"]);
    block_on(async {
        let mut bystander = Client::connect(server.addr).await.unwrap();
        bystander.set(b"bystander", b"safe", 0).await.unwrap();

        for (prefix, status) in [
            (0u32, Status::BadRequest),
            ((2 << 20) + 1, Status::TooLarge),
        ] {
            let mut c = Client::connect(server.addr).await.unwrap();
            assert_eq!(c.ping(b"before").await.unwrap(), b"before");
            let mut bytes = prefix.to_le_bytes().to_vec();
            bytes.extend_from_slice(b"trailing bytes the server must not parse");
            let (id, got, error) = answer(&mut c, &bytes).await;
            assert_eq!((id, got), (0, status), "prefix {prefix}: {error}");
            c.read_to_end()
                .await
                .expect("the server closes the connection cleanly");
            assert!(c.ping(b"after").await.is_err(), "connection must be closed");

            assert_eq!(bystander.ping(b"unaffected").await.unwrap(), b"unaffected");
        }
        assert_eq!(
            bystander.get(b"bystander").await.unwrap(),
            Some((b"safe".to_vec(), 0))
        );
    });
}

/// Requests still running elsewhere when the framing breaks get their replies before the
/// server closes.
#[test]
fn broken_framing_still_answers_the_requests_before_it() {
    let server = Server::start(&["--cores", &test_cores().to_string()]);
    block_on(async {
        let mut c = Client::connect(server.addr).await.unwrap();
        let compute = c.send(&Op::Compute {
            algo: Algo::Sha256,
            input: &[1u8; 4096],
            rounds: 20_000,
        });
        let ping = c.send(&Op::Ping { payload: b"p" });
        c.send_raw(&0u32.to_le_bytes());
        c.flush().await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let r = c.recv().await.expect("three replies before the close");
            ids.push((r.id(), r.status()));
        }
        ids.sort_by_key(|(id, _)| *id);
        assert_eq!(
            ids,
            vec![
                (0, Status::BadRequest),
                (compute, Status::Ok),
                (ping, Status::Ok)
            ]
        );
        c.read_to_end().await.expect("then an orderly close");
    });
}

/// A frame that starts and does not finish within --frame-timeout closes the connection; an
/// idle connection lasts until --idle-timeout.
#[test]
fn slow_frames_and_idle_connections_time_out() {
    let server = Server::start(&[
        "--cores",
        &test_cores().to_string(),
        "--frame-timeout",
        "300ms",
        "--idle-timeout",
        "1s",
    ]);
    block_on(async {
        let started = std::time::Instant::now();
        let mut trickler = Client::connect(server.addr).await.unwrap();
        let mut idle = Client::connect(server.addr).await.unwrap();
        assert_eq!(idle.ping(b"hi").await.unwrap(), b"hi");
        // Half of a 100-byte frame.
        let mut half = 100u32.to_le_bytes().to_vec();
        half.extend_from_slice(&[0; 50]);
        trickler.send_raw(&half);
        trickler.flush().await.unwrap();
        trickler.read_to_end().await.unwrap();
        let frame_closed = started.elapsed();
        assert!(
            frame_closed.as_millis() >= 300,
            "closed after {frame_closed:?}"
        );
        assert!(
            frame_closed.as_millis() < 900,
            "closed after {frame_closed:?}"
        );
        assert_eq!(idle.ping(b"still").await.unwrap(), b"still");
        let pinged = std::time::Instant::now();
        idle.read_to_end().await.unwrap();
        let idle_for = pinged.elapsed();
        assert!(
            idle_for.as_millis() >= 1000,
            "idle close after {idle_for:?}"
        );
        assert!(idle_for.as_millis() < 2500, "idle close after {idle_for:?}");
    });
}
