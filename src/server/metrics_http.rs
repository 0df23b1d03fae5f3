//! `--metrics-listen`: `GET /metrics` over HTTP/1.1, served by core 0 from every core's
//! snapshot, gathered over the mesh's control slots ([`super::peer::gather_metrics`]) as Stats
//! is: nothing on the request path locks or waits for it, and it never takes a permit that a
//! forwarded request needs.
//!
//! A scraper is a client like any other, so it is bounded like one: at most [`MAX_SCRAPERS`]
//! connections (more are closed at accept), one request at a time on each, a request head of at
//! most [`MAX_REQUEST_HEAD`] bytes that must arrive within [`REQUEST_TIMEOUT`] of its first byte,
//! [`IDLE_TIMEOUT`] between requests, and [`WRITE_TIMEOUT`] for the reply to be taken. Requests
//! are read with `httparse`; bodies are refused, since `GET` has none.

use std::cell::Cell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::peer;
use super::shard::{PeerCheck, Shard};
use crate::exposition::{self, Format};
use crate::runtime;
use crate::runtime::net::{Conn, Listener};

/// Scraper connections open at once; more are closed at accept.
pub const MAX_SCRAPERS: usize = 8;
/// Bytes a request's line and headers may take.
pub const MAX_REQUEST_HEAD: usize = 8 << 10;
/// Headers a request may have.
const MAX_HEADERS: usize = 32;
/// A request that has started must be whole within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request under way is closed after this (a scraper reconnects).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A reply must be taken by the scraper within this.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (out of file descriptors), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts scrapers until the core drains.
pub async fn serve(shard: Rc<Shard>, listener: Listener) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let conn = match shard.draining.unless_set(listener.accept()).await {
            None => return,
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                tracing::debug!("metrics listener: accept failed: {e}");
                if shard
                    .draining
                    .unless_set(runtime::sleep(ACCEPT_BACKOFF))
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        };
        if shard.check_peer(&conn) != PeerCheck::Allowed || open.get() >= MAX_SCRAPERS {
            drop(conn);
            continue;
        }
        if let Err(e) = conn.set_nodelay() {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        open.set(open.get() + 1);
        let (shard, open) = (shard.clone(), open.clone());
        runtime::spawn(async move {
            shard.draining.unless_set(serve_scraper(&shard, conn)).await;
            open.set(open.get() - 1);
        });
    }
}

/// What one request asked for, once its head is read.
#[derive(Debug, PartialEq, Eq)]
struct Asked {
    route: Route,
    format: Format,
    /// The client wants the connection closed after the reply (or speaks HTTP/1.0).
    close: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics {
        head_only: bool,
    },
    NotFound,
    MethodNotAllowed,
    /// The request cannot be answered, and the stream after it cannot be trusted.
    Bad(&'static str),
}

/// Answers requests on one scraper connection, one at a time, until it ends.
async fn serve_scraper(shard: &Rc<Shard>, mut conn: Conn) {
    let mut input = BytesMut::with_capacity(1024);
    let mut out = Vec::new();
    loop {
        let (asked, len) = match read_request(&mut conn, &mut input).await {
            Some(request) => request,
            None => return,
        };
        input.advance(len);
        out.clear();
        let close = asked.close || matches!(asked.route, Route::Bad(_));
        match asked.route {
            Route::Metrics { head_only } => match peer::gather_metrics(shard).await {
                Some(cores) => match exposition::encode(cores, asked.format) {
                    Ok(body) => response(
                        &mut out,
                        "200 OK",
                        asked.format.content_type(),
                        body.as_bytes(),
                        head_only,
                        close,
                    ),
                    Err(_) => plain(
                        &mut out,
                        "500 Internal Server Error",
                        "encoding failed",
                        close,
                    ),
                },
                None => plain(&mut out, "503 Service Unavailable", "shutting down", close),
            },
            Route::NotFound => plain(&mut out, "404 Not Found", "only /metrics is here", close),
            Route::MethodNotAllowed => plain(
                &mut out,
                "405 Method Not Allowed",
                "GET or HEAD only",
                close,
            ),
            Route::Bad(why) => plain(&mut out, "400 Bad Request", why, close),
        }
        let written =
            futures_lite::future::or(async { conn.write_all(&out).await.is_ok() }, async {
                runtime::sleep(WRITE_TIMEOUT).await;
                false
            })
            .await;
        if !written || close {
            return;
        }
    }
}

/// Reads until `input` holds a whole request head; returns what it asks and its length, or
/// `None` when the connection ended, timed out, or sent a head too large to answer (answered
/// with 431 first).
async fn read_request(conn: &mut Conn, input: &mut BytesMut) -> Option<(Asked, usize)> {
    let mut started = (!input.is_empty()).then(Instant::now);
    loop {
        match parse(input) {
            Parsed::Whole(asked, len) => return Some((asked, len)),
            Parsed::TooLarge => {
                let mut out = Vec::new();
                plain(
                    &mut out,
                    "431 Request Header Fields Too Large",
                    "request head too large",
                    true,
                );
                let _ =
                    futures_lite::future::or(async { conn.write_all(&out).await.is_ok() }, async {
                        runtime::sleep(WRITE_TIMEOUT).await;
                        false
                    })
                    .await;
                return None;
            }
            Parsed::Partial => {}
        }
        let wait = match started {
            Some(at) => REQUEST_TIMEOUT.saturating_sub(at.elapsed()),
            None => IDLE_TIMEOUT,
        };
        let spare = MAX_REQUEST_HEAD + 1 - input.len().min(MAX_REQUEST_HEAD);
        let read =
            futures_lite::future::or(async { Some(conn.read_into(input, spare).await) }, async {
                runtime::sleep(wait).await;
                None
            })
            .await;
        match read {
            Some(Ok(n)) if n > 0 => {
                started.get_or_insert_with(Instant::now);
            }
            _ => return None,
        }
    }
}

enum Parsed {
    Whole(Asked, usize),
    Partial,
    TooLarge,
}

/// Reads the request head at the front of `input`.
fn parse(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(input) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_REQUEST_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Parsed::TooLarge,
        Ok(httparse::Status::Partial) if input.len() > MAX_REQUEST_HEAD => return Parsed::TooLarge,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooLarge,
        Err(_) => {
            // The head is malformed: answer once and close, whatever follows.
            let asked = Asked {
                route: Route::Bad("malformed request"),
                format: Format::Classic,
                close: true,
            };
            return Parsed::Whole(asked, input.len());
        }
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let close = request.version != Some(1)
        || header("connection").is_some_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"))
        });
    let format = Format::negotiate(header("accept"));
    let has_body = header("transfer-encoding").is_some()
        || header("content-length").is_some_and(|v| v.trim() != "0");
    let path = request.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let route = match (request.method, path) {
        _ if has_body => Route::Bad("a request body is not accepted"),
        (Some("GET"), "/metrics") => Route::Metrics { head_only: false },
        (Some("HEAD"), "/metrics") => Route::Metrics { head_only: true },
        (Some("GET" | "HEAD"), _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    };
    Parsed::Whole(
        Asked {
            route,
            format,
            close,
        },
        len,
    )
}

/// Writes a reply with `body` (its length only, for HEAD).
fn response(
    out: &mut Vec<u8>,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    close: bool,
) {
    let mut head = String::with_capacity(160);
    // Writing into a String cannot fail.
    let _ = write!(
        head,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if status.starts_with("405") {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if !head_only {
        out.extend_from_slice(body);
    }
}

fn plain(out: &mut Vec<u8>, status: &str, text: &str, close: bool) {
    let body = format!("{text}\n");
    response(
        out,
        status,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        false,
        close,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(input: &[u8]) -> (Asked, usize) {
        match parse(input) {
            Parsed::Whole(asked, len) => (asked, len),
            Parsed::Partial => panic!("partial"),
            Parsed::TooLarge => panic!("too large"),
        }
    }

    #[test]
    fn requests_are_read_one_at_a_time() {
        let two = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n";
        let (asked, len) = whole(two);
        assert_eq!(asked.route, Route::Metrics { head_only: false });
        assert_eq!(asked.format, Format::OpenMetrics);
        assert!(!asked.close);
        let (asked, rest) = whole(&two[len..]);
        assert_eq!((asked.format, rest), (Format::Classic, two.len() - len));
    }

    #[test]
    fn what_is_not_a_scrape_is_refused() {
        assert!(matches!(
            parse(b"GET /metrics HTTP/1.1\r\nHost"),
            Parsed::Partial
        ));
        assert_eq!(whole(b"GET / HTTP/1.1\r\n\r\n").0.route, Route::NotFound);
        assert_eq!(
            whole(b"POST /metrics HTTP/1.1\r\n\r\n").0.route,
            Route::MethodNotAllowed
        );
        let body = whole(b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").0;
        assert!(matches!(body.route, Route::Bad(_)));
        assert!(matches!(
            whole(b"\x00\x01 nonsense\r\n\r\n").0.route,
            Route::Bad(_)
        ));
        assert!(whole(b"GET /metrics HTTP/1.0\r\n\r\n").0.close);
        assert!(
            whole(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .close
        );
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_REQUEST_HEAD + 10, b'a');
        assert!(matches!(parse(&long), Parsed::TooLarge));
        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Parsed::TooLarge));
    }
}
