//! The proxy's typed errors: who caused a failure and whether the desktop may retry.
//!
//! - [`ProxyError`] is an error answered to a desktop: the wire [`ErrorCode`] (its high byte is
//!   the retry class, PROTOCOL.md §5), the [`Side`] that caused it (for logs and metrics), and
//!   a message.
//! - [`Disconnect`] is why a desktop connection ended (the `reason` label of
//!   `deskmux_proxy_disconnects`).
//! - [`WorkerError`] is what stops a worker; [`CertReloadError`] is why a SIGHUP left a worker
//!   on its previous certificate.

use deskmux_codec::{ErrorCode, RetryClass};

/// Which side caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The desktop (bad frame, wrong tenant, too slow, over a cap).
    Desktop,
    /// The upstream server or its link (link lost, refused, timeout, oversized answer).
    Upstream,
    /// The proxy itself (its limits, shutdown).
    Proxy,
}

/// An error answered to a desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{code} caused by {side:?}: {message}")]
pub struct ProxyError {
    /// The wire code.
    pub code: ErrorCode,
    /// Who caused it.
    pub side: Side,
    /// Human-readable message.
    pub message: &'static str,
}

impl ProxyError {
    /// Caused by the desktop.
    pub const fn desktop(code: ErrorCode, message: &'static str) -> ProxyError {
        ProxyError {
            code,
            side: Side::Desktop,
            message,
        }
    }

    /// Caused by the upstream server or its link.
    pub const fn upstream(code: ErrorCode, message: &'static str) -> ProxyError {
        ProxyError {
            code,
            side: Side::Upstream,
            message,
        }
    }

    /// Caused by the proxy's own limits or state.
    pub const fn proxy(code: ErrorCode, message: &'static str) -> ProxyError {
        ProxyError {
            code,
            side: Side::Proxy,
            message,
        }
    }

    /// The retry class the desktop sees.
    pub fn retry(&self) -> RetryClass {
        self.code.retry_class()
    }
}

/// Why a desktop connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The desktop closed (EOF), with nothing left to answer.
    Eof,
    /// A socket error.
    IoError,
    /// A TLS failure (handshake or record).
    TlsError,
    /// Its framing was lost (bad magic or version, a frame over the limit).
    Framing,
    /// Its hello was refused.
    HelloRefused,
    /// It said it is leaving (`SESSION_CLOSE` or `GO_AWAY` from it).
    Left,
    /// Its outbound queue overflowed.
    SlowConsumer,
    /// A handshake, idle or frame deadline passed.
    Deadline,
    /// A server closed its session.
    ClosedByServer,
    /// The worker is shutting down.
    Shutdown,
    /// The worker's byte budget had no room for it.
    Overloaded,
}

impl Disconnect {
    /// Whether the desktop's sessions are kept for it to resume (PROTOCOL.md §4.6:
    /// `SESSION_CLOSE` with `detach`): it was lost, or sent away by a drain, rather than gone
    /// by its own word, refused, or ended by a server.
    pub fn keeps_session(self) -> bool {
        !matches!(
            self,
            Disconnect::HelloRefused | Disconnect::Left | Disconnect::ClosedByServer
        )
    }

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Disconnect::Eof => "eof",
            Disconnect::IoError => "io_error",
            Disconnect::TlsError => "tls_error",
            Disconnect::Framing => "framing",
            Disconnect::HelloRefused => "hello_refused",
            Disconnect::Left => "desktop_left",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::Deadline => "deadline",
            Disconnect::ClosedByServer => "closed_by_server",
            Disconnect::Shutdown => "shutdown",
            Disconnect::Overloaded => "overloaded",
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The worker holds `max_desktops` (TCP and TLS) desktops.
    DesktopCap,
    /// The source address holds `max_desktops_per_source` desktops of this worker.
    SourceCap,
    /// The worker is draining after SIGTERM.
    Draining,
}

impl Refused {
    /// The error the refused connection is told before it is closed.
    pub fn error(self) -> ProxyError {
        match self {
            Refused::DesktopCap => {
                ProxyError::proxy(ErrorCode::OVERLOADED, "proxy is at its desktop limit")
            }
            Refused::SourceCap => ProxyError::proxy(
                ErrorCode::OVERLOADED,
                "too many desktops from this source address",
            ),
            Refused::Draining => {
                ProxyError::proxy(ErrorCode::SHUTTING_DOWN, "proxy is shutting down")
            }
        }
    }

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Refused::DesktopCap => "desktop_cap",
            Refused::SourceCap => "source_cap",
            Refused::Draining => "draining",
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
