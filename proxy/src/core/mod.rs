//! The proxy's rules, as a state machine with no I/O: the *core* of one worker.
//!
//! # Contract
//!
//! A [`Core`] holds every desktop session and every upstream link of one worker: handshakes,
//! routing, the link id slabs, subscriptions, outbound queues and budgets. It owns no socket
//! and never reads a clock. The driver (`worker`, on mio) moves bytes and time in and out:
//!
//! - **Inputs**, each with the current time: a connection accepted ([`Core::accept`]), bytes
//!   read from a desktop or a link ([`Core::desktop_data`], [`Core::link_data`]), a desktop's
//!   end of stream ([`Core::desktop_eof`]), a socket lost ([`Core::desktop_lost`],
//!   [`Core::link_lost`]), a link connected ([`Core::link_connected`]), bytes written
//!   ([`Core::desktop_written`], [`Core::link_written`]), a socket writable again
//!   ([`Core::writable`]), and the clock ([`Core::handle_timeout`]); plus operator input
//!   (reload, drain, admin commands).
//! - **Outputs**, polled after every input until they run dry:
//!   - [`Core::poll_io`]: connect a link, close a link, close a desktop, or read a desktop
//!     again ([`Io`]);
//!   - [`Core::poll_transmit`]: an endpoint with bytes to write, whose slices
//!     [`Core::desktop_slices`] / [`Core::link_slices`] give for one vectored write;
//!   - [`Core::poll_timeout`]: when [`Core::handle_timeout`] must run next;
//!   - [`Core::poll_read`]: whether a desktop may be read now (backpressure). When the
//!     answer is no, the core remembers it and emits [`Io::Read`] once it may be read again:
//!     readiness is edge-triggered, so the driver would not hear of it otherwise.
//!
//! The driver drains [`Core::poll_io`] before it accepts a new connection, so a slot the core
//! freed (with [`Io::Close`]) is never handed out while the driver still holds its socket.
//!
//! Everything a desktop or a server sends is hostile: a malformed, oversized or hostile input
//! costs only that connection (with an error frame where possible), every accepted request is
//! answered exactly once with its retry class, nothing crosses tenants, and the bytes held stay
//! within the worker's budget. `tests/sim.rs` drives a core through millions of seeded random
//! steps with faults and checks these after every step ([`Core::audit`] checks the internal
//! bookkeeping).
//!
//! # Rooms
//!
//! - [`desktop`]: one desktop's state and rules (hello order, tenant check, backpressure,
//!   deadlines);
//! - `request`: desktop frames in: framing, hello, forwarding, subscriptions;
//! - `response`: link frames in: responses, events, server control, link failure;
//! - [`link`]: one link's state machine, framing and liveness;
//! - [`queue`]: outbound queues, per-tenant fairness on links;
//! - [`ids`]: link correlation ids with generations;
//! - [`fanout`]: shared upstream subscriptions with generations;
//! - [`budget`]: the worker's byte budget and per-source counts;
//! - `outbox`: frames towards desktops, and desktops leaving;
//! - `timers`, `operator`, `audit`: the clock's work, operator input, bookkeeping checks;
//! - [`failed`]: the last desktop of each kind of failure the worker logs;
//! - `crate::router`: instance states and the routing policy.
//!
//! # Ids
//!
//! A desktop's session id is `generation << 32 | slot` ([`DesktopId`]); it is also its
//! upstream session id on every link. Link correlation ids have the same shape (see [`ids`]).
//! Generations make stale answers (after timeouts, disconnects, link reconnects) miss, so ids
//! never cross between desktops.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use deskmux_codec::{Head, control_error};
use prometheus_client::metrics::counter::Counter;
use slab::Slab;
use tracing::{debug, warn};

use crate::config::{Config, Limits, Upstream};
use crate::error::{Disconnect, Refused};
use crate::metrics::Metrics;
use crate::router::{LinkView, Router};

mod audit;
pub mod budget;
pub mod desktop;
pub mod failed;
pub mod fanout;
pub mod ids;
pub mod link;
mod operator;
mod outbox;
pub mod queue;
mod request;
mod response;
mod timers;

use budget::{Budget, Sources};
use desktop::{Binding, Desktop, Phase, STALLED};
use fanout::Fanout;
use ids::{Owner, Pending, ReqHead};
pub use link::{Link, LinkId, LinkState};

/// How often timers are checked.
pub const TICK: Duration = Duration::from_millis(100);
/// Most time a closing desktop may take to flush its last frames.
pub const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Flag: queued for a write.
pub(super) const DIRTY: u8 = 4;
/// Flag: holds a file descriptor (TCP or TLS), so it counts against `max_desktops`.
pub(super) const FD: u8 = 8;

/// What a server hello said about resume (PROTOCOL.md §4.6), kept until the proxy's own.
#[derive(Debug, Clone)]
struct ResumeInfo {
    token: Box<str>,
    grace_ms: i64,
    replayed: Option<i64>,
}

/// A desktop as the driver knows it: slot and generation (its session id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DesktopId {
    /// Slab slot (the driver's index for its socket).
    pub slot: u32,
    /// Generation.
    pub generation: u32,
}

impl DesktopId {
    /// The session id: generation in the high 32 bits, slot in the low 32.
    pub fn sid(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }

    /// From a session id.
    pub fn from_sid(sid: u64) -> DesktopId {
        DesktopId {
            slot: (sid & 0xFFFF_FFFF) as u32,
            generation: (sid >> 32) as u32,
        }
    }
}

/// Something with bytes to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A desktop connection.
    Desktop(DesktopId),
    /// A link.
    Link(LinkId),
}

/// An I/O request to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// Start a TCP connect for this link; report [`Core::link_connected`] or
    /// [`Core::link_lost`].
    Connect {
        /// The link.
        link: LinkId,
        /// Where to.
        addr: SocketAddr,
    },
    /// Drop this link's socket (it failed; the core already answered its requests).
    CloseLink(LinkId),
    /// Drop this desktop's connection (its last frames were handed over, or it took too long).
    Close(DesktopId),
    /// Read this desktop again (it was held back by [`Core::poll_read`]).
    Read(DesktopId),
}

/// Counts for `/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Desktops connected.
    pub desktops: u64,
    /// Links up.
    pub links_up: u64,
    /// Links configured.
    pub links_total: u64,
    /// Requests in flight upstream.
    pub in_flight: u64,
    /// Upstream subscriptions held or being made.
    pub subscriptions: u64,
    /// Draining after SIGTERM.
    pub draining: bool,
    /// Bytes counted against `worker_queue_bytes`.
    pub queued_bytes: u64,
}

/// The link table as the routing policy sees it.
struct LinksView<'a>(&'a [Link]);

impl LinkView for LinksView<'_> {
    fn up(&self, l: usize) -> bool {
        self.0[l].up()
    }

    fn load(&self, l: usize) -> usize {
        self.0[l].ids.len()
    }

    fn live(&self, b: Binding) -> bool {
        let l = &self.0[b.link as usize];
        l.state == LinkState::Up && l.generation == b.link_gen
    }
}

/// The proxy core of one worker. See the module docs for the contract.
pub struct Core {
    index: usize,
    limits: Limits,
    link_secret: crate::config::LinkSecret,
    cfg: Config,
    epoch: Instant,
    /// The last `now` given, in worker milliseconds and microseconds (see `ms`, `us`).
    clock: std::cell::Cell<(Instant, u32, u32)>,
    desktops: Slab<Desktop>,
    /// Desktops holding a file descriptor.
    fd_desktops: usize,
    links: Vec<Link>,
    router: Router,
    fanout: Fanout,
    /// Reconnect tokens of desktops still opening their sessions, by session id: the first
    /// server hello's, passed on in the proxy's own (PROTOCOL.md §4.1). A side table, so an
    /// idle desktop's state does not grow for a moment of its handshake; emptied on open and
    /// on close.
    reconnect: HashMap<u64, Box<str>>,
    /// Resume fields of desktops still opening their sessions, by session id: the
    /// Interaction Server's `resume` token, grace and replay count, passed on in the proxy's
    /// hello (PROTOCOL.md §4.6). A side table like `reconnect`.
    resume: HashMap<u64, ResumeInfo>,
    /// Unicast events that came for a desktop still opening: a resumed session's replay,
    /// sent right behind its `SESSION_OPEN` answer while another service's open is still
    /// out. Delivered after the hello; counted in the budget; at most `out_queue_bytes` a
    /// desktop (past it the hello is refused and the session stays detached upstream).
    early: HashMap<u64, (Vec<Bytes>, usize)>,
    /// The agent each hello named, by session id, while its sessions open (for the failure
    /// log, see `failed`); emptied on open and on close, like `reconnect`.
    agents: HashMap<u64, Box<str>>,
    /// The last desktop of each logged failure kind (see `failed`).
    last_failed: failed::LastFailed,
    /// Correlation ids of each desktop's requests in flight, by session id (PROTOCOL.md
    /// §5.2: a request reusing one is refused). Kept out of [`Desktop`], which idle
    /// connections hold by the ten thousand; an entry exists only while requests are out.
    corrs: HashMap<u64, Vec<u64>>,
    budget: Budget,
    sources: Sources,
    next_gen: u32,
    rng: fastrand::Rng,
    io: VecDeque<Io>,
    dirty: VecDeque<Endpoint>,
    /// Desktops that started closing: removed once their queue is handed over.
    closing: Vec<usize>,
    /// Desktops whose held frames may be taken now (see `settle`).
    woken: Vec<usize>,
    /// A search for a desktop to evict found none: not again before this (see `make_room`).
    no_victim_until: Option<Instant>,
    draining: Option<Instant>,
    in_flight: u64,
    /// The largest `max_in_flight` in force since start (a reload may lower the cap below
    /// what desktops already have in flight): what [`Core::audit`] holds them to.
    max_in_flight_ever: u32,
    next_tick: Instant,
    /// Worker-wide read buffer: a desktop's bytes are framed here, and only a partial frame
    /// left over gets a buffer of its own.
    arena: BytesMut,
    metrics: Metrics,
    /// Request counters for interaction, ucs, other (cached handles).
    request_counters: [Counter; 3],
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("index", &self.index)
            .field("desktops", &self.desktops.len())
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core for worker `index` with configuration `cfg`, at time `now`. `seed` drives every
    /// random choice (backoff jitter, least-outstanding draws), so a simulation replays.
    pub fn new(index: usize, cfg: &Config, now: Instant, seed: u64, metrics: Metrics) -> Core {
        let request_counters = ["interaction", "ucs", "other"].map(|n| {
            metrics
                .requests
                .get_or_create(&[("service", n.to_string())])
                .clone()
        });
        let mut core = Core {
            index,
            limits: cfg.limits.clone(),
            link_secret: cfg.link_secret.clone(),
            cfg: cfg.clone(),
            epoch: now,
            clock: std::cell::Cell::new((now, 0, 0)),
            desktops: Slab::new(),
            fd_desktops: 0,
            links: Vec::new(),
            router: Router::with_seed(seed ^ 0x5EED),
            fanout: Fanout::new(),
            reconnect: HashMap::new(),
            resume: HashMap::new(),
            early: HashMap::new(),
            agents: HashMap::new(),
            last_failed: failed::LastFailed::default(),
            corrs: HashMap::new(),
            budget: Budget::new(cfg.limits.worker_queue_bytes),
            sources: Sources::default(),
            // The worker index sits in the generation's top byte, so session ids are unique
            // across the workers of one proxy (they only must be unique per link).
            next_gen: ((index as u32 & 0xFF) << 24) | 1,
            rng: fastrand::Rng::with_seed(seed),
            io: VecDeque::new(),
            dirty: VecDeque::new(),
            closing: Vec::new(),
            woken: Vec::new(),
            no_victim_until: None,
            draining: None,
            in_flight: 0,
            max_in_flight_ever: cfg.limits.max_in_flight,
            next_tick: now,
            arena: BytesMut::with_capacity(64 * 1024),
            metrics,
            request_counters,
        };
        for u in cfg.upstream.clone() {
            core.add_instance(now, u);
        }
        core.router.tenant_pins = tenant_map(cfg);
        core.router.set_partitions(cfg);
        core.router.set_capabilities(cfg);
        core
    }

    pub(super) fn add_instance(&mut self, now: Instant, u: Upstream) {
        let first = self.links.len();
        let inst = self.router.instances.len();
        for k in 0..u.links {
            let name = format!("proxy-w{}-{}-{}", self.index, u.name, k);
            self.links.push(Link::new(
                name,
                u.addr,
                inst,
                now,
                self.limits.max_frame as usize,
            ));
        }
        let ids = (first..self.links.len()).collect();
        let balance = self
            .cfg
            .clusters
            .get(&u.cluster)
            .map(|c| c.balance)
            .unwrap_or_default();
        self.router.add(u, ids, balance);
    }

    /// Worker milliseconds at `now` (u32, wraps after 49 days; compared with wrapping_sub).
    pub(super) fn ms(&self, now: Instant) -> u32 {
        self.clock_at(now).0
    }

    /// Worker microseconds at `now` (u32, wraps after 71 minutes; for request times, which
    /// are bounded by `request_timeout_ms`).
    pub(super) fn us(&self, now: Instant) -> u32 {
        self.clock_at(now).1
    }

    fn clock_at(&self, now: Instant) -> (u32, u32) {
        // One input's handling asks this many times with the same `now`: keep the last.
        let (at, ms, us) = self.clock.get();
        if at == now {
            return (ms, us);
        }
        let d = now.saturating_duration_since(self.epoch);
        let (ms, us) = (d.as_millis() as u32, d.as_micros() as u32);
        self.clock.set((now, ms, us));
        (ms, us)
    }

    /// The live desktop named by `id`.
    pub(super) fn slot_of(&self, id: DesktopId) -> Option<usize> {
        let slot = id.slot as usize;
        self.desktops
            .get(slot)
            .is_some_and(|d| d.sid == id.sid())
            .then_some(slot)
    }

    /// The live desktop with session id `sid`.
    pub(super) fn slot_of_sid(&self, sid: u64) -> Option<usize> {
        self.slot_of(DesktopId::from_sid(sid))
    }

    pub(super) fn link_of(&self, id: LinkId) -> Option<usize> {
        let i = id.index as usize;
        self.links
            .get(i)
            .is_some_and(|l| l.generation == id.generation)
            .then_some(i)
    }

    // ------------------------------------------------------------------ inputs: desktops

    /// A connection was accepted from `peer`. `fd`: it holds a file descriptor (TCP, TLS),
    /// so it counts against `max_desktops`; QUIC desktops are capped by their endpoint.
    ///
    /// # Errors
    /// [`Refused`]: tell the peer [`refusal_frame`] (best effort) and close it.
    pub fn accept(&mut self, now: Instant, peer: IpAddr, fd: bool) -> Result<DesktopId, Refused> {
        let refused = if self.draining.is_some() {
            Some(Refused::Draining)
        } else if fd && self.fd_desktops >= self.limits.max_desktops {
            Some(Refused::DesktopCap)
        } else {
            None
        };
        let source = match refused {
            Some(r) => Err(r),
            None => self
                .sources
                .acquire(peer, self.limits.max_desktops_per_source)
                .ok_or(Refused::SourceCap),
        };
        let source = match source {
            Ok(s) => s,
            Err(r) => {
                self.metrics.error(r.error().code.name());
                self.metrics.refusal(r.name());
                return Err(r);
            }
        };
        let now_ms = self.ms(now);
        let generation = self.next_gen;
        let hi = self.next_gen & 0xFF00_0000;
        self.next_gen = hi | (self.next_gen.wrapping_add(1) & 0x00FF_FFFF).max(1);
        let entry = self.desktops.vacant_entry();
        let id = DesktopId {
            slot: entry.key() as u32,
            generation,
        };
        let mut d = Desktop::new(id.sid(), source, now_ms);
        if fd {
            d.flags |= FD;
            self.fd_desktops += 1;
        }
        entry.insert(d);
        self.metrics.desktops.inc();
        debug!(sid = id.sid(), %peer, "accepted");
        Ok(id)
    }

    /// Whether desktop `id` may be read now. When not (backpressure, closing, or end of
    /// stream), the core emits [`Io::Read`] once it may be read again.
    pub fn poll_read(&mut self, id: DesktopId) -> bool {
        let Some(slot) = self.slot_of(id) else {
            return false;
        };
        let ok = self.may_read(slot);
        if !ok {
            self.desktops[slot].flags |= STALLED;
        }
        ok
    }

    pub(super) fn may_read(&self, slot: usize) -> bool {
        let d = &self.desktops[slot];
        if d.phase == Phase::Closing || d.has(desktop::EOF) {
            return false;
        }
        if !self.within_input_budget(d) {
            return false;
        }
        let held = d.rx.as_ref().map_or(0, |rx| rx.buf.len());
        match d.phase {
            Phase::Opening => held < self.limits.hello_max_frame as usize,
            _ => d.can_take_frame(&self.limits),
        }
    }

    /// The µs a desktop's `n` bytes cost against its input budget.
    pub(super) fn input_cost_us(&self, n: usize) -> u32 {
        let rate = self.limits.desktop_read_bytes_per_s;
        if rate == 0 {
            return 0;
        }
        // Capped well under the clock's half range, so that the comparisons stay right.
        ((n as u64).saturating_mul(1_000_000) / rate).min(1 << 29) as u32
    }

    /// Whether desktop `d` is within its input budget at the last clock reading: what it has
    /// sent is paid for no further ahead than a burst of two `max_frame`s.
    fn within_input_budget(&self, d: &Desktop) -> bool {
        if self.limits.desktop_read_bytes_per_s == 0 {
            return true;
        }
        let now_us = self.clock.get().2;
        let ahead = d.paid_us.wrapping_sub(now_us) as i32;
        ahead <= self.input_cost_us(2 * self.limits.max_frame as usize) as i32
    }

    /// Bytes read from desktop `id`. Call only while [`Core::poll_read`] says yes; a read
    /// of up to 64 KiB at a time keeps what is held back bounded.
    pub fn desktop_data(&mut self, now: Instant, id: DesktopId, data: &[u8]) {
        let Some(slot) = self.slot_of(id) else {
            return;
        };
        self.take_bytes(now, slot, data);
        self.settle(now);
    }

    /// Desktop `id` shut its sending side: it still gets the answer to everything it sent,
    /// then it is closed.
    pub fn desktop_eof(&mut self, now: Instant, id: DesktopId) {
        let Some(slot) = self.slot_of(id) else {
            return;
        };
        self.desktops[slot].flags |= desktop::EOF;
        self.finish_eof(now, slot);
        self.settle(now);
    }

    /// Desktop `id`'s connection is gone (error, reset); the driver already dropped it.
    pub fn desktop_lost(&mut self, now: Instant, id: DesktopId, why: Disconnect) {
        let Some(slot) = self.slot_of(id) else {
            return;
        };
        self.close_desktop(now, slot, why);
        self.remove_desktop(slot, false);
        self.settle(now);
    }

    // ------------------------------------------------------------------ inputs: links

    /// Link `id`'s TCP connect completed.
    pub fn link_connected(&mut self, now: Instant, id: LinkId) {
        let Some(i) = self.link_of(id) else {
            return;
        };
        let accept_max = self.limits.max_frame as usize;
        let secret = self.link_secret.clone();
        if let Some(hello) = self.links[i].connected(now, secret.as_bytes(), accept_max) {
            self.push_link_control(now, i, hello, 0);
        }
        self.settle(now);
    }

    /// Bytes read from link `id`.
    pub fn link_data(&mut self, now: Instant, id: LinkId, data: &[u8]) {
        let Some(i) = self.link_of(id) else {
            return;
        };
        let generation = self.links[i].generation;
        self.links[i].feed(data);
        // A frame may fail the link (e.g. a bad hello ack): stop there.
        while self.links[i].generation == generation {
            match self.links[i].next_frame(now) {
                Ok(Some(d)) => self.link_frame(now, i, d),
                Ok(None) => break,
                Err(e) => {
                    warn!(link = %self.links[i].name, error = %e, "framing lost on link");
                    self.fail_link(now, i, "framing lost");
                }
            }
        }
        self.settle(now);
    }

    /// Link `id` failed in the driver (connect refused, closed, read or write error).
    pub fn link_lost(&mut self, now: Instant, id: LinkId, why: &'static str) {
        if let Some(i) = self.link_of(id) {
            self.fail_link(now, i, why);
        }
        self.settle(now);
    }

    // ------------------------------------------------------------------ writes

    /// `ep`'s socket is writable again.
    pub fn writable(&mut self, ep: Endpoint) {
        self.mark_dirty(ep);
    }

    pub(super) fn mark_dirty(&mut self, ep: Endpoint) {
        match ep {
            Endpoint::Desktop(id) => {
                if let Some(slot) = self.slot_of(id) {
                    let d = &mut self.desktops[slot];
                    if !d.has(DIRTY) {
                        d.flags |= DIRTY;
                        self.dirty.push_back(ep);
                    }
                }
            }
            Endpoint::Link(id) => {
                if let Some(i) = self.link_of(id)
                    && !self.links[i].dirty
                {
                    self.links[i].dirty = true;
                    self.dirty.push_back(ep);
                }
            }
        }
    }

    pub(super) fn mark_desktop_dirty(&mut self, slot: usize) {
        let d = &mut self.desktops[slot];
        if !d.has(DIRTY) {
            d.flags |= DIRTY;
            self.dirty
                .push_back(Endpoint::Desktop(DesktopId::from_sid(d.sid)));
        }
    }

    pub(super) fn mark_link_dirty(&mut self, i: usize) {
        let l = &mut self.links[i];
        if !l.dirty
            && !matches!(
                l.state,
                LinkState::Down { .. } | LinkState::Connecting { .. }
            )
        {
            l.dirty = true;
            self.dirty.push_back(Endpoint::Link(l.id(i)));
        }
    }

    /// The next endpoint with bytes to write (each is returned once per
    /// [`Core::writable`] or new frame). Links come first in the order they were queued.
    pub fn poll_transmit(&mut self) -> Option<Endpoint> {
        while let Some(ep) = self.dirty.pop_front() {
            match ep {
                Endpoint::Desktop(id) => {
                    if let Some(slot) = self.slot_of(id) {
                        self.desktops[slot].flags &= !DIRTY;
                        return Some(ep);
                    }
                }
                Endpoint::Link(id) => {
                    if let Some(i) = self.link_of(id) {
                        self.links[i].dirty = false;
                        if !matches!(
                            self.links[i].state,
                            LinkState::Down { .. } | LinkState::Connecting { .. }
                        ) {
                            return Some(ep);
                        }
                    }
                }
            }
        }
        None
    }

    /// Fill `iov` with desktop `id`'s unwritten bytes; returns the slices used.
    pub fn desktop_slices<'a>(&'a self, id: DesktopId, iov: &mut [IoSlice<'a>]) -> usize {
        match self.slot_of(id) {
            Some(slot) => self.desktops[slot].out.slices(iov),
            None => 0,
        }
    }

    /// Push shared handles to desktop `id`'s unwritten frames (at most `max`) onto `out`:
    /// for a driver whose write completes after the call (io_uring), the bytes stay alive
    /// until it drops them. Report what was written with [`Core::desktop_written`].
    pub fn desktop_chunks(&self, id: DesktopId, out: &mut Vec<Bytes>, max: usize) -> usize {
        match self.slot_of(id) {
            Some(slot) => self.desktops[slot].out.chunks(out, max),
            None => 0,
        }
    }

    /// `n` bytes of desktop `id`'s queue were written.
    pub fn desktop_written(&mut self, now: Instant, id: DesktopId, n: usize) {
        let Some(slot) = self.slot_of(id) else {
            return;
        };
        let d = &mut self.desktops[slot];
        let freed = d.out.consume(n);
        self.budget.sub(freed);
        if d.phase == Phase::Closing {
            self.closing.push(slot);
        } else if freed > 0 && (d.rx.is_some() || d.has(STALLED)) {
            // Its backlog shrank: it may be read again, its held frames taken.
            self.woken.push(slot);
        }
        self.settle(now);
    }

    /// Fill `iov` with link `id`'s next bytes; returns the slices used.
    pub fn link_slices<'a>(&'a mut self, id: LinkId, iov: &mut [IoSlice<'a>]) -> usize {
        match self.link_of(id) {
            Some(i) => self.links[i].out.slices(iov),
            None => 0,
        }
    }

    /// Like [`Core::desktop_chunks`], for link `id` (report with [`Core::link_written`]).
    pub fn link_chunks(&mut self, id: LinkId, out: &mut Vec<Bytes>, max: usize) -> usize {
        match self.link_of(id) {
            Some(i) => self.links[i].out.chunks(out, max),
            None => 0,
        }
    }

    /// `n` bytes of link `id`'s queue were written.
    pub fn link_written(&mut self, _now: Instant, id: LinkId, n: usize) {
        let Some(i) = self.link_of(id) else {
            return;
        };
        let freed = self.links[i].out.consume(n);
        self.budget.sub(freed);
    }

    // ------------------------------------------------------------------ outputs

    /// The next I/O request for the driver.
    pub fn poll_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }

    /// When [`Core::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// Run the timers due at `now`: link connects, handshakes, heartbeats and liveness,
    /// request timeouts, desktop deadlines and heartbeats, and the close-flush limit.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        self.tick_links(now);
        self.tick_desktops(now);
        self.count_sessions();
        self.settle(now);
    }

    // ------------------------------------------------------------------ links

    pub(super) fn push_link_control(&mut self, now: Instant, l: usize, b: Bytes, id: u64) {
        self.budget.add(b.len());
        self.links[l].push_control(now, b, id);
        self.mark_link_dirty(l);
    }

    pub(super) fn push_link_request(
        &mut self,
        now: Instant,
        l: usize,
        tenant: u32,
        b: Bytes,
        id: u64,
    ) {
        self.budget.add(b.len());
        self.links[l].push_request(now, tenant, b, id);
        self.mark_link_dirty(l);
    }

    /// Record a request in link `l`'s id slab and return its link correlation id.
    pub(super) fn track(
        &mut self,
        now: Instant,
        l: usize,
        owner: Owner,
        req: &Head,
        reroute: bool,
    ) -> u64 {
        self.in_flight += 1;
        self.metrics.in_flight.inc();
        let started_us = self.us(now);
        self.links[l].ids.insert(Pending {
            owner,
            req: ReqHead::of(req),
            started_us,
            reroute,
        })
    }

    pub(super) fn connect_link(&mut self, now: Instant, i: usize) {
        self.metrics.link_connects.inc();
        self.links[i].connecting(now);
        self.io.push_back(Io::Connect {
            link: self.links[i].id(i),
            addr: self.links[i].addr,
        });
    }

    pub(super) fn link_ok(&self, b: Binding) -> bool {
        LinksView(&self.links).live(b)
    }

    // ------------------------------------------------------------------ state for the driver

    /// Whether every link is up (the supervisor announces the port then).
    pub fn all_links_up(&self) -> bool {
        self.links.iter().all(|l| l.state == LinkState::Up)
    }

    /// Whether anything is queued for a live socket.
    pub fn has_queued(&self) -> bool {
        self.links.iter().any(|l| {
            !l.out.is_empty() && matches!(l.state, LinkState::Up | LinkState::Handshaking { .. })
        }) || self.desktops.iter().any(|(_, d)| !d.out.is_empty())
    }

    /// Counts for `/status`.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            desktops: self.desktops.len() as u64,
            links_up: self
                .links
                .iter()
                .filter(|l| l.state == LinkState::Up)
                .count() as u64,
            links_total: self.links.len() as u64,
            in_flight: self.in_flight,
            subscriptions: self.fanout.len() as u64,
            draining: self.draining.is_some(),
            queued_bytes: self.budget.used() as u64,
        }
    }

    /// The router (instance states, for `/status` and metrics).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The links.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// Whether link `l` is up and not draining (for instance states).
    pub fn link_up(&self, l: usize) -> bool {
        let l = &self.links[l];
        l.state == LinkState::Up && !l.draining
    }
}

/// The frame telling a refused connection why.
pub fn refusal_frame(r: Refused) -> Bytes {
    let e = r.error();
    control_error(0, e.code, e.message).freeze()
}

/// The (tenant, service) → instance map of a configuration's tenant routing.
pub(super) fn tenant_map(c: &Config) -> std::collections::HashMap<(u32, u8), String> {
    c.tenant
        .iter()
        .flat_map(|t| t.pins().map(|(s, _, i)| ((t.id, s), i.to_string())))
        .collect()
}
