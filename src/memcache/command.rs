//! Server side: splitting one command off the front of a connection's input and reading it, in
//! place, into a [`Command`] that borrows the input.
//!
//! A command is a line (`\r\n`, or a bare `\n` as memcached also takes) and, for the storage
//! commands and `ms`, a data block of the length the line gives followed by `\r\n`. Anything
//! that is not a valid command becomes a [`Parsed::Invalid`] carrying memcached's reply and
//! how many bytes to skip, so that the stream stays in step: a storage command whose line is
//! bad but whose length parses has its data block skipped too, and one whose value is over
//! the limit has it discarded as it arrives.

use super::{Error, MAX_LINE};
use crate::protocol::{MAX_KEY_LEN, MAX_VALUE_LEN};

/// memcached's storage commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

/// memcached's retrieval commands: `gets` and `gats` also return the CAS unique; `gat` and
/// `gats` also touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrieval {
    Get,
    Gets,
    Gat,
    Gats,
}

impl Retrieval {
    pub fn with_cas(self) -> bool {
        matches!(self, Retrieval::Gets | Retrieval::Gats)
    }

    pub fn name(self) -> &'static [u8] {
        match self {
            Retrieval::Get => b"get",
            Retrieval::Gets => b"gets",
            Retrieval::Gat => b"gat",
            Retrieval::Gats => b"gats",
        }
    }
}

/// The meta commands that address a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    Get,
    Set,
    Delete,
    Arith,
    Debug,
}

/// A key as the client sent it: plain, or base64 (meta `b`) and decoded here.
#[derive(Clone, Copy)]
pub struct Key<'a> {
    /// The key's bytes as the store sees them.
    decoded: [u8; MAX_KEY_LEN],
    len: usize,
    /// The key as written on the wire (base64 text when `b` was given).
    pub wire: &'a [u8],
    pub base64: bool,
}

impl<'a> Key<'a> {
    fn plain(wire: &'a [u8]) -> Key<'a> {
        let mut decoded = [0; MAX_KEY_LEN];
        decoded[..wire.len()].copy_from_slice(wire);
        Key {
            decoded,
            len: wire.len(),
            wire,
            base64: false,
        }
    }

    fn from_base64(wire: &'a [u8]) -> Option<Key<'a>> {
        use base64::Engine as _;
        let mut decoded = [0; MAX_KEY_LEN];
        let len = base64::engine::general_purpose::STANDARD
            .decode_slice(wire, &mut decoded)
            .ok()?;
        (len > 0).then_some(Key {
            decoded,
            len,
            wire,
            base64: true,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.decoded[..self.len]
    }
}

impl std::fmt::Debug for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(self.bytes()))
    }
}

/// The flags of a meta command, kept as the client wrote them: replies list the flags they
/// return in the request's order.
#[derive(Debug, Clone, Copy)]
pub struct MetaFlags<'a> {
    tokens: &'a [u8],
    present: u64,
}

fn flag_bit(flag: u8) -> Option<u64> {
    match flag {
        b'a'..=b'z' => Some(1 << (flag - b'a')),
        b'A'..=b'Z' => Some(1 << (26 + flag - b'A')),
        _ => None,
    }
}

impl<'a> MetaFlags<'a> {
    fn parse(tokens: &'a [u8]) -> Result<MetaFlags<'a>, Error> {
        let mut present = 0;
        for token in words(tokens) {
            let bit = flag_bit(token[0]).ok_or(Error::InvalidFlag)?;
            if present & bit != 0 {
                return Err(Error::DuplicateFlag);
            }
            present |= bit;
        }
        let flags = MetaFlags { tokens, present };
        // The opaque is echoed back as is: bound it as memcached does.
        if flags.token(b'O').is_some_and(|o| o.len() > 32) {
            return Err(Error::OpaqueTooLong);
        }
        Ok(flags)
    }

    /// Whether the client gave `flag`.
    pub fn has(&self, flag: u8) -> bool {
        flag_bit(flag).is_some_and(|bit| self.present & bit != 0)
    }

    /// The token after `flag` (`T30` gives `30`), if the flag was given.
    pub fn token(&self, flag: u8) -> Option<&'a [u8]> {
        if !self.has(flag) {
            return None;
        }
        words(self.tokens).find(|t| t[0] == flag).map(|t| &t[1..])
    }

    /// The token after `flag` as a number; an error when it is there but not a number.
    pub fn number<T: std::str::FromStr>(&self, flag: u8) -> Result<Option<T>, Error> {
        match self.token(flag) {
            None => Ok(None),
            Some(t) => number(t).map(Some).ok_or(Error::BadToken),
        }
    }

    /// The flags in the order the client wrote them: (flag, token).
    pub fn iter(&self) -> impl Iterator<Item = (u8, &'a [u8])> {
        words(self.tokens).map(|t| (t[0], &t[1..]))
    }
}

/// One command, borrowing from the input. A decoded base64 key is held inline (so reading one
/// allocates nothing), which makes meta commands the large variant; a command lives on the
/// stack for the time it takes to run it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    Retrieve {
        kind: Retrieval,
        /// `gat`/`gats`: the new exptime.
        exptime: i64,
        /// The keys, space-separated as they came (each already checked).
        keys: &'a [u8],
    },
    Store {
        kind: Storage,
        key: &'a [u8],
        client_flags: u32,
        exptime: i64,
        cas: u64,
        noreply: bool,
        data: &'a [u8],
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Arith {
        incr: bool,
        key: &'a [u8],
        delta: u64,
        noreply: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: i64,
        noreply: bool,
    },
    FlushAll {
        delay: i64,
        noreply: bool,
    },
    Stats {
        /// What follows `stats` (a group name), empty for the general stats.
        group: &'a [u8],
    },
    Version,
    Verbosity {
        noreply: bool,
    },
    Quit,
    MetaNoop,
    Meta {
        kind: MetaKind,
        key: Key<'a>,
        flags: MetaFlags<'a>,
        /// `ms`: the value.
        data: &'a [u8],
    },
}

impl<'a> Command<'a> {
    /// The key this command addresses, when it addresses exactly one.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Command::Store { key, .. }
            | Command::Delete { key, .. }
            | Command::Arith { key, .. }
            | Command::Touch { key, .. } => Some(key),
            Command::Meta { key, .. } => Some(key.bytes()),
            _ => None,
        }
    }

    /// Whether this command's success reply is suppressed (`noreply`).
    pub fn noreply(&self) -> bool {
        match *self {
            Command::Store { noreply, .. }
            | Command::Delete { noreply, .. }
            | Command::Arith { noreply, .. }
            | Command::Touch { noreply, .. }
            | Command::FlushAll { noreply, .. }
            | Command::Verbosity { noreply } => noreply,
            _ => false,
        }
    }
}

/// What the front of the input holds.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A whole command of `len` bytes.
    Command { command: Command<'a>, len: usize },
    /// Not yet: the input must hold at least `total` bytes (the line's end is not known yet
    /// when `total` is just one more than what is there).
    Incomplete { total: usize },
    /// Not a valid command: answer `error`, then skip `skip` bytes (possibly more than the
    /// input holds yet; they are discarded as they arrive). A refused write of `unlink`
    /// removes that key's old item, as memcached does.
    Invalid {
        error: Error,
        skip: usize,
        unlink: Option<&'a [u8]>,
    },
    /// A line longer than [`MAX_LINE`]: answer and close, the stream cannot be followed.
    LineTooLong,
}

/// Space-separated words of a line.
fn words(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|w| !w.is_empty())
}

fn number<T: std::str::FromStr>(word: &[u8]) -> Option<T> {
    std::str::from_utf8(word).ok()?.parse().ok()
}

/// A key as the text protocol allows it: 1..=250 bytes without a space, NUL or LF. Other
/// control bytes are taken, as memcached takes them: memcaslap's own keys start with bytes
/// such as 0x10 and 0x7f.
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.iter().all(|&b| !matches!(b, b' ' | 0 | b'\n'))
}

/// `bytes` without the spaces around it (only spaces separate words; a tab is part of a key).
fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// Splits one command off the front of `input`.
pub fn parse(input: &[u8]) -> Parsed<'_> {
    let Some(eol) = input.iter().take(MAX_LINE + 2).position(|&b| b == b'\n') else {
        if input.len() > MAX_LINE {
            return Parsed::LineTooLong;
        }
        return Parsed::Incomplete {
            total: input.len() + 1,
        };
    };
    let line_len = eol + 1;
    let line = &input[..eol];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let invalid = |error| Parsed::Invalid {
        error,
        skip: line_len,
        unlink: None,
    };
    let mut w = words(line);
    let Some(name) = w.next() else {
        return invalid(Error::UnknownCommand);
    };
    let rest = after(line, name);
    let command = match name {
        b"get" | b"gets" => {
            let kind = if name == b"get" {
                Retrieval::Get
            } else {
                Retrieval::Gets
            };
            return retrieval(kind, 0, rest, line_len);
        }
        b"gat" | b"gats" => {
            let kind = if name == b"gat" {
                Retrieval::Gat
            } else {
                Retrieval::Gats
            };
            let Some(exptime) = w.next() else {
                return invalid(Error::BadFormat);
            };
            let Some(exptime) = number::<i64>(exptime) else {
                return invalid(Error::InvalidExptime);
            };
            return retrieval(kind, exptime, after(line, exptime_word(rest)), line_len);
        }
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
            let kind = match name {
                b"set" => Storage::Set,
                b"add" => Storage::Add,
                b"replace" => Storage::Replace,
                b"append" => Storage::Append,
                b"prepend" => Storage::Prepend,
                _ => Storage::Cas,
            };
            return storage(kind, w, input, line_len);
        }
        b"delete" => {
            let Some(key) = w.next() else {
                return invalid(Error::UnknownCommand);
            };
            // memcached still takes the old `delete <key> 0`; any other time is an error.
            let mut noreply = false;
            let rest: [Option<&[u8]>; 3] = [w.next(), w.next(), w.next()];
            if rest[2].is_some() {
                return invalid(Error::UnknownCommand);
            }
            for word in rest.into_iter().flatten() {
                match word {
                    b"noreply" => noreply = true,
                    b"0" => {}
                    _ => return invalid(Error::DeleteTime),
                }
            }
            if !valid_key(key) {
                return invalid(Error::BadFormat);
            }
            Command::Delete { key, noreply }
        }
        b"incr" | b"decr" => {
            let (Some(key), Some(delta)) = (w.next(), w.next()) else {
                return invalid(Error::UnknownCommand);
            };
            let noreply = match (w.next(), w.next()) {
                (None, _) => false,
                (Some(b"noreply"), None) => true,
                _ => return invalid(Error::UnknownCommand),
            };
            if !valid_key(key) {
                return invalid(Error::BadFormat);
            }
            let Some(delta) = number::<u64>(delta) else {
                return invalid(Error::InvalidDelta);
            };
            Command::Arith {
                incr: name == b"incr",
                key,
                delta,
                noreply,
            }
        }
        b"touch" => {
            let (Some(key), Some(exptime)) = (w.next(), w.next()) else {
                return invalid(Error::UnknownCommand);
            };
            let noreply = w.next() == Some(b"noreply");
            if !valid_key(key) {
                return invalid(Error::BadFormat);
            }
            let Some(exptime) = number::<i64>(exptime) else {
                return invalid(Error::InvalidExptime);
            };
            Command::Touch {
                key,
                exptime,
                noreply,
            }
        }
        b"flush_all" => {
            let mut delay = 0;
            let mut noreply = false;
            for (i, word) in w.enumerate() {
                if i >= 2 {
                    return invalid(Error::UnknownCommand);
                }
                if word == b"noreply" {
                    noreply = true;
                } else {
                    match number::<i64>(word) {
                        Some(d) => delay = d,
                        None => return invalid(Error::InvalidExptime),
                    }
                }
            }
            Command::FlushAll { delay, noreply }
        }
        b"stats" => Command::Stats {
            group: trim_spaces(rest),
        },
        // Extra words after these are answered ERROR, as memccapable expects of a server
        // that does not call itself memcached 1.6 (`mn` takes flags and ignores them).
        b"version" | b"quit" if w.next().is_some() => return invalid(Error::UnknownCommand),
        b"version" => Command::Version,
        b"quit" => Command::Quit,
        b"mn" => Command::MetaNoop,
        b"verbosity" => {
            // `verbosity <level> [noreply]`; memcached also takes a bare `verbosity noreply`.
            let (Some(first), second, None) = (w.next(), w.next(), w.next()) else {
                return invalid(Error::UnknownCommand);
            };
            let noreply = second.unwrap_or(first) == b"noreply";
            if second.is_some() && !noreply {
                return invalid(Error::UnknownCommand);
            }
            Command::Verbosity { noreply }
        }
        b"mg" | b"ms" | b"md" | b"ma" | b"me" => {
            let kind = match name {
                b"mg" => MetaKind::Get,
                b"ms" => MetaKind::Set,
                b"md" => MetaKind::Delete,
                b"ma" => MetaKind::Arith,
                _ => MetaKind::Debug,
            };
            return meta(kind, w, line, input, line_len);
        }
        _ => return invalid(Error::UnknownCommand),
    };
    Parsed::Command {
        command,
        len: line_len,
    }
}

/// The words after `gat`'s exptime: `rest` starts at the exptime.
fn exptime_word(rest: &[u8]) -> &[u8] {
    words(rest).next().unwrap_or(rest)
}

fn retrieval(kind: Retrieval, exptime: i64, keys: &[u8], line_len: usize) -> Parsed<'_> {
    let mut n = 0;
    for key in words(keys) {
        if !valid_key(key) {
            return Parsed::Invalid {
                error: Error::BadFormat,
                skip: line_len,
                unlink: None,
            };
        }
        n += 1;
    }
    if n == 0 {
        return Parsed::Invalid {
            error: Error::UnknownCommand,
            skip: line_len,
            unlink: None,
        };
    }
    Parsed::Command {
        command: Command::Retrieve {
            kind,
            exptime,
            keys: trim_spaces(keys),
        },
        len: line_len,
    }
}

/// The data block after a line: whole, too large, or still arriving.
#[allow(clippy::result_large_err)]
fn data_block(input: &[u8], line_len: usize, bytes: usize) -> Result<&[u8], Parsed<'_>> {
    let total = line_len + bytes + 2;
    if bytes > MAX_VALUE_LEN {
        return Err(Parsed::Invalid {
            error: Error::TooLarge,
            skip: total,
            unlink: None,
        });
    }
    if input.len() < total {
        return Err(Parsed::Incomplete { total });
    }
    if &input[line_len + bytes..total] != b"\r\n" {
        return Err(Parsed::Invalid {
            error: Error::BadDataChunk,
            skip: total,
            unlink: None,
        });
    }
    Ok(&input[line_len..line_len + bytes])
}

fn storage<'a>(
    kind: Storage,
    w: impl Iterator<Item = &'a [u8]>,
    input: &'a [u8],
    line_len: usize,
) -> Parsed<'a> {
    let invalid = |error| Parsed::Invalid {
        error,
        skip: line_len,
        unlink: None,
    };
    let mut args = [&b""[..]; 7];
    let mut n = 0;
    for word in w {
        if n == args.len() {
            return invalid(Error::UnknownCommand);
        }
        args[n] = word;
        n += 1;
    }
    // key flags exptime bytes [cas] [noreply], as memcached counts them: a wrong count is
    // ERROR, a wrong field CLIENT_ERROR. Neither skips a data block: memcached does not.
    let fixed = if kind == Storage::Cas { 5 } else { 4 };
    let noreply = match n - fixed.min(n) {
        0 if n == fixed => false,
        1 if args[fixed] == b"noreply" => true,
        1 => false,
        _ => return invalid(Error::UnknownCommand),
    };
    let [key, flags, exptime, bytes, cas_word, ..] = args;
    let (Some(client_flags), Some(exptime), Some(bytes)) = (
        number::<u32>(flags),
        number::<i64>(exptime),
        number::<usize>(bytes),
    ) else {
        return invalid(Error::BadFormat);
    };
    let cas = match kind {
        Storage::Cas => match number::<u64>(cas_word) {
            Some(cas) => cas,
            None => return invalid(Error::BadFormat),
        },
        _ => 0,
    };
    if !valid_key(key) {
        return invalid(Error::BadFormat);
    }
    let total = line_len.saturating_add(bytes).saturating_add(2);
    if bytes > MAX_VALUE_LEN {
        // memcached discards the data block, and unlinks the key's old item so that a
        // client never reads a value older than the one it tried to write.
        return Parsed::Invalid {
            error: Error::TooLarge,
            skip: total,
            unlink: Some(key),
        };
    }
    if input.len() < total {
        return Parsed::Incomplete { total };
    }
    if &input[line_len + bytes..total] != b"\r\n" {
        return Parsed::Invalid {
            error: if noreply {
                Error::Silent
            } else {
                Error::BadDataChunk
            },
            skip: total,
            unlink: None,
        };
    }
    Parsed::Command {
        command: Command::Store {
            kind,
            key,
            client_flags,
            exptime,
            cas,
            noreply,
            data: &input[line_len..line_len + bytes],
        },
        len: total,
    }
}

/// What follows `word` in `line`, of which it is a part.
fn after<'a>(line: &'a [u8], word: &[u8]) -> &'a [u8] {
    let end = (word.as_ptr() as usize + word.len()).saturating_sub(line.as_ptr() as usize);
    line.get(end..).unwrap_or_default()
}

fn meta<'a>(
    kind: MetaKind,
    mut w: impl Iterator<Item = &'a [u8]>,
    line: &'a [u8],
    input: &'a [u8],
    line_len: usize,
) -> Parsed<'a> {
    let invalid = |error, skip| Parsed::Invalid {
        error,
        skip,
        unlink: None,
    };
    let Some(key_word) = w.next() else {
        return invalid(Error::UnknownCommand, line_len);
    };
    let mut after_key = after(line, key_word);
    let mut skip = line_len;
    let mut bytes = 0;
    if kind == MetaKind::Set {
        let Some(len_word) = w.next() else {
            return invalid(Error::BadFormat, line_len);
        };
        let Some(n) = number::<usize>(len_word) else {
            return invalid(Error::BadFormat, line_len);
        };
        bytes = n;
        skip = line_len.saturating_add(n).saturating_add(2);
        after_key = after(line, len_word);
    }
    let flags = match MetaFlags::parse(after_key) {
        Ok(flags) => flags,
        Err(error) => return invalid(error, skip),
    };
    let key = if flags.has(b'b') {
        match Key::from_base64(key_word) {
            Some(key) => key,
            None => return invalid(Error::BadFormat, skip),
        }
    } else if valid_key(key_word) {
        Key::plain(key_word)
    } else {
        return invalid(Error::BadFormat, skip);
    };
    let data = if kind == MetaKind::Set {
        match data_block(input, line_len, bytes) {
            Ok(data) => data,
            Err(other) => return other,
        }
    } else {
        &[]
    };
    Parsed::Command {
        command: Command::Meta {
            kind,
            key,
            flags,
            data,
        },
        len: skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(input: &[u8]) -> (Command<'_>, usize) {
        match parse(input) {
            Parsed::Command { command, len } => (command, len),
            other => panic!("{other:?}"),
        }
    }

    fn error(input: &[u8]) -> (Error, usize) {
        match parse(input) {
            Parsed::Invalid { error, skip, .. } => (error, skip),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn storage_commands_take_their_data_block() {
        let input = b"set k 5 -1 4 noreply\r\na\r\nb\r\nget k\r\n";
        let (c, len) = command(input);
        assert_eq!(len, 28);
        match c {
            Command::Store {
                kind,
                key,
                client_flags,
                exptime,
                noreply,
                data,
                ..
            } => {
                assert_eq!(
                    (kind, key, client_flags, exptime),
                    (Storage::Set, &b"k"[..], 5, -1)
                );
                assert!(noreply);
                assert_eq!(data, b"a\r\nb");
            }
            other => panic!("{other:?}"),
        }
        for cut in 0..len {
            assert!(
                matches!(parse(&input[..cut]), Parsed::Incomplete { .. }),
                "cut at {cut}"
            );
        }
        let (c, _) = command(b"cas k 0 0 1 77\r\nx\r\n");
        assert!(matches!(
            c,
            Command::Store {
                cas: 77,
                kind: Storage::Cas,
                ..
            }
        ));
    }

    #[test]
    fn bad_lines_get_memcached_errors_and_keep_the_stream_in_step() {
        assert_eq!(error(b"bogus\r\n"), (Error::UnknownCommand, 7));
        assert_eq!(error(b"\r\n"), (Error::UnknownCommand, 2));
        assert_eq!(error(b"set k 0 0 2\r\nabc\r\n"), (Error::BadDataChunk, 17));
        let long = format!("get {}\r\n", "a".repeat(251));
        assert_eq!(error(long.as_bytes()).0, Error::BadFormat);
        // A bad flags field: memcached answers the line and reads on from the next one.
        assert_eq!(error(b"set k x 0 3\r\nabc\r\n"), (Error::BadFormat, 13));
        assert_eq!(error(b"set k 0 0\r\n").0, Error::UnknownCommand);
        assert_eq!(error(b"version foo\r\n").0, Error::UnknownCommand);
        let big = format!("set k 0 0 {}\r\n", MAX_VALUE_LEN + 1);
        let (e, skip) = error(big.as_bytes());
        assert_eq!(e, Error::TooLarge);
        assert_eq!(skip, big.len() + MAX_VALUE_LEN + 3);
        assert_eq!(error(b"incr k x\r\n").0, Error::InvalidDelta);
        assert_eq!(error(b"get\r\n").0, Error::UnknownCommand);
        assert_eq!(error(b"get a\0b\r\n").0, Error::BadFormat);
        assert_eq!(error(b"delete a 0 noreply x\r\n").0, Error::UnknownCommand);
        assert_eq!(error(b"mg k v v\r\n").0, Error::DuplicateFlag);
        assert!(matches!(
            parse(&vec![b'a'; MAX_LINE + 10]),
            Parsed::LineTooLong
        ));
    }

    #[test]
    fn retrieval_keeps_its_keys_and_bare_newlines_work() {
        let (c, len) = command(b"gets a bb  ccc\n");
        assert_eq!(len, 15);
        match c {
            Command::Retrieve { kind, keys, .. } => {
                assert_eq!(kind, Retrieval::Gets);
                assert_eq!(words(keys).collect::<Vec<_>>(), [&b"a"[..], b"bb", b"ccc"]);
            }
            other => panic!("{other:?}"),
        }
        let (c, _) = command(b"get \tx\t \r\n");
        assert!(matches!(c, Command::Retrieve { keys: b"\tx\t", .. }));
        let (c, _) = command(b"gat 100 x y\r\n");
        assert!(matches!(
            c,
            Command::Retrieve {
                kind: Retrieval::Gat,
                exptime: 100,
                keys: b"x y"
            }
        ));
    }

    #[test]
    fn meta_commands_keep_their_flags_in_order() {
        let (c, len) = command(b"ms key 2 T30 F5 O9 q\r\nhi\r\n");
        assert_eq!(len, 26);
        let Command::Meta {
            kind,
            key,
            flags,
            data,
        } = c
        else {
            panic!("{c:?}");
        };
        assert_eq!(
            (kind, key.bytes(), data),
            (MetaKind::Set, &b"key"[..], &b"hi"[..])
        );
        assert_eq!(flags.number::<i64>(b'T').unwrap(), Some(30));
        assert_eq!(flags.token(b'O'), Some(&b"9"[..]));
        assert!(flags.has(b'q') && !flags.has(b'v'));
        let order: Vec<u8> = flags.iter().map(|(f, _)| f).collect();
        assert_eq!(order, b"TFOq");
        let (c, _) = command(b"mg Zm9v b v k\r\n");
        let Command::Meta { key, .. } = c else {
            panic!()
        };
        assert_eq!((key.bytes(), key.wire), (&b"foo"[..], &b"Zm9v"[..]));
        assert_eq!(error(b"mg k !\r\n").0, Error::InvalidFlag);
        assert_eq!(error(b"ms k 2 T1\r\nabc\r\n").0, Error::BadDataChunk);
    }
}
