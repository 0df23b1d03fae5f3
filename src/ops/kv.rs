//! Get, Set and Delete against the store of the core that owns the key.

use crate::error::RequestError;
use crate::protocol::{Op, Reply};
use crate::store::Store;

/// Executes a key-value operation whose key hashes to `hash`. The reply borrows from the store,
/// so the caller encodes it before touching the store again.
pub fn execute<'s>(
    store: &'s mut Store,
    hash: u64,
    op: &Op<'_>,
    now_ms: u64,
) -> Result<Reply<'s>, RequestError> {
    match *op {
        Op::Get { key } => match store.get(hash, key, now_ms) {
            Some(found) => Ok(Reply::Value {
                value: found.value,
                ttl_ms: found.ttl_ms_u32(),
            }),
            None => Err(RequestError::NotFound),
        },
        Op::Set { key, value, ttl_ms } => {
            store.set(hash, key, value, ttl_ms, now_ms)?;
            Ok(Reply::Empty)
        }
        Op::Delete { key } => match store.delete(hash, key, now_ms) {
            true => Ok(Reply::Empty),
            false => Err(RequestError::NotFound),
        },
        _ => Err(RequestError::Internal("not a key-value operation")),
    }
}
