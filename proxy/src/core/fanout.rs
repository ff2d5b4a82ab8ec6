//! Subscription fan-out: one upstream subscription per (link, tenant, topic), however many
//! desktops subscribe (PROTOCOL.md §9).
//!
//! Entries live in a slab and are named by a [`SubKey`]: slot *and* generation. A key held by
//! a desktop or by a request in flight can outlive its entry (the link died, the last
//! subscriber left); a generation that no longer matches makes it miss, so a late answer or a
//! stale leave can never touch the entry that reuses the slot, which may belong to another
//! tenant.
//!
//! ```text
//!   first SUBSCRIBE          answer ok                last subscriber left
//! ─────────────────▶ Pending ─────────▶ Active ──────────────────────────▶ released
//!                      │  (waiters answered in        (UNSUBSCRIBE upstream)
//!                      │   arrival order)
//!                      │ answer error / link lost / timeout
//!                      └──────────────────────────▶ removed (waiters get the error)
//! ```
//!
//! - While `Pending`, `SUBSCRIBE`s and `UNSUBSCRIBE`s of the topic wait as [`Waiter`]s and
//!   are answered, in the order they came, once the upstream answer is in. Each counts as in
//!   flight for its desktop.
//! - A `Pending` entry stays until its answer, even with no waiter left, so that an answer
//!   for nobody is still known to be ours and is released upstream ([`Answered::release`]).
//! - Later desktops are answered locally with the same id and the last `seq` seen on it: one
//!   thread handles the link in order, so the next event such a desktop sees is `seq + 1`.
//! - A broadcast event (correlation = subscription id) is fanned out as the *same* `Bytes` to
//!   every subscriber; it is delivered only if its tenant is the entry's.

use std::collections::HashMap;

use slab::Slab;

/// An entry's name: slab slot and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubKey {
    slot: u32,
    generation: u32,
}

/// What a waiting desktop asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `SUBSCRIBE`.
    Subscribe,
    /// `UNSUBSCRIBE`.
    Unsubscribe,
}

/// A desktop request waiting for the upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    /// Desktop session id.
    pub session: u64,
    /// The desktop's correlation id.
    pub corr: u64,
    /// What it asked.
    pub op: Op,
}

/// Where an entry is (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// The upstream `SUBSCRIBE` is in flight.
    Pending,
    /// Subscribed upstream.
    Active {
        /// The upstream subscription id.
        id: u64,
        /// Last sequence number seen (answer or event).
        seq: i64,
    },
}

/// One upstream subscription and its local subscribers.
#[derive(Debug)]
pub struct Sub {
    generation: u32,
    /// Global link index.
    pub link: u16,
    /// Tenant.
    pub tenant: u32,
    /// Topic.
    pub topic: Box<str>,
    /// Pending or active.
    pub state: SubState,
    /// Desktop sessions subscribed.
    pub subscribers: Vec<u64>,
    /// Requests waiting for the upstream answer, in arrival order.
    pub waiters: Vec<Waiter>,
}

/// What to do with a desktop's `SUBSCRIBE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// Answer locally with this id and seq.
    Local {
        /// Subscription id.
        id: u64,
        /// Last seq.
        seq: i64,
        /// The entry (to remember on the desktop).
        key: SubKey,
    },
    /// Forward upstream now; the answer goes to every waiter.
    Forward {
        /// The new entry.
        key: SubKey,
    },
    /// Already upstream: wait for the answer.
    Wait {
        /// The entry.
        key: SubKey,
    },
}

/// What to do with a desktop's `UNSUBSCRIBE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsubscribed {
    /// Answer locally now. `release`: the last subscriber left an active subscription: send
    /// `UNSUBSCRIBE` for this (link, tenant, topic) upstream.
    Local {
        /// The entry the desktop no longer holds, if it held one.
        key: Option<SubKey>,
        /// Upstream subscription to drop.
        release: Option<Release>,
    },
    /// The desktop's own `SUBSCRIBE` of the topic is still upstream: this waits behind it.
    Wait,
}

/// An upstream subscription nobody here needs any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Global link index.
    pub link: u16,
    /// Tenant.
    pub tenant: u32,
    /// Topic.
    pub topic: Box<str>,
}

/// The upstream answer was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The waiters, in order, each to be answered (their desktops may have left meanwhile).
    pub waiters: Vec<Waiter>,
    /// The subscription id and seq on success.
    pub ok: Option<(u64, i64)>,
    /// Nobody is subscribed after the waiters were applied: drop it upstream.
    pub release: Option<Release>,
}

/// The fan-out table of one worker.
#[derive(Debug, Default)]
pub struct Fanout {
    subs: Slab<Sub>,
    by_topic: HashMap<(u16, u32, Box<str>), SubKey>,
    by_upstream: HashMap<(u16, u64), SubKey>,
    next_generation: u32,
}

impl Fanout {
    /// An empty table.
    pub fn new() -> Fanout {
        Fanout::default()
    }

    /// The live entry named by `key`.
    pub fn get(&self, key: SubKey) -> Option<&Sub> {
        self.subs
            .get(key.slot as usize)
            .filter(|s| s.generation == key.generation)
    }

    fn get_mut(&mut self, key: SubKey) -> Option<&mut Sub> {
        self.subs
            .get_mut(key.slot as usize)
            .filter(|s| s.generation == key.generation)
    }

    /// The entry for (link, tenant, topic).
    pub fn find(&self, link: u16, tenant: u32, topic: &str) -> Option<SubKey> {
        self.by_topic
            .get(&(link, tenant, Box::from(topic)))
            .copied()
    }

    /// Desktop `session` (request id `corr`) subscribes to `topic` through `link`.
    pub fn subscribe(
        &mut self,
        link: u16,
        tenant: u32,
        topic: &str,
        session: u64,
        corr: u64,
    ) -> Subscribed {
        if let Some(key) = self.find(link, tenant, topic)
            && let Some(s) = self.get_mut(key)
        {
            return match s.state {
                SubState::Active { id, seq } => {
                    if !s.subscribers.contains(&session) {
                        s.subscribers.push(session);
                    }
                    Subscribed::Local { id, seq, key }
                }
                SubState::Pending => {
                    s.waiters.push(Waiter {
                        session,
                        corr,
                        op: Op::Subscribe,
                    });
                    Subscribed::Wait { key }
                }
            };
        }
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let generation = self.next_generation;
        let slot = self.subs.insert(Sub {
            generation,
            link,
            tenant,
            topic: Box::from(topic),
            state: SubState::Pending,
            subscribers: Vec::new(),
            waiters: vec![Waiter {
                session,
                corr,
                op: Op::Subscribe,
            }],
        });
        let key = SubKey {
            slot: slot as u32,
            generation,
        };
        self.by_topic.insert((link, tenant, Box::from(topic)), key);
        Subscribed::Forward { key }
    }

    /// Desktop `session` (request id `corr`) unsubscribes from `topic` on `link`.
    pub fn unsubscribe(
        &mut self,
        link: u16,
        tenant: u32,
        topic: &str,
        session: u64,
        corr: u64,
    ) -> Unsubscribed {
        let Some(key) = self.find(link, tenant, topic) else {
            return Unsubscribed::Local {
                key: None,
                release: None,
            };
        };
        let Some(s) = self.get_mut(key) else {
            return Unsubscribed::Local {
                key: None,
                release: None,
            };
        };
        if s.state == SubState::Pending
            && s.waiters
                .iter()
                .any(|w| w.session == session && w.op == Op::Subscribe)
        {
            s.waiters.push(Waiter {
                session,
                corr,
                op: Op::Unsubscribe,
            });
            return Unsubscribed::Wait;
        }
        let held = s.subscribers.contains(&session);
        s.subscribers.retain(|x| *x != session);
        Unsubscribed::Local {
            key: held.then_some(key),
            release: self.release_if_unused(key),
        }
    }

    /// If the entry is active and nobody holds or waits on it, remove it and say what to drop
    /// upstream.
    fn release_if_unused(&mut self, key: SubKey) -> Option<Release> {
        let s = self.get(key)?;
        if !s.subscribers.is_empty() || !s.waiters.is_empty() || s.state == SubState::Pending {
            return None;
        }
        let s = self.remove(key)?;
        Some(Release {
            link: s.link,
            tenant: s.tenant,
            topic: s.topic,
        })
    }

    /// The upstream answer for `key` arrived (`ok` = id and seq on success). Waiters are
    /// applied in order: a `SUBSCRIBE` makes its desktop a subscriber (on success), an
    /// `UNSUBSCRIBE` removes it again. `None` if `key` names no entry.
    pub fn answered(&mut self, key: SubKey, ok: Option<(u64, i64)>) -> Option<Answered> {
        let s = self.get_mut(key)?;
        let waiters = std::mem::take(&mut s.waiters);
        let Some((id, seq)) = ok else {
            self.remove(key);
            return Some(Answered {
                waiters,
                ok: None,
                release: None,
            });
        };
        s.state = SubState::Active { id, seq };
        for w in &waiters {
            match w.op {
                Op::Subscribe => {
                    if !s.subscribers.contains(&w.session) {
                        s.subscribers.push(w.session);
                    }
                }
                Op::Unsubscribe => s.subscribers.retain(|x| *x != w.session),
            }
        }
        let link = s.link;
        self.by_upstream.insert((link, id), key);
        Some(Answered {
            waiters,
            ok: Some((id, seq)),
            release: self.release_if_unused(key),
        })
    }

    /// The upstream `SUBSCRIBE` failed without an answer (link lost, timeout): remove the
    /// entry; its waiters get the error.
    pub fn failed(&mut self, key: SubKey) -> Vec<Waiter> {
        self.remove(key).map(|s| s.waiters).unwrap_or_default()
    }

    /// A broadcast event with subscription id `id` and `tenant` arrived on `link` carrying
    /// `seq`: the entry to fan out to, if it exists and is that tenant's.
    pub fn event(&mut self, link: u16, tenant: u32, id: u64, seq: Option<i64>) -> Option<&Sub> {
        let key = *self.by_upstream.get(&(link, id))?;
        let s = self.get_mut(key)?;
        if s.tenant != tenant {
            return None;
        }
        if let (Some(seq), SubState::Active { seq: last, .. }) = (seq, &mut s.state) {
            *last = (*last).max(seq);
        }
        Some(s)
    }

    /// Desktop `session` is gone: drop it from `key`'s subscribers and waiters. Returns what
    /// to drop upstream when it was the last one on an active entry.
    pub fn leave(&mut self, key: SubKey, session: u64) -> Option<Release> {
        let s = self.get_mut(key)?;
        s.subscribers.retain(|x| *x != session);
        s.waiters.retain(|w| w.session != session);
        self.release_if_unused(key)
    }

    fn remove(&mut self, key: SubKey) -> Option<Sub> {
        self.get(key)?;
        let s = self.subs.remove(key.slot as usize);
        self.by_topic.remove(&(s.link, s.tenant, s.topic.clone()));
        if let SubState::Active { id, .. } = s.state {
            self.by_upstream.remove(&(s.link, id));
        }
        Some(s)
    }

    /// The link died: drop its entries and return their keys. Call it after the link's
    /// failed requests were answered: a pending entry's waiters are answered through its
    /// `SUBSCRIBE` request ([`Fanout::failed`]), which needs the entry.
    pub fn drop_link(&mut self, link: u16) -> Vec<SubKey> {
        let keys: Vec<SubKey> = self
            .subs
            .iter()
            .filter(|(_, s)| s.link == link)
            .map(|(i, s)| SubKey {
                slot: i as u32,
                generation: s.generation,
            })
            .collect();
        for k in &keys {
            self.remove(*k);
        }
        keys
    }

    /// Entries held (pending and active): upstream subscriptions held or being made.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Every entry with its key (for invariant checks).
    pub fn iter(&self) -> impl Iterator<Item = (SubKey, &Sub)> {
        self.subs.iter().map(|(i, s)| {
            (
                SubKey {
                    slot: i as u32,
                    generation: s.generation,
                },
                s,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(f: &mut Fanout, link: u16, tenant: u32, topic: &str, sid: u64) -> SubKey {
        match f.subscribe(link, tenant, topic, sid, 1) {
            Subscribed::Forward { key } => key,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_upstream_subscription_many_desktops() {
        let mut f = Fanout::new();
        let key = forward(&mut f, 0, 1, "queue:q", 10);
        assert_eq!(
            f.subscribe(0, 1, "queue:q", 11, 7),
            Subscribed::Wait { key }
        );
        let a = f.answered(key, Some((99, 4))).unwrap();
        assert_eq!(
            a.waiters.iter().map(|w| w.session).collect::<Vec<_>>(),
            vec![10, 11]
        );
        assert!(a.release.is_none());
        assert_eq!(
            f.event(0, 1, 99, Some(5)).unwrap().subscribers,
            vec![10, 11]
        );
        assert_eq!(
            f.subscribe(0, 1, "queue:q", 12, 3),
            Subscribed::Local {
                id: 99,
                seq: 5,
                key
            }
        );
        // Other tenant, other link: separate entries.
        assert!(matches!(
            f.subscribe(0, 2, "queue:q", 13, 1),
            Subscribed::Forward { .. }
        ));
        assert!(matches!(
            f.subscribe(1, 1, "queue:q", 14, 1),
            Subscribed::Forward { .. }
        ));
        assert_eq!(f.leave(key, 10), None);
        assert_eq!(f.leave(key, 11), None);
        let r = f.leave(key, 12).unwrap();
        assert_eq!((r.link, r.tenant, &*r.topic), (0, 1, "queue:q"));
        assert!(f.event(0, 1, 99, None).is_none());
    }

    #[test]
    fn a_late_answer_never_binds_to_a_reused_slot() {
        let mut f = Fanout::new();
        // Tenant 1's desktop subscribes and leaves while the SUBSCRIBE is upstream.
        let a = forward(&mut f, 0, 1, "queue:a", 10);
        assert_eq!(f.leave(a, 10), None, "pending: kept until answered");
        // Tenant 2 subscribes meanwhile: a different entry.
        let b = forward(&mut f, 0, 2, "queue:b", 20);
        assert_ne!(a, b);
        // A's answer comes: nobody holds it, so it is released, and B is untouched.
        let ans = f.answered(a, Some((100, 0))).unwrap();
        assert!(ans.waiters.is_empty());
        assert_eq!(ans.release.unwrap().tenant, 1);
        assert!(f.answered(a, Some((100, 0))).is_none(), "stale key misses");
        f.answered(b, Some((200, 0))).unwrap();
        assert!(f.event(0, 1, 100, None).is_none());
        assert_eq!(f.event(0, 2, 200, None).unwrap().subscribers, vec![20]);
        // A tenant-1 event carrying B's id is not B's.
        assert!(f.event(0, 1, 200, None).is_none());
        // The slot A had is reused by a new entry; A's key still misses it.
        let c = forward(&mut f, 0, 3, "queue:c", 30);
        assert_eq!(f.leave(a, 30), None);
        assert_eq!(f.get(c).unwrap().waiters.len(), 1);
    }

    #[test]
    fn unsubscribe_behind_a_pending_subscribe_waits_in_order() {
        let mut f = Fanout::new();
        let k = forward(&mut f, 0, 1, "stats", 10);
        assert_eq!(f.unsubscribe(0, 1, "stats", 10, 2), Unsubscribed::Wait);
        let a = f.answered(k, Some((5, 0))).unwrap();
        let ops: Vec<Op> = a.waiters.iter().map(|w| w.op).collect();
        assert_eq!(ops, vec![Op::Subscribe, Op::Unsubscribe]);
        assert!(a.release.is_some(), "nobody left after both");
        assert!(f.is_empty());
        // Unsubscribing what one does not hold is answered locally.
        assert_eq!(
            f.unsubscribe(0, 1, "stats", 10, 3),
            Unsubscribed::Local {
                key: None,
                release: None
            }
        );
    }

    #[test]
    fn failures_remove_the_entry() {
        let mut f = Fanout::new();
        let k = forward(&mut f, 0, 1, "stats", 10);
        f.subscribe(0, 1, "stats", 11, 2);
        let a = f.answered(k, None).unwrap();
        assert_eq!(a.waiters.len(), 2);
        assert!(f.is_empty());
        let k = forward(&mut f, 2, 1, "stats", 10);
        assert_eq!(f.drop_link(2), vec![k]);
        assert!(f.failed(k).is_empty() && f.is_empty());
    }
}
