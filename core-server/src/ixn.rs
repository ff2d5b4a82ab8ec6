//! The Interaction Server role: agents, interactions, queues and subscriptions (PROTOCOL.md §7).
//!
//! One [`Engine`] owns all of this state and is driven by one task ([`run`]): connection tasks
//! send it [`Input`]s over a channel, so there are no locks and every decision (who gets the
//! next invite) is made in one place. The clock is passed in (`now`), so the engine is testable
//! without sockets. Answers go straight to the session's outbox (non-blocking).
//!
//! Persistence: each change that must survive a restart is written through the DB worker (group
//! commit) and the request is answered only after the commit. `SUBMIT` is applied only once
//! durable: the interaction enters its queue (and may be offered) after the commit. Outstanding
//! invites are not persisted: after a restart an invited interaction is simply queued again.
//! Ownership is by (tenant, agent id), so an agent that logs in again after a restart can still
//! complete the interactions it owned.

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
    /// A session ended (connection closed or `SESSION_CLOSE`).
    Close(SessKey),
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
    /// A request of service 1 (not ECHO), already checked for session and tenant.
    Request(SessKey, Frame),
    /// A submitted interaction is durable.
    Submitted(Box<Pending>),
}

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
}

#[derive(Debug)]
struct Session {
    tenant: u32,
    agent: String,
    wire: u64,
    peer: Peer,
    link: Option<LinkId>,
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
        self.timers.peek().map(|Reverse((d, _, _))| *d)
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
                self.sessions.insert(
                    key,
                    Session {
                        tenant,
                        agent,
                        wire,
                        peer,
                        link,
                    },
                );
            }
            Input::Close(key) => self.close_session(now, key),
            Input::LinkClosed(link) => self.subs.drop_owner(&Owner::Link(link)),
            Input::LinkUnsubscribe {
                link,
                tenant,
                topic,
            } => self.subs.unsubscribe(Owner::Link(link), tenant, &topic),
            Input::Request(key, frame) => self.request(now, key, &frame),
            Input::Submitted(p) => self.submitted(now, *p),
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
    }

    /// Expire invites whose deadline has passed.
    pub fn tick(&mut self, now: Instant) {
        while let Some(Reverse((d, id, generation))) = self.timers.peek().copied() {
            if d > now {
                break;
            }
            self.timers.pop();
            let Some(ix) = self.ixns.get(&id) else {
                continue;
            };
            let St::Invited {
                generation: g,
                session,
                ..
            } = &ix.st
            else {
                continue;
            };
            if *g != generation {
                continue;
            }
            let (tenant, session) = (ix.tenant, *session);
            if let Some(s) = self.sessions.get(&session) {
                let ev = event(ixn::INVITE_REVOKED, tenant, s.wire, |w| {
                    w.int(key::INTERACTION, id as i64);
                    Ok(())
                });
                s.peer.push(ev);
            }
            self.requeue(id, "revoked");
            self.dispatch(now, tenant);
        }
    }

    fn request(&mut self, now: Instant, key: SessKey, frame: &Frame) {
        let req = *frame.head();
        let Some(sess) = self.sessions.get(&key) else {
            // The session ended while the request was queued; nobody to answer.
            return;
        };
        let peer = sess.peer.clone();
        let b = frame.body();
        let r = match b.validate() {
            Err(_) => bad(ErrorCode::MALFORMED, "malformed body"),
            Ok(()) => self.dispatch_request(now, key, &req, b, &peer),
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
            ixn::AGENT_LOGIN => self.login(key, req, b),
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
            ixn::PLACE_IN_QUEUE => self.place(now, key, req, b, peer),
            ixn::STOP_PROCESSING => self.stop(now, key, req, b, peer),
            ixn::SUBSCRIBE => self.subscribe(key, req, b),
            ixn::UNSUBSCRIBE => self.unsubscribe(key, req, b),
            _ => bad(
                ErrorCode::UNKNOWN_MESSAGE,
                "unknown interaction server message",
            ),
        }
    }

    fn tenant_of(&self, key: SessKey) -> (u32, String) {
        self.sessions
            .get(&key)
            .map(|s| (s.tenant, s.agent.clone()))
            .unwrap_or((0, String::new()))
    }

    /// The session's agent, if logged in on this session.
    fn logged_in(&self, key: SessKey) -> Result<(u32, String), (ErrorCode, &'static str)> {
        let (tenant, agent) = self.tenant_of(key);
        match self.tenants.get(&tenant).and_then(|t| t.agents.get(&agent)) {
            Some(a) if a.session == key => Ok((tenant, agent)),
            _ => bad(
                ErrorCode::INVALID_STATE,
                "agent not logged in on this session",
            ),
        }
    }

    fn login(&mut self, key: SessKey, req: &Head, b: BodyRef<'_>) -> Reply {
        // The place is accepted for the record; distribution does not use it.
        let _place = b.opt_str(key::PLACE).map_err(malformed)?;
        let (tenant, agent) = self.tenant_of(key);
        if agent.is_empty() {
            return bad(ErrorCode::INVALID_STATE, "no agent id in hello");
        }
        self.idle_clock += 1;
        let clock = self.idle_clock;
        let t = self.tenants.entry(tenant).or_default();
        let owned = t.owned.get(&agent).copied().unwrap_or(0);
        match t.agents.get(&agent) {
            Some(a) if a.session != key => {
                return bad(
                    ErrorCode::INVALID_STATE,
                    "agent logged in on another session",
                );
            }
            Some(_) => {}
            None => {
                t.agents.insert(
                    agent,
                    Agent {
                        session: key,
                        ready: false,
                        idle_since: clock,
                        load: owned,
                        invite: None,
                    },
                );
            }
        }
        Ok(Some(wire::ok(req)))
    }

    fn set_ready(&mut self, now: Instant, key: SessKey, req: &Head, ready: bool) -> Reply {
        let (tenant, agent) = self.logged_in(key)?;
        self.idle_clock += 1;
        let clock = self.idle_clock;
        if let Some(t) = self.tenants.get_mut(&tenant) {
            t.with_agent(&agent, |a| {
                if ready && !a.ready {
                    a.idle_since = clock;
                }
                a.ready = ready;
            });
        }
        self.stats(tenant);
        if ready {
            self.dispatch(now, tenant);
        }
        Ok(Some(wire::ok(req)))
    }

    fn logout(&mut self, now: Instant, key: SessKey) {
        let (tenant, agent) = self.tenant_of(key);
        let Some(t) = self.tenants.get_mut(&tenant) else {
            return;
        };
        match t.agents.get(&agent) {
            Some(a) if a.session == key => {}
            _ => return,
        }
        let invite = t.agents.get(&agent).and_then(|a| a.invite);
        if let Some(id) = invite {
            self.requeue(id, "revoked");
        }
        if let Some(t) = self.tenants.get_mut(&tenant) {
            t.remove_agent(&agent);
        }
        self.stats(tenant);
        self.dispatch(now, tenant);
    }

    fn close_session(&mut self, now: Instant, key: SessKey) {
        self.logout(now, key);
        self.subs.drop_owner(&Owner::Session(key));
        // Interactions keep a stale `submitter`: session keys are never reused.
        self.sessions.remove(&key);
    }

    fn submit(&mut self, key: SessKey, req: &Head, b: BodyRef<'_>, peer: &Peer) -> Reply {
        let queue = limits::queue(b.str(key::QUEUE).map_err(malformed)?).map_err(refused)?;
        let props = match b.opt_list(key::PROPS).map_err(malformed)? {
            Some(l) => limits::read_pairs(l, ListKind::Props).map_err(refused)?,
            None => Vec::new(),
        };
        let norm = limits::normalise(props);
        let (tenant, _) = self.tenant_of(key);
        let id = self.next_id;
        self.next_id += 1;
        let qpos = self.next_qpos;
        self.next_qpos += 1;
        let row = IxnRow {
            id,
            tenant,
            queue: queue.to_string(),
            props: wire::encode_pairs(&norm),
            state: IxnState::Queued,
            owner: None,
            qpos,
        };
        let pending = Box::new(Pending {
            id,
            tenant,
            queue: row.queue.clone(),
            props: norm,
            qpos,
            submitter: key,
            req: *req,
            peer: peer.clone(),
        });
        let me = self.me.clone();
        let ok = self.db.submit(Box::new(move |s: &mut dyn Store| -> Finish {
            let r = s.ixn_put(&row);
            Box::new(move |c: Result<(), &StoreError>| match (c, r) {
                (Ok(()), Ok(())) => {
                    me.control(Input::Submitted(pending));
                }
                (Err(e), _) => {
                    let req = pending.req;
                    pending.peer.reply(wire::storage_error(&req, e));
                }
                (Ok(()), Err(e)) => {
                    let req = pending.req;
                    pending.peer.reply(wire::storage_error(&req, &e));
                }
            })
        }));
        if !ok {
            return bad(ErrorCode::UNAVAILABLE, "storage stopped");
        }
        Ok(None)
    }

    fn submitted(&mut self, now: Instant, p: Pending) {
        let Pending {
            id,
            tenant,
            queue,
            props,
            qpos,
            submitter,
            req,
            peer,
        } = p;
        self.tenants
            .entry(tenant)
            .or_default()
            .enqueue(&queue, id, false);
        let submitter = self.sessions.contains_key(&submitter).then_some(submitter);
        self.ixns.insert(
            id,
            Ixn {
                tenant,
                queue: queue.clone(),
                props,
                st: St::Queued,
                qpos,
                submitter,
            },
        );
        peer.reply(wire::response(&req, |w| {
            w.int(key::INTERACTION, id as i64);
            Ok(())
        }));
        self.publish_queue(tenant, &queue, "submitted", id);
        self.stats(tenant);
        self.dispatch(now, tenant);
    }

    /// The interaction `id` of the session's tenant.
    fn find(&self, key: SessKey, b: &BodyRef<'_>) -> Result<(u64, u32), (ErrorCode, &'static str)> {
        let id = b.int(key::INTERACTION).map_err(malformed)?;
        let (tenant, _) = self.tenant_of(key);
        let id = u64::try_from(id).map_err(|_| (ErrorCode::NOT_FOUND, "no such interaction"))?;
        match self.ixns.get(&id) {
            Some(i) if i.tenant == tenant => Ok((id, tenant)),
            _ => bad(ErrorCode::NOT_FOUND, "no such interaction"),
        }
    }

    fn persist(&self, id: u64, state: IxnState, req: Head, peer: Peer, ok: Bytes) -> Reply {
        let Some(ix) = self.ixns.get(&id) else {
            return bad(ErrorCode::NOT_FOUND, "no such interaction");
        };
        let owner = match &ix.st {
            St::Owned { agent } => Some(agent.clone()),
            _ => None,
        };
        let row = IxnRow {
            id,
            tenant: ix.tenant,
            queue: ix.queue.clone(),
            props: wire::encode_pairs(&ix.props),
            state,
            owner,
            qpos: ix.qpos,
        };
        self.write(req, peer, ok, move |s| s.ixn_put(&row))
    }

    fn write(
        &self,
        req: Head,
        peer: Peer,
        ok: Bytes,
        op: impl FnOnce(&mut dyn Store) -> Result<(), StoreError> + Send + 'static,
    ) -> Reply {
        let ok2 = self.db.submit(Box::new(move |s: &mut dyn Store| -> Finish {
            let r = op(s);
            Box::new(move |c: Result<(), &StoreError>| match (c, r) {
                (Ok(()), Ok(())) => peer.reply(ok),
                (_, Err(e)) => {
                    tracing::error!("interaction storage error: {e}");
                    peer.reply(wire::storage_error(&req, &e));
                }
                (Err(e), _) => peer.reply(wire::storage_error(&req, e)),
            })
        }));
        if ok2 {
            Ok(None)
        } else {
            bad(ErrorCode::UNAVAILABLE, "storage stopped")
        }
    }

    fn accept(&mut self, key: SessKey, req: &Head, b: BodyRef<'_>, peer: &Peer) -> Reply {
        let (id, tenant) = self.find(key, &b)?;
        let queue = {
            let Some(ix) = self.ixns.get_mut(&id) else {
                return bad(ErrorCode::NOT_FOUND, "no such interaction");
            };
            let agent = match &ix.st {
                St::Invited { session, agent, .. } if *session == key => agent.clone(),
                _ => return bad(ErrorCode::INVALID_STATE, "not invited to this session"),
            };
            let queue = ix.queue.clone();
            if let Some(t) = self.tenants.get_mut(&tenant) {
                t.own(&agent, 1);
                t.with_agent(&agent, |a| a.invite = None);
            }
            ix.st = St::Owned { agent };
            queue
        };
        self.publish_queue(tenant, &queue, "accepted", id);
        let ok = wire::response(req, |w| {
            w.int(key::INTERACTION, id as i64);
            Ok(())
        });
        self.persist(id, IxnState::Owned, *req, peer.clone(), ok)
    }

    fn reject(&mut self, now: Instant, key: SessKey, req: &Head, b: BodyRef<'_>) -> Reply {
        let (id, tenant) = self.find(key, &b)?;
        match self.ixns.get(&id).map(|i| &i.st) {
            Some(St::Invited { session, .. }) if *session == key => {}
            _ => return bad(ErrorCode::INVALID_STATE, "not invited to this session"),
        }
        self.requeue(id, "rejected");
        self.dispatch(now, tenant);
        Ok(Some(wire::ok(req)))
    }

    /// An invited interaction goes back to the head of its queue; the agent's idle time restarts.
    fn requeue(&mut self, id: u64, why: &'static str) {
        let Some(ix) = self.ixns.get_mut(&id) else {
            return;
        };
        let St::Invited { agent, .. } = std::mem::replace(&mut ix.st, St::Queued) else {
            return;
        };
        let (tenant, queue) = (ix.tenant, ix.queue.clone());
        self.idle_clock += 1;
        let clock = self.idle_clock;
        let t = self.tenants.entry(tenant).or_default();
        t.with_agent(&agent, |a| {
            a.load = a.load.saturating_sub(1);
            a.idle_since = clock;
            a.invite = None;
        });
        t.enqueue(&queue, id, true);
        self.publish_queue(tenant, &queue, why, id);
        self.stats(tenant);
    }

    /// Release the agent of an owned or invited interaction (its idle time restarts).
    fn release(&mut self, id: u64) {
        let Some(ix) = self.ixns.get_mut(&id) else {
            return;
        };
        let tenant = ix.tenant;
        let agent = match std::mem::replace(&mut ix.st, St::Queued) {
            St::Owned { agent } => {
                if let Some(t) = self.tenants.get_mut(&tenant) {
                    t.own(&agent, -1);
                }
                agent
            }
            St::Invited { agent, session, .. } => {
                if let Some(s) = self.sessions.get(&session) {
                    s.peer.push(event(ixn::INVITE_REVOKED, tenant, s.wire, |w| {
                        w.int(key::INTERACTION, id as i64);
                        Ok(())
                    }));
                }
                agent
            }
            St::Queued => {
                // Take it out of its queue.
                let queue = ix.queue.clone();
                if let Some(t) = self.tenants.get_mut(&tenant) {
                    if let Some(q) = t.queues.get_mut(&queue) {
                        let before = q.len();
                        q.retain(|x| *x != id);
                        t.waiting -= before - q.len();
                    }
                }
                return;
            }
        };
        self.idle_clock += 1;
        let clock = self.idle_clock;
        if let Some(t) = self.tenants.get_mut(&tenant) {
            t.with_agent(&agent, |a| {
                a.load = a.load.saturating_sub(1);
                a.idle_since = clock;
                if a.invite == Some(id) {
                    a.invite = None;
                }
            });
        }
    }

    /// Whether `key` may act on `id` as owner or submitter.
    fn owner_or_submitter(&self, key: SessKey, id: u64) -> bool {
        let Some(ix) = self.ixns.get(&id) else {
            return false;
        };
        if ix.submitter == Some(key) {
            return true;
        }
        let (_, agent) = self.tenant_of(key);
        let logged = self.logged_in(key).is_ok();
        matches!(&ix.st, St::Owned { agent: a } if logged && *a == agent)
    }

    fn change_props(&mut self, key: SessKey, req: &Head, b: BodyRef<'_>, peer: &Peer) -> Reply {
        let (id, tenant) = self.find(key, &b)?;
        let upd = limits::read_pairs(b.list(key::PROPS).map_err(malformed)?, ListKind::Props)
            .map_err(refused)?;
        let Some(ix) = self.ixns.get_mut(&id) else {
            return bad(ErrorCode::NOT_FOUND, "no such interaction");
        };
        // The merged list is held to the same caps, or repeated updates would grow it without
        // bound; a refused update leaves the properties as they were.
        let mut merged = ix.props.clone();
        limits::merge_pairs(&mut merged, upd);
        limits::check_pairs(&merged, ListKind::Props).map_err(refused)?;
        ix.props = merged;
        if let St::Owned { agent } = &ix.st {
            let target = self
                .tenants
                .get(&tenant)
                .and_then(|t| t.agents.get(agent))
                .and_then(|a| self.sessions.get(&a.session));
            if let Some(s) = target {
                let props = wire::encode_pairs(&ix.props);
                s.peer
                    .push(event(ixn::PROPERTIES_CHANGED, tenant, s.wire, |w| {
                        w.int(key::INTERACTION, id as i64);
                        w.raw_list(key::PROPS, &props)?;
                        Ok(())
                    }));
            }
        }
        let state = match ix.st {
            St::Owned { .. } => IxnState::Owned,
            _ => IxnState::Queued,
        };
        self.persist(id, state, *req, peer.clone(), wire::ok(req))
    }

    fn place(
        &mut self,
        now: Instant,
        key: SessKey,
        req: &Head,
        b: BodyRef<'_>,
        peer: &Peer,
    ) -> Reply {
        let (id, tenant) = self.find(key, &b)?;
        let queue = limits::queue(b.str(key::QUEUE).map_err(malformed)?).map_err(refused)?;
        if !self.owner_or_submitter(key, id) {
            return bad(
                ErrorCode::INVALID_STATE,
                "only the owner or submitter may place it",
            );
        }
        self.release(id);
        let qpos = self.next_qpos;
        self.next_qpos += 1;
        if let Some(ix) = self.ixns.get_mut(&id) {
            ix.queue = queue.to_string();
            ix.qpos = qpos;
            ix.st = St::Queued;
        }
        self.tenants
            .entry(tenant)
            .or_default()
            .enqueue(queue, id, false);
        self.publish_queue(tenant, queue, "placed", id);
        self.stats(tenant);
        let r = self.persist(id, IxnState::Queued, *req, peer.clone(), wire::ok(req));
        self.dispatch(now, tenant);
        r
    }

    fn stop(
        &mut self,
        now: Instant,
        key: SessKey,
        req: &Head,
        b: BodyRef<'_>,
        peer: &Peer,
    ) -> Reply {
        let (id, tenant) = self.find(key, &b)?;
        let contact = b.opt_int(key::CONTACT).map_err(malformed)?;
        if !self.owner_or_submitter(key, id) {
            return bad(
                ErrorCode::INVALID_STATE,
                "only the owner or submitter may stop it",
            );
        }
        self.release(id);
        let Some(ix) = self.ixns.remove(&id) else {
            return bad(ErrorCode::NOT_FOUND, "no such interaction");
        };
        self.publish_queue(tenant, &ix.queue, "completed", id);
        self.stats(tenant);
        let props = wire::encode_pairs(&ix.props);
        let row = IxnRow {
            id,
            tenant,
            queue: ix.queue.clone(),
            props,
            state: IxnState::Completed,
            owner: None,
            qpos: ix.qpos,
        };
        let history = match (self.set.with_ucs, contact) {
            (true, Some(c)) => Some((c, ix.queue, text_of(&ix.props))),
            _ => None,
        };
        let r = self.write(*req, peer.clone(), wire::ok(req), move |s| {
            s.ixn_put(&row)?;
            if let Some((c, subject, text)) = history {
                // Recorded only if the contact exists in this tenant.
                s.history_insert(tenant, c, id as i64, &subject, &text, wire::now_us())?;
            }
            Ok(())
        });
        self.dispatch(now, tenant);
        r
    }

    fn subscribe(&mut self, key: SessKey, req: &Head, b: BodyRef<'_>) -> Reply {
        let topic = b.str(key::TOPIC).map_err(malformed)?;
        if !valid_topic(topic) {
            return bad(ErrorCode::MALFORMED, "topic must be stats or queue:NAME");
        }
        if topic.len() > "queue:".len() + limits::MAX_QUEUE {
            return bad(ErrorCode::MALFORMED, limits::TOPIC_TOO_LONG);
        }
        let Some(sess) = self.sessions.get(&key) else {
            return bad(ErrorCode::INVALID_STATE, "no session");
        };
        let owner = match sess.link {
            Some(l) => Owner::Link(l),
            None => Owner::Session(key),
        };
        let (id, seq) = self
            .subs
            .subscribe(owner, sess.tenant, topic, &sess.peer.out);
        Ok(Some(wire::response(req, |w| {
            w.int(key::SUBSCRIPTION, id as i64);
            w.int(key::SEQ, seq);
            Ok(())
        })))
    }

    fn unsubscribe(&mut self, key: SessKey, req: &Head, b: BodyRef<'_>) -> Reply {
        let topic = b.str(key::TOPIC).map_err(malformed)?;
        if let Some(sess) = self.sessions.get(&key) {
            let owner = match sess.link {
                Some(l) => Owner::Link(l),
                None => Owner::Session(key),
            };
            self.subs.unsubscribe(owner, sess.tenant, topic);
        }
        Ok(Some(wire::ok(req)))
    }

    fn publish(
        &mut self,
        tenant: u32,
        topic: &str,
        msg: u16,
        f: impl Fn(&mut deskmux_codec::BodyWriter<'_>),
    ) {
        let published = wire::now_us();
        self.subs.each_of_topic(tenant, topic, |id, s| {
            s.seq += 1;
            let mut h = Head::new(Kind::Event, Service::Interaction, msg);
            h.flags = Flags(Flags::BROADCAST);
            h.tenant = tenant;
            h.correlation = id;
            let seq = s.seq;
            s.out.frame(wire::build(h, |w| {
                w.str(key::TOPIC, topic)?;
                w.int(key::SEQ, seq);
                f(w);
                w.int(key::PUBLISHED_US, published);
                Ok(())
            }));
        });
    }

    fn publish_queue(&mut self, tenant: u32, queue: &str, what: &str, id: u64) {
        if self.subs.is_empty() {
            return;
        }
        let topic = format!("queue:{queue}");
        self.publish(tenant, &topic, ixn::QUEUE_EVENT, |w| {
            let _ = w.str(key::EVENT, what);
            w.int(key::INTERACTION, id as i64);
        });
    }

    fn stats(&mut self, tenant: u32) {
        if !self.subs.has_topic(tenant, "stats") {
            return;
        }
        let (waiting, ready) = match self.tenants.get(&tenant) {
            Some(t) => (t.waiting, t.ready),
            None => (0, 0),
        };
        self.publish(tenant, "stats", ixn::STATS_EVENT, |w| {
            w.int(key::WAITING, waiting as i64);
            w.int(key::READY_AGENTS, ready as i64);
        });
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
            if let Some(s) = self.sessions.get(&session) {
                let props = wire::encode_pairs(&ix.props);
                let timeout_ms = self.set.invite_timeout.as_millis() as i64;
                let q = ix.queue.clone();
                s.peer.push(event(ixn::INVITE, tenant, s.wire, |w| {
                    w.int(key::INTERACTION, id as i64);
                    w.str(key::QUEUE, &q)?;
                    w.raw_list(key::PROPS, &props)?;
                    w.int(key::TIMEOUT_MS, timeout_ms);
                    Ok(())
                }));
            }
            self.publish_queue(tenant, &queue, "invited", id);
            self.stats(tenant);
        }
    }
}

impl Engine {
    /// Check the derived indexes against the state they summarise (tests only).
    #[cfg(test)]
    fn check_invariants(&self) {
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
        for (id, i) in &self.ixns {
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

#[cfg(test)]
mod tests {
    //! The engine without sockets: the clock is driven by hand, so the invite timeout is tested
    //! without sleeping.
    use super::*;
    use crate::storage::sqlite::SqliteStore;
    use crate::wire::Outbox;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    struct Desk {
        peer: Peer,
        rx: mpsc::Receiver<wire::Out>,
    }

    impl Desk {
        fn new() -> Desk {
            let limits = wire::QueueLimits {
                desktop_frames: 64,
                desktop_bytes: 1 << 24,
                link_frames: 64,
                link_bytes: 1 << 24,
            };
            let (out, rx, _st) = Outbox::new(limits, CancellationToken::new());
            Desk {
                peer: Peer {
                    out,
                    inflight: Arc::new(AtomicU32::new(0)),
                },
                rx,
            }
        }

        /// Frames received so far, as (kind, type, interaction).
        fn drain(&mut self) -> Vec<(Kind, u16, i64)> {
            let mut v = Vec::new();
            while let Ok(wire::Out::Frame(b)) = self.rx.try_recv() {
                let mut dec = deskmux_codec::FrameDecoder::default();
                let mut buf = bytes::BytesMut::from(&b[..]);
                let f = dec.decode(&mut buf).unwrap().unwrap();
                let id = f.body().opt_int(key::INTERACTION).unwrap().unwrap_or(0);
                v.push((f.head().kind, f.head().msg_type, id));
            }
            v
        }
    }

    fn req(
        ty: u16,
        f: impl FnOnce(&mut deskmux_codec::BodyWriter<'_>) -> Result<(), deskmux_codec::BodyError>,
    ) -> Frame {
        let mut h = Head::new(Kind::Request, Service::Interaction, ty);
        h.tenant = 1;
        Frame::build(h, f).unwrap()
    }

    #[test]
    fn reject_then_timeout_moves_to_next_agent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("e.db")).unwrap();
        let db = Db::start(Box::new(store), 16).unwrap();
        let (tx, mut rx) = crate::queue::engine_channel(1024);
        let set = Settings {
            invite_timeout: Duration::from_secs(5),
            with_ucs: false,
        };
        let mut e = Engine::new(set, db, tx, Vec::new(), 0);
        let t0 = Instant::now();
        let mut desks: Vec<Desk> = (0..3).map(|_| Desk::new()).collect();
        for (i, d) in desks.iter().enumerate() {
            let agent = ["a", "b", "media"][i].to_string();
            e.handle(
                t0,
                Input::Open {
                    key: i as u64 + 1,
                    tenant: 1,
                    agent,
                    wire: i as u64 + 1,
                    peer: d.peer.clone(),
                    link: None,
                },
            );
        }
        for k in [1, 2] {
            e.handle(t0, Input::Request(k, req(ixn::AGENT_LOGIN, |_| Ok(()))));
            e.handle(t0, Input::Request(k, req(ixn::AGENT_READY, |_| Ok(()))));
        }
        e.handle(
            t0,
            Input::Request(
                3,
                req(ixn::SUBMIT, |w| {
                    w.str(key::QUEUE, "q")?;
                    Ok(())
                }),
            ),
        );
        // The submit is applied once the DB worker has committed it.
        let committed = rx.blocking_recv().unwrap();
        e.handle(t0, committed);
        assert!(desks[2].drain().contains(&(Kind::Response, ixn::SUBMIT, 1)));
        // "a" has been idle longest.
        assert!(desks[0].drain().contains(&(Kind::Event, ixn::INVITE, 1)));
        e.handle(
            t0,
            Input::Request(
                1,
                req(ixn::REJECT, |w| {
                    w.int(key::INTERACTION, 1);
                    Ok(())
                }),
            ),
        );
        assert!(desks[1].drain().contains(&(Kind::Event, ixn::INVITE, 1)));
        // Nothing expires early; at the deadline b's invite is revoked and a gets it again.
        e.tick(t0 + Duration::from_secs(4));
        assert!(desks[1].drain().is_empty());
        e.tick(t0 + Duration::from_secs(6));
        assert!(
            desks[1]
                .drain()
                .contains(&(Kind::Event, ixn::INVITE_REVOKED, 1))
        );
        assert!(desks[0].drain().contains(&(Kind::Event, ixn::INVITE, 1)));
        assert_eq!(e.open_interactions(), 1);
        e.check_invariants();
    }

    /// Random operations from several agents; the derived indexes must always match.
    #[test]
    fn random_operations_keep_invariants() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(&dir.path().join("r.db"), "normal").unwrap();
        let db = Db::start(Box::new(store), 64).unwrap();
        let (tx, mut rx) = crate::queue::engine_channel(1024);
        let set = Settings {
            invite_timeout: Duration::from_millis(100),
            with_ucs: false,
        };
        let mut e = Engine::new(set, db, tx, Vec::new(), 0);
        let mut now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut desks: Vec<Desk> = (0..6).map(|_| Desk::new()).collect();
        let mut next_key = 100u64;
        let mut keys: Vec<u64> = Vec::new();
        for (i, d) in desks.iter().enumerate() {
            next_key += 1;
            keys.push(next_key);
            let agent = if i == 5 {
                "media".to_string()
            } else {
                format!("ag{i}")
            };
            e.handle(
                now,
                Input::Open {
                    key: next_key,
                    tenant: 1,
                    agent,
                    wire: next_key,
                    peer: d.peer.clone(),
                    link: None,
                },
            );
        }
        let ixn_req = |ty: u16, id: i64| {
            req(ty, move |w| {
                w.int(key::INTERACTION, id);
                w.str(key::QUEUE, "q2")?;
                Ok(())
            })
        };
        for _ in 0..2000 {
            let i = rng.usize(0..5);
            let k = keys[i];
            let open: Vec<u64> = e.ixns.keys().copied().collect();
            let id = if open.is_empty() {
                1
            } else {
                open[rng.usize(0..open.len())] as i64
            };
            let f = match rng.u32(0..12) {
                0 => req(ixn::AGENT_LOGIN, |_| Ok(())),
                1 | 2 => req(ixn::AGENT_READY, |_| Ok(())),
                3 => req(ixn::AGENT_NOT_READY, |_| Ok(())),
                4 => req(ixn::AGENT_LOGOUT, |_| Ok(())),
                5 => ixn_req(ixn::ACCEPT, id),
                6 => ixn_req(ixn::REJECT, id),
                7 => ixn_req(ixn::STOP_PROCESSING, id),
                8 => ixn_req(ixn::PLACE_IN_QUEUE, id),
                9 => {
                    // Disconnect and reconnect as the same agent.
                    e.handle(now, Input::Close(k));
                    next_key += 1;
                    keys[i] = next_key;
                    e.handle(
                        now,
                        Input::Open {
                            key: next_key,
                            tenant: 1,
                            agent: format!("ag{i}"),
                            wire: next_key,
                            peer: desks[i].peer.clone(),
                            link: None,
                        },
                    );
                    e.check_invariants();
                    continue;
                }
                _ => {
                    e.handle(
                        now,
                        Input::Request(
                            keys[5],
                            req(ixn::SUBMIT, |w| {
                                w.str(key::QUEUE, "q1")?;
                                Ok(())
                            }),
                        ),
                    );
                    let committed = rx.blocking_recv().unwrap();
                    e.handle(now, committed);
                    e.check_invariants();
                    continue;
                }
            };
            e.handle(now, Input::Request(k, f));
            if rng.u32(0..4) == 0 {
                now += Duration::from_millis(60);
                e.tick(now);
            }
            e.check_invariants();
            for d in &mut desks {
                d.drain();
            }
        }
    }
}
