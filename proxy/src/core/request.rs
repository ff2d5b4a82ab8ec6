//! Desktop frames in: framing with backpressure, the hello, forwarding, subscriptions.
//!
//! Bytes from a desktop are framed in the worker-wide arena; only what is left over (a partial
//! frame, or whole frames held back) moves to a buffer of the desktop's own. A frame is taken
//! only while the desktop may have another request upstream ([`Desktop::can_take_frame`]);
//! otherwise its bytes wait and the driver stops reading it, so a desktop that floods or
//! never reads costs what it may hold, not what it sends. Frames sent behind the hello wait
//! for the hello's answer.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{self, DesktopHello, ServerHello};
use deskmux_codec::{ErrorCode, Flags, Frame, FrameDecoder, Head, Kind, Service, empty_frame};

use super::desktop::{Action, Binding, EOF, Phase, Rx, STALLED};
use super::fanout::{Release, Subscribed, Unsubscribed};
use super::ids::Owner;
use super::{Core, DesktopId, Io, LinksView};
use crate::error::{Disconnect, ProxyError};

impl Core {
    /// Frame `data` (just read from the desktop in `slot`) and act on the frames it may take.
    pub(super) fn take_bytes(&mut self, now: Instant, slot: usize, data: &[u8]) {
        let now_ms = self.ms(now);
        let d = &mut self.desktops[slot];
        if d.phase == Phase::Closing || d.has(EOF) {
            return;
        }
        d.last_rx_ms = now_ms;
        // The input budget: paid from the later of the clock and what is already owed.
        let cost = self.input_cost_us(data.len());
        let now_us = self.us(now);
        let d = &mut self.desktops[slot];
        let from = if (d.paid_us.wrapping_sub(now_us) as i32) > 0 {
            d.paid_us
        } else {
            now_us
        };
        d.paid_us = from.wrapping_add(cost);
        if let Some(mut rx) = d.rx.take() {
            // A held buffer grows: that needs room in the worker's budget (the frame is
            // begun: the hard limit is what counts).
            if !self.make_room(now, data.len(), true) {
                self.budget.sub(rx.buf.len());
                self.fail_desktop(now, slot, overloaded(), Disconnect::Overloaded);
                return;
            }
            rx.buf.extend_from_slice(data);
            self.budget.add(data.len());
            self.frames(now, slot, &mut rx.buf, &mut rx.dec, &mut rx.since_ms);
            self.keep_rx(slot, rx);
        } else {
            let mut buf = std::mem::take(&mut self.arena);
            if buf.capacity() - buf.len() < data.len() {
                buf.reserve(data.len().max(64 * 1024));
            }
            buf.extend_from_slice(data);
            self.budget.add(data.len());
            let mut dec = FrameDecoder::new(self.desktops[slot].max_frame(&self.limits));
            let mut since = now_ms;
            self.frames(now, slot, &mut buf, &mut dec, &mut since);
            if !buf.is_empty() {
                // Left over: give it a buffer of its own, sized for what is there, so the
                // arena is not pinned by a slow sender.
                if !self.make_room(now, 0, true) {
                    self.budget.sub(buf.len());
                    buf.clear();
                    self.fail_desktop(now, slot, overloaded(), Disconnect::Overloaded);
                } else {
                    let mut own = BytesMut::with_capacity(buf.len().max(256));
                    own.extend_from_slice(&buf);
                    buf.clear();
                    self.keep_rx(
                        slot,
                        Box::new(Rx {
                            buf: own,
                            dec,
                            since_ms: since,
                        }),
                    );
                }
            }
            self.arena = buf;
        }
        self.finish_eof(now, slot);
    }

    /// Put a desktop's held bytes back (or drop the buffer when nothing is held).
    fn keep_rx(&mut self, slot: usize, rx: Box<Rx>) {
        let Some(d) = self.desktops.get_mut(slot) else {
            self.budget.sub(rx.buf.len());
            return;
        };
        if d.phase == Phase::Closing {
            self.budget.sub(rx.buf.len());
        } else if !rx.buf.is_empty() {
            d.rx = Some(rx);
        }
    }

    /// Take frames from `buf` while the desktop may take them.
    fn frames(
        &mut self,
        now: Instant,
        slot: usize,
        buf: &mut BytesMut,
        dec: &mut FrameDecoder,
        since: &mut u32,
    ) {
        loop {
            let Some(d) = self.desktops.get(slot) else {
                return;
            };
            if !d.can_take_frame(&self.limits) {
                return;
            }
            dec.set_max_frame_len(d.max_frame(&self.limits));
            match dec.next_frame(buf) {
                Ok(Some(f)) => {
                    self.budget.sub(f.len());
                    *since = self.ms(now);
                    self.desktop_frame(now, slot, f);
                }
                Ok(None) => return,
                Err(e) => {
                    // PROTOCOL.md §2: before closing for any framing loss, send a control
                    // error.
                    self.budget.sub(buf.len());
                    buf.clear();
                    let msg = match e.code() {
                        ErrorCode::FRAME_TOO_LARGE => "frame over the maximum: framing lost",
                        _ => "bad magic or version: framing lost",
                    };
                    self.fail_desktop(
                        now,
                        slot,
                        ProxyError::desktop(e.code(), msg),
                        Disconnect::Framing,
                    );
                    return;
                }
            }
        }
    }

    /// Something that held a desktop back may have cleared (an answer came, its queue
    /// drained, its session opened): take its held frames, and read it again if it may.
    pub(super) fn unstall(&mut self, now: Instant, slot: usize) {
        let Some(d) = self.desktops.get_mut(slot) else {
            return;
        };
        if d.phase == Phase::Closing {
            return;
        }
        if d.rx.is_some()
            && d.can_take_frame(&self.limits)
            && let Some(mut rx) = d.rx.take()
        {
            self.frames(now, slot, &mut rx.buf, &mut rx.dec, &mut rx.since_ms);
            self.keep_rx(slot, rx);
        }
        let now_ms = self.ms(now);
        if self.desktops.get(slot).is_some_and(|d| d.has(STALLED)) && self.may_read(slot) {
            let d = &mut self.desktops[slot];
            d.flags &= !STALLED;
            // The idle and frame clocks were stopped while the proxy held it back.
            d.last_rx_ms = now_ms;
            if let Some(rx) = d.rx.as_mut() {
                rx.since_ms = now_ms;
            }
            self.io.push_back(Io::Read(DesktopId::from_sid(d.sid)));
        }
        self.finish_eof(now, slot);
    }

    /// Act on one frame from a desktop.
    fn desktop_frame(&mut self, now: Instant, slot: usize, f: Frame) {
        let h = *f.head();
        let d = &self.desktops[slot];
        let router = &self.router;
        let busy = h.kind == Kind::Request && self.corr_busy(d.sid, h.correlation);
        let action = d.classify(&h, self.draining.is_some(), busy, |s| router.routable(s));
        match action {
            Action::Ignore => {}
            Action::Heartbeat => {
                // §2.3: once open, the session's tenant and id, whatever the heartbeat said.
                let mut r = h;
                r.kind = Kind::Response;
                r.flags = Flags::default();
                if d.phase == Phase::Open {
                    r.tenant = d.tenant;
                    r.session = d.sid;
                }
                self.deliver(now, slot, empty_frame(r).freeze());
            }
            Action::Hello => self.hello(now, slot, &f),
            Action::Reject(e) => self.reply_error(now, slot, &h, e),
            Action::ControlError(e) => {
                // §5.1: a control error naming the refused frame (its correlation and session).
                self.metrics.error(e.code.name());
                let f = deskmux_codec::refusal(&h, e.code, e.message);
                self.deliver(now, slot, f.freeze());
            }
            Action::Leave => self.close_desktop(now, slot, Disconnect::Left),
            Action::Forward(b) => {
                self.count_request(h.service);
                let routed =
                    if self.router.partitions.is_empty() && self.router.capability.is_empty() {
                        Ok((b, false))
                    } else {
                        let bindings = self.desktops[slot].bindings;
                        let view = LinksView(&self.links);
                        self.router.request_binding(&bindings, &f, b, &view)
                    };
                match routed {
                    Ok((b, reroute)) => self.forward(now, slot, b, f, reroute),
                    Err(e) => self.reply_error(now, slot, &h, e),
                }
            }
            Action::Subscribe(b) => {
                self.count_request(h.service);
                self.subscribe(now, slot, f, b);
            }
            Action::Unsubscribe(b) => {
                self.count_request(h.service);
                self.unsubscribe(now, slot, &f, b);
            }
        }
    }

    fn count_request(&self, s: Service) {
        let i = match s {
            Service::Interaction => 0,
            Service::Ucs => 1,
            _ => 2,
        };
        self.request_counters[i].inc();
    }

    /// Whether a request of `len` bytes may go on binding `b` now.
    fn admit(&mut self, now: Instant, b: Binding, len: usize) -> Result<(), ProxyError> {
        if !self.link_ok(b) {
            return Err(ProxyError::upstream(
                ErrorCode::LINK_LOST_UNSENT,
                "upstream link lost",
            ));
        }
        let link = &self.links[b.link as usize];
        if len > link.max_frame {
            return Err(ProxyError::desktop(
                ErrorCode::FRAME_TOO_LARGE,
                "frame over the server's maximum",
            ));
        }
        if link.out.request_bytes() + len > self.limits.link_queue_bytes {
            return Err(ProxyError::upstream(
                ErrorCode::OVERLOADED,
                "upstream link queue full",
            ));
        }
        if !self.make_room(now, len, false) {
            return Err(overloaded());
        }
        Ok(())
    }

    /// Forward a desktop request on its binding's link.
    pub(super) fn forward(
        &mut self,
        now: Instant,
        slot: usize,
        b: Binding,
        mut f: Frame,
        reroute: bool,
    ) {
        let h = *f.head();
        if let Err(e) = self.admit(now, b, f.len()) {
            self.reply_error(now, slot, &h, e);
            return;
        }
        let d = &mut self.desktops[slot];
        d.in_flight += 1;
        let (sid, tenant) = (d.sid, d.tenant);
        self.corr_track(sid, h.correlation);
        f.set_session(sid);
        let l = b.link as usize;
        let id = self.track(now, l, Owner::Desktop { session: sid }, &h, reroute);
        f.set_correlation(id);
        self.push_link_request(now, l, tenant, f.freeze(), id);
    }

    /// A hello: open a session upstream on one link of each instance serving the services it
    /// asks for; the proxy answers with its own server hello once all are accepted.
    fn hello(&mut self, now: Instant, slot: usize, f: &Frame) {
        let h = *f.head();
        // §4.1: a refused hello is answered, then the connection closes, whatever the refusal.
        let refuse = |core: &mut Core, e: ProxyError| {
            core.reply_error(now, slot, &h, e);
            core.close_desktop(now, slot, Disconnect::HelloRefused);
        };
        // §3 and §4.1, in the order a server checks them: the body (depth included), the
        // keys, the version, then the services.
        if f.body().validate().is_err() {
            return refuse(
                self,
                ProxyError::desktop(ErrorCode::MALFORMED, "malformed body"),
            );
        }
        let hello = match DesktopHello::read(f.body()) {
            Ok(x) => x,
            Err(_) => {
                return refuse(
                    self,
                    ProxyError::desktop(ErrorCode::MALFORMED, "bad hello body"),
                );
            }
        };
        if hello.version != u32::from(deskmux_codec::VERSION) {
            return refuse(
                self,
                ProxyError::desktop(ErrorCode::PROTOCOL, "unsupported protocol version"),
            );
        }
        // Bits of services routed nowhere are ignored; none at all is NO_ROUTE.
        if !(1..64u8).any(|s| hello.services & (1u64 << s) != 0 && self.router.routable(s)) {
            return refuse(
                self,
                ProxyError::desktop(ErrorCode::NO_ROUTE, "no route for the services asked"),
            );
        }
        if self.draining.is_some() {
            return refuse(
                self,
                ProxyError::proxy(ErrorCode::SHUTTING_DOWN, "proxy is shutting down"),
            );
        }
        if !self.make_room(now, f.len(), false) {
            return refuse(self, overloaded());
        }
        let view = LinksView(&self.links);
        let chosen = match self.router.hello_links(hello.services, h.tenant, &view) {
            Ok(c) => c,
            Err(e) => return refuse(self, e),
        };
        let d = &mut self.desktops[slot];
        d.tenant = h.tenant;
        d.phase = Phase::Opening;
        let mut opened: Vec<usize> = Vec::new();
        let mut full = false;
        for (s, l) in &chosen {
            let known = d
                .bindings
                .iter()
                .any(|b| b.service == *s && b.link as usize == *l);
            if !known {
                full |= !d.bind(Binding {
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
            return refuse(
                self,
                ProxyError::proxy(ErrorCode::UNAVAILABLE, "too many upstream sessions"),
            );
        }
        d.pending_opens = opened.len() as u8;
        let sid = d.sid;
        let body = open_body(self.sources.ip(d.source), f.body_bytes());
        for l in opened {
            let mut oh = Head::new(Kind::Request, Service::Control, msg::control::SESSION_OPEN);
            oh.tenant = h.tenant;
            oh.session = sid;
            if let Ok(mut of) = Frame::with_body(oh, &body) {
                let id = self.track(now, l, Owner::Open { session: sid }, &h, false);
                of.set_correlation(id);
                self.push_link_request(now, l, h.tenant, of.freeze(), id);
            }
        }
    }

    /// Every `SESSION_OPEN` of a hello was answered: open the session (or refuse the hello
    /// with the first error).
    pub(super) fn opened(&mut self, now: Instant, slot: usize, req: Head) {
        let d = &mut self.desktops[slot];
        if d.open_error != 0 {
            let code = ErrorCode(d.open_error);
            // Close the sessions that did open (close_desktop sends SESSION_CLOSE on each).
            self.reply_error(
                now,
                slot,
                &req,
                ProxyError::upstream(code, "session refused upstream"),
            );
            self.close_desktop(now, slot, Disconnect::HelloRefused);
            return;
        }
        d.phase = Phase::Open;
        let sid = d.sid;
        let reconnect = self.reconnect.remove(&sid);
        let resume = self.resume.remove(&sid);
        if let Some(rx) = d.rx.as_mut() {
            rx.dec.set_max_frame_len(self.limits.max_frame as usize);
        }
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
        let built = Frame::build(r, |w| {
            sh.write(w)?;
            if let Some(t) = &reconnect {
                w.str(msg::key::RECONNECT, t)?;
            }
            if let Some(r) = &resume {
                w.str(msg::key::RESUME, &r.token)?;
                w.int(msg::key::RESUME_GRACE_MS, r.grace_ms);
                if let Some(n) = r.replayed {
                    w.int(msg::key::REPLAYED, n);
                }
            }
            Ok(())
        });
        if let Ok(fr) = built {
            self.deliver(now, slot, fr.freeze());
        }
        // A resumed session's replay, held until the hello went out (§4.6).
        if let Some((held, n)) = self.early.remove(&sid) {
            self.budget.sub(n);
            for b in held {
                self.deliver(now, slot, b);
            }
        }
        // Frames sent behind the hello were waiting for this.
        self.woken.push(slot);
    }

    /// `SUBSCRIBE`: one upstream subscription per (link, tenant, topic), shared.
    fn subscribe(&mut self, now: Instant, slot: usize, mut f: Frame, b: Binding) {
        let h = *f.head();
        // §3: answered here when the topic is held, so checked here as the server would.
        if f.body().validate().is_err() {
            return self.reply_error(
                now,
                slot,
                &h,
                ProxyError::desktop(ErrorCode::MALFORMED, "malformed body"),
            );
        }
        let topic: Option<Box<str>> = f
            .body()
            .opt_str(msg::key::TOPIC)
            .ok()
            .flatten()
            .map(Box::from);
        let Some(topic) = topic else {
            // Let the server answer MALFORMED.
            return self.forward(now, slot, b, f, false);
        };
        if let Err(e) = self.admit(now, b, f.len()) {
            return self.reply_error(now, slot, &h, e);
        }
        let d = &self.desktops[slot];
        let (sid, tenant) = (d.sid, d.tenant);
        let held = self
            .fanout
            .find(b.link, tenant, &topic)
            .is_some_and(|k| d.subs.contains(&k));
        if !held && d.subs.len() >= self.limits.max_subscriptions as usize {
            return self.reply_error(
                now,
                slot,
                &h,
                ProxyError::desktop(
                    ErrorCode::TOO_MANY_SUBSCRIPTIONS,
                    "this session holds max_subscriptions subscriptions",
                ),
            );
        }
        match self
            .fanout
            .subscribe(b.link, tenant, &topic, sid, h.correlation)
        {
            Subscribed::Local { id, seq, key } => {
                let d = &mut self.desktops[slot];
                if !d.subs.contains(&key) {
                    d.subs.push(key);
                }
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
                    self.deliver(now, slot, fr.freeze());
                }
            }
            Subscribed::Wait { key } => {
                let d = &mut self.desktops[slot];
                if !d.subs.contains(&key) {
                    d.subs.push(key);
                }
                d.in_flight += 1;
                let sid = d.sid;
                self.corr_track(sid, h.correlation);
            }
            Subscribed::Forward { key } => {
                let d = &mut self.desktops[slot];
                d.subs.push(key);
                d.in_flight += 1;
                let sid = d.sid;
                self.corr_track(sid, h.correlation);
                f.set_session(sid);
                let l = b.link as usize;
                let id = self.track(now, l, Owner::Subscribe { sub: key }, &h, false);
                f.set_correlation(id);
                self.push_link_request(now, l, tenant, f.freeze(), id);
            }
        }
    }

    /// `UNSUBSCRIBE`: answered here; the upstream subscription goes with its last subscriber.
    fn unsubscribe(&mut self, now: Instant, slot: usize, f: &Frame, b: Binding) {
        let h = *f.head();
        if f.body().validate().is_err() {
            return self.reply_error(
                now,
                slot,
                &h,
                ProxyError::desktop(ErrorCode::MALFORMED, "malformed body"),
            );
        }
        let Ok(Some(topic)) = f.body().opt_str(msg::key::TOPIC) else {
            return self.reply_error(
                now,
                slot,
                &h,
                ProxyError::desktop(ErrorCode::MALFORMED, "missing topic (str)"),
            );
        };
        let d = &mut self.desktops[slot];
        match self
            .fanout
            .unsubscribe(b.link, d.tenant, topic, d.sid, h.correlation)
        {
            Unsubscribed::Wait => {
                d.in_flight += 1;
                let sid = d.sid;
                self.corr_track(sid, h.correlation);
            }
            Unsubscribed::Local { key, release } => {
                if let Some(k) = key {
                    d.subs.retain(|x| *x != k);
                }
                let sid = d.sid;
                self.deliver(now, slot, ok_response(&h, sid));
                if let Some(r) = release {
                    self.unsubscribe_upstream(now, r);
                }
            }
        }
    }

    /// Drop an upstream subscription nobody here holds any more. On a link a subscription
    /// belongs to the link, so the request names no session (session 0, PROTOCOL.md §9).
    pub(super) fn unsubscribe_upstream(&mut self, now: Instant, r: Release) {
        let l = r.link as usize;
        if self.links[l].state != super::LinkState::Up {
            return;
        }
        let mut h = Head::new(Kind::Request, Service::Interaction, msg::ixn::UNSUBSCRIBE);
        h.tenant = r.tenant;
        let Ok(mut f) = Frame::build(h, |w| {
            w.str(msg::key::TOPIC, &r.topic)?;
            Ok(())
        }) else {
            return;
        };
        let id = self.track(now, l, Owner::Internal, &h, false);
        f.set_correlation(id);
        self.push_link_control(now, l, f.freeze(), id);
    }
}

/// The empty success response to request `req` of session `sid`.
pub(super) fn ok_response(req: &Head, sid: u64) -> Bytes {
    let mut r = *req;
    r.kind = Kind::Response;
    r.flags = Flags::default();
    r.session = sid;
    empty_frame(r).freeze()
}

impl Core {
    /// Whether desktop `sid` has a request with correlation id `c` unanswered (§5.2).
    pub(super) fn corr_busy(&self, sid: u64, c: u64) -> bool {
        self.corrs.get(&sid).is_some_and(|v| v.contains(&c))
    }

    /// Note desktop `sid`'s request `c` as in flight (with its `in_flight` count).
    pub(super) fn corr_track(&mut self, sid: u64, c: u64) {
        self.corrs.entry(sid).or_default().push(c);
    }
}

/// The worker's byte budget has no room for new work.
fn overloaded() -> ProxyError {
    ProxyError::proxy(
        ErrorCode::OVERLOADED,
        "proxy worker queue budget is full; retry later",
    )
}

/// The body of a `SESSION_OPEN`: the desktop's address as a first item `source` (PROTOCOL.md
/// §4.3), then the hello as the desktop sent it. First, because a lookup returns the first
/// item of a key: a `source` the desktop put in its own hello never passes for the proxy's.
/// The server locks out failed logins per source with it, as it does on direct connections.
fn open_body(source: Option<std::net::IpAddr>, hello: &[u8]) -> Vec<u8> {
    let ip = source.map(|a| a.to_string()).unwrap_or_default();
    let key = msg::key::SOURCE.as_bytes();
    let mut b = Vec::with_capacity(1 + key.len() + 5 + ip.len() + hello.len());
    b.push(key.len() as u8);
    b.extend_from_slice(key);
    b.push(0x02); // str
    b.extend_from_slice(&(ip.len() as u32).to_be_bytes());
    b.extend_from_slice(ip.as_bytes());
    b.extend_from_slice(hello);
    b
}
