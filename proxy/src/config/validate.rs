//! Validation of a parsed configuration: ranges, consistency of clusters, backup pairs,
//! partitions and tenant routes, and (separately) that the certificate files load. Its own
//! file because it is most of the configuration's logic, and `--check-config` is all of it.

use super::{Cluster, Config, ConfigError, Driver, ServiceId, Upstream};

impl Config {
    /// Check ranges and consistency, that the certificate files load, and that there is an
    /// upstream ([`Config::validate_settings`] and [`Config::check_cert_files`]).
    ///
    /// # Errors
    /// [`ConfigError::Range`] or [`ConfigError::Invalid`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_values()?;
        self.check_cert_files()?;
        self.check_has_upstream()
    }

    /// Check ranges and consistency without reading any other file (the certificate files
    /// are named, not loaded), and that there is an upstream.
    ///
    /// # Errors
    /// [`ConfigError::Range`] or [`ConfigError::Invalid`].
    pub fn validate_settings(&self) -> Result<(), ConfigError> {
        self.check_values()?;
        self.check_has_upstream()
    }

    /// A proxy without an upstream answers every hello UNAVAILABLE: a configuration mistake
    /// (a missing `[[upstream]]`, a file not the one meant), not a way to run. Checked last,
    /// so that the more specific errors of a file come first.
    fn check_has_upstream(&self) -> Result<(), ConfigError> {
        if self.upstream.is_empty() {
            return Err(ConfigError::Range {
                key: "upstream".into(),
                message: "upstream: no [[upstream]] configured (a proxy without one refuses every desktop); add one, or pass --upstream SERVICE=ADDR".into(),
            });
        }
        Ok(())
    }

    /// Ranges ([`Config::check_ranges`]) and the constraints between values.
    fn check_values(&self) -> Result<(), ConfigError> {
        self.check_ranges()?;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let l = &self.limits;
        if l.link_backoff_max_ms < l.link_backoff_min_ms {
            return bad("limits: link_backoff_min_ms <= link_backoff_max_ms".into());
        }
        if l.hello_max_frame > l.max_frame {
            return bad("limits: hello_max_frame <= max_frame".into());
        }
        if l.worker_queue_bytes < 4 * l.max_frame as usize
            || l.worker_queue_bytes < 2 * l.out_queue_bytes
        {
            return bad(
                "limits.worker_queue_bytes must be at least 4 x max_frame and 2 x out_queue_bytes"
                    .into(),
            );
        }
        if self.upstream.len() > 64 {
            return bad("at most 64 upstream instances".into());
        }
        for u in &self.upstream {
            if u.services.is_empty() {
                return bad(format!("upstream {}: no service", u.name));
            }
            if u.services.iter().any(|s| s.0 == 0) {
                return bad(format!(
                    "upstream {}: service 0 is control, not routable",
                    u.name
                ));
            }
            self.link_security(u).map_err(ConfigError::Invalid)?;
        }
        for name in self.clusters.keys() {
            if !self.upstream.iter().any(|u| &u.cluster == name) {
                return bad(format!(
                    "cluster {name}: no instances (no [[upstream]] has cluster = {name:?})"
                ));
            }
        }
        if self.quic.is_some() && self.quic_cert().is_none() {
            return bad("quic: needs cert and key (in [quic] or [tls])".into());
        }
        self.check_driver()?;
        self.validate_topology()
    }

    /// `[worker] driver = "uring"` drives plain TCP only: TLS (desktops or links) and QUIC
    /// stay with the mio driver, and a binary built without the `uring` feature has none.
    fn check_driver(&self) -> Result<(), ConfigError> {
        if self.worker.driver != Driver::Uring {
            return Ok(());
        }
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !cfg!(feature = "uring") {
            return bad("worker.driver = \"uring\": this proxy was built without the `uring` feature (cargo build --features uring); use driver = \"mio\"".into());
        }
        if self.tls.is_some() {
            return bad("worker.driver = \"uring\" serves plain TCP desktops only: remove [tls] or use driver = \"mio\"".into());
        }
        if self.quic.is_some() {
            return bad(
                "worker.driver = \"uring\" has no QUIC: remove [quic] or use driver = \"mio\""
                    .into(),
            );
        }
        for u in &self.upstream {
            if self
                .link_security(u)
                .map_err(ConfigError::Invalid)?
                .is_some()
            {
                return bad(format!(
                    "worker.driver = \"uring\" connects plain TCP links only: upstream {} uses TLS (set tls = false with plaintext_links, or use driver = \"mio\")",
                    u.name
                ));
            }
        }
        Ok(())
    }

    /// Load the `[tls]` and `[quic]` certificate and key files and check that each key
    /// matches its certificate; load every TLS link's CA and client certificate. Separate from [`Config::validate_settings`] because a SIGHUP
    /// reload must not be refused for bad certificate files: the worker then keeps its
    /// previous certificate and applies the rest.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the file and the cause.
    pub fn check_cert_files(&self) -> Result<(), ConfigError> {
        if let Some(t) = &self.tls {
            crate::tls::server_config(&t.cert, &t.key).map_err(ConfigError::Invalid)?;
        }
        if let Some((cert, key)) = self.quic_cert() {
            crate::quic::crypto_config(&cert, &key).map_err(ConfigError::Invalid)?;
        }
        self.check_link_tls_files().map_err(ConfigError::Invalid)
    }

    /// Names, clusters, backup pairs and tenant routes (after [`Config::normalize`]; names
    /// that are still empty are checked by their address).
    fn validate_topology(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let name_of = |u: &Upstream| {
            if u.name.is_empty() {
                u.addr.to_string()
            } else {
                u.name.clone()
            }
        };
        let names: Vec<String> = self.upstream.iter().map(name_of).collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return bad(format!("upstream name {n:?} is used twice"));
            }
        }
        // One cluster per service, so that a service has one balancing policy.
        let mut owner: std::collections::BTreeMap<u8, &str> = std::collections::BTreeMap::new();
        for (u, n) in self.upstream.iter().zip(&names) {
            if !u.cluster.is_empty() && !self.clusters.contains_key(&u.cluster) {
                return bad(format!(
                    "upstream {n}: cluster {:?} is not declared in [clusters]",
                    u.cluster
                ));
            }
            for s in &u.services {
                match owner.get(&s.0) {
                    Some(c) if *c != u.cluster.as_str() => {
                        return bad(format!(
                            "service {} is served by clusters {c:?} and {:?}: one cluster per service",
                            s.0, u.cluster
                        ));
                    }
                    _ => {
                        owner.insert(s.0, u.cluster.as_str());
                    }
                }
            }
        }
        for (cname, c) in &self.clusters {
            self.validate_partitions(cname, c, &names)?;
        }
        let mut backups: Vec<&str> = Vec::new();
        for (u, n) in self.upstream.iter().zip(&names) {
            let Some(b) = &u.backup else { continue };
            let Some(bi) = names.iter().position(|x| x == b) else {
                return bad(format!("upstream {n}: backup {b:?} is not an upstream"));
            };
            let bu = &self.upstream[bi];
            if b == n {
                return bad(format!("upstream {n}: is its own backup"));
            }
            if bu.backup.is_some() {
                return bad(format!(
                    "upstream {n}: backup {b:?} has a backup itself (pairs only)"
                ));
            }
            if backups.contains(&b.as_str()) {
                return bad(format!("upstream {b}: backup of two primaries"));
            }
            if bu.services != u.services || bu.cluster != u.cluster {
                return bad(format!(
                    "upstream {n}: backup {b:?} must serve the same services in the same cluster"
                ));
            }
            backups.push(b);
        }
        let mut seen: Vec<u32> = Vec::new();
        for t in &self.tenant {
            if seen.contains(&t.id) {
                return bad(format!(
                    "tenant {}: mapped twice (one [[tenant]] entry per tenant)",
                    t.id
                ));
            }
            seen.push(t.id);
            if t.pins().next().is_none() {
                return bad(format!(
                    "tenant {}: names no instance (give ucs, interaction or both)",
                    t.id
                ));
            }
            for (service, what, inst) in t.pins() {
                let Some(i) = names.iter().position(|x| x == inst) else {
                    return bad(format!(
                        "tenant {}: {what} instance {inst:?} is not an upstream",
                        t.id
                    ));
                };
                let u = &self.upstream[i];
                if !u.services.contains(&ServiceId(service)) {
                    return bad(format!(
                        "tenant {}: instance {inst:?} does not serve {what}",
                        t.id
                    ));
                }
                // Partitioned and capability-routed clusters choose instances by the request,
                // not by the tenant: a tenant pin there would be silently ignored.
                if let Some(c) = self.clusters.get(&u.cluster)
                    && (c.partition_key.is_some() || c.capability_key.is_some())
                {
                    return bad(format!(
                        "tenant {}: instance {inst:?} is in cluster {:?}, which routes by \
                         partition or capability, not by tenant",
                        t.id, u.cluster
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_partitions(
        &self,
        cname: &str,
        c: &Cluster,
        names: &[String],
    ) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if c.capability_key.is_some() {
            if c.partition_key.is_some() {
                return bad(format!(
                    "cluster {cname}: partition_key and capability_key exclude each other"
                ));
            }
            if c.capability_types.is_empty() {
                return bad(format!("cluster {cname}: capability_types is empty"));
            }
            let n = self.upstream.iter().filter(|u| u.cluster == cname).count();
            if n > 4 {
                return bad(format!(
                    "cluster {cname}: at most 4 instances with capability routing (a desktop has at most 6 upstream sessions)"
                ));
            }
        }
        for (u, n) in self.upstream.iter().zip(names) {
            if !u.capabilities.is_empty()
                && self
                    .clusters
                    .get(&u.cluster)
                    .is_none_or(|c| c.capability_key.is_none())
            {
                return bad(format!(
                    "upstream {n}: capabilities need a cluster with capability_key"
                ));
            }
        }
        match (&c.partition_key, c.partitions.is_empty()) {
            (None, true) => return Ok(()),
            (None, false) => {
                return bad(format!(
                    "cluster {cname}: partitions need partition_key (the body field)"
                ));
            }
            (Some(_), true) => {
                return bad(format!("cluster {cname}: partition_key without partitions"));
            }
            (Some(_), false) => {}
        }
        if c.partitions.len() > 3 {
            return bad(format!(
                "cluster {cname}: at most 3 partitions (a desktop has at most 4 upstream sessions)"
            ));
        }
        for (i, p) in c.partitions.iter().enumerate() {
            if c.partitions[..i].iter().any(|q| q.instance == p.instance) {
                return bad(format!(
                    "cluster {cname}: instance {:?} owns two partitions (merge their prefixes)",
                    p.instance
                ));
            }
            let Some(u) = names.iter().position(|n| *n == p.instance) else {
                return bad(format!(
                    "cluster {cname}: partition instance {:?} is not an upstream",
                    p.instance
                ));
            };
            if self.upstream[u].cluster != cname {
                return bad(format!(
                    "cluster {cname}: partition instance {:?} is not in this cluster",
                    p.instance
                ));
            }
        }
        let backups: Vec<&str> = self
            .upstream
            .iter()
            .filter_map(|u| u.backup.as_deref())
            .collect();
        for (u, n) in self.upstream.iter().zip(names) {
            if u.cluster == cname
                && !backups.contains(&n.as_str())
                && !c.partitions.iter().any(|p| &p.instance == n)
            {
                return bad(format!(
                    "cluster {cname}: instance {n:?} owns no partition (give it prefixes, or make it a backup)"
                ));
            }
        }
        let parts: Vec<(&str, &[String])> = c
            .partitions
            .iter()
            .map(|p| (p.instance.as_str(), p.prefixes.as_slice()))
            .collect();
        crate::partition::validate(&c.key_space, &parts)
            .map_err(|e| ConfigError::Invalid(format!("cluster {cname}: {e}")))
    }
}
