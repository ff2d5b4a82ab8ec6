//! `supervisor`: desktops subscribe to a queue's events (`SUBSCRIBE queue:NAME`) and measure
//! event delivery — publication (`published_us`) to each subscriber, and to the *last*
//! subscriber of each event — while checking sequence numbers for gaps and duplicates. A share
//! of the desktops act as media servers submitting interactions into that queue (open loop, at
//! `submit_rate` in total), which is what publishes the events.

use std::rc::Rc;

use deskmux_codec::{Service, msg};

use crate::engine::Ctx;
use crate::scenario::session::{End, Session, next_submit, run_sessions};

/// Whether desktop `gid` is a media server, given the share (at least one per tenant). Media
/// servers come in runs of `tenants` consecutive ids, so that every tenant (desktops alternate
/// tenants) has submitters and its subscribers get events.
pub fn is_media(gid: u64, desktops: u64, share: f64, tenants: u64) -> bool {
    let t = tenants.max(1);
    let groups = desktops.div_ceil(t).max(1);
    let n = ((groups as f64 * share).round() as u64).clamp(1, groups);
    let stride = (groups / n).max(1);
    let g = gid / t;
    g.is_multiple_of(stride) && g / stride < n
}

/// Media servers in the run.
pub fn media_count(desktops: u64, share: f64, tenants: u64) -> u64 {
    (0..desktops)
        .filter(|g| is_media(*g, desktops, share, tenants))
        .count() as u64
}

/// Open-loop `SUBMIT`s into the queue until the end of the run.
pub async fn submitter(s: &mut Session<'_>) -> End {
    let cfg = s.ctx.cfg.clone();
    let media = media_count(cfg.desktops, cfg.media_share, cfg.tenants.len() as u64).max(1);
    let per = cfg.submit_rate / media as f64;
    if per <= 0.0 {
        return idle(s).await;
    }
    let period = (1e9 / per) as u64;
    let mut next = s.ctx.clock.now_ns() + fastrand::u64(0..period.max(1));
    let end = cfg.measure_end_ns();
    let gid = s.gid;
    let queue = cfg.queue.clone();
    // PROTOCOL.md §5.5: each submit carries a key, and a resumed session retries the one its
    // drop left without an answer (the same key: applied once whatever happened to it).
    let retry = match s.d.replayed {
        Some(_) => s.ctx.submits.borrow_mut().remove(&gid),
        None => None,
    };
    if let Some(n) = retry
        && let Err(e) = submit(s, &queue, n).await
    {
        return e;
    }
    while next < end {
        // Open loop: a submit still owed when the window closes is not sent late into the
        // drain (its answer might not arrive before loadgen stops listening, and it would
        // count as lost) but counted unsent, with its lateness, as `ping` counts its own.
        if s.ctx.clock.now_ns() >= end || s.ctx.stopping() {
            crate::scenario::count_unsent(s.ctx, next, period);
            return End::Done;
        }
        if let Err(e) = s.next_event(next).await {
            return e;
        }
        s.events.clear();
        // Open loop: latency counts from the scheduled time (coordinated omission corrected).
        s.intended = Some(next);
        let n = {
            let mut c = s.ctx.submits_made.borrow_mut();
            let e = c.entry(gid).or_insert(0);
            *e += 1;
            *e
        };
        s.ctx.submits.borrow_mut().insert(gid, n);
        if let Err(e) = submit(s, &queue, n).await {
            return e;
        }
        s.ctx.submits.borrow_mut().remove(&gid);
        next = next_submit(next, period);
    }
    End::Done
}

/// This media server's `n`th `SUBMIT`, keyed by `n`.
async fn submit(s: &mut Session<'_>, queue: &str, n: u64) -> Result<bool, End> {
    let gid = s.gid;
    s.request(
        "submit",
        Service::Interaction,
        msg::ixn::SUBMIT,
        |w| {
            w.str(msg::key::QUEUE, queue)?;
            w.list(msg::key::PROPS, |p| {
                p.str("subject", "loadgen")?;
                p.str("from", &format!("media-{gid}"))?;
                Ok(())
            })?;
            w.str(msg::key::IDEM_KEY, &format!("submit-{n}"))?;
            Ok(())
        },
        |b| b.int(msg::key::INTERACTION).is_ok_and(|i| i > 0),
    )
    .await
}

/// Stay connected (heartbeats, events) until the end of the run.
pub async fn idle(s: &mut Session<'_>) -> End {
    let end = s.ctx.cfg.measure_end_ns();
    loop {
        match s.next_event(end).await {
            Ok(None) => return End::Done,
            Ok(Some(_)) => {}
            Err(e) => return e,
        }
    }
}

/// Run one supervisor desktop.
pub async fn run(ctx: Rc<Ctx>, gid: u64) {
    let cfg = ctx.cfg.clone();
    let media = is_media(gid, cfg.desktops, cfg.media_share, cfg.tenants.len() as u64);
    run_sessions(&ctx, gid, cfg.login, async |s: &mut Session<'_>| {
        if media {
            return submitter(s).await;
        }
        let topic = format!("queue:{}", s.ctx.cfg.queue);
        let mut baseline = None;
        let r = s
            .request(
                "subscribe",
                Service::Interaction,
                msg::ixn::SUBSCRIBE,
                |w| {
                    w.str(msg::key::TOPIC, &topic)?;
                    Ok(())
                },
                |b| {
                    baseline = b.int(msg::key::SEQ).ok();
                    b.int(msg::key::SUBSCRIPTION).is_ok()
                },
            )
            .await;
        match r {
            Err(e) => return e,
            Ok(false) => {}
            Ok(true) => {
                if let Some(seq) = baseline {
                    s.seq.baseline(seq.max(0) as u64);
                }
            }
        }
        // Keep listening through the drain: publishers stop at the end of the window, so every
        // event published has the drain time to arrive, and the end-of-run comparison of
        // subscribers' last sequence numbers (missed_at_end) is sound.
        let until = s.ctx.cfg.drain_end_ns();
        loop {
            match s.next_event(until).await {
                Ok(None) => return End::Done,
                Ok(Some(_)) => {}
                Err(e) => return e,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_share_spread_over_tenants() {
        assert_eq!(media_count(1000, 0.02, 1), 20);
        assert_eq!(media_count(1000, 0.02, 2), 20);
        assert_eq!(media_count(10, 0.0, 1), 1);
        assert_eq!(media_count(10, 0.0, 2), 2);
        assert_eq!(media_count(10, 1.0, 1), 10);
        // Two tenants (even ids tenant 1, odd ids tenant 2): both get media servers.
        let m: Vec<u64> = (0..1000).filter(|g| is_media(*g, 1000, 0.02, 2)).collect();
        assert!(m.iter().any(|g| g % 2 == 0) && m.iter().any(|g| g % 2 == 1));
        assert!(is_media(0, 1000, 0.02, 2) && is_media(1, 1000, 0.02, 2));
        assert!(!is_media(2, 1000, 0.02, 2));
    }
}
