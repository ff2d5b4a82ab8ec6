//! The handshakes of one connection (PROTOCOL.md §4.1–§4.3): the desktop hello and its
//! checks in the spec's order, the link hello, sessions opened on a link, and the verdicts the
//! auth pool sends back. Kept apart from the frame loop in `conn.rs`, which only routes
//! requests here before a session exists (or for a link's own control requests).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use deskmux_codec::msg::{
    DesktopHello, LinkHello, LinkHelloAck, Resume, ServerHello, control, key,
};
use deskmux_codec::{ErrorCode, Frame, Head, Service};

use super::{AuthDone, Conn, Mode, Outcome, Sess};
use crate::auth::resume::Named;
use crate::auth::secret::Secret;
use crate::auth::{Attempt, Proof, Verdict};
use crate::ixn::{Input, LinkId, ResumeIn};
use crate::wire::{self, Peer};

impl Conn {
    /// A request before any hello: only a handshake or a heartbeat (PROTOCOL.md §4.1, §4.2).
    pub(super) fn fresh_request(&mut self, f: &Frame) {
        let h = *f.head();
        if h.service != Service::Control {
            return self.err(&h, ErrorCode::INVALID_STATE, "hello first");
        }
        match h.msg_type {
            control::HEARTBEAT => self.out.frame(wire::ok(&h)),
            control::HELLO | control::LINK_HELLO => {
                // §3: checked before any key is read; a refused hello closes (§4.1).
                if let Err(e) = f.body().validate() {
                    self.err(&h, ErrorCode::MALFORMED, &format!("malformed body: {e}"));
                    self.closing = true;
                } else if h.msg_type == control::HELLO {
                    self.hello(f);
                } else {
                    self.link_hello(f);
                }
            }
            control::SESSION_OPEN => {
                self.err(&h, ErrorCode::INVALID_STATE, "SESSION_OPEN outside a link")
            }
            _ => self.err(&h, ErrorCode::UNKNOWN_MESSAGE, "unknown control message"),
        }
    }

    /// A control request on a link (the proxy's own: heartbeats, session opens).
    pub(super) fn link_control_request(&mut self, f: &Frame) {
        let h = *f.head();
        match h.msg_type {
            control::HEARTBEAT => self.out.frame(wire::ok(&h)),
            control::SESSION_OPEN => match f.body().validate() {
                Ok(()) => self.session_open(f),
                Err(e) => self.err(&h, ErrorCode::MALFORMED, &format!("malformed body: {e}")),
            },
            control::HELLO | control::LINK_HELLO => {
                self.err(&h, ErrorCode::INVALID_STATE, "hello already done")
            }
            _ => self.err(&h, ErrorCode::UNKNOWN_MESSAGE, "unknown control message"),
        }
    }

    /// Checks shared by `HELLO` and `SESSION_OPEN`; `Err` is already answered and says whether
    /// it was `AUTH_FAILED`.
    fn admit<'a>(&self, f: &'a Frame, direct: bool) -> Result<DesktopHello<'a>, bool> {
        let h = f.head();
        let hello = match DesktopHello::read(f.body()) {
            Ok(x) => x,
            Err(e) => {
                self.err(h, ErrorCode::MALFORMED, &format!("bad hello: {e}"));
                return Err(false);
            }
        };
        if hello.version != u32::from(deskmux_codec::VERSION) {
            self.err(h, ErrorCode::PROTOCOL, "unsupported protocol version");
            return Err(false);
        }
        // §4.1: bits of services not run here are ignored; none at all is NO_ROUTE. (On a
        // link the proxy opens a session only for the services it routes here.)
        let role = self.shared.cfg.role;
        let here = (if role.ixn() {
            Service::Interaction.mask_bit()
        } else {
            0
        }) | (if role.ucs() {
            Service::Ucs.mask_bit()
        } else {
            0
        }) | (if self.shared.cfg.gms.is_some() {
            Service::Gms.mask_bit()
        } else {
            0
        });
        if direct && hello.services & here == 0 {
            self.err(h, ErrorCode::NO_ROUTE, "no route for the services asked");
            return Err(false);
        }
        if self.shared.shutting_down.load(Ordering::Acquire) {
            self.err(h, ErrorCode::SHUTTING_DOWN, "shutting down");
            return Err(false);
        }
        if !self.shared.primary.load(Ordering::Acquire) {
            self.err(h, ErrorCode::UNAVAILABLE, "standby instance");
            return Err(false);
        }
        if self.shared.unavailable.load(Ordering::Acquire) {
            self.err(h, ErrorCode::SERVICE_UNAVAILABLE, "service unavailable");
            return Err(false);
        }
        if h.tenant == 0 || !self.shared.tenant_known(h.tenant) {
            if let Some(suppressed) = crate::lograte::LOGIN_REFUSED.allow() {
                tracing::warn!(tenant = h.tenant, agent = ?hello.agent, source = ?self.source, suppressed, "login refused: unknown tenant");
            }
            self.err(h, ErrorCode::AUTH_FAILED, "bad credentials");
            return Err(true);
        }
        if hello.agent.len() > crate::limits::MAX_KEY {
            self.err(h, ErrorCode::MALFORMED, "agent: more than 128 bytes");
            return Err(false);
        }
        let resumes = matches!(f.body().opt_str(key::RESUME), Ok(Some(_)));
        if hello.agent.is_empty()
            || (hello.token.is_empty() && hello.reconnect.is_none() && !resumes)
        {
            self.err(h, ErrorCode::AUTH_FAILED, "bad credentials");
            return Err(true);
        }
        Ok(hello)
    }

    /// Hand a hello that passed [`Conn::admit`] to the auth pool; its verdict comes back
    /// through `auth_tx` to [`Conn::on_auth`].
    fn check(&self, req: Head, hello: &DesktopHello<'_>, source: Option<IpAddr>) -> bool {
        let Some(auth) = self.shared.auth.get() else {
            self.err(&req, ErrorCode::UNAVAILABLE, "not primary");
            return false;
        };
        let proof = match hello.reconnect {
            Some(t) => Proof::Reconnect(Secret::new(t)),
            None => Proof::Secret(Secret::new(hello.token)),
        };
        let agent = hello.agent.to_string();
        let tx = self.auth_tx.clone();
        let a = agent.clone();
        let services = hello.services;
        auth.check(
            Attempt {
                tenant: req.tenant,
                agent,
                proof,
                source,
            },
            move |verdict| {
                let _ = tx.send(AuthDone {
                    req,
                    agent: a,
                    services,
                    verdict: Outcome::Auth(verdict),
                });
            },
        );
        true
    }

    /// The resume a hello asks for, if this server is to run it: one that keeps no sessions
    /// (no Interaction Server role) checks the hello's other credential instead, if it has
    /// one (PROTOCOL.md §4.6: a proxy sends a resuming desktop's hello to its UCS too).
    fn resume_of<'a>(
        &self,
        f: &'a Frame,
        hello: &DesktopHello<'_>,
    ) -> Result<Option<Resume<'a>>, deskmux_codec::BodyError> {
        let r = Resume::read(f.body())?;
        let other = !hello.token.is_empty() || hello.reconnect.is_some();
        Ok(r.filter(|_| self.shared.engine.get().is_some() || !other))
    }

    /// A hello (direct, or in a `SESSION_OPEN`) that resumes a session (PROTOCOL.md §4.6):
    /// the token is checked here (an HMAC, no argon2: a resume storm costs little), then the
    /// engine re-binds the session, sends the server hello and replays what it missed; its
    /// verdict comes back to [`Conn::on_auth`]. `false`: refused (answered) here.
    fn resume(
        &mut self,
        req: Head,
        hello: &DesktopHello<'_>,
        r: Resume<'_>,
        link: Option<LinkId>,
    ) -> bool {
        let Some(engine) = self.shared.engine.get() else {
            self.err(
                &req,
                ErrorCode::RESUME_REFUSED,
                "this server keeps no sessions to resume",
            );
            return false;
        };
        let named = match self.shared.resume_key.open(r.token) {
            Some(n) if n.tenant == req.tenant && n.agent == hello.agent => n,
            _ => {
                if let Some(suppressed) = crate::lograte::LOGIN_REFUSED.allow() {
                    tracing::warn!(tenant = req.tenant, agent = ?hello.agent, source = ?self.source, suppressed, "resume refused: token not valid for this tenant and agent");
                }
                self.err(
                    &req,
                    ErrorCode::RESUME_REFUSED,
                    "resume token not valid for this tenant and agent",
                );
                return false;
            }
        };
        let key = self.shared.next_id();
        let wire = link.map_or(key, |_| req.session);
        let peer = Peer {
            out: self.out.clone(),
            inflight: Arc::new(AtomicU32::new(0)),
            tap: None,
        };
        let s = Sess {
            key,
            tenant: req.tenant,
            peer: peer.clone(),
            wire,
            services: hello.services,
        };
        // On a link the session is known from now on: the engine sends the server hello itself
        // (so that no event can pass it), and the proxy may forward the desktop's first request
        // before this connection hears the verdict. Queued behind the resume, that request finds
        // the session bound; a refused resume takes the entry back (`on_resumed`).
        if let Mode::Link(_, sessions) = &mut self.mode {
            sessions.insert(req.session, s.clone());
        }
        let hello_of = self.hello_body(req, wire, None, r.token.to_string());
        let tx = self.auth_tx.clone();
        let (agent, services) = (hello.agent.to_string(), hello.services);
        let done = move |res: Result<(), &'static str>| {
            let _ = tx.send(AuthDone {
                req,
                agent,
                services,
                verdict: Outcome::Resumed(res.map(|()| s)),
            });
        };
        engine.control(Input::Resume(Box::new(ResumeIn {
            key,
            sid: named.session,
            tenant: req.tenant,
            agent: hello.agent.to_string(),
            wire,
            peer,
            link,
            last_event: r.last_event,
            hello: Box::new(move |replayed| hello_of(Some(replayed))),
            done: Box::new(done),
        })));
        self.resuming.insert(key);
        true
    }

    /// The engine's verdict on a resume.
    fn on_resumed(&mut self, h: Head, link: Option<LinkId>, r: Result<Sess, &'static str>) {
        match r {
            Ok(s) => {
                self.resuming.remove(&s.key);
                match &mut self.mode {
                    Mode::Link(_, sessions) => {
                        sessions.insert(h.session, s);
                    }
                    _ => self.mode = Mode::Direct(s),
                }
            }
            Err(m) => {
                if let Mode::Link(_, sessions) = &mut self.mode {
                    sessions.remove(&h.session);
                }
                self.err(&h, ErrorCode::RESUME_REFUSED, m);
                // §4.1: a refused hello ends a direct connection; a link carries others.
                self.closing = link.is_none();
            }
        }
    }

    /// A verdict: open the session, or refuse the hello.
    pub(super) fn on_auth(&mut self, done: AuthDone) {
        let h = done.req;
        let link = match &self.mode {
            Mode::Fresh => None,
            Mode::Link(id, _) => {
                // Closed (SESSION_CLOSE) while it was checked: the proxy forgot it already.
                if !self.opening.remove(&h.session) {
                    if let (Outcome::Resumed(Ok(s)), Some(e)) =
                        (&done.verdict, self.shared.engine.get())
                    {
                        self.resuming.remove(&s.key);
                        e.control(Input::Close(s.key));
                    }
                    return;
                }
                Some(*id)
            }
            Mode::Direct(_) => return,
        };
        if link.is_none() {
            self.hello_pending = false;
        }
        let verdict = match done.verdict {
            Outcome::Resumed(r) => return self.on_resumed(h, link, r),
            Outcome::Auth(v) => v,
        };
        let refuse = |c: &Self, code: ErrorCode, m: &str| c.err(&h, code, m);
        match verdict {
            Verdict::Ok { reconnect } => {
                let wire_id = link.map(|_| h.session);
                let mut s = self.new_session(h.tenant, &done.agent, wire_id, link);
                s.services = done.services;
                let resume = (self.shared.engine.get().is_some()
                    && self.shared.cfg.resume.grace_ms > 0)
                    .then(|| {
                        self.shared.resume_key.mint(&Named {
                            tenant: h.tenant,
                            agent: done.agent.clone(),
                            session: s.key,
                        })
                    });
                let body = self.hello_body(h, s.wire, Some(reconnect), resume.unwrap_or_default());
                self.out.frame(body(None));
                match &mut self.mode {
                    Mode::Link(_, sessions) => {
                        sessions.insert(h.session, s);
                    }
                    _ => self.mode = Mode::Direct(s),
                }
            }
            Verdict::Refused => {
                refuse(self, ErrorCode::AUTH_FAILED, "bad credentials");
                // AUTH_FAILED closes a direct connection; a link carries others' sessions.
                self.closing = link.is_none();
            }
            Verdict::LockedOut(d) => {
                let m = format!(
                    "locked out after failed logins; retry in {} ms",
                    d.as_millis()
                );
                refuse(self, ErrorCode::AUTH_FAILED, &m);
                self.closing = link.is_none();
            }
            // §4.1: any refused hello ends a direct connection; a link carries others.
            Verdict::Busy => {
                refuse(self, ErrorCode::OVERLOADED, "too many logins being checked");
                self.closing = link.is_none();
            }
            Verdict::Unavailable => {
                refuse(self, ErrorCode::UNAVAILABLE, "credentials cannot be read");
                self.closing = link.is_none();
            }
        }
    }

    /// The server hello answering `req` for wire session `session`, given the number of
    /// events a resume replays (`None`: a fresh session): with a reconnect token on a login,
    /// and the resume token (empty: none) when this server keeps sessions for resume.
    fn hello_body(
        &self,
        req: Head,
        session: u64,
        reconnect: Option<String>,
        resume: String,
    ) -> impl FnOnce(Option<u64>) -> bytes::Bytes + Send + 'static {
        let cfg = &self.shared.cfg;
        let sh = ServerHello {
            session,
            max_frame: cfg.max_frame,
            heartbeat_ms: cfg.heartbeat_ms,
            max_in_flight: cfg.max_in_flight,
        };
        let grace = i64::from(cfg.resume.grace_ms);
        let mut h = req;
        h.session = session;
        move |replayed| {
            wire::response(&h, |w| {
                sh.write(w)?;
                if let Some(r) = &reconnect {
                    w.str(key::RECONNECT, r)?;
                }
                if !resume.is_empty() {
                    w.str(key::RESUME, &resume)?;
                    w.int(key::RESUME_GRACE_MS, grace);
                }
                if let Some(n) = replayed {
                    w.int(key::REPLAYED, n as i64);
                }
                Ok(())
            })
        }
    }

    fn new_session(
        &self,
        tenant: u32,
        agent: &str,
        wire_id: Option<u64>,
        link: Option<LinkId>,
    ) -> Sess {
        let key = self.shared.next_id();
        let wire = wire_id.unwrap_or(key);
        let peer = Peer {
            out: self.out.clone(),
            inflight: Arc::new(AtomicU32::new(0)),
            tap: None,
        };
        if let Some(e) = self.shared.engine.get() {
            e.control(Input::Open {
                key,
                tenant,
                agent: agent.to_string(),
                wire,
                peer: peer.clone(),
                link,
            });
        }
        Sess {
            key,
            tenant,
            peer,
            wire,
            services: 0,
        }
    }

    fn hello(&mut self, f: &Frame) {
        let h = *f.head();
        if !matches!(self.mode, Mode::Fresh) {
            return self.err(&h, ErrorCode::INVALID_STATE, "hello already done");
        }
        if self.hello_pending {
            return self.err(&h, ErrorCode::INVALID_STATE, "hello already sent");
        }
        // PROTOCOL.md §4.1: a refused hello is answered, then the connection closes, whatever
        // the refusal (one hello per connection; the retry class says whether to reconnect).
        let Ok(hello) = self.admit(f, true) else {
            self.closing = true;
            return;
        };
        self.hello_pending = match self.resume_of(f, &hello) {
            Ok(Some(r)) => self.resume(h, &hello, r, None),
            Ok(None) => self.check(h, &hello, self.source),
            Err(e) => {
                self.err(&h, ErrorCode::MALFORMED, &format!("bad hello: {e}"));
                false
            }
        };
        self.closing = !self.hello_pending;
    }

    fn link_hello(&mut self, f: &Frame) {
        let h = *f.head();
        if !matches!(self.mode, Mode::Fresh) {
            return self.err(&h, ErrorCode::INVALID_STATE, "hello already done");
        }
        let lh = match LinkHello::read(f.body()) {
            Ok(x) => x,
            Err(e) => {
                self.err(&h, ErrorCode::MALFORMED, &format!("bad link hello: {e}"));
                self.closing = true;
                return;
            }
        };
        if self.link_refused {
            // `[tls] client_ca`: mutual TLS backs up the secret; without a client certificate
            // the secret is not even looked at.
            if let Some(suppressed) = crate::lograte::LINK_REFUSED.allow() {
                tracing::warn!(link = ?lh.link, source = ?self.source, suppressed, "link refused: no client certificate");
            }
            self.err(
                &h,
                ErrorCode::AUTH_FAILED,
                "link needs a client certificate",
            );
            self.closing = true;
            return;
        }
        if !crate::auth::secret::ct_eq(lh.secret, self.shared.cfg.link_secret.as_bytes()) {
            if let Some(suppressed) = crate::lograte::LINK_REFUSED.allow() {
                tracing::warn!(link = ?lh.link, source = ?self.source, suppressed, "link refused: bad link secret");
            }
            self.err(&h, ErrorCode::AUTH_FAILED, "bad link secret");
            self.closing = true;
            return;
        }
        tracing::info!("link {:?} up", lh.link);
        let cfg = &self.shared.cfg;
        let ack = LinkHelloAck {
            max_frame: cfg.max_frame,
            heartbeat_ms: cfg.heartbeat_ms,
            state: self.shared.service_state(),
        };
        self.out.frame(wire::response(&h, |w| ack.write(w)));
        self.mode = Mode::Link(self.shared.next_id(), HashMap::new());
        self.out.set_link();
        // §4.2: a server should not send a link frames over the max_frame it announced.
        if let Some(m) = lh.max_frame {
            self.answer_max = m.max(crate::limits::MIN_MAX_FRAME).min(cfg.max_frame);
        }
    }

    fn session_open(&mut self, f: &Frame) {
        let h = *f.head();
        let Mode::Link(_, sessions) = &self.mode else {
            return self.err(&h, ErrorCode::INVALID_STATE, "SESSION_OPEN outside a link");
        };
        if h.session == 0 || sessions.contains_key(&h.session) || self.opening.contains(&h.session)
        {
            return self.err(&h, ErrorCode::INVALID_STATE, "session id zero or in use");
        }
        let Ok(hello) = self.admit(f, false) else {
            return;
        };
        // The desktop's address is the one its proxy names (PROTOCOL.md §4.3: the body's first
        // `source`; the link is authenticated, so it is believed), never the proxy's own, which
        // would lock out every desktop behind it. Without one, per-agent lockout still applies.
        let source = f
            .body()
            .opt_str(deskmux_codec::msg::key::SOURCE)
            .ok()
            .flatten()
            .and_then(|s| s.parse::<std::net::IpAddr>().ok());
        let link = match &self.mode {
            Mode::Link(id, _) => *id,
            _ => return,
        };
        let pending = match self.resume_of(f, &hello) {
            Ok(Some(r)) => self.resume(h, &hello, r, Some(link)),
            Ok(None) => self.check(h, &hello, source),
            Err(e) => {
                self.err(&h, ErrorCode::MALFORMED, &format!("bad hello: {e}"));
                false
            }
        };
        if pending {
            self.opening.insert(h.session);
        }
    }
}
