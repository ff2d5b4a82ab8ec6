//! Subscriptions and the events they receive: queue events and statistics.

use super::*;

impl Engine {
    pub(super) fn subscribe(&mut self, key: SessKey, req: &Head, b: BodyRef<'_>) -> Reply {
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

    pub(super) fn unsubscribe(&mut self, key: SessKey, req: &Head, b: BodyRef<'_>) -> Reply {
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

    pub(super) fn publish(
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

    pub(super) fn publish_queue(&mut self, tenant: u32, queue: &str, what: &str, id: u64) {
        if self.subs.is_empty() {
            return;
        }
        let topic = format!("queue:{queue}");
        self.publish(tenant, &topic, ixn::QUEUE_EVENT, |w| {
            let _ = w.str(key::EVENT, what);
            w.int(key::INTERACTION, id as i64);
        });
    }

    pub(super) fn stats(&mut self, tenant: u32) {
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
}
