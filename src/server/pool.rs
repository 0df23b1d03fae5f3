//! Per-core pools of byte buffers, so buffers are reused instead of allocated.
//!
//! One pool serves requests that leave their connection: a forwarded key-value request travels
//! to its owner core in a pooled buffer and comes back as the encoded reply in the same one, and
//! a `Compute` job carries its input and its reply the same way. Another lends connections their
//! input and output buffers only while they have bytes to hold, so an idle connection holds
//! none. Once warm, neither touches the allocator.

use std::cell::RefCell;

use bytes::BytesMut;

pub struct BufferPool {
    free: RefCell<Vec<BytesMut>>,
    max_free: usize,
    capacity: usize,
    max_kept_capacity: usize,
}

impl BufferPool {
    /// A pool of buffers of `capacity` bytes that keeps at most `max_free` idle ones; a buffer
    /// that grew past `max_kept_capacity` (a large value passed through) is freed, not kept.
    pub fn new(max_free: usize, capacity: usize, max_kept_capacity: usize) -> BufferPool {
        BufferPool {
            free: RefCell::new(Vec::with_capacity(max_free)),
            max_free,
            capacity,
            max_kept_capacity,
        }
    }

    /// An empty buffer.
    pub fn take(&self) -> BytesMut {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.capacity))
    }

    /// Returns a buffer for reuse. A buffer whose front was consumed (`advance`) gets its whole
    /// allocation back first; one that owns no allocation is not kept.
    pub fn give(&self, mut buf: BytesMut) {
        let mut free = self.free.borrow_mut();
        buf.clear();
        if free.len() < self.max_free
            && buf.capacity() <= self.max_kept_capacity
            && buf.try_reclaim(self.capacity)
        {
            free.push(buf);
        }
    }

    /// Makes sure `buf` has room: an empty buffer whose front was consumed gets its allocation
    /// back, and one with none (given back while empty) gets a buffer from the pool.
    pub fn fill(&self, buf: &mut BytesMut) {
        if buf.is_empty() && !buf.try_reclaim(self.capacity) {
            *buf = self.take();
        }
    }

    /// Gives `buf`'s buffer back to the pool if it holds no bytes, leaving an empty one that
    /// owns no memory.
    pub fn release_if_empty(&self, buf: &mut BytesMut) {
        if buf.is_empty() {
            self.give(std::mem::take(buf));
        }
    }
}
