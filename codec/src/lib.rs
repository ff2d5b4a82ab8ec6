//! The deskmux wire protocol (PROTOCOL.md), as bytes ⇄ frames, with no I/O.
//!
//! This crate exists so that the proxy, the servers, loadgen and the fuzzer share one exact
//! reading of the wire, testable without sockets (the quinn-proto shape):
//! - [`head`]: the fixed 32-byte head a proxy routes by, and in-place re-stamping of ids;
//! - [`body`]: the lazily read, borrowed key-value body;
//! - [`frame`]: a decoded frame (zero-copy) and frame encoders;
//! - [`codec`]: the stream decoder with its size limit (and tokio-util impls behind the
//!   default `tokio-codec` feature);
//! - [`msg`]: message types, body keys and typed control messages;
//! - [`error`]: decode errors and the wire error codes with their retry classes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod body;
pub mod codec;
pub mod error;
pub mod frame;
pub mod head;
pub mod msg;

/// The ALPN protocol id of the deskmux protocol over TLS and QUIC (PROTOCOL.md §2.1).
pub const ALPN: &[u8] = b"deskmux/1";

pub use body::{BodyRef, BodyWriter, Value};
pub use codec::{DEFAULT_MAX_FRAME_LEN, DecodeState, Decoded, FrameDecoder, Peek};
pub use error::{BodyError, ErrorCode, FrameError, RetryClass};
pub use frame::{Frame, control_error, empty_frame, encode_with, error_response, refusal};
pub use head::{Flags, HEAD_LEN, Head, Kind, Service, VERSION};
