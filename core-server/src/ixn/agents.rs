//! Agent requests: login, ready and not ready, logout, and a session that ends.

use super::*;

impl Engine {
    pub(super) fn tenant_of(&self, key: SessKey) -> (u32, String) {
        self.sessions
            .get(&key)
            .map(|s| (s.tenant, s.agent.clone()))
            .unwrap_or((0, String::new()))
    }

    /// The session's agent, if logged in on this session.
    pub(super) fn logged_in(
        &self,
        key: SessKey,
    ) -> Result<(u32, String), (ErrorCode, &'static str)> {
        let (tenant, agent) = self.tenant_of(key);
        match self.tenants.get(&tenant).and_then(|t| t.agents.get(&agent)) {
            Some(a) if a.session == key => Ok((tenant, agent)),
            _ => bad(
                ErrorCode::INVALID_STATE,
                "agent not logged in on this session",
            ),
        }
    }

    pub(super) fn login(
        &mut self,
        now: Instant,
        key: SessKey,
        req: &Head,
        b: BodyRef<'_>,
    ) -> Reply {
        // The place is accepted for the record; distribution does not use it.
        let _place = b.opt_str(key::PLACE).map_err(malformed)?;
        let (tenant, agent) = self.tenant_of(key);
        if agent.is_empty() {
            return bad(ErrorCode::INVALID_STATE, "no agent id in hello");
        }
        // The agent's earlier session, detached and waiting to be resumed, was given up on:
        // this desktop logs in afresh (PROTOCOL.md §4.6), so that one ends now.
        let held = self
            .tenants
            .get(&tenant)
            .and_then(|t| t.agents.get(&agent))
            .map(|a| a.session)
            .filter(|s| *s != key && self.sessions.get(s).is_some_and(|s| s.bind.is_none()));
        if let Some(old) = held {
            self.close_session(now, old);
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

    pub(super) fn set_ready(
        &mut self,
        now: Instant,
        key: SessKey,
        req: &Head,
        ready: bool,
    ) -> Reply {
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

    pub(super) fn logout(&mut self, now: Instant, key: SessKey) {
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

    pub(super) fn close_session(&mut self, now: Instant, key: SessKey) {
        self.logout(now, key);
        self.subs.drop_owner(&Owner::Session(key));
        // Interactions keep a stale `submitter`: session keys are never reused.
        if let Some(s) = self.sessions.remove(&key) {
            if let Some(b) = s.bind {
                self.bound.remove(&b);
            }
            if s.replay.is_detached() {
                self.detached_now -= 1;
            }
            self.replay_bytes -= s.replay.kept_bytes();
        }
    }
}
