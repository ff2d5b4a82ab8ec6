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

    pub(super) fn persist(
        &self,
        id: u64,
        state: IxnState,
        req: Head,
        peer: Peer,
        ok: Bytes,
    ) -> Reply {
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

    pub(super) fn write(
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

    pub(super) fn accept(
        &mut self,
        key: SessKey,
        req: &Head,
        b: BodyRef<'_>,
        peer: &Peer,
    ) -> Reply {
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

    pub(super) fn place(
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

    pub(super) fn stop(
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
}
