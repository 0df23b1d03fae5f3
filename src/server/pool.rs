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
    /// The fewest buffers that were idle at once since the last [`BufferPool::trim`]: that many
    /// were not needed all that while.
    least_free: Cell<usize>,
}

/// Idle buffers a pool keeps however long they go unused.
pub const POOL_FLOOR: usize = 64;

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
            least_free: Cell::new(0),
        }
    }

    /// Frees the idle buffers beyond [`POOL_FLOOR`] that stayed idle since the last trim, so a
    /// burst's buffers go back to the allocator once the burst is over, while a steady load
    /// (which keeps cycling them) keeps what it uses. Call it periodically (every core does,
    /// once a second).
    pub fn trim(&self) {
        let mut free = self.free.borrow_mut();
        let unused = self.least_free.get().min(free.len());
        let keep = free.len() - unused.saturating_sub(POOL_FLOOR);
        free.truncate(keep);
        self.least_free.set(free.len());
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
        let mut free = self.free.borrow_mut();
        let buf = free.pop();
        self.least_free.set(self.least_free.get().min(free.len()));
        buf.unwrap_or_else(|| BytesMut::with_capacity(self.capacity))
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

    #[test]
    fn trim_frees_what_a_burst_left_idle_and_keeps_what_is_used() {
        let pool = BufferPool::new(1000, 64, 256);
        let burst: Vec<BytesMut> = (0..500).map(|_| pool.take()).collect();
        burst.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.free(), 500);
        // The first trim sees the burst's low point; a full window of disuse frees the excess.
        pool.trim();
        pool.trim();
        assert_eq!(pool.free(), POOL_FLOOR);
        // A steady load that keeps 100 buffers busy: they survive trims.
        let busy: Vec<BytesMut> = (0..100).map(|_| pool.take()).collect();
        busy.into_iter().for_each(|b| pool.give(b));
        for _ in 0..3 {
            let cycle: Vec<BytesMut> = (0..100).map(|_| pool.take()).collect();
            cycle.into_iter().for_each(|b| pool.give(b));
            pool.trim();
        }
        assert_eq!(pool.free(), 100);
    }
}
