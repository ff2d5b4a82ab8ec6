//! `limits.max_desktops` against the open-file limit. Each TCP or TLS desktop holds a file
//! descriptor; a worker that accepts more desktops than it has descriptors for fails
//! `accept` with `EMFILE` in a loop and refuses desktops it claimed room for (the issue saw
//! 311 "Too many open files" under `ulimit -n 256` with `max_desktops = 19000`). So the
//! default comes from the worker's `RLIMIT_NOFILE`, and a configured value above what the
//! limit allows is lowered, with a warning, rather than refused: one configuration file then
//! serves hosts with different limits, and the warning (and `--check-config`) says what to
//! raise.

use super::Config;

/// `limits.max_desktops` when the file does not set it: resolved from the open-file limit by
/// [`Config::apply_fd_limit`]. (A sentinel rather than an `Option` because the core reads
/// the field as a number; it never sees this value.)
pub const MAX_DESKTOPS_AUTO: usize = usize::MAX;

/// Descriptors always held besides desktops and links: stdio, the poll instance, the
/// listeners (TCP, UDP), the admin listener and its connections, files read on SIGHUP.
const FIXED_MARGIN: u64 = 64;
/// Most closed desktops' sockets lingering at once (the worker's `MAX_LINGER`).
const LINGER_MARGIN: u64 = 1024;

/// The soft open-file limit of this process (`RLIMIT_NOFILE`), which workers inherit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit(pub u64);

impl FdLimit {
    /// Read it from `/proc/self/limits` (`unlimited` reads as `u64::MAX`); `None` where that
    /// file cannot be read.
    pub fn of_this_process() -> Option<FdLimit> {
        let text = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let soft = line
            .trim_start_matches("Max open files")
            .split_whitespace()
            .next()?;
        Some(FdLimit(if soft == "unlimited" {
            u64::MAX
        } else {
            soft.parse().ok()?
        }))
    }
}

/// How `limits.max_desktops` was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopCap {
    /// The value in force.
    pub max_desktops: usize,
    /// The open-file limit it was derived from or checked against.
    pub fd_limit: Option<u64>,
    /// Descriptors kept for everything but desktops.
    pub margin: u64,
    /// The configured value, when it was lowered to fit the limit.
    pub lowered_from: Option<usize>,
    /// Whether it came from the limit (the file does not set it).
    pub derived: bool,
}

impl DesktopCap {
    /// The warning to log when a configured value was lowered.
    pub fn warning(&self) -> Option<String> {
        let from = self.lowered_from?;
        Some(format!(
            "limits.max_desktops = {from} needs more file descriptors than the open-file limit \
             ({}) leaves after {} for links, listeners and the admin port: lowered to {}; \
             raise the limit (ulimit -n, systemd LimitNOFILE) to serve more",
            self.fd_limit.unwrap_or(0),
            self.margin,
            self.max_desktops
        ))
    }
}

impl Config {
    /// Descriptors a worker needs besides its desktops (links, listeners, admin, lingering
    /// sockets), under the open-file limit `limit`.
    pub fn fd_margin(&self, limit: u64) -> u64 {
        let links: u64 = self.upstream.iter().map(|u| u64::from(u.links)).sum();
        FIXED_MARGIN + links + (limit / 16).min(LINGER_MARGIN)
    }

    /// Settle `limits.max_desktops` against the open-file limit: derived from it when the
    /// file leaves it unset, lowered to it when set above (see [`DesktopCap::warning`]). The
    /// result is at least 1 (a limit too small for even that leaves accept to fail, counted).
    pub fn apply_fd_limit(&mut self, limit: Option<FdLimit>) -> DesktopCap {
        let derived = self.limits.max_desktops == MAX_DESKTOPS_AUTO;
        let Some(FdLimit(n)) = limit else {
            if derived {
                // No /proc: the historical default for a 20,000-file limit.
                self.limits.max_desktops = 19_000;
            }
            return DesktopCap {
                max_desktops: self.limits.max_desktops,
                fd_limit: None,
                margin: 0,
                lowered_from: None,
                derived,
            };
        };
        let margin = self.fd_margin(n);
        let room = n.saturating_sub(margin).clamp(1, 1_000_000);
        let room = usize::try_from(room).unwrap_or(1_000_000);
        let mut lowered_from = None;
        if derived {
            self.limits.max_desktops = room;
        } else if self.limits.max_desktops > room {
            lowered_from = Some(self.limits.max_desktops);
            self.limits.max_desktops = room;
        }
        DesktopCap {
            max_desktops: self.limits.max_desktops,
            fd_limit: Some(n),
            margin,
            lowered_from,
            derived,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_upstream() -> Config {
        let mut c = Config::default();
        c.upstream
            .push(super::super::Upstream::parse_override("ixn=127.0.0.1:1").unwrap());
        c
    }

    #[test]
    fn default_follows_the_limit() {
        let mut c = one_upstream();
        let cap = c.apply_fd_limit(Some(FdLimit(256)));
        // 64 fixed + 2 links + 256/16 lingering.
        assert_eq!((cap.max_desktops, cap.margin), (174, 82));
        assert!(cap.derived && cap.warning().is_none());
        let mut c = one_upstream();
        assert_eq!(c.apply_fd_limit(Some(FdLimit(20_000))).max_desktops, 18_910);
    }

    #[test]
    fn a_configured_value_above_the_limit_is_lowered_with_a_warning() {
        let mut c = one_upstream();
        c.limits.max_desktops = 19_000;
        let cap = c.apply_fd_limit(Some(FdLimit(256)));
        assert_eq!(c.limits.max_desktops, 174);
        assert_eq!(cap.lowered_from, Some(19_000));
        let w = cap.warning().unwrap();
        assert!(
            w.contains("19000") && w.contains("256") && w.contains("174"),
            "{w}"
        );
        let mut c = one_upstream();
        c.limits.max_desktops = 100;
        let cap = c.apply_fd_limit(Some(FdLimit(256)));
        assert_eq!((c.limits.max_desktops, cap.warning()), (100, None));
    }

    #[test]
    fn reads_this_process_limit() {
        assert!(FdLimit::of_this_process().is_some_and(|l| l.0 > 0));
    }
}
