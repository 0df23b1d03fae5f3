//! peer-echo: a length-prefixed echo on percore's own runtime, the floor under the protocol.
//!
//! It runs what percore runs below the protocol (one pinned glommio executor per core through
//! `percore::runtime`, SO_REUSEPORT listeners, [`Conn`]'s reads and writes, one write per read
//! batch) and nothing above it: no verification, no decoding, no encoding, no store. The gap
//! between percore and peer-echo on the ping workload is what the protocol and percore's
//! request path cost.
//!
//! It splits the stream by length prefix only and sends every whole frame straight back from
//! its receive buffer. So that percore-load, which checks every reply, accepts the echo, a frame
//! that starts like a Ping request from percore's `RequestEncoder` gets its bytes 8..32 (the
//! identifier and the root vtable) rewritten, which turns it into the byte-exact reply
//! `ResponseEncoder` would write (see [`ping_request_to_reply`]). That is a fixed-size compare
//! and copy per frame, not parsing. With
//! `--verbatim` it echoes the bytes unchanged.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::{Buf, BytesMut};
use clap::Parser;
use percore::config::{usable_cpus, CoreSpec};
use percore::protocol::frame::{self, Peek};
use percore::runtime::net::{self, Conn, Listener};
use percore::runtime::{self, Executor};

/// peer-echo: a length-prefixed echo on percore's glommio runtime (a benchmark peer).
#[derive(Debug, Parser)]
#[command(name = "peer-echo", version, max_term_width = 100)]
struct Args {
    /// Address every core listens on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,

    /// CPUs to run on: a count (the first N usable) or a list like 0,2-3 [default: all usable]
    #[arg(long, value_name = "N|LIST")]
    cores: Option<CoreSpec>,

    /// Echo frames unchanged instead of turning Ping requests into Ping replies
    #[arg(long)]
    verbatim: bool,

    /// Listen backlog of each core's socket
    #[arg(long, value_name = "N", default_value_t = 1024)]
    backlog: i32,
}

/// Bytes asked of each read at least.
const READ_CHUNK: usize = 16 << 10;
/// Length prefixes above this close the connection: the stream is not frames.
const MAX_FRAME: usize = 16 << 20;

/// Bytes 8..32 of a Ping request frame as `RequestEncoder` writes it: the identifier `PCRQ`,
/// padding, the 10-byte vtable of `Request` and the root table's offset to it. Bytes 12..14 of
/// this (the table's size, which varies with padding) are a wildcard, `TABLE_SIZE_IN_REQUEST`.
const PING_REQUEST_HEAD: [u8; 24] = [
    b'P', b'C', b'R', b'Q', 0, 0, 0, 0, 0, 0, 0x0a, 0, 0xff, 0xff, 0x0c, 0, 0x07, 0, 0x08, 0, 0x0a,
    0, 0, 0,
];
const TABLE_SIZE_IN_REQUEST: std::ops::Range<usize> = 12..14;
/// The same bytes of the Ping reply `ResponseEncoder` writes for it: identifier `PCRS`, the
/// 12-byte vtable of `Response` (whose `status` is absent, so `Ok`) and the offset to it, with
/// the table's size at `TABLE_SIZE_IN_REPLY`. The root table, its id and the payload after
/// byte 32 are laid out identically in both.
const PING_REPLY_HEAD: [u8; 24] = [
    b'P', b'C', b'R', b'S', 0, 0, 0, 0, 0x0c, 0, 0xff, 0xff, 0x0c, 0, 0x00, 0, 0x07, 0, 0x08, 0,
    0x0c, 0, 0, 0,
];
const TABLE_SIZE_IN_REPLY: std::ops::Range<usize> = 10..12;
/// Where `Request.op_type` sits when the head matches (the root table is at 0x1c and its vtable
/// puts `op_type` at +7); the reply's `body_type` sits at the same place, and `Op::Ping` and
/// `Reply::PingReply` are both 2.
const OP_TYPE_AT: usize = 0x23;
const PING_OP_TYPE: u8 = 2;

/// Turns a whole Ping request frame made by `RequestEncoder` into the reply to it, in place.
/// Any other frame is left as it is (and a checking client will count it as a wrong reply).
fn ping_request_to_reply(frame: &mut [u8]) {
    if frame.get(OP_TYPE_AT) != Some(&PING_OP_TYPE) {
        return;
    }
    let head = &mut frame[8..32];
    let mut table_size = [0u8; 2];
    table_size.copy_from_slice(&head[TABLE_SIZE_IN_REQUEST]);
    let matches = head
        .iter()
        .zip(PING_REQUEST_HEAD)
        .enumerate()
        .all(|(i, (&got, want))| TABLE_SIZE_IN_REQUEST.contains(&i) || got == want);
    if matches {
        head.copy_from_slice(&PING_REPLY_HEAD);
        head[TABLE_SIZE_IN_REPLY].copy_from_slice(&table_size);
    }
}

/// Echoes one connection until the client leaves or the stream stops being frames.
async fn echo(mut conn: Conn, verbatim: bool) {
    let _ = conn.set_nodelay();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        match conn.read_into(&mut buf, READ_CHUNK).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Everything up to the end of the last whole frame goes back in one write.
        let mut end = 0;
        loop {
            match frame::peek(&buf[end..], MAX_FRAME) {
                Ok(Peek::Complete { len }) => {
                    if !verbatim {
                        ping_request_to_reply(&mut buf[end..end + len]);
                    }
                    end += len;
                }
                Ok(Peek::Partial { .. }) => break,
                Err(_) => return,
            }
        }
        if end > 0 {
            if conn.write_all(&buf[..end]).await.is_err() {
                return;
            }
            buf.advance(end);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cpus = args
        .cores
        .clone()
        .unwrap_or(CoreSpec::Count(usable_cpus().len().max(1)))
        .resolve(&usable_cpus())?;
    let sockets = net::reuseport_group(args.listen, cpus.len(), args.backlog)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = net::local_addr(&sockets[0])?;
    let mut executors = Vec::new();
    for (&cpu, socket) in cpus.iter().zip(sockets) {
        let verbatim = args.verbatim;
        let executor = Executor::start(cpu, "peer-echo", None, move || async move {
            let listener = Listener::adopt(socket);
            loop {
                match listener.accept().await {
                    Ok(conn) => runtime::spawn(echo(conn, verbatim)),
                    Err(e) => eprintln!("peer-echo: accept failed: {e}"),
                }
            }
        })?;
        executors.push(executor);
    }
    println!(
        "peer-echo listening on {bound} with {} cores (cpus {cpus:?}){}",
        cpus.len(),
        if args.verbatim { ", verbatim" } else { "" }
    );
    for executor in executors {
        executor.join()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use percore::protocol::{Op, Reply, RequestEncoder, ResponseEncoder};

    /// The patch must give exactly the reply percore's encoder writes, whatever the payload
    /// length (padding) and id, or percore-load would count the echo as wrong.
    #[test]
    fn patched_ping_requests_are_byte_exact_replies() {
        let mut requests = RequestEncoder::new();
        let mut replies = ResponseEncoder::new();
        for len in 0..=300usize {
            for id in [1u64, 7, 1 << 40, u64::MAX] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut frame = BytesMut::new();
                requests.encode(id, &Op::Ping { payload: &payload }, &mut frame);
                let mut want = BytesMut::new();
                replies.ok(id, &Reply::Ping { payload: &payload }, &mut want);
                ping_request_to_reply(&mut frame);
                assert_eq!(&frame[..], &want[..], "payload {len} bytes, id {id}");
            }
        }
    }

    #[test]
    fn other_frames_are_left_alone() {
        let mut frame = BytesMut::new();
        RequestEncoder::new().encode(1, &Op::Get { key: b"k" }, &mut frame);
        let before = frame.clone();
        ping_request_to_reply(&mut frame);
        assert_eq!(frame, before);
        let mut short = [4u8, 0, 0, 0, 1, 2, 3, 4];
        ping_request_to_reply(&mut short);
        assert_eq!(short, [4u8, 0, 0, 0, 1, 2, 3, 4]);
    }
}
