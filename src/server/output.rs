//! A connection's replies on their way out, and the cap on how much of them a connection
//! answers before it writes. Replies that must leave in request order (memcached) and are
//! ready before an earlier one still being made elsewhere wait here for their turn.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Stop answering further requests of a batch once this much output is waiting to be written.
pub const OUTPUT_SOFT_CAP: usize = 256 << 10;

/// One connection's replies on their way out. Replies that leave in order wait in `held`
/// behind the oldest reply still being made elsewhere.
pub struct Output {
    /// Replies ready to write, in the order they leave.
    pub buf: BytesMut,
    ordered: bool,
    /// From the oldest reply not yet in `buf`: each one's bytes in `held`, or `None` while it
    /// is still being made elsewhere.
    waiting: VecDeque<Option<(u32, u32)>>,
    /// The sequence number of `waiting`'s front.
    head_seq: u64,
    held: BytesMut,
}

impl Output {
    pub fn new(ordered: bool) -> Output {
        Output {
            buf: BytesMut::new(),
            ordered,
            waiting: VecDeque::new(),
            head_seq: 0,
            held: BytesMut::new(),
        }
    }

    /// Whether replies leave in request order.
    pub fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// Bytes of replies the connection holds.
    pub fn len(&self) -> usize {
        self.buf.len() + self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.held.is_empty() && self.waiting.is_empty()
    }

    /// Writes a reply made now with `write`: straight into the buffer unless replies made
    /// elsewhere must leave before it.
    pub fn local(&mut self, write: impl FnOnce(&mut BytesMut)) {
        if !self.ordered || self.waiting.is_empty() {
            write(&mut self.buf);
            return;
        }
        let start = self.held.len();
        write(&mut self.held);
        let len = self.held.len() - start;
        self.waiting.push_back(Some((start as u32, len as u32)));
    }

    /// A place for a reply that will be made elsewhere; its completion carries the number.
    pub fn reserve(&mut self) -> u64 {
        if !self.ordered {
            return 0;
        }
        self.waiting.push_back(None);
        self.head_seq + self.waiting.len() as u64 - 1
    }

    /// Takes back the place [`Output::reserve`] just gave (the request did not go).
    pub fn unreserve(&mut self) {
        if self.ordered {
            self.waiting.pop_back();
        }
    }

    /// A reply made elsewhere has arrived.
    pub fn arrive(&mut self, seq: u64, reply: &[u8]) {
        let slot = seq.wrapping_sub(self.head_seq) as usize;
        if !self.ordered || slot >= self.waiting.len() {
            self.buf.extend_from_slice(reply);
            return;
        }
        let start = self.held.len();
        self.held.extend_from_slice(reply);
        self.waiting[slot] = Some((start as u32, reply.len() as u32));
        while let Some(Some((start, len))) = self.waiting.front().copied() {
            let (start, len) = (start as usize, len as usize);
            self.buf.extend_from_slice(&self.held[start..start + len]);
            self.waiting.pop_front();
            self.head_seq += 1;
        }
        if self.waiting.is_empty() {
            self.held.clear();
        }
    }

    /// Whether replies are still being made elsewhere, or wait behind one.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The buffer of replies held back, to give to the pool when it is empty.
    pub fn held_mut(&mut self) -> &mut BytesMut {
        &mut self.held
    }
}
