//! The io_uring driver of a worker (`[worker] driver = "uring"`, cargo feature `uring`): the
//! same [`Core`] as the mio driver, with completions instead of readiness.
//!
//! Why a second driver: with mio every request costs the proxy a `recvfrom`, a `writev` and
//! its share of an `epoll_wait`, each a system call. Here a round is one `io_uring_enter`:
//! it submits every operation the previous round queued and waits for the next completions.
//! - Desktops are accepted by one multishot accept on the listener.
//! - Each desktop and link has one multishot receive armed, which takes a buffer from a
//!   worker-wide ring of provided buffers (`ring::BufRing`) per completion: no buffer is held
//!   by an idle desktop, as with mio's scratch buffer.
//! - Writes are vectored sends of shared handles to the queued frames (`Core::desktop_chunks`),
//!   at most one in flight per connection, kept alive until their completion.
//! - Desktop and link sockets are registered files (`files`): operations name them by their
//!   slot in the ring's table, which spares the kernel a file lookup per submission.
//! - Backpressure: when the core does not want a desktop read ([`Core::poll_read`]), its
//!   receive is cancelled and what arrived meanwhile stays in its buffers (bounded by the
//!   buffer ring) until [`Io::Read`] says it may be read again; then the receive is re-armed.
//!
//! Scope: plain TCP desktops and plain TCP links. TLS and QUIC stay with the mio driver (the
//! configuration check refuses `driver = "uring"` with them). Timers, signals, operator
//! commands, SIGHUP and the drain are the mio worker's own code (`Worker::tick_common`,
//! `Worker::start_drain`); this file only replaces the event loop and the socket I/O.
//!
//! All the unsafe code is in `ring`, each block with why the memory outlives the operation.

mod files;
mod ring;

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use slab::Slab;
use tracing::warn;

use self::files::Files;
use self::ring::{BufRing, Ring, SendBufs, Sock};
use super::{LinkSock, Worker};
use crate::config::FdLimit;
use crate::core::{DesktopId, Endpoint, Io, LinkId, refusal_frame};
use crate::error::{Disconnect, WorkerError};
use crate::transport::{DesktopStream, LinkStream, connect_upstream};

/// Submission queue entries.
const SQ_ENTRIES: u32 = 4096;
/// Provided receive buffers for desktops (a power of two) and their size: 8 MiB for the
/// worker, whatever the number of desktops.
const BUFFERS: u16 = 4096;
const BUFFER_SIZE: usize = 2048;
/// The links' own buffers (4 MiB), so that desktops holding buffers never starve the links
/// whose answers let them be read again.
const LINK_BUFFERS: u16 = 256;
const LINK_BUFFER_SIZE: usize = 16 * 1024;
/// Buffers one held-back desktop keeps; what else arrives before its receive is cancelled
/// is copied into memory of its own, so that a few flooding desktops cannot take every
/// buffer from the others.
const HELD_BUFFERS: usize = 8;
/// Frames per vectored send.
const IOV: usize = 64;

// User data: the kind in the top 4 bits, then a slot or link index and a generation (or a
// send's slab key).
const K_ACCEPT: u64 = 1;
const K_DESKTOP: u64 = 2;
const K_LINK: u64 = 3;
const K_SEND: u64 = 4;
const K_CONNECT: u64 = 5;
const K_CANCEL: u64 = 6;

fn ud(kind: u64, index: u32, generation: u32) -> u64 {
    (kind << 60) | (u64::from(index & 0x0FFF_FFFF) << 32) | u64::from(generation)
}

fn ud_parts(ud: u64) -> (u64, u32, u32) {
    (ud >> 60, ((ud >> 32) & 0x0FFF_FFFF) as u32, ud as u32)
}

/// A desktop's operations in flight (8 bytes per slot).
#[derive(Default, Clone, Copy)]
struct DeskIo {
    generation: u32,
    /// Its multishot receive is armed.
    recv: bool,
    /// A cancel of that receive was sent.
    cancelling: bool,
    /// A send is in flight.
    sending: bool,
    /// More was queued while the send was in flight.
    again: bool,
}

/// What a held-back desktop received before its receive was cancelled.
enum Held {
    /// In a provided buffer (id, length).
    Data(u16, usize),
    /// Copied out of one (past [`HELD_BUFFERS`]).
    Owned(Vec<u8>),
    Eof,
}

/// A send in flight: to whom, and the buffers the kernel reads.
struct Send {
    ep: Endpoint,
    bufs: SendBufs,
}

/// The driver's state beside the worker. Field order is drop order: the ring goes before the
/// buffers it writes into and the sends it reads.
struct Uring {
    ring: Ring,
    /// Which sockets are registered files (the table itself belongs to the ring).
    files: Files,
    bufs: BufRing,
    link_bufs: BufRing,
    sends: Slab<Send>,
    desk: Vec<DeskIo>,
    links: Vec<DeskIo>,
    /// Bytes received for desktops the core held back, by slot (only while held back).
    held: HashMap<u32, Vec<Held>>,
    /// Receives ended for want of a buffer: re-armed next round.
    starved: Vec<Endpoint>,
    /// Desktop buffers kept by held-back desktops (`Held::Data`).
    held_bufs: usize,
    accept_armed: bool,
    cqes: Vec<(u64, i32, u32)>,
}

impl Uring {
    /// Whether a receive that ended for want of a buffer can get one: the kernel ran out,
    /// but every buffer it filled is reaped in the same batch and given back at once unless
    /// a held-back desktop keeps it. Only when they all are kept must it wait.
    fn buffers_free(&self) -> bool {
        self.held_bufs < usize::from(BUFFERS)
    }
}

impl Worker {
    /// Run with the io_uring driver until drained after SIGTERM (see [`Worker::run`]).
    ///
    /// # Errors
    /// io_uring unavailable, or a failure of `io_uring_enter`.
    pub(super) fn run_uring(mut self, ready: impl FnOnce()) -> Result<(), WorkerError> {
        let mut ring = Ring::new(SQ_ENTRIES)?;
        let bufs = BufRing::new(0, BUFFERS, BUFFER_SIZE);
        ring.register(&bufs)?;
        let link_bufs = BufRing::new(1, LINK_BUFFERS, LINK_BUFFER_SIZE);
        ring.register(&link_bufs)?;
        let files = if Files::disabled_by_env() {
            tracing::info!("io_uring: registered files off ({})", files::ENV_SWITCH);
            Files::off()
        } else {
            let limit = FdLimit::of_this_process().map(|l| l.0);
            match Files::register(&mut ring, self.cfg.limits.max_desktops, limit) {
                Ok(f) => {
                    tracing::debug!(slots = f.size(), "io_uring: registered files");
                    f
                }
                Err(e) => {
                    warn!(error = %e, "io_uring: no registered files; plain descriptors");
                    Files::off()
                }
            }
        };
        let mut u = Uring {
            ring,
            files,
            bufs,
            link_bufs,
            sends: Slab::new(),
            desk: Vec::new(),
            links: Vec::new(),
            held: HashMap::new(),
            starved: Vec::new(),
            held_bufs: 0,
            accept_armed: false,
            cqes: Vec::with_capacity(1024),
        };
        self.arm_accept(&mut u);
        let mut ready = Some(ready);
        loop {
            let busy = !self.to_read.is_empty() || (!u.starved.is_empty() && u.buffers_free());
            let timeout = if busy {
                None
            } else {
                Some(
                    self.core
                        .poll_timeout()
                        .saturating_duration_since(Instant::now()),
                )
            };
            u.ring.submit_and_wait(timeout)?;
            self.now = Instant::now();
            let mut cqes = std::mem::take(&mut u.cqes);
            u.ring.reap(&mut cqes);
            for &(data, res, flags) in &cqes {
                self.completion(&mut u, data, res, flags);
            }
            cqes.clear();
            u.cqes = cqes;
            // Links have their own buffers, never held: always armed again.
            let desk_free = u.buffers_free();
            for ep in std::mem::take(&mut u.starved) {
                match ep {
                    Endpoint::Desktop(id) if desk_free => self.read_held(&mut u, id),
                    Endpoint::Link(id) => self.arm_link(&mut u, id),
                    _ => u.starved.push(ep),
                }
            }
            for id in std::mem::take(&mut self.to_read) {
                self.read_held(&mut u, id);
            }
            self.uring_io_and_writes(&mut u);
            crate::status::publish_counts(&self.core, &self.status);
            let now = Instant::now();
            self.now = now;
            if now >= self.core.poll_timeout() {
                if !u.accept_armed {
                    // An accept that failed (EMFILE) ended the multishot: retry once per tick.
                    self.arm_accept(&mut u);
                }
                self.flush_lingering(now);
                self.tick_common(now);
                if self.listener.is_none() && u.accept_armed {
                    // Draining: the listener is closed, but the ring holds a reference to it.
                    let _ = u.ring.cancel(ud(K_ACCEPT, 0, 0), ud(K_CANCEL, 0, 0));
                    u.accept_armed = false;
                }
                self.core.handle_timeout(now);
                self.uring_io_and_writes(&mut u);
                crate::status::publish(&self.core, &self.status, &self.metrics);
                self.announce_ready(now, &mut ready);
                if self.core.drained(now) {
                    self.finish_uring(&mut u)?;
                    return Ok(());
                }
            }
        }
    }

    fn arm_accept(&mut self, u: &mut Uring) {
        if let Some(l) = &self.listener
            && u.ring
                .accept_multi(l.as_raw_fd(), ud(K_ACCEPT, 0, 0))
                .is_ok()
        {
            u.accept_armed = true;
        }
    }

    fn completion(&mut self, u: &mut Uring, data: u64, res: i32, flags: u32) {
        let (kind, index, generation) = ud_parts(data);
        match kind {
            K_ACCEPT => self.accepted(u, res, flags),
            K_DESKTOP => {
                let id = DesktopId {
                    slot: index,
                    generation,
                };
                self.desktop_recv(u, id, res, flags);
            }
            K_LINK => {
                let id = LinkId {
                    index: index as u16,
                    generation,
                };
                self.link_recv(u, id, res, flags);
            }
            K_SEND => self.sent(u, generation as usize, res),
            K_CONNECT => {
                let id = LinkId {
                    index: index as u16,
                    generation,
                };
                self.link_connect_done(u, id);
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- desktops

    fn accepted(&mut self, u: &mut Uring, res: i32, flags: u32) {
        if !io_uring::cqueue::more(flags) {
            u.accept_armed = false;
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                warn!(error = %io::Error::from_raw_os_error(-res), "accept failed");
                self.metrics.refusal("accept_error");
                self.metrics.accept_failures.inc();
            }
            return;
        }
        let sock = ring::adopt(res);
        let _ = sock.set_nodelay(true);
        let Ok(peer) = sock.peer_addr() else {
            return;
        };
        // A slot the core freed must be closed here before the core hands it out again.
        self.uring_apply_io(u);
        let mut sock = mio::net::TcpStream::from_std(sock);
        match self.core.accept(self.now, peer.ip(), true) {
            Ok(id) => {
                let slot = id.slot as usize;
                if self.desktops.len() <= slot {
                    self.desktops.resize_with(slot + 1, || None);
                }
                if u.desk.len() <= slot {
                    u.desk.resize(slot + 1, DeskIo::default());
                }
                let fd = sock.as_raw_fd();
                self.desktops[slot] = Some((id.generation, DesktopStream::Plain(sock)));
                u.desk[slot] = DeskIo {
                    generation: id.generation,
                    ..DeskIo::default()
                };
                if let Err(e) = u.files.open_desktop(&mut u.ring, id.slot, fd) {
                    warn!(error = %e, "io_uring: desktop socket not registered");
                    self.desktops[slot] = None;
                    self.core.desktop_lost(self.now, id, Disconnect::IoError);
                    return;
                }
                self.read_held(u, id);
            }
            Err(r) => {
                let _ = sock.write(&refusal_frame(r));
            }
        }
    }

    fn desk_io(desk: &mut [DeskIo], id: DesktopId) -> Option<&mut DeskIo> {
        desk.get_mut(id.slot as usize)
            .filter(|d| d.generation == id.generation)
    }

    fn desktop_fd(&self, id: DesktopId) -> Option<i32> {
        match self.desktops.get(id.slot as usize)? {
            Some((g, DesktopStream::Plain(s))) if *g == id.generation => Some(s.as_raw_fd()),
            _ => None,
        }
    }

    /// How operations name an open desktop's socket.
    fn desktop_sock(&self, u: &Uring, id: DesktopId) -> Option<Sock> {
        Some(u.files.desktop(id.slot, self.desktop_fd(id)?))
    }

    fn desktop_recv(&mut self, u: &mut Uring, id: DesktopId, res: i32, flags: u32) {
        let bid = io_uring::cqueue::buffer_select(flags);
        let more = io_uring::cqueue::more(flags);
        let live = self.desktop_fd(id).is_some();
        let Some(d) = Self::desk_io(&mut u.desk, id).filter(|_| live) else {
            // A closed desktop's last completions.
            if let Some(b) = bid {
                u.bufs.recycle(b);
            }
            return;
        };
        if !more {
            d.recv = false;
            d.cancelling = false;
        }
        let held = u.held.contains_key(&id.slot);
        match res {
            n if n > 0 => {
                let Some(b) = bid else { return };
                let n = n as usize;
                if held || !self.core.poll_read(id) {
                    let h = u.held.entry(id.slot).or_default();
                    if h.len() < HELD_BUFFERS {
                        h.push(Held::Data(b, n));
                        u.held_bufs += 1;
                    } else {
                        h.push(Held::Owned(u.bufs.get(b, n).to_vec()));
                        u.bufs.recycle(b);
                    }
                    self.cancel_recv(u, id);
                } else {
                    self.core.desktop_data(self.now, id, u.bufs.get(b, n));
                    u.bufs.recycle(b);
                }
            }
            0 => {
                if held {
                    u.held.entry(id.slot).or_default().push(Held::Eof);
                } else {
                    self.core.desktop_eof(self.now, id);
                }
                return;
            }
            e if e == -libc::ENOBUFS => {
                u.starved.push(Endpoint::Desktop(id));
                return;
            }
            e if e == -libc::ECANCELED => {}
            _ => {
                self.uring_drop_desktop(u, id);
                self.core.desktop_lost(self.now, id, Disconnect::IoError);
                return;
            }
        }
        if !more {
            // The receive ended (cancelled, or the kernel ended it): armed again once the
            // core wants this desktop read and nothing is held.
            self.read_held(u, id);
        }
    }

    fn cancel_recv(&mut self, u: &mut Uring, id: DesktopId) {
        if let Some(d) = Self::desk_io(&mut u.desk, id)
            && d.recv
            && !d.cancelling
        {
            d.cancelling = true;
            let _ = u
                .ring
                .cancel(ud(K_DESKTOP, id.slot, id.generation), ud(K_CANCEL, 0, 0));
        }
    }

    /// Hand over what a held-back desktop received while the core wants it, then arm its
    /// receive once nothing is held.
    fn read_held(&mut self, u: &mut Uring, id: DesktopId) {
        if self.desktop_fd(id).is_none() {
            return;
        }
        if let Some(mut held) = u.held.remove(&id.slot) {
            let mut k = 0;
            while k < held.len() && self.core.poll_read(id) {
                match held[k] {
                    Held::Data(b, n) => {
                        self.core.desktop_data(self.now, id, u.bufs.get(b, n));
                        u.bufs.recycle(b);
                        u.held_bufs -= 1;
                    }
                    Held::Owned(ref v) => self.core.desktop_data(self.now, id, v),
                    Held::Eof => self.core.desktop_eof(self.now, id),
                }
                k += 1;
            }
            if k < held.len() {
                held.drain(..k);
                u.held.insert(id.slot, held);
                return;
            }
        }
        let sock = self.desktop_sock(u, id);
        if let (Some(sock), Some(d)) = (sock, Self::desk_io(&mut u.desk, id))
            && !d.recv
            && self.core.poll_read(id)
            && u.ring
                .recv_multi(sock, u.bufs.group(), ud(K_DESKTOP, id.slot, id.generation))
                .is_ok()
        {
            d.recv = true;
        }
    }

    /// Forget a desktop's connection: cancel its receive, give back what it held.
    fn uring_drop_desktop(&mut self, u: &mut Uring, id: DesktopId) -> Option<DesktopStream> {
        self.cancel_recv(u, id);
        if let Some(held) = u.held.remove(&id.slot) {
            for h in held {
                if let Held::Data(b, _) = h {
                    u.bufs.recycle(b);
                    u.held_bufs -= 1;
                }
            }
        }
        let e = self.desktops.get_mut(id.slot as usize)?;
        if e.as_ref().is_some_and(|(g, _)| *g == id.generation) {
            // After the cancel above is queued: `close_desktop` submits it first.
            u.files.close_desktop(&mut u.ring, id.slot);
            return e.take().map(|(_, s)| s);
        }
        None
    }

    // ---------------------------------------------------------------- links

    fn link_io(links: &mut [DeskIo], id: LinkId) -> Option<&mut DeskIo> {
        links
            .get_mut(usize::from(id.index))
            .filter(|d| d.generation == id.generation)
    }

    fn link_fd(&self, id: LinkId) -> Option<i32> {
        match self.links.get(usize::from(id.index))? {
            Some(ls) if ls.generation == id.generation => Some(ls.sock.tcp().as_raw_fd()),
            _ => None,
        }
    }

    /// How operations name an open link's socket.
    fn link_sock(&self, u: &Uring, id: LinkId) -> Option<Sock> {
        Some(u.files.link(id.index, self.link_fd(id)?))
    }

    fn uring_connect(&mut self, u: &mut Uring, id: LinkId, addr: std::net::SocketAddr) {
        let i = usize::from(id.index);
        if self.links.len() <= i {
            self.links.resize_with(i + 1, || None);
        }
        if u.links.len() <= i {
            u.links.resize(i + 1, DeskIo::default());
        }
        // The configuration check allows only plain links with this driver.
        let tcp = match connect_upstream(addr) {
            Ok(s) => s,
            Err(_) => {
                self.core.link_lost(self.now, id, "connect failed");
                return;
            }
        };
        let fd = tcp.as_raw_fd();
        if u.files.open_link(&mut u.ring, id.index, fd).is_err() {
            self.core.link_lost(self.now, id, "connect failed");
            return;
        }
        let sock = u.files.link(id.index, fd);
        if u.ring
            .poll_out(sock, ud(K_CONNECT, u32::from(id.index), id.generation))
            .is_err()
        {
            u.files.close_link(&mut u.ring, id.index);
            self.core.link_lost(self.now, id, "connect failed");
            return;
        }
        self.links[i] = Some(LinkSock {
            generation: id.generation,
            sock: LinkStream::Plain(tcp),
            connected: false,
        });
        u.links[i] = DeskIo {
            generation: id.generation,
            ..DeskIo::default()
        };
    }

    fn link_connect_done(&mut self, u: &mut Uring, id: LinkId) {
        let Some(Some(ls)) = self.links.get_mut(usize::from(id.index)) else {
            return;
        };
        if ls.generation != id.generation || ls.connected {
            return;
        }
        match ls.sock.tcp().take_error() {
            Ok(None) if ls.sock.tcp().peer_addr().is_ok() => {
                ls.connected = true;
                self.arm_link(u, id);
                self.core.link_connected(self.now, id);
            }
            _ => {
                self.uring_drop_link(u, id);
                self.core.link_lost(self.now, id, "connect failed");
            }
        }
    }

    fn arm_link(&mut self, u: &mut Uring, id: LinkId) {
        let sock = self.link_sock(u, id);
        if let (Some(sock), Some(l)) = (sock, Self::link_io(&mut u.links, id))
            && !l.recv
            && u.ring
                .recv_multi(
                    sock,
                    u.link_bufs.group(),
                    ud(K_LINK, u32::from(id.index), id.generation),
                )
                .is_ok()
        {
            l.recv = true;
        }
    }

    fn link_recv(&mut self, u: &mut Uring, id: LinkId, res: i32, flags: u32) {
        let bid = io_uring::cqueue::buffer_select(flags);
        let more = io_uring::cqueue::more(flags);
        let live = self.link_fd(id).is_some();
        let Some(l) = Self::link_io(&mut u.links, id).filter(|_| live) else {
            if let Some(b) = bid {
                u.link_bufs.recycle(b);
            }
            return;
        };
        if !more {
            l.recv = false;
        }
        match res {
            n if n > 0 => {
                if let Some(b) = bid {
                    self.core
                        .link_data(self.now, id, u.link_bufs.get(b, n as usize));
                    u.link_bufs.recycle(b);
                }
                if !more {
                    self.arm_link(u, id);
                }
            }
            0 => {
                self.uring_drop_link(u, id);
                self.core.link_lost(self.now, id, "closed by server");
            }
            e if e == -libc::ENOBUFS => u.starved.push(Endpoint::Link(id)),
            e if e == -libc::ECANCELED => {}
            _ => {
                self.uring_drop_link(u, id);
                self.core.link_lost(self.now, id, "read error");
            }
        }
    }

    fn uring_drop_link(&mut self, u: &mut Uring, id: LinkId) {
        if let Some(l) = Self::link_io(&mut u.links, id) {
            if l.recv {
                let _ = u.ring.cancel(
                    ud(K_LINK, u32::from(id.index), id.generation),
                    ud(K_CANCEL, 0, 0),
                );
            }
            *l = DeskIo::default();
        }
        if let Some(e) = self.links.get_mut(usize::from(id.index))
            && e.as_ref().is_some_and(|ls| ls.generation == id.generation)
        {
            // Dropping the socket ends the connection once the table's reference is gone
            // (after the cancel above is submitted); the kernel's reference from the
            // cancelled receive goes with the cancel's completion.
            u.files.close_link(&mut u.ring, id.index);
            if let Some(ls) = e.take() {
                let _ = ls.sock.tcp().shutdown(std::net::Shutdown::Both);
            }
        }
    }

    // ---------------------------------------------------------------- writes

    /// Queue a send of `ep`'s frames, unless one is in flight (then it goes when that one
    /// completes).
    fn send(&mut self, u: &mut Uring, ep: Endpoint) {
        let (sock, io) = match ep {
            Endpoint::Desktop(id) => (self.desktop_sock(u, id), Self::desk_io(&mut u.desk, id)),
            Endpoint::Link(id) => {
                let connected = self
                    .links
                    .get(usize::from(id.index))
                    .and_then(Option::as_ref)
                    .is_some_and(|ls| ls.connected);
                (
                    self.link_sock(u, id).filter(|_| connected),
                    Self::link_io(&mut u.links, id),
                )
            }
        };
        let (Some(sock), Some(io)) = (sock, io) else {
            return;
        };
        if io.sending {
            io.again = true;
            return;
        }
        let mut bufs = SendBufs::with_capacity(8);
        let n = match ep {
            Endpoint::Desktop(id) => self.core.desktop_chunks(id, bufs.chunks_mut(), IOV),
            Endpoint::Link(id) => self.core.link_chunks(id, bufs.chunks_mut(), IOV),
        };
        if n == 0 {
            return;
        }
        io.sending = true;
        io.again = false;
        let entry = u.sends.vacant_entry();
        let key = entry.key();
        let send = entry.insert(Send { ep, bufs });
        if u.ring
            .writev(sock, &mut send.bufs, ud(K_SEND, 0, key as u32))
            .is_err()
        {
            u.sends.remove(key);
            if let Some(io) = Self::io_of(u, ep) {
                io.sending = false;
            }
        }
    }

    fn io_of(u: &mut Uring, ep: Endpoint) -> Option<&mut DeskIo> {
        match ep {
            Endpoint::Desktop(id) => Self::desk_io(&mut u.desk, id),
            Endpoint::Link(id) => Self::link_io(&mut u.links, id),
        }
    }

    fn sent(&mut self, u: &mut Uring, key: usize, res: i32) {
        let Some(send) = u.sends.try_remove(key) else {
            return;
        };
        let total = send.bufs.total();
        // A send of a full iovec array may have left frames behind it in the queue.
        let full = send.bufs.len() >= IOV;
        // The kernel is done with the buffers: `send` (and its frames) may go now.
        let ep = send.ep;
        drop(send);
        let Some(io) = Self::io_of(u, ep) else {
            return;
        };
        io.sending = false;
        let again = std::mem::take(&mut io.again);
        if res < 0 {
            match ep {
                Endpoint::Desktop(id) => {
                    self.uring_drop_desktop(u, id);
                    self.core.desktop_lost(self.now, id, Disconnect::IoError);
                }
                Endpoint::Link(id) => {
                    self.uring_drop_link(u, id);
                    self.core.link_lost(self.now, id, "write error");
                }
            }
            return;
        }
        let w = res as usize;
        match ep {
            Endpoint::Desktop(id) => self.core.desktop_written(self.now, id, w),
            Endpoint::Link(id) => self.core.link_written(self.now, id, w),
        }
        if again || full || w < total {
            self.core.writable(ep);
        }
    }

    // ---------------------------------------------------------------- the core's requests

    fn uring_apply_io(&mut self, u: &mut Uring) {
        while let Some(io) = self.core.poll_io() {
            match io {
                Io::Connect { link, addr } => self.uring_connect(u, link, addr),
                Io::CloseLink(link) => self.uring_drop_link(u, link),
                Io::Close(id) => {
                    if let Some(s) = self.uring_drop_desktop(u, id) {
                        self.close_stream(s);
                    }
                }
                Io::Read(id) => self.to_read.push(id),
            }
        }
    }

    fn uring_io_and_writes(&mut self, u: &mut Uring) {
        self.uring_apply_io(u);
        while let Some(ep) = self.core.poll_transmit() {
            self.send(u, ep);
        }
        self.uring_apply_io(u);
    }

    /// Drain finished: the core closes everything; let the last frames go for a moment.
    fn finish_uring(&mut self, u: &mut Uring) -> Result<(), WorkerError> {
        self.core.finish(Instant::now());
        let until = Instant::now() + Duration::from_millis(500);
        loop {
            self.uring_io_and_writes(u);
            if u.sends.is_empty() || Instant::now() >= until {
                break;
            }
            u.ring.submit_and_wait(Some(Duration::from_millis(10)))?;
            self.now = Instant::now();
            let mut cqes = std::mem::take(&mut u.cqes);
            u.ring.reap(&mut cqes);
            for &(data, res, flags) in &cqes {
                self.completion(u, data, res, flags);
            }
            cqes.clear();
            u.cqes = cqes;
        }
        tracing::info!("drained; exiting");
        Ok(())
    }
}
