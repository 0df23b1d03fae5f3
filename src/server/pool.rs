//! A per-core pool of byte buffers for requests that leave their connection: a forwarded
//! key-value request travels to its owner core in one and comes back as the encoded reply in the
//! same one, and a `Compute` job carries its input and its reply the same way. Once warm, the
//! pool hands out buffers without touching the allocator.

use std::cell::RefCell;

use bytes::BytesMut;

/// Initial capacity of a new buffer: enough for the key, a small value and its reply.
const BUFFER_CAPACITY: usize = 4 << 10;
/// Buffers that grew past this (a large value passed through) are freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 64 << 10;

pub struct BufferPool {
    free: RefCell<Vec<BytesMut>>,
    max_free: usize,
}

impl BufferPool {
    /// A pool that keeps at most `max_free` idle buffers.
    pub fn new(max_free: usize) -> BufferPool {
        BufferPool {
            free: RefCell::new(Vec::with_capacity(max_free)),
            max_free,
        }
    }

    /// An empty buffer.
    pub fn take(&self) -> BytesMut {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(BUFFER_CAPACITY))
    }

    /// Returns a buffer for reuse.
    pub fn give(&self, mut buf: BytesMut) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free && buf.capacity() <= MAX_KEPT_CAPACITY {
            buf.clear();
            free.push(buf);
        }
    }

    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}
