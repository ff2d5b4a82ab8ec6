//! What an operator is told about a configuration: the `--check-config` summary (readable,
//! secrets redacted; not a `Debug` dump) and, on SIGHUP, which changed keys cannot be
//! applied to a running proxy. Both are derived from the configuration here, so a new key
//! that needs a restart is listed in one place.

use std::fmt::Write as _;

use super::{Config, DesktopCap};

/// The keys whose change between `running` and `new` a running proxy cannot apply (they
/// are read when the supervisor or a worker starts): a SIGHUP names them in a warning and
/// keeps the running values. Empty when everything that changed can be applied.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    check(running.listen != new.listen, "listen");
    check(running.admin != new.admin, "admin");
    check(running.workers != new.workers, "workers");
    check(running.backlog != new.backlog, "backlog");
    check(running.worker.driver != new.worker.driver, "worker.driver");
    check(
        running.tls.is_some() != new.tls.is_some(),
        "tls (section added or removed)",
    );
    check(
        running.quic.is_some() != new.quic.is_some(),
        "quic (section added or removed)",
    );
    if let (Some(a), Some(b)) = (&running.quic, &new.quic) {
        check(a.max_handshakes != b.max_handshakes, "quic.max_handshakes");
        check(a.max_desktops != b.max_desktops, "quic.max_desktops");
        check(a.retry != b.retry, "quic.retry");
        check(
            a.max_handshakes_per_source != b.max_handshakes_per_source,
            "quic.max_handshakes_per_source",
        );
        // The QUIC endpoint's idle and handshake timeouts are set when it starts; TCP and
        // TLS desktops follow the new values.
        check(
            running.limits.heartbeat_ms != new.limits.heartbeat_ms,
            "limits.heartbeat_ms (for QUIC desktops)",
        );
        check(
            running.limits.handshake_ms != new.limits.handshake_ms,
            "limits.handshake_ms (for QUIC desktops)",
        );
    }
    keys
}

impl Config {
    /// Put back the running values of the keys [`restart_needed`] lists, so that a reloaded
    /// configuration describes what is served (and the next SIGHUP compares against it).
    pub fn keep_restart_only(&mut self, running: &Config) {
        self.listen = running.listen;
        self.admin = running.admin;
        self.workers = running.workers;
        self.backlog = running.backlog;
        self.worker.driver = running.worker.driver;
        if let (Some(a), Some(b)) = (&running.quic, self.quic.as_mut()) {
            b.max_handshakes = a.max_handshakes;
            b.max_desktops = a.max_desktops;
            b.retry = a.retry;
            b.max_handshakes_per_source = a.max_handshakes_per_source;
        }
    }

    /// The `--check-config` summary: every setting an operator chose or inherited, one per
    /// line, with the link secret shown only as set or not and its length.
    pub fn summary(&self, cap: &DesktopCap) -> String {
        let mut s = String::new();
        let on = |b: bool| if b { "on" } else { "off" };
        let _ = writeln!(s, "listen              {}", self.listen);
        let _ = writeln!(s, "admin               {}", self.admin);
        let _ = writeln!(s, "workers             {}", self.workers);
        let _ = writeln!(s, "backlog             {}", self.backlog);
        let _ = writeln!(s, "worker.driver       {}", self.worker.driver.name());
        let secret = if self.link_secret.is_empty() {
            "not set".to_string()
        } else {
            format!("set ({} bytes, redacted)", self.link_secret.len())
        };
        let _ = writeln!(s, "link_secret         {secret}");
        let _ = writeln!(s, "plaintext_links     {}", on(self.plaintext_links));
        match &self.tls {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "tls                 on (cert {}, key {})",
                    t.cert.display(),
                    t.key.display()
                );
            }
            None => {
                let _ = writeln!(s, "tls                 off (plain TCP desktops)");
            }
        }
        match &self.quic {
            Some(q) => {
                let _ = writeln!(
                    s,
                    "quic                on (max_handshakes {}, max_handshakes_per_source {}, max_desktops {}, retry {})",
                    q.max_handshakes,
                    q.max_handshakes_per_source,
                    q.max_desktops,
                    on(q.retry)
                );
            }
            None => {
                let _ = writeln!(s, "quic                off");
            }
        }
        let how = match (cap.derived, cap.lowered_from, cap.fd_limit) {
            (_, Some(from), Some(n)) => {
                format!(" (configured {from}, lowered to fit the open-file limit {n})")
            }
            (true, _, Some(n)) => format!(
                " (from the open-file limit {n}, minus {} for links, listeners and admin)",
                cap.margin
            ),
            _ => String::new(),
        };
        let _ = writeln!(s, "limits.max_desktops {}{how}", self.limits.max_desktops);
        for (key, whose, value) in self.numeric_values() {
            if !key.starts_with("limits.") || key == "limits.max_desktops" || !whose.is_empty() {
                continue;
            }
            let _ = writeln!(s, "{key:<19} {value}");
        }
        for u in &self.upstream {
            let services: Vec<String> = u.services.iter().map(|x| x.0.to_string()).collect();
            let tls = match self.link_security(u) {
                Ok(Some(_)) => "tls",
                _ => "plain tcp",
            };
            let cluster = if u.cluster.is_empty() {
                "default"
            } else {
                &u.cluster
            };
            let backup = u
                .backup
                .as_deref()
                .map(|b| format!(", backup {b}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "upstream {}: {} (services {}), {} links, {tls}, cluster {cluster}{backup}",
                u.name,
                u.addr,
                services.join(","),
                u.links
            );
        }
        for (name, c) in &self.clusters {
            let _ = writeln!(s, "cluster {name}: balance {:?}", c.balance);
        }
        for t in &self.tenant {
            let pins: Vec<String> = t
                .pins()
                .map(|(_, what, inst)| format!("{what} on {inst}"))
                .collect();
            let _ = writeln!(s, "tenant {}: {}", t.id, pins.join(", "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_named_and_kept() {
        let running = Config::default();
        let mut new = Config {
            workers: 5,
            backlog: 10,
            ..Config::default()
        };
        new.listen.set_port(1);
        new.limits.max_in_flight = 3;
        assert_eq!(
            restart_needed(&running, &new),
            ["listen", "workers", "backlog"]
        );
        new.keep_restart_only(&running);
        assert!(restart_needed(&running, &new).is_empty());
        assert_eq!(new.limits.max_in_flight, 3, "live keys stay");
    }

    #[test]
    fn the_summary_redacts_the_secret() {
        let c = Config::from_toml(
            "link_secret = \"a-secret-of-thirty-two-bytes-xyz\"\n[[upstream]]\nname = \"c1\"\nservice = \"ixn\"\naddr = \"127.0.0.1:1\"\ntls = false\n",
        )
        .unwrap();
        let mut c2 = c.clone();
        let cap = c2.apply_fd_limit(Some(super::super::FdLimit(1024)));
        let s = c2.summary(&cap);
        assert!(!s.contains("a-secret"), "{s}");
        assert!(s.contains("set (32 bytes, redacted)"), "{s}");
        assert!(s.contains("upstream c1: 127.0.0.1:1"), "{s}");
        assert!(s.contains("from the open-file limit 1024"), "{s}");
        assert!(!s.contains("Config {"), "{s}");
    }
}
