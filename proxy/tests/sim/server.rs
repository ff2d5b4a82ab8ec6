//! A simulated upstream server behind one link: it answers the link protocol, holds
//! sessions and link-scoped subscriptions, publishes events, and misbehaves on demand.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{
    self, LinkHello, LinkHelloAck, ServerHello, ServiceState, control, ixn, key,
};
use deskmux_codec::{
    ErrorCode, Flags, Frame, FrameDecoder, Head, Kind, Service, empty_frame, error_response,
};
use deskmux_proxy::core::LinkId;

/// Who a unicast event was meant for, by its nonce.
#[derive(Debug, Clone, Copy)]
pub struct Intent {
    /// The session named.
    pub session: u64,
    /// The tenant stamped.
    pub tenant: u32,
    /// Whether the session is one of this link's with that tenant (a correct server).
    pub legit: bool,
}

/// A simulated server.
#[derive(Debug)]
pub struct Server {
    /// The link incarnation connected to it, if any.
    pub link: Option<LinkId>,
    rx: BytesMut,
    dec: FrameDecoder,
    /// Bytes to send to the proxy.
    pub out: BytesMut,
    /// Sessions: sid → tenant.
    pub sessions: BTreeMap<u64, u32>,
    /// Link subscriptions: (tenant, topic) → (id, seq).
    pub subs: BTreeMap<(u32, String), (u64, i64)>,
    next_sub: u64,
    /// Answers held back, released later (out of order).
    pub held: Vec<Bytes>,
    /// Not answering at all.
    pub hung: bool,
    /// Requests received (all kinds) and the most in flight for one session seen.
    pub requests: u64,
    /// SUBSCRIBEs answered ok and UNSUBSCRIBEs received, per (tenant, topic).
    pub subscribed: BTreeMap<(u32, String), (u64, u64)>,
    /// The largest frame the proxy said it accepts.
    pub proxy_max: Option<u32>,
    /// Nonces of the echoes that reached this server (drained by the world).
    pub echoed: Vec<u64>,
}

impl Server {
    pub fn new() -> Server {
        Server {
            link: None,
            rx: BytesMut::new(),
            dec: FrameDecoder::new(16 * 1024 * 1024),
            out: BytesMut::new(),
            sessions: BTreeMap::new(),
            subs: BTreeMap::new(),
            next_sub: 100,
            held: Vec::new(),
            hung: false,
            requests: 0,
            subscribed: BTreeMap::new(),
            proxy_max: None,
            echoed: Vec::new(),
        }
    }

    /// A new connection: all state of the previous one is gone.
    pub fn connect(&mut self, link: LinkId) {
        self.link = Some(link);
        self.rx.clear();
        self.dec = FrameDecoder::new(16 * 1024 * 1024);
        self.out.clear();
        self.sessions.clear();
        self.subs.clear();
        self.held.clear();
        self.hung = false;
    }

    pub fn disconnect(&mut self) {
        self.link = None;
        self.sessions.clear();
        self.subs.clear();
        self.held.clear();
        self.out.clear();
    }

    fn send(&mut self, f: Frame) {
        self.out.extend_from_slice(f.as_bytes());
    }

    fn answer(&mut self, f: Frame, hold: bool) {
        if hold {
            self.held.push(f.freeze());
        } else {
            self.send(f);
        }
    }

    /// Release held answers (in reverse order: out of order on purpose).
    pub fn release(&mut self) {
        while let Some(b) = self.held.pop() {
            self.out.extend_from_slice(&b);
        }
    }

    /// Bytes written by the proxy. `hold`: whether to hold this batch's answers.
    ///
    /// # Errors
    /// The proxy broke the link protocol.
    pub fn receive(&mut self, data: &[u8], hold: bool, big: bool) -> Result<(), String> {
        self.rx.extend_from_slice(data);
        loop {
            let f = match self.dec.next_frame(&mut self.rx) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("proxy broke link framing: {e}")),
            };
            self.frame(f, hold, big)?;
        }
    }

    fn frame(&mut self, f: Frame, hold: bool, big: bool) -> Result<(), String> {
        let h = *f.head();
        match (h.kind, h.service, h.msg_type) {
            (Kind::Request, Service::Control, control::LINK_HELLO) => {
                let lh = LinkHello::read(f.body()).map_err(|e| format!("bad link hello: {e}"))?;
                self.proxy_max = lh.max_frame;
                let mut r = h;
                r.kind = Kind::Response;
                let ack = Frame::build(r, |w| {
                    LinkHelloAck {
                        max_frame: 1 << 20,
                        heartbeat_ms: 1000,
                        state: ServiceState {
                            state: msg::State::Running,
                            role: msg::Role::Primary,
                            instance: "sim",
                        },
                    }
                    .write(w)
                })
                .expect("ack");
                self.send(ack);
            }
            (Kind::Request, Service::Control, control::HEARTBEAT) => {
                if !self.hung {
                    let mut r = h;
                    r.kind = Kind::Response;
                    self.send(empty_frame(r));
                }
            }
            (Kind::Response, Service::Control, control::HEARTBEAT) => {}
            (Kind::Request, Service::Control, control::SESSION_OPEN) => {
                self.requests += 1;
                let hello = msg::DesktopHello::read(f.body()).map_err(|e| format!("open: {e}"))?;
                if self.sessions.contains_key(&h.session) || h.session == 0 {
                    return Err(format!("session {:x} opened twice on one link", h.session));
                }
                let mut r = h;
                r.kind = Kind::Response;
                if hello.token != format!("tok-{}", h.tenant) {
                    let e = error_response(&h, ErrorCode::AUTH_FAILED, "bad token");
                    self.answer(e, hold);
                    return Ok(());
                }
                self.sessions.insert(h.session, h.tenant);
                let sh = Frame::build(r, |w| {
                    ServerHello {
                        session: h.session,
                        max_frame: 1 << 20,
                        heartbeat_ms: 1000,
                        max_in_flight: 64,
                    }
                    .write(w)
                })
                .expect("server hello");
                self.answer(sh, hold);
            }
            (Kind::Control, Service::Control, control::SESSION_CLOSE) => {
                self.sessions.remove(&h.session);
            }
            (Kind::Request, Service::Interaction | Service::Ucs, t) => {
                self.requests += 1;
                // PROTOCOL.md §9: on a link, UNSUBSCRIBE with session 0 is link-scoped.
                let link_scoped =
                    h.session == 0 && h.service == Service::Interaction && t == ixn::UNSUBSCRIBE;
                if !link_scoped {
                    match self.sessions.get(&h.session) {
                        None => {
                            // The proxy must only send on sessions it opened: a request for
                            // an unknown one is answered like the real server does.
                            let e = error_response(&h, ErrorCode::INVALID_STATE, "unknown session");
                            self.answer(e, hold);
                            return Ok(());
                        }
                        Some(t) if *t != h.tenant => {
                            return Err(format!(
                                "proxy sent tenant {} on session {:x} of tenant {t}",
                                h.tenant, h.session
                            ));
                        }
                        Some(_) => {}
                    }
                }
                let mut r = h;
                r.kind = Kind::Response;
                r.flags = Flags::default();
                let reply = match (h.service, t) {
                    (Service::Interaction, ixn::SUBSCRIBE) => {
                        let topic = f.body().str(key::TOPIC).unwrap_or("").to_string();
                        let k = (h.tenant, topic.clone());
                        let next = self.next_sub;
                        let (id, seq) = *self.subs.entry(k.clone()).or_insert((next, 0));
                        if id == next {
                            self.next_sub += 1;
                        }
                        self.subscribed.entry(k).or_default().0 += 1;
                        Frame::build(r, |w| {
                            w.int(key::SUBSCRIPTION, id as i64);
                            w.int(key::SEQ, seq);
                            Ok(())
                        })
                        .expect("sub")
                    }
                    (Service::Interaction, ixn::UNSUBSCRIBE) => {
                        let topic = f.body().str(key::TOPIC).unwrap_or("").to_string();
                        let k = (h.tenant, topic);
                        self.subs.remove(&k);
                        self.subscribed.entry(k).or_default().1 += 1;
                        empty_frame(r)
                    }
                    _ => {
                        if let Ok(Some(d)) = f.body().opt_bin(key::DATA)
                            && let Some(n) = d.first_chunk::<8>()
                        {
                            self.echoed.push(u64::from_be_bytes(*n));
                        }
                        // Echo: the same body; sometimes far larger than the proxy accepts.
                        if big {
                            let body = vec![1u8; self.proxy_max.unwrap_or(1 << 16) as usize + 10];
                            Frame::with_body(r, &body).expect("big")
                        } else {
                            Frame::with_body(r, f.body_bytes()).expect("echo")
                        }
                    }
                };
                self.answer(reply, hold);
            }
            _ => return Err(format!("server got an unexpected frame {h:?}")),
        }
        Ok(())
    }

    /// Publish a broadcast event on a random subscription (`pick` chooses the index), with
    /// `tenant` stamped (the subscription's, unless a fault chose another).
    pub fn publish(&mut self, pick: usize, wrong_tenant: Option<u32>) -> bool {
        if self.subs.is_empty() || self.hung {
            return false;
        }
        let k = self.subs.keys().nth(pick % self.subs.len()).cloned();
        let Some(k) = k else {
            return false;
        };
        let Some(e) = self.subs.get_mut(&k) else {
            return false;
        };
        e.1 += 1;
        let (id, seq) = *e;
        let mut h = Head::new(Kind::Event, Service::Interaction, ixn::QUEUE_EVENT);
        h.flags = Flags(Flags::BROADCAST);
        h.tenant = wrong_tenant.unwrap_or(k.0);
        h.correlation = id;
        let f = Frame::build(h, |w| {
            w.str(key::TOPIC, &k.1)?;
            w.int(key::SEQ, seq);
            w.str(key::EVENT, "submitted")?;
            Ok(())
        })
        .expect("event");
        self.send(f);
        true
    }

    /// A unicast event to `session` stamped `tenant`, with `nonce`; returns its intent.
    pub fn unicast(&mut self, session: u64, tenant: u32, nonce: u64) -> Intent {
        let legit = self.sessions.get(&session) == Some(&tenant);
        let mut h = Head::new(Kind::Event, Service::Interaction, ixn::INVITE);
        h.tenant = tenant;
        h.session = session;
        let f = Frame::build(h, |w| {
            w.int("nonce", nonce as i64);
            Ok(())
        })
        .expect("invite");
        self.send(f);
        Intent {
            session,
            tenant,
            legit,
        }
    }

    /// A garbage answer: a response for a correlation id nobody asked.
    pub fn stray_answer(&mut self, corr: u64, tenant: u32, session: u64) {
        let mut h = Head::new(Kind::Response, Service::Interaction, ixn::ECHO);
        h.correlation = corr;
        h.tenant = tenant;
        h.session = session;
        self.send(empty_frame(h));
    }

    /// Duplicate the last held answer, if any (sent twice).
    pub fn duplicate_held(&mut self) {
        if let Some(b) = self.held.last().cloned() {
            self.held.push(b);
        }
    }

    /// Re-stamp a held answer's tenant (a server bug the proxy must contain).
    pub fn corrupt_held_tenant(&mut self, tenant: u32) {
        if let Some(b) = self.held.last_mut() {
            let mut m = BytesMut::from(&b[..]);
            deskmux_codec::head::restamp_tenant(&mut m, tenant);
            *b = m.freeze();
        }
    }

    /// The head of a frame announcing `len` body bytes, and nothing more (a stalled link).
    pub fn stall(&mut self, len: u32) {
        let mut h = Head::new(Kind::Response, Service::Interaction, ixn::ECHO);
        h.body_len = len;
        self.out.extend_from_slice(&h.to_bytes());
        self.hung = true;
    }

    /// Bytes that are not frames.
    pub fn garbage(&mut self) {
        self.out.extend_from_slice(b"not a deskmux frame at all");
    }

    /// End a session from the server side.
    pub fn close_session(&mut self, pick: usize) -> Option<u64> {
        let sid = *self
            .sessions
            .keys()
            .nth(pick % self.sessions.len().max(1))?;
        let tenant = self.sessions.remove(&sid)?;
        let mut h = Head::new(Kind::Control, Service::Control, control::SESSION_CLOSE);
        h.session = sid;
        h.tenant = tenant;
        self.send(empty_frame(h));
        Some(sid)
    }
}
