//! Desktops' auth and protocol failures, logged at info without letting a flood of bad
//! desktops flood the log. The core counts each failure (`deskmux_proxy_errors`,
//! `deskmux_proxy_disconnects`); this reads those counters once a tick and writes at most
//! one line a second per kind, with the number seen since the last line. An operator
//! running at the default level then sees that desktops fail auth or break the protocol,
//! which before were visible only in metrics.

use std::time::{Duration, Instant};

use tracing::info;

use crate::metrics::Metrics;

/// The kinds logged: the `kind` of `deskmux_proxy_errors`, and what the line says.
const KINDS: [(&str, &str); 6] = [
    ("auth_failed", "hello refused: authentication failed"),
    ("tenant_mismatch", "request for another tenant"),
    ("malformed", "malformed frame"),
    ("protocol", "protocol violation"),
    ("frame_too_large", "frame over max_frame"),
    ("tls", "TLS handshake or record failed"),
];

/// Most one line per kind per this interval.
const EVERY: Duration = Duration::from_secs(1);

/// The counts logged so far, and when.
#[derive(Debug, Default)]
pub(super) struct FailureLog {
    seen: [u64; KINDS.len()],
    last: Option<Instant>,
}

impl FailureLog {
    /// Called every tick: log (at most once per [`EVERY`]) the failures counted since the
    /// last line.
    pub(super) fn tick(&mut self, now: Instant, m: &Metrics) {
        if self.last.is_some_and(|t| now.duration_since(t) < EVERY) {
            return;
        }
        self.last = Some(now);
        for (i, (label, what)) in KINDS.iter().enumerate() {
            let total = m
                .errors
                .get_or_create(&[("kind", (*label).to_string())])
                .get();
            let new = total.saturating_sub(self.seen[i]);
            self.seen[i] = total;
            if new > 0 {
                info!(
                    kind = *label,
                    count = new,
                    total,
                    "desktops: {what} ({new} since the last line, at most one line a second)"
                );
            }
        }
    }
}
