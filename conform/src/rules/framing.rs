//! §2.2: lost framing, judged byte by byte (points 12 of issue 13): a control error before the
//! close, and which error wins.

use deskmux_codec::msg::ixn;
use deskmux_codec::{ErrorCode, Kind, Service};

use super::{Want, expect_error};
use crate::report::{Check, Rule};
use crate::wire::{Conn, Site, head};

pub(super) fn rules() -> Vec<Rule> {
    vec![
        Rule {
            section: "§2.2",
            name: "framing.bad-first-byte",
            text: "one wrong first byte: control PROTOCOL at once, then close",
            run: |s, c| lost(s, c, "one byte 0x47", &[0x47], ErrorCode::PROTOCOL),
        },
        Rule {
            section: "§2.2",
            name: "framing.bad-second-byte",
            text: "0x44 and a wrong second magic byte: PROTOCOL, then close",
            run: |s, c| lost(s, c, "0x44 0x4e", &[0x44, 0x4E], ErrorCode::PROTOCOL),
        },
        Rule {
            section: "§2.2",
            name: "framing.bad-version-early",
            text: "magic and version 2, no more: PROTOCOL without waiting for the head",
            run: |s, c| lost(s, c, "44 4d 02", &[0x44, 0x4D, 0x02], ErrorCode::PROTOCOL),
        },
        Rule {
            section: "§2.2",
            name: "framing.version-beats-length",
            text: "version 2 and a length over the maximum: PROTOCOL, not FRAME_TOO_LARGE",
            run: |s, c| {
                let mut h = head(Kind::Request, Service::Interaction, ixn::ECHO, s.tenant, 1);
                h.body_len = u32::MAX;
                let mut b = h.to_bytes().to_vec();
                b[2] = 2;
                lost(
                    s,
                    c,
                    "head: version 2, length 0xffffffff",
                    &b,
                    ErrorCode::PROTOCOL,
                )
            },
        },
        Rule {
            section: "§4.1",
            name: "framing.too-large-before-hello",
            text: "a head over 16 KiB before the hello: FRAME_TOO_LARGE, then close",
            run: |s, c| {
                let mut h = head(Kind::Request, Service::Control, 1, s.tenant, 1);
                h.body_len = 1 << 20;
                lost(
                    s,
                    c,
                    "hello head announcing 1 MiB",
                    &h.to_bytes(),
                    ErrorCode::FRAME_TOO_LARGE,
                )
            },
        },
    ]
}

/// Send `bytes` on a fresh connection; expect a control error `code` (correlation 0, tenant
/// 0), then the close.
fn lost(s: &Site, c: &mut Check, what: &str, bytes: &[u8], code: ErrorCode) -> anyhow::Result<()> {
    let mut k = Conn::open(s)?;
    k.send(bytes)?;
    c.sent(what, bytes);
    let g = c.got(k.next());
    expect_error(
        c,
        &g,
        &Want {
            kind: Kind::Control,
            code,
            corr: 0,
            tenant: 0,
            session: Some(0),
        },
    );
    let closed = k.closes();
    c.note(if closed { "then closed" } else { "not closed" });
    c.expect(closed, "the connection closed after the error");
    Ok(())
}
