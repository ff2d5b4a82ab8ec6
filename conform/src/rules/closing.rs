//! §4.1.1, §4.1.2, §6.1: leaving — a half-closed desktop gets every answer (point 13 of
//! issue 13), and `SESSION_CLOSE` / `GO_AWAY` from a desktop end its connection.

use std::collections::HashMap;

use deskmux_codec::msg::{control, ixn, key, ucs};
use deskmux_codec::{Kind, Service};

use crate::report::{Check, Rule};
use crate::wire::{Conn, Got, Site, frame, head};

pub(super) fn rules() -> Vec<Rule> {
    vec![
        Rule {
            section: "§4.1.1",
            name: "close.half-close-answered",
            text: "requests sent before a half-close are each answered once, then the peer closes",
            run: half_close,
        },
        Rule {
            section: "§6.1",
            name: "close.session-close-leaves",
            text: "SESSION_CLOSE from a desktop: the peer ends the session and closes",
            run: |s, c| leave(s, c, control::SESSION_CLOSE),
        },
        Rule {
            section: "§6.1",
            name: "close.go-away-leaves",
            text: "GO_AWAY from a desktop: the peer ends the session and closes",
            run: |s, c| leave(s, c, control::GO_AWAY),
        },
    ]
}

fn half_close(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let t = s.tenant;
    let mut b = frame(
        head(Kind::Request, Service::Interaction, ixn::ECHO, t, 10),
        |w| w.bin("data", b"hc").map(|_| ()),
    );
    b.extend(frame(
        head(Kind::Request, Service::Interaction, ixn::SUBSCRIBE, t, 11),
        |w| w.str(key::TOPIC, "queue:conform-hc").map(|_| ()),
    ));
    // A write: answered only after a commit.
    b.extend(frame(
        head(Kind::Request, Service::Ucs, ucs::CONTACT_CREATE, t, 12),
        |w| {
            w.list(key::ATTRS, |l| {
                l.str("name", "conform half-close").map(|_| ())
            })
            .map(|_| ())
        },
    ));
    k.send(&b)?;
    k.half_close()?;
    c.sent("ECHO, SUBSCRIBE, CONTACT_CREATE, then a half-close", &b);
    let mut answers: HashMap<u64, usize> = HashMap::new();
    let closed = loop {
        match c.got(k.reply()) {
            Got::Frame(f) if f.head().kind == Kind::Response => {
                *answers.entry(f.head().correlation).or_default() += 1;
            }
            Got::Frame(_) => {}
            Got::Closed => break true,
            Got::Lost(_) | Got::Silent => break false,
        }
    };
    for corr in [10, 11, 12] {
        let n = answers.get(&corr).copied().unwrap_or(0);
        c.expect(
            n == 1,
            format!("one answer to correlation {corr} (got {n})"),
        );
    }
    c.expect(closed, "the peer closed once all was answered");
    Ok(())
}

fn leave(s: &Site, c: &mut Check, t: u16) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let mut h = head(Kind::Control, Service::Control, t, s.tenant, 0);
    h.session = k.session;
    let b = frame(h, |_| Ok(()));
    k.send(&b)?;
    c.sent("control frame", &b);
    let closed = k.closes();
    for l in k.seen.iter().skip(1) {
        c.note(format!("seen: {l}"));
    }
    c.expect(closed, "the connection closed");
    Ok(())
}
