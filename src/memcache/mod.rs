//! memcached's text protocol, classic and meta commands: one implementation shared by the
//! server, the load generator and the tests.
//!
//! [`command`] splits a command off a connection's input and reads it in place (server side);
//! [`reply`] writes the server's replies; [`client`] is the side a client speaks: encoders for
//! the commands it sends and a parser for the replies it reads. The server runs commands in [`crate::ops::memcache`]
//! and routes them in `server::codec::memcache`. `docs/memcached.md` says what is served and
//! how it differs from memcached.

pub mod client;
pub mod command;
pub mod reply;

/// The longest command line taken (a `get` of many keys is one line); a longer one is answered
/// and the connection closed, since the stream can no longer be followed.
pub const MAX_LINE: usize = 64 << 10;
/// Values up to 30 days in an exptime are relative seconds; larger ones are Unix times.
pub const RELATIVE_EXPTIME_MAX: i64 = 60 * 60 * 24 * 30;

/// Why a command was not run, with memcached's reply for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    UnknownCommand,
    BadFormat,
    BadDataChunk,
    TooLarge,
    InvalidDelta,
    InvalidExptime,
    DeleteTime,
    NonNumeric,
    InvalidFlag,
    DuplicateFlag,
    BadToken,
    OpaqueTooLong,
    LineTooLong,
    ShuttingDown,
    Internal,
    /// An error memcached does not answer (a bad data chunk under `noreply`).
    Silent,
}

impl Error {
    /// The reply line, without its `\r\n`.
    pub fn reply(self) -> &'static [u8] {
        match self {
            Error::UnknownCommand => b"ERROR",
            Error::BadFormat => b"CLIENT_ERROR bad command line format",
            Error::BadDataChunk => b"CLIENT_ERROR bad data chunk",
            Error::TooLarge => b"SERVER_ERROR object too large for cache",
            Error::InvalidDelta => b"CLIENT_ERROR invalid numeric delta argument",
            Error::InvalidExptime => b"CLIENT_ERROR invalid exptime argument",
            Error::DeleteTime => {
                b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]"
            }
            Error::NonNumeric => b"CLIENT_ERROR cannot increment or decrement non-numeric value",
            Error::InvalidFlag => b"CLIENT_ERROR invalid flag",
            Error::DuplicateFlag => b"CLIENT_ERROR duplicate flag",
            Error::BadToken => b"CLIENT_ERROR invalid or duplicate flag",
            Error::OpaqueTooLong => b"CLIENT_ERROR opaque token too long",
            Error::LineTooLong => b"CLIENT_ERROR line too long",
            Error::ShuttingDown => b"SERVER_ERROR shutting down",
            Error::Internal => b"SERVER_ERROR internal error",
            Error::Silent => b"",
        }
    }
}

/// The store's expiry for a memcached exptime at Unix time `now_unix`: 0 never; up to 30 days
/// relative seconds; above that an absolute Unix time; negative (or an absolute time already
/// past) expired.
pub fn ttl_of_exptime(exptime: i64, now_unix: i64) -> crate::store::Ttl {
    use crate::store::Ttl;
    match exptime {
        0 => Ttl::Never,
        e if e < 0 => Ttl::Expired,
        e if e <= RELATIVE_EXPTIME_MAX => Ttl::In(e as u64 * 1000),
        e if e <= now_unix => Ttl::Expired,
        e => Ttl::In((e - now_unix) as u64 * 1000),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Ttl;

    #[test]
    fn exptime_rules() {
        let now = 1_800_000_000;
        assert_eq!(ttl_of_exptime(0, now), Ttl::Never);
        assert_eq!(ttl_of_exptime(-1, now), Ttl::Expired);
        assert_eq!(ttl_of_exptime(10, now), Ttl::In(10_000));
        assert_eq!(
            ttl_of_exptime(RELATIVE_EXPTIME_MAX, now),
            Ttl::In(RELATIVE_EXPTIME_MAX as u64 * 1000)
        );
        assert_eq!(ttl_of_exptime(RELATIVE_EXPTIME_MAX + 1, now), Ttl::Expired);
        assert_eq!(ttl_of_exptime(now + 5, now), Ttl::In(5_000));
    }
}
