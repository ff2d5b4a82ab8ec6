//! Sans-IO routing: service byte → eligible instances → one of their links.
//!
//! # Instance states
//!
//! Every upstream instance is in one of these states (as in the seeds' application-cluster
//! model), computed by [`Router::state`] from what the worker knows:
//!
//! | state | cause | new sessions | existing sessions |
//! |---|---|---|---|
//! | `running` | a link is up, the server announces running + primary | yes | continue |
//! | `unavailable` | the server announced `state = 1` (`SERVICE_STATE` or link hello ack) | no | continue |
//! | `backup` | the server announced `role = 1` (a warm standby waiting), or it is the configured backup of a live primary | no | continue |
//! | `stopped` | no link up (links lost, heartbeats missed; they reconnect with backoff) | no | got `LINK_LOST` |
//! | `disabled` | an operator (`POST /instances/{name}/disable`) | no | continue |
//! | `drained` | disabled, and its last session ended | no | none left |
//!
//! Removed by a SIGHUP reload (`retired`) is like disabled, and not shown.
//!
//! # Balancing
//!
//! Per cluster ([`Balance`]): `round_robin` rotates over the eligible instances;
//! `least_outstanding` is power of two choices: two eligible instances are drawn at random and
//! the one with fewer requests in flight wins. Inside an instance, links are taken round robin
//! (`round_robin`) or by fewest in flight (`least_outstanding`).
//!
//! # Aliases (stickiness)
//!
//! A desktop's session gets one alias per service (its `Binding`: the link, hence the
//! instance) when the session opens. Every later request of that service goes there; it is
//! never re-hashed: if the instance dies, the requests get explicit errors and the desktop is
//! told (see `worker`). One upstream session per (desktop, instance): when one instance serves
//! both Interaction and UCS, the desktop gets a single session there (`prefer`).
//!
//! # Warm standby and tenants
//!
//! A configured backup (`backup = "name"` on the primary) gets no new sessions while its
//! primary has a link up and does not announce `role = backup`. A tenant mapped to an
//! instance for a service (`[[tenant]]`, `ucs` or `interaction`) opens its session of that
//! service only there (or on that instance's backup), never on another tenant's instance.

use std::collections::HashMap;

use crate::config::{Balance, Config, Upstream};
use crate::partition::PartitionTable;

mod policy;

pub use policy::LinkView;

/// UCS service byte.
pub const UCS: u8 = 2;

/// Routing-relevant state of one upstream instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The instance's configuration.
    pub conf: Upstream,
    /// Global link indexes of this instance's links in the worker.
    pub links: Vec<usize>,
    /// The server announced state running (not "service unavailable").
    pub running: bool,
    /// The server announced role primary (not a waiting warm standby).
    pub primary: bool,
    /// Disabled by an operator: no new sessions, existing ones continue.
    pub disabled: bool,
    /// Removed by a config reload: keep existing sessions, open no new ones.
    pub retired: bool,
    /// If this instance is the configured backup of another: that primary's index.
    pub backup_of: Option<usize>,
    /// Balancing of its cluster.
    pub balance: Balance,
    /// Desktops with an upstream session here (refreshed by the worker's tick).
    pub sessions: u64,
    /// Aliases (desktop, service) pointing here (refreshed by the worker's tick).
    pub aliases: u64,
    rr: usize,
}

/// An instance's state (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstState {
    /// Takes new sessions.
    Running,
    /// The server announced service unavailable.
    Unavailable,
    /// Warm standby: waiting (announced role backup, or its primary is live).
    Backup,
    /// No link up.
    Stopped,
    /// Disabled by an operator; sessions remain.
    Disabled,
    /// Disabled and no session left.
    Drained,
}

impl InstState {
    /// The name shown in `/status`.
    pub fn name(self) -> &'static str {
        match self {
            InstState::Running => "running",
            InstState::Unavailable => "unavailable",
            InstState::Backup => "backup",
            InstState::Stopped => "stopped",
            InstState::Disabled => "disabled",
            InstState::Drained => "drained",
        }
    }
}

impl Instance {
    /// Whether this instance serves `service`.
    pub fn serves(&self, service: u8) -> bool {
        self.conf.services.iter().any(|s| s.0 == service)
    }

    fn any_up(&self, up: &impl Fn(usize) -> bool) -> bool {
        self.links.iter().any(|l| up(*l))
    }
}

/// All instances, the round-robin cursor and the tenant map.
#[derive(Debug)]
pub struct Router {
    /// Instances, in configuration order (indexes are stable; removed ones are retired).
    pub instances: Vec<Instance>,
    /// (tenant, service) → name of the instance its sessions of that service open on
    /// (`[[tenant]]`); pairs not in the map are balanced.
    pub tenant_pins: HashMap<(u32, u8), String>,
    /// Partitioned services: service byte → key field and prefix table (owners are instance
    /// indexes).
    pub partitions: HashMap<u8, Partitioned>,
    /// Capability-routed services: service byte → key field and message types.
    pub capability: HashMap<u8, CapRoute>,
    cap_rr: usize,
    rr: usize,
    rng: fastrand::Rng,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            instances: Vec::new(),
            tenant_pins: HashMap::new(),
            partitions: HashMap::new(),
            capability: HashMap::new(),
            cap_rr: 0,
            rr: 0,
            rng: fastrand::Rng::new(),
        }
    }
}

/// A partitioned service's routing table.
#[derive(Debug, Clone)]
pub struct Partitioned {
    /// Body field holding the key.
    pub key: String,
    /// Prefix → instance index.
    pub table: PartitionTable,
}

/// A capability-routed service.
#[derive(Debug, Clone)]
pub struct CapRoute {
    /// Body field naming the capability.
    pub key: String,
    /// Message types routed by capability.
    pub types: Vec<u16>,
}

/// Why no link could be picked for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLink {
    /// No instance serves it at all.
    NoRoute,
    /// Instances exist but none has a link up.
    Unavailable,
    /// Links are up, but every instance refuses new sessions (unavailable, backup, disabled).
    NotAccepting,
}

impl Router {
    /// An empty router whose random choices (least-outstanding draws) come from `seed`, so
    /// a simulation replays them exactly.
    pub fn with_seed(seed: u64) -> Router {
        Router {
            rng: fastrand::Rng::with_seed(seed),
            ..Router::default()
        }
    }

    /// Add an instance whose links have global indexes `links`; returns its index.
    pub fn add(&mut self, conf: Upstream, links: Vec<usize>, balance: Balance) -> usize {
        self.instances.push(Instance {
            conf,
            links,
            running: true,
            primary: true,
            disabled: false,
            retired: false,
            backup_of: None,
            balance,
            sessions: 0,
            aliases: 0,
            rr: 0,
        });
        self.link_pairs();
        self.instances.len() - 1
    }

    /// Recompute `backup_of` from the (non-retired) instances' `backup` names.
    pub fn link_pairs(&mut self) {
        let pairs: Vec<(usize, usize)> = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.retired)
            .filter_map(|(pi, p)| {
                let b = p.conf.backup.as_ref()?;
                let bi = self
                    .instances
                    .iter()
                    .position(|x| !x.retired && &x.conf.name == b)?;
                Some((pi, bi))
            })
            .collect();
        for i in &mut self.instances {
            i.backup_of = None;
        }
        for (p, b) in pairs {
            self.instances[b].backup_of = Some(p);
        }
    }

    /// (Re)build the partition tables from `cfg` (instance names → indexes).
    pub fn set_partitions(&mut self, cfg: &Config) {
        self.partitions.clear();
        for c in cfg.clusters.values() {
            let Some(key) = &c.partition_key else {
                continue;
            };
            let mut parts: Vec<(&[String], usize)> = Vec::new();
            let mut services: Vec<u8> = Vec::new();
            for p in &c.partitions {
                if let Some(idx) = self.find(&p.instance) {
                    parts.push((p.prefixes.as_slice(), idx));
                    for s in &self.instances[idx].conf.services {
                        if !services.contains(&s.0) {
                            services.push(s.0);
                        }
                    }
                }
            }
            let table = PartitionTable::new(&parts);
            for s in services {
                self.partitions.insert(
                    s,
                    Partitioned {
                        key: key.clone(),
                        table: table.clone(),
                    },
                );
            }
        }
    }

    /// (Re)build the capability routes from `cfg`.
    pub fn set_capabilities(&mut self, cfg: &Config) {
        self.capability.clear();
        for (name, c) in &cfg.clusters {
            let Some(key) = &c.capability_key else {
                continue;
            };
            for u in cfg.upstream.iter().filter(|u| &u.cluster == name) {
                for s in &u.services {
                    self.capability.insert(
                        s.0,
                        CapRoute {
                            key: key.clone(),
                            types: c.capability_types.clone(),
                        },
                    );
                }
            }
        }
    }

    /// For a capability-routed `service`: one link on every running instance serving it
    /// (`prefer` links reused per instance).
    ///
    /// # Errors
    /// [`NoLink`] when no instance runs.
    pub fn pick_all(
        &mut self,
        service: u8,
        prefer: &[usize],
        up: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Result<Vec<usize>, NoLink> {
        let mut out = Vec::new();
        let mut refusing = false;
        let mut any = false;
        for idx in 0..self.instances.len() {
            let inst = &self.instances[idx];
            if inst.retired || !inst.serves(service) {
                continue;
            }
            any = true;
            if self.state(idx, &up) != InstState::Running {
                refusing |= inst.any_up(&up);
                continue;
            }
            if let Some(l) = prefer.iter().find(|l| inst.links.contains(l)) {
                out.push(*l);
            } else if let Some(l) = self.link_in(idx, &up, &load) {
                out.push(l);
            }
        }
        if out.is_empty() {
            return Err(if !any {
                NoLink::NoRoute
            } else if refusing {
                NoLink::NotAccepting
            } else {
                NoLink::Unavailable
            });
        }
        Ok(out)
    }

    /// Round robin among `bound` (the desktop's live links for the service) whose instance
    /// runs and advertises `cap`.
    ///
    /// # Errors
    /// [`NoLink::NoRoute`] when no instance advertises `cap` at all, else
    /// [`NoLink::Unavailable`].
    pub fn pick_capable(
        &mut self,
        service: u8,
        cap: &str,
        bound: &[usize],
        up: impl Fn(usize) -> bool,
    ) -> Result<usize, NoLink> {
        let advertised = self.instances.iter().any(|i| {
            !i.retired && i.serves(service) && i.conf.capabilities.iter().any(|c| c == cap)
        });
        if !advertised {
            return Err(NoLink::NoRoute);
        }
        let mut cands: Vec<(usize, usize)> = bound
            .iter()
            .filter_map(|l| Some((self.instance_of(*l)?, *l)))
            .filter(|(i, _)| {
                let inst = &self.instances[*i];
                !inst.retired
                    && inst.conf.capabilities.iter().any(|c| c == cap)
                    && self.state(*i, &up) == InstState::Running
            })
            .collect();
        if cands.is_empty() {
            return Err(NoLink::Unavailable);
        }
        cands.sort_unstable();
        let k = self.cap_rr % cands.len();
        self.cap_rr = self.cap_rr.wrapping_add(1);
        Ok(cands[k].1)
    }

    /// For a partitioned `service`: one link per partition owner (or its backup, when the
    /// owner is stopped and the backup runs); owners with no usable instance are skipped
    /// (their keys get `UNAVAILABLE`). `prefer` links are reused per instance.
    ///
    /// # Errors
    /// [`NoLink`] when no partition has a usable instance.
    pub fn pick_partitioned(
        &mut self,
        service: u8,
        prefer: &[usize],
        up: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Result<Vec<usize>, NoLink> {
        let Some(p) = self.partitions.get(&service) else {
            return Err(NoLink::NoRoute);
        };
        let owners = p.table.owners();
        let mut out = Vec::new();
        let mut refusing = false;
        for o in owners {
            let backup = self
                .instances
                .iter()
                .position(|i| !i.retired && i.backup_of == Some(o));
            let pick = [Some(o), backup]
                .into_iter()
                .flatten()
                .find(|i| self.state(*i, &up) == InstState::Running);
            let Some(idx) = pick else {
                refusing |= self.instances[o].any_up(&up);
                continue;
            };
            if let Some(l) = prefer
                .iter()
                .find(|l| self.instances[idx].links.contains(l))
            {
                out.push(*l);
            } else if let Some(l) = self.link_in(idx, &up, &load) {
                out.push(l);
            }
        }
        if out.is_empty() {
            return Err(if refusing {
                NoLink::NotAccepting
            } else {
                NoLink::Unavailable
            });
        }
        Ok(out)
    }

    /// Whether `link` belongs to instance `owner` or to its backup.
    pub fn link_serves_owner(&self, link: usize, owner: usize) -> bool {
        self.instance_of(link)
            .is_some_and(|i| i == owner || self.instances[i].backup_of == Some(owner))
    }

    /// A link of instance `idx` that is up, by its cluster's balancing.
    fn link_in(
        &mut self,
        idx: usize,
        up: &impl Fn(usize) -> bool,
        load: &impl Fn(usize) -> usize,
    ) -> Option<usize> {
        let inst = &mut self.instances[idx];
        let m = inst.links.len();
        match inst.balance {
            Balance::RoundRobin => {
                for j in 0..m {
                    let l = inst.links[(inst.rr + j) % m];
                    if up(l) {
                        inst.rr = (inst.rr + j + 1) % m;
                        return Some(l);
                    }
                }
                None
            }
            Balance::LeastOutstanding => inst
                .links
                .iter()
                .copied()
                .filter(|l| up(*l))
                .min_by_key(|l| load(*l)),
        }
    }

    /// Index of the live (non-retired) instance called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.instances
            .iter()
            .position(|i| !i.retired && i.conf.name == name)
    }

    /// Whether any (non-retired) instance serves `service`.
    pub fn routable(&self, service: u8) -> bool {
        self.instances
            .iter()
            .any(|i| !i.retired && i.serves(service))
    }

    /// The state of instance `idx` (see the module docs).
    pub fn state(&self, idx: usize, up: impl Fn(usize) -> bool) -> InstState {
        let i = &self.instances[idx];
        if i.disabled || i.retired {
            return if i.sessions == 0 {
                InstState::Drained
            } else {
                InstState::Disabled
            };
        }
        if !i.any_up(&up) {
            return InstState::Stopped;
        }
        if !i.primary || self.primary_live(idx, &up) {
            return InstState::Backup;
        }
        if !i.running {
            return InstState::Unavailable;
        }
        InstState::Running
    }

    /// For a configured backup: whether its primary is live (has a link up and does not
    /// announce itself a backup), which keeps new sessions off the backup.
    fn primary_live(&self, idx: usize, up: &impl Fn(usize) -> bool) -> bool {
        match self.instances[idx].backup_of {
            Some(p) => {
                let p = &self.instances[p];
                p.primary && p.any_up(up)
            }
            None => false,
        }
    }

    /// Whether tenant routing allows instance `idx` for a `service` session of `tenant`.
    fn tenant_allows(&self, idx: usize, service: u8, tenant: u32) -> bool {
        let Some(name) = self.tenant_pins.get(&(tenant, service)) else {
            return true;
        };
        let i = &self.instances[idx];
        &i.conf.name == name
            || i.backup_of
                .is_some_and(|p| &self.instances[p].conf.name == name)
    }

    /// Pick a link for a new session of `service` for `tenant`. `prefer` lists links this
    /// desktop already has a session on (reused when their instance serves `service` and the
    /// tenant may use it); `up(link)` says whether a link is up; `load(link)` is its requests
    /// in flight.
    ///
    /// # Errors
    /// [`NoLink`].
    pub fn pick(
        &mut self,
        service: u8,
        tenant: u32,
        prefer: &[usize],
        up: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Result<usize, NoLink> {
        let n = self.instances.len();
        let mut any = false;
        for idx in 0..n {
            let inst = &self.instances[idx];
            if inst.retired || !inst.serves(service) || !self.tenant_allows(idx, service, tenant) {
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
        let mut cands: Vec<usize> = Vec::new();
        for k in 0..n {
            let idx = (self.rr + k) % n;
            let inst = &self.instances[idx];
            if inst.retired || !inst.serves(service) || !self.tenant_allows(idx, service, tenant) {
                continue;
            }
            match self.state(idx, &up) {
                InstState::Running => cands.push(idx),
                InstState::Stopped => {}
                _ => refusing |= inst.any_up(&up),
            }
        }
        let Some(&first) = cands.first() else {
            return Err(if refusing {
                NoLink::NotAccepting
            } else {
                NoLink::Unavailable
            });
        };
        let balance = self.instances[first].balance;
        let inst_load = |r: &Router, i: usize| -> usize {
            r.instances[i].links.iter().map(|l| load(*l)).sum::<usize>()
        };
        let chosen = match balance {
            Balance::RoundRobin => {
                self.rr = (first + 1) % n;
                first
            }
            Balance::LeastOutstanding => {
                if cands.len() == 1 {
                    first
                } else {
                    let a = self.rng.usize(0..cands.len());
                    let mut b = self.rng.usize(0..cands.len() - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (a, b) = (cands[a], cands[b]);
                    if inst_load(self, b) < inst_load(self, a) {
                        b
                    } else {
                        a
                    }
                }
            }
        };
        self.link_in(chosen, &up, &load).ok_or(NoLink::Unavailable)
    }

    /// The instance that owns global link `link`.
    pub fn instance_of(&self, link: usize) -> Option<usize> {
        self.instances.iter().position(|i| i.links.contains(&link))
    }
}

#[cfg(test)]
mod tests;
