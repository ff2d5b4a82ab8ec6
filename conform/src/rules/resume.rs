//! §4.6: resuming a session. Run only against a site whose server hello offers `resume` (a
//! site without resume passes them as skipped): the token takes the session back on a new
//! connection, and a forged one is refused.

use deskmux_codec::msg::{control, key};
use deskmux_codec::{ErrorCode, Kind, Service};

use super::{Want, expect_error};
use crate::report::{Check, Rule};
use crate::wire::{Conn, Got, Site, frame, head};

pub(super) fn rules() -> Vec<Rule> {
    vec![
        Rule {
            section: "§4.6",
            name: "resume.takes-the-session-back",
            text: "a hello with the server hello's resume token, on a new connection: a server hello with the same token and `replayed`",
            run: takes_back,
        },
        Rule {
            section: "§4.6",
            name: "resume.forged-token",
            text: "a hello with a resume token that is not the site's: RESUME_REFUSED, then close",
            run: forged,
        },
    ]
}

/// A hello resuming with `token` (and `reconnect`, for services on servers that keep no
/// sessions), last event `last`.
fn resume_hello(s: &Site, corr: u64, token: &str, reconnect: Option<&str>, last: i64) -> Vec<u8> {
    let h = head(
        Kind::Request,
        Service::Control,
        control::HELLO,
        s.tenant,
        corr,
    );
    frame(h, |w| {
        w.int(key::VERSION, 1);
        w.str(key::AGENT, &s.agent)?;
        if let Some(r) = reconnect {
            w.str(key::RECONNECT, r)?;
        }
        w.int(key::SERVICES, 6);
        w.str(key::RESUME, token)?;
        w.int(key::LAST_EVENT, last);
        Ok(())
    })
}

/// The resume and reconnect tokens of a fresh session, or `None` if the site offers none.
fn tokens(s: &Site, c: &mut Check) -> anyhow::Result<Option<(String, Option<String>)>> {
    let mut k = Conn::open(s)?;
    let sh = k.hello(s, 6)?;
    let b = sh.body();
    let Some(t) = b.opt_str(key::RESUME)? else {
        c.skip("the site's server hello offers no resume token");
        return Ok(None);
    };
    c.note("hello: a server hello with a resume token");
    let reconnect = b.opt_str(key::RECONNECT)?.map(str::to_string);
    Ok(Some((t.to_string(), reconnect)))
}

fn takes_back(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let Some((token, reconnect)) = tokens(s, c)? else {
        return Ok(());
    };
    // The first connection may still be open: a resume takes the session over either way.
    let mut k = Conn::open(s)?;
    let b = resume_hello(s, 2, &token, reconnect.as_deref(), 0);
    k.send(&b)?;
    c.sent("HELLO with resume and last_event 0", &b);
    let g = c.got(k.reply());
    let Got::Frame(f) = &g else {
        c.expect(false, "a server hello");
        return Ok(());
    };
    c.expect(
        f.head().kind == Kind::Response && f.error().is_none(),
        format!("a success answer (got {:?} {:?})", f.head().kind, f.error()),
    );
    if f.error().is_some() {
        return Ok(());
    }
    let body = f.body();
    c.expect(
        body.opt_str(key::RESUME)? == Some(token.as_str()),
        "the same resume token",
    );
    c.expect(
        body.opt_int(key::REPLAYED)?.is_some_and(|n| n >= 0),
        "`replayed`, the number of events that follow",
    );
    c.expect(
        f.head().session != 0 && body.opt_int(key::SESSION)? == Some(f.head().session as i64),
        "a session id, in head and body",
    );
    Ok(())
}

fn forged(s: &Site, c: &mut Check) -> anyhow::Result<()> {
    let Some((token, reconnect)) = tokens(s, c)? else {
        return Ok(());
    };
    // Change the token's last character: its tag no longer matches.
    let mut bad = token.clone();
    let last = bad.pop().unwrap_or('0');
    bad.push(if last == '0' { '1' } else { '0' });
    let mut k = Conn::open(s)?;
    let b = resume_hello(s, 3, &bad, reconnect.as_deref(), 0);
    k.send(&b)?;
    c.sent("HELLO with a forged resume token", &b);
    let g = c.got(k.reply());
    let want = Want {
        kind: Kind::Response,
        code: ErrorCode::RESUME_REFUSED,
        corr: 3,
        tenant: s.tenant,
        session: None,
    };
    expect_error(c, &g, &want);
    let closed = k.closes();
    c.expect(closed, "the connection closed after the refused hello");
    Ok(())
}
