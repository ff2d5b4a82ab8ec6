//! Scenarios: what each simulated desktop does once connected, plus the shared connect/login
//! step. Each desktop is one small local task on its thread's event loop.

pub mod agent;
pub mod callback;
pub mod ping;
pub mod session;
pub mod storm;
pub mod supervisor;

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::client::{
    self, Backoff, ClientError, ConnectOptions, Desktop, Identity, SourcePlan, Via,
};
use crate::config::{RunConfig, Scenario};
use crate::engine::Ctx;
use crate::shard;

/// Run desktop `gid` to the end of the run.
pub async fn run_desktop(ctx: Rc<Ctx>, gid: u64) {
    match ctx.cfg.scenario {
        Scenario::Ping | Scenario::Storm => ping::run(ctx, gid).await,
        Scenario::Agent => agent::run(ctx, gid).await,
        Scenario::Supervisor => supervisor::run(ctx, gid).await,
        Scenario::Callback => callback::run(ctx, gid).await,
    }
}

/// Desktop `gid`'s identity: line `gid` of the credentials (wrapping), the Interaction
/// Server and UCS (callback: GMS only).
pub fn identity(cfg: &RunConfig, gid: u64) -> Identity {
    let n = cfg.creds.len().max(1);
    let c = &cfg.creds[usize::try_from(gid).unwrap_or(0) % n];
    Identity {
        tenant: c.tenant,
        agent: c.agent.clone(),
        token: c.password.clone(),
        reconnect: None,
        resume: None,
        services: match cfg.scenario {
            Scenario::Callback => deskmux_codec::Service::Gms.mask_bit(),
            _ => 0b110,
        },
    }
}

/// Desktop `gid`'s source plan (None: let the kernel pick, for non-loopback targets).
///
/// Loopback targets always get an explicit source (127.0.0.2 and up, explicit port), however
/// few desktops there are: 127.0.0.1's port space is shared with everything else on the machine
/// and fills with TIME_WAIT sockets (60 s each) after big runs; measured, a 2 000-desktop run
/// right after several 25 000-desktop ones got `EADDRNOTAVAIL` and multi-second event-loop
/// stalls in the kernel's free-port search when it let `connect()` pick.
pub fn source(cfg: &RunConfig, gid: u64) -> Option<SourcePlan> {
    if !cfg.sites.iter().all(|s| s.ip().is_loopback()) {
        return None;
    }
    // `total` above `per_source` forces the spread even for small runs.
    shard::source_addr(gid, cfg.desktops.max(cfg.per_source + 1), cfg.per_source)
        .ok()
        .flatten()
        .map(|ip| SourcePlan {
            ip: IpAddr::V4(ip),
            id: gid,
            per_source: cfg.per_source,
            range: cfg.port_range,
        })
}

/// Sleep until run time `t`.
pub async fn sleep_until(ctx: &Ctx, t: u64) {
    tokio::time::sleep_until(ctx.clock.tokio_instant(t)).await;
}

/// Connect (with site failover and backoff), hello and — if configured — log in. Counts
/// failed attempts and refused logins. `Err` carries the number of failed attempts.
pub async fn connect(
    ctx: &Ctx,
    gid: u64,
    site: usize,
    generation: &mut u64,
    jitter: bool,
    login: bool,
) -> Result<(Desktop, u32), u32> {
    let sites = ctx.cfg.sites.clone();
    connect_to(ctx, gid, &sites, site, generation, jitter, login, 0).await
}

/// [`connect`] over `sites` (failing over from `first`), giving up after `max_attempts`
/// (0: at the end of the window).
#[allow(clippy::too_many_arguments)]
pub async fn connect_to(
    ctx: &Ctx,
    gid: u64,
    sites: &[std::net::SocketAddr],
    first: usize,
    generation: &mut u64,
    jitter: bool,
    login: bool,
    max_attempts: u32,
) -> Result<(Desktop, u32), u32> {
    let cfg = &ctx.cfg;
    let mut id = identity(cfg, gid);
    if cfg.reconnect_tokens {
        id.reconnect = ctx.reconnect.borrow_mut().remove(&gid);
    }
    if cfg.resume {
        id.resume = ctx.resume.borrow_mut().remove(&gid);
    }
    let timeout = Duration::from_secs_f64(cfg.connect_timeout_s);
    let opts = ConnectOptions {
        timeout,
        backoff: Backoff {
            base: Duration::from_millis(cfg.backoff_base_ms),
            max: Duration::from_millis(cfg.backoff_max_ms),
            jitter,
        },
        max_attempts,
        read_buf: 1024,
    };
    let deadline = ctx.clock.tokio_instant(cfg.measure_end_ns());
    let via = match (&ctx.quic, &ctx.tls) {
        (Some(eps), _) => Via::Quic(eps, gid),
        (None, Some(tls)) => Via::Tls(source(cfg, gid), tls),
        (None, None) => Via::Tcp(source(cfg, gid)),
    };
    // A connection lost during the login is one more failed attempt, not a refused login: the
    // desktop connects again (resuming the session its hello opened) and logs in then.
    let mut lost_logins = 0;
    // When the connection was lost during the login (run ns): it counts as a drop, and the
    // next session as a reconnect, like any other.
    let mut lost_at: Option<u64> = None;
    loop {
        let resuming = id.resume.is_some();
        let (mut d, attempts) = match client::connect_sites(
            sites, first, via, generation, &id, &opts, deadline,
        )
        .await
        {
            Ok(x) => x,
            Err((e, attempts)) => {
                let mut s = ctx.stats.borrow_mut();
                s.clients.failed_attempts += u64::from(attempts);
                s.sample(|| {
                    format!("desktop {gid}: connect failed after {attempts} attempts: {e}")
                });
                return Err(attempts + lost_logins);
            }
        };
        {
            let mut s = ctx.stats.borrow_mut();
            s.clients.failed_attempts += u64::from(attempts);
            s.rec.record_setup(
                d.connect_time.as_nanos() as u64,
                d.hello_time.as_nanos() as u64,
            );
            if let Some(t) = lost_at.take() {
                s.clients.reconnects += 1;
                let away = ctx.clock.now_ns().saturating_sub(t).max(1);
                s.rec.back.saturating_record(away);
            }
        }
        if cfg.reconnect_tokens
            && let Some(t) = d.reconnect.take()
        {
            ctx.reconnect.borrow_mut().insert(gid, t);
        }
        // PROTOCOL.md §4.6: a resumed session's missed events follow its hello.
        match d.replayed {
            Some(n) => {
                let mut s = ctx.stats.borrow_mut();
                s.clients.resumed += 1;
                s.events.replayed += n;
            }
            None if resuming => ctx.stats.borrow_mut().clients.resume_refused += 1,
            None => {}
        }
        // Kept for the next drop: the token, and the last event received (the session's own,
        // if it was resumed; a fresh session numbers its events from 1).
        if cfg.resume
            && let Some(t) = d.resume.clone()
        {
            let last = match (d.replayed, &id.resume) {
                (Some(_), Some((_, last))) => *last,
                _ => 0,
            };
            ctx.resume.borrow_mut().insert(gid, (t, last));
        }
        // A resumed session is logged in already, if its agent was.
        let must_login = login && !(d.replayed.is_some() && ctx.logged_in.borrow().contains(&gid));
        if !must_login {
            return Ok((d, attempts + lost_logins));
        }
        ctx.logged_in.borrow_mut().remove(&gid);
        let place = format!("place-{gid}");
        let mut tries = 0;
        let lost = loop {
            // Counted when written, as the proxy counts it: each retry is another request.
            ctx.stats.borrow_mut().by_type.add(
                deskmux_codec::Service::Interaction,
                deskmux_codec::msg::ixn::AGENT_LOGIN,
                1,
            );
            match client::login(&mut d, &place, timeout).await {
                Ok(()) => break None,
                // The previous session of this agent may not be closed yet (reconnect storm).
                Err(ClientError::Refused { code, .. })
                    if code == deskmux_codec::ErrorCode::INVALID_STATE && tries < 20 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e @ ClientError::Refused { .. }) => {
                    let mut s = ctx.stats.borrow_mut();
                    s.clients.login_failed += 1;
                    s.sample(|| format!("desktop {gid}: login failed: {e}"));
                    return Err(attempts + lost_logins + 1);
                }
                Err(e) => break Some(e),
            }
        };
        let Some(e) = lost else {
            ctx.logged_in.borrow_mut().insert(gid);
            return Ok((d, attempts + lost_logins));
        };
        lost_logins += attempts + 1;
        lost_at = Some(ctx.clock.now_ns());
        {
            let mut s = ctx.stats.borrow_mut();
            s.clients.dropped += 1;
            s.clients.login_interrupted += 1;
            s.sample(|| format!("desktop {gid}: connection lost during the login: {e}"));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(lost_logins);
        }
        if cfg.reconnect_tokens {
            id.reconnect = ctx.reconnect.borrow_mut().remove(&gid);
        }
        if cfg.resume {
            id.resume = ctx.resume.borrow_mut().remove(&gid);
        }
    }
}

/// How long a desktop may stay silent before it sends a `HEARTBEAT`: the server's
/// `heartbeat_ms` (PROTOCOL.md §6: "either side sends one when it has been idle for
/// `heartbeat_ms`"; the peer closes after three silent intervals). Heartbeating more often only
/// adds load: every idle desktop's heartbeat is a round trip, a datagram each way plus an ACK
/// over QUIC.
pub fn heartbeat_ns(hello: &deskmux_codec::msg::ServerHello) -> u64 {
    u64::from(hello.heartbeat_ms.max(100)) * 1_000_000
}

/// Whether a `try_read` error means "nothing more now" rather than a dead connection.
pub fn would_block(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}

/// Count the open-loop requests from `next` on (every `period`) that fell due inside the window
/// but were never sent: the desktop's open loop is over (`ping`'s requests, or the media
/// servers' `SUBMIT`s in `agent` and `supervisor`). After a Ctrl-C only those due before the
/// stop count; the rest never fell due.
pub fn count_unsent(ctx: &Ctx, mut next: u64, period: u64) {
    let w = ctx.window;
    let until = if ctx.stopping() {
        ctx.clock.now_ns().min(w.end_ns)
    } else {
        w.end_ns
    };
    next = first_at_or_after(next, period, w.start_ns);
    let mut s = ctx.stats.borrow_mut();
    while next < until {
        if s.rec.record_unsent(next) {
            s.tally.due += 1;
            s.tally.unsent += 1;
        }
        next += period;
    }
}

/// The first time of the schedule `first + k * period` at or after `t`.
pub fn first_at_or_after(first: u64, period: u64, t: u64) -> u64 {
    if first >= t {
        first
    } else {
        first + (t - first).div_ceil(period) * period
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn schedule_catches_up_to_a_time() {
        assert_eq!(first_at_or_after(10, 5, 3), 10);
        assert_eq!(first_at_or_after(10, 5, 10), 10);
        assert_eq!(first_at_or_after(10, 5, 11), 15);
        assert_eq!(first_at_or_after(10, 5, 15), 15);
        assert_eq!(first_at_or_after(10, 5, 16), 20);
    }
}
