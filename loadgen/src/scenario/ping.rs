//! `ping`: the smallest request/response (`ECHO`), to measure the proxy itself. Also the load
//! of the `storm` scenario, which drops and reconnects every desktop at scheduled times.
//!
//! Per request: the desktop's pre-encoded echo frame gets its correlation id and unique
//! payload patched in place and is written from there (several requests, or heartbeat answers
//! waiting, go through a reused write buffer); answers are parsed in place from the reader's
//! buffer. Nothing is allocated per request.
//!
//! In open loop every request that falls due inside the window is accounted for: it is sent
//! (then answered, lost or errored), or — when the window ends while it waits behind the
//! in-flight cap, a dead connection or loadgen itself — counted `unsent`, with its lateness in
//! the corrected histogram. Sends sleep on the thread's precise timers ([`crate::timer`]).

use std::rc::Rc;

use deskmux_codec::head::restamp_correlation;
use deskmux_codec::{ErrorCode, Flags, HEAD_LEN, Head, Kind, Service, msg};

use crate::client::{self, CLIENT_CORR_BASE, Desktop};
use crate::engine::Ctx;
use crate::scenario::{self, storm};
use crate::verify::{self, Pending, Verdict};

/// A request in flight: intended and actual send time (run ns).
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// When it should have been sent (open loop schedule; = `sent` in closed loop).
    pub intended: u64,
    /// When it was written.
    pub sent: u64,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The run is over.
    Done,
    /// The connection died (or the peer sent GO_AWAY): reconnect to the next site.
    Dropped,
    /// A storm round: drop deliberately and reconnect.
    Storm,
}

/// Cap on requests in flight per desktop in open loop (also bounded by the server's
/// `max_in_flight`): requests due beyond it wait, and their wait counts in corrected latency.
const OPEN_LOOP_CAP: u32 = 64;

/// Run one ping (or storm) desktop.
pub async fn run(ctx: Rc<Ctx>, gid: u64) {
    let cfg = ctx.cfg.clone();
    let connect_at = cfg.connect_at_ns(gid);
    scenario::sleep_until(&ctx, connect_at).await;
    let nsites = cfg.sites.len().max(1);
    let mut site = gid as usize % nsites;
    let mut pending: Pending<Sent> = Pending::new(1);
    let rounds = cfg.storm_rounds();
    let mut next_round = 0usize;
    let mut storm_drop: Option<usize> = None;
    let period = cfg
        .rate
        .map(|r| ((cfg.desktops as f64 / r.max(1e-9)) * 1e9) as u64)
        .map(|p| p.max(1));
    // Spread desktops' schedules over one period.
    let mut next_intended = connect_at + period.map(|p| fastrand::u64(0..p)).unwrap_or(0);
    let mut ever = false;
    let mut generation = 0u64;
    loop {
        if ctx.clock.now_ns() >= cfg.measure_end_ns() || ctx.stopping() {
            if !ever {
                ctx.stats.borrow_mut().clients.failed += 1;
                ctx.live
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            break;
        }
        let jitter = match storm_drop {
            Some(r) => {
                let (_, j) = rounds[r];
                if j {
                    let d = storm::initial_delay(cfg.storm_spread_ms, fastrand::f64());
                    tokio::time::sleep(d).await;
                }
                j
            }
            None => cfg.jitter,
        };
        let res = scenario::connect(&ctx, gid, site, &mut generation, jitter, cfg.login).await;
        let (mut d, attempts) = match res {
            Ok(x) => x,
            Err(_) => {
                let mut s = ctx.stats.borrow_mut();
                if let Some(r) = storm_drop {
                    s.storm[r].failed += 1;
                } else if !ever {
                    s.clients.failed += 1;
                    ctx.live
                        .failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                break;
            }
        };
        {
            let mut s = ctx.stats.borrow_mut();
            if let Some(r) = storm_drop.take() {
                let took = ctx.clock.now_ns().saturating_sub(rounds[r].0).max(1);
                s.storm[r].reconnect.saturating_record(took);
                s.storm[r].failed_attempts += u64::from(attempts);
            } else if ever {
                s.clients.reconnects += 1;
            } else {
                s.clients.connected += 1;
            }
        }
        ever = true;
        ctx.connected();
        let storm_at = rounds.get(next_round).map(|r| r.0);
        let end = session(
            &ctx,
            gid,
            &mut d,
            &mut pending,
            &mut next_intended,
            period,
            storm_at,
        )
        .await;
        ctx.disconnected();
        let lost = pending.drain().count() as u64;
        if lost > 0 {
            let mut s = ctx.stats.borrow_mut();
            s.tally.lost += lost;
            s.sample(|| format!("desktop {gid}: {lost} requests lost ({end:?})"));
        }
        match end {
            End::Done => break,
            End::Dropped => {
                ctx.stats.borrow_mut().clients.dropped += 1;
                site = (d.site + 1) % nsites;
            }
            End::Storm => {
                storm_drop = Some(next_round);
                next_round += 1;
                site = d.site;
            }
        }
        drop(d);
    }
    if let Some(p) = period {
        scenario::count_unsent(&ctx, next_intended, p);
    }
}

/// The pre-encoded echo request of desktop `gid`; [`patch`] fills in each request.
/// Its payload is `payload` bytes (`--payload`); the filler past the unique part is written
/// here once.
fn echo_template(service: u8, tenant: u32, gid: u64, payload: usize) -> Vec<u8> {
    let body_len = verify::echo_body_len(payload);
    let mut head = Head::new(Kind::Request, Service::from_u8(service), msg::ixn::ECHO);
    head.tenant = tenant;
    head.body_len = body_len as u32;
    let mut f = vec![0u8; HEAD_LEN + body_len];
    f[..HEAD_LEN].copy_from_slice(&head.to_bytes());
    verify::write_echo_body(&mut f[HEAD_LEN..], 0, gid);
    f
}

/// Stamp correlation `corr` and its unique payload into the template.
fn patch(frame: &mut [u8], corr: u64, gid: u64) {
    restamp_correlation(frame, corr);
    verify::patch_echo_body(&mut frame[HEAD_LEN..], corr, gid);
}

/// Queue request `corr` for writing. The usual case, one request and nothing else to write,
/// is written straight from the patched template (`*lone`), not copied into `wbuf` first; a
/// second request moves the first into `wbuf` before the template is patched again.
fn queue(frame: &mut [u8], wbuf: &mut Vec<u8>, lone: &mut bool, corr: u64, gid: u64) {
    if *lone {
        wbuf.extend_from_slice(frame);
        *lone = false;
    }
    patch(frame, corr, gid);
    if wbuf.is_empty() {
        *lone = true;
    } else {
        wbuf.extend_from_slice(frame);
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    ctx: &Ctx,
    gid: u64,
    d: &mut Desktop,
    pending: &mut Pending<Sent>,
    next_intended: &mut u64,
    period: Option<u64>,
    storm_at: Option<u64>,
) -> End {
    let cfg = &ctx.cfg;
    let end = cfg.measure_end_ns();
    let drain_end = cfg.drain_end_ns();
    let mut frame = echo_template(cfg.echo_service, d.tenant, gid, cfg.payload);
    let window = cfg.window.max(1).min(d.hello.max_in_flight.max(1)) as usize;
    let cap = OPEN_LOOP_CAP.min(d.hello.max_in_flight.max(1)) as usize;
    let mut wbuf: Vec<u8> = Vec::with_capacity(frame.len() * window.max(4) + 64);
    // `frame` itself holds the one request to write (see [`queue`]).
    let mut lone = false;
    let hb_ns = scenario::heartbeat_ns(&d.hello);
    let mut hb_corr = CLIENT_CORR_BASE + 16;
    let mut last_write = ctx.clock.now_ns();
    let stop_at = storm_at
        .map(|s| s.saturating_sub(storm::QUIESCE_NS))
        .unwrap_or(u64::MAX)
        .min(end);
    let mut go_away = false;
    // Whether the first iteration at or past `stop_at` has run (see `sending` below).
    let mut past_stop = false;
    let mut sleep = ctx.timers.sleep_until(0);
    let echo_service = Service::from_u8(cfg.echo_service);
    loop {
        let now = ctx.clock.now_ns();
        // Open loop: the first iteration at or past `stop_at` still sends what fell due before
        // it, so a late wake-up of loadgen's own does not turn due requests into unsent ones;
        // what the in-flight cap holds back then stays unsent. Closed loop: nothing after it.
        let sending =
            (now < stop_at || (period.is_some() && !past_stop)) && !go_away && !ctx.stopping();
        past_stop |= now >= stop_at;
        if sending {
            let mut n = 0;
            // Of which intended inside the window.
            let mut due = 0;
            match period {
                None => {
                    while pending.in_flight() < window {
                        let corr = pending.issue(Sent {
                            intended: now,
                            sent: now,
                        });
                        queue(&mut frame, &mut wbuf, &mut lone, corr, gid);
                        n += 1;
                    }
                    if ctx.window.contains(now) {
                        due = n;
                    }
                }
                Some(p) => {
                    while *next_intended <= now
                        && *next_intended < stop_at
                        && pending.in_flight() < cap
                    {
                        let corr = pending.issue(Sent {
                            intended: *next_intended,
                            sent: now,
                        });
                        queue(&mut frame, &mut wbuf, &mut lone, corr, gid);
                        due += u64::from(ctx.window.contains(*next_intended));
                        *next_intended += p;
                        n += 1;
                    }
                }
            }
            if n > 0 {
                let mut s = ctx.stats.borrow_mut();
                s.tally.sent += n;
                s.tally.due += due;
                s.by_type.add(echo_service, msg::ixn::ECHO, n);
            }
        }
        if wbuf.is_empty() && !lone && now.saturating_sub(last_write) >= hb_ns {
            let mut h = Head::new(Kind::Request, Service::Control, msg::control::HEARTBEAT);
            h.tenant = d.tenant;
            h.correlation = hb_corr;
            hb_corr += 1;
            wbuf.extend_from_slice(&h.to_bytes());
            ctx.stats
                .borrow_mut()
                .by_type
                .add(Service::Control, msg::control::HEARTBEAT, 1);
        }
        if lone || !wbuf.is_empty() {
            let out: &[u8] = if lone { &frame } else { &wbuf };
            if d.conn.write_all(out).await.is_err() {
                return End::Dropped;
            }
            wbuf.clear();
            lone = false;
            last_write = now;
        }
        if let Some(s) = storm_at {
            // The drop is deliberate: answers still on their way are waited for (bounded),
            // not counted as lost.
            if now >= s && (pending.in_flight() == 0 || now >= s + storm::LATE_ANSWERS_NS) {
                return End::Storm;
            }
        }
        if pending.in_flight() == 0 {
            if now >= end || ctx.stopping() {
                return End::Done;
            }
            if go_away {
                return End::Dropped;
            }
        }
        if now >= drain_end {
            return End::Done;
        }
        // Next wake-up: a heartbeat, the next scheduled send, the end of sending, a storm,
        // the end of the drain — or a read.
        let mut wake = last_write + hb_ns;
        if sending {
            if let Some(_p) = period
                && pending.in_flight() < cap
            {
                wake = wake.min(*next_intended);
            }
            wake = wake.min(stop_at);
        }
        if let Some(s) = storm_at {
            // Past the storm's time, only the late-answer bound (or a read) wakes it.
            wake = wake.min(if now < s {
                s
            } else {
                s + storm::LATE_ANSWERS_NS
            });
        }
        wake = wake.min(drain_end).max(now);
        // The read the wait made, if it was woken by data (the wait itself reads: it is
        // cancel-safe), judged below like any other read.
        let mut waited = None;
        if wake > now {
            sleep.reset(wake);
            tokio::select! {
                biased;
                r = d.reader.read_conn(&mut d.conn) => waited = Some(r),
                _ = &mut sleep => {}
            }
        }
        // Read everything available and judge each frame.
        loop {
            let r = waited
                .take()
                .unwrap_or_else(|| d.reader.try_read_conn(&mut d.conn));
            match r {
                Ok(0) => return End::Dropped,
                Ok(_) => {
                    let recv = ctx.clock.now_ns();
                    let mut s = ctx.stats.borrow_mut();
                    loop {
                        let (head, body) = match d.reader.next_frame() {
                            Ok(Some(x)) => x,
                            Ok(None) => break,
                            Err(e) => {
                                s.sample(|| format!("desktop {gid}: framing lost: {e}"));
                                return End::Dropped;
                            }
                        };
                        match head.kind {
                            Kind::Response if head.correlation >= CLIENT_CORR_BASE => {}
                            Kind::Response => {
                                let (v, e) = verify::judge_echo(
                                    pending,
                                    &head,
                                    body,
                                    cfg.echo_service,
                                    gid,
                                    cfg.payload,
                                );
                                s.tally.count(v);
                                match (v, e) {
                                    (Verdict::Ok, Some(e)) => {
                                        s.rec.record(e.intended, e.sent, recv);
                                    }
                                    (Verdict::Ok, None) => {}
                                    (Verdict::Error(_), _) => {
                                        if let Some((code, m)) = error_of(&head, body) {
                                            s.sample(|| {
                                                format!(
                                                    "desktop {gid}: error response {code:#06x} {m}"
                                                )
                                            });
                                        }
                                    }
                                    (Verdict::Wrong(w), _) => s.sample(|| {
                                        format!(
                                            "desktop {gid}: wrong answer {w:?} corr {} type {:#06x} len {}",
                                            head.correlation,
                                            head.msg_type,
                                            body.len()
                                        )
                                    }),
                                }
                            }
                            Kind::Request
                                if head.service == Service::Control
                                    && head.msg_type == msg::control::HEARTBEAT =>
                            {
                                wbuf.extend_from_slice(&client::heartbeat_answer(&head));
                            }
                            Kind::Control if head.msg_type == msg::control::GO_AWAY => {
                                go_away = true;
                            }
                            Kind::Control if head.flags.has(Flags::ERROR) => {
                                if let Some((code, m)) = error_of(&head, body) {
                                    // The upstream session is gone (the proxy lost the link,
                                    // e.g. the primary died): its later requests would only
                                    // get LINK_LOST_UNSENT, so stop sending, let the pending
                                    // ones be answered and reconnect (a new hello lands on a
                                    // live instance or the backup), as after GO_AWAY.
                                    if code == ErrorCode::LINK_LOST.0 {
                                        go_away = true;
                                    }
                                    s.sample(|| {
                                        format!("desktop {gid}: control error {code:#06x} {m}")
                                    });
                                }
                            }
                            Kind::Event => s.events.received += 1,
                            _ => {}
                        }
                    }
                }
                Err(e) if scenario::would_block(&e) => break,
                Err(_) => return End::Dropped,
            }
        }
    }
}

/// The code and message of an error frame.
fn error_of(head: &Head, body: &[u8]) -> Option<(u16, String)> {
    if !head.flags.has(Flags::ERROR) {
        return None;
    }
    msg::ErrorBody::read(deskmux_codec::BodyRef::new(body))
        .ok()
        .map(|e| (e.code.0, e.message.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{ECHO_BODY_LEN, ECHO_PAYLOAD_LEN};

    #[test]
    fn template_patch_is_a_valid_echo_request() {
        let mut f = echo_template(1, 7, 5, ECHO_PAYLOAD_LEN);
        patch(&mut f, 99, 5);
        let h = Head::parse(&f).unwrap().unwrap();
        assert_eq!(h.correlation, 99);
        assert_eq!(h.tenant, 7);
        assert_eq!(h.body_len as usize, ECHO_BODY_LEN);
        assert!(verify::echo_body_matches(
            &f[HEAD_LEN..],
            99,
            5,
            ECHO_PAYLOAD_LEN
        ));
        patch(&mut f, 100, 5);
        assert!(verify::echo_body_matches(
            &f[HEAD_LEN..],
            100,
            5,
            ECHO_PAYLOAD_LEN
        ));
    }

    /// One request is written from the template itself; a second moves the first into the
    /// write buffer before the template is patched again, so both go out intact and in order;
    /// a heartbeat answer already waiting keeps its place before them.
    #[test]
    fn queued_requests_go_out_intact_and_in_order() {
        let one = |corr| {
            let mut f = echo_template(1, 7, 5, ECHO_PAYLOAD_LEN);
            patch(&mut f, corr, 5);
            f
        };
        let mut frame = echo_template(1, 7, 5, ECHO_PAYLOAD_LEN);
        let mut wbuf = Vec::new();
        let mut lone = false;
        queue(&mut frame, &mut wbuf, &mut lone, 1, 5);
        assert!(lone && wbuf.is_empty());
        assert_eq!(frame, one(1));
        queue(&mut frame, &mut wbuf, &mut lone, 2, 5);
        queue(&mut frame, &mut wbuf, &mut lone, 3, 5);
        assert!(!lone);
        assert_eq!(wbuf, [one(1), one(2), one(3)].concat());
        let (mut wbuf, mut lone) = (b"hb".to_vec(), false);
        queue(&mut frame, &mut wbuf, &mut lone, 4, 5);
        assert!(!lone);
        assert_eq!(wbuf, [b"hb".to_vec(), one(4)].concat());
    }
}
