//! memcached's commands that address one key, run against the store of the core that owns it,
//! each writing its text reply. The same function runs a command read on the owner core and
//! one forwarded to it, so a reply does not depend on where the key lives.

use bytes::BytesMut;

use crate::memcache::command::{Command, Key, MetaFlags, MetaKind, Retrieval, Storage};
use crate::memcache::reply::{self, ItemInfo};
use crate::memcache::{ttl_of_exptime, Error};
use crate::protocol::OpKind;
use crate::store::{Arith, Counted, Deleted, Mode, Store, Stored, Ttl, Write};

/// The clocks a command reads: the store's, and Unix time for absolute exptimes.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub ms: u64,
    pub unix: i64,
}

/// The operation a command counts as, for per-operation counters and service times.
pub fn kind(command: &Command<'_>) -> OpKind {
    match command {
        Command::Retrieve { .. } => OpKind::Get,
        Command::Store { .. } => OpKind::Set,
        Command::Delete { .. } => OpKind::Delete,
        Command::Arith { .. } => OpKind::Arith,
        Command::Touch { .. } => OpKind::Touch,
        Command::FlushAll { .. } => OpKind::Flush,
        Command::Stats { .. } => OpKind::Stats,
        Command::Meta { kind, .. } => match kind {
            MetaKind::Get | MetaKind::Debug => OpKind::Get,
            MetaKind::Set => OpKind::Set,
            MetaKind::Delete => OpKind::Delete,
            MetaKind::Arith => OpKind::Arith,
        },
        Command::Version | Command::Verbosity { .. } | Command::Quit | Command::MetaNoop => {
            OpKind::Ping
        }
    }
}

/// Seconds to live as meta replies give them: -1 for forever.
fn ttl_s(ttl_ms: Option<u64>) -> i64 {
    ttl_ms.map_or(-1, |ms| ms.div_ceil(1000) as i64)
}

fn error(out: &mut BytesMut, e: Error) {
    reply::line(out, e.reply());
}

fn too_large(out: &mut BytesMut, e: crate::error::RequestError) {
    tracing::trace!("memcached write refused: {e}");
    error(out, Error::TooLarge);
}

/// One key of a retrieval command: its `VALUE` block on a hit, nothing on a miss.
pub fn retrieve(
    store: &mut Store,
    hash: u64,
    kind: Retrieval,
    exptime: i64,
    key: &[u8],
    now: Now,
    out: &mut BytesMut,
) {
    if matches!(kind, Retrieval::Gat | Retrieval::Gats) {
        let ttl = ttl_of_exptime(exptime, now.unix);
        if !store.touch(hash, key, ttl, now.ms) {
            // Counted as a miss like any other.
            store.get(hash, key, now.ms);
            return;
        }
    }
    if let Some(found) = store.get(hash, key, now.ms) {
        let cas = kind.with_cas().then_some(found.cas);
        reply::value(out, key, found.client_flags, found.value, cas);
    }
}

/// Runs `command`, which addresses the key whose hash is `hash`, and writes its reply (none
/// under `noreply`, or `q` when the reply is one that flag silences). A retrieval writes only
/// its `VALUE` blocks: the `END` is the connection's, after every key's.
pub fn execute(store: &mut Store, hash: u64, command: &Command<'_>, now: Now, out: &mut BytesMut) {
    let start = out.len();
    match *command {
        Command::Retrieve {
            kind,
            exptime,
            keys,
        } => {
            for key in keys.split(|&b| b == b' ').filter(|k| !k.is_empty()) {
                retrieve(store, hash, kind, exptime, key, now, out);
            }
        }
        Command::Store {
            kind,
            key,
            client_flags,
            exptime,
            cas,
            noreply,
            data,
        } => {
            let w = Write {
                key,
                value: data,
                client_flags,
                ttl: ttl_of_exptime(exptime, now.unix),
                mode: match kind {
                    Storage::Set | Storage::Cas => Mode::Set,
                    Storage::Add => Mode::Add,
                    Storage::Replace => Mode::Replace,
                    Storage::Append => Mode::Append,
                    Storage::Prepend => Mode::Prepend,
                },
                compare_cas: (kind == Storage::Cas).then_some(cas),
                new_cas: None,
            };
            match store.write(hash, &w, now.ms) {
                Ok(stored) => reply::line(
                    out,
                    match stored {
                        Stored::Stored { .. } => b"STORED",
                        Stored::NotStored => b"NOT_STORED",
                        Stored::Exists => b"EXISTS",
                        Stored::NotFound => b"NOT_FOUND",
                    },
                ),
                Err(e) => too_large(out, e),
            }
            if noreply {
                out.truncate(start);
            }
        }
        Command::Delete { key, noreply } => {
            let deleted = store.delete(hash, key, now.ms);
            if !noreply {
                reply::line(out, if deleted { b"DELETED" } else { b"NOT_FOUND" });
            }
        }
        Command::Arith {
            incr,
            key,
            delta,
            noreply,
        } => {
            let a = Arith {
                incr,
                delta,
                compare_cas: None,
                new_cas: None,
                vivify: None,
                ttl: Ttl::Keep,
            };
            match store.arith(hash, key, &a, now.ms) {
                Ok(Counted::Value { value, .. }) => reply::number_line(out, value),
                Ok(Counted::NotFound | Counted::Exists) => reply::line(out, b"NOT_FOUND"),
                Ok(Counted::NotNumeric) => error(out, Error::NonNumeric),
                Err(e) => too_large(out, e),
            }
            if noreply {
                out.truncate(start);
            }
        }
        Command::Touch {
            key,
            exptime,
            noreply,
        } => {
            let touched = store.touch(hash, key, ttl_of_exptime(exptime, now.unix), now.ms);
            if !noreply {
                reply::line(out, if touched { b"TOUCHED" } else { b"NOT_FOUND" });
            }
        }
        Command::Meta {
            kind,
            ref key,
            ref flags,
            data,
        } => {
            if let Err(e) = meta(store, hash, kind, key, flags, data, now, out) {
                out.truncate(start);
                error(out, e);
            }
        }
        // Not key commands: the connection answers them itself.
        Command::FlushAll { .. }
        | Command::Stats { .. }
        | Command::Version
        | Command::Verbosity { .. }
        | Command::Quit
        | Command::MetaNoop => error(out, Error::Internal),
    }
}

fn meta_ttl(flags: &MetaFlags<'_>, flag: u8, now: Now) -> Result<Option<Ttl>, Error> {
    Ok(flags
        .number::<i64>(flag)?
        .map(|exptime| ttl_of_exptime(exptime, now.unix)))
}

#[allow(clippy::too_many_arguments)]
fn meta(
    store: &mut Store,
    hash: u64,
    kind: MetaKind,
    key: &Key<'_>,
    flags: &MetaFlags<'_>,
    data: &[u8],
    now: Now,
    out: &mut BytesMut,
) -> Result<(), Error> {
    let quiet = flags.has(b'q');
    let k = key.bytes();
    let failure = |out: &mut BytesMut, code: &[u8]| {
        reply::meta(
            out,
            code,
            key,
            flags,
            reply::FAILURE_RETURNS,
            &ItemInfo::default(),
            None,
        )
    };
    match kind {
        MetaKind::Get => {
            let touch = meta_ttl(flags, b'T', now)?;
            let vivify = meta_ttl(flags, b'N', now)?;
            if let Some(ttl) = touch {
                store.touch(hash, k, ttl, now.ms);
            }
            let (code, value): (&[u8], bool) = if flags.has(b'v') {
                (b"VA", true)
            } else {
                (b"HD", false)
            };
            // One lookup: a second would count a second hit and see the first one's fetch.
            if let Some(found) = store.get(hash, k, now.ms) {
                let item = ItemInfo {
                    cas: found.cas,
                    client_flags: found.client_flags,
                    ttl_s: ttl_s(found.ttl_ms),
                    size: found.value.len(),
                    fetched_before: found.fetched_before,
                    idle_s: found.idle_s,
                    won: false,
                };
                let value = value.then_some(found.value);
                reply::meta(out, code, key, flags, reply::MG_RETURNS, &item, value);
                return Ok(());
            }
            let Some(ttl) = vivify else {
                if !quiet {
                    failure(out, b"EN");
                }
                return Ok(());
            };
            // Vivify: an empty item now exists, and this client is the one to fill it.
            let Ok(Stored::Stored { cas }) = store.write(hash, &Write::set(k, b"", ttl), now.ms)
            else {
                failure(out, b"EN");
                return Ok(());
            };
            let item = ItemInfo {
                cas,
                ttl_s: ttl_s(match ttl {
                    Ttl::In(ms) => Some(ms),
                    _ => None,
                }),
                won: true,
                ..ItemInfo::default()
            };
            let value = value.then_some(&b""[..]);
            reply::meta(out, code, key, flags, reply::MG_RETURNS, &item, value);
        }
        MetaKind::Set => {
            let mode = match flags.token(b'M') {
                None => Mode::Set,
                Some(b"S" | b"s") => Mode::Set,
                Some(b"E" | b"e") => Mode::Add,
                Some(b"R" | b"r") => Mode::Replace,
                Some(b"A" | b"a") => Mode::Append,
                Some(b"P" | b"p") => Mode::Prepend,
                Some(_) => return Err(Error::BadToken),
            };
            let w = Write {
                key: k,
                value: data,
                client_flags: flags.number::<u32>(b'F')?.unwrap_or(0),
                ttl: meta_ttl(flags, b'T', now)?.unwrap_or(Ttl::Never),
                mode,
                compare_cas: flags.number::<u64>(b'C')?,
                new_cas: flags.number::<u64>(b'E')?,
            };
            match store.write(hash, &w, now.ms) {
                Ok(Stored::Stored { cas }) => {
                    if !quiet {
                        let item = ItemInfo {
                            cas,
                            size: data.len(),
                            ..ItemInfo::default()
                        };
                        reply::meta(out, b"HD", key, flags, reply::MS_RETURNS, &item, None);
                    }
                }
                Ok(Stored::NotStored) => failure(out, b"NS"),
                Ok(Stored::Exists) => failure(out, b"EX"),
                Ok(Stored::NotFound) => failure(out, b"NF"),
                Err(_) => return Err(Error::TooLarge),
            }
        }
        MetaKind::Delete => {
            if flags.has(b'I') || flags.has(b'x') {
                return Err(Error::InvalidFlag);
            }
            match store.delete_if(hash, k, flags.number::<u64>(b'C')?, now.ms) {
                Deleted::Deleted if quiet => {}
                Deleted::Deleted => reply::meta(
                    out,
                    b"HD",
                    key,
                    flags,
                    reply::MD_RETURNS,
                    &ItemInfo::default(),
                    None,
                ),
                Deleted::NotFound => failure(out, b"NF"),
                Deleted::Exists => failure(out, b"EX"),
            }
        }
        MetaKind::Arith => {
            let incr = match flags.token(b'M') {
                None | Some(b"I" | b"i" | b"+") => true,
                Some(b"D" | b"d" | b"-") => false,
                Some(_) => return Err(Error::BadToken),
            };
            let vivify = match meta_ttl(flags, b'N', now)? {
                Some(ttl) => Some((flags.number::<u64>(b'J')?.unwrap_or(0), ttl)),
                None => None,
            };
            let a = Arith {
                incr,
                delta: flags.number::<u64>(b'D')?.unwrap_or(1),
                compare_cas: flags.number::<u64>(b'C')?,
                new_cas: flags.number::<u64>(b'E')?,
                vivify,
                ttl: meta_ttl(flags, b'T', now)?.unwrap_or(Ttl::Keep),
            };
            match store.arith(hash, k, &a, now.ms) {
                Ok(Counted::Value { value, cas, ttl_ms }) => {
                    let mut digits = itoa::Buffer::new();
                    let text = digits.format(value).as_bytes();
                    let item = ItemInfo {
                        cas,
                        ttl_s: ttl_s(ttl_ms),
                        size: text.len(),
                        ..ItemInfo::default()
                    };
                    if flags.has(b'v') {
                        reply::meta(out, b"VA", key, flags, reply::MA_RETURNS, &item, Some(text));
                    } else if !quiet {
                        reply::meta(out, b"HD", key, flags, reply::MA_RETURNS, &item, None);
                    }
                }
                Ok(Counted::NotFound) => failure(out, b"NF"),
                Ok(Counted::Exists) => failure(out, b"EX"),
                Ok(Counted::NotNumeric) => return Err(Error::NonNumeric),
                Err(_) => return Err(Error::TooLarge),
            }
        }
        MetaKind::Debug => match store.get(hash, k, now.ms) {
            None => reply::line(out, b"EN"),
            Some(found) => {
                use std::fmt::Write as _;
                out.extend_from_slice(b"ME ");
                out.extend_from_slice(key.wire);
                // Writing into a BytesMut cannot fail.
                let _ = write!(
                    out,
                    " exp={} la={} cas={} fetch={} cls=1 size={}\r\n",
                    ttl_s(found.ttl_ms),
                    found.idle_s,
                    found.cas,
                    if found.fetched_before { "yes" } else { "no" },
                    k.len() + found.value.len(),
                );
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memcache::command::{parse, Parsed};
    use crate::protocol::shard::key_hash;

    /// Runs each command of `script` against one store and returns the replies.
    fn run(store: &mut Store, script: &[u8], ms: u64) -> String {
        let now = Now {
            ms,
            unix: 1_800_000_000,
        };
        let mut out = BytesMut::new();
        let mut rest = script;
        while !rest.is_empty() {
            match parse(rest) {
                Parsed::Command { command, len } => {
                    let hash = command.key().map_or(0, key_hash);
                    match command {
                        Command::Retrieve { keys, .. } => {
                            for key in keys.split(|&b| b == b' ') {
                                let Command::Retrieve { kind, exptime, .. } = command else {
                                    unreachable!()
                                };
                                retrieve(store, key_hash(key), kind, exptime, key, now, &mut out);
                            }
                            reply::line(&mut out, b"END");
                        }
                        _ => execute(store, hash, &command, now, &mut out),
                    }
                    rest = &rest[len..];
                }
                other => panic!("{other:?}"),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn classic_storage_semantics() {
        let mut s = Store::new(4 << 20);
        assert_eq!(
            run(&mut s, b"add k 1 0 1\r\na\r\nadd k 1 0 1\r\nb\r\n", 0),
            "STORED\r\nNOT_STORED\r\n"
        );
        assert_eq!(
            run(
                &mut s,
                b"replace j 0 0 1\r\nx\r\nappend k 0 0 2\r\nbc\r\nprepend k 0 0 1\r\nz\r\n",
                0
            ),
            "NOT_STORED\r\nSTORED\r\nSTORED\r\n"
        );
        assert_eq!(
            run(&mut s, b"get k j\r\n", 0),
            "VALUE k 1 4\r\nzabc\r\nEND\r\n"
        );
        let gets = run(&mut s, b"gets k\r\n", 0);
        let cas: u64 = gets.split_whitespace().nth(4).unwrap().parse().unwrap();
        let swap =
            format!("cas k 2 0 1 {cas}\r\nn\r\ncas k 2 0 1 {cas}\r\no\r\ncas q 0 0 1 1\r\np\r\n");
        assert_eq!(
            run(&mut s, swap.as_bytes(), 0),
            "STORED\r\nEXISTS\r\nNOT_FOUND\r\n"
        );
        assert_eq!(run(&mut s, b"get k\r\n", 0), "VALUE k 2 1\r\nn\r\nEND\r\n");
    }

    #[test]
    fn counters_wrap_floor_and_refuse_text() {
        let mut s = Store::new(4 << 20);
        let script = b"set n 0 0 20\r\n18446744073709551615\r\nincr n 2\r\ndecr n 5\r\nincr x 1\r\nset t 0 0 1\r\na\r\nincr t 1\r\nincr n 1 noreply\r\nget n\r\n";
        assert_eq!(
            run(&mut s, script, 0),
            "STORED\r\n1\r\n0\r\nNOT_FOUND\r\nSTORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\nVALUE n 0 1\r\n1\r\nEND\r\n"
        );
    }

    #[test]
    fn expiry_touch_and_gat() {
        let mut s = Store::new(4 << 20);
        run(&mut s, b"set a 0 2 1\r\n1\r\nset b 0 -1 1\r\n2\r\nset c 0 1799999999 1\r\n3\r\nset d 0 1800000005 1\r\n4\r\n", 0);
        assert_eq!(
            run(&mut s, b"get a b c d\r\n", 1_000),
            "VALUE a 0 1\r\n1\r\nVALUE d 0 1\r\n4\r\nEND\r\n"
        );
        assert_eq!(run(&mut s, b"touch a 10\r\n", 1_000), "TOUCHED\r\n");
        assert_eq!(
            run(&mut s, b"get a\r\n", 5_000),
            "VALUE a 0 1\r\n1\r\nEND\r\n"
        );
        assert_eq!(
            run(&mut s, b"gat 0 a\r\nget d\r\n", 6_000),
            "VALUE a 0 1\r\n1\r\nEND\r\nEND\r\n"
        );
        assert_eq!(
            run(&mut s, b"get a\r\n", 100_000),
            "VALUE a 0 1\r\n1\r\nEND\r\n"
        );
    }

    #[test]
    fn meta_get_looks_up_once() {
        let mut s = Store::new(4 << 20);
        assert_eq!(
            run(
                &mut s,
                b"ms x 1\r\na\r\nmg x h\r\nmg x h\r\nma n N0 J3 t\r\n",
                0
            ),
            "HD\r\nHD h0\r\nHD h1\r\nHD t-1\r\n"
        );
        // Two mg, two hits; ma counts none.
        assert_eq!(s.stats().hits, 2);
    }

    #[test]
    fn meta_commands() {
        let mut s = Store::new(4 << 20);
        assert_eq!(run(&mut s, b"ms k 2 T0 F5 c\r\nhi\r\n", 0), "HD c1\r\n");
        assert_eq!(
            run(&mut s, b"mg k s v f t k O1\r\n", 0),
            "VA 2 s2 f5 t-1 kk O1\r\nhi\r\n"
        );
        assert_eq!(
            run(&mut s, b"mg nope v\r\nmg nope v q\r\nmg k h\r\n", 0),
            "EN\r\nHD h1\r\n"
        );
        assert_eq!(
            run(
                &mut s,
                b"ms k 1 C99\r\nx\r\nms k 1 MA\r\n!\r\nmg k v\r\n",
                0
            ),
            "EX\r\nHD\r\nVA 3\r\nhi!\r\n"
        );
        assert_eq!(
            run(&mut s, b"ma c N0 J10 v\r\nma c D5 MD v\r\nma zz\r\n", 0),
            "VA 2\r\n10\r\nVA 1\r\n5\r\nNF\r\n"
        );
        assert_eq!(
            run(&mut s, b"md k q\r\nmd k\r\nmg v N30 v c\r\n", 0),
            "NF\r\nVA 0 c5 W\r\n\r\n"
        );
    }
}
