//! Small shared helpers between the connection tasks, the engine and the DB worker: the
//! outbound queue of a connection, reply bookkeeping, and building response/event frames.
//!
//! A connection's writer drains an [`Outbox`]; anything (the reader, the engine task, the DB
//! thread) may push to it without blocking. A desktop whose queue passes `outbound_queue`
//! frames is not reading: it is cancelled as a slow consumer rather than blocking the pusher.
//! A proxy link carries thousands of sessions' answers, so it is never judged by the desktop
//! limit: its reader stops reading requests while the queue is over half of
//! `link_outbound_queue` ([`Outbox::wait_room`]), which pushes back on the proxy through TCP;
//! only a link queue that fills completely (events alone outrunning it) is cancelled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::{Bytes, BytesMut};
use deskmux_codec::{
    BodyError, BodyRef, BodyWriter, ErrorCode, Flags, HEAD_LEN, Head, Kind, Value, encode_with,
    error_response,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// The answer to a request whose storage failed: `UNAVAILABLE` (not sent: retry is safe) when
/// it is known that nothing of it was applied, `INTERNAL` (outcome unknown) otherwise.
pub fn storage_error(req: &Head, e: &crate::storage::StoreError) -> Bytes {
    if e.nothing_applied() {
        error(
            req,
            ErrorCode::UNAVAILABLE,
            "storage failed; nothing was applied",
        )
    } else {
        error(req, ErrorCode::INTERNAL, "storage failed")
    }
}

/// Microseconds since the UNIX epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One queued outbound item.
#[derive(Debug)]
pub enum Out {
    /// A whole encoded frame.
    Frame(Bytes),
    /// A frame sent as a re-stamped head plus the original body bytes (echo: no copy, no
    /// allocation beyond this queue slot).
    Split([u8; HEAD_LEN], Bytes),
}

/// The sending side of a connection's outbound queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The queue; its capacity is the link limit (a desktop's is enforced in [`Outbox::send`]).
    tx: mpsc::Sender<Out>,
    /// Cancels the connection (slow consumer, framing lost, shutdown).
    cancel: CancellationToken,
    /// Frames a direct desktop may have queued before it is a slow consumer.
    desktop_limit: usize,
    /// Set once the connection is an authenticated proxy link.
    link: Arc<AtomicBool>,
    /// Signalled by the writer each time it drains a batch, for [`Outbox::wait_room`].
    room: Arc<Notify>,
}

impl Outbox {
    /// A queue that holds `desktop_limit` frames for a desktop and `link_limit` for a link;
    /// the receiver and the drain signal go to the writer task.
    pub fn new(
        desktop_limit: usize,
        link_limit: usize,
        cancel: CancellationToken,
    ) -> (Outbox, mpsc::Receiver<Out>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(link_limit.max(desktop_limit).max(1));
        let room = Arc::new(Notify::new());
        let out = Outbox {
            tx,
            cancel,
            desktop_limit,
            link: Arc::new(AtomicBool::new(false)),
            room: room.clone(),
        };
        (out, rx, room)
    }

    /// Mark the connection as a proxy link (after a successful link hello).
    pub fn set_link(&self) {
        self.link.store(true, Ordering::Release);
    }

    fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queue an item; a desktop over its limit, or a full link queue, cancels the connection
    /// (slow consumer).
    pub fn send(&self, item: Out) {
        let over_desktop_limit =
            !self.link.load(Ordering::Acquire) && self.queued() >= self.desktop_limit;
        let full = over_desktop_limit
            || match self.tx.try_send(item) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(_)) => true,
            };
        if full && !self.cancel.is_cancelled() {
            tracing::warn!("outbound queue full: slow consumer, closing");
            self.cancel.cancel();
        }
    }

    /// Wait until at most half the queue is in use. A link's reader calls this before each
    /// read, so a proxy that sends faster than it reads answers is slowed by TCP instead of
    /// being disconnected.
    pub async fn wait_room(&self) {
        let half = self.tx.max_capacity() / 2;
        loop {
            let drained = self.room.notified();
            tokio::pin!(drained);
            // Register before checking, so a drain between the check and the await is seen.
            drained.as_mut().enable();
            if self.queued() <= half || self.tx.is_closed() {
                return;
            }
            drained.await;
        }
    }

    /// Queue a whole frame.
    pub fn frame(&self, b: Bytes) {
        self.send(Out::Frame(b));
    }

    /// Whether two outboxes feed the same connection.
    pub fn same(&self, other: &Outbox) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// The connection's cancellation token.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }
}

/// Where a session's answers go: its connection's outbox and its in-flight counter.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The connection's outbound queue.
    pub out: Outbox,
    /// Requests accepted and not yet answered.
    pub inflight: Arc<AtomicU32>,
}

impl Peer {
    /// Answer one request (counts it out of the in-flight window).
    pub fn reply(&self, b: Bytes) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        self.out.frame(b);
    }

    /// Push an event (no in-flight accounting).
    pub fn push(&self, b: Bytes) {
        self.out.frame(b);
    }
}

/// The head of a (non-error) response to `req`: same service, type, tenant, session and
/// correlation; no flags. A request's flags describe the request (`RETRY`), or make no sense on
/// it (`ERROR`, `BROADCAST`): copying them would send, say, an `ERROR`-flagged success with no
/// `code` (PROTOCOL.md §5). Error responses set `ERROR` themselves.
pub fn response_head(req: &Head) -> Head {
    let mut head = *req;
    head.kind = Kind::Response;
    head.flags = Flags::default();
    head
}

/// A response to `req` with the body `f` writes.
pub fn response(req: &Head, f: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>) -> Bytes {
    let head = response_head(req);
    let mut buf = BytesMut::with_capacity(HEAD_LEN + 64);
    match encode_with(head, &mut buf, f) {
        Ok(_) => buf.freeze(),
        Err(_) => error(req, ErrorCode::INTERNAL, "response too large"),
    }
}

/// An empty response to `req`.
pub fn ok(req: &Head) -> Bytes {
    response(req, |_| Ok(()))
}

/// An error response to `req`.
pub fn error(req: &Head, code: ErrorCode, msg: &str) -> Bytes {
    error_response(req, code, msg).freeze()
}

/// A frame with `head` (body length patched) and the body `f` writes.
pub fn build(head: Head, f: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEAD_LEN + 96);
    match encode_with(head, &mut buf, f) {
        Ok(_) => buf.freeze(),
        Err(_) => {
            let mut h = head;
            h.body_len = 0;
            Bytes::copy_from_slice(&h.to_bytes())
        }
    }
}

/// A property list (`props`, `attrs`): `str` items, key = name.
pub type Pairs = Vec<(String, String)>;

/// Read a stored property list; every item must be a string. Lists from the wire go through
/// [`crate::limits::read_pairs`], which checks the caps first.
///
/// # Errors
/// A malformed list or a non-string value.
pub fn read_pairs(b: BodyRef<'_>, key: &'static str) -> Result<Pairs, BodyError> {
    let mut out = Vec::new();
    for item in b.iter() {
        let (k, v) = item?;
        match v {
            Value::Str(s) => out.push((k.to_string(), s.to_string())),
            _ => return Err(BodyError::WrongType(key)),
        }
    }
    Ok(out)
}

/// Encode a property list as items (the content of a `list` value).
pub fn encode_pairs(p: &[(String, String)]) -> Vec<u8> {
    let mut buf = BytesMut::with_capacity(p.iter().map(|(k, v)| k.len() + v.len() + 6).sum());
    {
        let mut w = BodyWriter::new(&mut buf);
        for (k, v) in p {
            // Cannot fail: each value is far below u32::MAX (it came from a frame).
            let _ = w.str(k, v);
        }
    }
    buf.to_vec()
}

/// Read a full body and check it nests properly (PROTOCOL.md §3).
///
/// # Errors
/// The first body error.
pub fn validate(b: BodyRef<'_>) -> Result<(), BodyError> {
    b.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let p: Pairs = vec![("a".into(), "9".into()), ("c".into(), "3".into())];
        let enc = encode_pairs(&p);
        assert_eq!(read_pairs(BodyRef::new(&enc), "props").unwrap(), p);
    }
}
