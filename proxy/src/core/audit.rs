//! The core's own bookkeeping, checked against its state. The simulation calls
//! [`Core::audit`] after every step; nothing in the proxy's normal path calls it.

use super::Core;
use super::desktop::Phase;
use super::ids::Owner;

impl Core {
    /// Check the core's bookkeeping against its state: the byte budget equals what is
    /// queued, in-flight counts match the id slabs and the fan-out waiters, every subscriber
    /// is a live desktop of the entry's tenant holding the entry, and nothing is held for a
    /// desktop that is gone. The simulation calls it after every step.
    ///
    /// # Errors
    /// What does not add up.
    pub fn audit(&self) -> Result<(), String> {
        let mut queued = 0usize;
        for (_, d) in &self.desktops {
            queued += d.out.bytes() + d.rx.as_ref().map_or(0, |rx| rx.buf.len());
            if d.out.bytes() > self.limits.out_queue_bytes + 2048 {
                return Err(format!(
                    "desktop {:x} queue {} over its bound",
                    d.sid,
                    d.out.bytes()
                ));
            }
        }
        queued += self.early.values().map(|(_, n)| n).sum::<usize>();
        for l in &self.links {
            queued += l.out.bytes();
            if l.out.request_bytes() > self.limits.link_queue_bytes + self.limits.max_frame as usize
            {
                return Err(format!("link {} request bytes over the cap", l.name));
            }
        }
        if queued != self.budget.used() {
            return Err(format!(
                "budget counts {} bytes, queues hold {queued}",
                self.budget.used()
            ));
        }
        if queued > self.budget.limit() + self.limits.max_frame as usize {
            return Err(format!(
                "{queued} bytes queued, budget {}",
                self.budget.limit()
            ));
        }
        let pending: usize = self.links.iter().map(|l| l.ids.len()).sum();
        if pending as u64 != self.in_flight {
            return Err(format!(
                "in_flight {} but {pending} pending",
                self.in_flight
            ));
        }
        // Per desktop: requests tracked in the slabs plus fan-out waiters.
        let mut per: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        for l in &self.links {
            for p in l.ids.iter() {
                if let Owner::Desktop { session } = p.owner {
                    *per.entry(session).or_default() += 1;
                }
            }
        }
        for (key, s) in self.fanout.iter() {
            for w in &s.waiters {
                *per.entry(w.session).or_default() += 1;
            }
            for sid in &s.subscribers {
                let Some(slot) = self.slot_of_sid(*sid) else {
                    return Err(format!("subscriber {sid:x} of {} is gone", s.topic));
                };
                let d = &self.desktops[slot];
                if d.tenant != s.tenant {
                    return Err(format!(
                        "tenant {} subscribed to tenant {}'s {}",
                        d.tenant, s.tenant, s.topic
                    ));
                }
                if d.phase != Phase::Closing && !d.subs.contains(&key) {
                    return Err(format!("subscriber {sid:x} does not hold {}", s.topic));
                }
            }
        }
        for (_, d) in &self.desktops {
            if d.phase == Phase::Closing {
                continue;
            }
            let n = per.get(&d.sid).copied().unwrap_or(0);
            if n != usize::from(d.in_flight) {
                return Err(format!(
                    "desktop {:x} counts {} in flight, {n} are",
                    d.sid, d.in_flight
                ));
            }
            let ids = self.corrs.get(&d.sid).map_or(0, Vec::len);
            if ids != usize::from(d.in_flight) {
                return Err(format!(
                    "desktop {:x} counts {} in flight, {ids} correlation ids",
                    d.sid, d.in_flight
                ));
            }
            if u32::from(d.in_flight) > self.max_in_flight_ever {
                return Err(format!("desktop {:x} has {} in flight", d.sid, d.in_flight));
            }
        }
        Ok(())
    }
}
