//! §2.3: the tenant and session id on answers (points 2, 3 and 9 of issue 13).

use deskmux_codec::msg::{control, ixn};
use deskmux_codec::{ErrorCode, Kind, Service};

use super::{Want, expect_error, expect_ok, still_open};
use crate::report::{Check, Rule};
use crate::wire::{Conn, Site, frame, head};

pub(super) fn rules() -> Vec<Rule> {
    vec![
        Rule {
            section: "§2.3",
            name: "tenant.mismatch-answer",
            text: "a request claiming another tenant: TENANT_MISMATCH carrying the session's tenant",
            run: mismatch,
        },
        Rule {
            section: "§2.3",
            name: "tenant.heartbeat-zero",
            text: "a heartbeat with tenant 0 is answered, with the session's tenant and id",
            run: |s, c| heartbeat(s, c, 0),
        },
        Rule {
            section: "§2.3",
            name: "tenant.heartbeat-other",
            text: "a heartbeat claiming another tenant: TENANT_MISMATCH",
            run: |s, c| heartbeat(s, c, s.tenant.wrapping_add(1)),
        },
        Rule {
            section: "§2.3",
            name: "session.zero-answered-with-id",
            text: "a request naming session 0 is answered naming the session's id",
            run: |s, c| {
                let mut k = Conn::session(s)?;
                still_open(c, &mut k, s.tenant, 7)
            },
        },
        Rule {
            section: "§2.3",
            name: "session.wrong-id",
            text: "a request naming another session id: INVALID_STATE (direct and through a proxy)",
            run: wrong_session,
        },
    ]
}

fn mismatch(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let other = s.tenant.wrapping_add(1);
    let b = frame(
        head(Kind::Request, Service::Interaction, ixn::ECHO, other, 70),
        |w| w.bin("data", b"x").map(|_| ()),
    );
    k.send(&b)?;
    c.sent(&format!("ECHO claiming tenant {other}"), &b);
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code: ErrorCode::TENANT_MISMATCH,
        corr: 70,
        tenant: s.tenant,
        session: Some(k.session),
    };
    expect_error(c, &g, &want);
    still_open(c, &mut k, s.tenant, 71)
}

fn heartbeat(s: &Site, c: &mut Check, tenant: u32) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let b = head(
        Kind::Request,
        Service::Control,
        control::HEARTBEAT,
        tenant,
        74,
    )
    .to_bytes();
    k.send(&b)?;
    c.sent(&format!("HEARTBEAT with tenant {tenant}"), &b);
    let g = c.got(k.reply());
    if tenant == 0 || tenant == s.tenant {
        expect_ok(c, &g, control::HEARTBEAT, 74, s.tenant, k.session);
    } else {
        let want = Want {
            kind: Kind::Response,
            code: ErrorCode::TENANT_MISMATCH,
            corr: 74,
            tenant: s.tenant,
            session: Some(k.session),
        };
        expect_error(c, &g, &want);
    }
    Ok(())
}

fn wrong_session(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let mut h = head(Kind::Request, Service::Interaction, ixn::ECHO, s.tenant, 82);
    h.session = if k.session == 99 { 98 } else { 99 };
    let b = frame(h, |w| w.bin("data", b"x").map(|_| ()));
    k.send(&b)?;
    c.sent(&format!("ECHO naming session {}", h.session), &b);
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code: ErrorCode::INVALID_STATE,
        corr: 82,
        tenant: s.tenant,
        session: Some(k.session),
    };
    expect_error(c, &g, &want);
    Ok(())
}
