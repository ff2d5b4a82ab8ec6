//! §5.1–§5.3: refusals of frames that are not requests (point 4), errors never answered
//! (point 14), one correlation id in flight once (point 5), the order of the request checks,
//! and flags never copied onto answers (point 6).

use deskmux_codec::msg::{control, ixn, key};
use deskmux_codec::{ErrorCode, Flags, Kind, Service};

use super::bodies::item;
use super::{Want, expect_error, expect_ok, judge_error, still_open};
use crate::report::{Check, Rule};
use crate::wire::{Conn, Got, Site, deep, frame, head, raw};

pub(super) fn rules() -> Vec<Rule> {
    vec![
        Rule {
            section: "§5.1",
            name: "refuse.unknown-kind",
            text: "a frame of unknown kind: control PROTOCOL naming its correlation; the connection stays",
            run: |s, c| refuse(s, c, Kind::Unknown(9), Service::Interaction, ixn::ECHO, 44),
        },
        Rule {
            section: "§5.1",
            name: "refuse.event-from-desktop",
            text: "an event from a desktop: control PROTOCOL naming its correlation",
            run: |s, c| refuse(s, c, Kind::Event, Service::Interaction, ixn::INVITE, 45),
        },
        Rule {
            section: "§5.1",
            name: "refuse.response-from-desktop",
            text: "a response (not to a heartbeat) from a desktop: control PROTOCOL naming it",
            run: |s, c| refuse(s, c, Kind::Response, Service::Interaction, ixn::ECHO, 46),
        },
        Rule {
            section: "§6.1",
            name: "refuse.service-state-from-desktop",
            text: "SERVICE_STATE from a desktop: control PROTOCOL naming its correlation",
            run: |s, c| {
                refuse(
                    s,
                    c,
                    Kind::Control,
                    Service::Control,
                    control::SERVICE_STATE,
                    72,
                )
            },
        },
        Rule {
            section: "§5.1",
            name: "errors.never-answered",
            text: "a control ERROR, or any non-request flagged ERROR, from a desktop is not answered",
            run: never_answered,
        },
        Rule {
            section: "§6",
            name: "control.unknown-request",
            text: "a control request of an unknown type: UNKNOWN_MESSAGE",
            run: |s, c| {
                answered_error(
                    s,
                    c,
                    Service::Control,
                    0x0099,
                    84,
                    ErrorCode::UNKNOWN_MESSAGE,
                )
            },
        },
        Rule {
            section: "§4.3",
            name: "control.session-open-from-desktop",
            text: "SESSION_OPEN from a desktop: INVALID_STATE",
            run: |s, c| {
                answered_error(
                    s,
                    c,
                    Service::Control,
                    control::SESSION_OPEN,
                    83,
                    ErrorCode::INVALID_STATE,
                )
            },
        },
        Rule {
            section: "§5.2",
            name: "correlation.in-flight",
            text: "a request reusing the correlation id of one in flight: INVALID_STATE; the first is answered",
            run: in_flight,
        },
        Rule {
            section: "§5.2",
            name: "order.tenant-before-body",
            text: "wrong tenant and a malformed body: TENANT_MISMATCH (the tenant is checked first)",
            run: tenant_first,
        },
        Rule {
            section: "§5.3",
            name: "flags.never-copied",
            text: "requests flagged ERROR, BROADCAST, RETRY get answers flagged by what they are",
            run: flags,
        },
    ]
}

fn refuse(
    s: &Site,
    c: &mut Check,
    kind: Kind,
    svc: Service,
    t: u16,
    corr: u64,
) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let mut h = head(kind, svc, t, s.tenant, corr);
    h.session = k.session;
    let b = frame(h, |_| Ok(()));
    k.send(&b)?;
    c.sent(&format!("{kind:?} frame, type {t:#06x}"), &b);
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Control,
        code: ErrorCode::PROTOCOL,
        corr,
        tenant: 0,
        session: Some(k.session),
    };
    expect_error(c, &g, &want);
    still_open(c, &mut k, s.tenant, corr + 1000)
}

fn never_answered(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let mut b = Vec::new();
    for (kind, svc, t) in [
        (Kind::Control, Service::Control, control::ERROR),
        (Kind::Response, Service::Interaction, ixn::ECHO),
        (Kind::Event, Service::Interaction, ixn::INVITE),
        (Kind::Unknown(9), Service::Interaction, ixn::ECHO),
        (Kind::Control, Service::Control, control::SERVICE_STATE),
    ] {
        let mut h = head(kind, svc, t, s.tenant, 73);
        h.flags = Flags(Flags::ERROR);
        b.extend(frame(h, |w| {
            w.int(key::CODE, i64::from(ErrorCode::INTERNAL.0));
            w.str(key::MESSAGE, "desktop failed").map(|_| ())
        }));
    }
    k.send(&b)?;
    c.sent(
        "ERROR-flagged control ERROR, response, event, kind 9, SERVICE_STATE",
        &b,
    );
    // The next frame must be the answer to this ECHO, not an answer to any of those.
    still_open(c, &mut k, s.tenant, 75)
}

fn answered_error(
    s: &Site,
    c: &mut Check,
    svc: Service,
    t: u16,
    corr: u64,
    code: ErrorCode,
) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let b = frame(head(Kind::Request, svc, t, s.tenant, corr), |_| Ok(()));
    k.send(&b)?;
    c.sent(
        &format!("request service {} type {t:#06x}", svc.to_u8()),
        &b,
    );
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code,
        corr,
        tenant: s.tenant,
        session: Some(k.session),
    };
    expect_error(c, &g, &want);
    still_open(c, &mut k, s.tenant, corr + 1000)
}

fn in_flight(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let t = s.tenant;
    // A SUBMIT is answered once durable (a commit): still in flight when the ECHO behind it in
    // the same write is read. (A peer that committed faster than it reads 70 bytes would
    // answer both; none does.)
    let mut b = frame(
        head(Kind::Request, Service::Interaction, ixn::SUBMIT, t, 71),
        |w| {
            w.str(key::QUEUE, "conform-dup")?;
            w.list(key::PROPS, |l| l.str("from", "conform").map(|_| ()))
                .map(|_| ())
        },
    );
    b.extend(frame(
        head(Kind::Request, Service::Interaction, ixn::ECHO, t, 71),
        |w| w.bin("data", b"dup").map(|_| ()),
    ));
    k.send(&b)?;
    c.sent("SUBMIT and ECHO, both correlation 71, in one write", &b);
    // Two answers, in either order: the SUBMIT's success and the ECHO's refusal.
    let (mut submitted, mut refused, mut other) = (0, 0, 0);
    for _ in 0..2 {
        let Got::Frame(f) = c.got(k.reply()) else {
            continue;
        };
        let h = *f.head();
        match (h.msg_type, f.error().is_some()) {
            (ixn::SUBMIT, false) if h.correlation == 71 => submitted += 1,
            (ixn::ECHO, true) => {
                refused += 1;
                let want = Want {
                    kind: Kind::Response,
                    code: ErrorCode::INVALID_STATE,
                    corr: 71,
                    tenant: t,
                    session: Some(k.session),
                };
                judge_error(c, &f, &want);
            }
            _ => other += 1,
        }
    }
    c.expect(
        submitted == 1 && refused == 1 && other == 0,
        format!(
            "the SUBMIT answered and the ECHO refused (got {submitted} SUBMIT success, \
             {refused} ECHO refusal, {other} other)"
        ),
    );
    // Answered: the id may be used again.
    still_open(c, &mut k, t, 71)
}

fn tenant_first(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let other = s.tenant.wrapping_add(1);
    let body = deep(17, &item(key::TOPIC, 0x02, b"queue:conform-order"));
    let b = raw(
        head(
            Kind::Request,
            Service::Interaction,
            ixn::SUBSCRIBE,
            other,
            93,
        ),
        &body,
    );
    k.send(&b)?;
    c.sent(
        &format!("SUBSCRIBE claiming tenant {other}, 17 lists deep"),
        &b,
    );
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code: ErrorCode::TENANT_MISMATCH,
        corr: 93,
        tenant: s.tenant,
        session: Some(k.session),
    };
    expect_error(c, &g, &want);
    Ok(())
}

fn flags(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let t = s.tenant;
    let all = Flags(Flags::ERROR | Flags::BROADCAST | Flags::RETRY);
    let mut h = head(Kind::Request, Service::Interaction, ixn::ECHO, t, 94);
    h.flags = all;
    let b = frame(h, |w| w.bin("data", b"flags").map(|_| ()));
    k.send(&b)?;
    c.sent("ECHO flagged ERROR|BROADCAST|RETRY", &b);
    let g = c.got(k.reply());
    expect_ok(c, &g, ixn::ECHO, 94, t, k.session);
    let mut h = head(Kind::Request, Service::Interaction, ixn::SUBSCRIBE, t, 95);
    h.flags = Flags(Flags::ERROR);
    let b = frame(h, |w| w.str(key::TOPIC, "queue:conform-flags").map(|_| ()));
    k.send(&b)?;
    c.sent("SUBSCRIBE flagged ERROR", &b);
    let g = c.got(k.reply());
    expect_ok(c, &g, ixn::SUBSCRIBE, 95, t, k.session);
    let mut h = head(Kind::Request, Service::Control, control::HEARTBEAT, t, 96);
    h.flags = all;
    let b = h.to_bytes();
    k.send(&b)?;
    c.sent("HEARTBEAT flagged ERROR|BROADCAST|RETRY", &b);
    let g = c.got(k.reply());
    expect_ok(c, &g, control::HEARTBEAT, 96, t, k.session);
    Ok(())
}
