//! A link's correlation-id slab: who waits for the answer to each request written on a link.
//!
//! Every request the proxy writes on a link gets a link-local correlation id
//!
//! ```text
//!  63                              32 31                               0
//! +----------------------------------+----------------------------------+
//! |      generation of the slot      |            slot index            |
//! +----------------------------------+----------------------------------+
//! ```
//!
//! The slot remembers who asked (a desktop session, itself generation-stamped, and the
//! desktop's own correlation id). A slot's generation is bumped every time it is freed, so a
//! late answer to a request that already timed out, or that belonged to a link incarnation
//! that died, can never match a newer request that reuses the slot: ids never cross between
//! desktops. A new link connection starts with a new [`IdSlab`]; the old one is drained into
//! explicit errors by [`IdSlab::fail_all`].
//!
//! Retry safety on failure (PROTOCOL.md §5): a request whose bytes were completely handed to
//! the kernel is "outcome unknown" (`LINK_LOST`); one still queued, or only partly written, can
//! not have been processed and is "not sent" (`LINK_LOST_UNSENT`). Which is which is read off
//! the link's queue when it fails (what is still in it was not written), so nothing is
//! written into a slot when its request is: a slot is touched when the request is taken and
//! when it is answered, nothing in between.

use deskmux_codec::{ErrorCode, Head, Kind, Service};

/// Who is waiting for the answer to a request written on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A desktop request: deliver the response to `session` with `Pending::req.correlation`.
    Desktop {
        /// The desktop's session id (generation-stamped, see `core`).
        session: u64,
    },
    /// The `SESSION_OPEN` for a desktop's hello.
    Open {
        /// The desktop's session id.
        session: u64,
    },
    /// An upstream `SUBSCRIBE` made for the fan-out entry `sub`.
    Subscribe {
        /// The entry's key (index and generation).
        sub: crate::core::fanout::SubKey,
    },
    /// The proxy's own request (heartbeat, last-subscriber unsubscribe): the answer is dropped.
    Internal,
}

/// What the proxy keeps of a request's head while it is in flight: enough to restore the
/// desktop's correlation id and to build an error response. 16 bytes rather than a whole
/// [`Head`]: tens of thousands of these are in flight per link, and every answer looks one
/// up, so the slab's size is its cache footprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReqHead {
    /// The requester's correlation id.
    pub correlation: u64,
    /// The request's tenant.
    pub tenant: u32,
    /// Message type.
    pub msg_type: u16,
    /// Service byte.
    pub service: u8,
}

impl ReqHead {
    /// What is kept of request head `h`.
    pub fn of(h: &Head) -> ReqHead {
        ReqHead {
            correlation: h.correlation,
            tenant: h.tenant,
            msg_type: h.msg_type,
            service: h.service.to_u8(),
        }
    }

    /// The request's head again (kind request, no flags), with session `session`.
    pub fn head(&self, session: u64) -> Head {
        let mut h = Head::new(Kind::Request, Service::from_u8(self.service), self.msg_type);
        h.tenant = self.tenant;
        h.correlation = self.correlation;
        h.session = session;
        h
    }
}

/// One in-flight request on a link (48 bytes with its slot's generation).
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    /// Who gets the answer.
    pub owner: Owner,
    /// The request's head as the desktop sent it (its own correlation id).
    pub req: ReqHead,
    /// When the proxy took it: microseconds on the core's clock, wrapping every 71 minutes
    /// (latency metrics, timeouts; a request lives at most `request_timeout_ms`).
    pub started_us: u32,
    /// Routed by capability: if the link dies before it is sent, it may be resubmitted to
    /// another instance with the capability (never once sent: its outcome would be unknown).
    pub reroute: bool,
}

#[derive(Debug, Clone)]
struct Slot {
    generation: u32,
    entry: Option<Pending>,
}

/// The link's correlation-id slab. See the module docs for the id layout.
#[derive(Debug, Default)]
pub struct IdSlab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
}

/// Split a link correlation id into (slot, generation).
pub fn split_id(id: u64) -> (u32, u32) {
    ((id & 0xFFFF_FFFF) as u32, (id >> 32) as u32)
}

/// Build a link correlation id from (slot, generation).
pub fn make_id(slot: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(slot)
}

/// The error a failed request gets, with its retry class, by whether it was written.
pub fn loss_code(sent: bool) -> ErrorCode {
    if sent {
        ErrorCode::LINK_LOST
    } else {
        ErrorCode::LINK_LOST_UNSENT
    }
}

impl IdSlab {
    /// An empty slab.
    pub fn new() -> IdSlab {
        IdSlab::default()
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Record a request; returns the link correlation id to stamp on it.
    pub fn insert(&mut self, p: Pending) -> u64 {
        self.live += 1;
        if let Some(slot) = self.free.pop() {
            let s = &mut self.slots[slot as usize];
            s.entry = Some(p);
            return make_id(slot, s.generation);
        }
        let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(Slot {
            generation: 1,
            entry: Some(p),
        });
        make_id(slot, 1)
    }

    fn slot_mut(&mut self, id: u64) -> Option<&mut Slot> {
        let (slot, generation) = split_id(id);
        let s = self.slots.get_mut(slot as usize)?;
        (s.generation == generation && s.entry.is_some()).then_some(s)
    }

    /// The answer with link id `id` arrived: remove and return its entry. `None` for an unknown
    /// or stale id (an answer to a request already failed or timed out).
    pub fn take(&mut self, id: u64) -> Option<Pending> {
        let (slot, _) = split_id(id);
        let s = self.slot_mut(id)?;
        let e = s.entry.take();
        s.generation = s.generation.wrapping_add(1).max(1);
        self.free.push(slot);
        self.live -= 1;
        e
    }

    /// Every request in flight.
    pub fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.slots.iter().filter_map(|s| s.entry.as_ref())
    }

    /// Ids of requests taken `timeout_us` or more before `now_us` (the core's wrapping
    /// microsecond clock).
    pub fn expired(&self, now_us: u32, timeout_us: u32) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(e) = &s.entry
                && now_us.wrapping_sub(e.started_us) >= timeout_us
            {
                out.push(make_id(i as u32, s.generation));
            }
        }
        out
    }

    /// The link died: every entry (with its link id), with the error it must be answered
    /// with; `unsent(id)` says whether the request was still (even partly) in the link's
    /// queue. The slab is left empty (all generations bumped), ready to be dropped.
    pub fn fail_all(&mut self, unsent: impl Fn(u64) -> bool) -> Vec<(u64, Pending, ErrorCode)> {
        let mut out = Vec::with_capacity(self.live);
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(e) = s.entry.take() {
                let id = make_id(i as u32, s.generation);
                s.generation = s.generation.wrapping_add(1).max(1);
                self.free.push(i as u32);
                out.push((id, e, loss_code(!unsent(id))));
            }
        }
        self.live = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(session: u64, corr: u64) -> Pending {
        let mut req = Head::new(Kind::Request, Service::Interaction, 1);
        req.correlation = corr;
        Pending {
            owner: Owner::Desktop { session },
            req: ReqHead::of(&req),
            started_us: 1000,
            reroute: false,
        }
    }

    #[test]
    fn entries_stay_small() {
        assert!(
            std::mem::size_of::<Slot>() <= 48,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn ids_roundtrip_and_restore() {
        let mut s = IdSlab::new();
        let a = s.insert(p(10, 1));
        let b = s.insert(p(11, 1)); // two desktops, same own id
        assert_ne!(a, b);
        let eb = s.take(b).unwrap();
        assert_eq!(eb.owner, Owner::Desktop { session: 11 });
        assert_eq!(eb.req.correlation, 1);
        assert_eq!(s.take(a).unwrap().owner, Owner::Desktop { session: 10 });
        assert!(s.is_empty());
    }

    #[test]
    fn stale_answer_never_matches_reused_slot() {
        let mut s = IdSlab::new();
        let old = s.insert(p(1, 5));
        // Timed out: freed by take (as the timeout path does).
        assert!(s.take(old).is_some());
        let new = s.insert(p(2, 5));
        assert_eq!(split_id(old).0, split_id(new).0, "slot reused");
        assert_ne!(old, new, "generation differs");
        assert!(s.take(old).is_none(), "late answer is stale");
        assert_eq!(s.take(new).unwrap().owner, Owner::Desktop { session: 2 });
    }

    #[test]
    fn failure_classes_follow_written() {
        let mut s = IdSlab::new();
        let a = s.insert(p(1, 1));
        let b = s.insert(p(1, 2));
        // b is still in the link's queue; a was written.
        let mut out = s.fail_all(|id| id == b);
        out.sort_by_key(|(_, e, _)| e.req.correlation);
        assert_eq!((out[0].0, out[0].2), (a, ErrorCode::LINK_LOST));
        assert_eq!((out[1].0, out[1].2), (b, ErrorCode::LINK_LOST_UNSENT));
        assert!(s.take(a).is_none() && s.take(b).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn expiry() {
        let mut s = IdSlab::new();
        let a = s.insert(p(1, 1));
        assert!(s.expired(1000 + 999_999, 1_000_000).is_empty());
        assert_eq!(s.expired(1000 + 1_000_000, 1_000_000), vec![a]);
        // The clock wraps.
        let mut w = p(1, 2);
        w.started_us = u32::MAX - 10;
        let b = s.insert(w);
        assert!(
            s.expired(20, 31).contains(&b),
            "31 µs after, across the wrap"
        );
        assert!(!s.expired(19, 31).contains(&b));
    }
}
