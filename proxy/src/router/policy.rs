//! Routing policy: which sessions a hello opens, and which of a desktop's sessions a request
//! goes on.
//!
//! The router owns this choice so that the core only asks two questions:
//! - [`Router::hello_links`]: for each service a hello asks for, the picker its cluster uses
//!   (partitioned: one session per partition owner; capability-routed: one session per
//!   running instance; otherwise one instance by the cluster's balancing, tenant routing
//!   applied), each answering with the links to open sessions on.
//! - [`Router::request_binding`]: for a request, the desktop's session that must carry it
//!   (the partition owning its key, or the next instance advertising its capability), or the
//!   session's own alias.
//!
//! The link table is seen through [`LinkView`], so the policy is tested without links.

use deskmux_codec::{BodyRef, ErrorCode, Frame, Value};

use crate::core::desktop::Binding;
use crate::error::ProxyError;

use super::{NoLink, Router};

/// What the policy needs to know about links.
pub trait LinkView {
    /// Whether link `l` is up and takes new sessions.
    fn up(&self, l: usize) -> bool;
    /// Requests in flight on link `l`.
    fn load(&self, l: usize) -> usize;
    /// Whether the session `b` was opened on is still alive (same link incarnation, up).
    fn live(&self, b: Binding) -> bool;
}

fn no_link(e: NoLink) -> ProxyError {
    match e {
        NoLink::NotAccepting => ProxyError::upstream(
            ErrorCode::SERVICE_UNAVAILABLE,
            "the service's servers take no new sessions",
        ),
        NoLink::NoRoute => {
            ProxyError::desktop(ErrorCode::NO_ROUTE, "no route for the requested services")
        }
        NoLink::Unavailable => {
            ProxyError::upstream(ErrorCode::UNAVAILABLE, "no upstream instance available")
        }
    }
}

impl Router {
    /// The sessions a hello of `tenant` asking for the services in mask `services` must open:
    /// `(service, link)` pairs. Services without any route are left out; a hello that gets no
    /// session at all is refused.
    ///
    /// # Errors
    /// Why the hello is refused (`NO_ROUTE`, `UNAVAILABLE`, `SERVICE_UNAVAILABLE`).
    pub fn hello_links(
        &mut self,
        services: u64,
        tenant: u32,
        links: &impl LinkView,
    ) -> Result<Vec<(u8, usize)>, ProxyError> {
        let mut chosen: Vec<(u8, usize)> = Vec::new();
        let mut refused = None;
        for s in 1..64u8 {
            if services & (1u64 << s) == 0 || !self.routable(s) {
                continue;
            }
            let prefer: Vec<usize> = chosen.iter().map(|(_, l)| *l).collect();
            let up = |l: usize| links.up(l);
            let load = |l: usize| links.load(l);
            let picked = if self.partitions.contains_key(&s) {
                self.pick_partitioned(s, &prefer, up, load)
            } else if self.capability.contains_key(&s) {
                self.pick_all(s, &prefer, up, load)
            } else {
                self.pick(s, tenant, &prefer, up, load).map(|l| vec![l])
            };
            match picked {
                Ok(ls) => chosen.extend(ls.into_iter().map(|l| (s, l))),
                // The service has a route, so "no route" here means none for this tenant's
                // mapping right now: unavailable, like a stopped instance.
                Err(NoLink::NoRoute) => refused = Some(no_link(NoLink::Unavailable)),
                Err(e) => refused = Some(no_link(e)),
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        if chosen.is_empty() {
            return Err(no_link(NoLink::NoRoute));
        }
        Ok(chosen)
    }

    /// The session that must carry request `f`, which the desktop's alias for its service is
    /// `b`; also whether it was routed by capability (then, if its link dies before it is
    /// written, it may be resubmitted elsewhere).
    ///
    /// - A partitioned service: the desktop's session on the instance owning the key in the
    ///   body field `partition_key` (or on its backup).
    /// - A capability-routed message type whose body names a capability: round robin among
    ///   the desktop's live sessions on instances advertising it.
    ///
    /// # Errors
    /// `MALFORMED` (no or a bad key), `UNAVAILABLE` / `NO_ROUTE` (no instance for it).
    pub fn request_binding(
        &mut self,
        bindings: &[Binding],
        f: &Frame,
        b: Binding,
        links: &impl LinkView,
    ) -> Result<(Binding, bool), ProxyError> {
        let b = self.partition_binding(bindings, f, b)?;
        self.capability_binding(bindings, f, b, links)
    }

    fn partition_binding(
        &self,
        bindings: &[Binding],
        f: &Frame,
        b: Binding,
    ) -> Result<Binding, ProxyError> {
        let Some(p) = self.partitions.get(&b.service) else {
            return Ok(b);
        };
        let key = match f.body().get(&p.key) {
            Ok(Some(Value::Str(k))) => k,
            Ok(_) => {
                return Err(ProxyError::desktop(
                    ErrorCode::MALFORMED,
                    "missing partition key (str)",
                ));
            }
            Err(_) => return Err(ProxyError::desktop(ErrorCode::MALFORMED, "bad body")),
        };
        let Some(owner) = p.table.lookup(key) else {
            return Err(ProxyError::desktop(
                ErrorCode::MALFORMED,
                "partition key outside every partition",
            ));
        };
        bindings
            .iter()
            .copied()
            .find(|x| x.service == b.service && self.link_serves_owner(x.link as usize, owner))
            .ok_or(ProxyError::upstream(
                ErrorCode::UNAVAILABLE,
                "the key's partition had no instance when the session opened",
            ))
    }

    fn capability_binding(
        &mut self,
        bindings: &[Binding],
        f: &Frame,
        b: Binding,
        links: &impl LinkView,
    ) -> Result<(Binding, bool), ProxyError> {
        let Some(cr) = self.capability.get(&b.service) else {
            return Ok((b, false));
        };
        if !cr.types.contains(&f.head().msg_type) {
            return Ok((b, false));
        }
        let cap = match f.body().get(&cr.key) {
            Ok(Some(Value::Str(k))) => k,
            // No capability named: the session's alias (the server answers MALFORMED if it
            // needed one).
            _ => return Ok((b, false)),
        };
        match self.capable_link(bindings, b.service, cap, links) {
            Ok(l) => {
                let nb = bindings
                    .iter()
                    .copied()
                    .find(|x| x.service == b.service && x.link as usize == l)
                    .unwrap_or(b);
                Ok((nb, true))
            }
            Err(NoLink::NoRoute) => Err(ProxyError::desktop(
                ErrorCode::NO_ROUTE,
                "no instance has this capability",
            )),
            Err(_) => Err(ProxyError::upstream(
                ErrorCode::UNAVAILABLE,
                "no running instance with this capability for this session",
            )),
        }
    }

    fn capable_link(
        &mut self,
        bindings: &[Binding],
        service: u8,
        cap: &str,
        links: &impl LinkView,
    ) -> Result<usize, NoLink> {
        let bound: Vec<usize> = bindings
            .iter()
            .filter(|x| x.service == service && links.live(**x))
            .map(|x| x.link as usize)
            .collect();
        self.pick_capable(service, cap, &bound, |l| links.up(l))
    }

    /// A capability-routed request of `service` (body `body`) that was never written on a
    /// link that died: another of the desktop's live sessions whose instance advertises the
    /// capability, if any.
    pub fn resubmit_link(
        &mut self,
        bindings: &[Binding],
        service: u8,
        body: BodyRef<'_>,
        links: &impl LinkView,
    ) -> Option<usize> {
        let key = self.capability.get(&service)?.key.clone();
        let Ok(Some(Value::Str(cap))) = body.get(&key) else {
            return None;
        };
        self.capable_link(bindings, service, cap, links).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, ServiceId, Upstream};
    use deskmux_codec::{Head, Kind, Service};

    struct Links(Vec<bool>);

    impl LinkView for Links {
        fn up(&self, l: usize) -> bool {
            self.0[l]
        }
        fn load(&self, _: usize) -> usize {
            0
        }
        fn live(&self, b: Binding) -> bool {
            self.0[b.link as usize]
        }
    }

    fn up(name: &str, services: &[u8], caps: &[&str], cluster: &str) -> Upstream {
        Upstream {
            name: name.into(),
            services: services.iter().map(|s| ServiceId(*s)).collect(),
            addr: ([127, 0, 0, 1], 1).into(),
            links: 1,
            cluster: cluster.into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            backup: None,
            tls: None,
            ca: None,
            server_name: None,
            client_cert: None,
            client_key: None,
        }
    }

    #[test]
    fn a_hello_opens_one_session_per_instance_and_reports_refusals() {
        let mut r = Router::default();
        r.add(up("a", &[1, 2], &[], ""), vec![0], Balance::RoundRobin);
        r.add(up("b", &[5], &[], ""), vec![1], Balance::RoundRobin);
        let all = Links(vec![true, true]);
        // Interaction and UCS on the same instance: one link, two services.
        assert_eq!(r.hello_links(0b110, 1, &all).unwrap(), vec![(1, 0), (2, 0)]);
        // Service 9 has no route: left out; only it: NO_ROUTE.
        assert_eq!(r.hello_links(0b10 | 1 << 9, 1, &all).unwrap(), vec![(1, 0)]);
        assert_eq!(
            r.hello_links(1 << 9, 1, &all).unwrap_err().code,
            ErrorCode::NO_ROUTE
        );
        // A routable service with its instance down refuses the whole hello.
        let a_down = Links(vec![false, true]);
        assert_eq!(
            r.hello_links(0b10 | 1 << 5, 1, &a_down).unwrap_err().code,
            ErrorCode::UNAVAILABLE
        );
    }

    #[test]
    fn capability_requests_go_to_an_advertiser_the_desktop_has_a_session_on() {
        let cfg = crate::config::Config::from_toml(
            "[clusters.urs]\ncapability_key = \"queue\"\n[[upstream]]\nname = \"r1\"\ncluster = \"urs\"\ncapabilities = [\"sales\"]\nservice = 1\naddr = \"127.0.0.1:1\"\nlinks = 1\n[[upstream]]\nname = \"r2\"\ncluster = \"urs\"\ncapabilities = [\"vip\"]\nservice = 1\naddr = \"127.0.0.1:2\"\nlinks = 1\n",
        )
        .unwrap();
        let mut r = Router::default();
        for (k, u) in cfg.upstream.iter().enumerate() {
            r.add(u.clone(), vec![k], Balance::RoundRobin);
        }
        r.set_capabilities(&cfg);
        let all = Links(vec![true, true]);
        let bindings: Vec<Binding> = r
            .hello_links(0b10, 1, &all)
            .unwrap()
            .into_iter()
            .map(|(service, l)| Binding {
                service,
                link: l as u16,
                link_gen: 1,
            })
            .collect();
        assert_eq!(bindings.len(), 2);
        let mut h = Head::new(Kind::Request, Service::Interaction, 0x20);
        h.tenant = 1;
        let f = Frame::build(h, |w| w.str("queue", "vip").map(|_| ())).unwrap();
        let (b, reroute) = r.request_binding(&bindings, &f, bindings[0], &all).unwrap();
        assert_eq!((b.link, reroute), (1, true));
        let body = BodyRef::new(f.body_bytes());
        assert_eq!(
            r.resubmit_link(&bindings, 1, body, &Links(vec![true, false])),
            None
        );
        let f = Frame::build(h, |w| w.str("queue", "none").map(|_| ())).unwrap();
        assert_eq!(
            r.request_binding(&bindings, &f, bindings[0], &all)
                .unwrap_err()
                .code,
            ErrorCode::NO_ROUTE
        );
    }
}
