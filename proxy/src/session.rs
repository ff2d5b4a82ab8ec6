//! Sans-IO state of one desktop connection: handshake phase, authenticated tenant, in-flight
//! count, upstream bindings and the bounded outbound queue.
//!
//! ```text
//!            HELLO                 all SESSION_OPENs ok
//! AwaitHello ─────▶ Opening ────────────────────────────▶ Open
//!     │                │ AUTH_FAILED / UNAVAILABLE           │ desktop left, link lost,
//!     │ deadline       ▼                                     │ slow consumer, SIGTERM drain
//!     └──────────▶ Closing ◀──────────────────────────────────┘
//! ```
//!
//! [`Desktop::classify`] decides what to do with each frame from the desktop, with no I/O and
//! the clock passed in, so the rules (tenant check, hello order, in-flight cap) are unit-tested
//! here. The struct is kept compact because tens of thousands of them sit idle: no read buffer
//! while no frame is partial (`rbuf` is `None`), an empty `VecDeque` (no heap) while nothing is
//! queued, and no stored peer address or tracing span (both are rebuilt when something is
//! logged).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{control, ixn};
use deskmux_codec::{ErrorCode, Head, Kind, Service};

use crate::config::Limits;

/// Most upstream bindings a desktop may have: one per service, or one per partition instance
/// for a partitioned service (see `partition`).
pub const MAX_BINDINGS: usize = 6;

/// Where the desktop's hello is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected; no hello yet.
    AwaitHello,
    /// Hello received; waiting for the `SESSION_OPEN` answers.
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
    Reject(ErrorCode, &'static str),
    /// Send a control error (for a frame that is not a request); keep the connection.
    ControlError(ErrorCode, &'static str),
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
    /// Send `DEADLINE` with this message and close (handshake or idle deadline passed).
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

/// Why a frame could not be queued towards the desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbound queue overflow: slow consumer")]
pub struct Overflow;

/// Frames waiting to be written to one socket, as shared `Bytes`, written with one vectored
/// write per wake-up. `off` is how much of the front frame is already written.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// Queued frames.
    pub q: VecDeque<Bytes>,
    /// Total queued bytes (front frame counted whole).
    pub bytes: usize,
    /// Bytes of the front frame already written.
    pub off: usize,
}

impl OutQueue {
    /// Queue a frame, enforcing `max_frames` and `max_bytes`.
    ///
    /// # Errors
    /// [`Overflow`]: the consumer is too slow; the caller disconnects it.
    pub fn push(&mut self, b: Bytes, max_frames: usize, max_bytes: usize) -> Result<(), Overflow> {
        if self.q.len() >= max_frames || self.bytes + b.len() > max_bytes {
            return Err(Overflow);
        }
        self.bytes += b.len();
        self.q.push_back(b);
        Ok(())
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Account for `n` written bytes; returns how many whole frames were completed. Frees the
    /// queue's memory once it is empty, so that an idle desktop holds no buffer.
    pub fn consume(&mut self, mut n: usize) -> usize {
        let mut done = 0;
        while n > 0 {
            let Some(front) = self.q.front() else { break };
            let left = front.len() - self.off;
            if n >= left {
                n -= left;
                self.bytes -= front.len();
                self.off = 0;
                self.q.pop_front();
                done += 1;
            } else {
                self.off += n;
                n = 0;
            }
        }
        if self.q.is_empty() && self.q.capacity() > 0 {
            self.q = VecDeque::new();
        }
        done
    }
}

/// One desktop connection's protocol state (the socket lives next to it in the worker).
#[derive(Debug)]
pub struct Desktop {
    /// Handshake phase.
    pub phase: Phase,
    /// Authenticated tenant (the hello's claim until the sessions are open).
    pub tenant: u32,
    /// Session id: generation in the high 32 bits, connection slot in the low 32. Announced to
    /// the desktop and used as the upstream session id on every link.
    pub sid: u64,
    /// Requests forwarded and not answered yet.
    pub in_flight: u16,
    /// `SESSION_OPEN`s still unanswered (phase `Opening`).
    pub pending_opens: u8,
    /// First failure among the `SESSION_OPEN` answers (0 = none).
    pub open_error: u16,
    /// Milliseconds (worker clock) when the connection was accepted.
    pub accepted_ms: u32,
    /// Last time a byte arrived from the desktop.
    pub last_rx_ms: u32,
    /// Last time a frame was queued to the desktop.
    pub last_tx_ms: u32,
    /// Upstream sessions, per service.
    pub bindings: [Binding; MAX_BINDINGS],
    /// Frames to write.
    pub out: OutQueue,
    /// Bytes of a partial frame; `None` whenever no frame is partial.
    pub rbuf: Option<BytesMut>,
    /// Fan-out entries this desktop is subscribed to.
    pub subs: Vec<u32>,
}

impl Desktop {
    /// A freshly accepted desktop.
    pub fn new(sid: u64, now_ms: u32) -> Desktop {
        Desktop {
            phase: Phase::AwaitHello,
            tenant: 0,
            sid,
            in_flight: 0,
            pending_opens: 0,
            open_error: 0,
            accepted_ms: now_ms,
            last_rx_ms: now_ms,
            last_tx_ms: now_ms,
            bindings: [Binding::default(); MAX_BINDINGS],
            out: OutQueue::default(),
            rbuf: None,
            subs: Vec::new(),
        }
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

    /// Deadlines and heartbeats at worker time `now_ms` (the clock is a parameter, so this is
    /// tested with a fake one).
    ///
    /// - The whole hello must complete within `handshake_ms` of the accept: bytes arriving do
    ///   not extend it (PROTOCOL.md §4.1).
    /// - An open session silent for 3 heartbeat intervals is closed.
    /// - The proxy heartbeats a desktop it has sent nothing to for one interval.
    /// - A closing desktop whose queue did not drain within `close_flush_ms` is dropped.
    pub fn timer(&self, now_ms: u32, limits: &Limits, close_flush_ms: u32) -> Timer {
        match self.phase {
            Phase::AwaitHello | Phase::Opening => {
                if since(now_ms, self.accepted_ms) > limits.handshake_ms {
                    Timer::Deadline("handshake deadline passed")
                } else {
                    Timer::None
                }
            }
            Phase::Open => {
                if since(now_ms, self.last_rx_ms) > limits.heartbeat_ms.saturating_mul(3) {
                    Timer::Deadline("idle: no traffic for 3 heartbeats")
                } else if since(now_ms, self.last_tx_ms) >= limits.heartbeat_ms {
                    Timer::Heartbeat
                } else {
                    Timer::None
                }
            }
            Phase::Closing => {
                if since(now_ms, self.accepted_ms) > close_flush_ms {
                    Timer::Drop
                } else {
                    Timer::None
                }
            }
        }
    }

    /// Decide what to do with a frame from the desktop (PROTOCOL.md §4.1, §10).
    ///
    /// `routable(service)` says whether the proxy has any route for a service byte; `draining`
    /// is true after SIGTERM.
    pub fn classify(
        &self,
        h: &Head,
        limits: &Limits,
        draining: bool,
        routable: impl Fn(u8) -> bool,
    ) -> Action {
        match h.kind {
            Kind::Request => {}
            Kind::Response => {
                // Answers to the proxy's own heartbeats.
                return if h.service == Service::Control && h.msg_type == control::HEARTBEAT {
                    Action::Ignore
                } else {
                    Action::ControlError(ErrorCode::PROTOCOL, "unexpected response")
                };
            }
            Kind::Control => {
                return match (h.service, h.msg_type) {
                    (Service::Control, control::SESSION_CLOSE | control::GO_AWAY) => Action::Leave,
                    (Service::Control, control::ERROR) => Action::Ignore,
                    _ => Action::ControlError(ErrorCode::PROTOCOL, "unexpected control frame"),
                };
            }
            Kind::Event => {
                return Action::ControlError(ErrorCode::PROTOCOL, "desktops do not send events");
            }
            Kind::Unknown(_) => {
                return Action::ControlError(ErrorCode::PROTOCOL, "unknown frame kind");
            }
        }
        // A request.
        if h.service == Service::Control {
            return match h.msg_type {
                control::HEARTBEAT => Action::Heartbeat,
                control::HELLO if self.phase == Phase::AwaitHello => {
                    if draining {
                        Action::Reject(ErrorCode::SHUTTING_DOWN, "proxy is shutting down")
                    } else {
                        Action::Hello
                    }
                }
                control::HELLO => Action::Reject(ErrorCode::INVALID_STATE, "hello twice"),
                _ => Action::Reject(ErrorCode::PROTOCOL, "control request not allowed here"),
            };
        }
        if self.phase != Phase::Open {
            return Action::Reject(ErrorCode::INVALID_STATE, "hello first");
        }
        // PROTOCOL.md §4.1: "After the hello, every frame's tenant must equal the session's
        // authenticated tenant. Any other frame gets TENANT_MISMATCH and touches nothing; a
        // proxy never forwards it."
        if h.tenant != self.tenant {
            return Action::Reject(ErrorCode::TENANT_MISMATCH, "tenant is not the session's");
        }
        // PROTOCOL.md §2: session id on a direct connection is 0 or the session's own id.
        if h.session != 0 && h.session != self.sid {
            return Action::Reject(ErrorCode::INVALID_STATE, "session id is not this session's");
        }
        if draining {
            return Action::Reject(ErrorCode::SHUTTING_DOWN, "proxy is shutting down");
        }
        let svc = h.service.to_u8();
        let Some(b) = self.binding(svc) else {
            return if routable(svc) {
                Action::Reject(
                    ErrorCode::INVALID_STATE,
                    "service not opened by this session's hello",
                )
            } else {
                Action::Reject(ErrorCode::NO_ROUTE, "no route for this service")
            };
        };
        if u32::from(self.in_flight) >= limits.max_in_flight {
            return Action::Reject(ErrorCode::TOO_MANY_IN_FLIGHT, "in-flight cap reached");
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
        let mut d = Desktop::new(7 << 32 | 3, 0);
        d.phase = Phase::Open;
        d.tenant = 5;
        d.bind(Binding {
            service: 1,
            link: 0,
            link_gen: 1,
        });
        d
    }

    #[test]
    fn hello_order() {
        let l = Limits::default();
        let d = Desktop::new(1, 0);
        let any = |_| true;
        assert_eq!(
            d.classify(&req(Service::Control, control::HELLO, 5), &l, false, any),
            Action::Hello
        );
        assert_eq!(
            d.classify(&req(Service::Interaction, 1, 5), &l, false, any),
            Action::Reject(ErrorCode::INVALID_STATE, "hello first")
        );
        assert_eq!(
            d.classify(
                &req(Service::Control, control::HEARTBEAT, 0),
                &l,
                false,
                any
            ),
            Action::Heartbeat
        );
        let o = open_desktop();
        assert!(matches!(
            o.classify(&req(Service::Control, control::HELLO, 5), &l, false, any),
            Action::Reject(ErrorCode::INVALID_STATE, _)
        ));
    }

    #[test]
    fn tenant_is_checked_and_never_forwarded() {
        let l = Limits::default();
        let d = open_desktop();
        assert!(matches!(
            d.classify(&req(Service::Interaction, 1, 5), &l, false, |_| true),
            Action::Forward(_)
        ));
        assert!(matches!(
            d.classify(&req(Service::Interaction, 1, 6), &l, false, |_| true),
            Action::Reject(ErrorCode::TENANT_MISMATCH, _)
        ));
        let mut spoof = req(Service::Interaction, 1, 5);
        spoof.session = 99;
        assert!(matches!(
            d.classify(&spoof, &l, false, |_| true),
            Action::Reject(ErrorCode::INVALID_STATE, _)
        ));
    }

    #[test]
    fn caps_routes_and_drain() {
        let l = Limits {
            max_in_flight: 2,
            ..Limits::default()
        };
        let mut d = open_desktop();
        d.in_flight = 2;
        assert!(matches!(
            d.classify(&req(Service::Interaction, 1, 5), &l, false, |_| true),
            Action::Reject(ErrorCode::TOO_MANY_IN_FLIGHT, _)
        ));
        d.in_flight = 0;
        assert!(matches!(
            d.classify(&req(Service::Ucs, 1, 5), &l, false, |_| false),
            Action::Reject(ErrorCode::NO_ROUTE, _)
        ));
        assert!(matches!(
            d.classify(&req(Service::Interaction, 1, 5), &l, true, |_| true),
            Action::Reject(ErrorCode::SHUTTING_DOWN, _)
        ));
        assert!(matches!(
            d.classify(
                &req(Service::Interaction, ixn::SUBSCRIBE, 5),
                &l,
                false,
                |_| true
            ),
            Action::Subscribe(_)
        ));
        let mut unk = Head::new(Kind::Unknown(9), Service::Interaction, 1);
        unk.tenant = 5;
        assert!(matches!(
            d.classify(&unk, &l, false, |_| true),
            Action::ControlError(ErrorCode::PROTOCOL, _)
        ));
    }

    #[test]
    fn queue_bounds_and_frees() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abcd"), 2, 100).unwrap();
        q.push(Bytes::from_static(b"ef"), 2, 100).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"g"), 2, 100), Err(Overflow));
        assert_eq!(q.consume(3), 0);
        assert_eq!(q.off, 3);
        assert_eq!(q.consume(3), 2);
        assert!(q.is_empty());
        assert_eq!(q.q.capacity(), 0, "idle queue holds no memory");
        let mut q = OutQueue::default();
        assert_eq!(q.push(Bytes::from(vec![0; 101]), 10, 100), Err(Overflow));
    }

    #[test]
    fn idle_desktop_is_compact() {
        // The per-desktop state an idle connection holds (no heap: empty queue, no buffer).
        let size = std::mem::size_of::<Desktop>();
        assert!(size <= 192, "Desktop grew to {size} bytes");
        let d = Desktop::new(1, 0);
        assert_eq!(d.out.q.capacity(), 0);
        assert!(d.rbuf.is_none() && d.subs.capacity() == 0);
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
            ..Limits::default()
        };
        // Accepted at t=5000; bytes trickling in (last_rx moving) do not extend the hello.
        let mut d = Desktop::new(1, 5000);
        for t in (5000..=6000).step_by(100) {
            d.last_rx_ms = t;
            assert_eq!(d.timer(t, &l, 2000), Timer::None, "t={t}");
        }
        d.last_rx_ms = 6001;
        assert!(matches!(d.timer(6001, &l, 2000), Timer::Deadline(_)));
        // Open: heartbeat after one quiet interval, deadline after 3 silent ones.
        let mut o = open_desktop();
        o.last_rx_ms = 0;
        o.last_tx_ms = 0;
        assert_eq!(o.timer(99, &l, 2000), Timer::None);
        assert_eq!(o.timer(100, &l, 2000), Timer::Heartbeat);
        o.last_tx_ms = 250;
        assert_eq!(o.timer(300, &l, 2000), Timer::None);
        assert!(matches!(o.timer(301, &l, 2000), Timer::Deadline(_)));
        // Closing: dropped once the flush window passed.
        o.phase = Phase::Closing;
        o.accepted_ms = 1000;
        assert_eq!(o.timer(2999, &l, 2000), Timer::None);
        assert_eq!(o.timer(3001, &l, 2000), Timer::Drop);
    }

    #[test]
    fn links_are_distinct() {
        let mut d = Desktop::new(1, 0);
        d.bind(Binding {
            service: 1,
            link: 3,
            link_gen: 1,
        });
        d.bind(Binding {
            service: 2,
            link: 3,
            link_gen: 1,
        });
        d.bind(Binding {
            service: 9,
            link: 4,
            link_gen: 2,
        });
        assert_eq!(d.links().collect::<Vec<_>>(), vec![(3, 1), (4, 2)]);
    }
}
