//! `callback`: simulated mobile clients of GMS (the seed on Genesys Mobile Services across
//! sites). Each client, in a loop:
//!
//! 1. asks for an access number (`ACCESS_REQUEST` in the `--group` resource group, from its own
//!    phone number, with user data carrying a token unique to this request);
//! 2. "dials" it after a think time (`--think`): the switch's `ACCESS_MATCH` with the dialled
//!    number and the client's number (and the access code, if one came back);
//! 3. checks that the match returned exactly its own request (caller number, token, booking
//!    id).
//!
//! A share of the bookings (`--abandon`) is never dialled, as when a user gives up: those
//! numbers must come back at the booking's expiry (the demo's leak check counts them).
//!
//! The clients speak the binary protocol (service 3), not the HTTP API a real mobile client
//! would use: the load is the service's (a booking and a match, each a committed transaction),
//! which is the same behind both, and the binary protocol lets one loadgen process drive tens
//! of thousands of clients through the proxy with the shared client, verification and
//! measurement machinery. The match is sent on the client's own session: what the server sees
//! of the switch is the message (dialled number, caller number, code), not the connection.
//!
//! Sites (`--site A --site B`, independent clusters with pools that do not intersect): a
//! request goes to the site that served the client last (at first: clients spread over the
//! sites); when it fails in the not-sent class (pool exhausted, site unavailable) or the site
//! cannot be reached or dies under it, the client asks the other site. The call is matched on
//! the booking's site first, then on the other. A client holds one session at a time.
//!
//! Counted per booking ([`crate::gms::GmsCounts`]): exhausted pools, expired bookings (not
//! found after their expiry), wrong matches, bookings lost on a live site, numbers handed to
//! two of this process's clients at once, and bookings stranded on a site that died.

use std::rc::Rc;

use deskmux_codec::msg::{gms, key};
use deskmux_codec::{BodyRef, ErrorCode, RetryClass, Service};

use crate::engine::Ctx;
use crate::scenario::session::{Answer, End, Session};

/// The message of an `UNAVAILABLE` answer that means "pool exhausted" (core-server's
/// `GmsError::Exhausted`); other `UNAVAILABLE`s are a site not serving.
const EXHAUSTED: &str = "no free access number";

/// Client `gid`'s own phone number: unique per client.
pub fn caller_number(gid: u64) -> String {
    format!("+4479{gid:09}")
}

/// A booking held.
#[derive(Debug, Clone)]
struct Booking {
    /// Where it was made (index into the sites).
    site: usize,
    /// Its id there.
    id: i64,
    /// The number to dial.
    number: String,
    /// The access code to key in, if any.
    code: Option<String>,
    /// When it lapses, ms since the Unix epoch (the server's clock).
    expires_ms: i64,
    /// The token the request carried in its user data.
    token: String,
}

/// One simulated mobile client.
struct Client<'a> {
    ctx: &'a Ctx,
    gid: u64,
    /// The session, and the site it is with.
    sess: Option<(usize, Session<'a>)>,
    /// Connection attempts so far (picks source ports).
    generation: u64,
    /// Whether it ever had a session.
    ever: bool,
    /// Requests made.
    seq: u64,
    /// Its phone number.
    caller: String,
    /// The site tried first for the next request: the one that served the last.
    home: usize,
}

impl<'a> Client<'a> {
    fn sites(&self) -> usize {
        self.ctx.cfg.sites.len().max(1)
    }

    /// The session with `site`: the current one, or a new one (a session with another site is
    /// closed first). `None` when the site cannot be reached.
    async fn session(&mut self, site: usize) -> Option<&mut Session<'a>> {
        if self.sess.as_ref().is_some_and(|(s, _)| *s != site) {
            self.close(false);
        }
        if self.sess.is_none() {
            let addr = [self.ctx.cfg.sites[site]];
            let jitter = self.ctx.cfg.jitter;
            let r = crate::scenario::connect_to(
                self.ctx,
                self.gid,
                &addr,
                0,
                &mut self.generation,
                jitter,
                false,
                2,
            )
            .await;
            let (d, _) = r.ok()?;
            {
                let mut s = self.ctx.stats.borrow_mut();
                if self.ever {
                    s.clients.reconnects += 1;
                } else {
                    s.clients.connected += 1;
                }
            }
            self.ever = true;
            self.ctx.connected();
            self.sess = Some((site, Session::new(self.ctx, self.gid, d)));
        }
        self.sess.as_mut().map(|(_, s)| s)
    }

    /// End the session (`dropped`: it died); returns the requests it left unanswered.
    fn close(&mut self, dropped: bool) -> u64 {
        let Some((_, mut s)) = self.sess.take() else {
            return 0;
        };
        self.ctx.disconnected();
        if dropped {
            self.ctx.stats.borrow_mut().clients.dropped += 1;
        }
        s.drain_lost()
    }

    /// A session ended under a request at the `k`th site tried: its unanswered request is
    /// retried at another site (interrupted: outcome unknown where it was) or, at the last
    /// site, lost.
    fn ended(&mut self, end: End, k: usize) {
        let left = self.close(end == End::Dropped);
        let last = end == End::Done || k + 1 >= self.sites();
        let mut s = self.ctx.stats.borrow_mut();
        if last {
            s.tally.lost += left;
            let gid = self.gid;
            if left > 0 {
                s.sample(|| format!("desktop {gid}: {left} GMS requests lost ({end:?})"));
            }
        } else {
            s.gms.interrupted += left;
        }
    }

    /// Wait until run time `t`, keeping the session alive (heartbeats) if there is one.
    async fn wait_until(&mut self, t: u64) {
        if let Some((_, s)) = &mut self.sess
            && s.next_event(t).await.is_err()
        {
            self.close(true);
        }
        crate::scenario::sleep_until(self.ctx, t).await;
    }

    /// Ask for a number, from the home site, then the others. `Err` when the run is over.
    async fn request(&mut self, intended: u64) -> Result<Option<Booking>, End> {
        let n = self.sites();
        self.seq += 1;
        let token = format!("{:x}.{:x}.{:08x}", self.gid, self.seq, fastrand::u32(..));
        self.ctx.stats.borrow_mut().gms.requests += 1;
        let group = self.ctx.cfg.gms_group.clone();
        let caller = self.caller.clone();
        let mut first = true;
        for k in 0..n {
            let site = (self.home + k) % n;
            if k > 0 {
                self.ctx.stats.borrow_mut().gms.retried_other_site += 1;
            }
            let Some(sess) = self.session(site).await else {
                continue;
            };
            sess.intended = Some(intended);
            sess.count_due = std::mem::take(&mut first);
            let r = sess
                .call("access_request", Service::Gms, gms::ACCESS_REQUEST, |w| {
                    w.str(key::GROUP, &group)?;
                    w.str(key::CALLER, &caller)?;
                    w.list(key::USER_DATA, |l| l.str("token", &token).map(drop))?;
                    Ok(())
                })
                .await;
            match r {
                Err(e) => {
                    self.ended(e, k);
                    if e == End::Done {
                        return Err(e);
                    }
                }
                Ok(Answer::Ok) => {
                    let b = BodyRef::new(&sess.body);
                    let booked = (|| {
                        Some(Booking {
                            site,
                            id: b.int(key::BOOKING).ok()?,
                            number: b.str(key::NUMBER).ok()?.to_string(),
                            code: b.opt_str(key::ACCESS_CODE).ok()?.map(str::to_string),
                            expires_ms: b.int(key::EXPIRES_MS).ok()?,
                            token: token.clone(),
                        })
                    })();
                    let mut s = self.ctx.stats.borrow_mut();
                    let Some(booked) = booked else {
                        s.tally.wrong += 1;
                        let gid = self.gid;
                        s.sample(|| format!("desktop {gid}: access_request: answer incomplete"));
                        return Ok(None);
                    };
                    s.tally.ok += 1;
                    s.gms.booked += 1;
                    s.gms.site(site).booked += 1;
                    drop(s);
                    self.home = site;
                    self.hold(&booked);
                    return Ok(Some(booked));
                }
                Ok(Answer::Error) => {
                    let (code, msg) = sess.last_error.take().unwrap_or((ErrorCode(0), "".into()));
                    if code == ErrorCode::UNAVAILABLE && msg.starts_with(EXHAUSTED) {
                        let mut s = self.ctx.stats.borrow_mut();
                        s.gms.exhausted += 1;
                        s.gms.site(site).exhausted += 1;
                    }
                    // Only the not-sent class may go to another site: nothing was booked.
                    if code.retry_class() != RetryClass::NotSent {
                        break;
                    }
                }
                Ok(Answer::Wrong) => break,
            }
        }
        self.ctx.stats.borrow_mut().gms.not_booked += 1;
        Ok(None)
    }

    /// Note `b` as held by this client; a number another client holds is a double booking.
    fn hold(&self, b: &Booking) {
        let now_ms = (self.ctx.clock.unix_us(self.ctx.clock.now_ns()) / 1000) as i64;
        let Ok(mut held) = self.ctx.live.held.lock() else {
            return;
        };
        let k = (b.site, b.number.clone());
        if let Some((holder, exp)) = held.get(&k)
            && *holder != self.gid
            && *exp > now_ms
        {
            let (holder, gid) = (*holder, self.gid);
            let mut s = self.ctx.stats.borrow_mut();
            s.gms.double_booked += 1;
            s.sample(|| {
                format!(
                    "desktop {gid}: number {} of site {} handed out while desktop {holder} holds it",
                    b.number, b.site
                )
            });
        }
        held.insert(k, (self.gid, b.expires_ms));
    }

    /// No longer held (about to be dialled).
    fn release(&self, b: &Booking) {
        if let Ok(mut held) = self.ctx.live.held.lock() {
            let k = (b.site, b.number.clone());
            if held.get(&k).is_some_and(|(h, _)| *h == self.gid) {
                held.remove(&k);
            }
        }
    }

    /// After the think time, the switch matches the call: on the booking's site, then the
    /// other. `Err` when the run is over.
    async fn dial(&mut self, b: Booking) -> Result<(), End> {
        let cfg = self.ctx.cfg.clone();
        let think = (cfg.think_s * (0.5 + fastrand::f64()) * 1e9) as u64;
        self.wait_until(self.ctx.clock.now_ns() + think).await;
        self.release(&b);
        self.ctx.stats.borrow_mut().gms.dialled += 1;
        let intended = self.ctx.clock.now_ns();
        let n = self.sites();
        let caller = self.caller.clone();
        let mut unreachable = false;
        let mut errors = false;
        for k in 0..n {
            let site = (b.site + k) % n;
            if k > 0 {
                self.ctx.stats.borrow_mut().gms.retried_other_site += 1;
            }
            let Some(sess) = self.session(site).await else {
                unreachable |= k == 0;
                continue;
            };
            sess.intended = Some(intended);
            sess.count_due = false;
            let r = sess
                .call("access_match", Service::Gms, gms::ACCESS_MATCH, |w| {
                    w.str(key::NUMBER, &b.number)?;
                    w.str(key::CALLER, &caller)?;
                    if let Some(c) = &b.code {
                        w.str(key::ACCESS_CODE, c)?;
                    }
                    Ok(())
                })
                .await;
            match r {
                Err(e) => {
                    unreachable |= k == 0;
                    self.ended(e, k);
                    if e == End::Done {
                        return Err(e);
                    }
                }
                Ok(Answer::Ok) => {
                    let body = BodyRef::new(&sess.body);
                    let right = body.str(key::CALLER).ok() == Some(caller.as_str())
                        && body
                            .list(key::USER_DATA)
                            .ok()
                            .and_then(|l| l.str("token").ok())
                            == Some(b.token.as_str())
                        && (site != b.site || body.int(key::BOOKING).ok() == Some(b.id));
                    let mut s = self.ctx.stats.borrow_mut();
                    if right {
                        s.tally.ok += 1;
                        s.gms.matched += 1;
                        s.gms.site(b.site).matched += 1;
                        s.gms.matched_in_window += u64::from(self.ctx.window.contains(intended));
                    } else {
                        s.tally.wrong += 1;
                        s.gms.wrong_matches += 1;
                        let gid = self.gid;
                        s.sample(|| {
                            format!(
                                "desktop {gid}: WRONG MATCH: number {} (booking {} at site {}) \
                                 matched at site {site} to another request",
                                b.number, b.id, b.site
                            )
                        });
                    }
                    return Ok(());
                }
                Ok(Answer::Error) => {
                    let code = sess.last_error.take().map_or(ErrorCode(0), |e| e.0);
                    errors |= code != ErrorCode::NOT_FOUND;
                }
                Ok(Answer::Wrong) => return Ok(()),
            }
        }
        let now_ms = (self.ctx.clock.unix_us(self.ctx.clock.now_ns()) / 1000) as i64;
        let mut s = self.ctx.stats.borrow_mut();
        if now_ms >= b.expires_ms {
            s.gms.expired += 1;
        } else if unreachable {
            s.gms.stranded += 1;
        } else if errors {
            s.gms.match_errors += 1;
        } else {
            s.gms.lost_bookings += 1;
            let gid = self.gid;
            s.sample(|| {
                format!(
                    "desktop {gid}: booking {} of number {} at site {} not found before its expiry",
                    b.id, b.number, b.site
                )
            });
        }
        Ok(())
    }
}

/// Run one mobile client.
pub async fn run(ctx: Rc<Ctx>, gid: u64) {
    let cfg = ctx.cfg.clone();
    let connect_at = cfg.connect_at_ns(gid);
    crate::scenario::sleep_until(&ctx, connect_at).await;
    let nsites = cfg.sites.len().max(1);
    let mut c = Client {
        ctx: &ctx,
        gid,
        sess: None,
        generation: 0,
        ever: false,
        seq: 0,
        caller: caller_number(gid),
        home: gid as usize % nsites,
    };
    // Connected during the ramp, as the other scenarios' desktops are.
    let _ = c.session(c.home).await;
    // Open loop: one request per client every `period`, on schedule (a late cycle's latency
    // counts from its intended time); closed loop: back to back.
    let period = cfg
        .rate
        .map(|r| ((cfg.desktops as f64 / r.max(1e-9)) * 1e9) as u64)
        .map(|p| p.max(1));
    let mut next = connect_at + period.map(|p| fastrand::u64(0..p)).unwrap_or(0);
    let think = (cfg.think_s * 1e9) as u64;
    loop {
        if period.is_some() {
            c.wait_until(next).await;
        }
        let now = ctx.clock.now_ns();
        if now >= cfg.measure_end_ns() || ctx.stopping() {
            break;
        }
        let intended = if period.is_some() { next } else { now };
        match c.request(intended).await {
            Err(_) => break,
            Ok(Some(_)) if fastrand::f64() < cfg.abandon => {
                // The user gives up: the booking holds its number until it expires.
                ctx.stats.borrow_mut().gms.abandoned += 1;
                if period.is_none() {
                    c.wait_until(now + think).await;
                }
            }
            Ok(Some(b)) => {
                if c.dial(b).await.is_err() {
                    break;
                }
            }
            // Nothing booked: a closed-loop client waits a think time before asking again.
            Ok(None) if period.is_none() => c.wait_until(now + think).await,
            Ok(None) => {}
        }
        if let Some(p) = period {
            next += p;
        }
    }
    c.close(false);
    if !c.ever {
        ctx.stats.borrow_mut().clients.failed += 1;
        ctx.live
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_numbers_are_unique_and_fit() {
        assert_ne!(caller_number(1), caller_number(10));
        assert_eq!(caller_number(7), "+4479000000007");
        assert!(caller_number(u64::from(u32::MAX)).len() <= 64);
    }
}
