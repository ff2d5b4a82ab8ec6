//! What one thread counts about connections and events, and how the counts of threads and
//! worker processes add up: kept apart from the event loops (`engine`) that fill them.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::recorder;

/// Connection statistics.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ClientStats {
    /// Desktops that got a session at least once.
    pub connected: u64,
    /// Desktops that never got one.
    pub failed: u64,
    /// Failed connect/hello attempts (retried with backoff).
    pub failed_attempts: u64,
    /// Sessions re-established after a drop (not counting storm rounds).
    pub reconnects: u64,
    /// Sessions that ended unexpectedly (peer closed, reset, framing lost).
    pub dropped: u64,
    /// Logins refused.
    pub login_failed: u64,
    /// Highest number connected at once (this process).
    pub peak_connected: u64,
    /// Sessions taken back after a drop with their resume token (PROTOCOL.md §4.6): no
    /// second login.
    #[serde(default)]
    pub resumed: u64,
    /// Resumes refused (the session had ended): a fresh hello and login followed.
    #[serde(default)]
    pub resume_refused: u64,
    /// Agents that went on, after a resume, with the interaction their drop interrupted.
    #[serde(default)]
    pub work_resumed: u64,
    /// Logins whose connection was lost before their answer (sent again on the next session).
    #[serde(default)]
    pub login_interrupted: u64,
}

impl ClientStats {
    /// Sum.
    pub fn merge(&mut self, o: &ClientStats) {
        self.connected += o.connected;
        self.failed += o.failed;
        self.failed_attempts += o.failed_attempts;
        self.reconnects += o.reconnects;
        self.dropped += o.dropped;
        self.login_failed += o.login_failed;
        self.peak_connected += o.peak_connected;
        self.resumed += o.resumed;
        self.resume_refused += o.resume_refused;
        self.work_resumed += o.work_resumed;
        self.login_interrupted += o.login_interrupted;
    }
}

/// Per published event (tenant, topic seq): publication time and the last delivery.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Delivery {
    /// Server's `published_us`.
    pub published_us: u64,
    /// Latest arrival at any subscriber, Unix µs.
    pub last_us: u64,
    /// Subscribers that got it.
    pub count: u64,
}

/// Event statistics of one thread.
#[derive(Debug, Clone)]
pub struct EventStats {
    /// Events received (all kinds).
    pub received: u64,
    /// Subscription events missed (sequence gaps).
    pub gaps: u64,
    /// Subscription events seen twice.
    pub duplicates: u64,
    /// Publication → arrival at this subscriber, ns.
    pub delivery: Histogram<u64>,
    /// Per (tenant, seq): for the time from publication to the last subscriber.
    pub per_event: HashMap<(u32, u64), Delivery>,
    /// Per subscriber session at its end: (tenant, subscription id, last sequence number).
    pub tails: Vec<(u32, u64, u64)>,
    /// Unicast events by kind.
    pub invites: u64,
    /// Properties-changed events.
    pub props_changed: u64,
    /// Invites revoked.
    pub revoked: u64,
    /// Unicast events missed: jumps in a session's `useq` (PROTOCOL.md §4.6).
    pub unicast_lost: u64,
    /// Unicast events seen twice (a `useq` not above the last one).
    pub unicast_duplicates: u64,
    /// Unicast events a resumed session was sent again (the hellos' `replayed`).
    pub replayed: u64,
}

impl Default for EventStats {
    fn default() -> Self {
        EventStats {
            received: 0,
            gaps: 0,
            duplicates: 0,
            delivery: recorder::new_hist(),
            per_event: HashMap::new(),
            tails: Vec::new(),
            invites: 0,
            props_changed: 0,
            revoked: 0,
            unicast_lost: 0,
            unicast_duplicates: 0,
            replayed: 0,
        }
    }
}

/// Events as shipped between processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsWire {
    /// Received.
    pub received: u64,
    /// Gaps.
    pub gaps: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Delivery histogram (hex V2).
    pub delivery: String,
    /// (tenant, seq, delivery).
    pub per_event: Vec<(u32, u64, Delivery)>,
    /// Subscriber tails.
    #[serde(default)]
    pub tails: Vec<(u32, u64, u64)>,
    /// Invites.
    pub invites: u64,
    /// Properties changed.
    pub props_changed: u64,
    /// Revoked.
    pub revoked: u64,
    /// Unicast events missed.
    #[serde(default)]
    pub unicast_lost: u64,
    /// Unicast events seen twice.
    #[serde(default)]
    pub unicast_duplicates: u64,
    /// Unicast events replayed on resume.
    #[serde(default)]
    pub replayed: u64,
}

impl EventStats {
    /// Merge another thread's events.
    pub fn merge(&mut self, o: &EventStats) {
        self.received += o.received;
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        let _ = self.delivery.add(&o.delivery);
        for (k, d) in &o.per_event {
            merge_delivery(self.per_event.entry(*k).or_default(), d);
        }
        self.tails.extend_from_slice(&o.tails);
        self.invites += o.invites;
        self.props_changed += o.props_changed;
        self.revoked += o.revoked;
        self.unicast_lost += o.unicast_lost;
        self.unicast_duplicates += o.unicast_duplicates;
        self.replayed += o.replayed;
    }

    /// Serialize.
    pub fn to_wire(&self) -> EventsWire {
        EventsWire {
            received: self.received,
            gaps: self.gaps,
            duplicates: self.duplicates,
            delivery: recorder::hist_to_hex(&self.delivery),
            per_event: self
                .per_event
                .iter()
                .map(|((t, s), d)| (*t, *s, *d))
                .collect(),
            tails: self.tails.clone(),
            invites: self.invites,
            props_changed: self.props_changed,
            revoked: self.revoked,
            unicast_lost: self.unicast_lost,
            unicast_duplicates: self.unicast_duplicates,
            replayed: self.replayed,
        }
    }

    /// Deserialize.
    ///
    /// # Errors
    /// A corrupt histogram.
    pub fn from_wire(w: &EventsWire) -> Result<EventStats, String> {
        Ok(EventStats {
            received: w.received,
            gaps: w.gaps,
            duplicates: w.duplicates,
            delivery: recorder::hist_from_hex(&w.delivery)?,
            per_event: w.per_event.iter().map(|(t, s, d)| ((*t, *s), *d)).collect(),
            tails: w.tails.clone(),
            invites: w.invites,
            props_changed: w.props_changed,
            revoked: w.revoked,
            unicast_lost: w.unicast_lost,
            unicast_duplicates: w.unicast_duplicates,
            replayed: w.replayed,
        })
    }
}

/// Merge one event's deliveries.
pub fn merge_delivery(a: &mut Delivery, b: &Delivery) {
    if a.published_us == 0 {
        a.published_us = b.published_us;
    }
    a.last_us = a.last_us.max(b.last_us);
    a.count += b.count;
}
