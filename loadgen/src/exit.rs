//! loadgen's exit codes. A script or CI job running loadgen must tell "I typed the command
//! wrong" from "the system under test lost requests" from "loadgen itself could not keep up",
//! so each has its own code, documented in `loadgen --help` ([`HELP`]) and loadgen/README.md.

use crate::report::Summary;

/// Everything ran and checked out.
pub const OK: u8 = 0;
/// Any other failure (a process of the stack could not start, an output could not be written
/// after the run, ...).
pub const FAILURE: u8 = 1;
/// Usage error: bad options, or an output path that cannot be written (checked before the
/// run).
pub const USAGE: u8 = 2;
/// No desktop could connect (wrong address or port, a site name that does not resolve,
/// certificate, credentials): nothing was measured.
pub const CONNECT: u8 = 3;
/// Requests were lost or answered wrongly (or events went missing, or callback bookings were
/// matched wrongly, lost, double-booked or leaked): the system under test failed
/// verification.
pub const LOST_OR_WRONG: u8 = 4;
/// With `--strict`: loadgen was SATURATED or missed its target rate, so the figures describe
/// loadgen rather than the system under test.
pub const STRICT: u8 = 5;
/// A second Ctrl-C aborted the run (128 + SIGINT).
pub const ABORTED: u8 = 130;

/// The exit codes as `--help` shows them.
pub const HELP: &str = "\
Exit codes:
  0    success
  1    other failure (a process could not start, an output could not be written)
  2    usage error (bad options; an output path that cannot be written, checked before the run)
  3    failure to connect: no desktop connected, or a --site name does not resolve
  4    requests lost or answered wrongly, events missed, or (callback) bookings matched
       wrongly, lost, double-booked or leaked (verification failed)
  5    with --strict: loadgen SATURATED or TARGET MISSED (the figures describe loadgen)
  130  aborted by a second Ctrl-C (the first stops the run and reports it)";

/// A usage error: reported, then exit [`USAGE`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A failure to reach any site before the run: reported, then exit [`CONNECT`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

/// The exit code of one run's summary: [`CONNECT`] when no desktop connected, else
/// [`LOST_OR_WRONG`] when verification failed, else [`STRICT`] when `strict` and loadgen was
/// saturated or missed its target, else [`OK`].
pub fn verdict(s: &Summary, strict: bool) -> u8 {
    if s.clients.connected == 0 {
        CONNECT
    } else if s.verification_failed {
        LOST_OR_WRONG
    } else if strict && (s.loadgen_saturated || s.target_missed) {
        STRICT
    } else {
        OK
    }
}

/// The exit code of several runs (`--repeat`, `compare`, `transports`): the gravest of
/// theirs, in the order [`CONNECT`], [`LOST_OR_WRONG`], [`STRICT`].
pub fn worst(codes: impl IntoIterator<Item = u8>) -> u8 {
    let rank = |c: u8| match c {
        CONNECT => 3,
        LOST_OR_WRONG => 2,
        STRICT => 1,
        _ => 0,
    };
    codes.into_iter().max_by_key(|c| rank(*c)).unwrap_or(OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gravest_outcome_wins() {
        let mut s = Summary::default();
        assert_eq!(verdict(&s, false), CONNECT, "nothing connected");
        s.clients.connected = 1;
        assert_eq!(verdict(&s, true), OK);
        s.target_missed = true;
        assert_eq!(verdict(&s, false), OK, "only --strict fails on a miss");
        assert_eq!(verdict(&s, true), STRICT);
        s.target_missed = false;
        s.loadgen_saturated = true;
        assert_eq!(verdict(&s, true), STRICT);
        s.verification_failed = true;
        assert_eq!(verdict(&s, true), LOST_OR_WRONG);
        assert_eq!(worst([OK, STRICT, LOST_OR_WRONG, OK]), LOST_OR_WRONG);
        assert_eq!(worst([STRICT, CONNECT]), CONNECT);
        assert_eq!(worst([OK, OK]), OK);
        assert_eq!(worst([]), OK);
    }
}
