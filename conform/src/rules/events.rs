//! §9: events — a unicast event carries its target session's tenant and id, a broadcast one
//! the subscription's id, the subscriber's tenant and session 0 (point 16 of issue 13).

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{BodyError, BodyWriter, Flags, Frame, Kind, Service};

use super::expect_ok;
use crate::report::{Check, Rule};
use crate::wire::{Conn, Got, Site, frame, head};

pub(super) fn rules() -> Vec<Rule> {
    vec![Rule {
        section: "§9",
        name: "event.tenant-and-session",
        text: "an INVITE carries the agent's tenant and session; a QUEUE_EVENT the subscription id",
        run: invite,
    }]
}

/// Send a request; its answer, with the events that came before it kept in `held`.
fn call(
    k: &mut Conn,
    c: &mut Check,
    held: &mut Vec<Frame>,
    req: (&Site, u16, u64),
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
) -> anyhow::Result<Got> {
    let (s, t, corr) = req;
    let b = frame(
        head(Kind::Request, Service::Interaction, t, s.tenant, corr),
        body,
    );
    k.send(&b)?;
    c.sent(&format!("type {t:#06x}"), &b);
    for _ in 0..10_000 {
        match c.got(k.next()) {
            Got::Frame(f) if f.head().kind == Kind::Event => held.push(f),
            other => return Ok(other),
        }
    }
    Ok(Got::Silent)
}

fn invite(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let (t, sid) = (s.tenant, k.session);
    let mut held = Vec::new();
    let queue = "conform-invite";
    let g = call(&mut k, c, &mut held, (s, ixn::SUBSCRIBE, 20), |w| {
        w.str(key::TOPIC, &format!("queue:{queue}")).map(|_| ())
    })?;
    expect_ok(c, &g, ixn::SUBSCRIBE, 20, t, sid);
    let sub = match &g {
        Got::Frame(f) => f.body().int(key::SUBSCRIPTION).unwrap_or(-1),
        _ => -1,
    };
    let g = call(&mut k, c, &mut held, (s, ixn::AGENT_LOGIN, 21), |w| {
        w.str(key::PLACE, "conform").map(|_| ())
    })?;
    expect_ok(c, &g, ixn::AGENT_LOGIN, 21, t, sid);
    let g = call(&mut k, c, &mut held, (s, ixn::AGENT_READY, 22), |_| Ok(()))?;
    expect_ok(c, &g, ixn::AGENT_READY, 22, t, sid);
    let g = call(&mut k, c, &mut held, (s, ixn::SUBMIT, 23), |w| {
        w.str(key::QUEUE, queue)?;
        w.list(key::PROPS, |l| l.str("from", "conform").map(|_| ()))
            .map(|_| ())
    })?;
    expect_ok(c, &g, ixn::SUBMIT, 23, t, sid);
    // Wait for the invite and a queue event (each wait bounded; at most 64 frames).
    let (mut invited, mut queued) = (None, false);
    for _ in 0..64 {
        if invited.is_some() && queued {
            break;
        }
        let f = if held.is_empty() {
            let Got::Frame(f) = c.got(k.next()) else {
                break;
            };
            f
        } else {
            held.remove(0)
        };
        let h = *f.head();
        if h.kind != Kind::Event {
            continue;
        }
        if h.msg_type == ixn::INVITE {
            c.expect(
                h.tenant == t,
                format!("INVITE with tenant {t} (got {})", h.tenant),
            );
            c.expect(
                h.session == sid,
                format!("INVITE with session {sid} (got {})", h.session),
            );
            c.expect(
                !h.flags.has(Flags::BROADCAST),
                "INVITE not flagged BROADCAST",
            );
            invited = f.body().int(key::INTERACTION).ok();
        } else if h.msg_type == ixn::QUEUE_EVENT {
            queued = true;
            c.expect(
                h.flags.has(Flags::BROADCAST),
                "QUEUE_EVENT flagged BROADCAST",
            );
            c.expect(
                h.tenant == t,
                format!("QUEUE_EVENT with tenant {t} (got {})", h.tenant),
            );
            c.expect(
                h.session == 0,
                format!("QUEUE_EVENT with session 0 (got {})", h.session),
            );
            c.expect(
                i64::try_from(h.correlation).ok() == Some(sub),
                format!(
                    "QUEUE_EVENT correlation = subscription {sub} (got {})",
                    h.correlation
                ),
            );
        }
    }
    c.expect(invited.is_some(), "an INVITE");
    c.expect(queued, "a QUEUE_EVENT");
    if let Some(i) = invited {
        // Tidy up: take the interaction and complete it.
        held.clear();
        let _ = call(&mut k, c, &mut held, (s, ixn::ACCEPT, 24), |w| {
            w.int(key::INTERACTION, i);
            Ok(())
        })?;
        let _ = call(&mut k, c, &mut held, (s, ixn::STOP_PROCESSING, 25), |w| {
            w.int(key::INTERACTION, i);
            Ok(())
        })?;
    }
    let _ = call(&mut k, c, &mut held, (s, ixn::AGENT_LOGOUT, 26), |_| Ok(()))?;
    Ok(())
}
