//! Sessions that outlive their connection (PROTOCOL.md §4.6) and requests that are never
//! applied twice (§5.5).
//!
//! Why here: a desktop's session is engine state (its agent's login and readiness, its
//! invites, its unicast events), and the engine is the durable side of deskmux: a proxy that
//! dies takes nothing a desktop needs with it if the engine keeps the session for a while.
//!
//! - **Bindings.** A connection (or a session on a link) knows its session by its own key; the
//!   engine maps that key to the session's first key (`sid`), which every reference inside the
//!   engine uses (agents, invites, subscriptions). Resuming binds a new key to the old `sid`
//!   and forgets the old key: whatever the old connection still sends, or its close, finds no
//!   session and does nothing.
//! - **Detached.** When a connection or link goes without the desktop saying goodbye, its
//!   session is kept for `resume_grace_ms`: its agent stays logged in (not ready, so it is
//!   offered no new work) and its invites stay. When the grace ends, today's close runs
//!   (logout, invites returned).
//! - **Replay.** Every unicast event to a session carries `useq` (1, 2, 3, …) and is kept in
//!   a ring bounded by `resume_buffer_bytes` per session and `resume_total_bytes` in all. A
//!   resume names the last `useq` the desktop got; the events after it are sent again, in
//!   order, right after the server hello. While attached, old events fall off the ring (they
//!   were most likely delivered); while detached, an event that does not fit ends the session
//!   (overflow), since it could never be delivered. A resume from before the ring's first
//!   event is refused: events were lost, and the desktop starts afresh.
//! - **Idempotency keys.** A request of service 1 may carry `idem_key`. The last
//!   `resume_idem_keys` keyed requests of a session keep their answers: a retry of a key is
//!   answered from there (the same answer, on the retry's correlation id) and does nothing
//!   again; a retry that comes while the first is still running waits for its answer. An
//!   answer in the "not sent" class is not kept (nothing happened: the retry runs).

use std::collections::VecDeque;

use deskmux_codec::RetryClass;
use deskmux_codec::head::{restamp_correlation, restamp_session};

use super::*;

/// Resume settings (from the configuration).
#[derive(Debug, Clone)]
pub struct ResumeSettings {
    /// How long a session outlives its connection (zero: it does not).
    pub grace: Duration,
    /// Unicast events kept per session, in bytes.
    pub buffer_bytes: usize,
    /// Unicast events kept in all, in bytes.
    pub total_bytes: usize,
    /// Keyed requests whose answers a session keeps.
    pub idem_keys: usize,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        ResumeSettings {
            grace: Duration::from_secs(30),
            buffer_bytes: 64 << 10,
            total_bytes: 256 << 20,
            idem_keys: 64,
        }
    }
}

/// A resume asked by a hello (direct) or a `SESSION_OPEN` (link), whose token checked out.
pub struct ResumeIn {
    /// The new binding's key (the connection's, or the link session's).
    pub key: SessKey,
    /// The session the token names.
    pub sid: SessKey,
    /// The hello's tenant and agent (the token's too).
    pub tenant: u32,
    /// The hello's agent.
    pub agent: String,
    /// Session id in heads from now on.
    pub wire: u64,
    /// Where its answers and events go from now on.
    pub peer: Peer,
    /// The link it lives on now, if any.
    pub link: Option<LinkId>,
    /// The last `useq` the desktop received.
    pub last_event: u64,
    /// The server hello to send first, given the number of events replayed after it.
    pub hello: Box<dyn FnOnce(u64) -> Bytes + Send>,
    /// Told the outcome: `Err` carries the refusal's message (already sent).
    pub done: Box<dyn FnOnce(Result<(), &'static str>) + Send>,
}

impl std::fmt::Debug for ResumeIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeIn")
            .field("key", &self.key)
            .field("sid", &self.sid)
            .field("tenant", &self.tenant)
            .field("last_event", &self.last_event)
            .finish_non_exhaustive()
    }
}

/// The answer to a keyed request, recorded as it was sent (see [`wire::Tap`]).
#[derive(Debug)]
pub struct IdemDone {
    /// The session.
    pub sid: SessKey,
    /// The key.
    pub key: Box<str>,
    /// The answer frame as sent.
    pub answer: Bytes,
}

#[derive(Debug)]
enum Idem {
    /// Running: retries waiting for its answer, each with its own head and connection.
    Running(Vec<(Head, Peer)>),
    /// Answered.
    Done(Bytes),
}

/// Retries of one key that may wait for its first run's answer.
const MAX_IDEM_WAITERS: usize = 4;
/// Longest idempotency key.
pub const MAX_IDEM_KEY: usize = 64;

/// A session's resume state.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// The last `useq` given.
    pub(super) useq: u64,
    /// Recent unicast events, oldest first.
    ring: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// Detached: the first `useq` given since (those events were never sent anywhere).
    detached_from: Option<u64>,
    /// Detached, an event did not fit: the session ends at the next tick.
    overflowed: bool,
    idem: VecDeque<(Box<str>, Idem)>,
}

impl Replay {
    /// The first `useq` a resume can be given from: the ring's oldest, or the next.
    fn first(&self) -> u64 {
        self.ring.front().map_or(self.useq + 1, |(s, _)| *s)
    }

    /// Whether the session is detached (kept for a resume).
    pub(super) fn is_detached(&self) -> bool {
        self.detached_from.is_some()
    }

    /// Bytes of events it keeps.
    pub(super) fn kept_bytes(&self) -> usize {
        self.bytes
    }

    fn pop(&mut self, total: &mut usize) -> Option<u64> {
        let (s, b) = self.ring.pop_front()?;
        self.bytes -= b.len();
        *total -= b.len();
        Some(s)
    }
}

/// What an arriving keyed request finds.
pub(super) enum Keyed {
    /// Answered already (sent again), or waiting for its first run: nothing more to do.
    Handled,
    /// A new key: run it, tapping its answer.
    Run(Box<str>),
}

impl Engine {
    /// Send a unicast event to session `sid`: numbered, kept for replay, and sent if it is
    /// attached. A detached session whose ring cannot take it ends (overflow).
    pub(super) fn unicast(
        &mut self,
        sid: SessKey,
        msg: u16,
        f: impl FnOnce(&mut deskmux_codec::BodyWriter<'_>) -> Result<(), deskmux_codec::BodyError>,
    ) {
        let (buffer, total_max) = (self.set.resume.buffer_bytes, self.set.resume.total_bytes);
        let keep = !self.set.resume.grace.is_zero();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.replay.useq += 1;
        let useq = s.replay.useq;
        let ev = event(msg, s.tenant, s.wire, |w| {
            f(w)?;
            w.int(key::USEQ, useq as i64);
            Ok(())
        });
        if s.bind.is_some() {
            s.peer.push(ev.clone());
        }
        if !keep || s.replay.overflowed {
            return;
        }
        let r = &mut s.replay;
        r.bytes += ev.len();
        self.replay_bytes += ev.len();
        r.ring.push_back((useq, ev));
        // Make room: events sent while attached may go (they were most likely delivered);
        // one never sent may not, and then the session cannot be resumed faithfully.
        let mut overflow = None;
        while r.bytes > buffer || self.replay_bytes > total_max {
            let Some(&(oldest, _)) = r.ring.front() else {
                break;
            };
            if r.detached_from.is_some_and(|d| oldest >= d) {
                overflow = Some(if r.bytes > buffer {
                    "its replay buffer (resume_buffer_bytes) overflowed"
                } else {
                    "the server's replay memory (resume_total_bytes) is full"
                });
                break;
            }
            r.pop(&mut self.replay_bytes);
        }
        if let Some(why) = overflow {
            // Ended at the next tick, not here: an event is sent from the middle of changes
            // (a revoke, a dispatch) that closing a session would change under them.
            tracing::info!(tenant = s.tenant, agent = %s.agent, "detached session ends: {why}");
            self.stats_resume.overflowed += 1;
            r.overflowed = true;
            while r.pop(&mut self.replay_bytes).is_some() {}
            self.overflowed.push(sid);
        }
    }

    /// The connection or link of binding `key` went without a goodbye: keep its session for
    /// the grace period, or end it now if there is none.
    pub(super) fn detach(&mut self, now: Instant, key: SessKey) {
        let Some(sid) = self.bound.remove(&key) else {
            return;
        };
        let grace = self.set.resume.grace;
        if grace.is_zero() {
            return self.close_session(now, sid);
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.bind = None;
        s.bind_gen += 1;
        self.detached_now += 1;
        s.peer = self.dead.clone();
        if s.link.is_none() {
            self.subs.rebind_owner(&Owner::Session(sid), &self.dead.out);
        }
        s.replay.detached_from = Some(s.replay.useq + 1);
        self.detach_timers
            .push(Reverse((now + grace, sid, s.bind_gen)));
        self.stats_resume.detached += 1;
        // Offered no new work while nobody can take it; readiness comes back with the resume.
        let (tenant, agent) = (s.tenant, s.agent.clone());
        if let Some(t) = self.tenants.get_mut(&tenant)
            && let Some(a) = t.agents.get(&agent)
            && a.session == sid
        {
            let was = a.ready;
            t.with_agent(&agent, |a| a.ready = false);
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.was_ready = was;
            }
            self.stats(tenant);
        }
    }

    /// End the detached sessions whose grace is over, or whose events overflowed.
    pub(super) fn expire_detached(&mut self, now: Instant) {
        for sid in std::mem::take(&mut self.overflowed) {
            let over = self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.bind.is_none() && s.replay.overflowed);
            if over {
                self.close_session(now, sid);
            }
        }
        while let Some(Reverse((d, sid, n))) = self.detach_timers.peek().copied() {
            if d > now {
                break;
            }
            self.detach_timers.pop();
            let over = self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.bind.is_none() && s.bind_gen == n);
            if over {
                self.stats_resume.expired += 1;
                self.close_session(now, sid);
            }
        }
    }

    /// Re-bind a session to a new connection, replay what it missed, or refuse.
    pub(super) fn resume(&mut self, now: Instant, r: ResumeIn) {
        let ResumeIn {
            key,
            sid,
            tenant,
            agent,
            wire,
            peer,
            link,
            last_event,
            hello,
            done,
        } = r;
        let verdict = match self.sessions.get(&sid) {
            None => Err("no such session: it ended (grace over, logged out, overflowed)"),
            Some(s) if s.replay.overflowed => Err("its replay buffer overflowed"),
            Some(s) if s.tenant != tenant || s.agent != agent => {
                Err("the resume token names another session")
            }
            Some(s) if last_event > s.replay.useq => Err("last_event is ahead of the session"),
            Some(s) if last_event + 1 < s.replay.first() => {
                Err("events after last_event are no longer kept")
            }
            Some(_) => Ok(()),
        };
        if let Err(m) = verdict {
            self.stats_resume.refused += 1;
            // A session that cannot be resumed faithfully ends now, so that the desktop's
            // fresh hello and login find the agent free.
            if self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.tenant == tenant && s.agent == agent)
            {
                self.unbind(sid);
                self.close_session(now, sid);
            }
            return done(Err(m));
        }
        self.unbind(sid);
        self.bound.insert(key, sid);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.replay.is_detached() {
            self.detached_now -= 1;
        }
        s.bind = Some(key);
        s.bind_gen += 1; // a pending grace timer no longer applies
        s.replay.detached_from = None;
        let moved_to_link = link.is_some() && s.link.is_none();
        s.peer = peer.clone();
        s.wire = wire;
        s.link = link;
        let was_ready = std::mem::take(&mut s.was_ready);
        let replay: Vec<Bytes> = s
            .replay
            .ring
            .iter()
            .filter(|(q, _)| *q > last_event)
            .map(|(_, b)| {
                let mut v = b.to_vec();
                restamp_session(&mut v, wire);
                Bytes::from(v)
            })
            .collect();
        peer.out.frame(hello(replay.len() as u64));
        for ev in replay {
            peer.push(ev);
        }
        // A direct session's subscriptions follow it to its new connection; through a link the
        // proxy holds them (the desktop subscribes again there).
        if moved_to_link {
            self.subs.drop_owner(&Owner::Session(sid));
        } else if link.is_none() {
            self.subs.rebind_owner(&Owner::Session(sid), &peer.out);
        }
        if was_ready && let Some(t) = self.tenants.get_mut(&tenant) {
            t.with_agent(&agent, |a| {
                if a.session == sid {
                    a.ready = true;
                }
            });
            self.stats(tenant);
            self.dispatch(now, tenant);
        }
        self.stats_resume.resumed += 1;
        done(Ok(()));
    }

    /// Forget `sid`'s current binding: its old connection finds no session any more, and is
    /// told so with a control `SESSION_CLOSE` (PROTOCOL.md §4.3, §4.6): a link then drops its
    /// desktop, and a direct connection is closed after it (its requests still unanswered
    /// are not answered: the desktop went on elsewhere).
    fn unbind(&mut self, sid: SessKey) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(old) = s.bind.take() {
            self.bound.remove(&old);
            let mut h = Head::new(
                Kind::Control,
                Service::Control,
                deskmux_codec::msg::control::SESSION_CLOSE,
            );
            h.tenant = s.tenant;
            h.session = s.wire;
            s.peer.push(wire::build(h, |_| Ok(())));
            if s.link.is_none() {
                s.peer.out.cancel_token().cancel();
            }
        }
    }

    /// A keyed request arrives (`idem_key`): answered from memory, set to wait for its first
    /// run, or to run now.
    pub(super) fn keyed(
        &mut self,
        sid: SessKey,
        req: &Head,
        k: &str,
        peer: &Peer,
    ) -> Result<Keyed, (ErrorCode, &'static str)> {
        if k.is_empty() || k.len() > MAX_IDEM_KEY {
            return bad(ErrorCode::MALFORMED, "idem_key: 1 to 64 bytes");
        }
        let max = self.set.resume.idem_keys;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Ok(Keyed::Handled);
        };
        match s.replay.idem.iter_mut().find(|(x, _)| &**x == k) {
            Some((_, Idem::Done(ans))) => {
                peer.reply(again(ans, req));
                Ok(Keyed::Handled)
            }
            Some((_, Idem::Running(waiting))) if waiting.len() < MAX_IDEM_WAITERS => {
                waiting.push((*req, peer.clone()));
                Ok(Keyed::Handled)
            }
            Some(_) => bad(
                ErrorCode::OVERLOADED,
                "too many retries of this idem_key wait",
            ),
            None => {
                if s.replay.idem.len() >= max {
                    // The oldest still running is kept: its answer has retries to serve.
                    let pos = s
                        .replay
                        .idem
                        .iter()
                        .position(|(_, i)| matches!(i, Idem::Done(_)));
                    match pos {
                        Some(p) => {
                            s.replay.idem.remove(p);
                        }
                        None => {
                            return bad(ErrorCode::OVERLOADED, "too many keyed requests running");
                        }
                    }
                }
                let k: Box<str> = k.into();
                s.replay
                    .idem
                    .push_back((k.clone(), Idem::Running(Vec::new())));
                Ok(Keyed::Run(k))
            }
        }
    }

    /// The first run of a keyed request was answered: keep the answer (unless nothing
    /// happened) and answer the retries that waited for it.
    pub(super) fn idem_done(&mut self, d: IdemDone) {
        let Some(s) = self.sessions.get_mut(&d.sid) else {
            return;
        };
        let Some(pos) = s.replay.idem.iter().position(|(x, _)| *x == d.key) else {
            return;
        };
        let not_sent =
            error_code(&d.answer).is_some_and(|c| c.retry_class() == RetryClass::NotSent);
        let waiting = if not_sent {
            match s.replay.idem.remove(pos) {
                Some((_, Idem::Running(w))) => w,
                _ => Vec::new(),
            }
        } else {
            match std::mem::replace(&mut s.replay.idem[pos].1, Idem::Done(d.answer.clone())) {
                Idem::Running(w) => w,
                Idem::Done(_) => Vec::new(),
            }
        };
        for (req, peer) in waiting {
            peer.reply(again(&d.answer, &req));
        }
    }
}

/// A peer whose connection is gone for good: its outbox is closed and takes nothing.
pub(super) fn dead_peer() -> Peer {
    let cancel = tokio_util::sync::CancellationToken::new();
    cancel.cancel();
    let one = wire::QueueLimits {
        desktop_frames: 1,
        desktop_bytes: 1,
        link_frames: 1,
        link_bytes: 1,
    };
    let (out, _closed, _) = wire::Outbox::new(one, cancel);
    Peer {
        out,
        inflight: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0)),
        tap: None,
    }
}

/// The code of an error answer (`None` for a success).
fn error_code(ans: &[u8]) -> Option<ErrorCode> {
    let h = Head::parse(ans).ok()??;
    if !h.flags.has(Flags::ERROR) {
        return None;
    }
    let body = ans.get(deskmux_codec::HEAD_LEN..)?;
    let c = BodyRef::new(body).int(key::CODE).ok()?;
    u16::try_from(c).ok().map(ErrorCode)
}

/// `ans` re-addressed to the request `req` (its correlation id and session).
fn again(ans: &Bytes, req: &Head) -> Bytes {
    let mut v = ans.to_vec();
    restamp_correlation(&mut v, req.correlation);
    restamp_session(&mut v, req.session);
    Bytes::from(v)
}
