//! One desktop connection's protocol state: handshake phase, authenticated tenant, in-flight
//! count, upstream bindings, the bounded outbound queue and the partial frame being read.
//!
//! ```text
//!            HELLO                 all SESSION_OPENs ok
//! AwaitHello ─────▶ Opening ────────────────────────────▶ Open
//!     │                │ AUTH_FAILED / UNAVAILABLE           │ left, half-closed and answered,
//!     │ deadline       ▼                                     │ link lost + left, slow consumer,
//!     └──────────▶ Closing ◀──────────────────────────────────┘ deadline, drain
//! ```
//!
//! [`Desktop::classify`] decides what to do with each frame from the desktop and
//! [`Desktop::timer`] what the clock says about it; both are pure, so the rules are unit-tested
//! here. The struct is kept compact because tens of thousands of them sit idle: no read buffer
//! while no frame is partial (`rx` is `None`), an empty `VecDeque` (no heap) while nothing is
//! queued, and no peer address (a 4-byte index into the per-source table instead).

use bytes::BytesMut;
use deskmux_codec::msg::{control, ixn};
use deskmux_codec::{ErrorCode, Flags, FrameDecoder, Head, Kind, Service};

use crate::config::Limits;
use crate::core::fanout::SubKey;
use crate::core::queue::OutQueue;
use crate::error::ProxyError;

/// Most upstream bindings a desktop may have: one per service, or one per partition instance
/// for a partitioned service (see `partition`).
pub const MAX_BINDINGS: usize = 6;

/// Where the desktop's hello is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected; no hello yet.
    AwaitHello,
    /// Hello received; waiting for the `SESSION_OPEN` answers. Frames behind the hello wait.
    Opening,
    /// Session open: requests are forwarded.
    Open,
    /// Going away: nothing more is read; the queue is flushed, then the socket closed.
    Closing,
}

/// One upstream session of a desktop: service byte → link (and the link's incarnation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Binding {
    /// Service byte (0 = unused entry).
    pub service: u8,
    /// Global link index in the worker.
    pub link: u16,
    /// The link's generation (incarnation) when the session was opened on it.
    pub link_gen: u32,
}

/// What to do with one frame from a desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer a heartbeat request locally.
    Heartbeat,
    /// A hello: open the sessions upstream.
    Hello,
    /// Forward this request on the binding for its service.
    Forward(Binding),
    /// Forward or answer a `SUBSCRIBE` through the fan-out table.
    Subscribe(Binding),
    /// Answer an `UNSUBSCRIBE` through the fan-out table.
    Unsubscribe(Binding),
    /// Answer the request with this error response; nothing is forwarded.
    Reject(ProxyError),
    /// Send a control error (for a frame that is not a request); keep the connection.
    ControlError(ProxyError),
    /// The desktop said it is leaving (`SESSION_CLOSE` or `GO_AWAY` from it).
    Leave,
    /// Nothing to do (a heartbeat answer, an error notice).
    Ignore,
}

/// What the clock says about a desktop (see [`Desktop::timer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Nothing due.
    None,
    /// Send `DEADLINE` with this message and close.
    Deadline(&'static str),
    /// Nothing sent to it for a heartbeat interval: send a `HEARTBEAT`.
    Heartbeat,
    /// Closing and its last frames did not flush in time: drop the socket.
    Drop,
}

/// Milliseconds from `then` to `now` on the wrapping worker clock (u32 ms, wraps after 49
/// days); a `then` slightly in the future (stamped after `now` was read) counts as 0, not as
/// a 49-day wait.
pub fn since(now: u32, then: u32) -> u32 {
    let d = now.wrapping_sub(then);
    if d > u32::MAX / 2 { 0 } else { d }
}

/// Bytes received and not yet handled: a partial frame, or whole frames held back by
/// backpressure. It exists only while there are such bytes, with the decoder state of the
/// frame in progress (a head is parsed once however many reads its body takes). At a frame
/// boundary with nothing buffered there is no decoder state to keep.
#[derive(Debug)]
pub struct Rx {
    /// The bytes.
    pub buf: BytesMut,
    /// Decoder state of the frame at the front.
    pub dec: FrameDecoder,
    /// When the frame at the front began (worker ms), for `frame_timeout_ms`.
    pub since_ms: u32,
}

/// Flag: the desktop shut its sending side (EOF): no more bytes will come.
pub const EOF: u8 = 1;
/// Flag: the driver was told to stop reading this desktop; it needs a nudge to read again.
pub const STALLED: u8 = 2;

/// One desktop connection's protocol state (the socket lives in the driver).
#[derive(Debug)]
pub struct Desktop {
    /// Handshake phase.
    pub phase: Phase,
    /// [`EOF`], [`STALLED`].
    pub flags: u8,
    /// Requests (and subscription changes) waiting for an upstream answer.
    pub in_flight: u16,
    /// `SESSION_OPEN`s still unanswered (phase `Opening`).
    pub pending_opens: u8,
    /// First failure among the `SESSION_OPEN` answers (0 = none).
    pub open_error: u16,
    /// Authenticated tenant (the hello's claim until the sessions are open).
    pub tenant: u32,
    /// Session id: generation in the high 32 bits, slot in the low 32. Announced to the
    /// desktop and used as the upstream session id on every link.
    pub sid: u64,
    /// Worker ms when the connection was accepted; when it started closing, once closing.
    pub accepted_ms: u32,
    /// Last time a byte arrived from the desktop (or its reading resumed).
    pub last_rx_ms: u32,
    /// Last time a frame was queued to the desktop.
    pub last_tx_ms: u32,
    /// Its entry in the per-source table.
    pub source: u32,
    /// Upstream sessions, per service.
    pub bindings: [Binding; MAX_BINDINGS],
    /// Frames to write.
    pub out: OutQueue,
    /// Bytes read and not yet handled.
    pub rx: Option<Box<Rx>>,
    /// Fan-out entries this desktop holds or waits for.
    pub subs: Vec<SubKey>,
    /// Input budget (`desktop_read_bytes_per_s`), as the worker µs clock time by which what it
    /// sent is paid for (a virtual-scheduling token bucket: each byte pushes it on by
    /// 1/rate; the desktop is read while it runs at most a burst ahead of the clock). Kept
    /// within a tick of the clock when idle, so that the 32-bit clock's wrap cannot mislead it.
    pub paid_us: u32,
}

impl Desktop {
    /// A freshly accepted desktop.
    pub fn new(sid: u64, source: u32, now_ms: u32) -> Desktop {
        Desktop {
            phase: Phase::AwaitHello,
            flags: 0,
            in_flight: 0,
            pending_opens: 0,
            open_error: 0,
            tenant: 0,
            sid,
            accepted_ms: now_ms,
            last_rx_ms: now_ms,
            last_tx_ms: now_ms,
            source,
            bindings: [Binding::default(); MAX_BINDINGS],
            out: OutQueue::default(),
            rx: None,
            subs: Vec::new(),
            paid_us: now_ms.wrapping_mul(1000),
        }
    }

    /// Whether flag `f` is set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// The binding for `service`, if a session is open for it.
    pub fn binding(&self, service: u8) -> Option<Binding> {
        self.bindings
            .iter()
            .copied()
            .find(|b| b.service == service && service != 0)
    }

    /// Record a binding; false if the table is full.
    pub fn bind(&mut self, b: Binding) -> bool {
        if let Some(slot) = self.bindings.iter_mut().find(|x| x.service == 0) {
            *slot = b;
            true
        } else {
            false
        }
    }

    /// Distinct links this desktop has sessions on.
    pub fn links(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.bindings
            .iter()
            .enumerate()
            .filter(|(_, b)| b.service != 0)
            .filter(move |(i, b)| {
                !self.bindings[..*i]
                    .iter()
                    .any(|o| o.service != 0 && o.link == b.link)
            })
            .map(|(_, b)| (b.link, b.link_gen))
    }

    /// Whether a session of this desktop lives on incarnation `generation` of link `link`.
    pub fn bound_to(&self, link: u16, generation: u32) -> bool {
        self.bindings
            .iter()
            .any(|b| b.service != 0 && b.link == link && b.link_gen == generation)
    }

    /// Whether the outbound queue is past half its bounds: the desktop reads too slowly for
    /// more answers to be produced for it, so its requests are not read (backpressure).
    pub fn out_backlogged(&self, limits: &Limits) -> bool {
        self.out.bytes() > limits.out_queue_bytes / 2
            || self.out.len() > limits.out_queue_frames / 2
    }

    /// Whether the next frame from this desktop may be handled now. While not, its bytes
    /// wait in `rx` and the driver stops reading it.
    ///
    /// - `Opening`: frames behind the hello wait for its answer.
    /// - `Open`: at most `max_in_flight` requests upstream, and not while its queue is
    ///   backlogged.
    pub fn can_take_frame(&self, limits: &Limits) -> bool {
        match self.phase {
            Phase::AwaitHello => !self.out_backlogged(limits),
            Phase::Opening | Phase::Closing => false,
            Phase::Open => {
                u32::from(self.in_flight) < limits.max_in_flight && !self.out_backlogged(limits)
            }
        }
    }

    /// The largest frame accepted from it now: `hello_max_frame` until its session is open.
    pub fn max_frame(&self, limits: &Limits) -> usize {
        if self.phase == Phase::Open {
            limits.max_frame as usize
        } else {
            limits.hello_max_frame as usize
        }
    }

    /// Deadlines and heartbeats at worker time `now_ms`. `paused`: the desktop is not read
    /// for backpressure (the idle and frame deadlines do not run against it then).
    ///
    /// - The whole hello must complete within `handshake_ms` of the accept: bytes arriving do
    ///   not extend it (PROTOCOL.md §4.1).
    /// - A frame begun must complete within `frame_timeout_ms`.
    /// - An open session silent for 3 heartbeat intervals is closed.
    /// - The proxy heartbeats a desktop it has sent nothing to for one interval.
    /// - A closing desktop whose queue did not drain within `close_flush_ms` is dropped.
    pub fn timer(&self, now_ms: u32, limits: &Limits, close_flush_ms: u32, paused: bool) -> Timer {
        if self.phase == Phase::Closing {
            return if since(now_ms, self.accepted_ms) > close_flush_ms {
                Timer::Drop
            } else {
                Timer::None
            };
        }
        if matches!(self.phase, Phase::AwaitHello | Phase::Opening)
            && since(now_ms, self.accepted_ms) > limits.handshake_ms
        {
            return Timer::Deadline("handshake deadline passed");
        }
        if !paused
            && let Some(rx) = &self.rx
            && since(now_ms, rx.since_ms) > limits.frame_timeout_ms
        {
            return Timer::Deadline("frame not completed within frame_timeout_ms");
        }
        if self.phase != Phase::Open {
            return Timer::None;
        }
        // A desktop that shut its sending side cannot send heartbeats: it waits for its
        // answers, bounded by their request timeout.
        let idle_rule = !paused && !self.has(EOF);
        if idle_rule && since(now_ms, self.last_rx_ms) > limits.heartbeat_ms.saturating_mul(3) {
            Timer::Deadline("idle: no traffic for 3 heartbeats")
        } else if since(now_ms, self.last_tx_ms) >= limits.heartbeat_ms {
            Timer::Heartbeat
        } else {
            Timer::None
        }
    }

    /// Decide what to do with a frame from the desktop (PROTOCOL.md §5.1, §5.2, §10): the
    /// request checks in the spec's order.
    ///
    /// `routable(service)` says whether the proxy has any route for a service byte; `draining`
    /// is true after SIGTERM; `corr_busy` whether a request of this desktop with the frame's
    /// correlation id is still unanswered.
    pub fn classify(
        &self,
        h: &Head,
        draining: bool,
        corr_busy: bool,
        routable: impl Fn(u8) -> bool,
    ) -> Action {
        let refuse = |m| Action::ControlError(ProxyError::desktop(ErrorCode::PROTOCOL, m));
        match h.kind {
            Kind::Request => {}
            // §5.1: an error is never answered with an error (no ping-pong).
            _ if h.flags.has(Flags::ERROR) => return Action::Ignore,
            // Answers to the proxy's own heartbeats.
            Kind::Response if h.service == Service::Control && h.msg_type == control::HEARTBEAT => {
                return Action::Ignore;
            }
            Kind::Response => return refuse("unexpected response"),
            Kind::Control => {
                return match (h.service, h.msg_type) {
                    (Service::Control, control::SESSION_CLOSE | control::GO_AWAY) => Action::Leave,
                    (Service::Control, control::ERROR) => Action::Ignore,
                    _ => refuse("unexpected control frame"),
                };
            }
            Kind::Event => return refuse("unexpected event"),
            Kind::Unknown(_) => return refuse("unknown frame kind"),
        }
        let reject = |code, m| Action::Reject(ProxyError::desktop(code, m));
        if self.phase != Phase::Open {
            // Before the session: a hello, or a heartbeat; frames behind a hello wait
            // (`can_take_frame`), so `Opening` is never seen here for them.
            if h.service != Service::Control {
                return reject(ErrorCode::INVALID_STATE, "hello first");
            }
            return match h.msg_type {
                control::HEARTBEAT => Action::Heartbeat,
                // Draining is checked by the hello itself, after its body (§4.1's order).
                control::HELLO if self.phase == Phase::AwaitHello => Action::Hello,
                control::HELLO => reject(ErrorCode::INVALID_STATE, "hello already sent"),
                control::LINK_HELLO => {
                    reject(ErrorCode::INVALID_STATE, "links do not connect to a proxy")
                }
                control::SESSION_OPEN => {
                    reject(ErrorCode::INVALID_STATE, "SESSION_OPEN outside a link")
                }
                _ => reject(ErrorCode::UNKNOWN_MESSAGE, "unknown control message"),
            };
        }
        // PROTOCOL.md §5.2, 2: the session's tenant on every request (a heartbeat may say 0);
        // any other touches nothing, and a proxy never forwards it.
        let hb = h.service == Service::Control && h.msg_type == control::HEARTBEAT;
        if h.tenant != self.tenant && !(hb && h.tenant == 0) {
            return reject(ErrorCode::TENANT_MISMATCH, "tenant is not the session's");
        }
        // 3. Session id on a desktop connection: 0 or the session's own id.
        if h.session != 0 && h.session != self.sid {
            return reject(ErrorCode::INVALID_STATE, "session id is not this session's");
        }
        // 4. One correlation id in flight once.
        if corr_busy {
            return reject(ErrorCode::INVALID_STATE, "correlation id in flight");
        }
        if h.service == Service::Control {
            return match h.msg_type {
                control::HEARTBEAT => Action::Heartbeat,
                control::HELLO | control::LINK_HELLO => {
                    reject(ErrorCode::INVALID_STATE, "hello already done")
                }
                control::SESSION_OPEN => {
                    reject(ErrorCode::INVALID_STATE, "SESSION_OPEN outside a link")
                }
                _ => reject(ErrorCode::UNKNOWN_MESSAGE, "unknown control message"),
            };
        }
        // 5. The service: routed here, and opened by the hello.
        let svc = h.service.to_u8();
        let Some(b) = self.binding(svc) else {
            return if routable(svc) {
                reject(
                    ErrorCode::INVALID_STATE,
                    "service not opened by this session's hello",
                )
            } else {
                reject(ErrorCode::NO_ROUTE, "no route for this service")
            };
        };
        // 6. Going away.
        if draining {
            return Action::Reject(ProxyError::proxy(
                ErrorCode::SHUTTING_DOWN,
                "proxy is shutting down",
            ));
        }
        if h.service == Service::Interaction {
            match h.msg_type {
                ixn::SUBSCRIBE => return Action::Subscribe(b),
                ixn::UNSUBSCRIBE => return Action::Unsubscribe(b),
                _ => {}
            }
        }
        Action::Forward(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(service: Service, t: u16, tenant: u32) -> Head {
        let mut h = Head::new(Kind::Request, service, t);
        h.tenant = tenant;
        h
    }

    fn open_desktop() -> Desktop {
        let mut d = Desktop::new(7 << 32 | 3, 0, 0);
        d.phase = Phase::Open;
        d.tenant = 5;
        d.bind(Binding {
            service: 1,
            link: 0,
            link_gen: 1,
        });
        d
    }

    fn code(a: Action) -> Option<ErrorCode> {
        match a {
            Action::Reject(e) | Action::ControlError(e) => Some(e.code),
            _ => None,
        }
    }

    #[test]
    fn hello_order() {
        let d = Desktop::new(1, 0, 0);
        let any = |_| true;
        assert_eq!(
            d.classify(&req(Service::Control, control::HELLO, 5), false, false, any),
            Action::Hello
        );
        assert_eq!(
            code(d.classify(&req(Service::Interaction, 1, 5), false, false, any)),
            Some(ErrorCode::INVALID_STATE)
        );
        assert_eq!(
            d.classify(
                &req(Service::Control, control::HEARTBEAT, 0),
                false,
                false,
                any
            ),
            Action::Heartbeat
        );
        let o = open_desktop();
        assert_eq!(
            code(o.classify(&req(Service::Control, control::HELLO, 5), false, false, any)),
            Some(ErrorCode::INVALID_STATE)
        );
    }

    #[test]
    fn tenant_is_checked_and_never_forwarded() {
        let d = open_desktop();
        assert!(matches!(
            d.classify(&req(Service::Interaction, 1, 5), false, false, |_| true),
            Action::Forward(_)
        ));
        assert_eq!(
            code(d.classify(&req(Service::Interaction, 1, 6), false, false, |_| true)),
            Some(ErrorCode::TENANT_MISMATCH)
        );
        let mut spoof = req(Service::Interaction, 1, 5);
        spoof.session = 99;
        assert_eq!(
            code(d.classify(&spoof, false, false, |_| true)),
            Some(ErrorCode::INVALID_STATE)
        );
    }

    #[test]
    fn routes_drain_and_kinds() {
        let d = open_desktop();
        assert_eq!(
            code(d.classify(&req(Service::Ucs, 1, 5), false, false, |_| false)),
            Some(ErrorCode::NO_ROUTE)
        );
        assert_eq!(
            code(d.classify(&req(Service::Interaction, 1, 5), true, false, |_| true)),
            Some(ErrorCode::SHUTTING_DOWN)
        );
        assert!(matches!(
            d.classify(
                &req(Service::Interaction, ixn::SUBSCRIBE, 5),
                false,
                false,
                |_| { true }
            ),
            Action::Subscribe(_)
        ));
        let mut unk = Head::new(Kind::Unknown(9), Service::Interaction, 1);
        unk.tenant = 5;
        assert_eq!(
            code(d.classify(&unk, false, false, |_| true)),
            Some(ErrorCode::PROTOCOL)
        );
    }

    #[test]
    fn request_checks_in_the_spec_order() {
        let d = open_desktop();
        let any = |_| true;
        // A heartbeat may say tenant 0 or the session's; not another.
        assert_eq!(
            d.classify(
                &req(Service::Control, control::HEARTBEAT, 0),
                false,
                false,
                any
            ),
            Action::Heartbeat
        );
        assert_eq!(
            code(d.classify(
                &req(Service::Control, control::HEARTBEAT, 6),
                false,
                false,
                any
            )),
            Some(ErrorCode::TENANT_MISMATCH)
        );
        // A correlation id in flight is refused before routing and draining.
        assert_eq!(
            code(d.classify(&req(Service::Ucs, 1, 5), true, true, |_| false)),
            Some(ErrorCode::INVALID_STATE)
        );
        // Routed but not opened by the hello; then draining.
        assert_eq!(
            code(d.classify(&req(Service::Ucs, 1, 5), true, false, any)),
            Some(ErrorCode::INVALID_STATE)
        );
        assert_eq!(
            code(d.classify(
                &req(Service::Control, control::SESSION_OPEN, 5),
                false,
                false,
                any
            )),
            Some(ErrorCode::INVALID_STATE)
        );
        assert_eq!(
            code(d.classify(&req(Service::Control, 0x99, 5), false, false, any)),
            Some(ErrorCode::UNKNOWN_MESSAGE)
        );
        // Frames flagged ERROR that are not requests are never answered.
        let mut e = Head::new(Kind::Event, Service::Interaction, 1);
        assert_eq!(
            code(d.classify(&e, false, false, any)),
            Some(ErrorCode::PROTOCOL)
        );
        e.flags = Flags(Flags::ERROR);
        assert_eq!(d.classify(&e, false, false, any), Action::Ignore);
        let st = Head::new(Kind::Control, Service::Control, control::SERVICE_STATE);
        assert_eq!(
            code(d.classify(&st, false, false, any)),
            Some(ErrorCode::PROTOCOL)
        );
    }

    #[test]
    fn backpressure_takes_the_place_of_the_in_flight_error() {
        let l = Limits {
            max_in_flight: 2,
            out_queue_frames: 4,
            ..Limits::default()
        };
        let mut d = open_desktop();
        assert!(d.can_take_frame(&l));
        d.in_flight = 2;
        assert!(!d.can_take_frame(&l), "at the in-flight cap: not read");
        d.in_flight = 0;
        for _ in 0..3 {
            d.out.push_unbounded(bytes::Bytes::from_static(b"x"));
        }
        assert!(!d.can_take_frame(&l), "queue past half its bound: not read");
        d.phase = Phase::Opening;
        d.out = OutQueue::default();
        assert!(!d.can_take_frame(&l), "frames behind the hello wait");
    }

    #[test]
    fn idle_desktop_is_compact() {
        // The per-desktop state an idle connection holds (no heap: empty queue, no buffer).
        let size = std::mem::size_of::<Desktop>();
        assert!(size <= 168, "Desktop grew to {size} bytes");
        let d = Desktop::new(1, 0, 0);
        assert!(d.out.is_empty() && d.rx.is_none() && d.subs.capacity() == 0);
    }

    #[test]
    fn clock_since_tolerates_future_stamps() {
        assert_eq!(since(1000, 400), 600);
        assert_eq!(since(1000, 1001), 0, "stamped after now was read");
        assert_eq!(since(5, u32::MAX - 4), 10, "wraps");
    }

    #[test]
    fn deadlines_with_a_fake_clock() {
        let l = Limits {
            handshake_ms: 1000,
            heartbeat_ms: 100,
            frame_timeout_ms: 500,
            ..Limits::default()
        };
        // Accepted at t=5000; bytes trickling in do not extend the hello.
        let mut d = Desktop::new(1, 0, 5000);
        for t in (5000..=6000).step_by(100) {
            d.last_rx_ms = t;
            assert_eq!(d.timer(t, &l, 2000, false), Timer::None, "t={t}");
        }
        assert!(matches!(d.timer(6001, &l, 2000, false), Timer::Deadline(_)));
        // Open: heartbeat after one quiet interval, deadline after 3 silent ones, unless
        // paused for backpressure.
        let mut o = open_desktop();
        assert_eq!(o.timer(99, &l, 2000, false), Timer::None);
        assert_eq!(o.timer(100, &l, 2000, false), Timer::Heartbeat);
        o.last_tx_ms = 250;
        assert_eq!(o.timer(300, &l, 2000, false), Timer::None);
        assert!(matches!(o.timer(301, &l, 2000, false), Timer::Deadline(_)));
        assert_eq!(o.timer(301, &l, 2000, true), Timer::None);
        // A frame begun at 1000 must be complete by 1500.
        o.last_rx_ms = 1400;
        o.last_tx_ms = 1450;
        o.rx = Some(Box::new(Rx {
            buf: BytesMut::new(),
            dec: FrameDecoder::new(1024),
            since_ms: 1000,
        }));
        assert_eq!(o.timer(1500, &l, 2000, false), Timer::None);
        assert!(matches!(o.timer(1501, &l, 2000, false), Timer::Deadline(_)));
        // Closing: dropped once the flush window passed.
        o.phase = Phase::Closing;
        o.accepted_ms = 1000;
        assert_eq!(o.timer(2999, &l, 2000, false), Timer::None);
        assert_eq!(o.timer(3001, &l, 2000, false), Timer::Drop);
    }

    #[test]
    fn links_are_distinct() {
        let mut d = Desktop::new(1, 0, 0);
        for (service, link, link_gen) in [(1, 3, 1), (2, 3, 1), (9, 4, 2)] {
            d.bind(Binding {
                service,
                link,
                link_gen,
            });
        }
        assert_eq!(d.links().collect::<Vec<_>>(), vec![(3, 1), (4, 2)]);
        assert!(d.bound_to(4, 2) && !d.bound_to(4, 1));
    }
}
