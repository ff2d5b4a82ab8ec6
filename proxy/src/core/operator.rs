//! Operator input: SIGHUP reloads, instances disabled by hand, and the SIGTERM drain.

use std::time::{Duration, Instant};

use deskmux_codec::msg;
use deskmux_codec::{ErrorCode, Frame, Head, Kind, Service};
use tracing::info;

use super::{Core, tenant_map};
use crate::config::Config;
use crate::error::{Disconnect, ProxyError};

impl Core {
    /// Apply a new configuration (SIGHUP): limits, upstreams (new ones added; removed ones
    /// retired: no new sessions, existing desktops keep theirs), clusters, tenant routes.
    /// The caller has dealt with the certificates and with what needs a restart.
    pub fn reload(&mut self, now: Instant, new: &Config) {
        info!("reloading limits, upstreams and routes");
        self.limits = new.limits.clone();
        self.max_in_flight_ever = self.max_in_flight_ever.max(new.limits.max_in_flight);
        self.budget.set_limit(new.limits.worker_queue_bytes);
        for l in &mut self.links {
            l.set_accept_max(new.limits.max_frame as usize);
        }
        for inst in &mut self.router.instances {
            let keep = new.upstream.contains(&inst.conf);
            if !keep && !inst.retired {
                inst.retired = true;
                for l in &inst.links {
                    self.links[*l].retired = true;
                }
            }
        }
        self.cfg = new.clone();
        for u in new.upstream.clone() {
            let exists = self
                .router
                .instances
                .iter()
                .any(|i| !i.retired && i.conf == u);
            if !exists {
                self.add_instance(now, u);
            }
        }
        for inst in &mut self.router.instances {
            inst.balance = new
                .clusters
                .get(&inst.conf.cluster)
                .map(|c| c.balance)
                .unwrap_or_default();
        }
        self.router.link_pairs();
        // Tenant routing: new sessions follow the new map; existing aliases stay.
        self.router.tenant_pins = tenant_map(new);
        self.router.set_partitions(new);
        self.router.set_capabilities(new);
    }

    /// Disable (`true`) or enable an instance for new sessions; false if none has that name.
    pub fn set_disabled(&mut self, name: &str, disabled: bool) -> bool {
        let Some(idx) = self.router.find(name) else {
            return false;
        };
        let inst = &mut self.router.instances[idx];
        if inst.disabled != disabled {
            info!(instance = %name, disabled, "operator command");
        }
        inst.disabled = disabled;
        true
    }

    /// SIGTERM: tell every desktop `GO_AWAY`, refuse new connections and requests
    /// (`SHUTTING_DOWN`), and let what is in flight finish within `drain_grace_ms`.
    pub fn start_drain(&mut self, now: Instant) {
        if self.draining.is_some() {
            return;
        }
        info!("draining");
        self.draining = Some(now + Duration::from_millis(u64::from(self.limits.drain_grace_ms)));
        let g = msg::GoAway {
            reason: "proxy shutting down",
            reconnect_ms: self.limits.go_away_reconnect_ms,
        };
        let slots: Vec<(usize, u64)> = self.desktops.iter().map(|(s, d)| (s, d.sid)).collect();
        for (slot, sid) in slots {
            let mut h = Head::new(Kind::Control, Service::Control, msg::control::GO_AWAY);
            h.session = sid;
            if let Ok(f) = Frame::build(h, |w| g.write(w)) {
                self.deliver(now, slot, f.freeze());
            }
        }
        self.settle(now);
    }

    /// Whether the drain is over: every desktop left and nothing is in flight, or the grace
    /// period ran out.
    pub fn drained(&self, now: Instant) -> bool {
        match self.draining {
            None => false,
            // PROTOCOL.md §6: after GO_AWAY the sender refuses new requests (SHUTTING_DOWN),
            // answers what is in flight, then closes after its grace period.
            Some(d) => (self.in_flight == 0 && self.desktops.is_empty()) || now >= d,
        }
    }

    /// The drain is over: answer what is left (`TIMEOUT`), close every desktop (which sends
    /// `SESSION_CLOSE` upstream). The driver then flushes for a moment and exits.
    pub fn finish(&mut self, now: Instant) {
        for i in 0..self.links.len() {
            // A timeout of 0: every request still in flight.
            let now_us = self.us(now);
            for id in self.links[i].ids.expired(now_us, 0) {
                if let Some(p) = self.links[i].ids.take(id) {
                    self.answer_pending(
                        now,
                        i,
                        p,
                        ProxyError::proxy(ErrorCode::TIMEOUT, "proxy shut down first"),
                    );
                }
            }
        }
        let slots: Vec<usize> = self.desktops.iter().map(|(s, _)| s).collect();
        for slot in slots {
            self.close_desktop(now, slot, Disconnect::Shutdown);
        }
        self.settle(now);
    }
}
