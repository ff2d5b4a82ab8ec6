//! `storm`: ping load, and at two scheduled moments every desktop drops its connection at once
//! and reconnects — the first round with plain exponential backoff (everyone retries in
//! lock-step), the second with jitter (the first attempt spread over `storm_spread_ms`, retries
//! with equal-jitter backoff). The ping loop ([`super::ping`]) does the work; this module holds
//! the storm's timing rules.

use std::time::Duration;

/// Desktops stop sending this long before a storm so that nothing is in flight when they drop
/// (a drop is deliberate: it must not count requests as lost).
pub const QUIESCE_NS: u64 = 300_000_000;

/// On a machine so busy that answers take longer than [`QUIESCE_NS`], a desktop still waits
/// this long past the storm's time for its last answers before it drops; only what is still
/// unanswered then counts as lost.
pub const LATE_ANSWERS_NS: u64 = 5_000_000_000;

/// Delay before the first reconnect attempt of a jittered round: uniform over the spread.
pub fn initial_delay(spread_ms: u64, rnd: f64) -> Duration {
    Duration::from_millis(spread_ms).mul_f64(rnd.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_over_the_window() {
        assert_eq!(initial_delay(1000, 0.0), Duration::ZERO);
        assert_eq!(initial_delay(1000, 0.5), Duration::from_millis(500));
        assert_eq!(initial_delay(1000, 2.0), Duration::from_millis(1000));
    }
}
