//! `Compute`: CRC-32C or SHA-256, chained over `rounds`. The first round hashes the input, each
//! further round hashes the previous digest. Runs in the low-priority compute queue and yields
//! to the scheduler between chunks, so network tasks on the same core keep their latency.

use sha2::{Digest as _, Sha256};

use crate::protocol::Algo;
use crate::runtime;

/// Input is hashed in chunks of this size, with a chance to yield between them.
const CHUNK: usize = 64 << 10;
/// Rounds on a 32-byte digest between chances to yield.
const ROUNDS_PER_YIELD_CHECK: u32 = 64;

/// A digest: 4 bytes (CRC-32C, big-endian) or 32 bytes (SHA-256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    bytes: [u8; 32],
    len: usize,
}

impl Digest {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn crc32c(crc: u32) -> Digest {
        let mut bytes = [0; 32];
        bytes[..4].copy_from_slice(&crc.to_be_bytes());
        Digest { bytes, len: 4 }
    }

    fn sha256(hash: [u8; 32]) -> Digest {
        Digest {
            bytes: hash,
            len: 32,
        }
    }
}

/// One round over `input`, in chunks, yielding between them when the scheduler asks.
async fn first_round(algo: Algo, input: &[u8]) -> Digest {
    if algo == Algo::Sha256 {
        let mut h = Sha256::new();
        for chunk in input.chunks(CHUNK) {
            h.update(chunk);
            runtime::yield_if_needed().await;
        }
        Digest::sha256(h.finalize().into())
    } else {
        let mut crc = 0;
        for chunk in input.chunks(CHUNK) {
            crc = crc32c::crc32c_append(crc, chunk);
            runtime::yield_if_needed().await;
        }
        Digest::crc32c(crc)
    }
}

fn round(algo: Algo, input: &[u8]) -> Digest {
    if algo == Algo::Sha256 {
        Digest::sha256(Sha256::digest(input).into())
    } else {
        Digest::crc32c(crc32c::crc32c(input))
    }
}

/// The digest of `input` after `rounds` rounds (the request was validated: rounds >= 1 and
/// `algo` is known).
pub async fn digest(algo: Algo, input: &[u8], rounds: u32) -> Digest {
    let mut d = first_round(algo, input).await;
    for i in 1..rounds {
        d = round(algo, d.as_bytes());
        if i % ROUNDS_PER_YIELD_CHECK == 0 {
            runtime::yield_if_needed().await;
        }
    }
    d
}

/// The same computation without yielding, for clients and tests that check replies.
pub fn digest_blocking(algo: Algo, input: &[u8], rounds: u32) -> Digest {
    let mut d = round(algo, input);
    for _ in 1..rounds {
        d = round(algo, d.as_bytes());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            digest_blocking(Algo::Crc32c, b"123456789", 1).as_bytes(),
            [0xe3, 0x06, 0x92, 0x83]
        );
        let abc = digest_blocking(Algo::Sha256, b"abc", 1);
        assert_eq!(
            abc.as_bytes()[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(abc) starts ba7816bf"
        );
        let twice = digest_blocking(Algo::Sha256, b"abc", 2);
        assert_eq!(twice, digest_blocking(Algo::Sha256, abc.as_bytes(), 1));
    }

    #[test]
    fn async_and_blocking_agree() {
        let input = vec![7u8; 200_000];
        for algo in [Algo::Crc32c, Algo::Sha256] {
            let a = runtime::block_on(digest(algo, &input, 130));
            assert_eq!(a, digest_blocking(algo, &input, 130));
        }
    }
}
