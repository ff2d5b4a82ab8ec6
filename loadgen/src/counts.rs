//! Requests written, counted by message type. `requests.sent` counts only what a scenario
//! measures (echoes in `ping`), so without these counts a run's totals could not be reconciled
//! with the proxy's or the server's request counters: the logins, heartbeats and agent steps
//! they also see would be unexplained. Counting is a fixed array indexed by type, so the hot
//! path (a batch of echoes) allocates nothing.

use std::collections::BTreeMap;

use deskmux_codec::{Service, msg};

/// The request types loadgen writes, with their JSON names.
const TYPES: [(Service, u16, &str); 15] = [
    (Service::Control, msg::control::HEARTBEAT, "heartbeat"),
    (Service::Interaction, msg::ixn::ECHO, "echo"),
    (Service::Ucs, msg::ucs::ECHO, "ucs_echo"),
    (Service::Interaction, msg::ixn::AGENT_LOGIN, "agent_login"),
    (Service::Interaction, msg::ixn::AGENT_READY, "agent_ready"),
    (Service::Interaction, msg::ixn::ACCEPT, "accept"),
    (
        Service::Interaction,
        msg::ixn::CHANGE_PROPERTIES,
        "change_properties",
    ),
    (
        Service::Interaction,
        msg::ixn::STOP_PROCESSING,
        "stop_processing",
    ),
    (Service::Interaction, msg::ixn::SUBMIT, "submit"),
    (Service::Interaction, msg::ixn::SUBSCRIBE, "subscribe"),
    (Service::Interaction, msg::ixn::UNSUBSCRIBE, "unsubscribe"),
    (Service::Ucs, msg::ucs::CONTACT_IDENTIFY, "contact_identify"),
    (Service::Ucs, msg::ucs::HISTORY_INSERT, "history_insert"),
    (Service::Gms, msg::gms::ACCESS_REQUEST, "access_request"),
    (Service::Gms, msg::gms::ACCESS_MATCH, "access_match"),
];

/// Names of the per-service catch-alls, after [`TYPES`].
const OTHER: [(&str, &str); 5] = [
    ("other_control", "control"),
    ("other_interaction", "interaction"),
    ("other_ucs", "ucs"),
    ("other_gms", "gms"),
    ("other_service", "other"),
];

/// The JSON name of a service (as the proxy's `service` label spells it).
pub fn service_name(s: Service) -> &'static str {
    match s {
        Service::Control => "control",
        Service::Interaction => "interaction",
        Service::Ucs => "ucs",
        Service::Gms => "gms",
        Service::Unknown(_) => "other",
    }
}

/// Requests written, by type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeCounts {
    n: [u64; TYPES.len() + OTHER.len()],
}

impl TypeCounts {
    /// Count `k` requests of `msg_type` on `service`.
    pub fn add(&mut self, service: Service, msg_type: u16, k: u64) {
        let i = TYPES
            .iter()
            .position(|(s, t, _)| *s == service && *t == msg_type)
            .unwrap_or(match service {
                Service::Control => TYPES.len(),
                Service::Interaction => TYPES.len() + 1,
                Service::Ucs => TYPES.len() + 2,
                Service::Gms => TYPES.len() + 3,
                Service::Unknown(_) => TYPES.len() + 4,
            });
        self.n[i] += k;
    }

    /// Add another thread's counts.
    pub fn merge(&mut self, o: &TypeCounts) {
        for (a, b) in self.n.iter_mut().zip(o.n) {
            *a += b;
        }
    }

    /// The non-zero counts by JSON name.
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        let names = TYPES.iter().map(|t| t.2).chain(OTHER.iter().map(|o| o.0));
        names
            .zip(self.n)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    }
}

/// Sum per-type counts (JSON names, from [`TypeCounts::to_map`]) by service name.
pub fn by_service(by_type: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (k, n) in by_type {
        let service = TYPES
            .iter()
            .find(|t| t.2 == k)
            .map(|t| service_name(t.0))
            .or_else(|| OTHER.iter().find(|o| o.0 == k).map(|o| o.1))
            .unwrap_or("other");
        *out.entry(service.to_string()).or_default() += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_type_and_service() {
        let mut a = TypeCounts::default();
        a.add(Service::Interaction, msg::ixn::ECHO, 100);
        a.add(Service::Interaction, msg::ixn::AGENT_LOGIN, 5);
        a.add(Service::Control, msg::control::HEARTBEAT, 2);
        a.add(Service::Interaction, msg::ixn::REJECT, 1);
        let mut b = TypeCounts::default();
        b.add(Service::Ucs, msg::ucs::HISTORY_INSERT, 3);
        b.add(Service::Interaction, msg::ixn::AGENT_LOGIN, 5);
        a.merge(&b);
        let m = a.to_map();
        assert_eq!(m["echo"], 100);
        assert_eq!(m["agent_login"], 10);
        assert_eq!(m["heartbeat"], 2);
        assert_eq!(m["other_interaction"], 1);
        assert_eq!(m["history_insert"], 3);
        assert!(!m.contains_key("submit"), "zero counts are left out");
        let s = by_service(&m);
        assert_eq!(s["interaction"], 111);
        assert_eq!(s["ucs"], 3);
        assert_eq!(s["control"], 2);
    }
}
