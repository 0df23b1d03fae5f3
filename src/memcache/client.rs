//! The client's side of the memcached text protocol: encoders that append the commands a
//! client sends to a [`BytesMut`], and [`parse_reply`], which splits one reply off the front of
//! a receive buffer as a [`Reply`] that borrows from it.
//!
//! Encoding allocates nothing but the buffer's own growth: numbers are formatted on the stack.
//! Keys are written as given, so a test can send a bad one on purpose; [`valid_key`] says
//! whether the protocol allows a key (a space or control byte would split or end the line).
//!
//! Parsing copies nothing and cannot panic, whatever a server sends: a reply that is not all
//! there yet is [`Parsed::Incomplete`], a byte stream that can no longer be trusted is
//! [`Parsed::Broken`]. A data block is taken by its byte count, never searched for CRLF, so
//! values are binary-safe. A retrieval's reply is a sequence of items, one [`Reply::Value`] per
//! key found, in request order, then [`Reply::End`]; each call returns one item, and the caller,
//! which knows the keys it asked for, matches them.

use std::fmt;

use bytes::BytesMut;

/// Bounds on what [`parse_reply_with`] accepts before it calls the stream broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest reply line, CRLF excluded. Lines are short (a VALUE line with a 250-byte key
    /// and a CAS value is under 300 bytes), so more bytes without CRLF mean the stream is not
    /// memcached replies.
    pub max_line: usize,
    /// Largest data block of a VALUE reply.
    pub max_data: usize,
}

impl Limits {
    /// memcached's default 1 MiB item limit (`-I 1m`), with 64 KiB of slack so that a value of
    /// exactly 1 MiB, or a server whose limit counts the value alone, still passes.
    pub const DEFAULT: Limits = Limits {
        max_line: 4096,
        max_data: (1 << 20) + (64 << 10),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

pub use super::command::valid_key;

// ---------------------------------------------------------------------------------------------
// Requests

/// The storage commands, which all carry a data block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCommand {
    /// Store unconditionally.
    Set,
    /// Store only if the key is absent.
    Add,
    /// Store only if the key is present.
    Replace,
    /// Add the data after an existing value.
    Append,
    /// Add the data before an existing value.
    Prepend,
}

impl StoreCommand {
    fn word(self) -> &'static [u8] {
        match self {
            StoreCommand::Set => b"set",
            StoreCommand::Add => b"add",
            StoreCommand::Replace => b"replace",
            StoreCommand::Append => b"append",
            StoreCommand::Prepend => b"prepend",
        }
    }
}

/// The fields of a storage command besides key and data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// Opaque to the server, returned with the value.
    pub flags: u32,
    /// 0: never expires; up to 30 days: seconds from now; more: a Unix time; negative: expired
    /// at once.
    pub exptime: i64,
    /// Ask the server not to reply.
    pub noreply: bool,
}

/// Appends `get <key>*`. Give at least one key: `get` alone is answered `ERROR`.
pub fn get<'k>(out: &mut BytesMut, keys: impl IntoIterator<Item = &'k [u8]>) {
    retrieval(out, b"get", keys);
}

/// Appends `gets <key>*`: as [`get`], and each VALUE carries its CAS unique.
pub fn gets<'k>(out: &mut BytesMut, keys: impl IntoIterator<Item = &'k [u8]>) {
    retrieval(out, b"gets", keys);
}

fn retrieval<'k>(out: &mut BytesMut, word: &[u8], keys: impl IntoIterator<Item = &'k [u8]>) {
    out.extend_from_slice(word);
    for key in keys {
        out.extend_from_slice(b" ");
        out.extend_from_slice(key);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `<command> <key> <flags> <exptime> <bytes> [noreply]`, then the data block.
pub fn store(
    out: &mut BytesMut,
    command: StoreCommand,
    key: &[u8],
    value: &[u8],
    options: StoreOptions,
) {
    storage_line(out, command.word(), key, value, options, None);
}

/// Appends `cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]`, then the data block:
/// store only if the item is unchanged since the `gets` that returned `cas_unique`.
pub fn cas(out: &mut BytesMut, key: &[u8], value: &[u8], cas_unique: u64, options: StoreOptions) {
    storage_line(out, b"cas", key, value, options, Some(cas_unique));
}

fn storage_line(
    out: &mut BytesMut,
    word: &[u8],
    key: &[u8],
    value: &[u8],
    options: StoreOptions,
    cas_unique: Option<u64>,
) {
    // Numbers and the optional words take under 80 bytes: one reservation for the whole command.
    out.reserve(word.len() + key.len() + value.len() + 80);
    out.extend_from_slice(word);
    out.extend_from_slice(b" ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" ");
    put_u64(out, u64::from(options.flags));
    out.extend_from_slice(b" ");
    put_i64(out, options.exptime);
    out.extend_from_slice(b" ");
    put_u64(out, value.len() as u64);
    if let Some(unique) = cas_unique {
        out.extend_from_slice(b" ");
        put_u64(out, unique);
    }
    end_line(out, options.noreply);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `delete <key> [noreply]`.
pub fn delete(out: &mut BytesMut, key: &[u8], noreply: bool) {
    key_line(out, b"delete", key, None, noreply);
}

/// Appends `incr <key> <delta> [noreply]`; the reply is the new value, or NOT_FOUND.
pub fn incr(out: &mut BytesMut, key: &[u8], delta: u64, noreply: bool) {
    key_line(out, b"incr", key, Some(Number::U(delta)), noreply);
}

/// Appends `decr <key> <delta> [noreply]`; the value stops at 0 rather than going below.
pub fn decr(out: &mut BytesMut, key: &[u8], delta: u64, noreply: bool) {
    key_line(out, b"decr", key, Some(Number::U(delta)), noreply);
}

/// Appends `touch <key> <exptime> [noreply]`: a new expiration time, value unchanged.
pub fn touch(out: &mut BytesMut, key: &[u8], exptime: i64, noreply: bool) {
    key_line(out, b"touch", key, Some(Number::I(exptime)), noreply);
}

/// Appends `flush_all [delay] [noreply]`: invalidate every item, after `delay` seconds if given.
pub fn flush_all(out: &mut BytesMut, delay: Option<u32>, noreply: bool) {
    out.extend_from_slice(b"flush_all");
    if let Some(delay) = delay {
        out.extend_from_slice(b" ");
        put_u64(out, u64::from(delay));
    }
    end_line(out, noreply);
}

/// Appends `version`; the reply is [`Reply::Version`].
pub fn version(out: &mut BytesMut) {
    out.extend_from_slice(b"version\r\n");
}

enum Number {
    U(u64),
    I(i64),
}

fn key_line(out: &mut BytesMut, word: &[u8], key: &[u8], number: Option<Number>, noreply: bool) {
    out.extend_from_slice(word);
    out.extend_from_slice(b" ");
    out.extend_from_slice(key);
    match number {
        Some(Number::U(n)) => {
            out.extend_from_slice(b" ");
            put_u64(out, n);
        }
        Some(Number::I(n)) => {
            out.extend_from_slice(b" ");
            put_i64(out, n);
        }
        None => {}
    }
    end_line(out, noreply);
}

fn end_line(out: &mut BytesMut, noreply: bool) {
    if noreply {
        out.extend_from_slice(b" noreply");
    }
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n`, formatted on the stack.
fn put_u64(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn put_i64(out: &mut BytesMut, n: i64) {
    if n < 0 {
        out.extend_from_slice(b"-");
    }
    put_u64(out, n.unsigned_abs());
}

// ---------------------------------------------------------------------------------------------
// Replies

/// One reply item, borrowing from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A storage command stored its data.
    Stored,
    /// An `add`, `replace`, `append` or `prepend` whose condition failed.
    NotStored,
    /// A `cas` of an item changed since its `gets`.
    Exists,
    /// No such key (`cas`, `delete`, `incr`, `decr`, `touch`).
    NotFound,
    /// A `delete` removed the key.
    Deleted,
    /// A `touch` set the new expiration time.
    Touched,
    /// `OK`, as `flush_all` replies.
    Ok,
    /// The end of a retrieval's reply: every key not given a [`Reply::Value`] before it is a miss.
    End,
    /// The value after an `incr` or `decr`.
    Number(u64),
    /// `VERSION <version>`.
    Version(&'a [u8]),
    /// `ERROR`: a command the server does not know. The message is empty unless the server adds
    /// one after a space.
    Error(&'a [u8]),
    /// `CLIENT_ERROR <message>`: the command was malformed.
    ClientError(&'a [u8]),
    /// `SERVER_ERROR <message>`: the server failed to carry the command out.
    ServerError(&'a [u8]),
    /// One item a retrieval found.
    Value(Value<'a>),
}

/// `VALUE <key> <flags> <bytes> [<cas unique>]` and its data block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value<'a> {
    pub key: &'a [u8],
    pub flags: u32,
    pub data: &'a [u8],
    /// Present in replies to `gets`.
    pub cas: Option<u64>,
}

/// What the front of a receive buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not yet a whole reply: read more and look again.
    Incomplete,
    /// One reply item, `len` bytes long: advance the buffer by `len` before the next.
    Reply { reply: Reply<'a>, len: usize },
    /// Not memcached replies: nothing after this point can be parsed, drop the connection.
    Broken(Broken<'a>),
}

/// Why a reply stream is [`Parsed::Broken`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken<'a> {
    /// More than [`Limits::max_line`] bytes without the line's CRLF.
    LineTooLong { max: usize },
    /// A line ended by LF alone (replies end lines with CRLF).
    BareLf { line: &'a [u8] },
    /// A line that is no reply this parser knows.
    Unknown { line: &'a [u8] },
    /// A VALUE line without a key, flags and byte count, or with bad numbers in it.
    BadValueLine { line: &'a [u8] },
    /// A VALUE announcing more than [`Limits::max_data`] bytes.
    DataTooLarge { len: u64, max: usize },
    /// A data block not followed by CRLF: its byte count was wrong.
    DataUnterminated { key: &'a [u8] },
}

impl fmt::Display for Broken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // At most this much of a line goes into a message: enough to recognise it.
        const SHOWN: usize = 64;
        let shown =
            |line: &[u8]| String::from_utf8_lossy(&line[..line.len().min(SHOWN)]).into_owned();
        match *self {
            Broken::LineTooLong { max } => {
                write!(
                    f,
                    "a memcached reply line longer than {max} bytes without CRLF"
                )
            }
            Broken::BareLf { line } => {
                write!(
                    f,
                    "a memcached reply line ended by LF without CR: {:?}",
                    shown(line)
                )
            }
            Broken::Unknown { line } => write!(f, "an unknown memcached reply: {:?}", shown(line)),
            Broken::BadValueLine { line } => {
                write!(f, "a malformed memcached VALUE line: {:?}", shown(line))
            }
            Broken::DataTooLarge { len, max } => {
                write!(
                    f,
                    "a memcached VALUE of {len} bytes, over the limit of {max}"
                )
            }
            Broken::DataUnterminated { key } => write!(
                f,
                "the data of memcached VALUE {:?} is not followed by CRLF",
                shown(key)
            ),
        }
    }
}

impl std::error::Error for Broken<'_> {}

/// Splits one reply item off the front of `input`, with [`Limits::DEFAULT`].
pub fn parse_reply(input: &[u8]) -> Parsed<'_> {
    parse_reply_with(input, &Limits::DEFAULT)
}

/// Splits one reply item off the front of `input`.
pub fn parse_reply_with<'a>(input: &'a [u8], limits: &Limits) -> Parsed<'a> {
    // Only the first line's worth is searched, so a long partial data block behind a VALUE line
    // costs nothing to look at again.
    let window = &input[..input.len().min(limits.max_line.saturating_add(2))];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if input.len() >= limits.max_line.saturating_add(2) {
            return Parsed::Broken(Broken::LineTooLong {
                max: limits.max_line,
            });
        }
        return Parsed::Incomplete;
    };
    let head = window.get(..lf).unwrap_or_default();
    let Some(line) = head.strip_suffix(b"\r") else {
        return Parsed::Broken(Broken::BareLf { line: head });
    };
    let len = lf + 1;
    let (word, rest) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], line.get(space + 1..)),
        None => (line, None),
    };
    let bare = |reply| match rest {
        None => Parsed::Reply { reply, len },
        Some(_) => Parsed::Broken(Broken::Unknown { line }),
    };
    let message = rest.unwrap_or_default();
    match word {
        b"STORED" => bare(Reply::Stored),
        b"NOT_STORED" => bare(Reply::NotStored),
        b"EXISTS" => bare(Reply::Exists),
        b"NOT_FOUND" => bare(Reply::NotFound),
        b"DELETED" => bare(Reply::Deleted),
        b"TOUCHED" => bare(Reply::Touched),
        b"OK" => bare(Reply::Ok),
        b"END" => bare(Reply::End),
        b"VERSION" => Parsed::Reply {
            reply: Reply::Version(message),
            len,
        },
        b"ERROR" => Parsed::Reply {
            reply: Reply::Error(message),
            len,
        },
        b"CLIENT_ERROR" => Parsed::Reply {
            reply: Reply::ClientError(message),
            len,
        },
        b"SERVER_ERROR" => Parsed::Reply {
            reply: Reply::ServerError(message),
            len,
        },
        b"VALUE" => parse_value(input, line, message, len, limits),
        _ => match parse_u64(word) {
            Some(n) => bare(Reply::Number(n)),
            None => Parsed::Broken(Broken::Unknown { line }),
        },
    }
}

/// A VALUE item: `fields` is the line after `VALUE `, and its data starts at `input[data_at..]`.
fn parse_value<'a>(
    input: &'a [u8],
    line: &'a [u8],
    fields: &'a [u8],
    data_at: usize,
    limits: &Limits,
) -> Parsed<'a> {
    let bad = Parsed::Broken(Broken::BadValueLine { line });
    let mut words = fields.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let (Some(key), Some(flags), Some(bytes)) = (words.next(), words.next(), words.next()) else {
        return bad;
    };
    let cas = match words.next() {
        None => None,
        Some(w) => match parse_u64(w) {
            Some(unique) => Some(unique),
            None => return bad,
        },
    };
    if words.next().is_some() {
        return bad;
    }
    let (Some(flags), Some(bytes)) = (
        parse_u64(flags).and_then(|f| u32::try_from(f).ok()),
        parse_u64(bytes),
    ) else {
        return bad;
    };
    let data_len = match usize::try_from(bytes) {
        Ok(n) if n <= limits.max_data => n,
        _ => {
            return Parsed::Broken(Broken::DataTooLarge {
                len: bytes,
                max: limits.max_data,
            })
        }
    };
    // max_data bounds data_len, but a caller's limits could be near usize::MAX.
    let Some(data_end) = data_at.checked_add(data_len) else {
        return Parsed::Broken(Broken::DataTooLarge {
            len: bytes,
            max: limits.max_data,
        });
    };
    let Some(end) = data_end.checked_add(2) else {
        return Parsed::Broken(Broken::DataTooLarge {
            len: bytes,
            max: limits.max_data,
        });
    };
    let (Some(data), Some(terminator)) = (input.get(data_at..data_end), input.get(data_end..end))
    else {
        return Parsed::Incomplete;
    };
    if terminator != b"\r\n" {
        return Parsed::Broken(Broken::DataUnterminated { key });
    }
    Parsed::Reply {
        reply: Reply::Value(Value {
            key,
            flags,
            data,
            cas,
        }),
        len: end,
    }
}

/// A decimal `u64`: 1 to 20 digits and nothing else, no overflow.
fn parse_u64(word: &[u8]) -> Option<u64> {
    if word.is_empty() || word.len() > 20 {
        return None;
    }
    word.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(write: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut out = BytesMut::new();
        write(&mut out);
        out.to_vec()
    }

    /// Every item of `stream`, parsed the way a receive buffer fills: each item is offered one
    /// byte more at a time, and every proper prefix must be Incomplete.
    fn parse_byte_by_byte(stream: &[u8]) -> Vec<Reply<'_>> {
        let mut at = 0;
        let mut items = Vec::new();
        while at < stream.len() {
            let mut end = at;
            loop {
                match parse_reply(&stream[at..end]) {
                    Parsed::Incomplete => {
                        assert!(end < stream.len(), "the stream ends inside an item");
                        end += 1;
                    }
                    Parsed::Reply { reply, len } => {
                        assert_eq!(len, end - at, "an item is complete only with its last byte");
                        items.push(reply);
                        at = end;
                        break;
                    }
                    Parsed::Broken(why) => panic!("{why} at byte {at}"),
                }
            }
        }
        items
    }

    #[test]
    fn requests_are_encoded_exactly() {
        assert_eq!(encoded(|o| get(o, [&b"k1"[..]])), b"get k1\r\n");
        assert_eq!(
            encoded(|o| get(o, [&b"a"[..], b"b", b"c"])),
            b"get a b c\r\n"
        );
        assert_eq!(
            encoded(|o| gets(o, b"k1k2".chunks_exact(2))),
            b"gets k1 k2\r\n"
        );
        let plain = StoreOptions::default();
        assert_eq!(
            encoded(|o| store(o, StoreCommand::Set, b"k", b"ab\r\n", plain)),
            b"set k 0 0 4\r\nab\r\n\r\n"
        );
        let options = StoreOptions {
            flags: u32::MAX,
            exptime: -1,
            noreply: true,
        };
        for (command, word) in [
            (StoreCommand::Add, "add"),
            (StoreCommand::Replace, "replace"),
            (StoreCommand::Append, "append"),
            (StoreCommand::Prepend, "prepend"),
        ] {
            assert_eq!(
                encoded(|o| store(o, command, b"k", b"", options)),
                format!("{word} k 4294967295 -1 0 noreply\r\n\r\n").as_bytes()
            );
        }
        assert_eq!(
            encoded(|o| cas(o, b"k", b"xyz", u64::MAX, plain)),
            b"cas k 0 0 3 18446744073709551615\r\nxyz\r\n"
        );
        let month = StoreOptions {
            exptime: 2_592_000,
            ..plain
        };
        assert_eq!(
            encoded(|o| store(o, StoreCommand::Set, b"k", b"v", month)),
            b"set k 0 2592000 1\r\nv\r\n"
        );
        assert_eq!(encoded(|o| delete(o, b"k", false)), b"delete k\r\n");
        assert_eq!(encoded(|o| delete(o, b"k", true)), b"delete k noreply\r\n");
        assert_eq!(encoded(|o| incr(o, b"n", 0, false)), b"incr n 0\r\n");
        assert_eq!(
            encoded(|o| decr(o, b"n", 10, true)),
            b"decr n 10 noreply\r\n"
        );
        assert_eq!(
            encoded(|o| touch(o, b"k", i64::MIN, false)),
            b"touch k -9223372036854775808\r\n"
        );
        assert_eq!(encoded(|o| flush_all(o, None, false)), b"flush_all\r\n");
        assert_eq!(
            encoded(|o| flush_all(o, Some(30), true)),
            b"flush_all 30 noreply\r\n"
        );
        assert_eq!(encoded(version), b"version\r\n");
    }

    #[test]
    fn keys_are_checked_only_on_request() {
        assert!(valid_key(b"k0001"));
        assert!(valid_key(&[b'x'; 250]));
        assert!(valid_key("clé".as_bytes()));
        assert!(!valid_key(b""));
        assert!(!valid_key(&[b'x'; 251]));
        assert!(!valid_key(b"a b"));
        assert!(!valid_key(b"a\n"));
    }

    #[test]
    fn every_reply_parses_byte_by_byte() {
        let stream = b"STORED\r\nNOT_STORED\r\nEXISTS\r\nNOT_FOUND\r\nDELETED\r\nTOUCHED\r\nOK\r\n\
END\r\n0\r\n18446744073709551615\r\nVERSION 1.6.18\r\nERROR\r\nERROR unknown command\r\n\
CLIENT_ERROR bad data chunk\r\nSERVER_ERROR out of memory storing object\r\n\
VALUE k1 7 3\r\nabc\r\nVALUE k2 4294967295 0 99\r\n\r\nEND\r\n";
        assert_eq!(
            parse_byte_by_byte(stream),
            [
                Reply::Stored,
                Reply::NotStored,
                Reply::Exists,
                Reply::NotFound,
                Reply::Deleted,
                Reply::Touched,
                Reply::Ok,
                Reply::End,
                Reply::Number(0),
                Reply::Number(u64::MAX),
                Reply::Version(b"1.6.18"),
                Reply::Error(b""),
                Reply::Error(b"unknown command"),
                Reply::ClientError(b"bad data chunk"),
                Reply::ServerError(b"out of memory storing object"),
                Reply::Value(Value {
                    key: b"k1",
                    flags: 7,
                    data: b"abc",
                    cas: None
                }),
                Reply::Value(Value {
                    key: b"k2",
                    flags: u32::MAX,
                    data: b"",
                    cas: Some(99)
                }),
                Reply::End,
            ]
        );
    }

    #[test]
    fn data_is_binary_safe() {
        // Data that looks like the end of the reply, a VALUE line, and bare CRs and LFs.
        let data: &[u8] = b"\r\nEND\r\nVALUE x 0 1\r\n\n\r\0\xff";
        let mut stream = format!("VALUE bin 0 {}\r\n", data.len()).into_bytes();
        stream.extend_from_slice(data);
        stream.extend_from_slice(b"\r\nEND\r\n");
        let items = parse_byte_by_byte(&stream);
        assert_eq!(items.len(), 2);
        match items[0] {
            Reply::Value(v) => assert_eq!((v.key, v.data), (&b"bin"[..], data)),
            other => panic!("{other:?}"),
        }
        assert_eq!(items[1], Reply::End);
        // The whole 1 MiB of CRLFs is taken by its count.
        let big = vec![b'\n'; 1 << 20];
        let mut stream = format!("VALUE big 0 {}\r\n", big.len()).into_bytes();
        stream.extend_from_slice(&big);
        stream.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse_reply(&stream[..stream.len() - 1]),
            Parsed::Incomplete
        ));
        match parse_reply(&stream) {
            Parsed::Reply {
                reply: Reply::Value(v),
                len,
            } => assert_eq!((v.data.len(), len), (big.len(), stream.len())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_multiget_reply_is_values_then_end() {
        let mut stream = Vec::new();
        for (key, data) in [("k1", "one"), ("k3", "three"), ("k4", "")] {
            stream.extend_from_slice(
                format!("VALUE {key} 0 {}\r\n{data}\r\n", data.len()).as_bytes(),
            );
        }
        stream.extend_from_slice(b"END\r\nSTORED\r\n");
        let items = parse_byte_by_byte(&stream);
        let keys: Vec<&[u8]> = items
            .iter()
            .filter_map(|r| match r {
                Reply::Value(v) => Some(v.key),
                _ => None,
            })
            .collect();
        assert_eq!(keys, [&b"k1"[..], b"k3", b"k4"]);
        assert_eq!(items[3..], [Reply::End, Reply::Stored]);
        // One item per call, whatever follows it in the buffer.
        match parse_reply(&stream) {
            Parsed::Reply { len, .. } => assert_eq!(&stream[..len], b"VALUE k1 0 3\r\none\r\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_broken() {
        let broken = |input: &[u8]| matches!(parse_reply(input), Parsed::Broken(_));
        for garbage in [
            &b"HELLO\r\n"[..],
            b"\r\n",
            b" STORED\r\n",
            b"STORED \r\n",
            b"STORED\n",
            b"\n",
            b"stored\r\n",
            b"END extra\r\n",
            b"12a\r\n",
            b"-1\r\n",
            b"18446744073709551616\r\n",
            b"VALUE\r\n",
            b"VALUE k\r\n",
            b"VALUE k 0\r\n",
            b"VALUE k 0 x\r\n",
            b"VALUE k x 1\r\n",
            b"VALUE k 4294967296 1\r\n",
            b"VALUE k 0 -1\r\n",
            b"VALUE k 0 1 cas\r\n",
            b"VALUE k 0 1 2 3\r\n",
            b"VALUE k 0 1\r\nab\r\n",
            b"VALUE k 0 1\r\na\n\r",
            b"VALUE k 0 99999999999999999999\r\n",
            b"VALUE k 0 1114113\r\n",
        ] {
            assert!(broken(garbage), "{:?}", String::from_utf8_lossy(garbage));
        }
        // A line that never ends is broken once it passes the limit, not before.
        let long = vec![b'x'; Limits::DEFAULT.max_line + 1];
        assert_eq!(parse_reply(&long), Parsed::Incomplete);
        let longer = vec![b'x'; Limits::DEFAULT.max_line + 2];
        assert_eq!(
            parse_reply(&longer),
            Parsed::Broken(Broken::LineTooLong {
                max: Limits::DEFAULT.max_line
            })
        );
        // The largest value accepted, and one byte more.
        let max = Limits::DEFAULT.max_data;
        assert_eq!(
            parse_reply(format!("VALUE k 0 {max}\r\n").as_bytes()),
            Parsed::Incomplete
        );
        assert!(broken(format!("VALUE k 0 {}\r\n", max + 1).as_bytes()));
        // Tighter limits apply as given.
        let tight = Limits {
            max_line: 11,
            max_data: 2,
        };
        assert!(matches!(
            parse_reply_with(b"VALUE k 0 3\r\n", &tight),
            Parsed::Broken(Broken::DataTooLarge { len: 3, max: 2 })
        ));
        assert!(matches!(
            parse_reply_with(b"SERVER_ERROR\r\n", &tight),
            Parsed::Broken(Broken::LineTooLong { max: 11 })
        ));
        assert!(matches!(
            parse_reply_with(b"STORED\r\n", &tight),
            Parsed::Reply { len: 8, .. }
        ));
        let huge = Limits {
            max_line: usize::MAX,
            max_data: usize::MAX,
        };
        assert_eq!(
            parse_reply_with(b"VALUE k 0 18446744073709551615\r\n", &huge),
            Parsed::Broken(Broken::DataTooLarge {
                len: u64::MAX,
                max: usize::MAX
            })
        );
        assert_eq!(parse_reply_with(b"END", &huge), Parsed::Incomplete);
        // Every reason has a message naming what was wrong.
        match parse_reply(b"HELLO\r\n") {
            Parsed::Broken(why) => assert!(why.to_string().contains("HELLO"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift: the library has no random-number dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Bytes drawn mostly from the protocol's own alphabet, so parses get deep.
        let alphabet = b"VALUE END STORED 0123456789\r\n\r\nxk";
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| match next() % 8 {
                    0 => next() as u8,
                    _ => alphabet[(next() % alphabet.len() as u64) as usize],
                })
                .collect();
            if let Parsed::Reply { len, .. } = parse_reply(&input) {
                assert!(len > 0 && len <= input.len());
            }
        }
    }
}
