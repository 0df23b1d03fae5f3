//! The glommio engine: what percore runs below its protocol (one pinned glommio executor per
//! core through `percore::runtime`, SO_REUSEPORT listeners, [`Conn`]'s reads and writes, one
//! write per read batch) and nothing above it.

use bytes::{Buf, BytesMut};
use percore::runtime::net::{Conn, Listener};
use percore::runtime::{self, Executor};
use socket2::Socket;

use crate::frames::{complete_frames, READ_CHUNK};

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
        let Some(end) = complete_frames(&mut buf, verbatim) else {
            return;
        };
        if end > 0 {
            if conn.write_all(&buf[..end]).await.is_err() {
                return;
            }
            buf.advance(end);
        }
    }
}

/// Serves `socket` on `cpu` until the process ends.
pub fn start(cpu: usize, socket: Socket, verbatim: bool) -> anyhow::Result<Executor<()>> {
    let executor = Executor::start(cpu, "peer-echo", None, move || async move {
        let listener = Listener::adopt(socket);
        loop {
            match listener.accept().await {
                Ok(conn) => runtime::spawn(echo(conn, verbatim)),
                Err(e) => eprintln!("peer-echo: accept failed: {e}"),
            }
        }
    })?;
    Ok(executor)
}
