//! §4.2, §4.3, §9: links, against a server, with the link secret (points 15 and 16 of issue
//! 13): the limits each side announces, liveness, and releasing a link's subscriptions.
//! Without `--link-secret` (or against a proxy, which takes no links) these are skipped.

use deskmux_codec::msg::{self, control, ixn, key, ucs};
use deskmux_codec::{BodyError, BodyWriter, ErrorCode, Kind, Service};

use super::{Want, expect_error, expect_ok};
use crate::report::{Check, Rule};
use crate::wire::{Conn, Got, Site, frame, head};

pub(super) fn rules() -> Vec<Rule> {
    vec![
        Rule {
            section: "§4.2",
            name: "link.hello-announces-limits",
            text: "the link hello ack gives max_frame, heartbeat_ms, state, role, instance",
            run: ack,
        },
        Rule {
            section: "§4.3",
            name: "link.heartbeat",
            text: "a link heartbeat (tenant 0, session 0) is answered as sent",
            run: heartbeat,
        },
        Rule {
            section: "§4.3",
            name: "link.unknown-session",
            text: "a request naming no open session of the link: INVALID_STATE",
            run: unknown_session,
        },
        Rule {
            section: "§4.2",
            name: "link.max-frame-honoured",
            text: "a server sends a link no frame over the max_frame its LINK_HELLO announced",
            run: max_frame,
        },
        Rule {
            section: "§9",
            name: "link.subscription-released",
            text: "UNSUBSCRIBE with session 0 releases the link's subscription: a new SUBSCRIBE gets a new id",
            run: released,
        },
    ]
}

/// A link, or `None` (and the rule skipped) without a secret.
fn link(s: &Site, c: &mut Check) -> anyhow::Result<Option<(Conn, Got)>> {
    link_with(s, c, 1 << 20)
}

/// A link announcing `max` as its `max_frame` in its `LINK_HELLO`.
fn link_with(s: &Site, c: &mut Check, max: u32) -> anyhow::Result<Option<(Conn, Got)>> {
    let Some(secret) = &s.link_secret else {
        c.skip("no --link-secret: link rules need one (and a server, not a proxy)");
        return Ok(None);
    };
    let mut k = Conn::open(s)?;
    let b = frame(
        head(Kind::Request, Service::Control, control::LINK_HELLO, 0, 1),
        |w| {
            msg::LinkHello {
                version: 1,
                link: "conform",
                secret: secret.as_bytes(),
                max_frame: Some(max),
            }
            .write(w)
        },
    );
    k.send(&b)?;
    // The head only: the body holds the secret.
    c.sent(&format!("LINK_HELLO announcing max_frame {max}"), &b[..32]);
    let g = c.got(k.reply());
    Ok(Some((k, g)))
}

fn ack(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let Some((_k, g)) = link(s, c)? else {
        return Ok(());
    };
    expect_ok(c, &g, control::LINK_HELLO, 1, 0, 0);
    if let Got::Frame(f) = &g {
        match msg::LinkHelloAck::read(f.body()) {
            Ok(a) => {
                c.note(format!(
                    "max_frame={} heartbeat_ms={} state={:?}",
                    a.max_frame, a.heartbeat_ms, a.state
                ));
                c.expect(
                    a.max_frame >= 16 * 1024 && a.heartbeat_ms > 0,
                    "max_frame and heartbeat_ms",
                );
            }
            Err(e) => c.expect(false, format!("a link hello ack body ({e})")),
        }
    }
    Ok(())
}

fn heartbeat(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let Some((mut k, _)) = link(s, c)? else {
        return Ok(());
    };
    let b = head(Kind::Request, Service::Control, control::HEARTBEAT, 0, 2).to_bytes();
    k.send(&b)?;
    c.sent("HEARTBEAT on the link", &b);
    let g = c.got(k.reply());
    expect_ok(c, &g, control::HEARTBEAT, 2, 0, 0);
    Ok(())
}

fn unknown_session(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let Some((mut k, _)) = link(s, c)? else {
        return Ok(());
    };
    let mut h = head(Kind::Request, Service::Interaction, ixn::ECHO, s.tenant, 3);
    h.session = 4242;
    let b = frame(h, |_| Ok(()));
    k.send(&b)?;
    c.sent("ECHO naming session 4242 (never opened)", &b);
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code: ErrorCode::INVALID_STATE,
        corr: 3,
        tenant: s.tenant,
        session: Some(4242),
    };
    expect_error(c, &g, &want);
    Ok(())
}

/// `SUBSCRIBE` `topic` for session `sid` on a link: the subscription id.
fn subscribe(
    k: &mut Conn,
    c: &mut Check,
    s: &Site,
    sid: u64,
    corr: u64,
    topic: &str,
) -> anyhow::Result<Option<i64>> {
    let mut h = head(
        Kind::Request,
        Service::Interaction,
        ixn::SUBSCRIBE,
        s.tenant,
        corr,
    );
    h.session = sid;
    let b = frame(h, |w| w.str(key::TOPIC, topic).map(|_| ()));
    k.send(&b)?;
    c.sent(&format!("SUBSCRIBE {topic} for session {sid}"), &b);
    let g = c.got(k.reply());
    expect_ok(c, &g, ixn::SUBSCRIBE, corr, s.tenant, sid);
    Ok(match &g {
        Got::Frame(f) => f.body().int(key::SUBSCRIPTION).ok(),
        _ => None,
    })
}

/// Open session `sid` on link `k` with the site's agent.
fn open(k: &mut Conn, c: &mut Check, s: &Site, sid: u64) -> anyhow::Result<()> {
    let mut h = head(
        Kind::Request,
        Service::Control,
        control::SESSION_OPEN,
        s.tenant,
        2,
    );
    h.session = sid;
    let b = frame(h, |w| {
        msg::DesktopHello {
            version: 1,
            agent: &s.agent,
            token: &s.password,
            reconnect: None,
            services: 6,
        }
        .write(w)
    });
    k.send(&b)?;
    // The head only: the body holds the password.
    c.sent(&format!("SESSION_OPEN session {sid}"), &b[..32]);
    let g = c.got(k.reply());
    expect_ok(c, &g, control::SESSION_OPEN, 2, s.tenant, sid);
    Ok(())
}

/// A request for session `sid` on a link; its answer.
fn call(
    k: &mut Conn,
    c: &mut Check,
    req: (&Site, u64, Service, u16, u64),
    what: &str,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
) -> anyhow::Result<Got> {
    let (s, sid, svc, t, corr) = req;
    let mut h = head(Kind::Request, svc, t, s.tenant, corr);
    h.session = sid;
    let b = frame(h, body);
    k.send(&b)?;
    c.sent(what, &b);
    Ok(c.got(k.reply()))
}

fn max_frame(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    // 131,072: the least a server goes to (§8.1), so the server must page below it.
    let max: u32 = 131_072;
    let Some((mut k, _)) = link_with(s, c, max)? else {
        return Ok(());
    };
    let sid = 8;
    open(&mut k, c, s, sid)?;
    let g = call(
        &mut k,
        c,
        (s, sid, Service::Ucs, ucs::CONTACT_CREATE, 3),
        "CONTACT_CREATE",
        |w| {
            w.list(key::ATTRS, |l| {
                l.str("name", "conform max-frame").map(|_| ())
            })
            .map(|_| ())
        },
    )?;
    expect_ok(c, &g, ucs::CONTACT_CREATE, 3, s.tenant, sid);
    let Got::Frame(f) = &g else { return Ok(()) };
    let contact = f.body().int(key::CONTACT)?;
    // A text of 300,000 bytes: more than twice the link's max_frame.
    let text = "x".repeat(300_000);
    let g = call(
        &mut k,
        c,
        (s, sid, Service::Ucs, ucs::HISTORY_INSERT, 4),
        "HISTORY_INSERT of 300,000 bytes",
        |w| {
            w.int(key::CONTACT, contact);
            w.str(key::TEXT, &text).map(|_| ())
        },
    )?;
    expect_ok(c, &g, ucs::HISTORY_INSERT, 4, s.tenant, sid);
    let Got::Frame(f) = &g else { return Ok(()) };
    let history = f.body().int(key::HISTORY)?;
    let g = call(
        &mut k,
        c,
        (s, sid, Service::Ucs, ucs::CONTENT_GET, 5),
        "CONTENT_GET",
        |w| {
            w.int(key::HISTORY, history);
            Ok(())
        },
    )?;
    expect_ok(c, &g, ucs::CONTENT_GET, 5, s.tenant, sid);
    if let Got::Frame(f) = &g {
        c.note(format!("answer of {} bytes", f.len()));
        c.expect(
            f.len() <= max as usize,
            format!("an answer of at most {max} bytes (got {})", f.len()),
        );
        c.expect(
            f.body().opt_int(key::NEXT).ok().flatten().is_some(),
            "a `next` cursor: more text remains",
        );
    }
    Ok(())
}

fn released(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let Some((mut k, _)) = link(s, c)? else {
        return Ok(());
    };
    let sid = 7;
    open(&mut k, c, s, sid)?;
    let topic = "queue:conform-link";
    let a = subscribe(&mut k, c, s, sid, 3, topic)?;
    let again = subscribe(&mut k, c, s, sid, 4, topic)?;
    c.expect(
        a.is_some() && a == again,
        format!("the same id twice on a link ({a:?}, {again:?})"),
    );
    let b = frame(
        head(
            Kind::Request,
            Service::Interaction,
            ixn::UNSUBSCRIBE,
            s.tenant,
            5,
        ),
        |w| w.str(key::TOPIC, topic).map(|_| ()),
    );
    k.send(&b)?;
    c.sent("UNSUBSCRIBE with session 0 (the link's own)", &b);
    let g = c.got(k.reply());
    expect_ok(c, &g, ixn::UNSUBSCRIBE, 5, s.tenant, 0);
    let after = subscribe(&mut k, c, s, sid, 6, topic)?;
    c.expect(
        after.is_some() && after != a,
        format!("a new id after the release ({after:?} vs {a:?})"),
    );
    Ok(())
}
