//! The stream decoder: bytes from a socket in, whole frames out, with the size limit enforced
//! from the head before any memory is reserved.
//!
//! The decoder keeps an explicit [`DecodeState`] so that a head is parsed once, however many
//! reads the body takes. It follows the tokio-util `Decoder` contract: `Ok(None)` means "need
//! more bytes", `Err` means "the stream is corrupt; send an error frame if possible and close".

use bytes::BytesMut;

use crate::error::FrameError;
use crate::frame::Frame;
use crate::head::{HEAD_LEN, Head};

/// Default maximum frame length (head + body): 2 MiB, enough for a 1 MiB history text with
/// room to spare.
pub const DEFAULT_MAX_FRAME_LEN: usize = 2 * 1024 * 1024;

/// Where the decoder is within the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeState {
    /// Waiting for a complete 32-byte head.
    Head,
    /// The head is parsed and checked; waiting for the whole frame (`HEAD_LEN + body_len` bytes).
    Data(Head),
}

/// Decodes frames from a byte stream. Holds no buffer of its own: the caller's `BytesMut` is
/// split, so decoded frames share its allocation.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    /// Largest frame (head + body) accepted; larger heads are a [`FrameError::FrameTooLarge`].
    max_frame_len: usize,
    /// Progress within the current frame.
    state: DecodeState,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame_len` bytes (head included).
    pub fn new(max_frame_len: usize) -> FrameDecoder {
        FrameDecoder {
            max_frame_len: max_frame_len.max(HEAD_LEN),
            state: DecodeState::Head,
        }
    }

    /// The configured limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The current state (for tests and diagnostics).
    pub fn state(&self) -> DecodeState {
        self.state
    }

    /// Decode the next frame from `src`, splitting its bytes off without copying.
    ///
    /// # Errors
    /// A [`FrameError`] when framing is lost; the caller should close the connection.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let head = match self.state {
            DecodeState::Head => {
                let Some(head) = Head::parse(src)? else {
                    return Ok(None);
                };
                // PROTOCOL.md §2: "A receiver checks the announced length against its maximum
                // frame size before it buffers the body; a larger frame loses framing."
                let total = u64::from(head.body_len)
                    .checked_add(HEAD_LEN as u64)
                    .ok_or(FrameError::FrameTooLarge {
                        len: u64::MAX,
                        max: self.max_frame_len,
                    })?;
                if total > self.max_frame_len as u64 {
                    return Err(FrameError::FrameTooLarge {
                        len: total,
                        max: self.max_frame_len,
                    });
                }
                self.state = DecodeState::Data(head);
                head
            }
            DecodeState::Data(head) => head,
        };
        // Within max_frame_len (a usize), so this cannot overflow; checked all the same.
        let total =
            HEAD_LEN
                .checked_add(head.body_len as usize)
                .ok_or(FrameError::FrameTooLarge {
                    len: u64::MAX,
                    max: self.max_frame_len,
                })?;
        if src.len() < total {
            // Reserve only what this (already size-checked) frame still needs.
            src.reserve(total - src.len());
            return Ok(None);
        }
        self.state = DecodeState::Head;
        Ok(Some(Frame::from_parts(head, src.split_to(total))))
    }
}

#[cfg(feature = "tokio-codec")]
mod tokio_impls {
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::{Decoder, Encoder};

    use super::FrameDecoder;
    use crate::error::FrameError;
    use crate::frame::Frame;

    impl Decoder for FrameDecoder {
        type Item = Frame;
        type Error = FrameError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
            FrameDecoder::decode(self, src)
        }
    }

    impl Encoder<Frame> for FrameDecoder {
        type Error = FrameError;

        fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
            dst.extend_from_slice(item.as_bytes());
            Ok(())
        }
    }

    /// Pre-encoded frames (e.g. a fanned-out event shared by many desktops).
    impl Encoder<Bytes> for FrameDecoder {
        type Error = FrameError;

        fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
            dst.extend_from_slice(&item);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{Kind, Service};

    fn frame_bytes(body: &[u8]) -> Vec<u8> {
        Frame::with_body(Head::new(Kind::Request, Service::Ucs, 1), body)
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn decodes_split_input_and_parses_head_once() {
        let bytes = frame_bytes(b"0123456789");
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let out = dec.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert!(out.is_none());
                if i + 1 >= HEAD_LEN {
                    assert!(matches!(dec.state(), DecodeState::Data(_)));
                }
            } else {
                assert_eq!(out.unwrap().body_bytes(), b"0123456789");
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_is_refused_before_reserve() {
        let mut head = Head::new(Kind::Request, Service::Ucs, 1);
        head.body_len = u32::MAX;
        let mut buf = BytesMut::from(&head.to_bytes()[..]);
        let cap_before = buf.capacity();
        let mut dec = FrameDecoder::new(1024);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::FrameTooLarge { .. })
        ));
        assert_eq!(buf.capacity(), cap_before);
    }
}
