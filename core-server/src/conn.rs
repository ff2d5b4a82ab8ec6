//! One connection, TCP or TLS over TCP (`[tls]`): a direct desktop (one session) or a proxy
//! link (many sessions).
//!
//! The loops are generic over the stream's halves: a plain connection uses the `TcpStream`'s
//! own lock-free halves (exactly the code it had before TLS), a TLS one the halves of
//! `tokio::io::split` (a lock per poll, which the encryption's cost dwarfs).
//!
//! The reader decodes frames with `FrameDecoder` and handles each at once: handshakes (in
//! `handshake`), the request checks of PROTOCOL.md §5.2 in its order, heartbeats and ECHO
//! right here (echo re-stamps the head's kind and sends the request's own
//! body bytes back), Interaction Server requests to the engine, UCS requests to the DB worker.
//! The writer drains the connection's [`Outbox`] in batches with vectored writes, so all the
//! frames that became ready during one wake-up leave in one syscall.
//!
//! Bad input never takes the server down: a malformed body, an unknown kind or message type,
//! or a frame out of order is answered with an error (a response to a request, a control error
//! otherwise) and the connection stays; only lost framing (bad magic or version, a frame over
//! the maximum) or a deadline closes it, after a control error, and a refused hello, after
//! its answer.

use std::collections::{HashMap, HashSet};
use std::io::IoSlice;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use deskmux_codec::msg::{control, ixn};
use deskmux_codec::{ErrorCode, Flags, Frame, FrameDecoder, Head, Kind, Service, control_error};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Verdict;
use crate::ixn::{Input, LinkId, SessKey};
use crate::queue::Refused;
use crate::server::Shared;

mod handshake;
use crate::wire::{self, Out, OutState, Outbox, Peer, QueueLimits};

/// A direct desktop's input budget (`desktop_read_bytes_per_s`), a token bucket: it may send
/// two `max_frame`s at once, then that many bytes a second. Why: what one connection sends is
/// read, decoded and walked before anything can refuse it, so a desktop sending 2 MiB frames
/// as fast as it can takes CPU from every tenant; at its budget it can take little. Links are
/// not held to it: a link carries thousands of desktops, and the proxy bounds each of them.
struct ReadRate {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl ReadRate {
    /// `rate` bytes a second (0: no limit), `burst` at once.
    fn new(rate: f64, burst: f64, now: Instant) -> ReadRate {
        ReadRate {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// `n` bytes were read.
    fn take(&mut self, n: usize, now: Instant) {
        if self.rate > 0.0 {
            self.refill(now);
            self.tokens -= n as f64;
        }
    }

    /// When the debt is paid off, if there is one.
    fn over(&mut self, now: Instant) -> Option<Instant> {
        if self.rate <= 0.0 {
            return None;
        }
        self.refill(now);
        (self.tokens < 0.0).then(|| now + Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// One authenticated session on this connection.
#[derive(Debug, Clone)]
struct Sess {
    key: SessKey,
    tenant: u32,
    peer: Peer,
    /// Session id as it appears in heads (server-assigned on direct connections).
    wire: u64,
    /// The hello's `services` mask (direct sessions; on a link the proxy checks it).
    services: u64,
}

#[derive(Debug)]
enum Mode {
    /// Waiting for `HELLO` or `LINK_HELLO`.
    Fresh,
    /// A desktop connected directly.
    Direct(Sess),
    /// A proxy link and its sessions, by the proxy's session id.
    Link(LinkId, HashMap<u64, Sess>),
}

/// A login checked by the auth pool, or a resume by the engine, back on this connection.
#[derive(Debug)]
struct AuthDone {
    /// The `HELLO` or `SESSION_OPEN` request it answers.
    req: Head,
    agent: String,
    /// The hello's `services` mask.
    services: u64,
    verdict: Outcome,
}

/// What a hello's check came to.
#[derive(Debug)]
enum Outcome {
    /// The auth pool's verdict on a password, key or reconnect token.
    Auth(Verdict),
    /// The engine's on a resume (PROTOCOL.md §4.6): the session, bound and its server hello
    /// sent, or why not (not sent yet).
    Resumed(Result<Sess, &'static str>),
}

/// Largest frame read before the hello succeeds: enough for any hello, and no more memory
/// for a peer that has not proven anything (PROTOCOL.md §4.1).
pub const HELLO_MAX_FRAME: usize = 16 * 1024;

struct Conn {
    shared: Arc<Shared>,
    out: Outbox,
    mode: Mode,
    /// Set when the connection must close after flushing.
    closing: bool,
    /// The peer's address: lockout counts failures per source on direct connections.
    source: Option<IpAddr>,
    /// A direct `HELLO` waiting for its verdict: nothing more is read or handled meanwhile, so
    /// a request written right behind the hello finds the session open.
    hello_pending: bool,
    /// Session ids of `SESSION_OPEN`s waiting for their verdict (links).
    opening: HashSet<u64>,
    /// Keys of resumes sent to the engine and not answered yet: if the connection ends
    /// first, the session they may have bound is detached again.
    resuming: HashSet<SessKey>,
    /// The desktop said goodbye (`GO_AWAY`, `SESSION_CLOSE`): its session ends with the
    /// connection instead of waiting to be resumed.
    goodbye: bool,
    /// Verdicts come back here from the auth pool.
    auth_tx: mpsc::UnboundedSender<AuthDone>,
    /// Largest answer to send: `max_frame`, or less if a proxy link announced less (never
    /// under `limits::MIN_MAX_FRAME`, the least one item needs). Paged UCS answers fit it.
    answer_max: u32,
    /// `[tls] client_ca` is set and this connection presented no verified client
    /// certificate: it may not become a link.
    link_refused: bool,
}

/// How long a closing connection's writer may take to flush what was queued before it: a peer
/// that does not read cannot hold the connection (and its queue) open past this.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// Serve one accepted plain TCP connection until it closes. The accept loop counted it in
/// `open_conns`; the count is taken off once the connection is done.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let source = stream.peer_addr().ok().map(|a| a.ip());
    let (rd, wr) = stream.into_split();
    run(shared, rd, wr, source, Instant::now(), false).await;
}

/// Serve one accepted connection on a `[tls]` port: the TLS handshake (within
/// `handshake_timeout_ms`, which then also bounds the hello: one deadline from accept), then
/// the connection as usual.
pub async fn serve_tls(shared: Arc<Shared>, tls: crate::tls::Acceptor, stream: TcpStream) {
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    let source = stream.peer_addr().ok().map(|a| a.ip());
    let limit = Duration::from_millis(u64::from(shared.cfg.handshake_timeout_ms));
    let stream = match tokio::time::timeout(limit, tls.inner.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if let Some(suppressed) = crate::lograte::PROTOCOL.allow() {
                tracing::info!(source = ?source, error = %e, suppressed, "tls handshake failed");
            }
            shared.open_conns.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        Err(_) => {
            tracing::debug!(source = ?source, "tls handshake deadline");
            shared.open_conns.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    };
    // rustls verified any certificate presented against `client_ca` during the handshake.
    let has_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    let (rd, wr) = tokio::io::split(stream);
    run(
        shared,
        rd,
        wr,
        source,
        accepted,
        tls.links_need_cert && !has_cert,
    )
    .await;
}

async fn run<R, W>(
    shared: Arc<Shared>,
    rd: R,
    wr: W,
    source: Option<IpAddr>,
    accepted: Instant,
    link_refused: bool,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let cancel = CancellationToken::new();
    let cfg = &shared.cfg;
    let limits = QueueLimits {
        desktop_frames: cfg.outbound_queue,
        desktop_bytes: cfg.outbound_queue_bytes,
        link_frames: cfg.link_outbound_queue,
        link_bytes: cfg.link_outbound_queue_bytes,
    };
    let (out, rx, st) = Outbox::new(limits, cancel.clone());
    let id = shared.next_id();
    shared.register(id, out.clone());
    let hb = Duration::from_millis(u64::from(shared.cfg.heartbeat_ms));
    let writer = tokio::spawn(write_loop(wr, rx, st, cancel.clone(), hb));
    let (auth_tx, auth_rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        shared: shared.clone(),
        out,
        mode: Mode::Fresh,
        closing: false,
        source,
        hello_pending: false,
        opening: HashSet::new(),
        resuming: HashSet::new(),
        goodbye: false,
        auth_tx,
        answer_max: shared.cfg.max_frame,
        link_refused,
    };
    conn.read_loop(rd, auth_rx, &cancel, accepted).await;
    conn.teardown();
    shared.unregister(id);
    cancel.cancel();
    drop(conn);
    let _ = writer.await;
    shared.open_conns.fetch_sub(1, Ordering::AcqRel);
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Out>,
    st: Arc<OutState>,
    cancel: CancellationToken,
    hb: Duration,
) {
    // Grows on demand: an idle desktop connection should cost little memory.
    let mut batch: Vec<Out> = Vec::with_capacity(8);
    let mut last_write = Instant::now();
    let timer = tokio::time::sleep(hb);
    tokio::pin!(timer);
    let mut hb_corr: u64 = 1 << 63;
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let mut stop = false;
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    stop = true;
                }
                // Room was made: a link reader paused in `wait_room` may go on.
                st.room.notify_waiters();
            }
            () = &mut cancelled => {
                while let Ok(o) = rx.try_recv() {
                    batch.push(o);
                }
                if st.slow() {
                    // It does not read: what is queued would never leave. Drop it now (its
                    // memory goes at once) and tell the peer why, if it can still hear it.
                    let dropped: usize = batch.iter().map(Out::len).sum();
                    st.written(dropped);
                    batch.clear();
                    let f = control_error(0, ErrorCode::SLOW_CONSUMER, "outbound queue full");
                    let f = Out::Frame(f.freeze());
                    st.add(f.len());
                    batch.push(f);
                }
                stop = true;
            }
            () = &mut timer => {
                if last_write.elapsed() >= hb {
                    hb_corr += 1;
                    let mut h = Head::new(Kind::Request, Service::Control, control::HEARTBEAT);
                    h.correlation = hb_corr;
                    let f = Out::Frame(bytes::Bytes::copy_from_slice(&h.to_bytes()));
                    st.add(f.len());
                    batch.push(f);
                    timer.as_mut().reset((Instant::now() + hb).into());
                } else {
                    timer.as_mut().reset((last_write + hb).into());
                }
            }
        }
        if !batch.is_empty() {
            let n: usize = batch.iter().map(Out::len).sum();
            let wrote = flush(&mut wr, &batch, &cancel, &st, stop).await;
            // Written (or never to be): no longer held for this connection.
            st.written(n);
            batch.clear();
            st.room.notify_waiters();
            if wrote.is_err() {
                cancel.cancel();
                break;
            }
            last_write = Instant::now();
        }
        if stop {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Write a batch. While the connection is open this takes as long as the peer needs to read
/// it; once the connection is cancelled (`closing`, or during the write) at most
/// [`CLOSE_FLUSH`] more, so that answers queued before a close still leave. A slow consumer
/// gets nothing more at all: it does not read, and a write blocked on it would keep the
/// connection, and all it has queued, alive.
async fn flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    batch: &[Out],
    cancel: &CancellationToken,
    st: &OutState,
    closing: bool,
) -> std::io::Result<()> {
    let w = write_batch(wr, batch);
    tokio::pin!(w);
    if !closing {
        tokio::select! {
            r = &mut w => return r,
            () = cancel.cancelled() => {}
        }
        if st.slow() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
    }
    tokio::time::timeout(CLOSE_FLUSH, w)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn write_batch<W: AsyncWrite + Unpin>(wr: &mut W, batch: &[Out]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
    for o in batch {
        match o {
            Out::Frame(b) => slices.push(IoSlice::new(b)),
            Out::Split(h, b) => {
                slices.push(IoSlice::new(h));
                if !b.is_empty() {
                    slices.push(IoSlice::new(b));
                }
            }
        }
    }
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = wr.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    // TLS: records the socket did not take yet wait in rustls until flushed, and the writer
    // may sleep next; on a plain TCP half this is a no-op.
    wr.flush().await
}

impl Conn {
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        mut rd: R,
        mut auth_rx: mpsc::UnboundedReceiver<AuthDone>,
        cancel: &CancellationToken,
        accepted: Instant,
    ) {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let mut dec = FrameDecoder::new(HELLO_MAX_FRAME.min(cfg.max_frame as usize));
        // Reads start small (tens of thousands of idle desktops may connect directly) and grow
        // to 64 KiB once a read fills the space offered (a busy link).
        let mut read_size = 4 * 1024;
        let mut buf = BytesMut::with_capacity(read_size);
        let handshake_deadline =
            accepted + Duration::from_millis(u64::from(cfg.handshake_timeout_ms));
        let idle = Duration::from_millis(u64::from(cfg.heartbeat_ms) * 3);
        let mut last_rx = Instant::now();
        let mut rate = ReadRate::new(
            cfg.desktop_read_bytes_per_s as f64,
            2.0 * f64::from(cfg.max_frame),
            last_rx,
        );
        let timer = tokio::time::sleep_until(handshake_deadline.into());
        let mut armed_for_handshake = true;
        tokio::pin!(timer);
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        // Set when the peer half-closed (end of stream): by then, every answer must be out.
        let mut ended: Option<Instant> = None;
        loop {
            while !self.hello_pending {
                match dec.decode(&mut buf) {
                    Ok(Some(f)) => {
                        self.on_frame(f);
                        if self.closing {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if let Some(suppressed) = crate::lograte::PROTOCOL.allow() {
                            tracing::info!(source = ?self.source, suppressed, "framing lost, closing: {e}");
                        }
                        self.out
                            .frame(control_error(0, e.code(), &e.to_string()).freeze());
                        return;
                    }
                }
            }
            if armed_for_handshake && !matches!(self.mode, Mode::Fresh) {
                armed_for_handshake = false;
                dec.set_max_frame_len(cfg.max_frame as usize);
                timer.as_mut().reset((last_rx + idle).into());
            }
            if let Some(deadline) = ended {
                // Half-closed (PROTOCOL.md §4.1.1): nothing more to read, but requests it sent
                // may still be with the engine or the DB worker (and a hello with the auth
                // pool). Wait for each answer to be queued, then close: the writer flushes
                // them first. Bounded by the deadline.
                if self.all_answered() {
                    return;
                }
                let answered = self.out.state().answered.notified();
                tokio::select! {
                    () = &mut cancelled => return,
                    Some(done) = auth_rx.recv() => {
                        self.on_auth(done);
                        if self.closing {
                            return;
                        }
                    }
                    () = answered => {}
                    () = tokio::time::sleep_until(deadline.into()) => {
                        tracing::debug!("half-closed connection: answers still due at the deadline");
                        return;
                    }
                }
                continue;
            }
            if buf.capacity() - buf.len() < read_size / 4 {
                buf.reserve(read_size);
            }
            let offered = buf.capacity() - buf.len();
            if let (Mode::Direct(_), Some(until)) = (&self.mode, rate.over(Instant::now())) {
                // Over its input budget: read nothing until it is paid off.
                tokio::select! {
                    () = &mut cancelled => return,
                    () = tokio::time::sleep_until(until.into()) => {}
                }
            }
            if matches!(self.mode, Mode::Link(..)) {
                // Backpressure: read no more requests while the link's answers are queued up.
                tokio::select! {
                    () = &mut cancelled => return,
                    () = self.out.wait_room() => {}
                }
            }
            // The deadline timer is re-armed lazily when it fires, not on every read.
            tokio::select! {
                () = &mut cancelled => return,
                Some(done) = auth_rx.recv() => {
                    self.on_auth(done);
                    if self.closing {
                        return;
                    }
                }
                r = rd.read_buf(&mut buf), if !self.hello_pending => match r {
                    // End of stream: answer what was sent before closing, within the idle
                    // deadline (a request slower than that is not waited for).
                    Ok(0) => ended = Some(Instant::now() + idle),
                    Err(_) => return,
                    Ok(n) => {
                        last_rx = Instant::now();
                        rate.take(n, last_rx);
                        if n >= offered && read_size < 64 * 1024 {
                            read_size *= 4;
                        }
                    }
                },
                () = &mut timer => {
                    let fresh = matches!(self.mode, Mode::Fresh);
                    let deadline = if fresh { handshake_deadline } else { last_rx + idle };
                    if Instant::now() >= deadline {
                        let what = if fresh { "handshake deadline" } else { "idle deadline" };
                        self.out.frame(control_error(0, ErrorCode::DEADLINE, what).freeze());
                        return;
                    }
                    timer.as_mut().reset(deadline.into());
                }
            }
        }
    }

    /// Whether every request read so far is answered (its answer queued): no hello or
    /// session open waiting for its verdict, no session with a request in flight.
    fn all_answered(&self) -> bool {
        let idle = |s: &Sess| s.peer.inflight.load(Ordering::Acquire) == 0;
        !self.hello_pending
            && self.opening.is_empty()
            && match &self.mode {
                Mode::Fresh => true,
                Mode::Direct(s) => idle(s),
                Mode::Link(_, sessions) => sessions.values().all(idle),
            }
    }

    /// End every session of this connection: a desktop that said goodbye ends its session;
    /// any other (a dropped connection, a proxy gone with its link) is kept for resume
    /// (PROTOCOL.md §4.6).
    fn teardown(&mut self) {
        let Some(e) = self.shared.engine.get() else {
            return;
        };
        for k in self.resuming.drain() {
            e.control(Input::Detach(k));
        }
        match std::mem::replace(&mut self.mode, Mode::Fresh) {
            Mode::Fresh => {}
            Mode::Direct(s) if self.goodbye => {
                e.control(Input::Close(s.key));
            }
            Mode::Direct(s) => {
                e.control(Input::Detach(s.key));
            }
            Mode::Link(id, sessions) => {
                for s in sessions.values() {
                    e.control(Input::Detach(s.key));
                }
                e.control(Input::LinkClosed(id));
            }
        }
    }

    /// Refuse a frame that is not a request with a control error naming it (PROTOCOL.md §5.1).
    fn refuse_frame(&self, h: &Head, code: ErrorCode, m: &str) {
        self.out.frame(deskmux_codec::refusal(h, code, m).freeze());
    }

    /// The head an answer to `req` starts from (PROTOCOL.md §2.3): once the session is open,
    /// the session's tenant (a refused claim is never echoed back) and, on a direct
    /// connection, the session's own id (a request may name it 0); before, and for a link's
    /// own requests, the request's.
    fn answer_head(&self, req: &Head) -> Head {
        let mut h = *req;
        match &self.mode {
            Mode::Direct(s) => {
                h.tenant = s.tenant;
                h.session = s.wire;
            }
            Mode::Link(_, sessions) => {
                if let Some(s) = sessions.get(&req.session) {
                    h.tenant = s.tenant;
                }
            }
            Mode::Fresh => {}
        }
        h
    }

    fn err(&self, req: &Head, code: ErrorCode, m: &str) {
        self.out.frame(wire::error(&self.answer_head(req), code, m));
    }

    fn on_frame(&mut self, f: Frame) {
        let h = *f.head();
        match h.kind {
            Kind::Request => self.on_request(f),
            // PROTOCOL.md §5.1: an error is never answered with an error (no ping-pong), and
            // a peer's failure report changes nothing here.
            _ if h.flags.has(Flags::ERROR) => {}
            Kind::Control => self.on_control(&f),
            // Answers to our own heartbeats.
            Kind::Response if h.service == Service::Control && h.msg_type == control::HEARTBEAT => {
            }
            Kind::Response => self.refuse_frame(&h, ErrorCode::PROTOCOL, "unexpected response"),
            Kind::Event => self.refuse_frame(&h, ErrorCode::PROTOCOL, "unexpected event"),
            Kind::Unknown(_) => self.refuse_frame(&h, ErrorCode::PROTOCOL, "unknown frame kind"),
        }
    }

    /// Control frames (kind 4) from the peer (PROTOCOL.md §6.1).
    fn on_control(&mut self, f: &Frame) {
        let h = f.head();
        match (h.service, h.msg_type, &mut self.mode) {
            (Service::Control, control::SESSION_CLOSE, Mode::Link(_, sessions)) => {
                self.opening.remove(&h.session);
                if let Some(s) = sessions.remove(&h.session) {
                    // §4.6: `detach` = 1: its desktop was lost, not gone; keep the session.
                    let detach = f
                        .body()
                        .opt_int(deskmux_codec::msg::key::DETACH)
                        .ok()
                        .flatten()
                        == Some(1);
                    if let Some(e) = self.shared.engine.get() {
                        e.control(if detach {
                            Input::Detach(s.key)
                        } else {
                            Input::Close(s.key)
                        });
                    }
                }
            }
            // A proxy draining its link: it sends no new requests; nothing to do.
            (Service::Control, control::GO_AWAY, Mode::Link(..)) => {}
            // A desktop leaving: like closing its connection (answers still owed are dropped;
            // a half-close is the way to leave with them).
            (Service::Control, control::SESSION_CLOSE | control::GO_AWAY, _) => {
                self.goodbye = true;
                self.closing = true;
            }
            (Service::Control, control::ERROR, _) => {}
            _ => self.refuse_frame(h, ErrorCode::PROTOCOL, "unexpected control frame"),
        }
    }

    /// A request: the checks of PROTOCOL.md §5.2, in its order, then the handler.
    fn on_request(&mut self, f: Frame) {
        let h = *f.head();
        if let Mode::Fresh = self.mode {
            return self.fresh_request(&f);
        }
        // PROTOCOL.md §4.3: on a link, UNSUBSCRIBE with session 0 drops the link's own
        // subscription; the proxy sends it when no desktop behind it holds the topic.
        if let Mode::Link(link, _) = &self.mode
            && h.session == 0
            && h.service == Service::Interaction
            && h.msg_type == ixn::UNSUBSCRIBE
            && self.shared.cfg.role.ixn()
        {
            if let Err(e) = f.body().validate() {
                return self.err(&h, ErrorCode::MALFORMED, &format!("malformed body: {e}"));
            }
            let Ok(topic) = f.body().str(deskmux_codec::msg::key::TOPIC) else {
                return self.err(&h, ErrorCode::MALFORMED, "missing topic (str)");
            };
            if let Some(e) = self.shared.engine.get() {
                // Never refused (see `crate::queue`): the proxy does not retry it.
                e.control(Input::LinkUnsubscribe {
                    link: *link,
                    tenant: h.tenant,
                    topic: topic.to_string(),
                });
            }
            self.out.frame(wire::ok(&h));
            return;
        }
        if let Mode::Link(..) = self.mode
            && h.service == Service::Control
        {
            return self.link_control_request(&f);
        }
        // 1. The session the head names.
        let (sess, direct) = match &self.mode {
            Mode::Direct(s) => (s, true),
            Mode::Link(_, sessions) => match sessions.get(&h.session) {
                Some(s) => (s, false),
                None => return self.err(&h, ErrorCode::INVALID_STATE, "unknown session"),
            },
            Mode::Fresh => return,
        };
        // 2. Tenant: the session's (a heartbeat may carry 0).
        let hb = h.service == Service::Control && h.msg_type == control::HEARTBEAT;
        if h.tenant != sess.tenant && !(hb && h.tenant == 0) {
            return self.err(
                &h,
                ErrorCode::TENANT_MISMATCH,
                "tenant is not the session's",
            );
        }
        // 3. Session id: 0 or the session's own (direct).
        if direct && h.session != 0 && h.session != sess.wire {
            return self.err(
                &h,
                ErrorCode::INVALID_STATE,
                "session id is not this session's",
            );
        }
        // 4. One correlation id in flight once (direct; on a link the proxy chooses them).
        if direct && self.out.state().in_flight(h.correlation) {
            return self.err(&h, ErrorCode::INVALID_STATE, "correlation id in flight");
        }
        if h.service == Service::Control {
            return match h.msg_type {
                control::HEARTBEAT => self.out.frame(wire::ok(&self.answer_head(&h))),
                control::HELLO | control::LINK_HELLO => {
                    self.err(&h, ErrorCode::INVALID_STATE, "hello already done")
                }
                control::SESSION_OPEN => {
                    self.err(&h, ErrorCode::INVALID_STATE, "SESSION_OPEN outside a link")
                }
                _ => self.err(&h, ErrorCode::UNKNOWN_MESSAGE, "unknown control message"),
            };
        }
        // 5. The service: run here, and asked for by the hello.
        let role = self.shared.cfg.role;
        let served = match h.service {
            Service::Interaction => role.ixn(),
            Service::Ucs => role.ucs(),
            Service::Gms => self.shared.cfg.gms.is_some(),
            _ => false,
        };
        if !served {
            return self.err(&h, ErrorCode::NO_ROUTE, "service not run by this server");
        }
        if direct && sess.services & h.service.mask_bit() == 0 {
            return self.err(
                &h,
                ErrorCode::INVALID_STATE,
                "service not opened by this session's hello",
            );
        }
        // 6. Going away.
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return self.err(&h, ErrorCode::SHUTTING_DOWN, "shutting down");
        }
        if h.msg_type == ixn::ECHO {
            // Answered at minimum cost: the same body bytes behind a re-stamped head (without
            // the request's flags). The body is opaque bytes, never read (§7): no MALFORMED.
            let (_, body) = f.into_parts();
            let head = wire::response_head(&self.answer_head(&h));
            self.out.send(Out::Split(head.to_bytes(), body));
            return;
        }
        // 7. The body (§3): a body nested deeper than 16 lists, truncated, or not UTF-8 is
        // malformed. Walked once here, before any handler reads it; the walk stops at depth
        // 17, so a 100,000-deep list costs no more than a flat one.
        if let Err(e) = f.body().validate() {
            return self.err(&h, ErrorCode::MALFORMED, &format!("malformed body: {e}"));
        }
        let max = self.shared.cfg.max_in_flight;
        if sess.peer.inflight.load(Ordering::Acquire) >= max {
            return self.err(
                &h,
                ErrorCode::TOO_MANY_IN_FLIGHT,
                "too many requests in flight",
            );
        }
        // Answers and events name the session by its id, whether the request said 0 or it.
        let mut f = f;
        if direct {
            f.set_session(sess.wire);
        }
        let answer = self.answer_head(&h);
        // Its deadline (`request_timeout_ms`): not started by then, it is not run at all.
        let timeout = std::time::Duration::from_millis(self.shared.cfg.request_timeout_ms.into());
        let deadline = std::time::Instant::now() + timeout;
        match h.service {
            Service::Interaction => match self.shared.engine.get() {
                Some(e) => {
                    sess.peer.inflight.fetch_add(1, Ordering::AcqRel);
                    if direct {
                        self.out.state().track(h.correlation);
                    }
                    match e.request(Input::Request(sess.key, f, deadline)) {
                        Ok(()) => {}
                        Err(Refused::Full) => sess.peer.reply(wire::error(
                            &answer,
                            ErrorCode::OVERLOADED,
                            "engine queue full (engine_queue)",
                        )),
                        Err(Refused::Stopped) => sess.peer.reply(wire::error(
                            &answer,
                            ErrorCode::UNAVAILABLE,
                            "engine stopped",
                        )),
                    }
                }
                None => self.err(&h, ErrorCode::UNAVAILABLE, "not primary"),
            },
            Service::Gms => match self.shared.gms.get() {
                Some(gms) => {
                    sess.peer.inflight.fetch_add(1, Ordering::AcqRel);
                    if direct {
                        self.out.state().track(h.correlation);
                    }
                    let peer = sess.peer.clone();
                    crate::gms::proto::handle(gms, sess.tenant, &f, answer, peer, deadline);
                }
                None => self.err(&h, ErrorCode::UNAVAILABLE, "not primary"),
            },
            _ => match self.shared.db.get() {
                Some(db) => {
                    sess.peer.inflight.fetch_add(1, Ordering::AcqRel);
                    if direct {
                        self.out.state().track(h.correlation);
                    }
                    let (max, peer) = (self.answer_max, sess.peer.clone());
                    crate::ucs::handle(db, (sess.tenant, sess.wire), max, &f, peer, deadline);
                }
                None => self.err(&h, ErrorCode::UNAVAILABLE, "not primary"),
            },
        }
    }
}
