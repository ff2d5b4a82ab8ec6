//! Small shared helpers between the connection tasks, the engine and the DB worker: the
//! outbound queue of a connection, reply bookkeeping, and building response/event frames.
//!
//! A connection's writer drains an [`Outbox`]; anything (the reader, the engine task, the DB
//! thread) may push to it without blocking. The queue is bounded twice: in frames and in
//! bytes, since one answer may be a frame of 2 MiB and a frame count alone lets a desktop that
//! asks for large contents and never reads pin gigabytes. A desktop whose queue passes
//! `outbound_queue` frames or `outbound_queue_bytes` bytes is not reading: it is cancelled as
//! a slow consumer rather than blocking the pusher, and its queue is dropped at once.
//! A proxy link carries thousands of sessions' answers, so it is never judged by the desktop
//! limits: its reader stops reading requests while the queue is over half of
//! `link_outbound_queue` frames or `link_outbound_queue_bytes` bytes ([`Outbox::wait_room`]),
//! which pushes back on the proxy through TCP; only a link queue that fills completely (events
//! alone outrunning it) is cancelled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use deskmux_codec::head::CORRELATION_OFFSET;
use deskmux_codec::{
    BodyError, BodyRef, BodyWriter, ErrorCode, Flags, HEAD_LEN, Head, Kind, Value, encode_with,
    error_response,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// The answer to a request whose storage failed: `UNAVAILABLE` (not sent: retry is safe) when
/// it is known that nothing of it was applied, `INTERNAL` (outcome unknown) otherwise.
pub fn storage_error(req: &Head, e: &crate::storage::StoreError) -> Bytes {
    if let crate::storage::StoreError::Expired = e {
        expired(req)
    } else if e.nothing_applied() {
        error(
            req,
            ErrorCode::UNAVAILABLE,
            "storage failed; nothing was applied",
        )
    } else {
        error(req, ErrorCode::INTERNAL, "storage failed")
    }
}

/// The answer to a request that waited past its deadline (`request_timeout_ms`) before it ran.
pub fn expired(req: &Head) -> Bytes {
    error(
        req,
        ErrorCode::OVERLOADED,
        "waited past request_timeout_ms before it ran; nothing was applied",
    )
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

impl Out {
    /// Bytes this item holds (and will write).
    pub fn len(&self) -> usize {
        match self {
            Out::Frame(b) => b.len(),
            Out::Split(_, b) => HEAD_LEN + b.len(),
        }
    }

    /// Whether it is empty (never, for a frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How much one connection's queue may hold.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Frames a direct desktop may have queued before it is a slow consumer.
    pub desktop_frames: usize,
    /// Bytes a direct desktop may have queued before it is a slow consumer.
    pub desktop_bytes: usize,
    /// Frames a link may have queued (half of it pauses its reads; all of it closes it).
    pub link_frames: usize,
    /// Bytes a link may have queued (likewise).
    pub link_bytes: usize,
}

/// The state a connection's queue shares with its writer.
#[derive(Debug, Default)]
pub struct OutState {
    /// Set once the connection is an authenticated proxy link.
    link: AtomicBool,
    /// Bytes queued and not yet written.
    bytes: AtomicUsize,
    /// The queue overflowed: the writer drops what is queued and sends `SLOW_CONSUMER`.
    slow: AtomicBool,
    /// Signalled by the writer each time it drained (and wrote) a batch, for
    /// [`Outbox::wait_room`].
    pub room: Notify,
    /// Signalled each time a request is answered ([`Peer::reply`]): a half-closed connection
    /// waits on it for its last answers.
    pub answered: Notify,
    /// Correlation ids of a direct session's requests in flight (PROTOCOL.md §5.2: a request
    /// reusing one is refused). Not kept on a link: there the proxy chooses the ids, and the
    /// reader never stops for a lock on the answer path. At most `max_in_flight` entries.
    corrs: std::sync::Mutex<Vec<u64>>,
}

impl OutState {
    /// Count `n` bytes the writer queued itself (heartbeats, a last error).
    pub fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    /// Count `n` bytes as written (called by the writer once they are).
    pub fn written(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Whether the connection was cancelled because its queue overflowed.
    pub fn slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }

    fn corrs(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        // A panic while holding it leaves a plain Vec behind: still usable.
        self.corrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a request with correlation id `c` is in flight on this (direct) connection.
    pub fn in_flight(&self, c: u64) -> bool {
        self.corrs().contains(&c)
    }

    /// Note a direct session's request with correlation id `c` as in flight.
    pub fn track(&self, c: u64) {
        self.corrs().push(c);
    }

    /// The answer `answer` (a whole frame) left for the wire: its request is no longer in
    /// flight.
    fn untrack(&self, answer: &[u8]) {
        if self.link.load(Ordering::Acquire) {
            return;
        }
        let Some(c) = answer
            .get(CORRELATION_OFFSET..CORRELATION_OFFSET + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
        else {
            return;
        };
        let mut v = self.corrs();
        if let Some(i) = v.iter().position(|x| *x == c) {
            v.swap_remove(i);
        }
    }
}

/// The sending side of a connection's outbound queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The queue; its capacity is the link limit (a desktop's is enforced in [`Outbox::send`]).
    tx: mpsc::Sender<Out>,
    /// Cancels the connection (slow consumer, framing lost, shutdown).
    cancel: CancellationToken,
    limits: QueueLimits,
    st: Arc<OutState>,
}

impl Outbox {
    /// A queue bounded by `limits`; the receiver and the shared state go to the writer task.
    pub fn new(
        limits: QueueLimits,
        cancel: CancellationToken,
    ) -> (Outbox, mpsc::Receiver<Out>, Arc<OutState>) {
        let (tx, rx) = mpsc::channel(limits.link_frames.max(limits.desktop_frames).max(1));
        let st = Arc::new(OutState::default());
        let out = Outbox {
            tx,
            cancel,
            limits,
            st: st.clone(),
        };
        (out, rx, st)
    }

    /// Mark the connection as a proxy link (after a successful link hello).
    pub fn set_link(&self) {
        self.st.link.store(true, Ordering::Release);
    }

    fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queue an item; a desktop over its limits, or a full link queue, cancels the connection
    /// (slow consumer). Nothing is queued once the connection is cancelled: it is closing, and
    /// its writer only flushes what was queued before.
    pub fn send(&self, item: Out) {
        if self.cancel.is_cancelled() {
            return;
        }
        let n = item.len();
        let link = self.st.link.load(Ordering::Acquire);
        let byte_cap = if link {
            self.limits.link_bytes
        } else {
            self.limits.desktop_bytes
        };
        let before = self.st.bytes.fetch_add(n, Ordering::AcqRel);
        // One item alone is always taken (an answer is at most `max_frame`); a queue that
        // already holds some must stay under the cap.
        let over_bytes = before > 0 && before + n > byte_cap;
        let over_frames = !link && self.queued() >= self.limits.desktop_frames;
        if !over_bytes && !over_frames {
            match self.tx.try_send(item) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.st.bytes.fetch_sub(n, Ordering::AcqRel);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {}
            }
        }
        self.st.bytes.fetch_sub(n, Ordering::AcqRel);
        if !self.cancel.is_cancelled() {
            tracing::warn!(
                queued_bytes = before,
                frames = self.queued(),
                "outbound queue full: slow consumer, closing"
            );
            self.st.slow.store(true, Ordering::Release);
            self.cancel.cancel();
        }
    }

    /// Wait until at most half the queue is in use, in frames and in bytes. A link's reader
    /// calls this before each read, so a proxy that sends faster than it reads answers is
    /// slowed by TCP instead of being disconnected.
    pub async fn wait_room(&self) {
        let half = self.tx.max_capacity() / 2;
        let half_bytes = self.limits.link_bytes / 2;
        loop {
            let drained = self.st.room.notified();
            tokio::pin!(drained);
            // Register before checking, so a drain between the check and the await is seen.
            drained.as_mut().enable();
            if (self.queued() <= half && self.st.queued_bytes() <= half_bytes)
                || self.tx.is_closed()
                || self.cancel.is_cancelled()
            {
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

    /// The state shared with the writer (drain and answer signals).
    pub fn state(&self) -> &Arc<OutState> {
        &self.st
    }
}

/// Where a session's answers go: its connection's outbox and its in-flight counter.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The connection's outbound queue.
    pub out: Outbox,
    /// Requests accepted and not yet answered.
    pub inflight: Arc<AtomicU32>,
    /// Told every answer sent through this peer: set on the peer a keyed request is run with
    /// (PROTOCOL.md §5.5), so its answer is remembered wherever it is produced (at once, or
    /// after a commit, or by the DB worker).
    pub tap: Option<Tap>,
}

/// See [`Peer::tap`].
#[derive(Clone)]
pub struct Tap(Arc<dyn Fn(Bytes) + Send + Sync>);

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap(..)")
    }
}

impl Peer {
    /// Answer one request (counts it out of the in-flight window). The answer is queued
    /// before the count drops, so that a half-closed connection that sees no request in
    /// flight knows every answer is queued (its writer flushes them before closing); the
    /// `answered` signal wakes such a connection.
    pub fn reply(&self, b: Bytes) {
        if let Some(Tap(t)) = &self.tap {
            t(b.clone());
        }
        self.out.st.untrack(&b);
        self.out.frame(b);
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        self.out.st.answered.notify_one();
    }

    /// This peer, with its answers also given to `f`.
    pub fn tapped(&self, f: impl Fn(Bytes) + Send + Sync + 'static) -> Peer {
        Peer {
            tap: Some(Tap(Arc::new(f))),
            ..self.clone()
        }
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

    fn limits() -> QueueLimits {
        QueueLimits {
            desktop_frames: 100,
            desktop_bytes: 1000,
            link_frames: 100,
            link_bytes: 4000,
        }
    }

    #[test]
    fn a_desktop_queue_is_bounded_in_bytes() {
        let cancel = CancellationToken::new();
        let (out, mut rx, st) = Outbox::new(limits(), cancel.clone());
        // One item alone is always taken, however large.
        out.frame(Bytes::from(vec![0u8; 1500]));
        assert!(!cancel.is_cancelled());
        assert_eq!(st.queued_bytes(), 1500);
        // Written: the bytes are no longer counted, and small frames fit again.
        let item = rx.try_recv().unwrap();
        st.written(item.len());
        for _ in 0..9 {
            out.frame(Bytes::from(vec![0u8; 100]));
        }
        assert!(!cancel.is_cancelled());
        out.frame(Bytes::from(vec![0u8; 101]));
        assert!(
            cancel.is_cancelled(),
            "1001 bytes queued for a 1000-byte desktop"
        );
        assert!(st.slow());
        // Nothing more is queued once cancelled.
        out.frame(Bytes::from(vec![0u8; 1]));
        assert_eq!(st.queued_bytes(), 900);
    }

    #[tokio::test]
    async fn a_link_waits_for_room_in_bytes() {
        let cancel = CancellationToken::new();
        let (out, mut rx, st) = Outbox::new(limits(), cancel.clone());
        out.set_link();
        out.frame(Bytes::from(vec![0u8; 2500]));
        // Over half the link's bytes: a reader waits until the writer drains.
        let waiter = {
            let out = out.clone();
            tokio::spawn(async move { out.wait_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let item = rx.recv().await.unwrap();
        st.written(item.len());
        st.room.notify_waiters();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        // Only a full link queue closes it.
        out.frame(Bytes::from(vec![0u8; 3000]));
        out.frame(Bytes::from(vec![0u8; 900]));
        assert!(!cancel.is_cancelled());
        out.frame(Bytes::from(vec![0u8; 200]));
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn a_direct_sessions_correlation_ids_leave_with_their_answers() {
        let cancel = CancellationToken::new();
        let (out, _rx, st) = Outbox::new(limits(), cancel);
        let peer = Peer {
            out: out.clone(),
            inflight: Arc::new(AtomicU32::new(0)),
            tap: None,
        };
        let mut req = Head::new(Kind::Request, deskmux_codec::Service::Interaction, 0x20);
        req.correlation = 71;
        st.track(71);
        assert!(st.in_flight(71) && !st.in_flight(72));
        peer.inflight.fetch_add(1, Ordering::AcqRel);
        peer.reply(ok(&req));
        assert!(!st.in_flight(71), "answered: the id is free again");
        // On a link the proxy chooses the ids: nothing is kept.
        out.set_link();
        st.track(9);
        peer.inflight.fetch_add(1, Ordering::AcqRel);
        req.correlation = 9;
        peer.reply(ok(&req));
        assert!(
            st.in_flight(9),
            "links are not tracked, so not untracked either"
        );
    }

    #[test]
    fn pairs_round_trip() {
        let p: Pairs = vec![("a".into(), "9".into()), ("c".into(), "3".into())];
        let enc = encode_pairs(&p);
        assert_eq!(read_pairs(BodyRef::new(&enc), "props").unwrap(), p);
    }
}
