//! Sans-IO subscription fan-out: one upstream subscription per (link, tenant, topic), however
//! many desktops subscribe (PROTOCOL.md §9).
//!
//! - The first desktop's `SUBSCRIBE` is forwarded; desktops that subscribe while it is in
//!   flight wait for the same answer.
//! - Later desktops are answered locally with the same subscription id and the last `seq` the
//!   proxy has seen on it (the upstream answer's `seq`, then each event's). Since one thread
//!   handles the link in order, the next event such a desktop sees is `seq + 1`: no gap.
//! - A broadcast event (correlation = subscription id) is fanned out as the *same* `Bytes` to
//!   every subscriber: its session is 0 and its correlation is valid for all of them as is.
//! - `UNSUBSCRIBE` is answered locally; the upstream subscription is dropped with the last
//!   local subscriber.

use std::collections::HashMap;

use slab::Slab;

/// One upstream subscription and its local subscribers.
#[derive(Debug)]
pub struct Sub {
    /// Global link index.
    pub link: u16,
    /// Tenant.
    pub tenant: u32,
    /// Topic.
    pub topic: Box<str>,
    /// The upstream subscription id, once answered.
    pub upstream: Option<u64>,
    /// Last sequence number seen (answer or event).
    pub last_seq: i64,
    /// Desktop sessions subscribed.
    pub subscribers: Vec<u64>,
    /// Desktops waiting for the upstream answer: (session, their correlation id).
    pub waiting: Vec<(u64, u64)>,
}

/// What to do with a desktop's `SUBSCRIBE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// Answer locally with this id and seq.
    Local {
        /// Subscription id.
        id: u64,
        /// Last seq.
        seq: i64,
        /// Fan-out entry (to remember on the desktop).
        sub: u32,
    },
    /// Forward upstream now; the answer goes to every waiting desktop.
    Forward {
        /// Fan-out entry.
        sub: u32,
    },
    /// Already forwarded by someone else: wait for the answer.
    Wait {
        /// Fan-out entry.
        sub: u32,
    },
}

/// The fan-out table of one worker.
#[derive(Debug, Default)]
pub struct Fanout {
    /// Entries.
    pub subs: Slab<Sub>,
    by_key: HashMap<(u16, u32, Box<str>), u32>,
    by_upstream: HashMap<(u16, u64), u32>,
}

impl Fanout {
    /// An empty table.
    pub fn new() -> Fanout {
        Fanout::default()
    }

    /// A desktop `session` (request id `corr`) subscribes to `topic` through `link`.
    pub fn subscribe(
        &mut self,
        link: u16,
        tenant: u32,
        topic: &str,
        session: u64,
        corr: u64,
    ) -> SubscribeOutcome {
        if let Some(&idx) = self.by_key.get(&(link, tenant, Box::from(topic))) {
            let s = &mut self.subs[idx as usize];
            return match s.upstream {
                Some(id) => {
                    if !s.subscribers.contains(&session) {
                        s.subscribers.push(session);
                    }
                    SubscribeOutcome::Local {
                        id,
                        seq: s.last_seq,
                        sub: idx,
                    }
                }
                None => {
                    s.waiting.push((session, corr));
                    SubscribeOutcome::Wait { sub: idx }
                }
            };
        }
        let idx = self.subs.insert(Sub {
            link,
            tenant,
            topic: Box::from(topic),
            upstream: None,
            last_seq: 0,
            subscribers: Vec::new(),
            waiting: vec![(session, corr)],
        }) as u32;
        self.by_key.insert((link, tenant, Box::from(topic)), idx);
        SubscribeOutcome::Forward { sub: idx }
    }

    /// The upstream answer for entry `sub` arrived: `Some((id, seq))` on success. Returns the
    /// desktops that were waiting; on success they are now subscribers. On failure the entry
    /// is removed.
    pub fn answered(&mut self, sub: u32, ok: Option<(u64, i64)>) -> Vec<(u64, u64)> {
        let Some(s) = self.subs.get_mut(sub as usize) else {
            return Vec::new();
        };
        let waiting = std::mem::take(&mut s.waiting);
        match ok {
            Some((id, seq)) => {
                s.upstream = Some(id);
                s.last_seq = s.last_seq.max(seq);
                for (sid, _) in &waiting {
                    if !s.subscribers.contains(sid) {
                        s.subscribers.push(*sid);
                    }
                }
                self.by_upstream.insert((s.link, id), sub);
            }
            None => {
                self.remove(sub);
            }
        }
        waiting
    }

    /// A broadcast event with subscription id `id` arrived on `link` carrying `seq`: the entry
    /// (to fan out to its subscribers).
    pub fn event(&mut self, link: u16, id: u64, seq: Option<i64>) -> Option<&Sub> {
        let idx = *self.by_upstream.get(&(link, id))?;
        let s = self.subs.get_mut(idx as usize)?;
        if let Some(seq) = seq {
            s.last_seq = s.last_seq.max(seq);
        }
        Some(s)
    }

    /// Find the entry for (link, tenant, topic).
    pub fn find(&self, link: u16, tenant: u32, topic: &str) -> Option<u32> {
        self.by_key.get(&(link, tenant, Box::from(topic))).copied()
    }

    /// Remove `session` from entry `sub`. Returns `Some(upstream id)` when it was the last
    /// subscriber and the upstream subscription should be dropped (the entry is removed).
    pub fn leave(&mut self, sub: u32, session: u64) -> Option<Option<u64>> {
        let s = self.subs.get_mut(sub as usize)?;
        let before = s.subscribers.len() + s.waiting.len();
        s.subscribers.retain(|x| *x != session);
        s.waiting.retain(|(x, _)| *x != session);
        if s.subscribers.len() + s.waiting.len() == before {
            // Not a member (e.g. a stale index after the entry's link died and the slot was
            // reused): touch nothing.
            return None;
        }
        if s.subscribers.is_empty() && s.waiting.is_empty() {
            let up = s.upstream;
            self.remove(sub);
            return Some(up);
        }
        None
    }

    fn remove(&mut self, sub: u32) {
        if let Some(s) = self.subs.try_remove(sub as usize) {
            self.by_key.remove(&(s.link, s.tenant, s.topic.clone()));
            if let Some(id) = s.upstream {
                self.by_upstream.remove(&(s.link, id));
            }
        }
    }

    /// The link died: drop its entries; returns the desktops that were waiting for answers.
    pub fn drop_link(&mut self, link: u16) -> Vec<(u64, u64)> {
        let ids: Vec<u32> = self
            .subs
            .iter()
            .filter(|(_, s)| s.link == link)
            .map(|(i, _)| i as u32)
            .collect();
        let mut waiting = Vec::new();
        for i in ids {
            if let Some(s) = self.subs.get_mut(i as usize) {
                waiting.append(&mut s.waiting);
            }
            self.remove(i);
        }
        waiting
    }

    /// Number of upstream subscriptions held.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_upstream_subscription_many_desktops() {
        let mut f = Fanout::new();
        let SubscribeOutcome::Forward { sub } = f.subscribe(0, 1, "queue:q", 10, 1) else {
            panic!()
        };
        assert_eq!(
            f.subscribe(0, 1, "queue:q", 11, 7),
            SubscribeOutcome::Wait { sub }
        );
        let waiting = f.answered(sub, Some((99, 4)));
        assert_eq!(waiting, vec![(10, 1), (11, 7)]);
        // Event 5 seen, then a third desktop is answered locally with seq 5.
        assert_eq!(f.event(0, 99, Some(5)).unwrap().subscribers, vec![10, 11]);
        assert_eq!(
            f.subscribe(0, 1, "queue:q", 12, 3),
            SubscribeOutcome::Local {
                id: 99,
                seq: 5,
                sub
            }
        );
        // Other tenant, other link: separate entries.
        assert!(matches!(
            f.subscribe(0, 2, "queue:q", 13, 1),
            SubscribeOutcome::Forward { .. }
        ));
        assert!(matches!(
            f.subscribe(1, 1, "queue:q", 14, 1),
            SubscribeOutcome::Forward { .. }
        ));
        assert_eq!(f.leave(sub, 10), None);
        assert_eq!(f.leave(sub, 11), None);
        assert_eq!(f.leave(sub, 12), Some(Some(99)), "last one drops upstream");
        assert!(f.event(0, 99, None).is_none());
    }

    #[test]
    fn failure_and_link_drop() {
        let mut f = Fanout::new();
        let SubscribeOutcome::Forward { sub } = f.subscribe(0, 1, "stats", 10, 1) else {
            panic!()
        };
        assert_eq!(f.answered(sub, None), vec![(10, 1)]);
        assert!(f.is_empty());
        let SubscribeOutcome::Forward { sub } = f.subscribe(2, 1, "stats", 10, 1) else {
            panic!()
        };
        f.subscribe(2, 1, "stats", 11, 2);
        assert_eq!(f.drop_link(2), vec![(10, 1), (11, 2)]);
        assert!(f.subs.get(sub as usize).is_none());
        // A stale index from a dropped entry, reused by another entry: leaving is a no-op.
        let SubscribeOutcome::Forward { sub: again } = f.subscribe(3, 1, "stats", 20, 1) else {
            panic!()
        };
        assert_eq!(again, sub, "slot reused");
        assert_eq!(f.leave(again, 10), None);
        assert_eq!(f.len(), 1);
    }
}
