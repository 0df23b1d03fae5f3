//! Key ownership, which is part of the protocol: `shard = xxh3_64(key, seed 0) % shard_count`.
//!
//! A shard-aware client computes the same function and connects straight to the owner's port.

/// The XXH3 64-bit hash of `key` with seed 0.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The shard that owns a key with hash `hash` among `shard_count` shards.
#[inline]
pub fn owner_of_hash(hash: u64, shard_count: usize) -> usize {
    debug_assert!(shard_count > 0);
    (hash % shard_count as u64) as usize
}

/// The shard that owns `key` among `shard_count` shards.
#[inline]
pub fn owner_of(key: &[u8], shard_count: usize) -> usize {
    owner_of_hash(key_hash(key), shard_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh3_matches_the_reference_vectors() {
        // Published XXH3_64bits(seed 0) values.
        assert_eq!(key_hash(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(key_hash(b"a"), 0xE6C6_32B6_1E96_4E1F);
    }

    #[test]
    fn every_shard_owns_some_keys() {
        let mut seen = [false; 4];
        for i in 0..64u32 {
            seen[owner_of(&i.to_le_bytes(), 4)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
