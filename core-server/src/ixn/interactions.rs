//! Interaction requests: submit, accept, reject, place in queue, change properties, stop; and
//! how each change is written through the DB worker before it is answered.

use super::*;

impl Engine {
    pub(super) fn submit(
        &mut self,
        key: SessKey,
        req: &Head,
        b: BodyRef<'_>,
        peer: &Peer,
    ) -> Reply {
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
        let deadline = self.deadline;
        let bytes = row.props.len() + row.queue.len();
        let ok = self.db.submit(
            Box::new(move |s: &mut dyn Store| -> Finish {
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
            }),
            deadline,
            bytes,
        );
        if !ok {
            return bad(ErrorCode::UNAVAILABLE, "storage stopped");
        }
        Ok(None)
    }

    pub(super) fn submitted(&mut self, now: Instant, p: Pending) {
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
                writing: false,
                expired: false,
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
    pub(super) fn find(
        &self,
        key: SessKey,
        b: &BodyRef<'_>,
    ) -> Result<(u64, u32), (ErrorCode, &'static str)> {
        let id = b.int(key::INTERACTION).map_err(malformed)?;
        let (tenant, _) = self.tenant_of(key);
        let id = u64::try_from(id).map_err(|_| (ErrorCode::NOT_FOUND, "no such interaction"))?;
        match self.ixns.get(&id) {
            Some(i) if i.tenant == tenant => Ok((id, tenant)),
            _ => bad(ErrorCode::NOT_FOUND, "no such interaction"),
        }
    }

    /// The row `id` would have after `change`, from its state in memory now (which a writing
    /// interaction keeps until its write resolves: requests on it wait, see `Engine::request`).
    fn row_after(&self, id: u64, change: &Change) -> Option<IxnRow> {
        let ix = self.ixns.get(&id)?;
        let owned = |agent: &str| (IxnState::Owned, Some(agent.to_string()));
        let (state, owner) = match (change, &ix.st) {
            (Change::Accept { agent }, _) => owned(agent),
            (Change::Props(_), St::Owned { agent }) => owned(agent),
            (Change::Props(_), _) | (Change::Place { .. }, _) => (IxnState::Queued, None),
            (Change::Stop { .. }, _) => (IxnState::Completed, None),
        };
        let (queue, qpos) = match change {
            Change::Place { queue, qpos } => (queue.clone(), *qpos),
            _ => (ix.queue.clone(), ix.qpos),
        };
        let props = match change {
            Change::Props(p) => p,
            _ => &ix.props,
        };
        Some(IxnRow {
            id,
            tenant: ix.tenant,
            queue,
            props: wire::encode_pairs(props),
            state,
            owner,
            qpos,
        })
    }

    /// Write `change` of interaction `id` through the DB worker. Memory is left as it is: the
    /// change is applied by [`Engine::written`] once the row is committed, and a write that
    /// fails leaves nothing to undo. Until then the interaction is marked writing, so requests
    /// on it wait their turn instead of deciding on a state that may not last.
    fn write(&mut self, id: u64, change: Change, req: Head, peer: Peer, ok: Bytes) -> Reply {
        let Some(row) = self.row_after(id, &change) else {
            return bad(ErrorCode::NOT_FOUND, "no such interaction");
        };
        let history = match (&change, self.set.with_ucs) {
            (Change::Stop { contact: Some(c) }, true) => {
                let ix = &self.ixns[&id];
                Some((*c, ix.queue.clone(), text_of(&ix.props)))
            }
            _ => None,
        };
        let tenant = row.tenant;
        let bytes = row.props.len()
            + row.queue.len()
            + history.as_ref().map_or(0, |(_, s, t)| s.len() + t.len());
        let me = self.me.clone();
        let mut w = Box::new(Write {
            id,
            change,
            req,
            peer,
            ok,
            failed: None,
        });
        let deadline = self.deadline;
        let submitted = self.db.submit(
            Box::new(move |s: &mut dyn Store| -> Finish {
                let r = s.ixn_put(&row).and_then(|()| match history {
                    // Recorded only if the contact exists in this tenant.
                    Some((c, subject, text)) => s
                        .history_insert(tenant, c, id as i64, &subject, &text, wire::now_us())
                        .map(drop),
                    None => Ok(()),
                });
                Box::new(move |c: Result<(), &StoreError>| {
                    let e = match (c, &r) {
                        (Ok(()), Ok(())) => None,
                        (_, Err(e)) => {
                            tracing::error!("interaction storage error: {e}");
                            Some(e)
                        }
                        (Err(e), _) => Some(e),
                    };
                    w.failed = e.map(|e| wire::storage_error(&w.req, e));
                    // The engine is gone only when the process is stopping: nobody to answer.
                    me.control(Input::Written(w));
                })
            }),
            deadline,
            bytes,
        );
        if !submitted {
            return bad(ErrorCode::UNAVAILABLE, "storage stopped");
        }
        if let Some(ix) = self.ixns.get_mut(&id) {
            ix.writing = true;
        }
        Ok(None)
    }

    /// A write of [`Engine::write`] resolved: apply its change if it committed, answer, then
    /// run the requests that waited for it.
    pub(super) fn written(&mut self, now: Instant, w: Write) {
        let Write {
            id,
            change,
            req: _,
            peer,
            ok,
            failed,
        } = w;
        if let Some(ix) = self.ixns.get_mut(&id) {
            ix.writing = false;
        }
        match failed {
            Some(err) => peer.reply(err),
            None => {
                self.apply(now, id, change);
                peer.reply(ok);
            }
        }
        // An invite that timed out while its ACCEPT was being written, and is still an
        // invite (the write failed): it is revoked now, as the timer would have done.
        let expired = self
            .ixns
            .get_mut(&id)
            .is_some_and(|ix| std::mem::take(&mut ix.expired));
        if expired {
            self.expire(now, id);
        }
        self.run_deferred(now, id);
    }

    /// Apply a committed change to memory. The row is the truth now, so the change holds
    /// whatever happened to the interaction meanwhile (a session that closed and requeued its
    /// invite, an invite that moved to another agent): that is undone first.
    fn apply(&mut self, now: Instant, id: u64, change: Change) {
        let Some(tenant) = self.ixns.get(&id).map(|ix| ix.tenant) else {
            return;
        };
        match change {
            Change::Accept { agent } => {
                let invited = matches!(
                    self.ixns.get(&id).map(|ix| &ix.st),
                    Some(St::Invited { agent: a, .. }) if *a == agent
                );
                let t = self.tenants.entry(tenant).or_default();
                if invited {
                    // The invite already counts in the agent's load: it becomes the ownership.
                    t.with_agent(&agent, |a| a.invite = None);
                } else {
                    self.release(id);
                    let t = self.tenants.entry(tenant).or_default();
                    t.with_agent(&agent, |a| a.load += 1);
                }
                let t = self.tenants.entry(tenant).or_default();
                t.own(&agent, 1);
                let Some(ix) = self.ixns.get_mut(&id) else {
                    return;
                };
                ix.st = St::Owned { agent };
                let queue = ix.queue.clone();
                self.publish_queue(tenant, &queue, "accepted", id);
                self.stats(tenant);
                if !invited {
                    self.dispatch(now, tenant);
                }
            }
            Change::Props(props) => {
                let Some(ix) = self.ixns.get_mut(&id) else {
                    return;
                };
                ix.props = props;
                if let St::Owned { agent } = &ix.st {
                    let target = self
                        .tenants
                        .get(&tenant)
                        .and_then(|t| t.agents.get(agent))
                        .map(|a| a.session);
                    if let Some(sid) = target {
                        let props = wire::encode_pairs(&ix.props);
                        self.unicast(sid, ixn::PROPERTIES_CHANGED, |w| {
                            w.int(key::INTERACTION, id as i64);
                            w.raw_list(key::PROPS, &props)?;
                            Ok(())
                        });
                    }
                }
            }
            Change::Place { queue, qpos } => {
                self.release(id);
                if let Some(ix) = self.ixns.get_mut(&id) {
                    ix.queue.clone_from(&queue);
                    ix.qpos = qpos;
                    ix.st = St::Queued;
                }
                self.tenants
                    .entry(tenant)
                    .or_default()
                    .enqueue(&queue, id, false);
                self.publish_queue(tenant, &queue, "placed", id);
                self.stats(tenant);
                self.dispatch(now, tenant);
            }
            Change::Stop { .. } => {
                self.release(id);
                if let Some(ix) = self.ixns.remove(&id) {
                    self.publish_queue(tenant, &ix.queue, "completed", id);
                }
                self.stats(tenant);
                self.dispatch(now, tenant);
            }
        }
    }

    /// Whether `req` acts on an interaction that is being written; it then waits (see
    /// [`Engine::write`]). An interaction of another tenant is not looked at: that request is
    /// answered `NOT_FOUND` as usual.
    pub(super) fn waits(&self, key: SessKey, req: &Head, b: &BodyRef<'_>) -> Option<u64> {
        if !matches!(
            req.msg_type,
            ixn::ACCEPT
                | ixn::REJECT
                | ixn::CHANGE_PROPERTIES
                | ixn::PLACE_IN_QUEUE
                | ixn::STOP_PROCESSING
        ) {
            return None;
        }
        let id = u64::try_from(b.int(key::INTERACTION).ok()?).ok()?;
        let ix = self.ixns.get(&id)?;
        (ix.writing && ix.tenant == self.tenant_of(key).0).then_some(id)
    }

    /// Hold `frame` of session `key` until interaction `id`'s write resolves; `false` if the
    /// bounds on waiting requests (per interaction and in all) are reached.
    pub(super) fn defer(
        &mut self,
        id: u64,
        key: SessKey,
        peer: Peer,
        frame: Frame,
        deadline: Instant,
    ) -> bool {
        let bytes = frame.as_bytes().len();
        let q = self.deferred.entry(id).or_default();
        if q.len() >= MAX_WAITING_PER_IXN
            || self.deferred_total >= MAX_WAITING
            || self.deferred_bytes + bytes > MAX_WAITING_BYTES
        {
            return false;
        }
        q.push_back((key, peer, frame, deadline));
        self.deferred_total += 1;
        self.deferred_bytes += bytes;
        true
    }

    /// Run the requests that waited for `id`'s write, in arrival order, until one of them
    /// writes it again (the rest wait for that one).
    fn run_deferred(&mut self, now: Instant, id: u64) {
        while !self.ixns.get(&id).is_some_and(|ix| ix.writing) {
            let Some(q) = self.deferred.get_mut(&id) else {
                return;
            };
            let Some((key, peer, frame, deadline)) = q.pop_front() else {
                self.deferred.remove(&id);
                return;
            };
            self.deferred_total -= 1;
            self.deferred_bytes -= frame.as_bytes().len();
            // Its checks ran when it came (a keyed one's answer is tapped already).
            self.run_request(now, key, peer, frame, deadline);
        }
    }

    pub(super) fn accept(
        &mut self,
        key: SessKey,
        req: &Head,
        b: BodyRef<'_>,
        peer: &Peer,
    ) -> Reply {
        let (id, _) = self.find(key, &b)?;
        let agent = match self.ixns.get(&id).map(|ix| &ix.st) {
            Some(St::Invited { session, agent, .. }) if *session == key => agent.clone(),
            _ => return bad(ErrorCode::INVALID_STATE, "not invited to this session"),
        };
        let ok = wire::response(req, |w| {
            w.int(key::INTERACTION, id as i64);
            Ok(())
        });
        self.write(id, Change::Accept { agent }, *req, peer.clone(), ok)
    }

    pub(super) fn reject(
        &mut self,
        now: Instant,
        key: SessKey,
        req: &Head,
        b: BodyRef<'_>,
    ) -> Reply {
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
    pub(super) fn requeue(&mut self, id: u64, why: &'static str) {
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
    pub(super) fn release(&mut self, id: u64) {
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
                self.unicast(session, ixn::INVITE_REVOKED, |w| {
                    w.int(key::INTERACTION, id as i64);
                    Ok(())
                });
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
    pub(super) fn owner_or_submitter(&self, key: SessKey, id: u64) -> bool {
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

    pub(super) fn change_props(
        &mut self,
        key: SessKey,
        req: &Head,
        b: BodyRef<'_>,
        peer: &Peer,
    ) -> Reply {
        let (id, _) = self.find(key, &b)?;
        let upd = limits::read_pairs(b.list(key::PROPS).map_err(malformed)?, ListKind::Props)
            .map_err(refused)?;
        let Some(ix) = self.ixns.get(&id) else {
            return bad(ErrorCode::NOT_FOUND, "no such interaction");
        };
        // The merged list is held to the same caps, or repeated updates would grow it without
        // bound; a refused update leaves the properties as they were.
        let mut merged = ix.props.clone();
        limits::merge_pairs(&mut merged, upd);
        limits::check_pairs(&merged, ListKind::Props).map_err(refused)?;
        self.write(id, Change::Props(merged), *req, peer.clone(), wire::ok(req))
    }

    pub(super) fn place(&mut self, key: SessKey, req: &Head, b: BodyRef<'_>, peer: &Peer) -> Reply {
        let (id, _) = self.find(key, &b)?;
        let queue = limits::queue(b.str(key::QUEUE).map_err(malformed)?).map_err(refused)?;
        if !self.owner_or_submitter(key, id) {
            return bad(
                ErrorCode::INVALID_STATE,
                "only the owner or submitter may place it",
            );
        }
        let qpos = self.next_qpos;
        self.next_qpos += 1;
        let change = Change::Place {
            queue: queue.to_string(),
            qpos,
        };
        self.write(id, change, *req, peer.clone(), wire::ok(req))
    }

    pub(super) fn stop(&mut self, key: SessKey, req: &Head, b: BodyRef<'_>, peer: &Peer) -> Reply {
        let (id, _) = self.find(key, &b)?;
        let contact = b.opt_int(key::CONTACT).map_err(malformed)?;
        if !self.owner_or_submitter(key, id) {
            return bad(
                ErrorCode::INVALID_STATE,
                "only the owner or submitter may stop it",
            );
        }
        self.write(
            id,
            Change::Stop { contact },
            *req,
            peer.clone(),
            wire::ok(req),
        )
    }
}
