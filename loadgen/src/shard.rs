//! Pure functions for scale: how many worker processes N desktops need given the open-file
//! limit, which desktops each process drives, and which 127.0.0.x source address each desktop
//! binds so that no (source, destination) pair runs out of ephemeral ports.

use std::net::Ipv4Addr;
use std::ops::Range;

/// File descriptors a loadgen process keeps for itself (stdio, epoll, eventfds, /proc reads,
/// the HDR log) before counting desktop sockets.
pub const FD_HEADROOM: u64 = 200;

/// Linux's default ephemeral port range 32768–60999, used when `/proc` cannot be read.
pub const DEFAULT_PORT_RANGE: (u16, u16) = (32768, 60999);

/// Share of a (source, destination) pair's ephemeral ports loadgen plans to use. A third: the
/// rest is headroom for TIME_WAIT sockets (60 s each; a 25 000-desktop run leaves 25 000 of
/// them) and other programs, and it keeps the kernel's free-port search short — near
/// exhaustion every `connect()` scans the range while the event loop waits (measured: 10 s
/// stalls and `EADDRNOTAVAIL` at ~10 000 connections from 127.0.0.1 with 68 000 TIME_WAIT).
pub const PORT_USE_SHARE: f64 = 1.0 / 3.0;

/// First source address used when spreading: 127.0.0.2. 127.0.0.1 is left to everything else
/// on the machine (servers, tests), whose sockets would share its port space.
pub const FIRST_SOURCE_OCTET: u64 = 2;

/// Highest last octet usable in 127.0.0.x (127.0.0.255 is avoided).
pub const MAX_SOURCE_OCTET: u64 = 254;

/// Parse `/proc/self/limits` text; returns the (soft, hard) "Max open files".
/// "unlimited" reads as `u64::MAX`.
pub fn parse_nofile_limits(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let rest = line.trim_start_matches("Max open files");
    let mut it = rest.split_whitespace();
    let parse = |s: &str| {
        if s == "unlimited" {
            Some(u64::MAX)
        } else {
            s.parse().ok()
        }
    };
    Some((parse(it.next()?)?, parse(it.next()?)?))
}

/// This process's open-file limit (soft, hard), from `/proc/self/limits` (no `unsafe`
/// `getrlimit` needed). Falls back to 1024 when unreadable.
pub fn nofile_limit() -> (u64, u64) {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| parse_nofile_limits(&t))
        .unwrap_or((1024, 1024))
}

/// Open-file limit (soft) of another process, e.g. the server, from `/proc/PID/limits`.
pub fn nofile_limit_of(pid: u32) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_nofile_limits(&t).map(|(soft, _)| soft)
}

/// The ephemeral port range, from `/proc/sys/net/ipv4/ip_local_port_range`.
pub fn port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .unwrap_or(DEFAULT_PORT_RANGE)
}

/// Desktops one process drives over QUIC by default: no file descriptor each, so the bound is
/// memory (a quinn client connection is tens of KB), not the open-file limit.
pub const QUIC_DESKTOPS_PER_PROCESS: u64 = 100_000;

/// Desktops one process may drive: one socket each, within `fd_limit` less [`FD_HEADROOM`].
pub fn desktops_per_process(fd_limit: u64) -> u64 {
    fd_limit.saturating_sub(FD_HEADROOM).max(1)
}

/// Worker processes needed for `desktops` with at most `per_process` each (at least 1).
pub fn shard_count(desktops: u64, per_process: u64) -> u64 {
    desktops.div_ceil(per_process.max(1)).max(1)
}

/// The global desktop ids shard `i` of `n` drives: contiguous, sizes differ by at most one.
pub fn shard_range(desktops: u64, n: u64, i: u64) -> Range<u64> {
    let n = n.max(1);
    let lo = desktops * i / n;
    let hi = desktops * (i + 1) / n;
    lo..hi
}

/// Desktops loadgen puts on one source address by default: a proxy worker takes at most
/// `limits.max_desktops_per_source` (default 4,096) desktops from one address, and the kernel
/// may hash every connection of an address to the same worker; 4,000 stays under that even
/// then.
pub const PROXY_PER_SOURCE: u64 = 4_000;

/// Connections planned per (source, destination) pair for a port range.
pub fn per_source_capacity(range: (u16, u16)) -> u64 {
    let ports = u64::from(range.1.saturating_sub(range.0)) + 1;
    ((ports as f64) * PORT_USE_SHARE) as u64
}

/// Desktops per source address when `--per-source` is not given: what the port range allows,
/// and no more than a proxy takes from one address ([`PROXY_PER_SOURCE`]).
pub fn default_per_source(range: (u16, u16)) -> u64 {
    per_source_capacity(range).min(PROXY_PER_SOURCE)
}

/// The source address desktop `id` binds before connecting, or `None` (let the kernel pick)
/// when all `total` desktops fit on one (source, destination) pair.
///
/// Desktops are spread in contiguous blocks of `per_source` over 127.0.0.2, .3, …
///
/// # Errors
/// When the desktops need more than 127.0.0.254.
pub fn source_addr(id: u64, total: u64, per_source: u64) -> Result<Option<Ipv4Addr>, String> {
    let per_source = per_source.max(1);
    if total <= per_source {
        return Ok(None);
    }
    let octet = FIRST_SOURCE_OCTET + id / per_source;
    if octet > MAX_SOURCE_OCTET {
        return Err(format!(
            "desktop {id} needs source address 127.0.0.{octet}: too many desktops for \
             {per_source} per source address"
        ));
    }
    Ok(Some(Ipv4Addr::new(127, 0, 0, octet as u8)))
}

/// The source port desktop `id` binds for its connection attempt number `attempt`, when it
/// binds an explicit source address.
///
/// Ports are chosen here rather than by the kernel: `bind(addr, 0)` makes the kernel search
/// the port space and check every candidate against all bound sockets — measured at 19 000
/// desktops, loadgen spent most of its time in `inet_csk_get_port`/`inet_bhash2_conflict` and
/// its event loops stalled for seconds. An explicit port is one hash lookup. Within one
/// address the desktops' slots are `id % per_source`; each further attempt moves the port by
/// `per_source`, so a reconnect does not reuse the 4-tuple of its previous connection (which
/// may sit in TIME_WAIT).
pub fn source_port(id: u64, attempt: u64, per_source: u64, range: (u16, u16)) -> u16 {
    let len = u64::from(range.1.saturating_sub(range.0)) + 1;
    let per = per_source.clamp(1, len);
    let slot = id % per;
    let off = (slot + attempt.wrapping_mul(per)) % len;
    range.0 + off as u16
}

/// How many distinct source addresses `total` desktops use.
pub fn source_addr_count(total: u64, per_source: u64) -> u64 {
    if total <= per_source.max(1) {
        1
    } else {
        total.div_ceil(per_source.max(1))
    }
}

/// Parse `--shard i/N`.
///
/// # Errors
/// Malformed text or `i >= N`.
pub fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once('/').ok_or("shard must be i/N")?;
    let i: u64 = a.trim().parse().map_err(|_| "bad shard index")?;
    let n: u64 = b.trim().parse().map_err(|_| "bad shard count")?;
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n} out of range"));
    }
    Ok((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        let t = "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max cpu time              unlimited            unlimited            seconds\n\
                 Max open files            20000                20000                files\n";
        assert_eq!(parse_nofile_limits(t), Some((20000, 20000)));
        let u = "Max open files            1024                 unlimited            files\n";
        assert_eq!(parse_nofile_limits(u), Some((1024, u64::MAX)));
        assert_eq!(parse_nofile_limits("nothing"), None);
    }

    #[test]
    fn sharding_by_fd_limit() {
        let per = desktops_per_process(20_000);
        assert_eq!(per, 19_800);
        assert_eq!(shard_count(1, per), 1);
        assert_eq!(shard_count(19_800, per), 1);
        assert_eq!(shard_count(19_801, per), 2);
        assert_eq!(shard_count(25_000, per), 2);
        assert_eq!(shard_count(100_000, per), 6);
        assert_eq!(shard_count(0, per), 1);
        // Tiny limits still give one desktop per process rather than dividing by zero.
        assert_eq!(desktops_per_process(10), 1);
    }

    #[test]
    fn shard_ranges_cover_exactly_once() {
        for (total, n) in [(25_000u64, 2u64), (7, 3), (100_001, 6), (1, 1), (3, 5)] {
            let mut next = 0;
            for i in 0..n {
                let r = shard_range(total, n, i);
                assert_eq!(r.start, next);
                assert!(r.end - r.start <= total / n + 1);
                next = r.end;
            }
            assert_eq!(next, total);
        }
        let per = desktops_per_process(20_000);
        let n = shard_count(45_000, per);
        for i in 0..n {
            let r = shard_range(45_000, n, i);
            assert!(r.end - r.start <= per, "shard {i} over the fd limit");
        }
    }

    #[test]
    fn default_spread_stays_under_the_proxy_per_source_cap() {
        assert_eq!(default_per_source(DEFAULT_PORT_RANGE), 4_000);
        assert_eq!(
            default_per_source((60_000, 60_999)),
            333,
            "a narrow port range rules"
        );
        // 25,000 desktops: 7 addresses, none over 4,000.
        let per = default_per_source(DEFAULT_PORT_RANGE);
        assert_eq!(source_addr_count(25_000, per), 7);
        assert_eq!(
            source_addr(24_999, 25_000, per),
            Ok(Some(Ipv4Addr::new(127, 0, 0, 8)))
        );
    }

    #[test]
    fn source_address_spread() {
        let per = per_source_capacity(DEFAULT_PORT_RANGE);
        assert_eq!(per, 9_410); // 28 232 ports / 3
        // Fits on one pair: no bind.
        assert_eq!(source_addr(0, 9_000, per), Ok(None));
        assert_eq!(source_addr_count(9_000, per), 1);
        // Over one pair: contiguous blocks of `per`, from 127.0.0.2 (127.0.0.1 left alone).
        assert_eq!(
            source_addr(0, 25_000, per),
            Ok(Some(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(
            source_addr(per - 1, 25_000, per),
            Ok(Some(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(
            source_addr(per, 25_000, per),
            Ok(Some(Ipv4Addr::new(127, 0, 0, 3)))
        );
        assert_eq!(
            source_addr(24_999, 25_000, per),
            Ok(Some(Ipv4Addr::new(127, 0, 0, 4)))
        );
        assert_eq!(source_addr_count(25_000, per), 3);
        // No address gets more than `per` desktops.
        let mut counts = std::collections::HashMap::new();
        for id in 0..60_000 {
            *counts
                .entry(source_addr(id, 60_000, per).unwrap().unwrap())
                .or_insert(0u64) += 1;
        }
        assert!(counts.values().all(|&c| c <= per));
        assert!(!counts.contains_key(&Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(counts.len(), 7);
        // Running out of 127.0.0.x is an error, not a wrap-around: .2 to .254 = 253 blocks.
        assert!(source_addr(253 * 10, 10_000, 10).is_err());
        assert!(source_addr(253 * 10 - 1, 10_000, 10).is_ok());
    }

    #[test]
    fn source_ports_unique_per_address_and_move_on_retry() {
        let range = DEFAULT_PORT_RANGE;
        let per = per_source_capacity(range);
        let total = 25_000u64;
        let mut seen = std::collections::HashSet::new();
        for id in 0..total {
            let a = source_addr(id, total, per).unwrap().unwrap();
            let p = source_port(id, 0, per, range);
            assert!((range.0..=range.1).contains(&p));
            assert!(seen.insert((a, p)), "desktop {id} shares {a}:{p}");
        }
        // A retry gets another port, still in range, still unique among first attempts.
        for id in [0u64, 1, per - 1, per, total - 1] {
            let p0 = source_port(id, 0, per, range);
            let p1 = source_port(id, 1, per, range);
            let p2 = source_port(id, 2, per, range);
            assert_ne!(p0, p1);
            assert_ne!(p1, p2);
            assert!((range.0..=range.1).contains(&p2));
        }
        // Wraps within the range.
        assert!((range.0..=range.1).contains(&source_port(7, 1_000_000, per, range)));
    }

    #[test]
    fn shard_arg() {
        assert_eq!(parse_shard("1/2"), Ok((1, 2)));
        assert!(parse_shard("2/2").is_err());
        assert!(parse_shard("x").is_err());
    }
}
