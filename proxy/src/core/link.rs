//! One upstream link: its state machine, its write queue, its id slab and its framing.
//!
//! ```text
//!        connect due               socket connected          LINK_HELLO answered ok
//! Down ─────────────▶ Connecting ──────────────────▶ Handshaking ──────────────────▶ Up
//!  ▲  (backoff with      │ refused / 5 s                 │ refused / bad ack / 5 s      │
//!  │   ±50 % jitter)     ▼                               ▼                              │
//!  └──────────────────── fail ◀──────────────────────────┴──────────────────────────────┘
//!                 closed, write error, bad framing, no whole frame for 3 heartbeats,
//!                 a frame begun and not finished within link_frame_timeout_ms
//! ```
//!
//! Every failure bumps the link's *generation* (its incarnation): a desktop session opened on
//! an earlier incarnation no longer matches, and the new connection starts with a new id slab.
//!
//! Liveness counts whole frames, not bytes: a server that sends the head of a 10 MiB frame and
//! then trickles (or nothing) keeps no link alive. A frame larger than the proxy accepts
//! (`limits.max_frame`, announced in `LINK_HELLO`) does not lose framing: its length is known,
//! so it is skipped as its bytes arrive ([`FrameDecoder::next_or_skip`]) and the core answers
//! its request with `RESPONSE_TOO_LARGE`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{self, LinkHello, LinkHelloAck};
use deskmux_codec::{
    Decoded, ErrorCode, Frame, FrameDecoder, FrameError, Head, Kind, Service, empty_frame,
};

use crate::config::Limits;
use crate::core::ids::{IdSlab, Pending};
use crate::core::queue::{LinkQueue, Queued};

/// Link connect + hello deadline.
pub const LINK_HANDSHAKE: Duration = Duration::from_secs(5);
/// Read buffer capacity a link keeps between frames.
const RX_KEEP: usize = 1024 * 1024;

/// A link as the driver knows it: index and incarnation. Anything the driver reports about an
/// earlier incarnation is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId {
    /// Global link index in the worker.
    pub index: u16,
    /// Incarnation.
    pub generation: u32,
}

/// Where a link is (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected; reconnect at `retry_at`.
    Down {
        /// When to try again.
        retry_at: Instant,
    },
    /// TCP connect in progress.
    Connecting {
        /// Since when.
        since: Instant,
    },
    /// `LINK_HELLO` sent, waiting for its answer.
    Handshaking {
        /// Since when.
        since: Instant,
    },
    /// Carrying sessions.
    Up,
}

/// What the clock says about a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTick {
    /// Nothing due.
    None,
    /// Connect now.
    Connect,
    /// Fail it, for this reason.
    Fail(&'static str),
    /// Send a heartbeat (then check request timeouts).
    Heartbeat,
    /// Check request timeouts.
    Timeouts,
}

/// What a failure left to answer.
#[derive(Debug)]
pub struct Failed {
    /// Whether the link was up (its desktops must be told).
    pub was_up: bool,
    /// The incarnation that died.
    pub dead_gen: u32,
    /// Every request in flight, by link id, with the code it must be answered with.
    pub pending: Vec<(u64, Pending, ErrorCode)>,
    /// Frames never completely written, by link id (for resubmission elsewhere).
    pub unsent: HashMap<u64, Bytes>,
    /// Queue bytes released.
    pub freed: usize,
    /// The retry delay chosen.
    pub retry_in: Duration,
}

/// One upstream link.
#[derive(Debug)]
pub struct Link {
    /// Its name (`proxy-w<worker>-<instance>-<k>`), sent in `LINK_HELLO`.
    pub name: String,
    /// The server's address.
    pub addr: SocketAddr,
    /// Router index of its instance.
    pub instance: usize,
    /// State machine.
    pub state: LinkState,
    /// Incarnation: bumped every time the link fails.
    pub generation: u32,
    /// Requests in flight.
    pub ids: IdSlab,
    /// Frames to write.
    pub out: LinkQueue,
    rx: BytesMut,
    dec: FrameDecoder,
    /// When the frame now being read began, if one is.
    frame_since: Option<Instant>,
    /// Consecutive failures (backoff).
    pub failures: u32,
    /// When the last whole frame arrived.
    pub last_frame: Instant,
    /// When the last frame was queued.
    pub last_tx: Instant,
    /// The server's heartbeat interval.
    pub heartbeat: Duration,
    /// Largest frame the server accepts (its link hello ack).
    pub max_frame: usize,
    /// The server sent GO_AWAY: no new sessions here.
    pub draining: bool,
    /// Queued for a write.
    pub dirty: bool,
    /// Removed by a reload: no new sessions, not reconnected.
    pub retired: bool,
    /// When the id slab is next searched for requests past their timeout.
    pub next_expiry: Instant,
}

impl Link {
    /// A link that will connect at once; `accept_max` is the largest frame the proxy accepts
    /// on it.
    pub fn new(
        name: String,
        addr: SocketAddr,
        instance: usize,
        now: Instant,
        accept_max: usize,
    ) -> Link {
        Link {
            name,
            addr,
            instance,
            state: LinkState::Down { retry_at: now },
            generation: 1,
            ids: IdSlab::new(),
            out: LinkQueue::default(),
            rx: BytesMut::new(),
            dec: FrameDecoder::new(accept_max),
            frame_since: None,
            failures: 0,
            last_frame: now,
            last_tx: now,
            heartbeat: Duration::from_secs(5),
            max_frame: deskmux_codec::DEFAULT_MAX_FRAME_LEN,
            draining: false,
            dirty: false,
            retired: false,
            next_expiry: now,
        }
    }

    /// Up and taking new sessions.
    pub fn up(&self) -> bool {
        self.state == LinkState::Up && !self.draining && !self.retired
    }

    /// The driver's name for incarnation `generation` of link `index`.
    pub fn id(&self, index: usize) -> LinkId {
        LinkId {
            index: index as u16,
            generation: self.generation,
        }
    }

    /// A connect was started.
    pub fn connecting(&mut self, now: Instant) {
        self.state = LinkState::Connecting { since: now };
        self.last_frame = now;
        self.last_tx = now;
    }

    /// The socket connected: the `LINK_HELLO` to send first. It announces `accept_max`, the
    /// largest frame the proxy accepts on the link.
    pub fn connected(&mut self, now: Instant, secret: &[u8], accept_max: usize) -> Option<Bytes> {
        if !matches!(self.state, LinkState::Connecting { .. }) {
            return None;
        }
        self.state = LinkState::Handshaking { since: now };
        self.last_frame = now;
        let hello = LinkHello {
            version: 1,
            link: &self.name,
            secret,
            max_frame: Some(u32::try_from(accept_max).unwrap_or(u32::MAX)),
        };
        let mut h = Head::new(Kind::Request, Service::Control, msg::control::LINK_HELLO);
        h.correlation = 1;
        Frame::build(h, |w| hello.write(w)).ok().map(Frame::freeze)
    }

    /// The answer to `LINK_HELLO`: on success the link is up and the announced state is
    /// returned.
    ///
    /// # Errors
    /// Why the link must fail: refused, or a bad ack.
    pub fn hello_answered<'f>(
        &mut self,
        f: &'f Frame,
    ) -> Result<msg::ServiceState<'f>, &'static str> {
        if f.error().is_some() {
            return Err("link hello refused");
        }
        let a = LinkHelloAck::read(f.body()).map_err(|_| "bad link hello ack")?;
        self.heartbeat = Duration::from_millis(u64::from(a.heartbeat_ms.max(100)));
        self.max_frame = a.max_frame as usize;
        self.state = LinkState::Up;
        self.failures = 0;
        self.draining = false;
        Ok(a.state)
    }

    /// Bytes read from the socket: call [`Link::next_frame`] until it gives `None`.
    pub fn feed(&mut self, data: &[u8]) {
        self.rx.extend_from_slice(data);
    }

    /// The next frame (or the head of a frame over the limit that went by) from what was fed.
    /// Liveness is stamped per whole frame; a frame begun is timed from `now`.
    ///
    /// # Errors
    /// Framing is lost (bad magic or version): the link must fail.
    pub fn next_frame(&mut self, now: Instant) -> Result<Option<Decoded>, FrameError> {
        if let Some(d) = self.dec.next_or_skip(&mut self.rx)? {
            self.last_frame = now;
            self.frame_since = None;
            return Ok(Some(d));
        }
        if self.rx.is_empty() && !self.dec.in_frame() {
            self.frame_since = None;
            // A buffer grown for one big frame is given back between frames; one of the
            // usual size is kept (dropping it would cost an allocation per read).
            if self.rx.capacity() > RX_KEEP {
                self.rx = BytesMut::new();
            }
        } else if self.frame_since.is_none() {
            self.frame_since = Some(now);
        }
        Ok(None)
    }

    /// [`Link::feed`], then every frame in `out` (tests).
    ///
    /// # Errors
    /// Framing is lost.
    #[cfg(test)]
    fn ingest(
        &mut self,
        now: Instant,
        data: &[u8],
        out: &mut Vec<Decoded>,
    ) -> Result<(), FrameError> {
        self.feed(data);
        while let Some(d) = self.next_frame(now)? {
            out.push(d);
        }
        Ok(())
    }

    /// Queue one of the proxy's own frames.
    pub fn push_control(&mut self, now: Instant, bytes: Bytes, id: u64) {
        self.out.push_control(Queued::new(bytes, id));
        self.last_tx = now;
    }

    /// Queue a desktop request of `tenant`.
    pub fn push_request(&mut self, now: Instant, tenant: u32, bytes: Bytes, id: u64) {
        self.out.push_request(tenant, Queued::new(bytes, id));
        self.last_tx = now;
    }

    /// What is due at `now`. `draining`: the worker is shutting down (no reconnects).
    pub fn tick(&self, now: Instant, limits: &Limits, draining: bool) -> LinkTick {
        match self.state {
            LinkState::Down { retry_at } => {
                if now >= retry_at && !self.retired && !draining {
                    LinkTick::Connect
                } else {
                    LinkTick::None
                }
            }
            LinkState::Connecting { since } | LinkState::Handshaking { since } => {
                if now.saturating_duration_since(since) > LINK_HANDSHAKE {
                    LinkTick::Fail("link handshake timeout")
                } else {
                    LinkTick::None
                }
            }
            LinkState::Up => {
                let mut hb = self.heartbeat;
                // With a proxy-side interval, also probe a link that sends but delivers no
                // whole frame, so a hung server is detected while requests keep flowing.
                let mut probe = false;
                let quiet = now.saturating_duration_since(self.last_frame);
                if limits.link_heartbeat_ms > 0 {
                    hb = hb.min(Duration::from_millis(u64::from(
                        limits.link_heartbeat_ms.max(20),
                    )));
                    probe = quiet >= hb;
                }
                if quiet > hb * 3 {
                    return LinkTick::Fail("no whole frame for 3 heartbeats");
                }
                if let Some(s) = self.frame_since
                    && now.saturating_duration_since(s)
                        > Duration::from_millis(u64::from(limits.link_frame_timeout_ms))
                {
                    return LinkTick::Fail(
                        "a frame was not completed within link_frame_timeout_ms",
                    );
                }
                if probe || now.saturating_duration_since(self.last_tx) >= hb {
                    LinkTick::Heartbeat
                } else {
                    LinkTick::Timeouts
                }
            }
        }
    }

    /// A heartbeat request to queue.
    pub fn heartbeat_frame() -> Bytes {
        empty_frame(Head::new(
            Kind::Request,
            Service::Control,
            msg::control::HEARTBEAT,
        ))
        .freeze()
    }

    /// The link died: schedule a reconnect after `backoff` (the caller draws its jitter), end
    /// this incarnation, and hand back everything that must be answered.
    pub fn fail(
        &mut self,
        now: Instant,
        limits: &Limits,
        jitter: impl FnOnce(u64) -> u64,
    ) -> Failed {
        let was_up = self.state == LinkState::Up;
        self.failures = self.failures.saturating_add(1);
        let base = u64::from(limits.link_backoff_min_ms)
            .saturating_mul(1u64 << self.failures.min(16).saturating_sub(1))
            .min(u64::from(limits.link_backoff_max_ms));
        let retry_in = Duration::from_millis(jitter(base));
        self.state = LinkState::Down {
            retry_at: now + retry_in,
        };
        let dead_gen = self.generation;
        self.generation = self.generation.wrapping_add(1).max(1);
        let (left, freed) = self.out.take_all();
        let unsent: HashMap<u64, Bytes> = left
            .into_iter()
            .filter(|q| q.id != 0)
            .map(|q| (q.id, q.bytes))
            .collect();
        self.rx = BytesMut::new();
        self.dec = FrameDecoder::new(self.dec.max_frame_len());
        self.frame_since = None;
        self.draining = false;
        self.dirty = false;
        Failed {
            was_up,
            dead_gen,
            pending: self.ids.fail_all(|id| unsent.contains_key(&id)),
            unsent,
            freed,
            retry_in,
        }
    }

    /// The largest frame accepted on the link changed (SIGHUP `limits.max_frame`).
    pub fn set_accept_max(&mut self, n: usize) {
        self.dec.set_max_frame_len(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deskmux_codec::BodyWriter;

    fn link(now: Instant) -> Link {
        Link::new("l".into(), ([127, 0, 0, 1], 1).into(), 0, now, 4096)
    }

    fn up(l: &mut Link, now: Instant) {
        l.connecting(now);
        let hello = l.connected(now, b"s", 4096).unwrap();
        let h = Head::parse(&hello).unwrap().unwrap();
        let body = deskmux_codec::BodyRef::new(&hello[32..]);
        assert_eq!(LinkHello::read(body).unwrap().max_frame, Some(4096));
        let mut r = h;
        r.kind = Kind::Response;
        let ack = Frame::build(r, |w: &mut BodyWriter<'_>| {
            msg::LinkHelloAck {
                max_frame: 1 << 20,
                heartbeat_ms: 1000,
                state: msg::ServiceState {
                    state: msg::State::Running,
                    role: msg::Role::Primary,
                    instance: "x",
                },
            }
            .write(w)
        })
        .unwrap();
        l.hello_answered(&ack).unwrap();
        assert!(l.up());
    }

    #[test]
    fn liveness_counts_whole_frames_not_bytes() {
        let t0 = Instant::now();
        let limits = Limits {
            link_frame_timeout_ms: 1000,
            ..Limits::default()
        };
        let mut l = link(t0);
        up(&mut l, t0);
        // A head announcing 2 KiB, then a byte every 500 ms: bytes arrive, no frame completes.
        let mut h = Head::new(Kind::Response, Service::Ucs, 1);
        h.body_len = 2048;
        let mut out = Vec::new();
        l.ingest(t0, &h.to_bytes(), &mut out).unwrap();
        let mut t = t0;
        let mut failed = None;
        for _ in 0..20 {
            t += Duration::from_millis(500);
            l.ingest(t, &[0], &mut out).unwrap();
            if let LinkTick::Fail(why) = l.tick(t, &limits, false) {
                failed = Some((t - t0, why));
                break;
            }
        }
        let (after, why) = failed.expect("a trickling link fails");
        assert!(out.is_empty());
        assert!(why.contains("link_frame_timeout_ms"), "{why}");
        assert_eq!(after, Duration::from_millis(1500));
    }

    #[test]
    fn oversized_frames_are_skipped_and_count_as_frames() {
        let t0 = Instant::now();
        let mut l = link(t0);
        up(&mut l, t0);
        let mut h = Head::new(Kind::Response, Service::Ucs, 1);
        h.correlation = 42;
        h.body_len = 10_000;
        let mut out = Vec::new();
        l.ingest(t0, &h.to_bytes(), &mut out).unwrap();
        let t1 = t0 + Duration::from_millis(10);
        l.ingest(t1, &vec![0; 10_000], &mut out).unwrap();
        assert!(matches!(&out[..], [Decoded::Skipped(s)] if s.correlation == 42));
        assert_eq!(l.last_frame, t1);
        assert_eq!(l.tick(t1, &Limits::default(), false), LinkTick::Timeouts);
        // Bad magic fails the link.
        assert!(l.ingest(t1, b"XXXX", &mut out).is_err());
    }

    #[test]
    fn failure_bumps_generation_and_backs_off() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let mut l = link(t0);
        up(&mut l, t0);
        let f = l.fail(t0, &limits, |base| base);
        assert!(f.was_up);
        assert_eq!((f.dead_gen, l.generation), (1, 2));
        assert_eq!(f.retry_in, Duration::from_millis(100));
        let f2 = l.fail(t0, &limits, |base| base);
        assert!(!f2.was_up);
        assert_eq!(f2.retry_in, Duration::from_millis(200));
        assert_eq!(l.tick(t0, &limits, false), LinkTick::None);
        assert_eq!(l.tick(t0 + f2.retry_in, &limits, false), LinkTick::Connect);
        assert_eq!(l.tick(t0 + f2.retry_in, &limits, true), LinkTick::None);
    }
}
