//! The Interaction Server role: agents, interactions, queues and subscriptions (PROTOCOL.md §7).
//!
//! One [`Engine`] owns all of this state and is driven by one task ([`run`]): connection tasks
//! send it [`Input`]s over a channel, so there are no locks and every decision (who gets the
//! next invite) is made in one place. The clock is passed in (`now`), so the engine is testable
//! without sockets. Answers go straight to the session's outbox (non-blocking).
//!
//! Persistence: each change that must survive a restart is written through the DB worker (group
//! commit) and the request is answered only after the commit. Memory changes only after the
//! commit too: `SUBMIT` enters its queue then, and `ACCEPT`, `CHANGE_PROPERTIES`,
//! `PLACE_IN_QUEUE` and `STOP_PROCESSING` are applied by [`Input::Written`]; a write that fails
//! leaves memory as the database has it, with nothing to roll back. (Rebuilding an interaction
//! from the database after a failure was the other way; it needs a read round trip and a
//! version per interaction to fence writes that raced it, where applying after the commit
//! needs neither: the engine is the only writer of interaction rows, and one worker commits
//! them in order.) While a change is being written its interaction is marked, and further
//! requests on it wait (bounded) until the write resolves, so none decides on a state that may
//! not last. Events about a change (`PROPERTIES_CHANGED`, queue events) go out after its
//! commit. Invites, logins and readiness are not written, and change at once. Outstanding
//! invites are not persisted: after a restart an invited interaction is simply queued again.
//! Ownership is by (tenant, agent id), so an agent that logs in again after a restart can still
//! complete the interactions it owned.
//!
//! Files: this one holds the state, the dispatch of requests and invites, and the run loop;
//! `agents.rs`, `interactions.rs` and `events.rs` the requests of each kind; `tests.rs` the
//! engine driven without sockets.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::db::{Db, Finish};
use crate::limits::{self, ListKind};
use crate::queue::{EngineRx, EngineTx};
use crate::storage::{IxnRow, IxnState, Store, StoreError};
use crate::subs::{Owner, Subs};
use crate::wire::{self, Pairs, Peer};
use bytes::Bytes;
use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{BodyRef, ErrorCode, Flags, Frame, Head, Kind, Service};

// The engine's requests, one file per kind; the state, the dispatch and the run loop are here.
mod agents;
mod events;
mod interactions;
mod resume;
#[cfg(test)]
mod tests;

pub use resume::{IdemDone, ResumeIn, ResumeSettings};

/// Internal session key (unique per process).
pub type SessKey = u64;
/// Internal link id (unique per process).
pub type LinkId = u64;

/// What the engine is told.
#[derive(Debug)]
pub enum Input {
    /// A session was authenticated (direct hello or `SESSION_OPEN`).
    Open {
        /// Internal key.
        key: SessKey,
        /// Authenticated tenant.
        tenant: u32,
        /// The hello's agent id.
        agent: String,
        /// Session id as written in heads sent to this session.
        wire: u64,
        /// Where its answers go.
        peer: Peer,
        /// The link it lives on, if any.
        link: Option<LinkId>,
    },
    /// A session ended (the desktop left: its goodbye, or `SESSION_CLOSE`).
    Close(SessKey),
    /// A session's connection or link went without a goodbye: the session is kept for
    /// `resume_grace_ms` (see [`resume`]).
    Detach(SessKey),
    /// A hello resumes a session.
    Resume(Box<ResumeIn>),
    /// A keyed request's first answer, as sent.
    IdemDone(Box<IdemDone>),
    /// A link closed: its sessions have been closed; drop its subscriptions.
    LinkClosed(LinkId),
    /// A proxy dropped its link's subscription of (tenant, topic): no desktop behind it holds
    /// it any more (`UNSUBSCRIBE` with session 0 on a link).
    LinkUnsubscribe {
        /// The link.
        link: LinkId,
        /// The subscription's tenant.
        tenant: u32,
        /// Its topic.
        topic: String,
    },
    /// A request of service 1 (not ECHO), already checked for session and tenant, with its
    /// deadline (`request_timeout_ms` from its arrival): not started by then, it is answered
    /// `OVERLOADED` and not run.
    Request(SessKey, Frame, Instant),
    /// A submitted interaction is durable.
    Submitted(Box<Pending>),
    /// A change to an interaction was committed, or failed (see [`Engine`]'s persistence).
    Written(Box<Write>),
}

/// A change to one interaction whose row is being written.
#[derive(Debug)]
pub struct Write {
    id: u64,
    change: Change,
    req: Head,
    peer: Peer,
    /// The answer if it commits.
    ok: Bytes,
    /// The answer if it failed (then nothing changes).
    failed: Option<Bytes>,
}

/// What a committed [`Write`] does to the interaction in memory.
#[derive(Debug)]
enum Change {
    /// Its invited agent accepted it.
    Accept { agent: String },
    /// Its properties, merged.
    Props(Pairs),
    /// Placed at the back of `queue`.
    Place { queue: String, qpos: i64 },
    /// Completed (and, with UCS here, recorded in `contact`'s history).
    Stop { contact: Option<i64> },
}

/// Requests that may wait for one interaction's write, for all, and the bytes of all their
/// frames (see [`Engine::defer`]). Beyond these a request is answered `OVERLOADED`: waiting
/// requests hold their frames, outside the engine queue's own bounds.
const MAX_WAITING_PER_IXN: usize = 16;
const MAX_WAITING: usize = 4096;
const MAX_WAITING_BYTES: usize = 16 << 20;

/// A submitted interaction waiting for its commit.
#[derive(Debug)]
pub struct Pending {
    id: u64,
    tenant: u32,
    queue: String,
    props: Pairs,
    qpos: i64,
    submitter: SessKey,
    req: Head,
    peer: Peer,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Invite timeout.
    pub invite_timeout: Duration,
    /// Whether the UCS role runs here too (then `STOP_PROCESSING` writes history).
    pub with_ucs: bool,
    /// Sessions that outlive their connection.
    pub resume: ResumeSettings,
}

#[derive(Debug)]
struct Session {
    tenant: u32,
    agent: String,
    wire: u64,
    peer: Peer,
    link: Option<LinkId>,
    /// The key of the connection (or link session) it is bound to; `None` while detached.
    bind: Option<SessKey>,
    /// Counts detaches and resumes, so that a grace timer set before applies to nothing.
    bind_gen: u64,
    /// Its agent was ready when it detached (ready again when it resumes).
    was_ready: bool,
    /// Its unicast sequence, replay ring and idempotency memory.
    replay: resume::Replay,
}

/// Resume counters (admin `stats`, `/metrics`).
#[derive(Debug, Default)]
struct ResumeStats {
    detached: u64,
    resumed: u64,
    refused: u64,
    expired: u64,
    overflowed: u64,
}

#[derive(Debug)]
struct Agent {
    session: SessKey,
    ready: bool,
    /// Order of becoming idle: lower = idle longer.
    idle_since: u64,
    /// Interactions invited to or owned by this agent.
    load: u32,
    /// The outstanding invite, if any (at most one: only free agents are invited).
    invite: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum St {
    Queued,
    Invited {
        agent: String,
        session: SessKey,
        generation: u64,
    },
    Owned {
        agent: String,
    },
}

#[derive(Debug)]
struct Ixn {
    tenant: u32,
    queue: String,
    props: Pairs,
    st: St,
    qpos: i64,
    submitter: Option<SessKey>,
    /// A change is being written (see [`Engine::write`]).
    writing: bool,
    /// Its invite timed out while its `ACCEPT` was being written.
    expired: bool,
}

#[derive(Debug, Default)]
struct TenantState {
    agents: HashMap<String, Agent>,
    queues: HashMap<String, VecDeque<u64>>,
    /// Ready agents with no interaction, by idle order: the first is the next invitee.
    /// Invariant: `(a.idle_since, name)` is here iff `a.ready && a.load == 0`.
    eligible: BTreeSet<(u64, String)>,
    /// Interactions owned per agent id (whether logged in or not).
    owned: HashMap<String, u32>,
    /// Agents ready (for stats).
    ready: usize,
    /// Interactions waiting in queues (for stats).
    waiting: usize,
}

impl TenantState {
    /// Change an agent, keeping the eligible set and counters in step.
    fn with_agent(&mut self, name: &str, f: impl FnOnce(&mut Agent)) {
        let Some(a) = self.agents.get_mut(name) else {
            return;
        };
        let (was_eligible, was_ready, old_idle) = (a.ready && a.load == 0, a.ready, a.idle_since);
        f(a);
        if was_eligible {
            self.eligible.remove(&(old_idle, name.to_string()));
        }
        if a.ready && a.load == 0 {
            self.eligible.insert((a.idle_since, name.to_string()));
        }
        match (was_ready, a.ready) {
            (false, true) => self.ready += 1,
            (true, false) => self.ready -= 1,
            _ => {}
        }
    }

    /// Remove an agent (logout).
    fn remove_agent(&mut self, name: &str) -> Option<Agent> {
        self.with_agent(name, |a| a.ready = false);
        self.agents.remove(name)
    }

    fn own(&mut self, agent: &str, delta: i32) {
        let n = self.owned.entry(agent.to_string()).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.owned.remove(agent);
        }
    }

    fn enqueue(&mut self, queue: &str, id: u64, front: bool) {
        let q = self.queues.entry(queue.to_string()).or_default();
        if front {
            q.push_front(id);
        } else {
            q.push_back(id);
        }
        self.waiting += 1;
    }
}

/// The Interaction Server state machine.
pub struct Engine {
    set: Settings,
    db: Db,
    me: EngineTx,
    sessions: HashMap<SessKey, Session>,
    tenants: HashMap<u32, TenantState>,
    ixns: HashMap<u64, Ixn>,
    next_id: u64,
    next_qpos: i64,
    idle_clock: u64,
    invite_gen: u64,
    timers: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    subs: Subs,
    /// Requests waiting for an interaction's write, by interaction, with their deadlines.
    deferred: HashMap<u64, VecDeque<(SessKey, Peer, Frame, Instant)>>,
    deferred_total: usize,
    deferred_bytes: usize,
    /// The deadline of the request being handled: the writes it makes carry it to the DB
    /// worker, which does not run them past it.
    deadline: Option<Instant>,
    /// Binding keys (a connection's, a link session's) to the session they name.
    bound: HashMap<SessKey, SessKey>,
    /// Grace deadlines of detached sessions: (when, session, its `bind_gen` then).
    detach_timers: BinaryHeap<Reverse<(Instant, SessKey, u64)>>,
    /// Bytes of unicast events kept for replay, all sessions.
    replay_bytes: usize,
    /// Detached sessions whose events overflowed: they end at the next tick.
    overflowed: Vec<SessKey>,
    /// Sessions detached now (kept for a resume).
    detached_now: usize,
    /// What a detached session points at instead of its gone connection: a closed outbox
    /// that takes nothing, shared by all, so that a detached session does not keep its
    /// connection's queue alive.
    dead: Peer,
    stats_resume: ResumeStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("sessions", &self.sessions.len())
            .field("ixns", &self.ixns.len())
            .finish_non_exhaustive()
    }
}

type Reply = Result<Option<Bytes>, (ErrorCode, &'static str)>;

fn bad<T>(c: ErrorCode, m: &'static str) -> Result<T, (ErrorCode, &'static str)> {
    Err((c, m))
}

fn malformed(_: deskmux_codec::BodyError) -> (ErrorCode, &'static str) {
    (ErrorCode::MALFORMED, "malformed body")
}

/// A cap passed or a bad list (see [`crate::limits`]): `MALFORMED`, naming the cap.
fn refused(r: limits::Refused) -> (ErrorCode, &'static str) {
    (ErrorCode::MALFORMED, r.message())
}

impl Engine {
    /// An engine recovering `rows` (queued and owned interactions) from storage.
    pub fn new(set: Settings, db: Db, me: EngineTx, rows: Vec<IxnRow>, max_id: u64) -> Engine {
        let mut e = Engine {
            set,
            db,
            me,
            sessions: HashMap::new(),
            tenants: HashMap::new(),
            ixns: HashMap::new(),
            next_id: max_id + 1,
            next_qpos: 1,
            idle_clock: 0,
            invite_gen: 0,
            timers: BinaryHeap::new(),
            subs: Subs::default(),
            deferred: HashMap::new(),
            deferred_total: 0,
            deferred_bytes: 0,
            deadline: None,
            bound: HashMap::new(),
            detach_timers: BinaryHeap::new(),
            replay_bytes: 0,
            overflowed: Vec::new(),
            detached_now: 0,
            dead: resume::dead_peer(),
            stats_resume: ResumeStats::default(),
        };
        // Rows come ordered by queue position.
        for r in rows {
            let props = wire::read_pairs(BodyRef::new(&r.props), key::PROPS).unwrap_or_default();
            e.next_qpos = e.next_qpos.max(r.qpos + 1);
            let st = match (r.state, r.owner) {
                (IxnState::Owned, Some(agent)) => St::Owned { agent },
                _ => St::Queued,
            };
            let t = e.tenants.entry(r.tenant).or_default();
            match &st {
                St::Owned { agent } => t.own(agent, 1),
                _ => t.enqueue(&r.queue, r.id, false),
            }
            e.ixns.insert(
                r.id,
                Ixn {
                    tenant: r.tenant,
                    queue: r.queue,
                    props,
                    st,
                    qpos: r.qpos,
                    submitter: None,
                    writing: false,
                    expired: false,
                },
            );
        }
        e
    }

    /// Number of open (queued, invited or owned) interactions.
    pub fn open_interactions(&self) -> usize {
        self.ixns.len()
    }

    /// When [`Engine::tick`] next has work (an invite deadline).
    pub fn next_deadline(&self) -> Option<Instant> {
        let invite = self.timers.peek().map(|Reverse((d, _, _))| *d);
        let grace = self.detach_timers.peek().map(|Reverse((d, _, _))| *d);
        invite.into_iter().chain(grace).min()
    }

    /// Handle one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Open {
                key,
                tenant,
                agent,
                wire,
                peer,
                link,
            } => {
                self.bound.insert(key, key);
                self.sessions.insert(
                    key,
                    Session {
                        tenant,
                        agent,
                        wire,
                        peer,
                        link,
                        bind: Some(key),
                        bind_gen: 0,
                        was_ready: false,
                        replay: resume::Replay::default(),
                    },
                );
            }
            Input::Close(key) => {
                if let Some(sid) = self.bound.remove(&key) {
                    self.close_session(now, sid);
                }
            }
            Input::Detach(key) => self.detach(now, key),
            Input::Resume(r) => self.resume(now, *r),
            Input::IdemDone(d) => self.idem_done(*d),
            Input::LinkClosed(link) => self.subs.drop_owner(&Owner::Link(link)),
            Input::LinkUnsubscribe {
                link,
                tenant,
                topic,
            } => self.subs.unsubscribe(Owner::Link(link), tenant, &topic),
            Input::Request(key, frame, deadline) => {
                // A request of a binding that was resumed elsewhere (or closed) finds nothing.
                let Some(&sid) = self.bound.get(&key) else {
                    return;
                };
                let Some(peer) = self.sessions.get(&sid).map(|s| s.peer.clone()) else {
                    return;
                };
                self.request(now, sid, peer, frame, deadline);
            }
            Input::Submitted(p) => self.submitted(now, *p),
            Input::Written(w) => self.written(now, *w),
        }
    }

    /// Publish the subscription counts (admin `stats`) and give back the memory of released
    /// subscriptions.
    pub fn after_batch(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.subs.shrink();
        let (subs, link_subs, topics) = self.subs.counts();
        let st = self.me.stats();
        st.subs.store(subs as u64, Relaxed);
        st.link_subs.store(link_subs as u64, Relaxed);
        st.sub_topics.store(topics as u64, Relaxed);
        st.sub_slots.store(self.subs.slots() as u64, Relaxed);
        let r = &self.stats_resume;
        st.sessions_detached.store(r.detached, Relaxed);
        st.sessions_resumed.store(r.resumed, Relaxed);
        st.resumes_refused.store(r.refused, Relaxed);
        st.detached_expired.store(r.expired, Relaxed);
        st.detached_overflowed.store(r.overflowed, Relaxed);
        st.replay_bytes.store(self.replay_bytes as u64, Relaxed);
        st.sessions.store(self.sessions.len() as u64, Relaxed);
        st.detached_sessions
            .store(self.detached_now as u64, Relaxed);
    }

    /// Expire invites whose deadline has passed, and detached sessions whose grace has.
    pub fn tick(&mut self, now: Instant) {
        self.expire_detached(now);
        while let Some(Reverse((d, id, generation))) = self.timers.peek().copied() {
            if d > now {
                break;
            }
            self.timers.pop();
            let Some(ix) = self.ixns.get_mut(&id) else {
                continue;
            };
            if !matches!(&ix.st, St::Invited { generation: g, .. } if *g == generation) {
                continue;
            }
            if ix.writing {
                // Its `ACCEPT` (or another change) came in time and is being written: the
                // invite ends when that write resolves (`Engine::written`).
                ix.expired = true;
                continue;
            }
            self.expire(now, id);
        }
    }

    /// Revoke the invite of `id`: it goes back to the head of its queue.
    fn expire(&mut self, now: Instant, id: u64) {
        let Some(ix) = self.ixns.get(&id) else {
            return;
        };
        let St::Invited { session, .. } = &ix.st else {
            return;
        };
        let (tenant, session) = (ix.tenant, *session);
        self.unicast(session, ixn::INVITE_REVOKED, |w| {
            w.int(key::INTERACTION, id as i64);
            Ok(())
        });
        self.requeue(id, "revoked");
        self.dispatch(now, tenant);
    }

    /// A request of session `key`, answered on `peer` (the connection it came on).
    fn request(&mut self, now: Instant, key: SessKey, peer: Peer, frame: Frame, deadline: Instant) {
        let req = *frame.head();
        if !self.sessions.contains_key(&key) {
            // The session ended while the request was queued; nobody to answer.
            return;
        }
        if now > deadline {
            return peer.reply(wire::expired(&req));
        }
        // The body was walked once by its connection (conn.rs, step 7), before it was queued:
        // walking it again here, on the one task every tenant shares, is what let a 2 MiB
        // body hold up the others.
        let b = frame.body();
        // PROTOCOL.md §5.5: a keyed request already answered is answered again, not run.
        let peer = match b.opt_str(key::IDEM_KEY) {
            Err(_) => {
                return peer.reply(wire::error(
                    &req,
                    ErrorCode::MALFORMED,
                    "idem_key: not a string",
                ));
            }
            Ok(None) => peer,
            Ok(Some(k)) => match self.keyed(key, &req, k, &peer) {
                Err((c, m)) => return peer.reply(wire::error(&req, c, m)),
                Ok(resume::Keyed::Handled) => return,
                Ok(resume::Keyed::Run(k)) => {
                    let me = self.me.clone();
                    peer.tapped(move |answer| {
                        me.control(Input::IdemDone(Box::new(IdemDone {
                            sid: key,
                            key: k.clone(),
                            answer,
                        })));
                    })
                }
            },
        };
        self.run_request(now, key, peer, frame, deadline);
    }

    /// Run a request that passed [`Engine::request`]'s checks (its keyed answer tapped), or
    /// that waited for an interaction's write: it runs now, or waits again.
    fn run_request(
        &mut self,
        now: Instant,
        key: SessKey,
        peer: Peer,
        frame: Frame,
        deadline: Instant,
    ) {
        let req = *frame.head();
        if !self.sessions.contains_key(&key) {
            return;
        }
        if now > deadline {
            return peer.reply(wire::expired(&req));
        }
        let b = frame.body();
        let r = match self.waits(key, &req, &b) {
            Some(id) => {
                if self.defer(id, key, peer.clone(), frame.clone(), deadline) {
                    return;
                }
                bad(
                    ErrorCode::OVERLOADED,
                    "too many requests wait for this interaction",
                )
            }
            None => {
                self.deadline = Some(deadline);
                let r = self.dispatch_request(now, key, &req, b, &peer);
                self.deadline = None;
                r
            }
        };
        match r {
            Ok(Some(bytes)) => peer.reply(bytes),
            Ok(None) => {} // answered later (after a commit)
            Err((c, m)) => peer.reply(wire::error(&req, c, m)),
        }
    }

    fn dispatch_request(
        &mut self,
        now: Instant,
        key: SessKey,
        req: &Head,
        b: BodyRef<'_>,
        peer: &Peer,
    ) -> Reply {
        // A request that writes asks the DB queue for room first, before anything changes:
        // refused then, it is `OVERLOADED` and nothing happened (see `crate::db`).
        let writes = matches!(
            req.msg_type,
            ixn::SUBMIT
                | ixn::ACCEPT
                | ixn::CHANGE_PROPERTIES
                | ixn::PLACE_IN_QUEUE
                | ixn::STOP_PROCESSING
        );
        if writes && !self.db.has_room() {
            return bad(ErrorCode::OVERLOADED, "storage queue full (db_queue)");
        }
        match req.msg_type {
            ixn::AGENT_LOGIN => self.login(now, key, req, b),
            ixn::AGENT_READY => self.set_ready(now, key, req, true),
            ixn::AGENT_NOT_READY => self.set_ready(now, key, req, false),
            ixn::AGENT_LOGOUT => {
                self.logged_in(key)?;
                self.logout(now, key);
                Ok(Some(wire::ok(req)))
            }
            ixn::SUBMIT => self.submit(key, req, b, peer),
            ixn::ACCEPT => self.accept(key, req, b, peer),
            ixn::REJECT => self.reject(now, key, req, b),
            ixn::CHANGE_PROPERTIES => self.change_props(key, req, b, peer),
            ixn::PLACE_IN_QUEUE => self.place(key, req, b, peer),
            ixn::STOP_PROCESSING => self.stop(key, req, b, peer),
            ixn::SUBSCRIBE => self.subscribe(key, req, b),
            ixn::UNSUBSCRIBE => self.unsubscribe(key, req, b),
            _ => bad(
                ErrorCode::UNKNOWN_MESSAGE,
                "unknown interaction server message",
            ),
        }
    }

    /// Offer waiting interactions of `tenant` to its ready, free agents, longest idle first.
    fn dispatch(&mut self, now: Instant, tenant: u32) {
        loop {
            let Some(t) = self.tenants.get_mut(&tenant) else {
                return;
            };
            let Some(agent_id) = t.eligible.first().map(|(_, name)| name.clone()) else {
                return;
            };
            let Some(session) = t.agents.get(&agent_id).map(|a| a.session) else {
                return;
            };
            // The queue whose head has waited longest (lowest position).
            let ixns = &self.ixns;
            let Some(queue) = t
                .queues
                .iter()
                .filter_map(|(name, q)| {
                    q.front()
                        .map(|id| (name, ixns.get(id).map(|i| i.qpos).unwrap_or(0)))
                })
                .min_by_key(|(_, pos)| *pos)
                .map(|(name, _)| name.clone())
            else {
                return;
            };
            let Some(q) = t.queues.get_mut(&queue) else {
                return;
            };
            let Some(id) = q.pop_front() else {
                return;
            };
            if q.is_empty() {
                t.queues.remove(&queue);
            }
            t.waiting -= 1;
            t.with_agent(&agent_id, |a| {
                a.load += 1;
                a.invite = Some(id);
            });
            self.invite_gen += 1;
            let generation = self.invite_gen;
            let Some(ix) = self.ixns.get_mut(&id) else {
                continue;
            };
            ix.st = St::Invited {
                agent: agent_id,
                session,
                generation,
            };
            let deadline = now + self.set.invite_timeout;
            self.timers.push(Reverse((deadline, id, generation)));
            let props = wire::encode_pairs(&ix.props);
            let timeout_ms = self.set.invite_timeout.as_millis() as i64;
            let q = ix.queue.clone();
            self.unicast(session, ixn::INVITE, |w| {
                w.int(key::INTERACTION, id as i64);
                w.str(key::QUEUE, &q)?;
                w.raw_list(key::PROPS, &props)?;
                w.int(key::TIMEOUT_MS, timeout_ms);
                Ok(())
            });
            self.publish_queue(tenant, &queue, "invited", id);
            self.stats(tenant);
        }
    }
}

impl Engine {
    /// Check the derived indexes against the state they summarise (tests only).
    #[cfg(test)]
    fn check_invariants(&self) {
        let detached = self
            .sessions
            .values()
            .filter(|s| s.replay.is_detached())
            .count();
        assert_eq!(detached, self.detached_now, "detached sessions counted");
        let kept: usize = self.sessions.values().map(|s| s.replay.kept_bytes()).sum();
        assert_eq!(kept, self.replay_bytes, "replay bytes counted");
        for (k, sid) in &self.bound {
            assert_eq!(
                self.sessions.get(sid).and_then(|s| s.bind),
                Some(*k),
                "binding {k} names its session's binding"
            );
        }
        for (tid, t) in &self.tenants {
            let eligible: BTreeSet<(u64, String)> = t
                .agents
                .iter()
                .filter(|(_, a)| a.ready && a.load == 0)
                .map(|(n, a)| (a.idle_since, n.clone()))
                .collect();
            assert_eq!(eligible, t.eligible, "eligible set of tenant {tid}");
            assert_eq!(t.ready, t.agents.values().filter(|a| a.ready).count());
            assert_eq!(
                t.waiting,
                t.queues.values().map(VecDeque::len).sum::<usize>()
            );
            for (name, a) in &t.agents {
                let invited = self
                    .ixns
                    .values()
                    .filter(|i| {
                        matches!(&i.st, St::Invited { agent, .. } if agent == name)
                            && i.tenant == *tid
                    })
                    .count() as u32;
                let owned = t.owned.get(name).copied().unwrap_or(0);
                assert_eq!(a.load, invited + owned, "load of {name}");
                assert!(invited <= 1);
            }
        }
        let waiting: usize = self.deferred.values().map(VecDeque::len).sum();
        assert_eq!(waiting, self.deferred_total);
        let bytes: usize = self
            .deferred
            .values()
            .flatten()
            .map(|(_, _, f, _)| f.as_bytes().len())
            .sum();
        assert_eq!(bytes, self.deferred_bytes);
        for (id, q) in &self.deferred {
            // Requests wait only while a write is out; it runs them when it resolves.
            let writing = self.ixns.get(id).is_some_and(|i| i.writing);
            assert!(
                writing || q.is_empty(),
                "requests wait on {id}, not writing"
            );
        }
        for (id, i) in &self.ixns {
            assert!(!i.expired || i.writing, "{id} expired while not writing");
            let queued = self
                .tenants
                .get(&i.tenant)
                .and_then(|t| t.queues.get(&i.queue))
                .is_some_and(|q| q.contains(id));
            assert_eq!(
                queued,
                i.st == St::Queued,
                "interaction {id} queue membership"
            );
        }
    }
}

fn valid_topic(t: &str) -> bool {
    t == "stats" || t.strip_prefix("queue:").is_some_and(|q| !q.is_empty())
}

/// History text for a completed interaction: its properties, one `key=value` per line.
fn text_of(p: &Pairs) -> String {
    let mut s = String::new();
    for (k, v) in p {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('\n');
    }
    s
}

/// A unicast event to the session `wire` of `tenant`.
fn event(
    msg: u16,
    tenant: u32,
    wire_session: u64,
    f: impl FnOnce(&mut deskmux_codec::BodyWriter<'_>) -> Result<(), deskmux_codec::BodyError>,
) -> Bytes {
    let mut h = Head::new(Kind::Event, Service::Interaction, msg);
    h.tenant = tenant;
    h.session = wire_session;
    wire::build(h, f)
}

/// Drive `engine` from `rx` until every sender is gone.
pub async fn run(mut engine: Engine, mut rx: EngineRx) {
    let mut batch = Vec::with_capacity(256);
    loop {
        let deadline = engine.next_deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
                let now = Instant::now();
                for input in batch.drain(..) {
                    engine.handle(now, input);
                }
                engine.tick(now);
                engine.after_batch();
            }
            () = sleep => engine.tick(Instant::now()),
        }
    }
}
