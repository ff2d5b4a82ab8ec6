//! §4.1: the hello — its refusals (each closes), the services it opens, the limits it
//! announces, and requests written right behind it (points 7 and 8 of issue 13).

use deskmux_codec::msg::{self, control, ixn, key};
use deskmux_codec::{ErrorCode, Kind, Service};

use super::{Want, expect_error, expect_ok, still_open};
use crate::report::{Check, Rule};
use crate::wire::{Conn, Got, Site, frame, head, hello};

pub(super) fn rules() -> Vec<Rule> {
    vec![
        Rule {
            section: "§4.1",
            name: "hello.before-hello",
            text: "a request before the hello: INVALID_STATE; a heartbeat is answered",
            run: before_hello,
        },
        Rule {
            section: "§4.1",
            name: "hello.empty-body",
            text: "a hello with an empty body: MALFORMED, then close",
            run: |s, c| {
                let b = frame(
                    head(
                        Kind::Request,
                        Service::Control,
                        control::HELLO,
                        s.tenant,
                        77,
                    ),
                    |_| Ok(()),
                );
                refused(
                    s,
                    c,
                    "HELLO with an empty body",
                    &b,
                    77,
                    ErrorCode::MALFORMED,
                )
            },
        },
        Rule {
            section: "§4.1",
            name: "hello.version-2",
            text: "a hello asking for version 2: PROTOCOL, then close",
            run: |s, c| {
                refused(
                    s,
                    c,
                    "HELLO version 2",
                    &hello(s, 78, 2, 6),
                    78,
                    ErrorCode::PROTOCOL,
                )
            },
        },
        Rule {
            section: "§4.1",
            name: "hello.no-services",
            text: "a hello asking for no service: NO_ROUTE, then close",
            run: |s, c| {
                refused(
                    s,
                    c,
                    "HELLO services 0",
                    &hello(s, 79, 1, 0),
                    79,
                    ErrorCode::NO_ROUTE,
                )
            },
        },
        Rule {
            section: "§4.1",
            name: "hello.announces-limits",
            text: "the server hello gives session (head and body), max_frame, heartbeat_ms, max_in_flight",
            run: limits,
        },
        Rule {
            section: "§4.1",
            name: "hello.service-not-opened",
            text: "a request to a service the hello did not ask for: INVALID_STATE",
            run: not_opened,
        },
        Rule {
            section: "§4.1",
            name: "hello.request-behind-hello",
            text: "a request in the same write as the hello waits for it and is answered in the session",
            run: behind,
        },
        Rule {
            section: "§4.1",
            name: "hello.twice",
            text: "a second hello: INVALID_STATE; the session stays",
            run: twice,
        },
    ]
}

fn before_hello(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::open(s)?;
    let b = frame(
        head(Kind::Request, Service::Interaction, ixn::ECHO, s.tenant, 5),
        |_| Ok(()),
    );
    k.send(&b)?;
    c.sent("ECHO before any hello", &b);
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code: ErrorCode::INVALID_STATE,
        corr: 5,
        tenant: s.tenant,
        session: Some(0),
    };
    expect_error(c, &g, &want);
    let b = head(
        Kind::Request,
        Service::Control,
        control::HEARTBEAT,
        s.tenant,
        6,
    )
    .to_bytes();
    k.send(&b)?;
    c.sent("HEARTBEAT before any hello", &b);
    let g = c.got(k.reply());
    expect_ok(c, &g, control::HEARTBEAT, 6, s.tenant, 0);
    Ok(())
}

fn refused(
    s: &Site,
    c: &mut Check,
    what: &str,
    b: &[u8],
    corr: u64,
    code: ErrorCode,
) -> anyhow::Result<()> {
    let mut k = Conn::open(s)?;
    k.send(b)?;
    c.sent(what, b);
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code,
        corr,
        tenant: s.tenant,
        session: Some(0),
    };
    expect_error(c, &g, &want);
    let closed = k.closes();
    c.note(if closed { "then closed" } else { "not closed" });
    c.expect(closed, "the connection closed after the refused hello");
    Ok(())
}

fn limits(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::open(s)?;
    let b = hello(s, 1, 1, 6);
    k.send(&b)?;
    c.sent("HELLO", &b);
    let g = c.got(k.reply());
    let Got::Frame(f) = &g else {
        c.expect(false, "a server hello");
        return Ok(());
    };
    match msg::ServerHello::read(f.body()) {
        Ok(sh) => {
            c.note(format!(
                "session={} max_frame={} heartbeat_ms={} max_in_flight={}",
                sh.session, sh.max_frame, sh.heartbeat_ms, sh.max_in_flight
            ));
            c.expect(
                sh.session != 0 && sh.session == f.head().session,
                "the session id, non-zero, in head and body",
            );
            c.expect(sh.max_frame >= 16 * 1024, "max_frame of at least 16 KiB");
            c.expect(
                sh.heartbeat_ms > 0 && sh.max_in_flight > 0,
                "heartbeat_ms and max_in_flight over 0",
            );
        }
        Err(e) => c.expect(false, format!("a server hello body ({e})")),
    }
    Ok(())
}

fn not_opened(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::open(s)?;
    k.hello(s, 2)?;
    c.note("hello with services 2 (Interaction only)");
    let b = frame(
        head(
            Kind::Request,
            Service::Ucs,
            msg::ucs::CONTACT_GET,
            s.tenant,
            81,
        ),
        |w| {
            w.int(key::CONTACT, 1);
            Ok(())
        },
    );
    k.send(&b)?;
    c.sent("UCS CONTACT_GET", &b);
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code: ErrorCode::INVALID_STATE,
        corr: 81,
        tenant: s.tenant,
        session: Some(k.session),
    };
    expect_error(c, &g, &want);
    still_open(c, &mut k, s.tenant, 82)
}

fn behind(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::open(s)?;
    let mut b = hello(s, 1, 1, 6);
    b.extend(frame(
        head(Kind::Request, Service::Interaction, ixn::ECHO, s.tenant, 2),
        |w| w.bin("data", b"behind").map(|_| ()),
    ));
    k.send(&b)?;
    c.sent("HELLO and an ECHO in one write", &b);
    let g = c.got(k.reply());
    let sid = match &g {
        Got::Frame(f) => f.head().session,
        _ => 0,
    };
    expect_ok(c, &g, control::HELLO, 1, s.tenant, sid);
    let g = c.got(k.reply());
    expect_ok(c, &g, ixn::ECHO, 2, s.tenant, sid);
    Ok(())
}

fn twice(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let mut k = Conn::session(s)?;
    let b = hello(s, 3, 1, 6);
    k.send(&b)?;
    c.sent("a second HELLO", &b);
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code: ErrorCode::INVALID_STATE,
        corr: 3,
        tenant: s.tenant,
        session: Some(k.session),
    };
    expect_error(c, &g, &want);
    still_open(c, &mut k, s.tenant, 4)
}
