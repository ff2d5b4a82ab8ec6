//! A desktop session for the request/response-at-a-time scenarios (`agent`, `supervisor`):
//! send one request, wait for its answer while handling events and heartbeats, verify it
//! (correlation, message type, content) and record its latency. Less lean than `ping`'s loop,
//! but these scenarios are paced by think time and events, not by raw request rate.

use std::collections::VecDeque;

use bytes::BytesMut;
use deskmux_codec::{BodyError, BodyRef, BodyWriter, ErrorCode, Flags, Head, Kind, Service, msg};

use crate::client::{self, CLIENT_CORR_BASE, Desktop};
use crate::engine::{Ctx, Delivery, merge_delivery};
use crate::scenario::ping::Sent;
use crate::verify::{Match, Pending, SeqTracker, Verdict, Wrong, error_class};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The run is over.
    Done,
    /// The connection died.
    Dropped,
}

/// A unicast event the scenario acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An interaction offered to this agent.
    Invite(i64),
    /// An invite withdrawn.
    Revoked(i64),
}

/// Index of a queue event name, for keying deliveries across subscriptions.
fn event_code(e: &str) -> u64 {
    match e {
        "submitted" => 1,
        "invited" => 2,
        "accepted" => 3,
        "rejected" => 4,
        "revoked" => 5,
        "placed" => 6,
        "completed" => 7,
        _ => 0,
    }
}

/// One connected desktop running a sequential scenario.
pub struct Session<'a> {
    /// Thread context.
    pub ctx: &'a Ctx,
    /// Desktop id.
    pub gid: u64,
    /// The connection.
    pub d: Desktop,
    /// Requests in flight (one at a time here).
    pending: Pending<(Sent, &'static str, u16)>,
    /// Encode buffer.
    wbuf: BytesMut,
    /// Body of the last answer.
    pub body: Vec<u8>,
    /// Unicast events waiting to be handled.
    pub events: VecDeque<Event>,
    /// Subscription sequence tracking.
    pub seq: SeqTracker,
    /// Last write, run ns.
    last_write: u64,
    /// Heartbeat period (half the server's interval).
    hb_ns: u64,
    /// Next heartbeat correlation id.
    hb_corr: u64,
    /// Intended send time of the next request (open-loop submitters); `None`: now.
    pub intended: Option<u64>,
    /// (tenant, subscription id) of the subscription events seen on this session.
    pub sub: Option<(u32, u64)>,
    /// Whether the next request counts as due in the window (a retry of one already counted,
    /// or the second half of a callback, does not).
    pub count_due: bool,
    /// The code and message of the last error answer.
    pub last_error: Option<(ErrorCode, String)>,
    /// The last unicast event's `useq` (PROTOCOL.md §4.6): where a resume continues from.
    pub useq: u64,
    /// The peer sent `GO_AWAY` (it drains): once the request in flight is answered, the
    /// desktop leaves and resumes elsewhere (PROTOCOL.md §6, §4.6) instead of waiting to be
    /// closed.
    go_away: bool,
}

/// How a request was answered (see [`Session::call`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answered with the right message type; its body is in [`Session::body`].
    Ok,
    /// An error answer; its code and message are in [`Session::last_error`].
    Error,
    /// A wrong answer (type, duplicate), counted.
    Wrong,
}

impl<'a> Session<'a> {
    /// Wrap a connected desktop.
    pub fn new(ctx: &'a Ctx, gid: u64, d: Desktop) -> Session<'a> {
        let hb_ns = crate::scenario::heartbeat_ns(&d.hello);
        let useq = ctx.resume.borrow().get(&gid).map_or(0, |(_, last)| *last);
        Session {
            ctx,
            gid,
            d,
            pending: Pending::new(1),
            wbuf: BytesMut::with_capacity(512),
            body: Vec::with_capacity(256),
            events: VecDeque::new(),
            seq: SeqTracker::default(),
            last_write: ctx.clock.now_ns(),
            hb_ns,
            hb_corr: CLIENT_CORR_BASE + 16,
            intended: None,
            sub: None,
            count_due: true,
            last_error: None,
            useq,
            go_away: false,
        }
    }

    /// Requests unanswered; they are lost when the session ends.
    pub fn drain_lost(&mut self) -> u64 {
        self.drain_lost_oldest().0
    }

    /// Requests unanswered, and the oldest of them (its operation and when it was sent), so
    /// that a report of a loss says what was lost.
    pub fn drain_lost_oldest(&mut self) -> (u64, Option<(&'static str, u64)>) {
        let mut n = 0;
        let mut oldest: Option<(&'static str, u64)> = None;
        for (sent, op, _) in self.pending.drain() {
            n += 1;
            if oldest.is_none_or(|o| sent.sent < o.1) {
                oldest = Some((op, sent.sent));
            }
        }
        (n, oldest)
    }

    /// Send a request and wait for its answer (until the drain deadline). Returns `Ok(true)`
    /// when it was answered correctly and `check` accepts the body, `Ok(false)` for an error
    /// or wrong answer (counted), `Err` when the session ended.
    pub async fn request(
        &mut self,
        op: &'static str,
        service: Service,
        msg_type: u16,
        body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
        check: impl FnOnce(BodyRef<'_>) -> bool,
    ) -> Result<bool, End> {
        if self.call(op, service, msg_type, body).await? != Answer::Ok {
            return Ok(false);
        }
        let ok = check(BodyRef::new(&self.body));
        let mut s = self.ctx.stats.borrow_mut();
        if ok {
            s.tally.ok += 1;
        } else {
            s.tally.wrong += 1;
            let gid = self.gid;
            s.sample(|| format!("desktop {gid}: {op}: answer content is wrong"));
        }
        Ok(ok)
    }

    /// Send a request and wait for its answer (until the drain deadline). Error and wrong
    /// answers are counted; an answer of the right type is left for the caller to check and
    /// count (`tally.ok` or `tally.wrong`). `Err` when the session ended.
    pub async fn call(
        &mut self,
        op: &'static str,
        service: Service,
        msg_type: u16,
        body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
    ) -> Result<Answer, End> {
        if self.go_away {
            return Err(End::Dropped);
        }
        let now = self.ctx.clock.now_ns();
        let deadline = self.ctx.cfg.drain_end_ns();
        if now >= deadline {
            // Past the drain loadgen no longer waits for answers: a request sent now could
            // only be counted lost. It is not sent (a step of work begun in the window).
            return Err(End::Done);
        }
        let intended = self.intended.take().unwrap_or(now).min(now);
        let count_due = std::mem::replace(&mut self.count_due, true);
        let corr = self.pending.issue((
            Sent {
                intended,
                sent: now,
            },
            op,
            msg_type,
        ));
        self.wbuf.clear();
        if client::encode_request(&mut self.wbuf, service, msg_type, self.d.tenant, corr, body)
            .is_err()
        {
            return Ok(Answer::Wrong);
        }
        if self.d.conn.write_all(&self.wbuf).await.is_err() {
            return Err(End::Dropped);
        }
        self.last_write = now;
        {
            let mut s = self.ctx.stats.borrow_mut();
            s.tally.sent += 1;
            s.tally.due += u64::from(count_due && self.ctx.window.contains(intended));
            s.by_type.add(service, msg_type, 1);
        }
        loop {
            if let Some(v) = self.pump(Some(corr), deadline).await? {
                return Ok(match v {
                    Verdict::Ok => Answer::Ok,
                    Verdict::Error(_) => Answer::Error,
                    Verdict::Wrong(_) => Answer::Wrong,
                });
            }
            if self.ctx.clock.now_ns() >= deadline {
                return Err(End::Done);
            }
        }
    }

    /// Wait for a unicast event until run time `until`; handles subscription events and
    /// heartbeats meanwhile. `Ok(None)` at `until`.
    pub async fn next_event(&mut self, until: u64) -> Result<Option<Event>, End> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if self.go_away {
                return Err(End::Dropped);
            }
            if self.ctx.clock.now_ns() >= until || self.ctx.stopping() {
                return Ok(None);
            }
            self.pump(None, until).await?;
        }
    }

    /// Read and handle frames until `corr` is answered (returns its verdict), or an event was
    /// queued, or `until`. Sends heartbeats when idle.
    async fn pump(&mut self, corr: Option<u64>, until: u64) -> Result<Option<Verdict>, End> {
        loop {
            let now = self.ctx.clock.now_ns();
            if now.saturating_sub(self.last_write) >= self.hb_ns {
                let mut h = Head::new(Kind::Request, Service::Control, msg::control::HEARTBEAT);
                h.tenant = self.d.tenant;
                h.correlation = self.hb_corr;
                self.hb_corr += 1;
                if self.d.conn.write_all(&h.to_bytes()).await.is_err() {
                    return Err(End::Dropped);
                }
                self.ctx.stats.borrow_mut().by_type.add(
                    Service::Control,
                    msg::control::HEARTBEAT,
                    1,
                );
                self.last_write = now;
            }
            // Frames already buffered first.
            let mut verdict = None;
            let mut answers: Vec<[u8; deskmux_codec::HEAD_LEN]> = Vec::new();
            loop {
                let (head, body) = match self.d.reader.next_frame() {
                    Ok(Some(x)) => x,
                    Ok(None) => break,
                    Err(_) => return Err(End::Dropped),
                };
                match head.kind {
                    Kind::Response if head.correlation >= CLIENT_CORR_BASE => {}
                    Kind::Response => {
                        let recv = self.ctx.clock.now_ns();
                        let mut s = self.ctx.stats.borrow_mut();
                        let gid = self.gid;
                        let v = match self.pending.take(head.correlation) {
                            Match::Pending((sent, op, ty)) => {
                                if head.flags.has(Flags::ERROR) {
                                    let e = msg::ErrorBody::read(BodyRef::new(body))
                                        .map(|e| (e.code, e.message.to_string()))
                                        .unwrap_or((ErrorCode(0xFFFF), String::new()));
                                    let m = format!("{} {}", e.0.name(), e.1);
                                    // The callback's expected refusals (pool exhausted,
                                    // booking expired) are counted per booking, not sampled.
                                    let expected = op.starts_with("access_")
                                        && matches!(
                                            e.0,
                                            ErrorCode::UNAVAILABLE | ErrorCode::NOT_FOUND
                                        );
                                    if Some(head.correlation) == corr {
                                        self.last_error = Some(e);
                                    }
                                    if !expected {
                                        s.sample(|| format!("desktop {gid}: {op}: error {m}"));
                                    }
                                    Verdict::Error(error_class(body))
                                } else if head.msg_type != ty {
                                    Verdict::Wrong(Wrong::MessageType)
                                } else {
                                    s.rec.record(sent.intended, sent.sent, recv);
                                    if s.rec.window.contains(sent.intended) {
                                        s.ops
                                            .entry(op)
                                            .or_insert_with(crate::recorder::new_hist)
                                            .saturating_record(
                                                recv.saturating_sub(sent.sent).max(1),
                                            );
                                    }
                                    self.body.clear();
                                    self.body.extend_from_slice(body);
                                    Verdict::Ok
                                }
                            }
                            Match::Duplicate => Verdict::Wrong(Wrong::Duplicate),
                            Match::Unknown => Verdict::Wrong(Wrong::UnknownCorrelation),
                        };
                        // Ok is counted by `request` after the content check.
                        if v != Verdict::Ok {
                            s.tally.count(v);
                            if let Verdict::Wrong(w) = v {
                                s.sample(|| {
                                    format!(
                                        "desktop {gid}: wrong answer {w:?} corr {}",
                                        head.correlation
                                    )
                                });
                            }
                        }
                        if Some(head.correlation) == corr {
                            verdict = Some(v);
                        }
                    }
                    Kind::Request
                        if head.service == Service::Control
                            && head.msg_type == msg::control::HEARTBEAT =>
                    {
                        answers.push(client::heartbeat_answer(&head));
                    }
                    Kind::Event => {
                        if head.flags.has(Flags::BROADCAST)
                            && head.msg_type == msg::ixn::QUEUE_EVENT
                        {
                            self.sub = Some((head.tenant, head.correlation));
                        }
                        on_event(
                            self.ctx,
                            &mut self.seq,
                            &mut self.useq,
                            &mut self.events,
                            &head,
                            body,
                        )
                    }
                    Kind::Control if head.msg_type == msg::control::GO_AWAY => {
                        self.go_away = true;
                    }
                    _ => {}
                }
            }
            for a in &answers {
                if self.d.conn.write_all(a).await.is_err() {
                    return Err(End::Dropped);
                }
            }
            if verdict.is_some() {
                return Ok(verdict);
            }
            if corr.is_none() && (self.go_away || !self.events.is_empty()) {
                return Ok(None);
            }
            let now = self.ctx.clock.now_ns();
            if now >= until || (corr.is_none() && self.ctx.stopping()) {
                return Ok(None);
            }
            let wake = (self.last_write + self.hb_ns).min(until).max(now + 1);
            let read = tokio::time::timeout_at(
                self.ctx.clock.tokio_instant(wake),
                self.d.reader.read_conn(&mut self.d.conn),
            )
            .await;
            match read {
                Err(_) => {}
                Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Dropped),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Handle one event: subscription events (sequence, delivery time), unicast events (queued).
fn on_event(
    ctx: &Ctx,
    seq: &mut SeqTracker,
    useq: &mut u64,
    events: &mut VecDeque<Event>,
    head: &Head,
    body: &[u8],
) {
    {
        let b = BodyRef::new(body);
        let mut s = ctx.stats.borrow_mut();
        s.events.received += 1;
        // A session's unicast events are numbered 1, 2, 3, … across resumes (§4.6).
        if !head.flags.has(Flags::BROADCAST)
            && let Ok(Some(n)) = b.opt_int(msg::key::USEQ)
        {
            let n = n.max(0) as u64;
            if n <= *useq {
                s.events.unicast_duplicates += 1;
            } else {
                s.events.unicast_lost += n - *useq - 1;
                *useq = n;
            }
        }
        match head.msg_type {
            msg::ixn::QUEUE_EVENT | msg::ixn::STATS_EVENT if head.flags.has(Flags::BROADCAST) => {
                if b.int(msg::key::SEQ).is_err() {
                    return;
                }
                let tracker = &mut *seq;
                let before = (tracker.gaps, tracker.duplicates);
                tracker.observe(seq_no(b));
                s.events.gaps += tracker.gaps - before.0;
                s.events.duplicates += tracker.duplicates - before.1;
                let now_us = ctx.clock.unix_us(ctx.clock.now_ns());
                if let Ok(published) = b.int(msg::key::PUBLISHED_US) {
                    let published = published.max(0) as u64;
                    s.events
                        .delivery
                        .saturating_record(now_us.saturating_sub(published).max(1) * 1000);
                    // Key deliveries by what happened (interaction, event), which is the same on
                    // every subscription; `seq` differs per subscription.
                    let ix = b
                        .opt_int(msg::key::INTERACTION)
                        .ok()
                        .flatten()
                        .unwrap_or(-1);
                    let ev = b.opt_str(msg::key::EVENT).ok().flatten().unwrap_or("");
                    let key = (ix.max(0) as u64) << 3 | event_code(ev);
                    let d = Delivery {
                        published_us: published,
                        last_us: now_us,
                        count: 1,
                    };
                    merge_delivery(
                        s.events.per_event.entry((head.tenant, key)).or_default(),
                        &d,
                    );
                }
            }
            msg::ixn::INVITE => {
                s.events.invites += 1;
                if let Ok(ix) = b.int(msg::key::INTERACTION) {
                    events.push_back(Event::Invite(ix));
                }
            }
            msg::ixn::INVITE_REVOKED => {
                s.events.revoked += 1;
                if let Ok(ix) = b.int(msg::key::INTERACTION) {
                    events.push_back(Event::Revoked(ix));
                }
            }
            msg::ixn::PROPERTIES_CHANGED => s.events.props_changed += 1,
            _ => {}
        }
    }
}

fn seq_no(b: BodyRef<'_>) -> u64 {
    b.int(msg::key::SEQ).unwrap_or(0).max(0) as u64
}

/// Shared outer loop: connect (with failover/backoff), run `body` on the session, reconnect
/// after a drop, count what was lost. `body` returns how the session ended.
pub async fn run_sessions<F>(ctx: &Ctx, gid: u64, login: bool, mut body: F)
where
    F: AsyncFnMut(&mut Session<'_>) -> End,
{
    let cfg = ctx.cfg.clone();
    crate::scenario::sleep_until(ctx, cfg.connect_at_ns(gid)).await;
    let nsites = cfg.sites.len().max(1);
    let mut site = gid as usize % nsites;
    let mut ever = false;
    let mut generation = 0u64;
    // When the last session dropped (run ns): how long the desktop is away is measured to its
    // next session.
    let mut dropped_at: Option<u64> = None;
    // Requests in flight at the last drop: sent again if the next session resumes (the agent
    // goes on from the step it was at, a media server retries its submit, a session's start
    // re-sends READY or SUBSCRIBE), lost otherwise.
    let mut in_doubt = 0u64;
    loop {
        if ctx.clock.now_ns() >= cfg.measure_end_ns() || ctx.stopping() {
            break;
        }
        let Ok((d, _)) =
            crate::scenario::connect(ctx, gid, site, &mut generation, cfg.jitter, login).await
        else {
            break;
        };
        {
            let mut s = ctx.stats.borrow_mut();
            if ever {
                s.clients.reconnects += 1;
            } else {
                s.clients.connected += 1;
            }
        }
        ever = true;
        if in_doubt > 0 {
            let mut s = ctx.stats.borrow_mut();
            if d.replayed.is_some() {
                s.tally.retried_after_resume += in_doubt;
            } else {
                s.tally.lost += in_doubt;
                s.sample(|| format!("desktop {gid}: {in_doubt} requests lost (not resumed)"));
            }
            in_doubt = 0;
        }
        if let Some(t) = dropped_at.take() {
            let away = ctx.clock.now_ns().saturating_sub(t).max(1);
            ctx.stats.borrow_mut().rec.back.saturating_record(away);
        }
        ctx.connected();
        let mut sess = Session::new(ctx, gid, d);
        let end = body(&mut sess).await;
        ctx.disconnected();
        if let Some(r) = ctx.resume.borrow_mut().get_mut(&gid) {
            r.1 = sess.useq;
        }
        if let (Some((tenant, sub)), Some(last)) = (sess.sub, sess.seq.last()) {
            ctx.stats
                .borrow_mut()
                .events
                .tails
                .push((tenant, sub, last));
        }
        let (mut lost, oldest) = sess.drain_lost_oldest();
        if end == End::Dropped && cfg.resume && sess.d.resume.is_some() {
            in_doubt = std::mem::take(&mut lost);
        }
        if lost > 0 {
            let mut s = ctx.stats.borrow_mut();
            s.tally.lost += lost;
            let now = ctx.clock.now_ns();
            s.sample(|| {
                let what = oldest.map_or(String::new(), |(op, sent)| {
                    let ago = now.saturating_sub(sent) as f64 / 1e9;
                    format!(": the oldest, {op}, sent {ago:.3} s before")
                });
                format!("desktop {gid}: {lost} requests lost ({end:?}){what}")
            });
        }
        match end {
            End::Done => {
                // Leaving for good: say so (PROTOCOL.md §6.1), so that the server ends the
                // session now instead of keeping it `grace_ms` for a resume (§4.6).
                let mut h = Head::new(Kind::Control, Service::Control, msg::control::SESSION_CLOSE);
                h.tenant = sess.d.tenant;
                h.session = sess.d.hello.session;
                let _ = sess.d.conn.write_all(&h.to_bytes()).await;
                break;
            }
            End::Dropped => {
                dropped_at = Some(ctx.clock.now_ns());
                ctx.stats.borrow_mut().clients.dropped += 1;
                site = (sess.d.site + 1) % nsites;
            }
        }
    }
    if in_doubt > 0 {
        // Never back: nothing was sent again.
        let mut s = ctx.stats.borrow_mut();
        s.tally.lost += in_doubt;
        s.sample(|| format!("desktop {gid}: {in_doubt} requests lost (never back)"));
    }
    if !ever {
        ctx.stats.borrow_mut().clients.failed += 1;
        ctx.live
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Run-time of the next submit of an open-loop media server, given its period.
pub fn next_submit(prev: u64, period: u64) -> u64 {
    prev + period.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_distinct() {
        let names = [
            "submitted",
            "invited",
            "accepted",
            "rejected",
            "revoked",
            "placed",
            "completed",
        ];
        let mut codes: Vec<u64> = names.iter().map(|n| event_code(n)).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), names.len());
        assert!(codes.iter().all(|c| *c > 0 && *c < 8));
        assert_eq!(next_submit(10, 5), 15);
    }
}
