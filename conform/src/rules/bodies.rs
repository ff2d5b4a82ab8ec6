//! §3: bodies — value type 0x00, the depth limit on every request the hello included, and
//! ECHO's opaque body (points 1, 10 and 11 of issue 13).

use deskmux_codec::msg::{control, ixn, key};
use deskmux_codec::{ErrorCode, Kind, Service};

use super::{Want, expect_error, expect_ok, still_open};
use crate::report::{Check, Rule};
use crate::wire::{Conn, Got, Site, deep, head, raw};

pub(super) fn rules() -> Vec<Rule> {
    vec![
        Rule {
            section: "§3",
            name: "body.type-00-skipped",
            text: "an item of value type 0x00 is skipped like any unknown type, never MALFORMED",
            run: type_00,
        },
        Rule {
            section: "§3",
            name: "body.depth-16-accepted",
            text: "a request body 16 lists deep is accepted",
            run: |s, c| depth(s, c, 16),
        },
        Rule {
            section: "§3",
            name: "body.depth-17-malformed",
            text: "a request body 17 lists deep: MALFORMED; the connection stays",
            run: |s, c| depth(s, c, 17),
        },
        Rule {
            section: "§3",
            name: "body.depth-hello",
            text: "a HELLO 17 lists deep: MALFORMED, then close",
            run: deep_hello,
        },
        Rule {
            section: "§7",
            name: "body.echo-opaque",
            text: "an ECHO body is opaque bytes: a malformed one comes back verbatim",
            run: echo_opaque,
        },
    ]
}

/// An item `key` of type `t` holding `v`, laid out by hand (§3).
pub(crate) fn item(k: &str, t: u8, v: &[u8]) -> Vec<u8> {
    let mut b = vec![u8::try_from(k.len()).unwrap_or(0)];
    b.extend_from_slice(k.as_bytes());
    b.push(t);
    if t == 0x01 {
        b.extend_from_slice(v);
    } else {
        b.extend_from_slice(&u32::try_from(v.len()).unwrap_or(0).to_be_bytes());
        b.extend_from_slice(v);
    }
    b
}

fn type_00(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let mut body = item("z", 0x00, &[0x00, 0xAB]);
    body.extend(item(key::TOPIC, 0x02, b"queue:conform-type00"));
    let b = raw(
        head(
            Kind::Request,
            Service::Interaction,
            ixn::SUBSCRIBE,
            s.tenant,
            68,
        ),
        &body,
    );
    k.send(&b)?;
    c.sent("SUBSCRIBE with an item of type 0x00 before its topic", &b);
    let g = c.got(k.reply());
    expect_ok(c, &g, ixn::SUBSCRIBE, 68, s.tenant, k.session);
    Ok(())
}

fn depth(s: &Site, c: &mut Check, n: usize) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let body = deep(n, &item(key::TOPIC, 0x02, b"queue:conform-depth"));
    let b = raw(
        head(
            Kind::Request,
            Service::Interaction,
            ixn::SUBSCRIBE,
            s.tenant,
            90,
        ),
        &body,
    );
    k.send(&b)?;
    c.sent(&format!("SUBSCRIBE with a list {n} deep"), &b);
    let g = c.got(k.reply());
    if n <= 16 {
        expect_ok(c, &g, ixn::SUBSCRIBE, 90, s.tenant, k.session);
        return Ok(());
    }
    let want = Want {
        kind: Kind::Response,
        code: ErrorCode::MALFORMED,
        corr: 90,
        tenant: s.tenant,
        session: Some(k.session),
    };
    expect_error(c, &g, &want);
    still_open(c, &mut k, s.tenant, 91)
}

fn deep_hello(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::open(s)?;
    let mut prefix = item(key::VERSION, 0x01, &1i64.to_be_bytes());
    prefix.extend(item(key::AGENT, 0x02, s.agent.as_bytes()));
    prefix.extend(item(key::TOKEN, 0x02, s.password.as_bytes()));
    prefix.extend(item(key::SERVICES, 0x01, &6i64.to_be_bytes()));
    let b = raw(
        head(
            Kind::Request,
            Service::Control,
            control::HELLO,
            s.tenant,
            80,
        ),
        &deep(17, &prefix),
    );
    k.send(&b)?;
    c.sent("HELLO with a list 17 deep", &b);
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code: ErrorCode::MALFORMED,
        corr: 80,
        tenant: s.tenant,
        session: Some(0),
    };
    expect_error(c, &g, &want);
    c.expect(k.closes(), "the connection closed after the refused hello");
    Ok(())
}

fn echo_opaque(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    // A key length of 5 with 2 key bytes: not a body of §3's grammar.
    let body = [5u8, b'a', b'b'];
    let b = raw(
        head(Kind::Request, Service::Ucs, ixn::ECHO, s.tenant, 92),
        &body,
    );
    k.send(&b)?;
    c.sent("UCS ECHO with a truncated body", &b);
    let g = c.got(k.reply());
    expect_ok(c, &g, ixn::ECHO, 92, s.tenant, k.session);
    if let Got::Frame(f) = &g {
        c.expect(f.body_bytes() == body, "the body back verbatim");
    }
    Ok(())
}
