//! Desktops' auth and protocol failures, logged at info without letting a flood of bad
//! desktops flood the log. The core counts each failure (`deskmux_proxy_errors`,
//! `deskmux_proxy_disconnects`) and keeps the last desktop of each kind
//! ([`crate::core::failed`]); this reads both once a tick and writes at most one line a
//! second per kind, with the number seen since the last line and the source address, tenant
//! and agent of the last desktop that failed that way. An operator running at the default
//! level then sees that desktops fail auth or break the protocol, and where they come from,
//! which before were visible only in metrics. Failed QUIC handshakes, which the endpoint
//! counts (`deskmux_proxy_quic_total{what="failed"}`), are logged the same way.

use std::time::{Duration, Instant};

use tracing::info;

use crate::core::Core;
use crate::core::failed::LOGGED;
use crate::metrics::Metrics;
use crate::quic::QuicStats;

/// Most one line per kind per this interval.
const EVERY: Duration = Duration::from_secs(1);

/// The counts logged so far, and when.
#[derive(Debug, Default)]
pub(super) struct FailureLog {
    seen: [u64; LOGGED.len()],
    /// Failed QUIC handshakes seen so far.
    quic_seen: u64,
    last: Option<Instant>,
}

impl FailureLog {
    /// Called every tick: log (at most once per [`EVERY`]) the failures counted since the
    /// last line, naming the last desktop of each kind; `quic`: the QUIC endpoint's counters.
    pub(super) fn tick(
        &mut self,
        now: Instant,
        m: &Metrics,
        core: &mut Core,
        quic: Option<QuicStats>,
    ) {
        if self.last.is_some_and(|t| now.duration_since(t) < EVERY) {
            return;
        }
        self.last = Some(now);
        for (i, (label, what)) in LOGGED.iter().enumerate() {
            let total = m
                .errors
                .get_or_create(&[("kind", (*label).to_string())])
                .get();
            let new = total.saturating_sub(self.seen[i]);
            self.seen[i] = total;
            // Taken every time, so that a line never names a desktop from before it.
            let who = core.take_failed(i);
            if new > 0 {
                let (source, tenant, agent) = match &who {
                    Some(d) => (
                        d.source.map(tracing::field::display),
                        (d.tenant != 0).then_some(d.tenant),
                        d.agent.as_deref(),
                    ),
                    None => (None, None, None),
                };
                info!(
                    kind = *label,
                    count = new,
                    total,
                    source,
                    tenant,
                    agent,
                    "desktops: {what} ({new} since the last line, at most one line a second; the last one's source, tenant and agent)"
                );
            }
        }
        if let Some(q) = quic {
            let new = q.failed.saturating_sub(self.quic_seen);
            self.quic_seen = q.failed;
            if new > 0 {
                info!(
                    kind = "quic_handshake",
                    count = new,
                    total = q.failed,
                    source = q.last_failed.map(tracing::field::display),
                    "desktops: QUIC handshake failed ({new} since the last line, at most one line a second; the last one's source)"
                );
            }
        }
    }
}
