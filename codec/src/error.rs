//! Codec errors and the protocol's error codes.
//!
//! Two different things live here:
//! - [`FrameError`] and [`BodyError`] are *local* failures to read bytes. "Need more bytes" is
//!   never an error: decoders return `Ok(None)` for it, keeping the `Decoder` contract.
//! - [`ErrorCode`] and [`RetryClass`] are *wire* values carried in error frames (PROTOCOL.md §5),
//!   telling a client whether a failed request may be retried.

/// The byte stream is corrupt: framing is lost and the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A byte where the magic "DM" belongs was something else (the first such byte).
    #[error("bad magic byte {0:#04x}: not a deskmux frame")]
    BadMagic(u8),
    /// A protocol version this decoder does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The head announces a frame longer than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Total frame length announced (head + body).
        len: u64,
        /// Configured maximum frame length.
        max: usize,
    },
    /// An I/O error from the transport (only produced by the tokio-util impls).
    #[error("i/o: {0}")]
    Io(String),
}

impl FrameError {
    /// The wire error code to put in the error frame sent before closing.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            _ => ErrorCode::PROTOCOL,
        }
    }
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e.to_string())
    }
}

/// A body is not a well-formed key-value list (PROTOCOL.md §3). Framing is intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body ends inside an item.
    #[error("body truncated at offset {0}")]
    Truncated(usize),
    /// A key or string value is not UTF-8.
    #[error("invalid utf-8 at offset {0}")]
    Utf8(usize),
    /// Lists nest deeper than [`crate::body::MAX_DEPTH`].
    #[error("lists nested deeper than {0}")]
    TooDeep(usize),
    /// A required key is absent.
    #[error("missing key {0:?}")]
    Missing(&'static str),
    /// A key holds a value of another type.
    #[error("key {0:?} has the wrong type")]
    WrongType(&'static str),
    /// A value is longer than a body may hold.
    #[error("value too long")]
    TooLong,
}

/// Whether a failed request may be retried (PROTOCOL.md §5). The class is the code's high byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryClass {
    /// The request was never processed (never written upstream, or refused before any effect).
    /// Safe to retry.
    NotSent,
    /// The request may or may not have taken effect (the link died after it was written, or no
    /// answer came in time). Retry only if the operation is idempotent.
    OutcomeUnknown,
    /// The request was processed and refused. Retrying it unchanged gives the same answer.
    Rejected,
}

impl RetryClass {
    /// A short stable name: `not_sent`, `outcome_unknown`, `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryClass::NotSent => "not_sent",
            RetryClass::OutcomeUnknown => "outcome_unknown",
            RetryClass::Rejected => "rejected",
        }
    }
}

/// An error code as carried in an error body's `code` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    // 0x01xx: not sent, safe to retry.
    /// No instance of the service is available (none configured, all down or disabled).
    pub const UNAVAILABLE: ErrorCode = ErrorCode(0x0101);
    /// The receiver is overloaded or over a cap (in-flight, connections); nothing was done.
    pub const OVERLOADED: ErrorCode = ErrorCode(0x0102);
    /// The receiver is shutting down (after go-away); nothing was done.
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(0x0103);
    /// The server is marked "service unavailable"; nothing was done.
    pub const SERVICE_UNAVAILABLE: ErrorCode = ErrorCode(0x0104);
    /// Too many requests in flight for this session; nothing was done.
    pub const TOO_MANY_IN_FLIGHT: ErrorCode = ErrorCode(0x0105);
    /// The upstream link was lost before the request was written; nothing was done.
    pub const LINK_LOST_UNSENT: ErrorCode = ErrorCode(0x0106);
    /// The session holds as many subscriptions as it may (a proxy's per-desktop cap); nothing
    /// was done.
    pub const TOO_MANY_SUBSCRIPTIONS: ErrorCode = ErrorCode(0x0107);

    // 0x02xx: outcome unknown.
    /// The upstream link was lost after the request was written.
    pub const LINK_LOST: ErrorCode = ErrorCode(0x0201);
    /// No answer came within the deadline.
    pub const TIMEOUT: ErrorCode = ErrorCode(0x0202);
    /// The server failed internally (e.g. storage error) after it may have acted.
    pub const INTERNAL: ErrorCode = ErrorCode(0x0203);

    // 0x03xx: rejected, do not retry unchanged.
    /// The body is not a well-formed key-value list, or lacks a required key.
    pub const MALFORMED: ErrorCode = ErrorCode(0x0301);
    /// The message type is unknown to the receiver.
    pub const UNKNOWN_MESSAGE: ErrorCode = ErrorCode(0x0302);
    /// The frame's tenant is not the session's authenticated tenant.
    pub const TENANT_MISMATCH: ErrorCode = ErrorCode(0x0303);
    /// Credentials or link secret refused.
    pub const AUTH_FAILED: ErrorCode = ErrorCode(0x0304);
    /// The named object does not exist (for this tenant).
    pub const NOT_FOUND: ErrorCode = ErrorCode(0x0305);
    /// The request is not valid in the current state (e.g. ready before login, hello twice).
    pub const INVALID_STATE: ErrorCode = ErrorCode(0x0306);
    /// The frame exceeds the receiver's maximum frame size (framing lost: the connection closes).
    pub const FRAME_TOO_LARGE: ErrorCode = ErrorCode(0x0307);
    /// A protocol violation: bad magic, bad version, unknown kind, unexpected frame.
    pub const PROTOCOL: ErrorCode = ErrorCode(0x0308);
    /// No route for the frame's service.
    pub const NO_ROUTE: ErrorCode = ErrorCode(0x0309);
    /// The desktop read too slowly; its outbound queue overflowed and it is disconnected.
    pub const SLOW_CONSUMER: ErrorCode = ErrorCode(0x030A);
    /// A handshake, idle or frame deadline passed.
    pub const DEADLINE: ErrorCode = ErrorCode(0x030B);
    /// The server answered, but the answer is larger than the maximum frame the receiver of
    /// the answer accepts; it was discarded by its length. The request was processed.
    pub const RESPONSE_TOO_LARGE: ErrorCode = ErrorCode(0x030C);
    /// A hello's session resume cannot be honoured (unknown or ended session, a token of
    /// another agent, events lost past the replay buffer). Say a fresh hello.
    pub const RESUME_REFUSED: ErrorCode = ErrorCode(0x030D);

    /// The retry class, from the high byte. Unknown classes count as [`RetryClass::Rejected`].
    pub fn retry_class(self) -> RetryClass {
        match self.0 >> 8 {
            0x01 => RetryClass::NotSent,
            0x02 => RetryClass::OutcomeUnknown,
            _ => RetryClass::Rejected,
        }
    }

    /// A stable snake_case name for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::UNAVAILABLE => "unavailable",
            ErrorCode::OVERLOADED => "overloaded",
            ErrorCode::SHUTTING_DOWN => "shutting_down",
            ErrorCode::SERVICE_UNAVAILABLE => "service_unavailable",
            ErrorCode::TOO_MANY_IN_FLIGHT => "too_many_in_flight",
            ErrorCode::LINK_LOST_UNSENT => "link_lost_unsent",
            ErrorCode::TOO_MANY_SUBSCRIPTIONS => "too_many_subscriptions",
            ErrorCode::LINK_LOST => "link_lost",
            ErrorCode::TIMEOUT => "timeout",
            ErrorCode::INTERNAL => "internal",
            ErrorCode::MALFORMED => "malformed",
            ErrorCode::UNKNOWN_MESSAGE => "unknown_message",
            ErrorCode::TENANT_MISMATCH => "tenant_mismatch",
            ErrorCode::AUTH_FAILED => "auth_failed",
            ErrorCode::NOT_FOUND => "not_found",
            ErrorCode::INVALID_STATE => "invalid_state",
            ErrorCode::FRAME_TOO_LARGE => "frame_too_large",
            ErrorCode::PROTOCOL => "protocol",
            ErrorCode::NO_ROUTE => "no_route",
            ErrorCode::SLOW_CONSUMER => "slow_consumer",
            ErrorCode::DEADLINE => "deadline",
            ErrorCode::RESPONSE_TOO_LARGE => "response_too_large",
            ErrorCode::RESUME_REFUSED => "resume_refused",
            _ => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(0x{:04x})", self.name(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_high_byte() {
        assert_eq!(ErrorCode::UNAVAILABLE.retry_class(), RetryClass::NotSent);
        assert_eq!(
            ErrorCode::LINK_LOST_UNSENT.retry_class(),
            RetryClass::NotSent
        );
        assert_eq!(
            ErrorCode::LINK_LOST.retry_class(),
            RetryClass::OutcomeUnknown
        );
        assert_eq!(
            ErrorCode::TENANT_MISMATCH.retry_class(),
            RetryClass::Rejected
        );
        assert_eq!(ErrorCode(0x7F00).retry_class(), RetryClass::Rejected);
    }
}
