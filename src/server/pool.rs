//! Per-core pools of byte buffers, so buffers are reused instead of allocated.
//!
//! One pool serves requests that leave their connection: a forwarded key-value request travels
//! to its owner core in a pooled buffer and comes back as the encoded reply in the same one, and
//! a `Compute` job carries its input and its reply the same way. Another lends connections their
//! input and output buffers only while they have bytes to hold, so an idle connection holds
//! none. Once warm, neither touches the allocator.
//!
//! Each pool counts the buffers it has lent and not yet got back, which `Stats` reports as
//! `buffers_lent`: at rest it returns to its idle level, so a buffer that is dropped instead of
//! given back (a leak of the pool, if not of memory) shows.

use std::cell::{Cell, RefCell};

use bytes::BytesMut;

pub struct BufferPool {
    free: RefCell<Vec<BytesMut>>,
    max_free: usize,
    capacity: usize,
    max_kept_capacity: usize,
    /// Buffers handed out by `take` and not yet given back.
    lent: Cell<usize>,
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
            lent: Cell::new(0),
        }
    }

    /// Buffers lent out now.
    pub fn lent(&self) -> usize {
        self.lent.get()
    }

    /// Idle buffers kept for reuse.
    pub fn free(&self) -> usize {
        self.free.borrow().len()
    }

    /// An empty buffer.
    pub fn take(&self) -> BytesMut {
        self.lent.set(self.lent.get() + 1);
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.capacity))
    }

    /// Returns a buffer for reuse. A buffer whose front was consumed (`advance`) gets its whole
    /// allocation back first; one that owns no allocation is not kept.
    pub fn give(&self, mut buf: BytesMut) {
        buf.clear();
        // Only a buffer that owns its allocation can be reclaimed; one that owns none (what
        // `release_if_empty` leaves behind) was never lent, so it does not count as returned.
        if !buf.try_reclaim(self.capacity) {
            return;
        }
        self.lent.set(self.lent.get().saturating_sub(1));
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free && buf.capacity() <= self.max_kept_capacity {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn lent_counts_buffers_out_and_back() {
        let pool = BufferPool::new(4, 64, 256);
        let mut a = BytesMut::new();
        pool.fill(&mut a);
        assert_eq!((pool.lent(), pool.free()), (1, 0));
        // Consumed to its end: no capacity left, but it still owns its allocation.
        a.extend_from_slice(&[1; 64]);
        a.advance(64);
        pool.release_if_empty(&mut a);
        assert_eq!((pool.lent(), pool.free()), (0, 1));
        // What release_if_empty leaves owns nothing: giving it again returns nothing.
        pool.release_if_empty(&mut a);
        assert_eq!((pool.lent(), pool.free()), (0, 1));
        // A buffer that grew past the kept size comes back (counted) and is freed.
        let mut big = pool.take();
        assert_eq!((pool.lent(), pool.free()), (1, 0));
        big.reserve(1024);
        pool.give(big);
        assert_eq!((pool.lent(), pool.free()), (0, 0));
    }
}
