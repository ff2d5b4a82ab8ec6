//! A decoded frame (head + body, zero-copy) and the functions that encode new frames.
//!
//! A decoded [`Frame`] owns the frame's bytes *including* the 32-byte head, split off the
//! connection's read buffer without copying. A proxy re-stamps the correlation and session ids
//! in place ([`Frame::set_correlation`], [`Frame::set_session`]) and forwards the very same
//! bytes with [`Frame::freeze`]: forwarding never re-encodes or copies a body.

use bytes::{Bytes, BytesMut};

use crate::body::{BodyRef, BodyWriter};
use crate::error::{BodyError, ErrorCode};
use crate::head::{self, FLAGS_OFFSET, Flags, HEAD_LEN, Head, Kind, Service};
use crate::msg;

/// One frame: its parsed head and its wire bytes (head included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The parsed head; kept in sync with the bytes by the setters.
    head: Head,
    /// The whole encoded frame: `HEAD_LEN` head bytes, then the body.
    buf: BytesMut,
}

impl Frame {
    /// Wrap bytes known to hold exactly one frame whose head is `head`.
    pub(crate) fn from_parts(head: Head, buf: BytesMut) -> Frame {
        debug_assert_eq!(buf.len(), HEAD_LEN + head.body_len as usize);
        Frame { head, buf }
    }

    /// Build a frame: `head` (its `body_len` is ignored and set), then the body `f` writes.
    ///
    /// # Errors
    /// What `f` returns, or [`BodyError::TooLong`] if the body passes `u32::MAX`.
    pub fn build(
        head: Head,
        f: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
    ) -> Result<Frame, BodyError> {
        let mut buf = BytesMut::with_capacity(HEAD_LEN + 64);
        let head = encode_with(head, &mut buf, f)?;
        Ok(Frame { head, buf })
    }

    /// Build a frame whose body is `body` verbatim.
    ///
    /// # Errors
    /// [`BodyError::TooLong`] if the body passes `u32::MAX`.
    pub fn with_body(mut head: Head, body: &[u8]) -> Result<Frame, BodyError> {
        head.body_len = u32::try_from(body.len()).map_err(|_| BodyError::TooLong)?;
        let mut buf = BytesMut::with_capacity(HEAD_LEN + body.len());
        head.encode(&mut buf);
        buf.extend_from_slice(body);
        Ok(Frame { head, buf })
    }

    /// The parsed head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The body, read lazily and borrowed.
    pub fn body(&self) -> BodyRef<'_> {
        BodyRef::new(self.body_bytes())
    }

    /// The body's bytes.
    pub fn body_bytes(&self) -> &[u8] {
        self.buf.get(HEAD_LEN..).unwrap_or(&[])
    }

    /// The whole encoded frame.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Total encoded length (head + body).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Never true: a frame always has a head. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Re-stamp the correlation id, in the head and in the bytes. No allocation.
    pub fn set_correlation(&mut self, id: u64) {
        self.head.correlation = id;
        head::restamp_correlation(&mut self.buf, id);
    }

    /// Re-stamp the session id, in the head and in the bytes. No allocation.
    pub fn set_session(&mut self, id: u64) {
        self.head.session = id;
        head::restamp_session(&mut self.buf, id);
    }

    /// Re-stamp the tenant id, in the head and in the bytes. No allocation.
    pub fn set_tenant(&mut self, tenant: u32) {
        self.head.tenant = tenant;
        head::restamp_tenant(&mut self.buf, tenant);
    }

    /// Replace the flag bits, in the head and in the bytes.
    pub fn set_flags(&mut self, flags: Flags) {
        self.head.flags = flags;
        if let Some(b) = self.buf.get_mut(FLAGS_OFFSET) {
            *b = flags.0;
        }
    }

    /// The encoded frame as shared `Bytes`, ready to queue for a vectored write. No copy.
    pub fn freeze(self) -> Bytes {
        self.buf.freeze()
    }

    /// The head and the body as shared `Bytes`. No copy.
    pub fn into_parts(self) -> (Head, Bytes) {
        let mut buf = self.buf;
        let body = buf.split_off(HEAD_LEN.min(buf.len()));
        (self.head, body.freeze())
    }

    /// If this is an error frame (flag `ERROR`), its code and message.
    pub fn error(&self) -> Option<(ErrorCode, &str)> {
        if !self.head.flags.has(Flags::ERROR) {
            return None;
        }
        let b = self.body();
        let code = b.int(msg::key::CODE).ok()?;
        let message = b.opt_str(msg::key::MESSAGE).ok().flatten().unwrap_or("");
        Some((ErrorCode(u16::try_from(code).unwrap_or(u16::MAX)), message))
    }
}

/// Encode `head` then the body that `f` writes, straight into `dst`; the head's `body_len` is
/// patched in afterwards. Returns the head as written.
///
/// # Errors
/// What `f` returns, or [`BodyError::TooLong`]. On error `dst` is left as it was.
pub fn encode_with(
    mut head: Head,
    dst: &mut BytesMut,
    f: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
) -> Result<Head, BodyError> {
    let start = dst.len();
    head.body_len = 0;
    head.encode(dst);
    let res = f(&mut BodyWriter::new(dst));
    let body_len = dst.len() - start - HEAD_LEN;
    match res.and_then(|()| u32::try_from(body_len).map_err(|_| BodyError::TooLong)) {
        Ok(len) => {
            head.body_len = len;
            dst[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
            Ok(head)
        }
        Err(e) => {
            dst.truncate(start);
            Err(e)
        }
    }
}

/// The error response to the request whose head is `req`: same service, message type,
/// correlation, tenant and session; kind `Response`; flag `ERROR`.
pub fn error_response(req: &Head, code: ErrorCode, message: &str) -> Frame {
    let mut head = *req;
    head.kind = Kind::Response;
    head.flags = Flags(Flags::ERROR);
    error_frame(head, code, message)
}

/// An unsolicited error (kind `Control`, service `Control`, type [`msg::control::ERROR`]),
/// typically sent just before closing a connection whose framing is lost.
pub fn control_error(session: u64, code: ErrorCode, message: &str) -> Frame {
    let mut head = Head::new(Kind::Control, Service::Control, msg::control::ERROR);
    head.flags = Flags(Flags::ERROR);
    head.session = session;
    error_frame(head, code, message)
}

/// A control error refusing one frame that is not a request (an unknown kind, a response or
/// event a desktop may not send, an unexpected control frame): it carries that frame's
/// correlation id and session id, so the sender can tell which frame was refused, and tenant 0
/// like every control error (PROTOCOL.md §5.1).
pub fn refusal(refused: &Head, code: ErrorCode, message: &str) -> Frame {
    let mut head = Head::new(Kind::Control, Service::Control, msg::control::ERROR);
    head.flags = Flags(Flags::ERROR);
    head.correlation = refused.correlation;
    head.session = refused.session;
    error_frame(head, code, message)
}

fn error_frame(head: Head, code: ErrorCode, message: &str) -> Frame {
    // Messages are cut to 1 KiB so that an error frame is always small.
    let mut cut = message.len().min(1024);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let built = Frame::build(head, |w| {
        w.int(msg::key::CODE, i64::from(code.0));
        w.str(msg::key::MESSAGE, &message[..cut])?;
        Ok(())
    });
    // A ≤1 KiB message can never pass u32::MAX; fall back to an empty body regardless.
    built.unwrap_or_else(|_| empty_frame(head))
}

/// A frame with `head` and no body.
pub fn empty_frame(mut head: Head) -> Frame {
    head.body_len = 0;
    Frame::from_parts(head, BytesMut::from(&head.to_bytes()[..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_restamp() {
        let head = Head::new(Kind::Request, Service::Interaction, msg::ixn::ECHO);
        let mut f = Frame::build(head, |w| {
            w.bin(msg::key::DATA, b"abc")?;
            Ok(())
        })
        .unwrap();
        f.set_correlation(77);
        f.set_session(5);
        let parsed = Head::parse(f.as_bytes()).unwrap().unwrap();
        assert_eq!(parsed, *f.head());
        assert_eq!(parsed.body_len as usize, f.body_bytes().len());
        assert_eq!(f.body().bin(msg::key::DATA).unwrap(), b"abc");
    }

    #[test]
    fn error_response_mirrors_request() {
        let mut req = Head::new(Kind::Request, Service::Ucs, msg::ucs::CONTACT_GET);
        req.correlation = 9;
        req.tenant = 3;
        let e = error_response(&req, ErrorCode::NOT_FOUND, "no such contact");
        assert_eq!(e.head().kind, Kind::Response);
        assert_eq!(e.head().correlation, 9);
        assert_eq!(e.head().msg_type, msg::ucs::CONTACT_GET);
        assert_eq!(e.error(), Some((ErrorCode::NOT_FOUND, "no such contact")));
    }
}
