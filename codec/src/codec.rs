//! The stream decoder: bytes from a socket in, whole frames out, with the size limit enforced
//! from the head before any memory is reserved.
//!
//! The decoder keeps an explicit [`DecodeState`] so that a head is parsed once, however many
//! reads the body takes. It follows the tokio-util `Decoder` contract: `Ok(None)` means "need
//! more bytes", `Err` means "the stream is corrupt; send an error frame if possible and close".
//!
//! Two ways to use it:
//! - [`FrameDecoder::decode`] (the tokio-util contract) reserves room for the rest of a
//!   size-checked frame, so the next read can fill it in one go. Right for a peer that is
//!   trusted to finish what it starts (a server reading its own links, a client).
//! - [`FrameDecoder::peek`], [`FrameDecoder::next_frame`] and [`FrameDecoder::next_or_skip`]
//!   never reserve: a buffer grows only with the bytes that actually arrived. A peer that
//!   announces 2 MiB and then trickles a byte a minute costs what it sent, not what it
//!   announced. This is the shape for a proxy holding thousands of untrusted connections.
//!   `next_or_skip` also lets a frame over the limit pass by its known length (its bytes are
//!   dropped as they arrive) instead of losing framing, for links where one oversized frame
//!   must not cost every other frame on the connection.

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
    /// ([`FrameDecoder::next_or_skip`] only) the head announced a frame over the limit; `left`
    /// more bytes of it are discarded as they arrive.
    Skip {
        /// The oversized frame's head.
        head: Head,
        /// Bytes of the frame still to discard.
        left: u64,
    },
}

/// What the front of a buffer holds ([`FrameDecoder::peek`]). Nothing is consumed or reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// No whole frame yet. `frame_len` is the announced length (head + body) once the head is
    /// in, `None` while fewer than [`HEAD_LEN`] bytes are.
    Partial {
        /// Announced frame length, when known.
        frame_len: Option<usize>,
    },
    /// A whole frame of `len` bytes (head included) opens the buffer. The decoder counts it as
    /// consumed: the caller takes exactly `len` bytes before the next call.
    Frame {
        /// The frame's head.
        head: Head,
        /// Head plus body length.
        len: usize,
    },
}

/// What [`FrameDecoder::next_or_skip`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame within the limit.
    Frame(Frame),
    /// A frame over the limit went by: its head (for an error answer), its bytes discarded.
    Skipped(Head),
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

    /// Change the limit for frames whose head is not read yet (e.g. a connection leaving its
    /// handshake, where a smaller limit applied). A frame already in progress keeps the
    /// limit it was checked against.
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len.max(HEAD_LEN);
    }

    /// Whether the decoder is inside a frame (its head parsed, the rest not yet in). Bytes of
    /// a head not yet complete are the caller's to see in its buffer.
    pub fn in_frame(&self) -> bool {
        self.state != DecodeState::Head
    }

    /// Parse and size-check the head at the front of `src` (state `Head`), or give the head
    /// already parsed. `Ok(None)`: fewer than [`HEAD_LEN`] bytes.
    fn head(&mut self, src: &[u8]) -> Result<Option<Head>, FrameError> {
        match self.state {
            DecodeState::Data(head) => Ok(Some(head)),
            DecodeState::Head | DecodeState::Skip { .. } => {
                let Some(head) = Head::parse(src)? else {
                    return Ok(None);
                };
                // PROTOCOL.md §2: "A receiver checks the announced length against its maximum
                // frame size before it buffers the body; a larger frame loses framing."
                let total = frame_len(&head);
                if total > self.max_frame_len as u64 {
                    return Err(FrameError::FrameTooLarge {
                        len: total,
                        max: self.max_frame_len,
                    });
                }
                self.state = DecodeState::Data(head);
                Ok(Some(head))
            }
        }
    }

    /// Look at the front of `src` (a connection's unread bytes, starting at a frame boundary)
    /// without consuming or reserving anything. The head is parsed once per frame, however
    /// many calls it takes for the body to arrive.
    ///
    /// # Errors
    /// A [`FrameError`] when framing is lost (bad magic or version, a frame over the limit).
    pub fn peek(&mut self, src: &[u8]) -> Result<Peek, FrameError> {
        let Some(head) = self.head(src)? else {
            return Ok(Peek::Partial { frame_len: None });
        };
        // Within max_frame_len (a usize): the cast cannot truncate.
        let len = frame_len(&head) as usize;
        if src.len() < len {
            return Ok(Peek::Partial {
                frame_len: Some(len),
            });
        }
        self.state = DecodeState::Head;
        Ok(Peek::Frame { head, len })
    }

    /// The next whole frame, split off the front of `src` without copying; `Ok(None)` (with
    /// nothing reserved) until all of it is in.
    ///
    /// # Errors
    /// A [`FrameError`] when framing is lost; the caller should close the connection.
    pub fn next_frame(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.peek(src)? {
            Peek::Partial { .. } => Ok(None),
            Peek::Frame { head, len } => Ok(Some(Frame::from_parts(head, src.split_to(len)))),
        }
    }

    /// As [`FrameDecoder::next_frame`], except that a frame over the limit whose head is
    /// intact does not lose framing: its bytes are discarded as they arrive (never buffered)
    /// and, once all of them went by, its head is returned as [`Decoded::Skipped`]. Bad magic
    /// or version still lose framing.
    ///
    /// # Errors
    /// [`FrameError::BadMagic`] or [`FrameError::UnsupportedVersion`].
    pub fn next_or_skip(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        if let DecodeState::Skip { head, left } = self.state {
            let n = left.min(src.len() as u64);
            // `n` is at most src.len(): the cast cannot truncate.
            let _ = src.split_to(n as usize);
            let left = left - n;
            if left > 0 {
                self.state = DecodeState::Skip { head, left };
                return Ok(None);
            }
            self.state = DecodeState::Head;
            return Ok(Some(Decoded::Skipped(head)));
        }
        match self.next_frame(src) {
            Ok(f) => Ok(f.map(Decoded::Frame)),
            Err(FrameError::FrameTooLarge { .. }) => {
                // The head is intact (magic and version were checked before the length): the
                // frame's length is known, so framing is not lost.
                let Some(head) = Head::parse(src)? else {
                    return Ok(None);
                };
                self.state = DecodeState::Skip {
                    head,
                    left: frame_len(&head),
                };
                self.next_or_skip(src)
            }
            Err(e) => Err(e),
        }
    }

    /// Decode the next frame from `src`, splitting its bytes off without copying.
    ///
    /// # Errors
    /// A [`FrameError`] when framing is lost; the caller should close the connection.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(head) = self.head(src)? else {
            return Ok(None);
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

/// Head plus body length of the frame `head` announces (cannot overflow a `u64`).
fn frame_len(head: &Head) -> u64 {
    u64::from(head.body_len) + HEAD_LEN as u64
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
    fn peek_parses_the_head_once_and_never_reserves() {
        let bytes = frame_bytes(b"0123456789");
        let mut dec = FrameDecoder::default();
        assert_eq!(
            dec.peek(&bytes[..10]).unwrap(),
            Peek::Partial { frame_len: None }
        );
        assert_eq!(
            dec.peek(&bytes[..HEAD_LEN + 3]).unwrap(),
            Peek::Partial {
                frame_len: Some(bytes.len())
            }
        );
        assert!(dec.in_frame());
        // In state Data the head is not read again: garbage in its place changes nothing.
        let mut tampered = bytes.clone();
        tampered[0] = b'X';
        let Peek::Frame { head, len } = dec.peek(&tampered).unwrap() else {
            panic!("whole frame expected")
        };
        assert_eq!((head.body_len, len), (10, bytes.len()));
        assert!(!dec.in_frame(), "a returned frame counts as consumed");
    }

    #[test]
    fn next_frame_grows_nothing_for_an_announced_body() {
        let mut head = Head::new(Kind::Request, Service::Ucs, 1);
        head.body_len = 1_000_000;
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&head.to_bytes());
        let cap = buf.capacity();
        let mut dec = FrameDecoder::new(2 * 1024 * 1024);
        assert!(dec.next_frame(&mut buf).unwrap().is_none());
        assert_eq!(buf.capacity(), cap, "no reservation for the announced body");
        // The tokio-contract decode, by contrast, reserves the rest of the frame.
        let mut dec = FrameDecoder::new(2 * 1024 * 1024);
        assert!(dec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= 1_000_032);
    }

    #[test]
    fn oversized_frames_are_skipped_by_length_and_framing_holds() {
        let big = frame_bytes(&[7u8; 5000]);
        let small = frame_bytes(b"after");
        let stream: Vec<u8> = big.iter().chain(small.iter()).copied().collect();
        for chunk in [1usize, 7, 100, 4096, stream.len()] {
            let mut dec = FrameDecoder::new(1024);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(d) = dec.next_or_skip(&mut buf).unwrap() {
                    out.push(d);
                }
                assert!(buf.len() <= 1024 + chunk, "skipped bytes are not kept");
            }
            assert_eq!(out.len(), 2, "chunk {chunk}");
            assert!(matches!(&out[0], Decoded::Skipped(h) if h.body_len == 5000));
            assert!(matches!(&out[1], Decoded::Frame(f) if f.body_bytes() == b"after"));
            assert!(buf.is_empty() && !dec.in_frame());
        }
        // Bad magic still loses framing.
        let mut buf = BytesMut::from(&b"XX\x01\x01"[..]);
        assert!(matches!(
            FrameDecoder::new(1024).next_or_skip(&mut buf),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn limit_changes_apply_to_the_next_head() {
        let big = frame_bytes(&[1u8; 2000]);
        let mut dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&big[..]);
        assert!(matches!(
            dec.next_frame(&mut buf),
            Err(FrameError::FrameTooLarge { .. })
        ));
        dec.set_max_frame_len(4096);
        assert_eq!(dec.next_frame(&mut buf).unwrap().unwrap().len(), big.len());
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
