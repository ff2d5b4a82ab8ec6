//! The engine's subscriptions (PROTOCOL.md §9): one per (owner, tenant, topic), where the owner
//! is a direct session or a proxy link, found by id (events name it), by key (idempotent
//! `SUBSCRIBE`, `UNSUBSCRIBE`), by topic (publishing) and by owner (a session or link that
//! ends drops all of its own).
//!
//! Releasing costs what was held: an owner's subscriptions are a set, so that a link dropping
//! 80,000 topics one `UNSUBSCRIBE` at a time does not scan an 80,000-entry list each time (it
//! did: 3·10⁹ comparisons on the engine task). Hash maps keep their capacity when emptied, so
//! [`Subs::shrink`] gives it back once most entries are gone.

use std::collections::{HashMap, HashSet};

use crate::ixn::{LinkId, SessKey};
use crate::wire::Outbox;

/// Who holds a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A proxy link (its sessions share it).
    Link(LinkId),
    /// A direct session.
    Session(SessKey),
}

/// One subscription.
#[derive(Debug)]
pub struct Sub {
    /// Who holds it.
    pub owner: Owner,
    /// Its tenant.
    pub tenant: u32,
    /// Its topic.
    pub topic: String,
    /// The last event's sequence number.
    pub seq: i64,
    /// Where its events go.
    pub out: Outbox,
}

/// Every subscription, with its indexes.
#[derive(Debug)]
pub struct Subs {
    subs: HashMap<u64, Sub>,
    by_key: HashMap<(Owner, u32, String), u64>,
    by_topic: HashMap<(u32, String), Vec<u64>>,
    by_owner: HashMap<Owner, HashSet<u64>>,
    /// Subscriptions held by links (kept as they change: counting them is per batch).
    link_subs: usize,
    next: u64,
}

impl Default for Subs {
    fn default() -> Self {
        Subs {
            subs: HashMap::new(),
            by_key: HashMap::new(),
            by_topic: HashMap::new(),
            by_owner: HashMap::new(),
            link_subs: 0,
            next: 1,
        }
    }
}

impl Subs {
    /// The subscription of (owner, tenant, topic), made if there is none; its id and last seq.
    pub fn subscribe(
        &mut self,
        owner: Owner,
        tenant: u32,
        topic: &str,
        out: &Outbox,
    ) -> (u64, i64) {
        let k = (owner.clone(), tenant, topic.to_string());
        if let Some(id) = self.by_key.get(&k) {
            let seq = self.subs.get(id).map_or(0, |s| s.seq);
            return (*id, seq);
        }
        let id = self.next;
        self.next += 1;
        self.subs.insert(
            id,
            Sub {
                owner: owner.clone(),
                tenant,
                topic: topic.to_string(),
                seq: 0,
                out: out.clone(),
            },
        );
        self.by_topic
            .entry((tenant, topic.to_string()))
            .or_default()
            .push(id);
        self.by_key.insert(k, id);
        if matches!(owner, Owner::Link(_)) {
            self.link_subs += 1;
        }
        self.by_owner.entry(owner).or_default().insert(id);
        (id, 0)
    }

    /// Drop the subscription of (owner, tenant, topic), if there is one.
    pub fn unsubscribe(&mut self, owner: Owner, tenant: u32, topic: &str) {
        if let Some(id) = self
            .by_key
            .get(&(owner, tenant, topic.to_string()))
            .copied()
        {
            self.drop_sub(id);
        }
    }

    /// A resumed session's subscriptions send to its new connection.
    pub fn rebind_owner(&mut self, owner: &Owner, out: &Outbox) {
        for id in self.by_owner.get(owner).into_iter().flatten() {
            if let Some(s) = self.subs.get_mut(id) {
                s.out = out.clone();
            }
        }
    }

    /// Drop every subscription of a session or link.
    pub fn drop_owner(&mut self, owner: &Owner) {
        for id in self.by_owner.remove(owner).unwrap_or_default() {
            self.drop_sub(id);
        }
    }

    fn drop_sub(&mut self, id: u64) {
        let Some(s) = self.subs.remove(&id) else {
            return;
        };
        if matches!(s.owner, Owner::Link(_)) {
            self.link_subs -= 1;
        }
        if let Some(v) = self.by_owner.get_mut(&s.owner) {
            v.remove(&id);
            if v.is_empty() {
                self.by_owner.remove(&s.owner);
            }
        }
        let topic_key = (s.tenant, s.topic);
        if let Some(v) = self.by_topic.get_mut(&topic_key) {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.by_topic.remove(&topic_key);
            }
        }
        let (tenant, topic) = topic_key;
        self.by_key.remove(&(s.owner, tenant, topic));
    }

    /// Whether nothing is subscribed at all.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Whether anyone subscribes (tenant, topic).
    pub fn has_topic(&self, tenant: u32, topic: &str) -> bool {
        self.by_topic.contains_key(&(tenant, topic.to_string()))
    }

    /// Call `f` with the id of each subscription of (tenant, topic) and the subscription.
    pub fn each_of_topic(&mut self, tenant: u32, topic: &str, mut f: impl FnMut(u64, &mut Sub)) {
        let Some(ids) = self.by_topic.get(&(tenant, topic.to_string())) else {
            return;
        };
        for id in ids {
            if let Some(s) = self.subs.get_mut(id) {
                f(*id, s);
            }
        }
    }

    /// (subscriptions, of them held by links, distinct topics).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.subs.len(), self.link_subs, self.by_topic.len())
    }

    /// Subscriptions the id table has room for (its memory, used or not).
    pub fn slots(&self) -> usize {
        self.subs.capacity()
    }

    /// Give memory back when the maps hold less than a quarter of what they have room for (a
    /// link with many topics closed, say). Cheap when there is nothing to do.
    pub fn shrink(&mut self) {
        fn fit<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
            if m.capacity() > 64 && m.len() < m.capacity() / 4 {
                m.shrink_to(m.len() * 2);
            }
        }
        fit(&mut self.subs);
        fit(&mut self.by_key);
        fit(&mut self.by_topic);
        fit(&mut self.by_owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Outbox, QueueLimits};
    use tokio_util::sync::CancellationToken;

    fn out() -> Outbox {
        let l = QueueLimits {
            desktop_frames: 8,
            desktop_bytes: 1 << 20,
            link_frames: 8,
            link_bytes: 1 << 20,
        };
        Outbox::new(l, CancellationToken::new()).0
    }

    #[test]
    fn a_link_releases_by_topic_and_when_it_closes_and_memory_goes() {
        let o = out();
        let mut s = Subs::default();
        let n = 20_000;
        for i in 0..n {
            let (id, _) = s.subscribe(Owner::Link(7), 1, &format!("queue:q{i}"), &o);
            // Idempotent per (owner, tenant, topic).
            assert_eq!(
                s.subscribe(Owner::Link(7), 1, &format!("queue:q{i}"), &o).0,
                id
            );
        }
        s.subscribe(Owner::Session(3), 1, "stats", &o);
        assert_eq!(s.counts(), (n + 1, n, n + 1));
        for i in 0..n / 2 {
            s.unsubscribe(Owner::Link(7), 1, &format!("queue:q{i}"));
        }
        assert_eq!(s.counts(), (n / 2 + 1, n / 2, n / 2 + 1));
        s.drop_owner(&Owner::Link(7));
        assert_eq!(s.counts(), (1, 0, 1));
        let before = s.subs.capacity();
        s.shrink();
        assert!(
            s.subs.capacity() < before / 100,
            "{} of {before}",
            s.subs.capacity()
        );
        assert!(s.by_key.capacity() < 100);
        s.drop_owner(&Owner::Session(3));
        assert!(s.is_empty());
    }
}
