//! Framing: a little-endian `u32` length prefix, then that many bytes of FlatBuffer.
//!
//! [`peek`] looks at the front of a receive buffer and says whether a whole frame is there, so
//! the caller can read the frame in place and advance past it: no copy, no allocation. Frames
//! are decoded *with* their prefix: FlatBuffers aligns a size-prefixed buffer as a whole, so the
//! verifier's alignment checks hold only relative to the prefix.

use crate::error::RequestError;

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// What the front of a receive buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// A whole frame of `len` bytes, prefix included: `buf[..len]`.
    Complete { len: usize },
    /// Not yet a whole frame; the buffer must hold `total` bytes for it to be.
    Partial { total: usize },
}

/// Looks for one frame at the front of `buf`.
///
/// A length prefix of 0 or over `max_frame` is an error: the stream's framing can no longer be
/// trusted, and the connection must be answered once and closed.
pub fn peek(buf: &[u8], max_frame: usize) -> Result<Peek, RequestError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(Peek::Partial { total: PREFIX_LEN });
    };
    let body_len = u32::from_le_bytes(*prefix) as usize;
    if body_len == 0 {
        return Err(RequestError::EmptyFrame);
    }
    if body_len > max_frame {
        return Err(RequestError::FrameTooLarge {
            len: body_len,
            max: max_frame,
        });
    }
    let total = PREFIX_LEN + body_len;
    if buf.len() >= total {
        Ok(Peek::Complete { len: total })
    } else {
        Ok(Peek::Partial { total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn whole_and_partial_frames() {
        let buf = framed(b"hello");
        assert_eq!(peek(&buf, 100), Ok(Peek::Complete { len: 9 }));
        assert_eq!(peek(&buf[..6], 100), Ok(Peek::Partial { total: 9 }));
        assert_eq!(peek(&buf[..2], 100), Ok(Peek::Partial { total: 4 }));
        assert_eq!(peek(&[], 100), Ok(Peek::Partial { total: 4 }));
    }

    #[test]
    fn zero_and_oversize_prefixes_are_errors() {
        assert_eq!(peek(&[0, 0, 0, 0], 100), Err(RequestError::EmptyFrame));
        assert_eq!(
            peek(&101u32.to_le_bytes(), 100),
            Err(RequestError::FrameTooLarge { len: 101, max: 100 })
        );
        assert_eq!(
            peek(&100u32.to_le_bytes(), 100),
            Ok(Peek::Partial { total: 104 })
        );
    }
}
