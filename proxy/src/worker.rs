//! The I/O driver of one worker process: a single-threaded mio event loop that owns every
//! desktop socket and every upstream link of the worker.
//!
//! Why an event loop and not a task per connection: an idle desktop must cost a few hundred
//! bytes. Here it costs one slab entry (a [`Desktop`] plus its socket, see `session`), with no
//! read buffer (frames are read into one worker-wide scratch buffer and arena; a connection
//! gets its own buffer only while one of its frames is partial), no write buffer (an empty
//! `VecDeque` holds no heap), no waker, no task and no held tracing span. Everything runs on
//! one thread, so the link id slabs, the fan-out table and the desktops need no locks.
//!
//! One wake-up:
//! 1. read every ready socket until it would block (capped per socket for fairness),
//!    decode frames zero-copy (`split_to`), act on them: forward the same bytes after
//!    restamping the correlation and session ids, answer locally, or fan out;
//! 2. every socket that got frames queued is flushed with one vectored write (`writev` over the
//!    queued `Bytes`); a partial write waits for the next writable edge;
//! 3. with `[quic]`: the UDP socket's datagrams (at most 512 per wake-up) are fed to the
//!    quinn-proto endpoint; the endpoint is driven before the writes (its events make desktops,
//!    read readable streams, flush writable ones) and again after them (transmits); the poll
//!    timeout is never later than the next QUIC timer;
//! 4. every ~100 ms: deadlines (handshake, idle, request timeouts), heartbeats, link
//!    reconnects with backoff and jitter, SIGTERM drain and SIGHUP reload (limits, upstreams,
//!    tenant routes, and the `[tls]` / `[quic]` certificates for new connections).
//!
//! Ids: a desktop's session id is `(generation << 32) | slab slot`, with the worker-wide
//! generation bumped on every accept; it is the upstream session id on every link, so unicast
//! events and responses find their desktop with one slab lookup and a generation check. The
//! link correlation id has the same shape (see `link`). A stale answer (after a timeout, a
//! disconnect or a reconnect) never matches a newer request or desktop.
//!
//! Link loss: in-flight requests get `LINK_LOST` (written) or `LINK_LOST_UNSENT` (not yet
//! written); then every desktop whose upstream session lived on that link gets a control
//! `ERROR` `LINK_LOST` (session = its id). Its connection stays open, and its later requests
//! to that service are answered `LINK_LOST_UNSENT`, so nothing it sends goes unanswered; the
//! client is expected to reconnect (new hello, new sessions on a live link). Sessions are not
//! re-opened transparently: server-side state (agent login, subscriptions) is gone, and the
//! desktop must know.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{self, DesktopHello, LinkHello, LinkHelloAck, ServerHello, ServiceState};
use deskmux_codec::{
    ErrorCode, Flags, Frame, FrameDecoder, HEAD_LEN, Head, Kind, Service, control_error,
    empty_frame, error_response,
};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tracing::{debug, info, info_span, warn};

use crate::config::{Config, Limits, Upstream};
use crate::error::{CertReloadError, WorkerError};
use crate::fanout::{Fanout, SubscribeOutcome};
use crate::link::{IdSlab, Owner, Pending};
use crate::metrics::{AdminCommand, Metrics, Status};
use crate::quic::{QuicEndpoint, QuicEvent};
use crate::router::{NoLink, Router};
use crate::session::{Action, Binding, Desktop, OutQueue, Phase, Timer};
use crate::transport::{Transport, connect_upstream};

const LISTENER: Token = Token(usize::MAX - 1);
const QUIC: Token = Token(usize::MAX - 2);
const LINK_BASE: usize = 1 << 40;
const TICK: Duration = Duration::from_millis(100);
/// Bytes read from one socket per wake-up before others get a turn.
const READ_BUDGET: usize = 256 * 1024;
/// Slices per vectored write.
const IOV: usize = 64;
/// Most time a closing desktop may take to flush its last frames.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Link connect + hello deadline.
const LINK_HANDSHAKE: Duration = Duration::from_secs(5);

/// Signals delivered to the worker (set by the admin thread's signal handlers).
#[derive(Debug, Default)]
pub struct Signals {
    /// SIGTERM: drain and exit.
    pub term: AtomicBool,
    /// SIGHUP: reload the configuration.
    pub hup: AtomicBool,
}

/// What a worker needs to run.
pub struct WorkerOpts {
    /// Worker index (for logs, metrics and link names).
    pub index: usize,
    /// The configuration (CLI overrides applied).
    pub config: Config,
    /// Where to re-read the configuration on SIGHUP (`None`: reload keeps the current one).
    pub reload: Option<Box<dyn Fn() -> Option<Config> + Send>>,
    /// Instances disabled by an operator before this worker started.
    pub disabled: Vec<String>,
    /// The QUIC endpoint (UDP, same port number), when `[quic]` is configured.
    pub quic: Option<QuicEndpoint>,
}

impl std::fmt::Debug for WorkerOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOpts")
            .field("index", &self.index)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Down { retry_at: Instant },
    Connecting { since: Instant },
    Handshaking { since: Instant },
    Up,
}

#[derive(Debug)]
struct Link {
    name: String,
    addr: SocketAddr,
    instance: usize,
    state: LinkState,
    sock: Option<mio::net::TcpStream>,
    /// Incarnation: bumped every time the link goes down.
    generation: u32,
    ids: IdSlab,
    out: OutQueue,
    /// Link id of each queued frame (0 for frames no one waits for), parallel to `out.q`.
    out_ids: VecDeque<u64>,
    rbuf: BytesMut,
    failures: u32,
    last_rx: Instant,
    last_tx: Instant,
    heartbeat: Duration,
    max_frame: usize,
    /// The server sent GO_AWAY: no new sessions here.
    draining: bool,
    dirty: bool,
    retired: bool,
    /// This link's `link_queue_bytes` gauge (cached handle).
    queue_gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Link {
    fn up(&self) -> bool {
        self.state == LinkState::Up && !self.draining && !self.retired
    }
}

struct Conn<S> {
    sock: S,
    d: Desktop,
    dirty: bool,
}

/// Queue `b` to a desktop; on overflow the desktop is a slow consumer.
fn push_to<S>(
    c: &mut Conn<S>,
    b: Bytes,
    l: &Limits,
    now_ms: u32,
    dirty: &mut Vec<usize>,
    slot: usize,
) -> bool {
    match c.d.out.push(b, l.out_queue_frames, l.out_queue_bytes) {
        Ok(()) => {
            c.d.last_tx_ms = now_ms;
            if !c.dirty {
                c.dirty = true;
                dirty.push(slot);
            }
            true
        }
        Err(_) => false,
    }
}

fn slot_of(sid: u64) -> usize {
    (sid & 0xFFFF_FFFF) as usize
}

/// The worker.
pub struct Worker<T: Transport> {
    index: usize,
    poll: Poll,
    listener: Option<T>,
    conns: Slab<Conn<T::Conn>>,
    links: Vec<Link>,
    router: Router,
    fanout: Fanout,
    cfg: Config,
    limits: Limits,
    next_gen: u32,
    start: Instant,
    scratch: Vec<u8>,
    arena: BytesMut,
    dirty_desktops: Vec<usize>,
    dirty_links: Vec<usize>,
    to_close: Vec<(usize, &'static str)>,
    metrics: Metrics,
    status: Arc<Status>,
    signals: Arc<Signals>,
    reload: Option<Box<dyn Fn() -> Option<Config> + Send>>,
    drain_deadline: Option<Instant>,
    in_flight: u64,
    /// Reused list of frames decoded in one read.
    frames: Vec<Frame>,
    /// Request counters for interaction, ucs, other (cached handles).
    request_counters: [prometheus_client::metrics::counter::Counter; 3],
    /// QUIC desktops' endpoint (see `quic`): desktops without a file descriptor.
    quic: Option<QuicEndpoint>,
    /// QUIC events not yet acted on.
    quic_events: Vec<QuicEvent>,
    /// The UDP socket's read budget ran out: datagrams are still pending.
    quic_more: bool,
}

impl<T: Transport> std::fmt::Debug for Worker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .finish()
    }
}

impl<T: Transport> Worker<T> {
    /// Build a worker around a bound listener.
    ///
    /// # Errors
    /// Poll creation or registration failure.
    pub fn new(
        opts: WorkerOpts,
        mut listener: T,
        metrics: Metrics,
        status: Arc<Status>,
        signals: Arc<Signals>,
    ) -> Result<Worker<T>, WorkerError> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut quic = opts.quic;
        if let Some(q) = quic.as_mut() {
            poll.registry().register(q, QUIC, Interest::READABLE)?;
        }
        let limits = opts.config.limits.clone();
        let request_counters = ["interaction", "ucs", "other"].map(|n| {
            metrics
                .requests
                .get_or_create(&[("service", n.to_string())])
                .clone()
        });
        let mut w = Worker {
            index: opts.index,
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            links: Vec::new(),
            router: Router::new(),
            fanout: Fanout::new(),
            cfg: opts.config.clone(),
            limits,
            // The worker index sits in the generation's top byte, so session ids are unique
            // across the workers of one proxy (they only must be unique per link).
            next_gen: ((opts.index as u32 & 0xFF) << 24) | 1,
            start: Instant::now(),
            scratch: vec![0u8; 64 * 1024],
            arena: BytesMut::with_capacity(64 * 1024),
            dirty_desktops: Vec::new(),
            dirty_links: Vec::new(),
            to_close: Vec::new(),
            metrics,
            status,
            signals,
            reload: opts.reload,
            drain_deadline: None,
            in_flight: 0,
            request_counters,
            frames: Vec::new(),
            quic,
            quic_events: Vec::new(),
            quic_more: false,
        };
        w.status.worker.store(opts.index as u64, Ordering::Relaxed);
        for u in opts.config.upstream {
            w.add_instance(u);
        }
        w.router.tenant_ucs = tenant_map(&w.cfg);
        let cfg = w.cfg.clone();
        w.router.set_partitions(&cfg);
        w.router.set_capabilities(&cfg);
        for n in &opts.disabled {
            if let Some(i) = w.router.find(n) {
                w.router.instances[i].disabled = true;
            }
        }
        w.publish_instances();
        Ok(w)
    }

    fn add_instance(&mut self, u: Upstream) {
        let now = Instant::now();
        let first = self.links.len();
        let inst = self.router.instances.len();
        for k in 0..u.links {
            self.links.push(Link {
                name: format!("proxy-w{}-{}-{}", self.index, u.name, k),
                addr: u.addr,
                instance: inst,
                state: LinkState::Down { retry_at: now },
                sock: None,
                generation: 1,
                ids: IdSlab::new(),
                out: OutQueue::default(),
                out_ids: VecDeque::new(),
                rbuf: BytesMut::new(),
                failures: 0,
                last_rx: now,
                last_tx: now,
                heartbeat: Duration::from_secs(5),
                max_frame: deskmux_codec::DEFAULT_MAX_FRAME_LEN,
                draining: false,
                dirty: false,
                retired: false,
                queue_gauge: self
                    .metrics
                    .link_queue
                    .get_or_create(&[("link", format!("proxy-w{}-{}-{}", self.index, u.name, k))])
                    .clone(),
            });
        }
        let ids = (first..self.links.len()).collect();
        let balance = self
            .cfg
            .clusters
            .get(&u.cluster)
            .map(|c| c.balance)
            .unwrap_or_default();
        self.router.add(u, ids, balance);
        self.status
            .links_total
            .store(self.links.len() as u64, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u32 {
        // Wraps after 49 days; all comparisons use wrapping_sub.
        self.start.elapsed().as_millis() as u32
    }

    /// Address the desktops connect to.
    ///
    /// # Errors
    /// The listener has no address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(io::Error::other("listener closed")),
        }
    }

    /// Run until drained after SIGTERM. `ready` is called once, when every link is up (or
    /// after 3 s), so that a supervisor announces the port only when it can serve.
    ///
    /// # Errors
    /// A poll failure.
    pub fn run(mut self, ready: impl FnOnce()) -> Result<(), WorkerError> {
        let mut events = Events::with_capacity(1024);
        let mut ready = Some(ready);
        let mut last_tick = Instant::now() - TICK;
        let mut pending_reads: Vec<usize> = Vec::new();
        loop {
            let mut timeout =
                if pending_reads.is_empty() && self.quic_events.is_empty() && !self.quic_more {
                    TICK
                } else {
                    Duration::ZERO
                };
            if let Some(at) = self.quic.as_ref().and_then(QuicEndpoint::next_timeout) {
                timeout = timeout.min(at.saturating_duration_since(Instant::now()));
            }
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
            if std::mem::take(&mut self.quic_more)
                && let Some(q) = self.quic.as_mut()
            {
                self.quic_more = q.recv(Instant::now());
            }
            let carry = std::mem::take(&mut pending_reads);
            for slot in carry {
                if self.conns.contains(slot) && self.read_desktop(slot) {
                    pending_reads.push(slot);
                }
            }
            for ev in &events {
                let t = ev.token();
                if t == LISTENER {
                    self.accept();
                } else if t == QUIC {
                    if let Some(q) = self.quic.as_mut() {
                        self.quic_more = q.recv(Instant::now());
                    }
                } else if t.0 >= LINK_BASE {
                    let i = t.0 - LINK_BASE;
                    self.link_event(i, ev.is_readable(), ev.is_writable() || ev.is_error());
                } else {
                    let slot = t.0;
                    if ev.is_writable() && self.conns.contains(slot) {
                        self.mark_dirty(slot);
                    }
                    if (ev.is_readable() || ev.is_read_closed() || ev.is_error())
                        && self.conns.contains(slot)
                        && self.read_desktop(slot)
                        && !pending_reads.contains(&slot)
                    {
                        pending_reads.push(slot);
                    }
                }
            }
            self.quic_round(&mut pending_reads);
            self.flush_all();
            if let Some(q) = self.quic.as_mut() {
                // Transmit what the desktops' writes queued; events wait for the next round.
                q.drive(Instant::now(), &mut self.quic_events);
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick();
                self.flush_all();
                if let Some(r) = ready.take() {
                    if self.links.iter().all(|l| l.state == LinkState::Up)
                        || self.start.elapsed() > Duration::from_secs(3)
                    {
                        r();
                    } else {
                        ready = Some(r);
                    }
                }
                if self.drain_done() {
                    self.finish();
                    return Ok(());
                }
            }
        }
    }

    /// Drive the QUIC endpoint and act on its events: new desktop streams become desktops,
    /// readable ones are read, writable ones flushed.
    fn quic_round(&mut self, pending_reads: &mut Vec<usize>) {
        let Some(q) = self.quic.as_mut() else {
            return;
        };
        let mut evs = std::mem::take(&mut self.quic_events);
        q.drive(Instant::now(), &mut evs);
        for ev in evs.drain(..) {
            match ev {
                QuicEvent::NewDesktop(ch, peer) => {
                    let Some(slot) = self.insert_quic(ch, peer) else {
                        continue;
                    };
                    if self.read_desktop(slot) && !pending_reads.contains(&slot) {
                        pending_reads.push(slot);
                    }
                }
                QuicEvent::Readable(slot) => {
                    if self.conns.contains(slot)
                        && self.read_desktop(slot)
                        && !pending_reads.contains(&slot)
                    {
                        pending_reads.push(slot);
                    }
                }
                QuicEvent::Writable(slot) => self.mark_dirty(slot),
            }
        }
        self.quic_events = evs;
    }

    fn insert_quic(
        &mut self,
        ch: quinn_proto::ConnectionHandle,
        peer: SocketAddr,
    ) -> Option<usize> {
        let slot = self.conns.vacant_key();
        let q = self.quic.as_mut()?;
        let stream = q.attach(ch, slot)?;
        self.insert_desktop(T::Conn::from(stream), peer)
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty_desktops.push(slot);
        }
    }

    // ---------------------------------------------------------------- accept / close

    fn accept(&mut self) {
        loop {
            let Some(l) = self.listener.as_mut() else {
                return;
            };
            let (mut sock, peer) = match l.accept() {
                Ok(Some(x)) => x,
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: back off until the next tick rather than spin.
                    warn!(error = %e, "accept failed");
                    return;
                }
            };
            let quic = self.quic.as_ref().map_or(0, QuicEndpoint::desktops);
            if self.conns.len().saturating_sub(quic) >= self.limits.max_desktops {
                let f = control_error(0, ErrorCode::OVERLOADED, "proxy is at its desktop limit");
                let _ = sock.write(f.as_bytes());
                self.metrics.error("overloaded");
                continue;
            }
            self.insert_desktop(sock, peer);
        }
    }

    /// Add a connected desktop to the slab (TCP, TLS or a QUIC stream); its slot.
    fn insert_desktop(&mut self, mut sock: T::Conn, peer: SocketAddr) -> Option<usize> {
        {
            let entry = self.conns.vacant_entry();
            let slot = entry.key();
            let generation = self.next_gen;
            let hi = self.next_gen & 0xFF00_0000;
            self.next_gen = hi | (self.next_gen.wrapping_add(1) & 0x00FF_FFFF).max(1);
            let sid = (u64::from(generation) << 32) | slot as u64;
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!(error = %e, "register failed");
                return None;
            }
            let now = self.start.elapsed().as_millis() as u32;
            entry.insert(Conn {
                sock,
                d: Desktop::new(sid, now),
                dirty: false,
            });
            self.metrics.desktops.inc();
            self.status.desktops.fetch_add(1, Ordering::Relaxed);
            let _s = info_span!("desktop", sid, %peer).entered();
            debug!("accepted");
            Some(slot)
        }
    }

    /// Start closing a desktop: tell the servers, leave subscriptions, stop reading; the socket
    /// is dropped once its queue is flushed (or after [`CLOSE_FLUSH`]).
    fn close_desktop(&mut self, slot: usize, reason: &'static str) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.d.phase == Phase::Closing {
            return;
        }
        let _s = info_span!("desktop", sid = c.d.sid).entered();
        debug!(reason, "closing");
        let was_open = matches!(c.d.phase, Phase::Open | Phase::Opening);
        if c.d.phase == Phase::Open {
            self.metrics.sessions.dec();
        }
        c.d.phase = Phase::Closing;
        // The close deadline counts from now.
        c.d.accepted_ms = self.start.elapsed().as_millis() as u32;
        c.d.rbuf = None;
        let sid = c.d.sid;
        let tenant = c.d.tenant;
        let subs = std::mem::take(&mut c.d.subs);
        let links: Vec<(u16, u32)> = c.d.links().collect();
        self.metrics.disconnect(reason);
        for sub in subs {
            let info = self
                .fanout
                .subs
                .get(sub as usize)
                .map(|s| (s.link, s.topic.clone()));
            if let Some(Some(up)) = self.fanout.leave(sub, sid)
                && let Some((link, topic)) = info
                && up != 0
            {
                self.unsubscribe_upstream(link as usize, tenant, sid, &topic);
            }
        }
        if was_open {
            for (link, generation) in links {
                let l = link as usize;
                if self.links[l].state == LinkState::Up && self.links[l].generation == generation {
                    let mut h =
                        Head::new(Kind::Control, Service::Control, msg::control::SESSION_CLOSE);
                    h.tenant = tenant;
                    h.session = sid;
                    self.push_link(l, empty_frame(h).freeze(), 0);
                }
            }
        }
        self.mark_dirty(slot);
    }

    fn remove_desktop(&mut self, slot: usize) {
        if let Some(mut c) = self.conns.try_remove(slot) {
            let _ = self.poll.registry().deregister(&mut c.sock);
            self.metrics.desktops.dec();
            self.status.desktops.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn close_pending(&mut self) {
        let v = std::mem::take(&mut self.to_close);
        for (slot, reason) in v {
            self.close_desktop(slot, reason);
        }
    }

    // ---------------------------------------------------------------- desktop reads

    /// Read what the desktop sent; returns true if the read budget ran out (more to read).
    fn read_desktop(&mut self, slot: usize) -> bool {
        let mut budget = READ_BUDGET;
        loop {
            let Some(c) = self.conns.get_mut(slot) else {
                return false;
            };
            if c.d.phase == Phase::Closing {
                // Drain and discard, so the peer's close is noticed.
                match c.sock.read(&mut self.scratch) {
                    Ok(0) => {
                        c.d.out = OutQueue::default();
                        self.remove_desktop(slot);
                        return false;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(_) => {
                        self.remove_desktop(slot);
                        return false;
                    }
                }
            }
            let n = match c.sock.read(&mut self.scratch) {
                Ok(0) => {
                    self.close_desktop(slot, "eof");
                    self.remove_desktop(slot);
                    return false;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    // InvalidData: a TLS failure (handshake or record), logged by the stream.
                    let reason = if e.kind() == io::ErrorKind::InvalidData {
                        self.metrics.error("tls");
                        "tls_error"
                    } else {
                        "io_error"
                    };
                    self.close_desktop(slot, reason);
                    self.remove_desktop(slot);
                    return false;
                }
            };
            c.d.last_rx_ms = self.start.elapsed().as_millis() as u32;
            self.ingest_desktop(slot, n);
            self.close_pending();
            if n >= budget {
                return true;
            }
            budget -= n;
        }
    }

    /// Decode the `n` bytes in the scratch buffer (after any partial frame of this desktop).
    fn ingest_desktop(&mut self, slot: usize, n: usize) {
        let max_frame = self.limits.max_frame as usize;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let own = c.d.rbuf.take();
        let from_arena = own.is_none();
        let mut buf = match own {
            Some(b) => b,
            None => {
                let mut a = std::mem::take(&mut self.arena);
                if a.capacity() - a.len() < n {
                    a.reserve(n.max(64 * 1024));
                }
                a
            }
        };
        buf.extend_from_slice(&self.scratch[..n]);
        let mut dec = FrameDecoder::new(max_frame);
        let mut frames = std::mem::take(&mut self.frames);
        let mut lost = None;
        loop {
            // Call the decoder only for a complete frame (or a bad head): on a partial one it
            // would reserve the whole announced frame, and a peer trickling 32-byte heads that
            // announce 2 MiB each could make the proxy hold 2 MiB per connection. Buffers grow
            // with the bytes actually received.
            match Head::parse(&buf) {
                Ok(None) => break,
                Ok(Some(h))
                    if HEAD_LEN + h.body_len as usize <= max_frame
                        && buf.len() < HEAD_LEN + h.body_len as usize =>
                {
                    break;
                }
                _ => {}
            }
            match dec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    lost = Some(e);
                    break;
                }
            }
        }
        if lost.is_some() {
            buf.clear();
        }
        if from_arena {
            if !buf.is_empty() {
                // A partial frame: give this desktop its own buffer, sized for the frame, so
                // the shared arena is not pinned by a slow sender.
                let want = Head::parse(&buf)
                    .ok()
                    .flatten()
                    .map_or(HEAD_LEN, |h| HEAD_LEN + h.body_len as usize);
                let mut mine = BytesMut::with_capacity(want.min(16 * 1024).max(buf.len()));
                mine.extend_from_slice(&buf);
                buf.clear();
                if let Some(c) = self.conns.get_mut(slot) {
                    c.d.rbuf = Some(mine);
                }
            }
            self.arena = buf;
        } else if !buf.is_empty()
            && let Some(c) = self.conns.get_mut(slot)
        {
            c.d.rbuf = Some(buf);
        }
        for f in frames.drain(..) {
            self.desktop_frame(slot, f);
        }
        self.frames = frames;
        if let Some(e) = lost {
            // PROTOCOL.md §2: before closing for any framing loss, send a control error.
            let sid = self.conns.get(slot).map_or(0, |c| c.d.sid);
            let code = e.code();
            self.metrics.error(code.name());
            let f = control_error(sid, code, &e.to_string());
            self.push_desktop(slot, f.freeze());
            self.to_close.push((slot, "framing"));
        }
    }

    fn push_desktop(&mut self, slot: usize, b: Bytes) {
        let now = self.now_ms();
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if !push_to(c, b, &self.limits, now, &mut self.dirty_desktops, slot) {
            self.slow_consumer(slot);
        }
    }

    fn slow_consumer(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.d.phase == Phase::Closing {
            return;
        }
        self.metrics.error("slow_consumer");
        let f = control_error(
            c.d.sid,
            ErrorCode::SLOW_CONSUMER,
            "outbound queue overflow: disconnected",
        );
        // The queue is dropped (the desktop is disconnected anyway), except a frame already
        // partly written, which must be finished for the error to be readable after it.
        let keep = if c.d.out.off > 0 { 1 } else { 0 };
        c.d.out.q.truncate(keep);
        c.d.out.bytes = c.d.out.q.iter().map(Bytes::len).sum();
        let e = f.freeze();
        c.d.out.bytes += e.len();
        c.d.out.q.push_back(e);
        self.to_close.push((slot, "slow_consumer"));
    }

    fn reply_error(&mut self, slot: usize, h: &Head, code: ErrorCode, m: &str) {
        self.metrics.error(code.name());
        let f = error_response(h, code, m);
        self.push_desktop(slot, f.freeze());
    }

    fn desktop_frame(&mut self, slot: usize, mut f: Frame) {
        let h = *f.head();
        let Some(c) = self.conns.get(slot) else {
            return;
        };
        if c.d.phase == Phase::Closing {
            return;
        }
        let draining = self.drain_deadline.is_some();
        let router = &self.router;
        let action =
            c.d.classify(&h, &self.limits, draining, |s| router.routable(s));
        let sid = c.d.sid;
        let tenant = c.d.tenant;
        match action {
            Action::Ignore => {}
            Action::Heartbeat => {
                let mut r = h;
                r.kind = Kind::Response;
                r.flags = Flags::default();
                self.push_desktop(slot, empty_frame(r).freeze());
            }
            Action::Hello => self.hello(slot, &f),
            Action::Reject(code, m) => self.reply_error(slot, &h, code, m),
            Action::ControlError(code, m) => {
                self.metrics.error(code.name());
                self.push_desktop(slot, control_error(sid, code, m).freeze());
            }
            Action::Leave => self.to_close.push((slot, "desktop_left")),
            Action::Forward(b) => {
                self.count_request(h.service);
                if self.router.partitions.is_empty() && self.router.capability.is_empty() {
                    self.forward(slot, b, f, Owner::Desktop { session: sid }, false);
                    return;
                }
                let b = match self.partition_binding(slot, &f, b) {
                    Ok(b) => b,
                    Err((code, m)) => {
                        self.reply_error(slot, &h, code, m);
                        return;
                    }
                };
                let (b, reroute) = match self.capability_binding(slot, &f, b) {
                    Ok(x) => x,
                    Err((code, m)) => {
                        self.reply_error(slot, &h, code, m);
                        return;
                    }
                };
                self.forward(slot, b, f, Owner::Desktop { session: sid }, reroute);
            }
            Action::Subscribe(b) => {
                self.count_request(h.service);
                let topic = f
                    .body()
                    .opt_str(msg::key::TOPIC)
                    .ok()
                    .flatten()
                    .map(Box::<str>::from);
                let Some(topic) = topic else {
                    // Let the server answer MALFORMED.
                    self.forward(slot, b, f, Owner::Desktop { session: sid }, false);
                    return;
                };
                if !self.link_ok(b) {
                    self.reply_error(slot, &h, ErrorCode::LINK_LOST_UNSENT, "upstream link lost");
                    return;
                }
                match self
                    .fanout
                    .subscribe(b.link, tenant, &topic, sid, h.correlation)
                {
                    SubscribeOutcome::Local { id, seq, sub } => {
                        self.remember_sub(slot, sub);
                        let mut r = h;
                        r.kind = Kind::Response;
                        r.flags = Flags::default();
                        r.session = sid;
                        let built = Frame::build(r, |w| {
                            w.int(msg::key::SUBSCRIPTION, id as i64);
                            w.int(msg::key::SEQ, seq);
                            Ok(())
                        });
                        if let Ok(fr) = built {
                            self.push_desktop(slot, fr.freeze());
                        }
                    }
                    SubscribeOutcome::Wait { sub } => self.remember_sub(slot, sub),
                    SubscribeOutcome::Forward { sub } => {
                        self.remember_sub(slot, sub);
                        f.set_session(sid);
                        self.forward_raw(b.link as usize, f, Owner::Subscribe { sub }, h);
                    }
                }
            }
            Action::Unsubscribe(b) => {
                self.count_request(h.service);
                let topic = f
                    .body()
                    .opt_str(msg::key::TOPIC)
                    .ok()
                    .flatten()
                    .map(Box::<str>::from);
                if let Some(topic) = topic
                    && let Some(sub) = self.fanout.find(b.link, tenant, &topic)
                {
                    if let Some(c) = self.conns.get_mut(slot) {
                        c.d.subs.retain(|s| *s != sub);
                    }
                    if let Some(Some(up)) = self.fanout.leave(sub, sid)
                        && up != 0
                        && self.link_ok(b)
                    {
                        // The last local subscriber left: drop the upstream subscription.
                        f.set_session(sid);
                        self.forward_raw(b.link as usize, f, Owner::Internal, h);
                    }
                }
                // Answered locally: the upstream subscription is shared by other desktops.
                let mut r = h;
                r.kind = Kind::Response;
                r.flags = Flags::default();
                r.session = sid;
                self.push_desktop(slot, empty_frame(r).freeze());
            }
        }
    }

    /// For a partitioned service, the binding to the instance owning the request's key (read
    /// lazily from the body field named by `partition_key`); otherwise `b` unchanged.
    fn partition_binding(
        &self,
        slot: usize,
        f: &Frame,
        b: Binding,
    ) -> Result<Binding, (ErrorCode, &'static str)> {
        let Some(p) = self.router.partitions.get(&b.service) else {
            return Ok(b);
        };
        let key = match f.body().get(&p.key) {
            Ok(Some(deskmux_codec::Value::Str(k))) => k,
            Ok(_) => return Err((ErrorCode::MALFORMED, "missing partition key (str)")),
            Err(_) => return Err((ErrorCode::MALFORMED, "bad body")),
        };
        let Some(owner) = p.table.lookup(key) else {
            return Err((
                ErrorCode::MALFORMED,
                "partition key outside every partition",
            ));
        };
        let Some(c) = self.conns.get(slot) else {
            return Err((ErrorCode::UNAVAILABLE, "gone"));
        };
        c.d.bindings
            .iter()
            .copied()
            .find(|x| {
                x.service == b.service && self.router.link_serves_owner(x.link as usize, owner)
            })
            .ok_or((
                ErrorCode::UNAVAILABLE,
                "the key's partition had no instance when the session opened",
            ))
    }

    /// For a capability-routed request (its type listed and its body naming a capability):
    /// round robin among the desktop's live bindings whose instance advertises it. Returns
    /// the binding and whether it was capability-routed.
    fn capability_binding(
        &mut self,
        slot: usize,
        f: &Frame,
        b: Binding,
    ) -> Result<(Binding, bool), (ErrorCode, &'static str)> {
        let Some(cr) = self.router.capability.get(&b.service) else {
            return Ok((b, false));
        };
        if !cr.types.contains(&f.head().msg_type) {
            return Ok((b, false));
        }
        let cap = match f.body().get(&cr.key) {
            Ok(Some(deskmux_codec::Value::Str(k))) => k,
            // No capability named: the session's alias (the server answers MALFORMED if it
            // needed one).
            _ => return Ok((b, false)),
        };
        let Some(c) = self.conns.get(slot) else {
            return Err((ErrorCode::UNAVAILABLE, "gone"));
        };
        let bound: Vec<usize> =
            c.d.bindings
                .iter()
                .filter(|x| x.service == b.service && self.link_ok(**x))
                .map(|x| x.link as usize)
                .collect();
        let links = &self.links;
        match self
            .router
            .pick_capable(b.service, cap, &bound, |l| links[l].up())
        {
            Ok(l) => {
                let nb =
                    c.d.bindings
                        .iter()
                        .copied()
                        .find(|x| x.service == b.service && x.link as usize == l)
                        .unwrap_or(b);
                Ok((nb, true))
            }
            Err(NoLink::NoRoute) => Err((ErrorCode::NO_ROUTE, "no instance has this capability")),
            Err(_) => Err((
                ErrorCode::UNAVAILABLE,
                "no running instance with this capability for this session",
            )),
        }
    }

    /// A capability-routed request that was never sent on a link that died: route it again
    /// (same bytes, a new link id) to another instance with the capability on which the
    /// desktop has a live session. False if there is none (the caller answers the error).
    fn resubmit(&mut self, p: &Pending, bytes: &Bytes) -> bool {
        let Owner::Desktop { session } = p.owner else {
            return false;
        };
        let slot = slot_of(session);
        let Some(c) = self.conns.get(slot) else {
            return false;
        };
        if c.d.sid != session || c.d.phase != Phase::Open || bytes.len() < HEAD_LEN {
            return false;
        }
        let service = p.req.service.to_u8();
        let Some(cr) = self.router.capability.get(&service) else {
            return false;
        };
        let body = deskmux_codec::BodyRef::new(&bytes[HEAD_LEN..]);
        let Ok(Some(deskmux_codec::Value::Str(cap))) = body.get(&cr.key) else {
            return false;
        };
        let bound: Vec<usize> =
            c.d.bindings
                .iter()
                .filter(|x| x.service == service && self.link_ok(**x))
                .map(|x| x.link as usize)
                .collect();
        let links = &self.links;
        let Ok(l) = self
            .router
            .pick_capable(service, cap, &bound, |l| links[l].up())
        else {
            return false;
        };
        let id = self.links[l].ids.insert(Pending {
            sent: false,
            started: p.started,
            ..*p
        });
        self.in_flight += 1;
        self.metrics.in_flight.inc();
        self.metrics.error("resubmitted_unsent");
        let mut b = BytesMut::from(&bytes[..]);
        deskmux_codec::head::restamp_correlation(&mut b, id);
        self.push_link(l, b.freeze(), id);
        true
    }

    fn count_request(&self, s: Service) {
        let i = match s {
            Service::Interaction => 0,
            Service::Ucs => 1,
            _ => 2,
        };
        // Cached handles: no label allocation on the hot path.
        self.request_counters[i].inc();
    }

    fn remember_sub(&mut self, slot: usize, sub: u32) {
        if let Some(c) = self.conns.get_mut(slot)
            && !c.d.subs.contains(&sub)
        {
            c.d.subs.push(sub);
        }
        self.status
            .subscriptions
            .store(self.fanout.len() as u64, Ordering::Relaxed);
    }

    fn link_ok(&self, b: Binding) -> bool {
        let l = &self.links[b.link as usize];
        l.state == LinkState::Up && l.generation == b.link_gen
    }

    /// Forward a desktop request on its binding's link.
    fn forward(&mut self, slot: usize, b: Binding, mut f: Frame, owner: Owner, reroute: bool) {
        let h = *f.head();
        if !self.link_ok(b) {
            self.reply_error(slot, &h, ErrorCode::LINK_LOST_UNSENT, "upstream link lost");
            return;
        }
        let l = b.link as usize;
        if self.links[l].out.bytes > self.limits.link_queue_bytes {
            self.reply_error(slot, &h, ErrorCode::OVERLOADED, "upstream link queue full");
            return;
        }
        if h.body_len as usize + HEAD_LEN > self.links[l].max_frame {
            self.reply_error(
                slot,
                &h,
                ErrorCode::FRAME_TOO_LARGE,
                "frame over the server's maximum",
            );
            return;
        }
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        c.d.in_flight += 1;
        f.set_session(c.d.sid);
        self.forward_raw_with(l, f, owner, h, reroute);
    }

    /// Record `f` (whose original head is `orig`) in the link's id slab, restamp and queue it.
    fn forward_raw(&mut self, l: usize, f: Frame, owner: Owner, orig: Head) {
        self.forward_raw_with(l, f, owner, orig, false);
    }

    fn forward_raw_with(
        &mut self,
        l: usize,
        mut f: Frame,
        owner: Owner,
        orig: Head,
        reroute: bool,
    ) {
        let id = self.links[l].ids.insert(Pending {
            owner,
            req: orig,
            sent: false,
            started: Instant::now(),
            reroute,
        });
        self.in_flight += 1;
        self.metrics.in_flight.inc();
        f.set_correlation(id);
        self.push_link(l, f.freeze(), id);
    }

    fn push_link(&mut self, l: usize, b: Bytes, id: u64) {
        let link = &mut self.links[l];
        link.out.bytes += b.len();
        link.out.q.push_back(b);
        link.out_ids.push_back(id);
        link.last_tx = Instant::now();
        if !link.dirty {
            link.dirty = true;
            self.dirty_links.push(l);
        }
    }

    // ---------------------------------------------------------------- hello

    fn hello(&mut self, slot: usize, f: &Frame) {
        let h = *f.head();
        let Ok(hello) = DesktopHello::read(f.body()) else {
            self.reply_error(slot, &h, ErrorCode::MALFORMED, "bad hello body");
            return;
        };
        let Some(c) = self.conns.get(slot) else {
            return;
        };
        let sid = c.d.sid;
        // Services wanted that have a route; a hello asking for none routable is refused.
        let mut chosen: Vec<(u8, usize)> = Vec::new();
        let mut refused: Option<(ErrorCode, &'static str)> = None;
        for s in 1..64u8 {
            if hello.services & (1u64 << s) == 0 || !self.router.routable(s) {
                continue;
            }
            let prefer: Vec<usize> = chosen.iter().map(|(_, l)| *l).collect();
            let links = &self.links;
            let partitioned = self.router.partitions.contains_key(&s);
            if partitioned || self.router.capability.contains_key(&s) {
                let up = |l: usize| links[l].up();
                let load = |l: usize| links[l].ids.len();
                let picked = if partitioned {
                    self.router.pick_partitioned(s, &prefer, up, load)
                } else {
                    self.router.pick_all(s, &prefer, up, load)
                };
                match picked {
                    Ok(ls) => chosen.extend(ls.into_iter().map(|l| (s, l))),
                    Err(NoLink::NotAccepting) => {
                        refused = Some((
                            ErrorCode::SERVICE_UNAVAILABLE,
                            "the service's servers take no new sessions",
                        ));
                    }
                    Err(_) => {
                        refused = Some((ErrorCode::UNAVAILABLE, "no upstream instance available"));
                    }
                }
                continue;
            }
            match self.router.pick(
                s,
                h.tenant,
                &prefer,
                |l| links[l].up(),
                |l| links[l].ids.len(),
            ) {
                Ok(l) => chosen.push((s, l)),
                Err(NoLink::NotAccepting) => {
                    refused = Some((
                        ErrorCode::SERVICE_UNAVAILABLE,
                        "the service's servers take no new sessions",
                    ));
                }
                Err(_) => {
                    refused = Some((ErrorCode::UNAVAILABLE, "no upstream instance available"));
                }
            }
        }
        if refused.is_some() || chosen.is_empty() {
            let (code, m) =
                refused.unwrap_or((ErrorCode::NO_ROUTE, "no route for the requested services"));
            self.reply_error(slot, &h, code, m);
            self.to_close.push((slot, "hello_refused"));
            return;
        }
        let mut opened: Vec<usize> = Vec::new();
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        c.d.tenant = h.tenant;
        c.d.phase = Phase::Opening;
        let mut full = false;
        for (s, l) in &chosen {
            let known =
                c.d.bindings
                    .iter()
                    .any(|b| b.service == *s && b.link as usize == *l);
            if !known {
                full |= !c.d.bind(Binding {
                    service: *s,
                    link: *l as u16,
                    link_gen: self.links[*l].generation,
                });
            }
            if !opened.contains(l) {
                opened.push(*l);
            }
        }
        if full {
            // Only possible with partitioned services beyond the validated limits.
            self.reply_error(
                slot,
                &h,
                ErrorCode::UNAVAILABLE,
                "too many upstream sessions",
            );
            self.to_close.push((slot, "hello_refused"));
            return;
        }
        c.d.pending_opens = opened.len() as u8;
        for l in opened {
            let mut oh = Head::new(Kind::Request, Service::Control, msg::control::SESSION_OPEN);
            oh.tenant = h.tenant;
            oh.session = sid;
            if let Ok(of) = Frame::with_body(oh, f.body_bytes()) {
                self.forward_raw(l, of, Owner::Open { session: sid }, h);
            }
        }
    }

    /// A `SESSION_OPEN` answer (`code` = None on success) for desktop `sid`.
    fn open_answer(&mut self, l: usize, sid: u64, req: Head, code: Option<ErrorCode>) {
        let slot = slot_of(sid);
        let live = self
            .conns
            .get(slot)
            .is_some_and(|c| c.d.sid == sid && c.d.phase == Phase::Opening);
        if !live {
            if code.is_none() && self.links[l].state == LinkState::Up {
                // The desktop left meanwhile: close the session it no longer needs.
                let mut h = Head::new(Kind::Control, Service::Control, msg::control::SESSION_CLOSE);
                h.tenant = req.tenant;
                h.session = sid;
                self.push_link(l, empty_frame(h).freeze(), 0);
            }
            return;
        }
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        c.d.pending_opens = c.d.pending_opens.saturating_sub(1);
        if let Some(code) = code
            && c.d.open_error == 0
        {
            c.d.open_error = code.0;
        }
        if c.d.pending_opens > 0 {
            return;
        }
        if c.d.open_error != 0 {
            let code = ErrorCode(c.d.open_error);
            // Close the sessions that did open (close_desktop sends SESSION_CLOSE on each).
            self.reply_error(slot, &req, code, "session refused upstream");
            self.to_close.push((slot, "hello_refused"));
            return;
        }
        c.d.phase = Phase::Open;
        self.metrics.sessions.inc();
        let mut r = req;
        r.kind = Kind::Response;
        r.flags = Flags::default();
        r.session = sid;
        let sh = ServerHello {
            session: sid,
            max_frame: self.limits.max_frame,
            heartbeat_ms: self.limits.heartbeat_ms,
            max_in_flight: self.limits.max_in_flight,
        };
        if let Ok(fr) = Frame::build(r, |w| sh.write(w)) {
            self.push_desktop(slot, fr.freeze());
        }
    }

    // ---------------------------------------------------------------- links

    fn link_event(&mut self, i: usize, readable: bool, writable: bool) {
        if i >= self.links.len() {
            return;
        }
        if let LinkState::Connecting { .. } = self.links[i].state {
            if !writable && !readable {
                return;
            }
            let ok = match self.links[i].sock.as_ref() {
                Some(s) => match s.take_error() {
                    Ok(None) => s.peer_addr().is_ok(),
                    _ => false,
                },
                None => false,
            };
            if !ok {
                // Still connecting (spurious event) or refused.
                let refused = self.links[i]
                    .sock
                    .as_ref()
                    .is_none_or(|s| s.peer_addr().is_err() && (readable || writable));
                if refused {
                    self.fail_link(i, "connect failed");
                }
                return;
            }
            let link = &mut self.links[i];
            link.state = LinkState::Handshaking {
                since: Instant::now(),
            };
            let hello = LinkHello {
                version: 1,
                link: &link.name,
                secret: self.cfg.link_secret.as_bytes(),
            };
            let mut h = Head::new(Kind::Request, Service::Control, msg::control::LINK_HELLO);
            h.correlation = 1;
            if let Ok(f) = Frame::build(h, |w| hello.write(w)) {
                self.push_link(i, f.freeze(), 0);
            }
            return;
        }
        if writable && !self.links[i].dirty {
            self.links[i].dirty = true;
            self.dirty_links.push(i);
        }
        if readable {
            self.read_link(i);
        }
    }

    fn read_link(&mut self, i: usize) {
        loop {
            let link = &mut self.links[i];
            let Some(sock) = link.sock.as_mut() else {
                return;
            };
            let n = match sock.read(&mut self.scratch) {
                Ok(0) => {
                    self.fail_link(i, "closed by server");
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.fail_link(i, "read error");
                    return;
                }
            };
            link.last_rx = Instant::now();
            link.rbuf.extend_from_slice(&self.scratch[..n]);
            let mut dec = FrameDecoder::new(link.max_frame.max(16 * 1024 * 1024));
            let mut frames = Vec::new();
            loop {
                match dec.decode(&mut link.rbuf) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        warn!(link = %link.name, error = %e, "framing lost on link");
                        for f in frames {
                            self.link_frame(i, f);
                        }
                        self.fail_link(i, "framing lost");
                        return;
                    }
                }
            }
            let generation = self.links[i].generation;
            for f in frames {
                // A frame may have failed the link (e.g. a bad hello ack): stop there.
                if self.links[i].generation != generation {
                    break;
                }
                self.link_frame(i, f);
            }
            self.close_pending();
        }
    }

    fn link_frame(&mut self, i: usize, f: Frame) {
        let h = *f.head();
        if let LinkState::Handshaking { .. } = self.links[i].state {
            if h.kind == Kind::Response && h.msg_type == msg::control::LINK_HELLO {
                if let Some((code, m)) = f.error() {
                    warn!(link = %self.links[i].name, %code, m, "link hello refused");
                    self.fail_link(i, "link hello refused");
                    return;
                }
                let ack = LinkHelloAck::read(f.body());
                let link = &mut self.links[i];
                match ack {
                    Ok(a) => {
                        link.heartbeat = Duration::from_millis(u64::from(a.heartbeat_ms.max(100)));
                        link.max_frame = a.max_frame as usize;
                        link.state = LinkState::Up;
                        link.failures = 0;
                        link.draining = false;
                        let inst = link.instance;
                        info!(link = %link.name, instance = a.state.instance, "link up");
                        self.set_instance_state(inst, a.state);
                        self.update_links_up();
                    }
                    Err(_) => self.fail_link(i, "bad link hello ack"),
                }
            }
            return;
        }
        match h.kind {
            Kind::Response => self.link_response(i, f),
            Kind::Event => self.link_event_frame(i, f),
            Kind::Control => self.link_control(i, &f),
            Kind::Request
                if h.service == Service::Control && h.msg_type == msg::control::HEARTBEAT =>
            {
                let mut r = h;
                r.kind = Kind::Response;
                self.push_link(i, empty_frame(r).freeze(), 0);
            }
            _ => debug!(link = %self.links[i].name, ?h, "unexpected frame on link"),
        }
    }

    fn link_response(&mut self, i: usize, mut f: Frame) {
        let h = *f.head();
        let Some(p) = self.links[i].ids.take(h.correlation) else {
            // Stale: its request already failed or timed out.
            return;
        };
        self.in_flight -= 1;
        self.metrics.in_flight.dec();
        match p.owner {
            Owner::Internal => {}
            Owner::Open { session } => {
                let code = f.error().map(|(c, _)| c);
                self.open_answer(i, session, p.req, code);
            }
            Owner::Desktop { session } => {
                self.metrics
                    .latency
                    .observe(p.started.elapsed().as_secs_f64());
                if let Some((code, _)) = f.error() {
                    self.metrics.error(code.name());
                }
                let slot = slot_of(session);
                if let Some(c) = self.conns.get_mut(slot)
                    && c.d.sid == session
                {
                    c.d.in_flight = c.d.in_flight.saturating_sub(1);
                    f.set_correlation(p.req.correlation);
                    self.push_desktop(slot, f.freeze());
                }
            }
            Owner::Subscribe { sub } => {
                let ok = if f.error().is_some() {
                    None
                } else {
                    let b = f.body();
                    match (b.int(msg::key::SUBSCRIPTION), b.opt_int(msg::key::SEQ)) {
                        (Ok(id), Ok(seq)) => Some((id as u64, seq.unwrap_or(0))),
                        _ => None,
                    }
                };
                let waiting = self.fanout.answered(sub, ok);
                let bytes = f.as_bytes().to_vec();
                for (sid, corr) in waiting {
                    let slot = slot_of(sid);
                    let live = self.conns.get(slot).is_some_and(|c| c.d.sid == sid);
                    if !live {
                        continue;
                    }
                    if ok.is_none()
                        && let Some(c) = self.conns.get_mut(slot)
                    {
                        c.d.subs.retain(|s| *s != sub);
                    }
                    // Each waiting desktop gets the answer with its own id (a small copy).
                    let mut b = BytesMut::from(&bytes[..]);
                    deskmux_codec::head::restamp_correlation(&mut b, corr);
                    deskmux_codec::head::restamp_session(&mut b, sid);
                    self.push_desktop(slot, b.freeze());
                }
                self.status
                    .subscriptions
                    .store(self.fanout.len() as u64, Ordering::Relaxed);
            }
        }
    }

    fn link_event_frame(&mut self, i: usize, f: Frame) {
        let h = *f.head();
        if h.flags.has(Flags::BROADCAST) {
            let seq = f.body().opt_int(msg::key::SEQ).ok().flatten();
            let Some(sub) = self.fanout.event(i as u16, h.correlation, seq) else {
                return;
            };
            // One encoded frame, shared by every subscriber.
            let bytes = f.freeze();
            let now = self.start.elapsed().as_millis() as u32;
            let mut n = 0u64;
            for sid in &sub.subscribers {
                let slot = slot_of(*sid);
                if let Some(c) = self.conns.get_mut(slot)
                    && c.d.sid == *sid
                {
                    n += 1;
                    if !push_to(
                        c,
                        bytes.clone(),
                        &self.limits,
                        now,
                        &mut self.dirty_desktops,
                        slot,
                    ) {
                        self.to_close.push((slot, "slow_consumer"));
                    }
                }
            }
            self.metrics.fanout_deliveries.inc_by(n);
            let overflowed: Vec<usize> = self
                .to_close
                .iter()
                .filter(|(_, r)| *r == "slow_consumer")
                .map(|(s, _)| *s)
                .collect();
            self.to_close.retain(|(_, r)| *r != "slow_consumer");
            for s in overflowed {
                self.slow_consumer(s);
            }
            return;
        }
        // Unicast: to the named session.
        let slot = slot_of(h.session);
        if self.conns.get(slot).is_some_and(|c| c.d.sid == h.session) {
            self.push_desktop(slot, f.freeze());
        }
    }

    fn link_control(&mut self, i: usize, f: &Frame) {
        let h = *f.head();
        match h.msg_type {
            msg::control::SESSION_CLOSE => {
                let slot = slot_of(h.session);
                if self.conns.get(slot).is_some_and(|c| c.d.sid == h.session) {
                    let mut ch =
                        Head::new(Kind::Control, Service::Control, msg::control::SESSION_CLOSE);
                    ch.session = h.session;
                    ch.tenant = h.tenant;
                    self.push_desktop(slot, empty_frame(ch).freeze());
                    self.to_close.push((slot, "closed_by_server"));
                }
            }
            msg::control::GO_AWAY => {
                info!(link = %self.links[i].name, "server sent GO_AWAY: no new sessions on this link");
                self.links[i].draining = true;
                self.update_links_up();
            }
            msg::control::SERVICE_STATE => {
                if let Ok(st) = ServiceState::read(f.body()) {
                    let inst = self.links[i].instance;
                    self.set_instance_state(inst, st);
                }
            }
            msg::control::ERROR => {
                if let Some((code, m)) = f.error() {
                    warn!(link = %self.links[i].name, %code, m, "error from server");
                }
            }
            _ => {}
        }
    }

    fn set_instance_state(&mut self, inst: usize, st: ServiceState<'_>) {
        if let Some(i) = self.router.instances.get_mut(inst) {
            let (running, primary) = (
                st.state == msg::State::Running,
                st.role == msg::Role::Primary,
            );
            if (running, primary) != (i.running, i.primary) {
                info!(instance = %i.conf.name, running, primary, "instance state announced");
            }
            i.running = running;
            i.primary = primary;
        }
    }

    fn update_links_up(&mut self) {
        let up = self
            .links
            .iter()
            .filter(|l| l.state == LinkState::Up)
            .count();
        self.status.links_up.store(up as u64, Ordering::Relaxed);
        for inst in &self.router.instances {
            let n = inst
                .links
                .iter()
                .filter(|l| self.links[**l].state == LinkState::Up)
                .count();
            self.metrics
                .links_up
                .get_or_create(&[("instance", inst.conf.name.clone())])
                .set(n as i64);
        }
    }

    fn unsubscribe_upstream(&mut self, l: usize, tenant: u32, sid: u64, topic: &str) {
        if self.links[l].state != LinkState::Up {
            return;
        }
        let mut h = Head::new(Kind::Request, Service::Interaction, msg::ixn::UNSUBSCRIBE);
        h.tenant = tenant;
        h.session = sid;
        if let Ok(f) = Frame::build(h, |w| {
            w.str(msg::key::TOPIC, topic)?;
            Ok(())
        }) {
            self.forward_raw(l, f, Owner::Internal, h);
        }
    }

    /// The link died: answer everything in flight on it, disconnect its desktops, schedule a
    /// reconnect with backoff and jitter.
    fn fail_link(&mut self, i: usize, why: &'static str) {
        let now = Instant::now();
        let link = &mut self.links[i];
        if let Some(mut s) = link.sock.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        let was_up = link.state == LinkState::Up;
        link.failures = link.failures.saturating_add(1);
        let base = u64::from(self.limits.link_backoff_min_ms)
            .saturating_mul(1u64 << link.failures.min(16).saturating_sub(1))
            .min(u64::from(self.limits.link_backoff_max_ms));
        // ±50 % jitter so that many workers do not reconnect in lockstep.
        let jittered = base / 2 + fastrand::u64(0..=base);
        link.state = LinkState::Down {
            retry_at: now + Duration::from_millis(jittered),
        };
        warn!(link = %link.name, why, retry_ms = jittered, "link down");
        let dead_gen = link.generation;
        link.generation = link.generation.wrapping_add(1).max(1);
        // Frames never (completely) written, by link id: capability-routed ones among them
        // may be resubmitted elsewhere.
        let unsent: std::collections::HashMap<u64, Bytes> = link
            .out_ids
            .iter()
            .copied()
            .zip(link.out.q.iter().cloned())
            .filter(|(id, _)| *id != 0)
            .collect();
        link.out = OutQueue::default();
        link.out_ids.clear();
        link.rbuf = BytesMut::new();
        link.draining = false;
        let failed = link.ids.fail_all();
        self.update_links_up();
        // 1. Every request in flight gets its explicit error.
        for (id, p, code) in failed {
            if p.reroute
                && code == ErrorCode::LINK_LOST_UNSENT
                && let Some(bytes) = unsent.get(&id)
                && self.resubmit(&p, bytes)
            {
                self.in_flight -= 1;
                self.metrics.in_flight.dec();
                continue;
            }
            self.answer_pending(i, p, code, "upstream link lost");
        }
        let waiting = self.fanout.drop_link(i as u16);
        self.fail_waiting(waiting, ErrorCode::LINK_LOST_UNSENT);
        self.status
            .subscriptions
            .store(self.fanout.len() as u64, Ordering::Relaxed);
        // 2. Desktops whose session lived on this link lost it: tell them and disconnect.
        if was_up {
            let victims: Vec<(usize, u64)> = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    c.d.phase == Phase::Open
                        && c.d.links().any(|(l, g)| l as usize == i && g == dead_gen)
                })
                .map(|(s, c)| (s, c.d.sid))
                .collect();
            for (slot, sid) in victims {
                // The connection stays: later requests to the lost service get
                // LINK_LOST_UNSENT (the binding's link generation no longer matches), so every
                // request the desktop sends is still answered; the client reconnects.
                self.metrics.error("link_lost");
                let f = control_error(
                    sid,
                    ErrorCode::LINK_LOST,
                    "upstream session lost; reconnect",
                );
                self.push_desktop(slot, f.freeze());
            }
        }
        self.close_pending();
    }

    fn fail_waiting(&mut self, waiting: Vec<(u64, u64)>, code: ErrorCode) {
        for (sid, corr) in waiting {
            let slot = slot_of(sid);
            if let Some(c) = self.conns.get_mut(slot)
                && c.d.sid == sid
            {
                let mut h = Head::new(Kind::Request, Service::Interaction, msg::ixn::SUBSCRIBE);
                h.tenant = c.d.tenant;
                h.correlation = corr;
                h.session = sid;
                self.reply_error(slot, &h, code, "upstream link lost");
            }
        }
    }

    fn connect_link(&mut self, i: usize) {
        let link = &mut self.links[i];
        self.metrics.link_connects.inc();
        match connect_upstream(link.addr) {
            Ok(mut s) => {
                if self
                    .poll
                    .registry()
                    .register(
                        &mut s,
                        Token(LINK_BASE + i),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_err()
                {
                    self.fail_link(i, "register failed");
                    return;
                }
                link.sock = Some(s);
                link.state = LinkState::Connecting {
                    since: Instant::now(),
                };
                link.last_rx = Instant::now();
                link.last_tx = Instant::now();
            }
            Err(_) => self.fail_link(i, "connect failed"),
        }
    }

    // ---------------------------------------------------------------- writes

    fn flush_all(&mut self) {
        self.close_pending();
        let links = std::mem::take(&mut self.dirty_links);
        for i in links {
            self.links[i].dirty = false;
            self.flush_link(i);
        }
        let desks = std::mem::take(&mut self.dirty_desktops);
        for slot in desks {
            if let Some(c) = self.conns.get_mut(slot) {
                c.dirty = false;
                self.flush_desktop(slot);
            }
        }
        // Links may have been dirtied again by desktops closing (SESSION_CLOSE).
        let links = std::mem::take(&mut self.dirty_links);
        for i in links {
            self.links[i].dirty = false;
            self.flush_link(i);
        }
    }

    fn flush_desktop(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let mut broken = false;
        let mut blocked = false;
        while !c.d.out.is_empty() {
            match write_queue(&mut c.sock, &c.d.out) {
                Ok(n) => {
                    c.d.out.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        // Bytes a connection buffers below the frame queue (TLS records) go out here, also
        // on a writable edge with an empty queue; a plain socket's flush is a no-op.
        if !broken && !blocked {
            match c.sock.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => blocked = true,
                Err(_) => broken = true,
            }
        }
        let closing = c.d.phase == Phase::Closing;
        if broken {
            self.close_desktop(slot, "io_error");
            self.remove_desktop(slot);
        } else if closing && c.d.out.is_empty() && !blocked {
            self.remove_desktop(slot);
        }
    }

    fn flush_link(&mut self, i: usize) {
        let link = &mut self.links[i];
        if matches!(
            link.state,
            LinkState::Connecting { .. } | LinkState::Down { .. }
        ) {
            return;
        }
        let Some(sock) = link.sock.as_mut() else {
            return;
        };
        let mut broken = false;
        while !link.out.is_empty() {
            match write_queue(sock, &link.out) {
                Ok(n) => {
                    let done = link.out.consume(n);
                    for _ in 0..done {
                        if let Some(id) = link.out_ids.pop_front()
                            && id != 0
                        {
                            link.ids.mark_sent(id);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        link.queue_gauge.set(link.out.bytes as i64);
        if broken {
            self.fail_link(i, "write error");
        }
    }

    // ---------------------------------------------------------------- timers

    fn tick(&mut self) {
        // An accept that failed (EMFILE) left connections in the backlog; the listener is
        // edge-triggered, so retry once per tick rather than wait for the next connection.
        self.accept();
        let now = Instant::now();
        let now_ms = self.now_ms();
        if self.signals.hup.swap(false, Ordering::Relaxed) {
            self.reload_config();
        }
        if self.signals.term.swap(false, Ordering::Relaxed) && self.drain_deadline.is_none() {
            self.start_drain();
        }
        // Links: reconnect, handshake deadline, heartbeats, idle detection, request timeouts.
        for i in 0..self.links.len() {
            match self.links[i].state {
                LinkState::Down { retry_at } => {
                    if now >= retry_at && !self.links[i].retired && self.drain_deadline.is_none() {
                        self.connect_link(i);
                    }
                }
                LinkState::Connecting { since } | LinkState::Handshaking { since } => {
                    if now.duration_since(since) > LINK_HANDSHAKE {
                        self.fail_link(i, "link handshake timeout");
                    }
                }
                LinkState::Up => {
                    let mut hb = self.links[i].heartbeat;
                    // With a proxy-side interval, also probe a link that sends but hears
                    // nothing, so a hung server is detected while requests keep flowing.
                    let mut probe = false;
                    if self.limits.link_heartbeat_ms > 0 {
                        hb = hb.min(Duration::from_millis(u64::from(
                            self.limits.link_heartbeat_ms.max(20),
                        )));
                        probe = now.duration_since(self.links[i].last_rx) >= hb;
                    }
                    if now.duration_since(self.links[i].last_rx) > hb * 3 {
                        self.fail_link(i, "link silent for 3 heartbeats");
                        continue;
                    }
                    if probe || now.duration_since(self.links[i].last_tx) >= hb {
                        let h = Head::new(Kind::Request, Service::Control, msg::control::HEARTBEAT);
                        self.forward_raw(i, empty_frame(h), Owner::Internal, h);
                    }
                    let timeout = Duration::from_millis(u64::from(self.limits.request_timeout_ms));
                    let expired = self.links[i].ids.expired(now, timeout);
                    for id in expired {
                        self.timeout_request(i, id);
                    }
                }
            }
        }
        // Desktops: handshake deadline (whole hello), idle timeout, heartbeats, close flush.
        let mut deadline = Vec::new();
        let mut beat = Vec::new();
        let mut gone = Vec::new();
        let mut per_inst = vec![(0u64, 0u64); self.router.instances.len()];
        for (slot, c) in &self.conns {
            if matches!(c.d.phase, Phase::Open | Phase::Opening) {
                for b in c.d.bindings.iter().filter(|b| b.service != 0) {
                    let l = &self.links[b.link as usize];
                    if l.generation == b.link_gen
                        && let Some(e) = per_inst.get_mut(l.instance)
                    {
                        e.1 += 1;
                    }
                }
                for (link, g) in c.d.links() {
                    let l = &self.links[link as usize];
                    if l.generation == g
                        && let Some(e) = per_inst.get_mut(l.instance)
                    {
                        e.0 += 1;
                    }
                }
            }
            match c
                .d
                .timer(now_ms, &self.limits, CLOSE_FLUSH.as_millis() as u32)
            {
                Timer::None => {}
                Timer::Deadline(m) => deadline.push((slot, c.d.sid, m)),
                Timer::Heartbeat => beat.push(slot),
                Timer::Drop => gone.push(slot),
            }
        }
        for (slot, sid, m) in deadline {
            self.metrics.error("deadline");
            self.push_desktop(slot, control_error(sid, ErrorCode::DEADLINE, m).freeze());
            self.to_close.push((slot, "deadline"));
        }
        for slot in beat {
            let mut h = Head::new(Kind::Request, Service::Control, msg::control::HEARTBEAT);
            h.correlation = u64::MAX;
            self.push_desktop(slot, empty_frame(h).freeze());
        }
        for slot in gone {
            self.remove_desktop(slot);
        }
        self.close_pending();
        self.status
            .in_flight
            .store(self.in_flight, Ordering::Relaxed);
        for (i, (sessions, aliases)) in per_inst.into_iter().enumerate() {
            self.router.instances[i].sessions = sessions;
            self.router.instances[i].aliases = aliases;
        }
        self.admin_commands();
        self.publish_instances();
        if let Some(q) = &self.quic {
            let st = q.stats();
            for (what, v) in [
                ("retries", st.retries),
                ("refused", st.refused),
                ("accepted", st.accepted),
                ("failed", st.failed),
                ("desktops", q.desktops() as u64),
                ("handshaking", q.handshaking() as u64),
            ] {
                self.metrics
                    .quic
                    .get_or_create(&[("what", what.to_string())])
                    .set(v as i64);
            }
        }
    }

    /// Apply the operator commands queued by the admin thread.
    fn admin_commands(&mut self) {
        let cmds: Vec<AdminCommand> = match self.status.commands.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return,
        };
        for cmd in cmds {
            let (name, disable) = match &cmd {
                AdminCommand::Disable(n) => (n, true),
                AdminCommand::Enable(n) => (n, false),
            };
            if let Some(idx) = self.router.find(name) {
                let inst = &mut self.router.instances[idx];
                if inst.disabled != disable {
                    info!(instance = %name, disable, "operator command");
                }
                inst.disabled = disable;
            }
            self.status.commands_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publish every instance's state for `/status`.
    fn publish_instances(&mut self) {
        let links = &self.links;
        let up = |l: usize| links[l].state == LinkState::Up && !links[l].draining;
        let mut out = Vec::new();
        for (idx, inst) in self.router.instances.iter().enumerate() {
            if inst.retired && inst.sessions == 0 {
                continue;
            }
            let st = self.router.state(idx, up);
            let in_flight: usize = inst.links.iter().map(|l| links[*l].ids.len()).sum();
            let links_up = inst.links.iter().filter(|l| up(**l)).count();
            let label = [("instance", inst.conf.name.clone())];
            self.metrics
                .instance_sessions
                .get_or_create(&label)
                .set(inst.sessions as i64);
            self.metrics
                .instance_in_flight
                .get_or_create(&label)
                .set(in_flight as i64);
            self.metrics
                .instance_running
                .get_or_create(&label)
                .set(i64::from(st == crate::router::InstState::Running));
            out.push(serde_json::json!({
                "name": inst.conf.name,
                "addr": inst.conf.addr.to_string(),
                "cluster": inst.conf.cluster,
                "balance": inst.balance,
                "backup": inst.conf.backup,
                "backup_of": inst.backup_of.map(|p| self.router.instances[p].conf.name.clone()),
                "state": st.name(),
                "server_running": inst.running,
                "server_primary": inst.primary,
                "disabled": inst.disabled,
                "retired": inst.retired,
                "drained": st == crate::router::InstState::Drained,
                "sessions": inst.sessions,
                "aliases": inst.aliases,
                "in_flight": in_flight,
                "links_up": links_up,
                "links": inst.links.len(),
            }));
        }
        if let Ok(mut v) = self.status.instances.lock() {
            *v = serde_json::Value::Array(out);
        }
    }

    fn timeout_request(&mut self, l: usize, id: u64) {
        let Some(p) = self.links[l].ids.take(id) else {
            return;
        };
        self.answer_pending(l, p, ErrorCode::TIMEOUT, "no answer from upstream in time");
    }

    /// Answer a request taken out of link `l`'s id slab with the error `code`: the desktop
    /// that sent it, the session open waiting on it, or every desktop waiting on the
    /// subscription it carried. The one place that keeps "answered exactly once" for failures.
    fn answer_pending(&mut self, l: usize, p: Pending, code: ErrorCode, why: &str) {
        self.in_flight -= 1;
        self.metrics.in_flight.dec();
        match p.owner {
            Owner::Internal => {}
            Owner::Desktop { session } => {
                let slot = slot_of(session);
                if let Some(c) = self.conns.get_mut(slot)
                    && c.d.sid == session
                {
                    c.d.in_flight = c.d.in_flight.saturating_sub(1);
                    self.reply_error(slot, &p.req, code, why);
                }
            }
            Owner::Open { session } => {
                // A session open that never reached the server: the instance is unavailable
                // to this desktop (the hello may be retried elsewhere).
                let c = if code == ErrorCode::LINK_LOST_UNSENT {
                    ErrorCode::UNAVAILABLE
                } else {
                    code
                };
                self.open_answer(l, session, p.req, Some(c));
            }
            Owner::Subscribe { sub } => {
                let waiting = self.fanout.answered(sub, None);
                self.fail_waiting(waiting, code);
            }
        }
    }

    fn reload_config(&mut self) {
        let Some(mut new) = self.reload.as_ref().and_then(|f| f()) else {
            warn!("SIGHUP: configuration not reloaded (unreadable or invalid)");
            return;
        };
        info!("SIGHUP: reloading limits, upstreams and certificates");
        self.reload_certificates(&mut new);
        self.limits = new.limits.clone();
        // Upstreams: new ones are added; removed ones are retired (no new sessions; existing
        // desktops keep theirs). Unchanged ones are untouched: no desktop is dropped.
        for inst in &mut self.router.instances {
            let keep = new.upstream.contains(&inst.conf);
            if !keep && !inst.retired {
                inst.retired = true;
                for l in &inst.links {
                    self.links[*l].retired = true;
                }
            }
        }
        self.cfg = new.clone();
        for u in new.upstream.clone() {
            let exists = self
                .router
                .instances
                .iter()
                .any(|i| !i.retired && i.conf == u);
            if !exists {
                self.add_instance(u);
            }
        }
        for inst in &mut self.router.instances {
            inst.balance = new
                .clusters
                .get(&inst.conf.cluster)
                .map(|c| c.balance)
                .unwrap_or_default();
        }
        self.router.link_pairs();
        // Tenant routing: new sessions follow the new map; existing aliases stay.
        self.router.tenant_ucs = tenant_map(&new);
        self.router.set_partitions(&new);
        self.router.set_capabilities(&new);
        self.status.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// SIGHUP, `[tls]` and `[quic]`: load the certificate files `new` names and use them for
    /// connections accepted from now on (established ones keep their session). A section
    /// whose files cannot be used keeps its previous certificate. A section added or removed
    /// cannot be applied (listeners are set up when the worker starts): `new` gets the running
    /// section back, so `self.cfg` keeps describing what is served and the next SIGHUP
    /// compares against it again. Each section that fails is logged and counted; nothing here
    /// stops the worker.
    fn reload_certificates(&mut self, new: &mut Config) {
        let mut failed: Vec<CertReloadError> = Vec::new();
        let mut applied = 0u64;
        failed.extend(keep_running_section(
            "tls",
            self.cfg.tls.is_some(),
            &self.cfg.tls,
            &mut new.tls,
        ));
        if let Some(t) = &new.tls {
            match crate::tls::server_config(&t.cert, &t.key) {
                // Without a listener (draining) nothing new is accepted: nothing to swap.
                Ok(sc) => {
                    if self
                        .listener
                        .as_mut()
                        .is_some_and(|l| l.set_tls_config(Arc::new(sc)))
                    {
                        applied += 1;
                        info!(cert = %t.cert.display(), "SIGHUP: [tls] certificate reloaded");
                    }
                }
                Err(reason) => failed.push(CertReloadError::Load {
                    section: "tls",
                    reason,
                }),
            }
        }
        failed.extend(keep_running_section(
            "quic",
            self.quic.is_some(),
            &self.cfg.quic,
            &mut new.quic,
        ));
        if let Some(q) = self.quic.as_mut() {
            // `None` only if [quic] took its files from a [tls] section that was added and
            // not applied above: keep the running section, whose files are its own.
            let paths = new.quic_cert().or_else(|| {
                new.quic = self.cfg.quic.clone();
                new.quic_cert()
            });
            if let Some((cert, key)) = paths {
                match q.reload_certificate(&cert, &key) {
                    Ok(()) => {
                        applied += 1;
                        info!(cert = %cert.display(), "SIGHUP: [quic] certificate reloaded");
                    }
                    Err(e) => failed.push(e),
                }
            }
        }
        self.metrics.cert_reloads.inc_by(applied);
        self.status
            .cert_reloads
            .fetch_add(applied, Ordering::Relaxed);
        for e in failed {
            warn!(error = %e, "SIGHUP: certificate not reloaded");
            self.metrics.cert_reload_failures.inc();
            self.status
                .cert_reload_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start_drain(&mut self) {
        info!("SIGTERM: draining");
        self.status.draining.store(true, Ordering::Relaxed);
        self.drain_deadline =
            Some(Instant::now() + Duration::from_millis(u64::from(self.limits.drain_grace_ms)));
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(q) = self.quic.as_mut() {
            q.stop_accepting();
        }
        let g = msg::GoAway {
            reason: "proxy shutting down",
            reconnect_ms: self.limits.go_away_reconnect_ms,
        };
        let slots: Vec<(usize, u64)> = self.conns.iter().map(|(s, c)| (s, c.d.sid)).collect();
        for (slot, sid) in slots {
            let mut h = Head::new(Kind::Control, Service::Control, msg::control::GO_AWAY);
            h.session = sid;
            if let Ok(f) = Frame::build(h, |w| g.write(w)) {
                self.push_desktop(slot, f.freeze());
            }
        }
    }

    fn drain_done(&self) -> bool {
        match self.drain_deadline {
            None => false,
            // PROTOCOL.md §6: after GO_AWAY the sender refuses new requests (SHUTTING_DOWN),
            // answers what is in flight, then closes after its grace period. Done early only
            // once every desktop has left and nothing is in flight.
            Some(d) => (self.in_flight == 0 && self.conns.is_empty()) || Instant::now() >= d,
        }
    }

    /// Drain finished (or its grace ran out): answer what is left, close every desktop (which
    /// sends SESSION_CLOSE upstream), flush the links for a moment, and return.
    fn finish(&mut self) {
        for i in 0..self.links.len() {
            let ids: Vec<u64> = self.links[i]
                .ids
                .expired(Instant::now() + Duration::from_secs(3600), Duration::ZERO);
            for id in ids {
                self.timeout_request(i, id);
            }
        }
        let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
        for slot in slots {
            self.close_desktop(slot, "shutdown");
        }
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            self.flush_all();
            let pending = self
                .links
                .iter()
                .any(|l| !l.out.is_empty() && l.sock.is_some())
                || self.conns.iter().any(|(_, c)| !c.d.out.is_empty());
            if !pending {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            for (_, c) in &mut self.conns {
                c.dirty = false;
            }
            let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
            for s in slots {
                self.mark_dirty(s);
            }
            for i in 0..self.links.len() {
                if !self.links[i].dirty {
                    self.links[i].dirty = true;
                    self.dirty_links.push(i);
                }
            }
        }
        info!("drained; exiting");
    }
}

/// One vectored write of the queued frames (up to [`IOV`] of them).
fn write_queue<W: Write>(w: &mut W, q: &OutQueue) -> io::Result<usize> {
    let mut iov = [IoSlice::new(&[]); IOV];
    let mut n = 0;
    for (k, b) in q.q.iter().take(IOV).enumerate() {
        iov[k] = if k == 0 {
            IoSlice::new(&b[q.off..])
        } else {
            IoSlice::new(b)
        };
        n += 1;
    }
    w.write_vectored(&iov[..n])
}

/// The tenant → UCS instance map of a configuration.
fn tenant_map(c: &Config) -> std::collections::HashMap<u32, String> {
    c.tenant.iter().map(|t| (t.id, t.ucs.clone())).collect()
}

/// Error type re-export for `main`.
pub use crate::error::WorkerError as Error;

/// A `[tls]`/`[quic]` section added or removed by a reload cannot be applied (listeners are
/// set up when a worker starts): put the running section (`running`, served if `serving`)
/// back into the new configuration `new` and say why; `None` when the section is still
/// present, or still absent, as before.
fn keep_running_section<T: Clone>(
    section: &'static str,
    serving: bool,
    running: &Option<T>,
    new: &mut Option<T>,
) -> Option<CertReloadError> {
    match (serving, new.is_some()) {
        (false, true) => {
            *new = None;
            Some(CertReloadError::Added(section))
        }
        (true, false) => {
            new.clone_from(running);
            Some(CertReloadError::Removed(section))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_write_respects_offset() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello"), 10, 100).unwrap();
        q.push(Bytes::from_static(b"world"), 10, 100).unwrap();
        q.off = 2;
        let mut out = Vec::new();
        let n = write_queue(&mut out, &q).unwrap();
        // Vec's write_vectored writes every slice.
        assert_eq!(
            &out[..n],
            b"llo"
                .as_slice()
                .iter()
                .chain(b"world")
                .copied()
                .collect::<Vec<u8>>()
                .as_slice()
        );
    }

    #[test]
    fn slot_of_sid() {
        assert_eq!(slot_of((7 << 32) | 42), 42);
    }
}
