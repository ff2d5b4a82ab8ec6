//! `agent`: a realistic agent desktop. Agents log in, become ready, and for each invite:
//! accept, change properties, look up the customer in UCS (`CONTACT_IDENTIFY`), insert a history
//! record (`HISTORY_INSERT`), and stop processing. A share of the desktops act as media servers
//! submitting the interactions (open loop, `submit_rate` in total). Every answer is verified
//! (correlation, type, content: the accepted interaction is the invited one, ids are present).

use std::rc::Rc;

use deskmux_codec::{Service, msg};

use crate::engine::Ctx;
use crate::scenario::session::{End, Event, Session, run_sessions};
use crate::scenario::supervisor::{is_media, submitter};

/// Handle invites until the end of the run.
async fn agent(s: &mut Session<'_>) -> End {
    let end = s.ctx.cfg.measure_end_ns();
    let gid = s.gid;
    match s
        .request(
            "ready",
            Service::Interaction,
            msg::ixn::AGENT_READY,
            |_| Ok(()),
            |_| true,
        )
        .await
    {
        Err(e) => return e,
        Ok(false) => return super::supervisor::idle(s).await,
        Ok(true) => {}
    }
    // A resumed session goes on with the interaction its drop interrupted (PROTOCOL.md §4.6):
    // it still owns it. A fresh one cannot accept an invite of the old session; it drops it.
    let interrupted = s.ctx.work.borrow_mut().remove(&gid);
    if let (Some((ix, step)), Some(_)) = (interrupted, s.d.replayed) {
        s.ctx.stats.borrow_mut().clients.work_resumed += 1;
        if let Err(e) = handle(s, ix, step).await {
            return e;
        }
    }
    loop {
        let ix = match s.next_event(end).await {
            Err(e) => return e,
            Ok(None) => return End::Done,
            Ok(Some(Event::Revoked(_))) => continue,
            Ok(Some(Event::Invite(ix))) => ix,
        };
        // An invite already queued when the window closed is left alone: work begun after
        // the end would run into the drain and past it, where its last answers would count
        // as lost only because loadgen stopped listening.
        if s.ctx.clock.now_ns() >= end {
            return End::Done;
        }
        if let Err(e) = handle(s, ix, 0).await {
            return e;
        }
    }
}

/// Work interaction `ix` from step `from` on: accept, change properties, identify the
/// customer, record history, stop. Before each step the desktop notes where it is, so that
/// after a drop and a resume it goes on from there; the steps that are not idempotent carry
/// an idempotency key (§5.5), so the one in flight at the drop is retried safely.
/// `HISTORY_INSERT` is a UCS request, which takes no key: retried, it may insert twice.
async fn handle(s: &mut Session<'_>, ix: i64, from: u8) -> Result<(), End> {
    let gid = s.gid;
    let queue = s.ctx.cfg.queue.clone();
    let mut contact = 0i64;
    // History needs the contact: a lookup, so it is looked up again.
    let from = if from == 3 { 2 } else { from };
    for step in from..5 {
        s.ctx.work.borrow_mut().insert(gid, (ix, step));
        let ok = match step {
            0 => {
                s.request(
                    "accept",
                    Service::Interaction,
                    msg::ixn::ACCEPT,
                    |w| {
                        w.int(msg::key::INTERACTION, ix);
                        w.str(msg::key::IDEM_KEY, &format!("accept-{ix}"))?;
                        Ok(())
                    },
                    |b| b.int(msg::key::INTERACTION).ok() == Some(ix),
                )
                .await?
            }
            1 => {
                s.request(
                    "change_properties",
                    Service::Interaction,
                    msg::ixn::CHANGE_PROPERTIES,
                    |w| {
                        w.int(msg::key::INTERACTION, ix);
                        w.list(msg::key::PROPS, |p| {
                            p.str("disposition", "handled")?;
                            p.str("agent", &format!("lg-{gid}"))?;
                            Ok(())
                        })?;
                        Ok(())
                    },
                    |_| true,
                )
                .await?
            }
            2 => {
                s.request(
                    "contact_identify",
                    Service::Ucs,
                    msg::ucs::CONTACT_IDENTIFY,
                    |w| {
                        w.str(
                            msg::key::EMAIL,
                            &format!("customer{}@example.com", ix % 5000),
                        )?;
                        Ok(())
                    },
                    |b| {
                        contact = b.int(msg::key::CONTACT).unwrap_or(0);
                        contact > 0
                    },
                )
                .await?
            }
            3 => {
                s.request(
                    "history_insert",
                    Service::Ucs,
                    msg::ucs::HISTORY_INSERT,
                    |w| {
                        w.int(msg::key::CONTACT, contact);
                        w.int(msg::key::INTERACTION, ix);
                        w.str(msg::key::SUBJECT, &queue)?;
                        w.str(msg::key::TEXT, "loadgen agent scenario: handled")?;
                        Ok(())
                    },
                    |b| b.int(msg::key::HISTORY).is_ok_and(|h| h > 0),
                )
                .await?
            }
            _ => {
                s.request(
                    "stop_processing",
                    Service::Interaction,
                    msg::ixn::STOP_PROCESSING,
                    |w| {
                        w.int(msg::key::INTERACTION, ix);
                        w.str(msg::key::IDEM_KEY, &format!("stop-{ix}"))?;
                        Ok(())
                    },
                    |_| true,
                )
                .await?
            }
        };
        if !ok {
            // An error answer (counted): the interaction is given up, as before.
            break;
        }
    }
    s.ctx.work.borrow_mut().remove(&gid);
    Ok(())
}

/// Run one agent (or media-server) desktop.
pub async fn run(ctx: Rc<Ctx>, gid: u64) {
    let cfg = ctx.cfg.clone();
    let media = is_media(gid, cfg.desktops, cfg.media_share, cfg.tenants.len() as u64);
    // Agents must log in to be offered work; media servers need no login.
    run_sessions(&ctx, gid, !media, async |s: &mut Session<'_>| {
        if media {
            submitter(s).await
        } else {
            agent(s).await
        }
    })
    .await;
}
