//! Sans-IO routing: service byte → instances that serve it → one of their links.
//!
//! New sessions are spread round-robin over the instances of a service and, inside an
//! instance, over its links that are up. A desktop's sessions are sticky: once bound, every
//! request of that service goes to the same link until the link dies (see `session`). One
//! upstream session per (desktop, instance): when one instance serves both Interaction and
//! UCS, the desktop gets a single session there. Instances that are `Unavailable`, `Backup`,
//! draining after `GO_AWAY` or removed by a reload get no new sessions. This is the seam where
//! issue 6's balancing and warm standby plug in ([`Router::pick`]).

use crate::config::Upstream;

/// Routing-relevant state of one upstream instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The instance's configuration.
    pub conf: Upstream,
    /// Global link indexes of this instance's links in the worker.
    pub links: Vec<usize>,
    /// Whether the instance takes new sessions (state running, role primary, not retired).
    pub accepting: bool,
    /// Removed by a config reload: keep existing sessions, open no new ones.
    pub retired: bool,
    rr: usize,
}

impl Instance {
    /// Whether this instance serves `service`.
    pub fn serves(&self, service: u8) -> bool {
        self.conf.services.iter().any(|s| s.0 == service)
    }
}

/// All instances, and the round-robin cursor.
#[derive(Debug, Default)]
pub struct Router {
    /// Instances, in configuration order (indexes are stable; removed ones are retired).
    pub instances: Vec<Instance>,
    rr: usize,
}

/// Why no link could be picked for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLink {
    /// No instance serves it at all.
    NoRoute,
    /// Instances exist but none has a link up.
    Unavailable,
    /// Links are up, but every instance refuses new sessions (service unavailable, backup).
    NotAccepting,
}

impl Router {
    /// An empty router.
    pub fn new() -> Router {
        Router::default()
    }

    /// Add an instance whose links have global indexes `links`; returns its index.
    pub fn add(&mut self, conf: Upstream, links: Vec<usize>) -> usize {
        self.instances.push(Instance {
            conf,
            links,
            accepting: true,
            retired: false,
            rr: 0,
        });
        self.instances.len() - 1
    }

    /// Whether any (non-retired) instance serves `service`.
    pub fn routable(&self, service: u8) -> bool {
        self.instances
            .iter()
            .any(|i| !i.retired && i.serves(service))
    }

    /// Services with a route, as a hello `services` mask.
    pub fn mask(&self) -> u64 {
        let mut m = 0u64;
        for i in self.instances.iter().filter(|i| !i.retired) {
            for s in &i.conf.services {
                m |= 1u64.checked_shl(u32::from(s.0)).unwrap_or(0);
            }
        }
        m
    }

    /// Pick a link for a new session of `service`. `prefer` lists links this desktop already
    /// has a session on (reused when their instance serves `service`); `up(link)` says
    /// whether a link is up.
    ///
    /// # Errors
    /// [`NoLink`].
    pub fn pick(
        &mut self,
        service: u8,
        prefer: &[usize],
        up: impl Fn(usize) -> bool,
    ) -> Result<usize, NoLink> {
        let n = self.instances.len();
        let mut any = false;
        for inst in &self.instances {
            if inst.retired || !inst.serves(service) {
                continue;
            }
            any = true;
            if let Some(l) = prefer.iter().find(|l| inst.links.contains(l)) {
                return Ok(*l);
            }
        }
        if !any {
            return Err(NoLink::NoRoute);
        }
        let mut refusing = false;
        for k in 0..n {
            let idx = (self.rr + k) % n;
            let inst = &mut self.instances[idx];
            if inst.retired || !inst.serves(service) {
                continue;
            }
            if !inst.accepting {
                refusing |= inst.links.iter().any(|l| up(*l));
                continue;
            }
            let m = inst.links.len();
            for j in 0..m {
                let l = inst.links[(inst.rr + j) % m];
                if up(l) {
                    inst.rr = (inst.rr + j + 1) % m;
                    self.rr = (idx + 1) % n;
                    return Ok(l);
                }
            }
        }
        Err(if refusing {
            NoLink::NotAccepting
        } else {
            NoLink::Unavailable
        })
    }

    /// The instance that owns global link `link`.
    pub fn instance_of(&self, link: usize) -> Option<usize> {
        self.instances.iter().position(|i| i.links.contains(&link))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceId;

    fn up(services: &[u8], port: u16) -> Upstream {
        Upstream {
            name: format!("i{port}"),
            services: services.iter().map(|s| ServiceId(*s)).collect(),
            addr: ([127, 0, 0, 1], port).into(),
            links: 2,
        }
    }

    #[test]
    fn round_robin_and_sticky_instance() {
        let mut r = Router::new();
        r.add(up(&[1, 2], 1), vec![0, 1]);
        r.add(up(&[1], 2), vec![2, 3]);
        let all = |_| true;
        let a = r.pick(1, &[], all).unwrap();
        let b = r.pick(1, &[], all).unwrap();
        assert_ne!(r.instance_of(a), r.instance_of(b), "spread over instances");
        // A desktop bound to link 1 for service 1 reuses it for service 2 (same instance).
        assert_eq!(r.pick(2, &[1], all).unwrap(), 1);
        assert_eq!(r.pick(9, &[], all), Err(NoLink::NoRoute));
        assert_eq!(r.pick(2, &[], |_| false), Err(NoLink::Unavailable));
        // Only link 3 up: always it.
        for _ in 0..3 {
            assert_eq!(r.pick(1, &[], |l| l == 3).unwrap(), 3);
        }
        assert_eq!(r.mask(), 0b110);
    }

    #[test]
    fn not_accepting_gets_no_new_sessions() {
        let mut r = Router::new();
        r.add(up(&[1], 1), vec![0]);
        r.add(up(&[1], 2), vec![1]);
        r.instances[0].accepting = false;
        for _ in 0..4 {
            assert_eq!(r.pick(1, &[], |_| true).unwrap(), 1);
        }
        r.instances[1].retired = true;
        assert_eq!(r.pick(1, &[], |_| true), Err(NoLink::NotAccepting));
        assert_eq!(r.pick(1, &[], |_| false), Err(NoLink::Unavailable));
    }
}
