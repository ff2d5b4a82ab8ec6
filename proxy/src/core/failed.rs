//! Who failed: for each kind of desktop failure the worker logs (authentication, malformed
//! frames, protocol breaches, oversized frames, wrong tenants, TLS), the source address,
//! tenant and agent of the last desktop that failed that way.
//!
//! The worker logs these failures at most once a second per kind (`worker::failures`), with
//! the count since its last line; a count alone does not tell an operator where to look, so
//! the line also names the last desktop. One entry per kind, overwritten: a flood of bad
//! desktops costs no more than one. The agent is what the desktop's hello claimed (never its
//! password or token), kept only while its sessions open (a side table, like reconnect
//! tokens: an idle desktop does not carry it).

use std::net::IpAddr;

use super::Core;
use super::desktop::Phase;

/// The kinds logged: the `kind` label of `deskmux_proxy_errors`, and what a line says.
pub const LOGGED: [(&str, &str); 6] = [
    ("auth_failed", "hello refused: authentication failed"),
    ("tenant_mismatch", "request for another tenant"),
    ("malformed", "malformed frame"),
    ("protocol", "protocol violation"),
    ("frame_too_large", "frame over max_frame"),
    ("tls", "TLS handshake or record failed"),
];

/// Longest agent name kept (bytes, cut at a character boundary): the name comes from the
/// network and goes into log lines.
const AGENT_MAX: usize = 64;

/// The last desktop that failed in one of the [`LOGGED`] ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDesktop {
    /// Its source address (the port is the driver's; the core keeps one address per source).
    pub source: Option<IpAddr>,
    /// Its tenant: the session's once open, before that what its hello or frame claimed
    /// (0: nothing claimed yet).
    pub tenant: u32,
    /// The agent its hello named, when it failed before its sessions were open.
    pub agent: Option<Box<str>>,
}

/// One [`FailedDesktop`] per [`LOGGED`] kind.
#[derive(Debug, Default)]
pub(super) struct LastFailed([Option<FailedDesktop>; LOGGED.len()]);

/// `agent` cut to [`AGENT_MAX`] bytes at a character boundary.
pub(super) fn short_agent(agent: &str) -> Box<str> {
    let mut end = agent.len().min(AGENT_MAX);
    while !agent.is_char_boundary(end) {
        end -= 1;
    }
    agent[..end].into()
}

impl Core {
    /// Desktop `slot` failed as `kind` (a `deskmux_proxy_errors` kind), claiming `tenant`
    /// (used until its session is open): remember it if `kind` is one the worker logs.
    pub(super) fn note_failure(&mut self, slot: usize, kind: &str, tenant: u32) {
        let Some(i) = LOGGED.iter().position(|(k, _)| *k == kind) else {
            return;
        };
        let Some(d) = self.desktops.get(slot) else {
            return;
        };
        self.last_failed.0[i] = Some(FailedDesktop {
            source: self.sources.ip(d.source),
            tenant: if d.phase == Phase::Open {
                d.tenant
            } else {
                tenant
            },
            agent: self.agents.get(&d.sid).cloned(),
        });
    }

    /// The last desktop that failed as [`LOGGED`]`[kind]` since this was last asked, if any.
    pub fn take_failed(&mut self, kind: usize) -> Option<FailedDesktop> {
        self.last_failed.0.get_mut(kind).and_then(Option::take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_cut_at_a_character_boundary() {
        assert_eq!(&*short_agent("alice"), "alice");
        let long = "é".repeat(40); // 80 bytes
        let s = short_agent(&long);
        assert!(s.len() <= AGENT_MAX && s.chars().all(|c| c == 'é'), "{s}");
        assert_eq!(s.len(), AGENT_MAX);
    }
}
