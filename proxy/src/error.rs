//! The proxy's typed errors: who caused a failure and whether the desktop may retry.
//!
//! Wire errors sent to desktops are [`ErrorCode`]s (the retry class is the code's high byte,
//! PROTOCOL.md §5); [`ProxyError`] wraps one with the side that caused it, for logs and
//! metrics, [`WorkerError`] is what stops a worker, and [`CertReloadError`] is why a SIGHUP
//! left a worker on its previous certificate.

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

/// Why a SIGHUP did not swap in a new certificate for one section (`[tls]` or `[quic]`). The
/// worker logs it, counts it (`deskmux_proxy_cert_reload_failures`) and keeps serving new
/// connections with the certificate it had; nothing else of the reload is undone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertReloadError {
    /// The files could not be made into a server configuration: unreadable, no certificate
    /// or no key in them, or a key that does not belong to the certificate.
    #[error("[{section}] certificate not reloaded, still serving the previous one: {reason}")]
    Load {
        /// `tls` or `quic`.
        section: &'static str,
        /// What was wrong with the files (path and cause).
        reason: String,
    },
    /// The section appeared in the configuration: its listener is created when a worker
    /// starts, so it needs a restart.
    #[error(
        "[{0}] was added: listeners are set up when a worker starts; restart the proxy to apply it"
    )]
    Added(&'static str),
    /// The section disappeared from the configuration: its listener keeps running (with the
    /// certificate it has) until the proxy is restarted.
    #[error(
        "[{0}] was removed: listeners are set up when a worker starts; restart the proxy to apply it (still serving it)"
    )]
    Removed(&'static str),
}
