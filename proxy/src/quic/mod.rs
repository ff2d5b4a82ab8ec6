//! QUIC desktops: quinn-proto (sans-IO) driven from the worker's mio loop.
//!
//! - **Socket.** One non-blocking UDP socket per worker, bound with `SO_REUSEPORT` to the
//!   desktop port number (the same number as TCP). The kernel hashes each client's 4-tuple to
//!   one worker's socket, so a connection stays on the worker that accepted it, and N workers
//!   are N independent endpoint drivers (no single driver is the bottleneck). Datagrams are
//!   received in batches (`recvmmsg`) and sent in batches per destination (GSO): see
//!   [`udp`].
//! - **No file descriptor per desktop.** A QUIC desktop is a [`quinn_proto::Connection`] in
//!   this module's table plus a regular desktop slab entry whose "socket" is a [`QuicStream`]
//!   handle; it needs no fd, so QUIC desktops are capped by `quic.max_desktops`, not by the
//!   per-process fd limit that bounds `limits.max_desktops` (TCP).
//! - **Stream layout.** The desktop opens one bidirectional stream and speaks the framed
//!   protocol on it exactly as on TCP; responses *and events* come back on that same stream,
//!   in the order the proxy queued them. This keeps per-desktop ordering (a response is never
//!   overtaken by the event it caused, and `seq` gaps cannot appear from stream scheduling) and
//!   lets the session logic, queues and slow-consumer rules be shared with TCP unchanged. A
//!   second bidirectional stream is refused (`max_concurrent_bidi_streams = 1`); no
//!   unidirectional streams are allowed.
//! - **Bounds.** An Initial from an address that has not been validated gets a stateless
//!   Retry (no connection state exists until the client echoes the token); at most
//!   `quic.max_handshakes` connections may be handshaking at once, and at most
//!   `quic.max_handshakes_per_source` from one source address (more are refused with
//!   `CONNECTION_REFUSED`), so one address cannot take every handshake slot; the endpoint's
//!   buffer for not-yet-accepted Initials is bounded by quinn-proto. The idle timeout is 3 ×
//!   `limits.heartbeat_ms`, the TCP desktop idle rule, and the whole hello must still complete
//!   within `limits.handshake_ms` of the stream opening, exactly as for TCP.
//! - **Memory.** Connections live in a table indexed by quinn-proto's connection handle (a
//!   dense slab index), each boxed: an idle desktop costs its `Connection` and what it owns,
//!   not a hash map's slack times the `Connection`'s inline size. Transport settings are
//!   sized for a desktop ([`config`]); `benches/RESULTS.md` ("QUIC memory and CPU") has the
//!   breakdown of what is left.
//! - **Timers, lazily.** Each connection has at most a few entries in the timer heap: a new
//!   entry is pushed only when the connection's deadline moves *earlier* than the one queued;
//!   a deadline that moved later (every packet pushes the idle timeout back) is re-queued when
//!   its old entry comes up. So a packet costs no heap push, and the heap does not fill with
//!   stale entries.
//! - **Integration.** The worker calls [`QuicEndpoint::recv`] when the UDP socket is readable
//!   and [`QuicEndpoint::drive`] once per loop iteration (after its writes): timers, endpoint
//!   events, application events (new desktop stream, readable, writable) and transmits. The
//!   loop's poll timeout is at most [`QuicEndpoint::next_timeout`].

mod config;
mod stream;
mod udp;

pub use config::{crypto_config, server_config, transport};
pub use stream::QuicStream;

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event,
    ServerConfig, StreamEvent, StreamId, VarInt,
};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::debug;

use crate::error::CertReloadError;

/// Most time a closing QUIC desktop may take for its last bytes to be acknowledged.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Datagrams read per wake-up before the rest of the loop gets a turn (a flood of Initials
/// must not starve established desktops).
const RECV_BUDGET: usize = 512;
/// Largest datagram quinn-proto writes.
const MAX_DATAGRAM: usize = 65_536;

/// QUIC endpoint settings (from `[quic]` and `[limits]`).
#[derive(Debug, Clone)]
pub struct QuicSettings {
    /// Connections allowed to be handshaking at once; more are refused.
    pub max_handshakes: usize,
    /// Of those, from one source IP address.
    pub max_handshakes_per_source: usize,
    /// QUIC desktops per worker.
    pub max_desktops: usize,
    /// Idle timeout (3 heartbeats, like TCP desktops).
    pub idle: Duration,
    /// Send a stateless Retry to every unvalidated address (default true).
    pub retry: bool,
    /// A connection must open its desktop stream within this (`limits.handshake_ms`).
    pub handshake: Duration,
}

/// Something the worker must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicEvent {
    /// A connection opened its desktop stream: make a desktop with [`QuicEndpoint::attach`].
    NewDesktop(ConnectionHandle, SocketAddr),
    /// The desktop in this slot has bytes to read (or its connection ended).
    Readable(usize),
    /// The desktop in this slot may write again.
    Writable(usize),
}

struct QConn {
    conn: Connection,
    stream: Option<StreamId>,
    /// The desktop slot, once attached.
    slot: Option<usize>,
    /// A [`QuicStream`] handle exists.
    attached: bool,
    lost: bool,
    /// The handle was dropped: the stream is finished, close once acknowledged (or at this time).
    close_at: Option<Instant>,
    /// The drained event, held until the handle is gone (so the handle id is not reused).
    drained: Option<quinn_proto::EndpointEvent>,
    /// When this connection next needs [`Connection::handle_timeout`] or a deadline of ours.
    timer: Option<Instant>,
    /// The earliest entry of this connection in the timer heap (`None`: none queued).
    queued: Option<Instant>,
    touched: bool,
    peer: SocketAddr,
    /// Until when the desktop stream must be opened.
    stream_by: Instant,
}

/// The connections, indexed by their quinn-proto handle (a slab index the endpoint reuses,
/// so the table stays as long as the most connections at once).
#[derive(Default)]
struct Conns {
    slots: Vec<Option<Box<QConn>>>,
}

impl Conns {
    fn get_mut(&mut self, ch: usize) -> Option<&mut QConn> {
        self.slots.get_mut(ch)?.as_deref_mut()
    }

    /// Connection `ch` for its stream's reads and writes: aborted once it is gone or lost.
    fn live(&mut self, ch: usize) -> io::Result<&mut QConn> {
        match self.get_mut(ch) {
            Some(c) if !c.lost => Ok(c),
            _ => Err(io::ErrorKind::ConnectionAborted.into()),
        }
    }

    fn insert(&mut self, ch: usize, c: QConn) {
        if self.slots.len() <= ch {
            self.slots.resize_with(ch + 1, || None);
        }
        self.slots[ch] = Some(Box::new(c));
    }

    fn remove(&mut self, ch: usize) -> Option<Box<QConn>> {
        self.slots.get_mut(ch)?.take()
    }
}

struct Driver {
    endpoint: Endpoint,
    conns: Conns,
    touched: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    settings: QuicSettings,
    /// The configuration new connections are accepted with (passed to `accept`); the
    /// endpoint holds the same one (for Retry tokens). Both are replaced together when a
    /// SIGHUP rotates the certificate.
    server_config: Arc<ServerConfig>,
    handshaking: usize,
    /// Handshaking connections per source address.
    handshaking_from: HashMap<std::net::IpAddr, usize>,
    desktops: usize,
    events: Vec<QuicEvent>,
    /// False after SIGTERM: new connections are refused.
    accepting: bool,
    /// Counters for `/metrics`-style logging: retries sent, refused, accepted.
    stats: QuicStats,
}

/// Counters of one endpoint.
#[derive(Debug, Default, Clone, Copy)]
pub struct QuicStats {
    /// Stateless retries sent.
    pub retries: u64,
    /// Connections refused (handshake or desktop cap).
    pub refused: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Handshakes that failed (TLS, ALPN, timeout before a stream).
    pub failed: u64,
    /// The source address of the last failed handshake, for the rate-limited failure log
    /// (each failure is logged at debug only: a peer can provoke them by the thousand).
    pub last_failed: Option<std::net::IpAddr>,
}

impl QuicStats {
    /// A handshake from `source` failed.
    fn fail(&mut self, source: std::net::IpAddr) {
        self.failed += 1;
        self.last_failed = Some(source);
    }
}

impl Driver {
    fn touch(&mut self, ch: usize) {
        if let Some(c) = self.conns.get_mut(ch)
            && !c.touched
        {
            c.touched = true;
            self.touched.push(ch);
        }
    }

    /// Queue `ch`'s deadline unless an entry at or before it is queued already.
    fn arm(&mut self, ch: usize) {
        let Some(c) = self.conns.get_mut(ch) else {
            return;
        };
        if let Some(at) = c.timer
            && c.queued.is_none_or(|q| at < q)
        {
            c.queued = Some(at);
            self.timers.push(Reverse((at, ch)));
        }
    }

    /// One received datagram.
    fn handle(
        &mut self,
        io: &mut Out<'_>,
        now: Instant,
        from: SocketAddr,
        dst_ip: Option<std::net::IpAddr>,
        data: BytesMut,
    ) {
        let d = self;
        io.tbuf.clear();
        let Some(ev) = d.endpoint.handle(now, from, dst_ip, None, data, io.tbuf) else {
            return;
        };
        match ev {
            DatagramEvent::ConnectionEvent(ch, e) => {
                if let Some(c) = d.conns.get_mut(ch.0) {
                    c.conn.handle_event(e);
                    d.touch(ch.0);
                }
            }
            DatagramEvent::Response(t) => io.queue(t.destination, t.size),
            DatagramEvent::NewConnection(incoming) => {
                if d.settings.retry && !incoming.remote_address_validated() {
                    // Stateless retry: nothing is kept for this address until it echoes
                    // the token.
                    match d.endpoint.retry(incoming, io.tbuf) {
                        Ok(t) => {
                            d.stats.retries += 1;
                            io.queue(t.destination, t.size);
                        }
                        Err(e) => d.endpoint.ignore(e.into_incoming()),
                    }
                    return;
                }
                let from = incoming.remote_address().ip();
                if !d.accepting
                    || d.handshaking >= d.settings.max_handshakes
                    || d.handshaking_from.get(&from).copied().unwrap_or(0)
                        >= d.settings.max_handshakes_per_source
                    || d.desktops + d.handshaking >= d.settings.max_desktops
                {
                    d.stats.refused += 1;
                    let t = d.endpoint.refuse(incoming, io.tbuf);
                    io.queue(t.destination, t.size);
                    return;
                }
                let sc = d.server_config.clone();
                match d.endpoint.accept(incoming, now, io.tbuf, Some(sc)) {
                    Ok((ch, conn)) => {
                        d.stats.accepted += 1;
                        d.handshaking += 1;
                        *d.handshaking_from.entry(from).or_default() += 1;
                        let peer = conn.remote_address();
                        d.conns.insert(
                            ch.0,
                            QConn {
                                conn,
                                stream: None,
                                slot: None,
                                attached: false,
                                lost: false,
                                close_at: None,
                                drained: None,
                                timer: None,
                                queued: None,
                                touched: false,
                                peer,
                                stream_by: now + d.settings.handshake,
                            },
                        );
                        d.touch(ch.0);
                    }
                    Err(e) => {
                        d.stats.fail(from);
                        if let Some(t) = e.response {
                            io.queue(t.destination, t.size);
                        }
                    }
                }
            }
        }
    }

    /// Pop the timer entries that are due: fire the connections whose deadline has come,
    /// re-queue those whose deadline moved later.
    fn expire(&mut self, now: Instant) {
        let d = self;
        while let Some(Reverse((at, ch))) = d.timers.peek().copied() {
            if at > now {
                break;
            }
            d.timers.pop();
            let Some(c) = d.conns.get_mut(ch) else {
                continue;
            };
            if c.queued == Some(at) {
                c.queued = None;
            }
            if c.timer.is_none_or(|t| t > now) {
                // Not due yet (it moved later since this entry was queued).
                d.arm(ch);
                continue;
            }
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
            }
            if c.stream.is_none() && !c.lost && c.stream_by <= now {
                c.stream_by = now + Duration::from_secs(3600);
                debug!(peer = %c.peer, "quic handshake deadline: no desktop stream in time");
                c.conn.close(
                    now,
                    VarInt::from_u32(3),
                    Bytes::from_static(b"handshake deadline"),
                );
            }
            if let Some(ca) = c.close_at
                && ca <= now
                && !c.lost
            {
                c.close_at = None;
                c.conn
                    .close(now, VarInt::from_u32(0), Bytes::from_static(b"closed"));
            }
            // Driving it recomputes (and re-queues) its deadline.
            d.touch(ch);
        }
    }

    /// One touched connection: endpoint events, application events, transmits, its timer,
    /// and its removal once drained.
    fn drive_one(&mut self, io: &mut Out<'_>, ch: usize, now: Instant, out: &mut Vec<QuicEvent>) {
        let d = self;
        let Some(c) = d.conns.get_mut(ch) else {
            return;
        };
        c.touched = false;
        // Endpoint events (CID changes, drained).
        while let Some(ev) = c.conn.poll_endpoint_events() {
            if ev.is_drained() {
                c.drained = Some(ev);
            } else if let Some(back) = d.endpoint.handle_event(ConnectionHandle(ch), ev) {
                c.conn.handle_event(back);
            }
        }
        // Application events.
        while let Some(ev) = c.conn.poll() {
            match ev {
                Event::Connected => {
                    debug!(peer = %c.peer, "quic connected");
                }
                Event::ConnectionLost { reason } => {
                    if c.stream.is_none() {
                        d.stats.fail(c.peer.ip());
                        d.handshaking = d.handshaking.saturating_sub(1);
                        handshake_over(&mut d.handshaking_from, c.peer.ip());
                        debug!(peer = %c.peer, error = %reason, "quic connection failed before its desktop stream");
                    } else {
                        debug!(peer = %c.peer, error = %reason, "quic connection lost");
                    }
                    c.lost = true;
                    if let Some(s) = c.slot {
                        out.push(QuicEvent::Readable(s));
                    }
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    while let Some(id) = c.conn.streams().accept(Dir::Bi) {
                        if c.stream.is_none() && !c.lost {
                            c.stream = Some(id);
                            d.handshaking = d.handshaking.saturating_sub(1);
                            handshake_over(&mut d.handshaking_from, c.peer.ip());
                            d.desktops += 1;
                            out.push(QuicEvent::NewDesktop(ConnectionHandle(ch), c.peer));
                        } else {
                            let _ = c.conn.recv_stream(id).stop(VarInt::from_u32(1));
                            let _ = c.conn.send_stream(id).reset(VarInt::from_u32(1));
                        }
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    if Some(id) == c.stream
                        && let Some(s) = c.slot
                    {
                        out.push(QuicEvent::Readable(s));
                    }
                }
                Event::Stream(StreamEvent::Writable { id }) => {
                    if Some(id) == c.stream
                        && let Some(s) = c.slot
                    {
                        out.push(QuicEvent::Writable(s));
                    }
                }
                Event::Stream(StreamEvent::Finished { id })
                    if Some(id) == c.stream && c.close_at.is_some() =>
                {
                    c.close_at = None;
                    c.conn
                        .close(now, VarInt::from_u32(0), Bytes::from_static(b"closed"));
                }
                _ => {}
            }
        }
        // Transmits: one datagram at a time, queued; the socket sends the round's datagrams
        // batched by destination when the round ends.
        loop {
            io.tbuf.clear();
            let Some(t) = c.conn.poll_transmit(now, 1, io.tbuf) else {
                break;
            };
            io.queue(t.destination, t.size);
        }
        // Timer.
        let next = c.conn.poll_timeout();
        let deadline = if c.stream.is_none() && !c.lost {
            Some(c.stream_by)
        } else {
            c.close_at
        };
        c.timer = match (next, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Gone: drained, and no desktop handle refers to it.
        if !c.attached && (c.drained.is_some() || (c.lost && c.conn.is_drained())) {
            if let Some(c) = d.conns.remove(ch) {
                if c.stream.is_none() && !c.lost {
                    d.handshaking = d.handshaking.saturating_sub(1);
                    handshake_over(&mut d.handshaking_from, c.peer.ip());
                    d.stats.fail(c.peer.ip());
                    debug!(peer = %c.peer, "quic connection ended during its handshake (tls failure, or closed before its desktop stream)");
                }
                if let Some(ev) = c.drained {
                    d.endpoint.handle_event(ConnectionHandle(ch), ev);
                }
            }
            return;
        }
        d.arm(ch);
    }
}

/// One worker's QUIC endpoint.
pub struct QuicEndpoint {
    sock: udp::Socket,
    rx: udp::RecvBufs,
    tx: udp::SendQueue,
    inner: Rc<RefCell<Driver>>,
    tbuf: Vec<u8>,
}

/// Where the datagrams a driver call produces go: quinn-proto writes each into `tbuf`, the
/// queue keeps it until the call ends.
struct Out<'a> {
    sock: &'a udp::Socket,
    tx: &'a mut udp::SendQueue,
    tbuf: &'a mut Vec<u8>,
}

impl Out<'_> {
    /// Queue the `size` bytes quinn-proto wrote into `tbuf`.
    fn queue(&mut self, to: SocketAddr, size: usize) {
        self.tx.queue(self.sock, to, &self.tbuf[..size]);
    }
}

impl std::fmt::Debug for QuicEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicEndpoint").finish()
    }
}

impl QuicEndpoint {
    /// Bind UDP `addr` with `SO_REUSEPORT`.
    ///
    /// # Errors
    /// Socket or bind failure.
    pub fn bind(
        addr: SocketAddr,
        server_config: ServerConfig,
        settings: QuicSettings,
    ) -> io::Result<QuicEndpoint> {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        // Bursts of Initials and many connections: a larger receive buffer (best effort).
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        let server_config = Arc::new(server_config);
        let endpoint = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(server_config.clone()),
            true,
            None,
        );
        Ok(QuicEndpoint {
            sock: udp::Socket::new(s.into())?,
            rx: udp::RecvBufs::new(),
            tx: udp::SendQueue::default(),
            inner: Rc::new(RefCell::new(Driver {
                endpoint,
                conns: Conns::default(),
                touched: Vec::new(),
                timers: BinaryHeap::new(),
                settings,
                server_config,
                handshaking: 0,
                handshaking_from: HashMap::new(),
                desktops: 0,
                events: Vec::new(),
                accepting: true,
                stats: QuicStats::default(),
            })),
            tbuf: Vec::with_capacity(MAX_DATAGRAM),
        })
    }

    /// The bound UDP address.
    ///
    /// # Errors
    /// The socket has no address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Counters.
    pub fn stats(&self) -> QuicStats {
        self.inner.borrow().stats
    }

    /// Serve the certificate and key in these files to connections accepted from now on
    /// (SIGHUP). Connections already established, or already past their first Initial, keep
    /// the certificate they started with. Everything else of the configuration (transport
    /// settings, limits, the Retry token key, so that a Retry sent just before the swap is
    /// still honoured) is kept.
    ///
    /// # Errors
    /// [`CertReloadError::Load`] when the files cannot be used; the endpoint is unchanged.
    pub fn reload_certificate(
        &mut self,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<(), CertReloadError> {
        let crypto = crypto_config(cert, key).map_err(|reason| CertReloadError::Load {
            section: "quic",
            reason,
        })?;
        let mut d = self.inner.borrow_mut();
        let mut sc = (*d.server_config).clone();
        sc.crypto = crypto;
        let sc = Arc::new(sc);
        d.endpoint.set_server_config(Some(sc.clone()));
        d.server_config = sc;
        Ok(())
    }

    /// Stop accepting connections (drain).
    pub fn stop_accepting(&mut self) {
        self.inner.borrow_mut().accepting = false;
    }

    /// QUIC desktops (attached streams) right now.
    pub fn desktops(&self) -> usize {
        self.inner.borrow().desktops
    }

    /// Connections accepted and still handshaking (no desktop stream yet) right now: what
    /// `max_handshakes` caps, so operators can see how close a reconnect wave gets to it.
    pub fn handshaking(&self) -> usize {
        self.inner.borrow().handshaking
    }

    /// Read pending datagrams (at most [`RECV_BUDGET`], in batches) and feed them to the
    /// endpoint; `true` if the budget ran out (call again soon: the socket is edge-triggered).
    pub fn recv(&mut self, now: Instant) -> bool {
        let mut d = self.inner.borrow_mut();
        let mut io = Out {
            sock: &self.sock,
            tx: &mut self.tx,
            tbuf: &mut self.tbuf,
        };
        let mut budget = RECV_BUDGET;
        let more = loop {
            if budget == 0 {
                break true;
            }
            let n = match io.sock.recv(&mut self.rx) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!(error = %e, "udp recv");
                    break false;
                }
            };
            for i in 0..n {
                let r = self.rx.received(i);
                for data in r.data.chunks(r.stride) {
                    budget = budget.saturating_sub(1);
                    d.handle(&mut io, now, r.from, r.dst_ip, BytesMut::from(data));
                }
            }
        };
        io.tx.flush(io.sock);
        more
    }

    /// Timers, connection state, application events and transmits. Returns what the worker
    /// must do (new desktop streams, readable, writable).
    pub fn drive(&mut self, now: Instant, out: &mut Vec<QuicEvent>) {
        let mut d = self.inner.borrow_mut();
        let d = &mut *d;
        let mut io = Out {
            sock: &self.sock,
            tx: &mut self.tx,
            tbuf: &mut self.tbuf,
        };
        d.expire(now);
        let mut round = 0;
        while !d.touched.is_empty() && round < 4 {
            round += 1;
            for ch in std::mem::take(&mut d.touched) {
                d.drive_one(&mut io, ch, now, out);
            }
        }
        out.append(&mut d.events);
        io.tx.flush(io.sock);
    }

    /// When [`QuicEndpoint::drive`] must run next (timers).
    pub fn next_timeout(&self) -> Option<Instant> {
        let d = self.inner.borrow();
        if !d.touched.is_empty() {
            return Some(Instant::now());
        }
        d.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Attach the desktop in `slot` to the connection `ch` (after [`QuicEvent::NewDesktop`]).
    pub fn attach(&mut self, ch: ConnectionHandle, slot: usize) -> Option<QuicStream> {
        let mut d = self.inner.borrow_mut();
        let c = d.conns.get_mut(ch.0)?;
        let id = c.stream?;
        c.slot = Some(slot);
        c.attached = true;
        Some(QuicStream::new(self.inner.clone(), ch.0, id))
    }

    /// A desktop could not be created for `ch` (a cap of the core's): close the connection,
    /// telling it `reason`.
    pub fn reject(&mut self, ch: ConnectionHandle, now: Instant, reason: &'static str) {
        let mut d = self.inner.borrow_mut();
        if let Some(c) = d.conns.get_mut(ch.0) {
            c.conn.close(
                now,
                VarInt::from_u32(2),
                Bytes::from_static(reason.as_bytes()),
            );
            d.desktops = d.desktops.saturating_sub(1);
            d.touch(ch.0);
        }
    }
}

/// A connection from `ip` left its handshake (its stream opened, or it failed).
fn handshake_over(from: &mut HashMap<std::net::IpAddr, usize>, ip: std::net::IpAddr) {
    if let Some(n) = from.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            from.remove(&ip);
        }
    }
}

delegate_source!(QuicEndpoint, sock);
