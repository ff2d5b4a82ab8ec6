//! The rules of PROTOCOL.md as checks, one file per group of rules (h2spec-style), each
//! naming the section that states it. Every check sends real bytes and judges what comes
//! back; none waits for time to pass: each wait is for a frame or a close, bounded by the
//! site's `wait`.

use deskmux_codec::{ErrorCode, Flags, Frame, Kind, Service};

use crate::report::{Check, Rule};
use crate::wire::{Conn, Got};

mod answers;
mod bodies;
mod closing;
mod events;
mod framing;
mod hello;
mod links;
mod requests;
mod resume;

/// Every rule, in the order of the spec.
pub fn all() -> Vec<Rule> {
    let mut v = Vec::new();
    v.extend(framing::rules());
    v.extend(answers::rules());
    v.extend(bodies::rules());
    v.extend(hello::rules());
    v.extend(closing::rules());
    v.extend(links::rules());
    v.extend(requests::rules());
    v.extend(events::rules());
    v.extend(resume::rules());
    v
}

/// What an error answer must look like.
pub(crate) struct Want {
    /// Response (answering a request) or control (answering no request).
    pub kind: Kind,
    pub code: ErrorCode,
    pub corr: u64,
    pub tenant: u32,
    /// `None`: not judged (before a session is open).
    pub session: Option<u64>,
}

/// Judge `g` as the error `w`.
pub(crate) fn expect_error(c: &mut Check, g: &Got, w: &Want) {
    let Got::Frame(f) = g else {
        c.expect(false, format!("an error {} (got none)", w.code.name()));
        return;
    };
    judge_error(c, f, w);
}

pub(crate) fn judge_error(c: &mut Check, f: &Frame, w: &Want) {
    let h = f.head();
    let code = f.error().map(|(code, _)| code);
    c.expect(
        code == Some(w.code),
        format!(
            "code {} (got {:?})",
            w.code.name(),
            code.map(ErrorCode::name)
        ),
    );
    c.expect(
        h.kind == w.kind,
        format!("kind {:?} (got {:?})", w.kind, h.kind),
    );
    c.expect(
        h.flags == Flags(Flags::ERROR),
        format!("flags exactly ERROR (got {:#04x})", h.flags.0),
    );
    c.expect(
        h.correlation == w.corr,
        format!("correlation {} (got {})", w.corr, h.correlation),
    );
    c.expect(
        h.tenant == w.tenant,
        format!("tenant {} (got {})", w.tenant, h.tenant),
    );
    if let Some(s) = w.session {
        c.expect(h.session == s, format!("session {s} (got {})", h.session));
    }
    if w.kind == Kind::Control {
        c.expect(
            h.service == Service::Control && h.msg_type == deskmux_codec::msg::control::ERROR,
            "a control ERROR frame (service 0, type 0x0008)",
        );
    }
}

/// Judge `g` as a success answer to correlation `corr` of type `t` on session `session`.
pub(crate) fn expect_ok(c: &mut Check, g: &Got, t: u16, corr: u64, tenant: u32, session: u64) {
    let Got::Frame(f) = g else {
        c.expect(false, format!("an answer to correlation {corr} (got none)"));
        return;
    };
    let h = f.head();
    c.expect(
        h.kind == Kind::Response && f.error().is_none(),
        format!("a success response (got {:?} {:?})", h.kind, f.error()),
    );
    c.expect(
        h.msg_type == t,
        format!("type {t:#06x} (got {:#06x})", h.msg_type),
    );
    c.expect(
        h.correlation == corr,
        format!("correlation {corr} (got {})", h.correlation),
    );
    c.expect(
        h.tenant == tenant,
        format!("tenant {tenant} (got {})", h.tenant),
    );
    c.expect(
        h.session == session,
        format!("session {session} (got {})", h.session),
    );
    c.expect(h.flags.0 == 0, format!("no flag (got {:#04x})", h.flags.0));
}

/// The connection still works: an ECHO is answered (correlation `corr`).
pub(crate) fn still_open(
    c: &mut Check,
    k: &mut Conn,
    tenant: u32,
    corr: u64,
) -> anyhow::Result<()> {
    let b = crate::wire::frame(
        crate::wire::head(
            Kind::Request,
            Service::Interaction,
            deskmux_codec::msg::ixn::ECHO,
            tenant,
            corr,
        ),
        |w| w.bin("data", b"still-open").map(|_| ()),
    );
    k.send(&b)?;
    c.sent("ECHO (is the connection still open?)", &b);
    let g = c.got(k.reply());
    let s = k.session;
    expect_ok(c, &g, deskmux_codec::msg::ixn::ECHO, corr, tenant, s);
    Ok(())
}
