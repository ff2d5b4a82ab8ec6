//! Every numeric key's valid range, in one table: validation enforces it (at start, in
//! `--check-config` and on SIGHUP), and the README's table is checked against it by a test,
//! so the documented range and the enforced one cannot drift apart.
//!
//! The bounds are what the proxy can honour, not what is wise: a zero that would switch a
//! safety off (a queue of no bytes, no desktops, a backlog of nothing) is out of range,
//! and so is a value past what the code or the kernel can use (a frame past 16 MiB, a
//! listen backlog past 65535).

use super::{Config, ConfigError};

/// One numeric key's valid range (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The dotted key (`limits.max_frame`; `upstream.links` for every `[[upstream]]`).
    pub key: &'static str,
    /// Smallest valid value.
    pub min: u64,
    /// Largest valid value.
    pub max: u64,
}

const HOUR_MS: u64 = 3_600_000;
const MIB: u64 = 1024 * 1024;

/// The valid range of every numeric key (and only those: a key missing here is a test
/// failure in [`Config::numeric_values`]'s unit test).
pub const RANGES: &[Range] = &[
    r("workers", 1, 64),
    r("backlog", 1, 65_535),
    r("limits.max_desktops", 1, 1_000_000),
    r("limits.max_in_flight", 1, 65_535),
    r("limits.max_frame", 1024, 16 * MIB),
    r("limits.handshake_ms", 100, HOUR_MS),
    r("limits.heartbeat_ms", 100, HOUR_MS),
    r("limits.request_timeout_ms", 100, HOUR_MS),
    r("limits.out_queue_frames", 1, 1_048_576),
    r("limits.out_queue_bytes", 1024, 1024 * MIB),
    r("limits.link_queue_bytes", 64 * 1024, 64 * 1024 * MIB),
    r("limits.drain_grace_ms", 0, HOUR_MS),
    r("limits.go_away_reconnect_ms", 0, HOUR_MS),
    r("limits.link_backoff_min_ms", 1, 60_000),
    r("limits.link_backoff_max_ms", 1, 600_000),
    r("limits.link_heartbeat_ms", 0, HOUR_MS),
    r("limits.hello_max_frame", 1024, 16 * MIB),
    r("limits.frame_timeout_ms", 100, HOUR_MS),
    r("limits.link_frame_timeout_ms", 100, HOUR_MS),
    r("limits.max_subscriptions", 1, 65_535),
    r("limits.max_desktops_per_source", 0, 1_000_000),
    r("limits.desktop_read_bytes_per_s", 0, 1024 * MIB),
    r("limits.worker_queue_bytes", MIB, 1024 * 1024 * MIB),
    r("upstream.links", 1, 64),
    r("quic.max_handshakes", 1, 1_000_000),
    r("quic.max_desktops", 1, 10_000_000),
    r("quic.max_handshakes_per_source", 1, 1_000_000),
    r("tenant.id", 1, u32::MAX as u64),
];

const fn r(key: &'static str, min: u64, max: u64) -> Range {
    Range { key, min, max }
}

fn u(v: impl TryInto<u64>) -> i128 {
    v.try_into().map_or(i128::MAX, i128::from)
}

impl Config {
    /// Every numeric value of this configuration with its dotted key (an upstream's links
    /// and a tenant's id once per entry, with a label naming the entry).
    pub fn numeric_values(&self) -> Vec<(&'static str, String, i128)> {
        let l = &self.limits;
        let mut v: Vec<(&'static str, String, i128)> = vec![
            ("workers", String::new(), u(self.workers)),
            ("backlog", String::new(), i128::from(self.backlog)),
            ("limits.max_in_flight", String::new(), u(l.max_in_flight)),
            ("limits.max_frame", String::new(), u(l.max_frame)),
            ("limits.handshake_ms", String::new(), u(l.handshake_ms)),
            ("limits.heartbeat_ms", String::new(), u(l.heartbeat_ms)),
            (
                "limits.request_timeout_ms",
                String::new(),
                u(l.request_timeout_ms),
            ),
            (
                "limits.out_queue_frames",
                String::new(),
                u(l.out_queue_frames),
            ),
            (
                "limits.out_queue_bytes",
                String::new(),
                u(l.out_queue_bytes),
            ),
            (
                "limits.link_queue_bytes",
                String::new(),
                u(l.link_queue_bytes),
            ),
            ("limits.drain_grace_ms", String::new(), u(l.drain_grace_ms)),
            (
                "limits.go_away_reconnect_ms",
                String::new(),
                u(l.go_away_reconnect_ms),
            ),
            (
                "limits.link_backoff_min_ms",
                String::new(),
                u(l.link_backoff_min_ms),
            ),
            (
                "limits.link_backoff_max_ms",
                String::new(),
                u(l.link_backoff_max_ms),
            ),
            (
                "limits.link_heartbeat_ms",
                String::new(),
                u(l.link_heartbeat_ms),
            ),
            (
                "limits.hello_max_frame",
                String::new(),
                u(l.hello_max_frame),
            ),
            (
                "limits.frame_timeout_ms",
                String::new(),
                u(l.frame_timeout_ms),
            ),
            (
                "limits.link_frame_timeout_ms",
                String::new(),
                u(l.link_frame_timeout_ms),
            ),
            (
                "limits.max_subscriptions",
                String::new(),
                u(l.max_subscriptions),
            ),
            (
                "limits.max_desktops_per_source",
                String::new(),
                u(l.max_desktops_per_source),
            ),
            (
                "limits.desktop_read_bytes_per_s",
                String::new(),
                u(l.desktop_read_bytes_per_s),
            ),
            (
                "limits.worker_queue_bytes",
                String::new(),
                u(l.worker_queue_bytes),
            ),
        ];
        // Unset: settled from the open-file limit later (always within range).
        if l.max_desktops != super::fd_limit::MAX_DESKTOPS_AUTO {
            v.push(("limits.max_desktops", String::new(), u(l.max_desktops)));
        }
        for up in &self.upstream {
            v.push((
                "upstream.links",
                format!("upstream {}", up.name),
                u(up.links),
            ));
        }
        if let Some(q) = &self.quic {
            v.push(("quic.max_handshakes", String::new(), u(q.max_handshakes)));
            v.push(("quic.max_desktops", String::new(), u(q.max_desktops)));
            v.push((
                "quic.max_handshakes_per_source",
                String::new(),
                u(q.max_handshakes_per_source),
            ));
        }
        for t in &self.tenant {
            v.push(("tenant.id", format!("tenant {}", t.id), u(t.id)));
        }
        v
    }

    /// Every numeric value within its [`RANGES`] entry.
    ///
    /// # Errors
    /// [`ConfigError::Range`] for the first value out of range.
    pub fn check_ranges(&self) -> Result<(), ConfigError> {
        for (key, whose, value) in self.numeric_values() {
            let Some(range) = RANGES.iter().find(|r| r.key == key) else {
                return Err(ConfigError::Invalid(format!("{key}: no documented range")));
            };
            if value < i128::from(range.min) || value > i128::from(range.max) {
                let whose = if whose.is_empty() {
                    String::new()
                } else {
                    format!(" ({whose})")
                };
                return Err(ConfigError::Range {
                    key: key.to_string(),
                    message: format!(
                        "{key} = {value}{whose} is out of range: valid values are {}..={}",
                        range.min, range.max
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_numeric_key_has_one_range() {
        let mut c = Config {
            quic: Some(super::super::Quic::default()),
            ..Config::default()
        };
        c.limits.max_desktops = 10;
        c.upstream
            .push(super::super::Upstream::parse_override("ixn=127.0.0.1:1").unwrap());
        c.tenant.push(super::super::TenantRoute {
            id: 1,
            ucs: Some("x".into()),
            interaction: None,
        });
        let keys: Vec<&str> = c.numeric_values().iter().map(|v| v.0).collect();
        for r in RANGES {
            assert!(
                keys.contains(&r.key),
                "{} has a range but is not checked",
                r.key
            );
            assert_eq!(
                RANGES.iter().filter(|x| x.key == r.key).count(),
                1,
                "{}",
                r.key
            );
        }
        for k in keys {
            assert!(RANGES.iter().any(|r| r.key == k), "{k} has no range");
        }
        c.check_ranges().unwrap();
    }

    #[test]
    fn the_readme_documents_every_range() {
        let readme = include_str!("../../README.md");
        for r in RANGES {
            let row = format!("| `{}` | {} | {} |", r.key, r.min, r.max);
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
    }

    #[test]
    fn values_the_issue_found_accepted_are_refused() {
        for (toml, key) in [
            ("[limits]\nmax_desktops = 0", "limits.max_desktops"),
            ("[limits]\nlink_queue_bytes = 0", "limits.link_queue_bytes"),
            ("backlog = -5", "backlog"),
            ("[limits]\nmax_frame = 4294967295", "limits.max_frame"),
        ] {
            let c: Config = toml::from_str(toml).unwrap();
            match c.check_ranges() {
                Err(ConfigError::Range { key: k, message }) => {
                    assert_eq!(k, key);
                    assert!(message.contains("out of range"), "{message}");
                }
                other => panic!("{toml}: {other:?}"),
            }
        }
    }
}
