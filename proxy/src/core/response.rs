//! Link frames in: responses, events and server control; and a link's failure.
//!
//! What comes back from a server reaches a desktop only through a check that it is that
//! desktop's: a response through its link correlation id (slot and generation) *and* the
//! session and tenant of the request it answers; a unicast event through the named session's
//! binding to this very link incarnation and its tenant; a broadcast event through the
//! subscription it names on this link and that subscription's tenant. Anything else is
//! dropped and counted (`deskmux_proxy_errors{kind="misrouted"}`).
//!
//! Failures answer exactly once, in one place ([`Core::answer_pending`]): the desktop that
//! sent the request, the hello waiting on a `SESSION_OPEN`, or every desktop waiting on a
//! shared `SUBSCRIBE`.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{self, ServiceState};
use deskmux_codec::{Decoded, ErrorCode, Flags, Frame, Head, Kind, Service, empty_frame};
use tracing::{debug, info, warn};

use super::desktop::{EOF, Phase, STALLED};
use super::fanout::{Op, SubKey, Waiter};
use super::ids::{Owner, Pending};
use super::link::LinkState;
use super::outbox::{Delivery, Outboxes};
use super::request::ok_response;
use super::{Core, Io, LinksView, ResumeInfo};
use crate::error::{Disconnect, ProxyError};

/// A server's answer to one `SESSION_OPEN`: its error, or the tokens it gave.
struct OpenAnswer {
    code: Option<ErrorCode>,
    reconnect: Option<Box<str>>,
    resume: Option<ResumeInfo>,
}

impl Core {
    /// One frame (or the head of an oversized one that went by) from link `i`.
    pub(super) fn link_frame(&mut self, now: Instant, i: usize, d: Decoded) {
        let f = match d {
            Decoded::Frame(f) => f,
            Decoded::Skipped(h) => return self.oversized(now, i, h),
        };
        let h = *f.head();
        if let LinkState::Handshaking { .. } = self.links[i].state {
            if h.kind == Kind::Response && h.msg_type == msg::control::LINK_HELLO {
                match self.links[i].hello_answered(&f) {
                    Ok(st) => {
                        info!(link = %self.links[i].name, instance = st.instance, "link up");
                        let inst = self.links[i].instance;
                        self.set_instance_state(inst, st);
                    }
                    Err(why) => {
                        if let Some((code, m)) = f.error() {
                            warn!(link = %self.links[i].name, %code, m, "link hello refused");
                        }
                        self.fail_link(now, i, why);
                    }
                }
            }
            return;
        }
        match h.kind {
            Kind::Response => self.link_response(now, i, f),
            Kind::Event => self.link_event(now, i, f),
            Kind::Control => self.link_control(now, i, &f),
            Kind::Request
                if h.service == Service::Control && h.msg_type == msg::control::HEARTBEAT =>
            {
                let mut r = h;
                r.kind = Kind::Response;
                self.push_link_control(now, i, empty_frame(r).freeze(), 0);
            }
            _ => debug!(link = %self.links[i].name, ?h, "unexpected frame on link"),
        }
    }

    /// A frame larger than the proxy accepts went by (skipped by its length): its request is
    /// answered `RESPONSE_TOO_LARGE`; the link stays up.
    fn oversized(&mut self, now: Instant, i: usize, h: Head) {
        self.metrics.error("oversized_from_upstream");
        warn!(link = %self.links[i].name, len = h.body_len, kind = ?h.kind, "frame over max_frame from server skipped");
        if h.kind != Kind::Response {
            return;
        }
        let Some(p) = self.links[i].ids.take(h.correlation) else {
            return;
        };
        self.answer_pending(
            now,
            i,
            p,
            ProxyError::upstream(
                ErrorCode::RESPONSE_TOO_LARGE,
                "the server's answer is larger than max_frame; narrow the request",
            ),
        );
    }

    fn link_response(&mut self, now: Instant, i: usize, mut f: Frame) {
        let h = *f.head();
        let Some(p) = self.links[i].ids.take(h.correlation) else {
            // Stale: its request already failed or timed out.
            return;
        };
        match p.owner {
            Owner::Internal => self.untrack(),
            Owner::Open { session } => {
                self.untrack();
                let code = f.error().map(|(c, _)| c);
                let b = f.body();
                let reconnect = b.opt_str(msg::key::RECONNECT).ok().flatten().map(Box::from);
                // §4.6: the Interaction Server's resume fields, passed on in the proxy's hello.
                let resume = match (
                    b.opt_str(msg::key::RESUME),
                    b.opt_int(msg::key::RESUME_GRACE_MS),
                ) {
                    (Ok(Some(t)), Ok(Some(g))) if code.is_none() => Some(ResumeInfo {
                        token: Box::from(t),
                        grace_ms: g,
                        replayed: b.opt_int(msg::key::REPLAYED).ok().flatten(),
                    }),
                    _ => None,
                };
                let ans = OpenAnswer {
                    code,
                    reconnect,
                    resume,
                };
                self.open_answer(now, i, session, p.req.head(0), ans);
            }
            Owner::Desktop { session } => {
                // The answer must be for the session and tenant that asked.
                if h.session != session || h.tenant != p.req.tenant {
                    self.metrics.error("misrouted");
                    warn!(link = %self.links[i].name, ?h, "response for another session or tenant dropped");
                    return self.answer_pending(
                        now,
                        i,
                        p,
                        ProxyError::upstream(
                            ErrorCode::INTERNAL,
                            "the server's answer named another session or tenant",
                        ),
                    );
                }
                self.untrack();
                let took_us = self.us(now).wrapping_sub(p.started_us);
                self.metrics.latency.observe(f64::from(took_us) / 1e6);
                let failed = f.error().map(|(code, _)| code.name());
                if let Some(kind) = failed {
                    self.metrics.error(kind);
                }
                if let Some(slot) = self.slot_of_sid(session) {
                    if let Some(kind) = failed {
                        self.note_failure(slot, kind, p.req.tenant);
                    }
                    f.set_correlation(p.req.correlation);
                    self.answered(now, slot, f.freeze());
                }
            }
            Owner::Subscribe { sub } => {
                self.untrack();
                let ok = if f.error().is_some() {
                    None
                } else {
                    let b = f.body();
                    match (b.int(msg::key::SUBSCRIPTION), b.opt_int(msg::key::SEQ)) {
                        (Ok(id), Ok(seq)) => Some((id as u64, seq.unwrap_or(0))),
                        _ => None,
                    }
                };
                let tenant_ok = self.fanout.get(sub).is_some_and(|s| s.tenant == h.tenant);
                if !tenant_ok {
                    self.metrics.error("misrouted");
                    let waiters = self.fanout.failed(sub);
                    let e = ProxyError::upstream(
                        ErrorCode::INTERNAL,
                        "the server's answer named another tenant",
                    );
                    return self.answer_waiters(now, sub, waiters, SubAnswer::Error(e));
                }
                let Some(ans) = self.fanout.answered(sub, ok) else {
                    return;
                };
                let reply = SubAnswer::Server {
                    bytes: f.freeze(),
                    ok: ok.is_some(),
                };
                self.answer_waiters(now, sub, ans.waiters, reply);
                if let Some(r) = ans.release {
                    self.unsubscribe_upstream(now, r);
                }
            }
        }
    }

    /// One request left the id slabs (answered).
    fn untrack(&mut self) {
        self.in_flight -= 1;
        self.metrics.in_flight.dec();
    }

    /// A desktop's request was answered: queue the answer, free its in-flight slot, and take
    /// its next frames if they were held back.
    fn answered(&mut self, now: Instant, slot: usize, b: Bytes) {
        let d = &mut self.desktops[slot];
        d.in_flight = d.in_flight.saturating_sub(1);
        let sid = d.sid;
        if let Ok(h) = deskmux_codec::Head::parse(&b)
            && let Some(h) = h
            && let Some(v) = self.corrs.get_mut(&sid)
        {
            if let Some(i) = v.iter().position(|c| *c == h.correlation) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                self.corrs.remove(&sid);
            }
        }
        let d = &mut self.desktops[slot];
        // Only a desktop held back (frames waiting, not read) or half-closed has anything to
        // resume.
        let held = d.rx.is_some() || d.flags & (STALLED | EOF) != 0;
        self.deliver(now, slot, b);
        if held {
            self.woken.push(slot);
        }
    }

    /// The waiters of a shared subscription get their answers, in the order they came: a
    /// `SUBSCRIBE` the server's answer (restamped with the desktop's ids) or an error made
    /// here; an `UNSUBSCRIBE` success (whatever happened upstream, the desktop no longer holds
    /// the topic).
    fn answer_waiters(
        &mut self,
        now: Instant,
        sub: SubKey,
        waiters: Vec<Waiter>,
        answer: SubAnswer,
    ) {
        if let SubAnswer::Error(e) = &answer {
            self.metrics.error(e.code.name());
        }
        for w in waiters {
            let Some(slot) = self.slot_of_sid(w.session) else {
                continue;
            };
            let d = &mut self.desktops[slot];
            if d.phase == Phase::Closing {
                continue;
            }
            let subscribed = matches!(answer, SubAnswer::Server { ok: true, .. });
            if w.op == Op::Subscribe && subscribed {
                // It may have unsubscribed and subscribed again meanwhile: in order.
                if !d.subs.contains(&sub) {
                    d.subs.push(sub);
                }
            } else {
                d.subs.retain(|k| *k != sub);
            }
            let t = match w.op {
                Op::Subscribe => msg::ixn::SUBSCRIBE,
                Op::Unsubscribe => msg::ixn::UNSUBSCRIBE,
            };
            let mut h = Head::new(Kind::Request, Service::Interaction, t);
            h.tenant = d.tenant;
            h.correlation = w.corr;
            h.session = w.session;
            let reply = match (&answer, w.op) {
                (_, Op::Unsubscribe) => ok_response(&h, w.session),
                (SubAnswer::Server { bytes, .. }, Op::Subscribe) => {
                    // Each waiting desktop gets the answer with its own ids (a small copy).
                    let mut b = BytesMut::from(&bytes[..]);
                    deskmux_codec::head::restamp_correlation(&mut b, w.corr);
                    deskmux_codec::head::restamp_session(&mut b, w.session);
                    b.freeze()
                }
                (SubAnswer::Error(e), Op::Subscribe) => {
                    deskmux_codec::error_response(&h, e.code, e.message).freeze()
                }
            };
            self.answered(now, slot, reply);
        }
    }

    /// A `SESSION_OPEN` answer (`code` = None on success) for desktop `sid`.
    fn open_answer(&mut self, now: Instant, l: usize, sid: u64, req: Head, ans: OpenAnswer) {
        let OpenAnswer {
            code,
            reconnect,
            resume,
        } = ans;
        let live = self
            .slot_of_sid(sid)
            .filter(|s| self.desktops[*s].phase == Phase::Opening);
        let Some(slot) = live else {
            if code.is_none() && self.links[l].state == LinkState::Up {
                // The desktop left meanwhile: close the session it no longer needs.
                let mut h = Head::new(Kind::Control, Service::Control, msg::control::SESSION_CLOSE);
                h.tenant = req.tenant;
                h.session = sid;
                self.push_link_control(now, l, empty_frame(h).freeze(), 0);
            }
            return;
        };
        if let Some(t) = reconnect {
            self.reconnect.entry(sid).or_insert(t);
        }
        if let Some(r) = resume {
            self.resume.insert(sid, r);
        }
        let d = &mut self.desktops[slot];
        d.pending_opens = d.pending_opens.saturating_sub(1);
        if let Some(code) = code
            && d.open_error == 0
        {
            d.open_error = code.0;
        }
        if d.pending_opens == 0 {
            self.opened(now, slot, req);
        }
    }

    fn link_event(&mut self, now: Instant, i: usize, f: Frame) {
        let h = *f.head();
        if h.flags.has(Flags::BROADCAST) {
            let seq = f.body().opt_int(msg::key::SEQ).ok().flatten();
            let now_ms = self.ms(now);
            let mut to = Outboxes {
                desktops: &mut self.desktops,
                budget: &mut self.budget,
                dirty: &mut self.dirty,
                limits: &self.limits,
            };
            let Some(sub) = self.fanout.event(i as u16, h.tenant, h.correlation, seq) else {
                self.metrics.error("misrouted");
                return;
            };
            // One encoded frame, shared by every subscriber.
            let bytes = f.freeze();
            let mut n = 0u64;
            let mut slow = Vec::new();
            for sid in &sub.subscribers {
                match to.push_to_session(now_ms, *sid, &bytes) {
                    Delivery::Queued => n += 1,
                    Delivery::Gone => {}
                    Delivery::Slow => slow.push((sid & 0xFFFF_FFFF) as usize),
                }
            }
            self.metrics.fanout_deliveries.inc_by(n);
            for slot in slow {
                self.slow_consumer(now, slot);
            }
            return;
        }
        // Unicast: only to the named session, if it lives on this link incarnation and is of
        // the event's tenant.
        let generation = self.links[i].generation;
        let target = self.slot_of_sid(h.session).filter(|s| {
            let d = &self.desktops[*s];
            matches!(d.phase, Phase::Open | Phase::Opening)
                && d.tenant == h.tenant
                && d.bound_to(i as u16, generation)
        });
        match target {
            Some(slot) if self.desktops[slot].phase == Phase::Opening => {
                self.hold_early(slot, f.freeze());
            }
            Some(slot) => {
                self.deliver(now, slot, f.freeze());
            }
            None => {
                self.metrics.error("misrouted");
                debug!(link = %self.links[i].name, ?h, "unicast event for no session of this link and tenant dropped");
            }
        }
    }

    /// A unicast event for a desktop whose hello is not answered yet (a resumed session's
    /// replay, PROTOCOL.md §4.6): held, and delivered right after the hello. Past the
    /// desktop's queue bound the hello is refused instead (its session stays detached
    /// upstream, and a fresh hello works).
    fn hold_early(&mut self, slot: usize, b: Bytes) {
        let d = &mut self.desktops[slot];
        let (held, n) = self.early.entry(d.sid).or_default();
        if *n + b.len() > self.limits.out_queue_bytes {
            if d.open_error == 0 {
                d.open_error = ErrorCode::RESUME_REFUSED.0;
            }
            return;
        }
        *n += b.len();
        self.budget.add(b.len());
        held.push(b);
    }

    fn link_control(&mut self, now: Instant, i: usize, f: &Frame) {
        let h = *f.head();
        match h.msg_type {
            msg::control::SESSION_CLOSE => {
                let generation = self.links[i].generation;
                let target = self.slot_of_sid(h.session).filter(|s| {
                    let d = &self.desktops[*s];
                    d.tenant == h.tenant && d.bound_to(i as u16, generation)
                });
                if let Some(slot) = target {
                    let mut ch =
                        Head::new(Kind::Control, Service::Control, msg::control::SESSION_CLOSE);
                    ch.session = h.session;
                    ch.tenant = h.tenant;
                    self.deliver(now, slot, empty_frame(ch).freeze());
                    self.close_desktop(now, slot, Disconnect::ClosedByServer);
                }
            }
            msg::control::GO_AWAY => {
                info!(link = %self.links[i].name, "server sent GO_AWAY: no new sessions on this link");
                self.links[i].draining = true;
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

    /// Answer a request taken out of link `l`'s id slab with the error `e`: the desktop that
    /// sent it, the hello waiting on it, or every desktop waiting on the subscription it
    /// carried. The one place that keeps "answered exactly once" for failures.
    pub(super) fn answer_pending(&mut self, now: Instant, l: usize, p: Pending, e: ProxyError) {
        self.untrack();
        match p.owner {
            Owner::Internal => {}
            Owner::Desktop { session } => {
                if let Some(slot) = self.slot_of_sid(session) {
                    self.metrics.error(e.code.name());
                    let f = deskmux_codec::error_response(&p.req.head(session), e.code, e.message);
                    self.answered(now, slot, f.freeze());
                }
            }
            Owner::Open { session } => {
                // A session open that never reached the server: the instance is unavailable
                // to this desktop (the hello may be retried elsewhere).
                let c = if e.code == ErrorCode::LINK_LOST_UNSENT {
                    ErrorCode::UNAVAILABLE
                } else {
                    e.code
                };
                let ans = OpenAnswer {
                    code: Some(c),
                    reconnect: None,
                    resume: None,
                };
                self.open_answer(now, l, session, p.req.head(0), ans);
            }
            Owner::Subscribe { sub } => {
                let release = self.fanout.get(sub).map(|s| super::fanout::Release {
                    link: s.link,
                    tenant: s.tenant,
                    topic: s.topic.clone(),
                });
                let waiters = self.fanout.failed(sub);
                self.answer_waiters(now, sub, waiters, SubAnswer::Error(e));
                // Timed out or answered too large: the server may hold it; links are
                // ordered, so dropping it now undoes it whenever it was made.
                if e.code != ErrorCode::LINK_LOST
                    && e.code != ErrorCode::LINK_LOST_UNSENT
                    && let Some(r) = release
                {
                    self.unsubscribe_upstream(now, r);
                }
            }
        }
    }

    /// The link died: answer everything in flight on it, tell its desktops, schedule a
    /// reconnect with backoff and jitter.
    pub(super) fn fail_link(&mut self, now: Instant, i: usize, why: &'static str) {
        let old = self.links[i].id(i);
        let rng = &mut self.rng;
        let failed = self.links[i].fail(now, &self.limits, |base| base / 2 + rng.u64(0..=base));
        warn!(link = %self.links[i].name, why, retry_ms = failed.retry_in.as_millis() as u64, "link down");
        self.io.push_back(Io::CloseLink(old));
        self.budget.sub(failed.freed);
        // 1. Every request in flight gets its explicit error (or goes elsewhere, if it was
        //    capability-routed and never written).
        for (id, p, code) in failed.pending {
            if p.reroute
                && code == ErrorCode::LINK_LOST_UNSENT
                && let Some(bytes) = failed.unsent.get(&id)
                && self.resubmit(now, &p, bytes)
            {
                continue;
            }
            self.answer_pending(now, i, p, ProxyError::upstream(code, "upstream link lost"));
        }
        // 2. Its subscriptions are gone (after their waiters were answered above).
        let dropped = self.fanout.drop_link(i as u16);
        // 3. Desktops whose session lived on it lost it: tell them. The connection stays:
        //    later requests to that service get LINK_LOST_UNSENT (the binding's incarnation
        //    no longer matches), so every request is still answered; the client reconnects.
        if failed.was_up {
            let victims: Vec<usize> = self
                .desktops
                .iter()
                .filter(|(_, d)| d.phase == Phase::Open && d.bound_to(i as u16, failed.dead_gen))
                .map(|(s, _)| s)
                .collect();
            for slot in victims {
                let d = &mut self.desktops[slot];
                d.subs.retain(|k| !dropped.contains(k));
                let sid = d.sid;
                self.metrics.error("link_lost");
                let f = deskmux_codec::control_error(
                    sid,
                    ErrorCode::LINK_LOST,
                    "upstream session lost; reconnect",
                );
                self.deliver(now, slot, f.freeze());
            }
        }
    }

    /// A capability-routed request that was never written on a link that died: route it
    /// again (same bytes, a new link id) to another instance with the capability on which the
    /// desktop has a live session. False if there is none (the caller answers the error).
    fn resubmit(&mut self, now: Instant, p: &Pending, bytes: &Bytes) -> bool {
        let Owner::Desktop { session } = p.owner else {
            return false;
        };
        let Some(slot) = self.slot_of_sid(session) else {
            return false;
        };
        let d = &self.desktops[slot];
        if d.phase != Phase::Open || bytes.len() < deskmux_codec::HEAD_LEN {
            return false;
        }
        let (bindings, tenant) = (d.bindings, d.tenant);
        let body = deskmux_codec::BodyRef::new(&bytes[deskmux_codec::HEAD_LEN..]);
        let view = LinksView(&self.links);
        let Some(l) = self
            .router
            .resubmit_link(&bindings, p.req.service, body, &view)
        else {
            return false;
        };
        // The failed entry already left the slab: this is the same request, moved (its
        // start time, hence its timeout, kept).
        let id = self.links[l].ids.insert(*p);
        self.metrics.error("resubmitted_unsent");
        let mut b = BytesMut::from(&bytes[..]);
        deskmux_codec::head::restamp_correlation(&mut b, id);
        self.push_link_request(now, l, tenant, b.freeze(), id);
        true
    }
}

/// How the waiters of a shared subscription are answered.
enum SubAnswer {
    /// The server's answer to the `SUBSCRIBE` (`ok`: not an error).
    Server {
        /// The encoded answer.
        bytes: Bytes,
        /// Whether it is a success.
        ok: bool,
    },
    /// An error made here (link lost, timeout, oversized, misrouted).
    Error(ProxyError),
}
