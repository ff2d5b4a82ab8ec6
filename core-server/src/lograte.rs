//! Rate limits for log lines that peers can provoke (refused logins, refused links, broken
//! frames, failed TLS handshakes).
//!
//! Why: each of these is worth a line to an operator, and each is also free for an attacker
//! to repeat: a password-guessing loop or a port scanner would otherwise write as fast as it
//! can send, filling the disk and drowning every other line. A [`LogRate`] lets a burst
//! through, then counts what it holds back and reports the count on the next line it lets
//! through (`suppressed = N`), so nothing vanishes silently.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of one kind: at most `per_window` per second.
#[derive(Debug)]
pub struct LogRate {
    per_window: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogRate {
    /// A limit of `per_second` lines a second.
    pub const fn new(per_second: u32) -> LogRate {
        LogRate {
            per_window: per_second,
            state: Mutex::new(State {
                window: None,
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written now: `Some(n)` with the lines held back since the last
    /// one written (log it as `suppressed`), `None` to hold this one back.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let Ok(mut s) = self.state.lock() else {
            return Some(0);
        };
        if s.window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            s.window = Some(now);
            s.used = 0;
        }
        if s.used < self.per_window {
            s.used += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

/// Refused logins (wrong password, unknown agent, locked out, ...).
pub static LOGIN_REFUSED: LogRate = LogRate::new(20);
/// Refused links (bad secret, no client certificate).
pub static LINK_REFUSED: LogRate = LogRate::new(20);
/// Connections closed for a framing or protocol error, and failed TLS handshakes.
pub static PROTOCOL: LogRate = LogRate::new(20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_and_reported_on_the_next_window() {
        let r = LogRate::new(3);
        let t0 = Instant::now();
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(r.allow_at(t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(r.allow_at(t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(r.allow_at(t0 + Duration::from_millis(1001)), Some(0));
    }
}
