//! Exponential lockout after failed logins, per (tenant, agent) and per source address.
//!
//! Why both: per account alone lets one source try one password on every agent; per source
//! alone lets a botnet try every password on one agent. After `after` failures in a row, a key
//! is locked for `base`, doubling with each further failure up to `max`. A success clears the
//! account's count; a source's count is forgotten once it has been quiet for `max`, so that one
//! valid login cannot launder a source's guesses.
//!
//! Memory is bounded: at most `cap` keys per map. When a map is full, keys whose lock has run
//! out are dropped first; if none has, the new key is not tracked (and counted as `untracked`),
//! rather than evicting an attacker's key to make room for the attacker's next one.
//!
//! The clock is passed in, so the rules are tested without waiting.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Lockout rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Failures in a row before the first lock.
    pub after: u32,
    /// First lock.
    pub base: Duration,
    /// Longest lock (and how long a source's failures are remembered).
    pub max: Duration,
    /// Most keys remembered per map.
    pub cap: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

#[derive(Debug)]
struct Table<K> {
    m: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new() -> Self {
        Table { m: HashMap::new() }
    }

    fn locked(&self, k: &K, now: Instant) -> Option<Duration> {
        let until = self.m.get(k)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Count a failure; true if the key is now locked.
    fn fail(&mut self, k: &K, now: Instant, r: &Rules) -> bool {
        if !self.m.contains_key(k) && self.m.len() >= r.cap {
            let max = r.max;
            self.m.retain(|_, e| {
                e.locked_until.is_some_and(|u| u > now) || now.duration_since(e.last) < max
            });
            if self.m.len() >= r.cap {
                return false;
            }
        }
        let e = self.m.entry(k.clone()).or_insert(Entry {
            failures: 0,
            locked_until: None,
            last: now,
        });
        if now.duration_since(e.last) >= r.max {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures < r.after.max(1) {
            return false;
        }
        let doublings = (e.failures - r.after.max(1)).min(30);
        let lock = r.base.saturating_mul(1u32 << doublings).min(r.max);
        e.locked_until = Some(now + lock);
        true
    }

    fn clear(&mut self, k: &K) {
        self.m.remove(k);
    }

    fn len(&self) -> usize {
        self.m.len()
    }
}

/// The lockout state of one server.
#[derive(Debug)]
pub struct Lockout {
    rules: Rules,
    accounts: Table<(u32, String)>,
    sources: Table<IpAddr>,
}

impl Lockout {
    /// Empty state under `rules`.
    pub fn new(rules: Rules) -> Lockout {
        Lockout {
            rules,
            accounts: Table::new(),
            sources: Table::new(),
        }
    }

    /// If the account or the source is locked, for how much longer.
    pub fn locked(
        &self,
        tenant: u32,
        agent: &str,
        source: Option<IpAddr>,
        now: Instant,
    ) -> Option<Duration> {
        let a = self.accounts.locked(&(tenant, agent.to_string()), now);
        let s = source.and_then(|ip| self.sources.locked(&ip, now));
        a.max(s)
    }

    /// Record a failed attempt; true if it locked the account or the source.
    pub fn failed(
        &mut self,
        tenant: u32,
        agent: &str,
        source: Option<IpAddr>,
        now: Instant,
    ) -> bool {
        let a = self
            .accounts
            .fail(&(tenant, agent.to_string()), now, &self.rules);
        let s = source.is_some_and(|ip| self.sources.fail(&ip, now, &self.rules));
        a || s
    }

    /// Record a success: the account's count starts again.
    pub fn succeeded(&mut self, tenant: u32, agent: &str) {
        self.accounts.clear(&(tenant, agent.to_string()));
    }

    /// Keys tracked (accounts, sources).
    pub fn tracked(&self) -> (usize, usize) {
        (self.accounts.len(), self.sources.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rules = Rules {
        after: 3,
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
        cap: 4,
    };

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn locks_after_n_and_doubles_up_to_max() {
        let t0 = Instant::now();
        let mut l = Lockout::new(R);
        assert!(!l.failed(1, "a", None, t0));
        assert!(!l.failed(1, "a", None, t0));
        assert_eq!(l.locked(1, "a", None, t0), None);
        assert!(l.failed(1, "a", None, t0));
        assert_eq!(l.locked(1, "a", None, t0), Some(Duration::from_secs(1)));
        // Another tenant's agent of the same name is untouched.
        assert_eq!(l.locked(2, "a", None, t0), None);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(l.locked(1, "a", None, t1), None);
        assert!(l.failed(1, "a", None, t1));
        assert_eq!(l.locked(1, "a", None, t1), Some(Duration::from_secs(2)));
        let mut t = t1;
        for _ in 0..10 {
            t += Duration::from_secs(1);
            l.failed(1, "a", None, t);
        }
        assert_eq!(l.locked(1, "a", None, t), Some(Duration::from_secs(60)));
        l.succeeded(1, "a");
        assert_eq!(l.locked(1, "a", None, t), None);
    }

    #[test]
    fn a_source_is_locked_across_agents_and_success_does_not_clear_it() {
        let t0 = Instant::now();
        let mut l = Lockout::new(R);
        l.failed(1, "a", ip(1), t0);
        l.failed(1, "b", ip(1), t0);
        l.succeeded(1, "c");
        assert!(l.failed(1, "d", ip(1), t0));
        assert!(l.locked(1, "zzz", ip(1), t0).is_some());
        assert!(l.locked(1, "zzz", ip(2), t0).is_none());
        // Forgotten after a quiet `max`.
        let later = t0 + Duration::from_secs(120);
        assert!(!l.failed(1, "e", ip(1), later));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = Lockout::new(R);
        for i in 0..100 {
            l.failed(1, &format!("agent{i}"), ip(i as u8), t0);
        }
        assert_eq!(l.tracked(), (4, 4));
        // Once the old ones are quiet for `max`, new keys get room.
        let later = t0 + Duration::from_secs(61);
        l.failed(1, "late", None, later);
        assert_eq!(l.tracked().0, 1);
    }
}
