//! QUIC desktops: quinn-proto (sans-IO) driven from the worker's mio loop.
//!
//! - **Socket.** One non-blocking UDP socket per worker, bound with `SO_REUSEPORT` to the
//!   desktop port number (the same number as TCP). The kernel hashes each client's 4-tuple to
//!   one worker's socket, so a connection stays on the worker that accepted it, and N workers
//!   are N independent endpoint drivers (no single driver is the bottleneck).
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
//!   `CONNECTION_REFUSED`), so one address cannot take every handshake slot; the endpoint's buffer for not-yet-accepted Initials is bounded by
//!   quinn-proto. The idle timeout is 3 × `limits.heartbeat_ms`, the TCP desktop idle rule, and
//!   the whole hello must still complete within `limits.handshake_ms` of the stream opening,
//!   exactly as for TCP.
//! - **Integration.** The worker calls [`QuicEndpoint::recv`] when the UDP socket is readable
//!   and [`QuicEndpoint::drive`] once per loop iteration (after its writes): timers, endpoint
//!   events, application events (new desktop stream, readable, writable) and transmits. The
//!   loop's poll timeout is at most [`QuicEndpoint::next_timeout`].

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::event::Source;
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, IdleTimeout,
    ServerConfig, StreamEvent, StreamId, TransportConfig, VarInt,
};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::debug;

use crate::error::CertReloadError;

/// Most time a closing QUIC desktop may take for its last bytes to be acknowledged.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Largest UDP payload read.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams read per wake-up before the rest of the loop gets a turn (a flood of Initials
/// must not starve established desktops).
const RECV_BUDGET: usize = 512;

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

/// Build the quinn-proto server configuration: TLS 1.3 with ALPN `deskmux/1`, one
/// bidirectional stream per connection, the idle timeout.
///
/// # Errors
/// Unreadable certificate or key, or a rustls configuration QUIC cannot use.
pub fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    s: &QuicSettings,
) -> Result<ServerConfig, String> {
    let mut sc = ServerConfig::with_crypto(crypto_config(cert, key)?);
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(s.idle).map_err(|e| format!("quic idle timeout: {e}"))?,
        ));
    sc.transport_config(Arc::new(t));
    sc.max_incoming(s.max_handshakes.max(1));
    Ok(sc)
}

/// The TLS part of the QUIC server configuration: the certificate chain and key (TLS 1.3
/// only, ALPN `deskmux/1`). Separate from [`server_config`] so that a SIGHUP can swap the
/// certificate and keep everything else of the endpoint's configuration.
///
/// # Errors
/// Unreadable certificate or key, a key that does not match the certificate, or a rustls
/// configuration QUIC cannot use.
pub fn crypto_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<dyn quinn_proto::crypto::ServerConfig>, String> {
    let certs = crate::tls::load_certs(cert)?;
    let key = crate::tls::load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("quic tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("quic: certificate/key {}: {e}", cert.display()))?;
    tls.alpn_protocols = vec![crate::tls::ALPN.to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("quic tls: {e}"))?;
    Ok(Arc::new(crypto))
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
    timer: Option<Instant>,
    touched: bool,
    peer: SocketAddr,
    /// Until when the desktop stream must be opened.
    stream_by: Instant,
}

struct Driver {
    endpoint: Endpoint,
    conns: HashMap<usize, QConn>,
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
        if let Some(c) = self.conns.get_mut(&ch)
            && !c.touched
        {
            c.touched = true;
            self.touched.push(ch);
        }
    }
}

/// One worker's QUIC endpoint.
pub struct QuicEndpoint {
    socket: mio::net::UdpSocket,
    inner: Rc<RefCell<Driver>>,
    rbuf: Vec<u8>,
    tbuf: Vec<u8>,
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
        let std: std::net::UdpSocket = s.into();
        let server_config = Arc::new(server_config);
        let endpoint = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(server_config.clone()),
            true,
            None,
        );
        Ok(QuicEndpoint {
            socket: mio::net::UdpSocket::from_std(std),
            inner: Rc::new(RefCell::new(Driver {
                endpoint,
                conns: HashMap::new(),
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
            rbuf: vec![0u8; MAX_DATAGRAM],
            tbuf: Vec::with_capacity(MAX_DATAGRAM),
        })
    }

    /// The bound UDP address.
    ///
    /// # Errors
    /// The socket has no address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
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

    /// Read pending datagrams (at most [`RECV_BUDGET`]) and feed them to the endpoint;
    /// `true` if the budget ran out (call again soon: the socket is edge-triggered).
    pub fn recv(&mut self, now: Instant) -> bool {
        let local_ip = self.socket.local_addr().ok().map(|a| a.ip());
        let mut budget = RECV_BUDGET;
        loop {
            if budget == 0 {
                return true;
            }
            budget -= 1;
            let (n, from) = match self.socket.recv_from(&mut self.rbuf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!(error = %e, "udp recv");
                    return false;
                }
            };
            let data = BytesMut::from(&self.rbuf[..n]);
            let mut d = self.inner.borrow_mut();
            let d = &mut *d;
            self.tbuf.clear();
            let Some(ev) = d
                .endpoint
                .handle(now, from, local_ip, None, data, &mut self.tbuf)
            else {
                continue;
            };
            match ev {
                DatagramEvent::ConnectionEvent(ch, e) => {
                    if let Some(c) = d.conns.get_mut(&ch.0) {
                        c.conn.handle_event(e);
                        d.touch(ch.0);
                    }
                }
                DatagramEvent::Response(t) => {
                    send(&self.socket, &self.tbuf[..t.size], t.destination);
                }
                DatagramEvent::NewConnection(incoming) => {
                    if d.settings.retry && !incoming.remote_address_validated() {
                        // Stateless retry: nothing is kept for this address until it echoes
                        // the token.
                        match d.endpoint.retry(incoming, &mut self.tbuf) {
                            Ok(t) => {
                                d.stats.retries += 1;
                                send(&self.socket, &self.tbuf[..t.size], t.destination);
                            }
                            Err(e) => d.endpoint.ignore(e.into_incoming()),
                        }
                        continue;
                    }
                    let from = incoming.remote_address().ip();
                    if !d.accepting
                        || d.handshaking >= d.settings.max_handshakes
                        || d.handshaking_from.get(&from).copied().unwrap_or(0)
                            >= d.settings.max_handshakes_per_source
                        || d.desktops + d.handshaking >= d.settings.max_desktops
                    {
                        d.stats.refused += 1;
                        let t = d.endpoint.refuse(incoming, &mut self.tbuf);
                        send(&self.socket, &self.tbuf[..t.size], t.destination);
                        continue;
                    }
                    let sc = d.server_config.clone();
                    match d.endpoint.accept(incoming, now, &mut self.tbuf, Some(sc)) {
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
                                send(&self.socket, &self.tbuf[..t.size], t.destination);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Timers, connection state, application events and transmits. Returns what the worker
    /// must do (new desktop streams, readable, writable).
    pub fn drive(&mut self, now: Instant, out: &mut Vec<QuicEvent>) {
        let mut d = self.inner.borrow_mut();
        let d = &mut *d;
        // Expired timers.
        while let Some(Reverse((at, ch))) = d.timers.peek().copied() {
            if at > now {
                break;
            }
            d.timers.pop();
            let Some(c) = d.conns.get_mut(&ch) else {
                continue;
            };
            if c.timer == Some(at) {
                c.timer = None;
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
            d.touch(ch);
        }
        let mut round = 0;
        while !d.touched.is_empty() && round < 4 {
            round += 1;
            let list = std::mem::take(&mut d.touched);
            for ch in list {
                let Some(c) = d.conns.get_mut(&ch) else {
                    continue;
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
                // Transmits (one datagram each: no GSO on this path).
                loop {
                    self.tbuf.clear();
                    let Some(t) = c.conn.poll_transmit(now, 1, &mut self.tbuf) else {
                        break;
                    };
                    send(&self.socket, &self.tbuf[..t.size], t.destination);
                }
                // Timer.
                let next = c.conn.poll_timeout();
                let deadline = if c.stream.is_none() && !c.lost {
                    Some(c.stream_by)
                } else {
                    c.close_at
                };
                let next = match (next, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if next != c.timer {
                    c.timer = next;
                    if let Some(at) = next {
                        d.timers.push(Reverse((at, ch)));
                    }
                }
                // Gone: drained, and no desktop handle refers to it.
                if !c.attached
                    && (c.drained.is_some() || (c.lost && c.conn.is_drained()))
                    && let Some(c) = d.conns.remove(&ch)
                {
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
            }
        }
        out.append(&mut d.events);
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
        let c = d.conns.get_mut(&ch.0)?;
        let id = c.stream?;
        c.slot = Some(slot);
        c.attached = true;
        Some(QuicStream {
            inner: self.inner.clone(),
            ch: ch.0,
            id,
        })
    }

    /// A desktop could not be created for `ch` (a cap of the core's): close the connection,
    /// telling it `reason`.
    pub fn reject(&mut self, ch: ConnectionHandle, now: Instant, reason: &'static str) {
        let mut d = self.inner.borrow_mut();
        if let Some(c) = d.conns.get_mut(&ch.0) {
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

fn send(socket: &mio::net::UdpSocket, buf: &[u8], to: SocketAddr) {
    // A full socket buffer drops the datagram: QUIC's loss recovery resends it.
    if let Err(e) = socket.send_to(buf, to)
        && e.kind() != io::ErrorKind::WouldBlock
    {
        debug!(error = %e, %to, "udp send");
    }
}

delegate_source!(QuicEndpoint, socket);

/// A QUIC desktop's stream, as the worker sees it: `Read` / `Write` on the one bidirectional
/// stream; registering with mio is a no-op (readiness comes from [`QuicEvent`]s).
pub struct QuicStream {
    inner: Rc<RefCell<Driver>>,
    ch: usize,
    id: StreamId,
}

impl std::fmt::Debug for QuicStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicStream").field("ch", &self.ch).finish()
    }
}

impl io::Read for QuicStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut d = self.inner.borrow_mut();
        let d = &mut *d;
        let Some(c) = d.conns.get_mut(&self.ch) else {
            return Err(io::ErrorKind::ConnectionAborted.into());
        };
        if c.lost {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        let mut recv = c.conn.recv_stream(self.id);
        let mut chunks = match recv.read(true) {
            Ok(ch) => ch,
            Err(_) => return Ok(0),
        };
        let r = match chunks.next(buf.len()) {
            Ok(Some(chunk)) => {
                buf[..chunk.bytes.len()].copy_from_slice(&chunk.bytes);
                Ok(chunk.bytes.len())
            }
            Ok(None) => Ok(0),
            Err(quinn_proto::ReadError::Blocked) => Err(io::ErrorKind::WouldBlock.into()),
            Err(quinn_proto::ReadError::Reset(_)) => Err(io::ErrorKind::ConnectionReset.into()),
        };
        // Flow-control credit may need to be sent.
        let _ = chunks.finalize();
        d.touch(self.ch);
        r
    }
}

impl io::Write for QuicStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut d = self.inner.borrow_mut();
        let d = &mut *d;
        let Some(c) = d.conns.get_mut(&self.ch) else {
            return Err(io::ErrorKind::ConnectionAborted.into());
        };
        if c.lost {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        let mut total = 0;
        let mut err = None;
        for b in bufs {
            if b.is_empty() {
                continue;
            }
            match c.conn.send_stream(self.id).write(b) {
                Ok(n) => {
                    total += n;
                    if n < b.len() {
                        break;
                    }
                }
                Err(quinn_proto::WriteError::Blocked) => break,
                Err(e) => {
                    err = Some(io::Error::new(io::ErrorKind::BrokenPipe, e));
                    break;
                }
            }
        }
        d.touch(self.ch);
        match err {
            Some(e) if total == 0 => Err(e),
            _ if total == 0 && bufs.iter().any(|b| !b.is_empty()) => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            _ => Ok(total),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        let Ok(mut d) = self.inner.try_borrow_mut() else {
            return;
        };
        let d = &mut *d;
        d.desktops = d.desktops.saturating_sub(1);
        if let Some(c) = d.conns.get_mut(&self.ch) {
            c.attached = false;
            c.slot = None;
            if !c.lost {
                // Finish the stream; close once the peer acknowledged it (or after a linger).
                let _ = c.conn.send_stream(self.id).finish();
                c.close_at = Some(Instant::now() + CLOSE_LINGER);
            }
            d.touch(self.ch);
        }
    }
}

impl Source for QuicStream {
    fn register(
        &mut self,
        _registry: &mio::Registry,
        _token: mio::Token,
        _interests: mio::Interest,
    ) -> io::Result<()> {
        Ok(())
    }

    fn reregister(
        &mut self,
        _registry: &mio::Registry,
        _token: mio::Token,
        _interests: mio::Interest,
    ) -> io::Result<()> {
        Ok(())
    }

    fn deregister(&mut self, _registry: &mio::Registry) -> io::Result<()> {
        Ok(())
    }
}
