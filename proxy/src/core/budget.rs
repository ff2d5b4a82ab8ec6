//! What one worker may hold, in bytes and in connections per source address.
//!
//! Per-connection caps (`out_queue_bytes`, `link_queue_bytes`) bound one connection, but a
//! worker holds up to `max_desktops` of them: 19,000 × 8 MiB is far more than the machine has.
//! [`Budget`] counts every byte the worker queues (desktop outbound queues, bytes read and not
//! yet handled, link queues) against `worker_queue_bytes`:
//!
//! - above [`Budget::admits`]'s high-water mark (3/4) new work is refused with `OVERLOADED`
//!   (not sent), so answers to work already accepted still have room;
//! - [`Budget::fits`] is the hard line a frame towards a desktop must not cross while that
//!   desktop has a backlog (it is then a slow consumer instead).
//!
//! [`Sources`] counts desktops per source IP address, so that one address cannot take every
//! desktop slot of a worker.

use std::collections::HashMap;
use std::net::IpAddr;

use slab::Slab;

/// The worker's byte budget.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: usize,
    used: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget { limit, used: 0 }
    }

    /// Bytes counted now.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The hard limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A new limit (SIGHUP); what is held stays counted.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// `n` more bytes are held.
    pub fn add(&mut self, n: usize) {
        self.used += n;
    }

    /// `n` bytes were released.
    pub fn sub(&mut self, n: usize) {
        debug_assert!(n <= self.used, "budget underflow: {n} > {}", self.used);
        self.used = self.used.saturating_sub(n);
    }

    /// Whether new work of `n` bytes may be taken (below the 3/4 high-water mark after it).
    pub fn admits(&self, n: usize) -> bool {
        self.used + n <= self.limit / 4 * 3
    }

    /// Whether `n` more bytes stay within the hard limit.
    pub fn fits(&self, n: usize) -> bool {
        self.used + n <= self.limit
    }
}

/// Desktops per source address.
#[derive(Debug, Default)]
pub struct Sources {
    entries: Slab<(IpAddr, u32)>,
    by_ip: HashMap<IpAddr, u32>,
}

impl Sources {
    /// Count one more desktop from `ip`, unless it already has `cap` (0: no cap). Returns the
    /// entry to give back with [`Sources::release`].
    pub fn acquire(&mut self, ip: IpAddr, cap: u32) -> Option<u32> {
        match self.by_ip.get(&ip) {
            Some(&k) => {
                let e = &mut self.entries[k as usize];
                if cap != 0 && e.1 >= cap {
                    return None;
                }
                e.1 += 1;
                Some(k)
            }
            None => {
                let k = self.entries.insert((ip, 1)) as u32;
                self.by_ip.insert(ip, k);
                Some(k)
            }
        }
    }

    /// One desktop counted under `key` is gone.
    pub fn release(&mut self, key: u32) {
        let Some(e) = self.entries.get_mut(key as usize) else {
            return;
        };
        e.1 = e.1.saturating_sub(1);
        if e.1 == 0 {
            let (ip, _) = self.entries.remove(key as usize);
            self.by_ip.remove(&ip);
        }
    }

    /// The address counted under `key`.
    pub fn ip(&self, key: u32) -> Option<IpAddr> {
        self.entries.get(key as usize).map(|e| e.0)
    }

    /// Desktops counted for `ip`.
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.by_ip
            .get(&ip)
            .map_or(0, |k| self.entries[*k as usize].1)
    }

    /// Source addresses with at least one desktop.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no desktop is counted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_marks() {
        let mut b = Budget::new(1000);
        assert!(b.admits(750) && !b.admits(751));
        b.add(700);
        assert!(!b.admits(100) && b.fits(300) && !b.fits(301));
        b.sub(700);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn sources_cap_per_address() {
        let mut s = Sources::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let k1 = s.acquire(a, 2).unwrap();
        let k2 = s.acquire(a, 2).unwrap();
        assert_eq!(k1, k2);
        assert!(s.acquire(a, 2).is_none(), "third from one address");
        assert!(s.acquire(b, 2).is_some(), "another address is not affected");
        assert!(s.acquire(a, 0).is_some(), "0 = no cap");
        s.release(k1);
        s.release(k1);
        s.release(k1);
        assert_eq!(s.count(a), 0);
        assert_eq!(s.len(), 1);
    }
}
