//! Server side: writing replies into a connection's output buffer. Numbers are formatted with
//! `itoa` into the buffer itself, so a reply allocates nothing once the buffer has room.

use bytes::BytesMut;

use super::command::{Key, MetaFlags};

/// A reply line: `text` and `\r\n`.
pub fn line(out: &mut BytesMut, text: &[u8]) {
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

/// A number on a line of its own (`incr`, `decr`).
pub fn number_line(out: &mut BytesMut, n: u64) {
    number(out, n);
    out.extend_from_slice(b"\r\n");
}

fn number(out: &mut BytesMut, n: impl itoa::Integer) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(n).as_bytes());
}

/// One item of a `get`: `VALUE <key> <flags> <bytes> [<cas>]`, then the data.
pub fn value(out: &mut BytesMut, key: &[u8], client_flags: u32, data: &[u8], cas: Option<u64>) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" ");
    number(out, client_flags);
    out.extend_from_slice(b" ");
    number(out, data.len());
    if let Some(cas) = cas {
        out.extend_from_slice(b" ");
        number(out, cas);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// One `STAT <name> <value>` line.
pub fn stat(out: &mut BytesMut, name: &str, value: impl std::fmt::Display) {
    use std::fmt::Write as _;
    // Writing into a BytesMut cannot fail.
    let _ = write!(out, "STAT {name} {value}\r\n");
}

fn flag_number(out: &mut BytesMut, flag: u8, n: impl itoa::Integer) {
    out.extend_from_slice(&[b' ', flag]);
    number(out, n);
}

fn flag_bytes(out: &mut BytesMut, flag: u8, bytes: &[u8]) {
    out.extend_from_slice(&[b' ', flag]);
    out.extend_from_slice(bytes);
}

/// What a meta reply can say about an item, for the flags that ask for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ItemInfo {
    pub cas: u64,
    pub client_flags: u32,
    /// Seconds to live, -1 for forever.
    pub ttl_s: i64,
    pub size: usize,
    pub fetched_before: bool,
    pub idle_s: u32,
    /// The client won the right to fill a missing item (`N` on a miss).
    pub won: bool,
}

/// The flags a meta reply may return, by command: the rest are accepted and say nothing.
pub const MG_RETURNS: &[u8] = b"bcfhklOst";
pub const MS_RETURNS: &[u8] = b"bckOs";
pub const MD_RETURNS: &[u8] = b"bkO";
pub const MA_RETURNS: &[u8] = b"bckOt";
/// On a miss or a failure only the opaque and the key come back.
pub const FAILURE_RETURNS: &[u8] = b"bkO";

/// A meta reply: `code` (`HD`, `VA <len>`, `EN`, ...), then, in the request's order, every flag
/// of `returns` the client asked for, then `\r\n` and the value when there is one.
pub fn meta(
    out: &mut BytesMut,
    code: &[u8],
    key: &Key<'_>,
    flags: &MetaFlags<'_>,
    returns: &[u8],
    item: &ItemInfo,
    value: Option<&[u8]>,
) {
    out.extend_from_slice(code);
    if let Some(v) = value {
        out.extend_from_slice(b" ");
        number(out, v.len());
    }
    for (flag, token) in flags.iter() {
        if !returns.contains(&flag) {
            continue;
        }
        match flag {
            // `b` comes back last, with the key, to say the key is base64.
            b'b' => continue,
            b'c' => flag_number(out, b'c', item.cas),
            b'f' => flag_number(out, b'f', item.client_flags),
            b'h' => flag_number(out, b'h', u8::from(item.fetched_before)),
            b'l' => flag_number(out, b'l', item.idle_s),
            b's' => flag_number(out, b's', item.size),
            b't' => flag_number(out, b't', item.ttl_s),
            b'k' => flag_bytes(out, b'k', key.wire),
            b'O' => flag_bytes(out, b'O', token),
            _ => {}
        }
    }
    if flags.has(b'b') && flags.has(b'k') && returns.contains(&b'k') {
        out.extend_from_slice(b" b");
    }
    if item.won {
        out.extend_from_slice(b" W");
    }
    out.extend_from_slice(b"\r\n");
    if let Some(v) = value {
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memcache::command::{parse, Command, Parsed};

    #[test]
    fn value_lines() {
        let mut out = BytesMut::new();
        value(&mut out, b"k", 5, b"a\r\nb", Some(9));
        value(&mut out, b"j", 0, b"", None);
        line(&mut out, b"END");
        assert_eq!(
            &out[..],
            b"VALUE k 5 4 9\r\na\r\nb\r\nVALUE j 0 0\r\n\r\nEND\r\n"
        );
    }

    #[test]
    fn meta_replies_return_the_asked_flags_in_order() {
        let Parsed::Command {
            command: Command::Meta { key, flags, .. },
            ..
        } = parse(b"mg Zm9v b t v O7 c k f q\r\n")
        else {
            panic!()
        };
        let item = ItemInfo {
            cas: 3,
            client_flags: 5,
            ttl_s: -1,
            ..ItemInfo::default()
        };
        let mut out = BytesMut::new();
        meta(
            &mut out,
            b"VA",
            &key,
            &flags,
            MG_RETURNS,
            &item,
            Some(b"hi"),
        );
        assert_eq!(&out[..], b"VA 2 t-1 O7 c3 kZm9v f5 b\r\nhi\r\n");
        out.clear();
        meta(&mut out, b"EN", &key, &flags, FAILURE_RETURNS, &item, None);
        assert_eq!(&out[..], b"EN O7 kZm9v b\r\n");
    }
}
