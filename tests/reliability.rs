//! Defects of the request path that a review found, each reproduced against the real binary:
//! timeouts that must measure what they say (the frame timeout the current frame, a slow reader
//! its progress), and the store clock read where a request runs, not where it was read.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{frame, Op, Server, Status, Wire};
use percore::protocol::frame::PREFIX_LEN;

/// A client that streams Sets so that every read the server makes ends inside the next frame
/// must not be closed by `--frame-timeout`: each frame completes in milliseconds.
#[test]
fn a_client_streaming_frames_back_to_back_outlives_the_frame_timeout() {
    let server = Server::start(&["--cores", "1", "--frame-timeout", "1s"]);
    let mut wire = Wire::connect(server.addr);
    let value = vec![b's'; 3000];
    let frames: Vec<Vec<u8>> = (0..60u64)
        .map(|i| {
            frame(
                i,
                &Op::Set {
                    key: format!("stream-{i}").as_bytes(),
                    value: &value,
                    ttl_ms: 0,
                },
            )
        })
        .collect();
    let stream: Vec<u8> = frames.concat();
    let each = frames[0].len();
    // One and a half frames every 50 ms: every write ends in the middle of a frame, for 3 s,
    // three times the timeout.
    let started = Instant::now();
    let mut sent = 0;
    while sent < stream.len() {
        let end = (sent + each * 3 / 2).min(stream.len());
        if wire.s.write_all(&stream[sent..end]).is_err() {
            break;
        }
        sent = end;
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut answered = 0;
    while answered < frames.len() {
        match wire.recv() {
            Ok(reply) => {
                let view = percore::protocol::ResponseView::decode(&reply).unwrap();
                assert_eq!(view.status, Status::Ok);
                answered += 1;
            }
            Err(e) => panic!(
                "closed after {:?} with {answered} of {} Sets answered: {e}",
                started.elapsed(),
                frames.len()
            ),
        }
    }
    assert!(started.elapsed() > Duration::from_secs(2));
}

/// A client that owes the server megabytes of replies and reads them a trickle at a time keeps
/// the server holding them; it is closed as a slow reader within a few frame timeouts,
/// although every one of its reads is activity.
#[test]
fn a_reader_that_drains_a_trickle_is_closed_as_a_slow_reader() {
    let server = Server::start(&["--cores", "1", "--frame-timeout", "1s"]);
    let mut setter = Wire::connect(server.addr);
    let value = vec![b'v'; 1 << 20];
    setter.set(b"big", &value);
    let mut reader = Wire::connect(server.addr);
    let gets: Vec<u8> = (0..16u64)
        .flat_map(|i| frame(i, &Op::Get { key: b"big" }))
        .collect();
    reader.send(&gets);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickling = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // 4 KiB every 100 ms: steady activity, no progress worth the name.
            let mut chunk = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match reader.s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
    };
    // The server side of the reader's connection is gone when only the setter's is open.
    let started = Instant::now();
    let open = |setter: &mut Wire| setter.stats().iter().map(|s| s.connections).sum::<u64>();
    while open(&mut setter) > 1 {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the trickling reader's connection is still open after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = trickling.join();
    // The server goes on serving everyone else.
    setter.ping(2);
}

/// The store's clock is read where a request runs: a Set with a short TTL that waits behind a
/// reply the client is slow to take is not acknowledged already expired.
#[test]
fn a_set_that_waited_behind_a_full_output_is_not_born_expired() {
    let server = Server::start(&["--cores", "1"]);
    let mut wire = Wire::connect(server.addr);
    let value = vec![b'b'; 1 << 20];
    wire.call(&frame(
        1,
        &Op::Set {
            key: b"big",
            value: &value,
            ttl_ms: 0,
        },
    ));
    // One write: Gets whose replies fill the output and the socket's buffers (16 MiB), then a
    // Set with a 300 ms TTL.
    let mut batch: Vec<u8> = (0..16u64)
        .flat_map(|i| frame(100 + i, &Op::Get { key: b"big" }))
        .collect();
    batch.extend(frame(
        3,
        &Op::Set {
            key: b"short",
            value: b"x",
            ttl_ms: 300,
        },
    ));
    wire.send(&batch);
    // Read nothing for longer than the TTL: the server waits to write the big reply before it
    // routes the Set.
    std::thread::sleep(Duration::from_millis(600));
    let mut statuses = Vec::new();
    for _ in 0..17 {
        let reply = wire.recv().expect("a reply");
        assert!(reply.len() > PREFIX_LEN);
        let view = percore::protocol::ResponseView::decode(&reply).unwrap();
        if view.id < 100 {
            statuses.push((view.id, view.status));
        }
    }
    // Asked at once, well within the 300 ms the Set was acknowledged with.
    wire.send(&frame(4, &Op::Get { key: b"short" }));
    let view_of = |reply: Vec<u8>| {
        let view = percore::protocol::ResponseView::decode(&reply).unwrap();
        (view.id, view.status)
    };
    statuses.push(view_of(wire.recv().expect("a reply")));
    assert_eq!(
        statuses,
        [(3, Status::Ok), (4, Status::Ok)],
        "the Set was stored with the clock of the read, 600 ms before it ran"
    );
}

/// A flood of Stats does not amplify: concurrent Stats on a core share one gather over the
/// cores, and gathers travel on the mesh's control slots, so Gets forwarded meanwhile are
/// still answered.
#[test]
fn a_flood_of_stats_shares_gathers_and_leaves_forwarded_gets_their_permits() {
    let server = Server::start(&["--cores", &common::test_cores().to_string()]);
    let cores = common::test_cores();
    let mut flood = Wire::connect(server.addr);
    let stats: Vec<u8> = (0..2000u64).flat_map(|i| frame(i, &Op::Stats)).collect();
    flood.send(&stats);
    // Meanwhile, Gets of keys every core owns.
    let mut bystander = Wire::connect(server.addr);
    for i in 0..200u64 {
        let key = format!("key-{i}");
        bystander.send(&frame(
            i,
            &Op::Get {
                key: key.as_bytes(),
            },
        ));
        let (id, status, _) = bystander.answer();
        assert_eq!((id, status), (i, Status::NotFound));
    }
    for _ in 0..2000 {
        let reply = flood.recv().expect("every Stats is answered");
        let view = percore::protocol::ResponseView::decode(&reply).unwrap();
        assert_eq!(view.status, Status::Ok);
        assert_eq!(view.shard_stats().len(), cores);
    }
    drop((flood, bystander));
    let stopped = server.stop(Duration::from_secs(10));
    let gathers = common::report_core_sum(&stopped.stdout, "gathers");
    println!("2000 pipelined Stats: {gathers} gathers");
    assert!(
        (1..=200).contains(&gathers),
        "2000 pipelined Stats made {gathers} gathers over the cores"
    );
}
