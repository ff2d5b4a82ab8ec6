//! The proxy's typed errors: who caused a failure and whether the desktop may retry.
//!
//! Wire errors sent to desktops are [`ErrorCode`]s (the retry class is the code's high byte,
//! PROTOCOL.md §5); [`ProxyError`] wraps one with the side that caused it, for logs and
//! metrics, and [`WorkerError`] is what stops a worker.

use deskmux_codec::{ErrorCode, RetryClass};

/// Which side caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The desktop (bad frame, wrong tenant, too slow, too many requests).
    Downstream,
    /// The upstream server or its link (link lost, refused, timeout).
    Upstream,
    /// The proxy itself (limits, shutdown).
    Proxy,
}

/// An error answered to a desktop.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} caused by {side:?}: {message}")]
pub struct ProxyError {
    /// Who caused it.
    pub side: Side,
    /// The wire code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: &'static str,
}

impl ProxyError {
    /// The retry class the desktop sees.
    pub fn retry(&self) -> RetryClass {
        self.code.retry_class()
    }

    /// Who causes errors of this code when the proxy produces them.
    pub fn side_of(code: ErrorCode) -> Side {
        match code {
            ErrorCode::LINK_LOST
            | ErrorCode::LINK_LOST_UNSENT
            | ErrorCode::TIMEOUT
            | ErrorCode::UNAVAILABLE
            | ErrorCode::AUTH_FAILED => Side::Upstream,
            ErrorCode::SHUTTING_DOWN | ErrorCode::OVERLOADED => Side::Proxy,
            _ => Side::Downstream,
        }
    }
}

/// What stops a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Binding the desktop port or polling failed.
    #[error("worker i/o: {0}")]
    Io(#[from] std::io::Error),
}
