//! The I/O driver of one worker process: a single-threaded mio event loop around a
//! [`Core`].
//!
//! The core holds every rule (sessions, routing, links, budgets); this loop only moves bytes
//! and time: it owns the sockets (desktops over TCP, TLS or QUIC; upstream links), reads what
//! is ready and hands it to the core, writes what the core has queued, runs the core's
//! timers, and carries out the core's I/O requests ([`Io`]). It knows nothing of sessions.
//!
//! Why an event loop and not a task per connection: an idle desktop must cost a few hundred
//! bytes. Here it costs a core slab entry plus its socket, with no read buffer (bytes are
//! read into one worker-wide scratch buffer), no waker, no task and no held tracing span.
//!
//! One wake-up:
//! 1. read every ready socket the core wants read (capped per socket for fairness) and hand
//!    the bytes over;
//! 2. drive the QUIC endpoint (new desktop streams, readable and writable streams);
//! 3. carry out the core's I/O requests, then write every endpoint with queued bytes (one
//!    vectored write per endpoint and round; a long round reads the links again every
//!    `LINK_LOOK` writes); a partial write waits for the writable edge;
//! 4. when due: the core's timers, signals (SIGHUP reload, SIGTERM drain), operator
//!    commands, status.
//!
//! Sockets are indexed by the core's ids (a desktop's slot, a link's index), each stored with
//! the generation it belongs to, so a late event for a closed connection finds nothing.
//! Desktop sockets, the QUIC endpoint and the loop are here; link sockets are in `links`,
//! SIGHUP (configuration and certificates) in `reload`.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use tracing::{info, warn};

use crate::config::Config;
use crate::core::{Core, DesktopId, Endpoint, Io, LinkId, refusal_frame};
use crate::error::{Disconnect, WorkerError};
use crate::metrics::Metrics;
use crate::quic::{QuicEndpoint, QuicEvent};
use crate::status::{AdminCommand, Signals, Status};
use crate::transport::{DesktopStream, DesktopTransport};

mod failures;
mod links;
mod reload;
// The second driver of this same worker (its sockets table, timers and operator handling),
// in a folder of its own because it holds the crate's only unsafe code.
#[cfg(feature = "uring")]
#[path = "../uring/mod.rs"]
mod uring;

const LISTENER: Token = Token(usize::MAX - 1);
const QUIC: Token = Token(usize::MAX - 2);
const LINK_BASE: usize = 1 << 40;
/// Bytes read from one socket per wake-up before others get a turn.
const READ_BUDGET: usize = 256 * 1024;
/// Bytes read at a time (the core holds back at most this much past a desktop's limits).
const READ_CHUNK: usize = 64 * 1024;
/// Slices per vectored write.
const IOV: usize = 64;
/// Desktop writes between two reads of the links in a long write round (a few ms).
const LINK_LOOK: usize = 256;
/// How long a closed desktop's socket lingers for its last bytes and the peer's close.
const LINGER: Duration = Duration::from_secs(2);
/// Most sockets lingering at once (each holds a file descriptor); past it, closed at once.
const MAX_LINGER: usize = 1024;

/// Re-reads the configuration for a SIGHUP: the new one, or why it did not load.
pub type ReloadFn = Box<dyn Fn() -> Result<Config, String> + Send>;

/// What a worker needs to run.
pub struct WorkerOpts {
    /// Worker index (for logs, metrics and link names).
    pub index: usize,
    /// The configuration (CLI overrides applied).
    pub config: Config,
    /// Where to re-read the configuration on SIGHUP (`None`: reload keeps the current one).
    /// The error says why the configuration did not load (file, line, key).
    pub reload: Option<ReloadFn>,
    /// Instances disabled by an operator before this worker started.
    pub disabled: Vec<String>,
    /// The QUIC endpoint (UDP, same port number), when `[quic]` is configured.
    pub quic: Option<QuicEndpoint>,
}

impl std::fmt::Debug for WorkerOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOpts")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// A link's socket.
struct LinkSock {
    generation: u32,
    sock: crate::transport::LinkStream,
    connected: bool,
}

/// How an instance's links connect (cached per router instance: built once from the
/// configuration, rebuilt on SIGHUP).
#[derive(Clone)]
enum LinkSec {
    /// Plain TCP (the configuration opted in).
    Plain,
    /// TLS with this client configuration (CA, client certificate), verifying this name.
    Tls(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
}

/// The worker: sockets around a core.
pub struct Worker {
    index: usize,
    poll: Poll,
    listener: Option<DesktopTransport>,
    quic: Option<QuicEndpoint>,
    core: Core,
    /// Desktop connections by core slot, with their generation.
    desktops: Vec<Option<(u32, DesktopStream)>>,
    /// Link sockets by link index.
    links: Vec<Option<LinkSock>>,
    /// Link security by router instance (see [`LinkSec`]).
    link_tls: std::collections::HashMap<usize, LinkSec>,
    /// Closed desktops' sockets finishing their last bytes (see `close_stream`).
    lingering: Vec<(Instant, DesktopStream)>,
    scratch: Vec<u8>,
    /// Desktops to read again in the next round (read budget ran out, or the core said so).
    to_read: Vec<DesktopId>,
    quic_events: Vec<QuicEvent>,
    /// The UDP socket's read budget ran out: datagrams are still pending.
    quic_more: bool,
    cfg: Config,
    reload: Option<ReloadFn>,
    metrics: Metrics,
    status: Arc<Status>,
    signals: Arc<Signals>,
    start: Instant,
    /// Auth and protocol failures of desktops, logged at info at most once a second.
    desktop_failures: failures::FailureLog,
    /// The time of this round: read once after each wait, handed to the core with every
    /// input of the round (timers are checked at 100 ms; one clock read per round, not per
    /// socket operation).
    now: Instant,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Build a worker around a bound listener.
    ///
    /// # Errors
    /// Poll creation or registration failure.
    pub fn new(
        opts: WorkerOpts,
        mut listener: DesktopTransport,
        metrics: Metrics,
        status: Arc<Status>,
        signals: Arc<Signals>,
    ) -> Result<Worker, WorkerError> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut quic = opts.quic;
        if let Some(q) = quic.as_mut() {
            poll.registry().register(q, QUIC, Interest::READABLE)?;
        }
        let now = Instant::now();
        let seed = u64::from(std::process::id()) ^ now.elapsed().as_nanos() as u64;
        let mut core = Core::new(opts.index, &opts.config, now, seed, metrics.clone());
        for n in &opts.disabled {
            core.set_disabled(n, true);
        }
        status.worker.store(opts.index as u64, Ordering::Relaxed);
        crate::status::publish(&core, &status, &metrics);
        Ok(Worker {
            index: opts.index,
            poll,
            listener: Some(listener),
            quic,
            links: (0..core.links().len()).map(|_| None).collect(),
            link_tls: std::collections::HashMap::new(),
            core,
            desktops: Vec::new(),
            lingering: Vec::new(),
            scratch: vec![0u8; READ_CHUNK],
            to_read: Vec::new(),
            quic_events: Vec::new(),
            quic_more: false,
            cfg: opts.config,
            reload: opts.reload,
            metrics,
            status,
            signals,
            start: now,
            desktop_failures: failures::FailureLog::default(),
            now,
        })
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

    /// Call `ready` (once) when every link is up, or 3 s after the start whatever the links:
    /// the supervisor waits for it, and a server that is down must not hold the proxy back.
    fn announce_ready(&self, now: Instant, ready: &mut Option<impl FnOnce()>) {
        if (self.core.all_links_up() || now.duration_since(self.start) > Duration::from_secs(3))
            && let Some(r) = ready.take()
        {
            r();
        }
    }

    /// Run until drained after SIGTERM. `ready` is called once, when every link is up (or
    /// after 3 s), so that a supervisor announces the port only when it can serve.
    ///
    /// # Errors
    /// A poll failure.
    pub fn run(mut self, ready: impl FnOnce()) -> Result<(), WorkerError> {
        #[cfg(feature = "uring")]
        if self.cfg.worker.driver == crate::config::Driver::Uring {
            // Only the listener's fd is used: deregistered, so epoll never holds it.
            if let Some(l) = self.listener.as_mut() {
                let _ = self.poll.registry().deregister(l);
            }
            return self.run_uring(ready);
        }
        let mut events = Events::with_capacity(1024);
        let mut ready = Some(ready);
        loop {
            let now = Instant::now();
            let mut wake = self.core.poll_timeout();
            if let Some(at) = self.quic.as_ref().and_then(QuicEndpoint::next_timeout) {
                wake = wake.min(at);
            }
            let busy = !self.to_read.is_empty() || !self.quic_events.is_empty() || self.quic_more;
            let timeout = if busy {
                Duration::ZERO
            } else {
                wake.saturating_duration_since(now)
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
            self.now = Instant::now();
            if std::mem::take(&mut self.quic_more)
                && let Some(q) = self.quic.as_mut()
            {
                self.quic_more = q.recv(Instant::now());
            }
            for id in std::mem::take(&mut self.to_read) {
                self.read_desktop(id, false);
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
                } else if let Some(id) = self.desktop_id(t.0) {
                    if ev.is_writable() {
                        self.core.writable(Endpoint::Desktop(id));
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.read_desktop(id, !ev.is_read_closed() && !ev.is_error());
                    }
                }
            }
            self.quic_round();
            self.io_and_writes();
            if let Some(q) = self.quic.as_mut() {
                // Transmit what the desktops' writes queued; events wait for the next round.
                q.drive(Instant::now(), &mut self.quic_events);
            }
            crate::status::publish_counts(&self.core, &self.status);
            let now = Instant::now();
            self.now = now;
            if now >= self.core.poll_timeout() {
                self.tick(now);
                self.core.handle_timeout(now);
                self.io_and_writes();
                crate::status::publish(&self.core, &self.status, &self.metrics);
                self.announce_ready(now, &mut ready);
                if self.core.drained(now) {
                    self.finish();
                    return Ok(());
                }
            }
        }
    }

    fn desktop_id(&self, slot: usize) -> Option<DesktopId> {
        let (generation, _) = self.desktops.get(slot)?.as_ref()?;
        Some(DesktopId {
            slot: slot as u32,
            generation: *generation,
        })
    }

    // ---------------------------------------------------------------- desktops

    /// Accept every pending TCP connection.
    fn accept(&mut self) {
        loop {
            // A slot the core freed must be closed here before the core hands it out again.
            self.apply_io();
            let Some(l) = self.listener.as_mut() else {
                return;
            };
            let (mut sock, peer) = match l.accept() {
                Ok(Some(x)) => x,
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: back off until the next tick rather than spin.
                    warn!(error = %e, "accept failed");
                    self.metrics.refusal("accept_error");
                    self.metrics.accept_failures.inc();
                    return;
                }
            };
            match self.core.accept(self.now, peer.ip(), true) {
                Ok(id) => {
                    if self.attach(id, sock) {
                        self.read_desktop(id, false);
                    }
                }
                Err(r) => {
                    let _ = sock.write(&refusal_frame(r));
                }
            }
        }
    }

    /// Register a desktop's connection under the core's id.
    fn attach(&mut self, id: DesktopId, mut sock: DesktopStream) -> bool {
        let slot = id.slot as usize;
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(error = %e, "register failed");
            self.core
                .desktop_lost(Instant::now(), id, Disconnect::IoError);
            return false;
        }
        if self.desktops.len() <= slot {
            self.desktops.resize_with(slot + 1, || None);
        }
        self.desktops[slot] = Some((id.generation, sock));
        true
    }

    /// Read what desktop `id` sent, while the core wants it read.
    ///
    /// `short_is_drained`: the wake-up came from the socket's own readiness, without an end
    /// of stream: on a plain TCP socket a read shorter than the buffer then means the socket
    /// is drained, so the read that would only say `WouldBlock` is skipped (one syscall per
    /// request less; readiness is edge-triggered, so bytes arriving later wake the loop
    /// again, and so does the end of stream). TLS and QUIC streams buffer below the socket
    /// and are always read until they would block.
    fn read_desktop(&mut self, id: DesktopId, short_is_drained: bool) {
        let mut budget = READ_BUDGET;
        loop {
            if !self.core.poll_read(id) {
                return;
            }
            let slot = id.slot as usize;
            let Some(Some((generation, sock))) = self.desktops.get_mut(slot) else {
                return;
            };
            if *generation != id.generation {
                return;
            }
            let now = self.now;
            match sock.read(&mut self.scratch) {
                Ok(0) => {
                    self.core.desktop_eof(now, id);
                    return;
                }
                Ok(n) => {
                    let drained = short_is_drained
                        && n < self.scratch.len()
                        && matches!(sock, DesktopStream::Plain(_));
                    self.core.desktop_data(now, id, &self.scratch[..n]);
                    if drained {
                        return;
                    }
                    if n >= budget {
                        self.to_read.push(id);
                        return;
                    }
                    budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // InvalidData: a TLS failure (handshake or record), logged by the stream.
                    let why = if e.kind() == io::ErrorKind::InvalidData {
                        self.metrics.error("tls");
                        Disconnect::TlsError
                    } else {
                        Disconnect::IoError
                    };
                    self.drop_desktop(id);
                    self.core.desktop_lost(now, id, why);
                    return;
                }
            }
        }
    }

    /// Forget a desktop's connection (closing it).
    fn drop_desktop(&mut self, id: DesktopId) -> Option<DesktopStream> {
        let e = self.desktops.get_mut(id.slot as usize)?;
        if e.as_ref().is_some_and(|(g, _)| *g == id.generation) {
            let (_, mut sock) = e.take()?;
            let _ = self.poll.registry().deregister(&mut sock);
            return Some(sock);
        }
        None
    }

    /// Write desktop `id`'s queue: one vectored write at a time until it is empty or the
    /// socket would block.
    fn flush_desktop(&mut self, id: DesktopId) {
        let now = self.now;
        let slot = id.slot as usize;
        loop {
            let Some(Some((generation, sock))) = self.desktops.get_mut(slot) else {
                return;
            };
            if *generation != id.generation {
                return;
            }
            // TLS buffers records below the frame queue: those go out with `flush`.
            let tls = matches!(sock, DesktopStream::Tls(_));
            let mut iov = [IoSlice::new(&[]); IOV];
            let n = self.core.desktop_slices(id, &mut iov);
            let total: usize = iov[..n].iter().map(|s| s.len()).sum();
            let res = if n == 0 {
                // Bytes a connection buffers below the frame queue (TLS records) go out here,
                // also on a writable edge with an empty queue; a plain socket's flush is a
                // no-op.
                match sock.flush() {
                    Ok(()) => return,
                    Err(e) => Err(e),
                }
            } else {
                sock.write_vectored(&iov[..n])
            };
            match res {
                Ok(w) => {
                    self.core.desktop_written(now, id, w);
                    // All of a queue shorter than one vectored write went: done, but for
                    // what the stream buffers below it (TLS records).
                    if w == total && n < IOV && !tls {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_desktop(id);
                    self.core.desktop_lost(now, id, Disconnect::IoError);
                    return;
                }
            }
        }
    }

    /// A closed desktop's connection. Dropping a socket whose input was not all read makes
    /// the kernel send a reset, which can destroy the last frames still in flight (the error
    /// frame that says why it is closed). So the sending side is ended after those frames
    /// (TLS records included) and the socket lingers, its input read and discarded, until
    /// the peer closes too or [`LINGER`] passes (at most [`MAX_LINGER`] at once).
    fn close_stream(&mut self, mut sock: DesktopStream) {
        if matches!(sock, DesktopStream::Quic(_)) || self.lingering.len() >= MAX_LINGER {
            return;
        }
        if sock.close_write().is_err() {
            return;
        }
        self.lingering.push((Instant::now() + LINGER, sock));
    }

    fn flush_lingering(&mut self, now: Instant) {
        let scratch = &mut self.scratch;
        self.lingering.retain_mut(|(until, sock)| {
            if now >= *until || sock.close_write().is_err() {
                return false;
            }
            loop {
                match sock.read(scratch) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
                }
            }
        });
    }

    // ---------------------------------------------------------------- QUIC

    /// Drive the QUIC endpoint and act on its events: new desktop streams become desktops,
    /// readable ones are read, writable ones flushed.
    fn quic_round(&mut self) {
        let Some(q) = self.quic.as_mut() else {
            return;
        };
        let mut evs = std::mem::take(&mut self.quic_events);
        let now = self.now;
        q.drive(now, &mut evs);
        for ev in evs.drain(..) {
            match ev {
                QuicEvent::NewDesktop(ch, peer) => {
                    self.apply_io();
                    match self.core.accept(now, peer.ip(), false) {
                        Ok(id) => {
                            let stream = self
                                .quic
                                .as_mut()
                                .and_then(|q| q.attach(ch, id.slot as usize));
                            match stream {
                                Some(s) => {
                                    if self.attach(id, DesktopStream::Quic(s)) {
                                        self.read_desktop(id, false);
                                    }
                                }
                                None => self.core.desktop_lost(now, id, Disconnect::IoError),
                            }
                        }
                        Err(r) => {
                            if let Some(q) = self.quic.as_mut() {
                                q.reject(ch, now, r.error().message);
                            }
                        }
                    }
                }
                QuicEvent::Readable(slot) => {
                    if let Some(id) = self.desktop_id(slot) {
                        self.read_desktop(id, false);
                    }
                }
                QuicEvent::Writable(slot) => {
                    if let Some(id) = self.desktop_id(slot) {
                        self.core.writable(Endpoint::Desktop(id));
                    }
                }
            }
        }
        self.quic_events = evs;
    }

    // ---------------------------------------------------------------- the core's requests

    /// Carry out the core's I/O requests.
    fn apply_io(&mut self) {
        while let Some(io) = self.core.poll_io() {
            match io {
                Io::Connect { link, addr } => self.connect(link, addr),
                Io::CloseLink(link) => self.drop_link(link),
                Io::Close(id) => {
                    if let Some(s) = self.drop_desktop(id) {
                        self.close_stream(s);
                    }
                }
                Io::Read(id) => self.to_read.push(id),
            }
        }
    }

    /// The core's I/O requests, then every write it has queued (writes can free slots and
    /// close desktops: requests again).
    ///
    /// A broadcast to 10,000 subscribers is a long round of writes. Every [`LINK_LOOK`]
    /// desktop writes the links are read again, so that an event published meanwhile joins
    /// the write of every subscriber still ahead in this round (one vectored write with the
    /// event before it) instead of waiting for the round to end and then for a whole round
    /// of its own: the last subscriber gets it about one round after its publication rather
    /// than up to two. Only during the first pass over the desktops (as many writes as there
    /// are desktop slots), so that the round ends and desktops are read and timers run.
    fn io_and_writes(&mut self) {
        self.apply_io();
        let mut writes = 0usize;
        while let Some(ep) = self.core.poll_transmit() {
            match ep {
                Endpoint::Desktop(id) => {
                    self.flush_desktop(id);
                    writes += 1;
                    if writes.is_multiple_of(LINK_LOOK) && writes <= self.desktops.len() {
                        self.read_links();
                        self.apply_io();
                    }
                }
                Endpoint::Link(id) => self.flush_link(id),
            }
        }
        self.apply_io();
    }

    /// Read every connected link (see [`Worker::io_and_writes`]).
    fn read_links(&mut self) {
        self.now = Instant::now();
        for i in 0..self.links.len() {
            let Some(Some(ls)) = self.links.get(i) else {
                continue;
            };
            if ls.connected {
                let id = LinkId {
                    index: i as u16,
                    generation: ls.generation,
                };
                self.read_link(id);
            }
        }
    }

    // ---------------------------------------------------------------- timers and operators

    fn tick(&mut self, now: Instant) {
        // An accept that failed (EMFILE) left connections in the backlog; the listener is
        // edge-triggered, so retry once per tick rather than wait for the next connection.
        self.accept();
        self.flush_lingering(now);
        self.tick_common(now);
    }

    /// The tick's work that is the same for every driver: signals, operator commands, QUIC
    /// metrics, the failure log.
    fn tick_common(&mut self, now: Instant) {
        if self.signals.hup.swap(false, Ordering::Relaxed) {
            self.reload_config(now);
        }
        if self.signals.term.swap(false, Ordering::Relaxed) {
            self.start_drain(now);
        }
        for cmd in self.status.take_commands() {
            let (name, disable) = match &cmd {
                AdminCommand::Disable(n) => (n, true),
                AdminCommand::Enable(n) => (n, false),
            };
            self.core.set_disabled(name, disable);
            self.status.commands_done.fetch_add(1, Ordering::Relaxed);
        }
        let quic = self.quic.as_ref().map(QuicEndpoint::stats);
        if let (Some(q), Some(st)) = (&self.quic, quic) {
            self.metrics.set_quic(
                [
                    ("retries", st.retries),
                    ("refused", st.refused),
                    ("accepted", st.accepted),
                    ("failed", st.failed),
                ],
                q.desktops() as u64,
                q.handshaking() as u64,
            );
        }
        self.desktop_failures
            .tick(now, &self.metrics, &mut self.core, quic);
    }

    fn start_drain(&mut self, now: Instant) {
        info!("SIGTERM: draining");
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(q) = self.quic.as_mut() {
            q.stop_accepting();
        }
        self.core.start_drain(now);
    }

    /// Drain finished (or its grace ran out): the core closes everything; flush the links
    /// and desktops for a moment, and return.
    fn finish(&mut self) {
        self.core.finish(Instant::now());
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            self.io_and_writes();
            if !self.core.has_queued() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            for (slot, e) in self.desktops.iter().enumerate() {
                if let Some((generation, _)) = e {
                    self.core.writable(Endpoint::Desktop(DesktopId {
                        slot: slot as u32,
                        generation: *generation,
                    }));
                }
            }
            for (i, e) in self.links.iter().enumerate() {
                if let Some(ls) = e {
                    self.core.writable(Endpoint::Link(LinkId {
                        index: i as u16,
                        generation: ls.generation,
                    }));
                }
            }
        }
        info!("drained; exiting");
    }
}
