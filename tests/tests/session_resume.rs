//! A desktop's session outlives its connection (PROTOCOL.md §4.6), and keyed requests are
//! applied once (§5.5), against a real core-server: the desktop's TCP connection is dropped
//! mid-work and a new one resumes with its token.

mod core_server_support;

use core_server_support::*;
use deskmux_codec::msg::{DesktopHello, Resume, control, ixn, key};
use deskmux_codec::{BodyWriter, ErrorCode, Frame, Head, Kind, Service};

/// A hello that resumes: the token and the last unicast event received.
fn resume_hello(c: &mut Client, tenant: u32, agent: &str, token: &str, last: u64) -> Frame {
    let mut h = Head::new(Kind::Request, Service::Control, control::HELLO);
    h.tenant = tenant;
    let r = c.call_head(h, |w: &mut BodyWriter<'_>| {
        DesktopHello {
            version: 1,
            agent,
            token: "",
            reconnect: None,
            services: 6,
        }
        .write(w)?;
        Resume {
            token,
            last_event: last,
        }
        .write(w)
    });
    if r.error().is_none() {
        c.tenant = tenant;
        c.session = r.body().int(key::SESSION).unwrap() as u64;
    }
    r
}

fn useq(f: &Frame) -> i64 {
    int(f, key::USEQ)
}

fn start(extra: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    // The invite timeout is long: no event here depends on a timer.
    let cfg = write_config(
        dir.path(),
        60_000,
        &format!("http_listen = \"127.0.0.1:0\"\n{extra}"),
    );
    (dir, Server::start(&cfg, &[]))
}

/// Agent `a` owns an interaction that `media` submitted; its id. `a` has seen useq 1 (the
/// invite).
fn owned(a: &mut Client, media: &mut Client) -> i64 {
    ok(a.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    let id = int(
        &ok(media.ixn(ixn::SUBMIT, |w| w.str(key::QUEUE, "q").map(drop))),
        key::INTERACTION,
    );
    let inv = a.event(ixn::INVITE, WAIT).expect("invite");
    assert_eq!(useq(&inv), 1, "the session's first unicast event");
    ok(a.ixn(ixn::ACCEPT, |w| {
        w.int(key::INTERACTION, id);
        Ok(())
    }));
    id
}

fn change(media: &mut Client, id: i64, v: &str) {
    ok(media.ixn(ixn::CHANGE_PROPERTIES, |w| {
        w.int(key::INTERACTION, id);
        props(w, key::PROPS, &[("note", v)])
    }));
}

/// Metric `name`'s value, waited for until `want` holds (bounded).
fn metric_until(s: &mut Server, name: &str, want: impl Fn(f64) -> bool) -> f64 {
    let addr = http_addr(s);
    let mut v = f64::NAN;
    deskmux_tests::wait_until(WAIT, || {
        v = sample(&http(addr, "GET", "/metrics", None).1, name).unwrap_or(f64::NAN);
        want(v)
    });
    v
}

/// The connection drops with an event on its way, and another comes while it is away; a
/// new connection resumes: no login, the missed events come in order and once, and a keyed
/// request sent before the drop, retried, is answered from memory rather than applied twice.
#[test]
fn a_dropped_desktop_resumes_with_nothing_lost_or_doubled() {
    let (_dir, mut s) = start("");
    let mut a = Client::connect(s.addr);
    let hello = ok(a.hello(T1, "a", TOKEN1));
    let token = hello
        .body()
        .str(key::RESUME)
        .expect("a server hello offers resume")
        .to_string();
    assert_eq!(int(&hello, key::RESUME_GRACE_MS), 30_000);
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    let id = owned(&mut a, &mut media);

    // A keyed SUBMIT (not idempotent by itself), answered.
    let keyed_submit = |w: &mut BodyWriter<'_>| {
        w.str(key::QUEUE, "q2")?;
        w.str(key::IDEM_KEY, "submit-1").map(drop)
    };
    let first = int(&ok(a.ixn(ixn::SUBMIT, keyed_submit)), key::INTERACTION);
    // An event seen (useq 2), then one the drop loses (useq 3).
    change(&mut media, id, "seen");
    assert_eq!(useq(&a.event(ixn::PROPERTIES_CHANGED, WAIT).unwrap()), 2);
    change(&mut media, id, "missed-1");
    drop(a);
    metric_until(&mut s, "deskmux_core_sessions_detached_total", |v| v >= 1.0);
    // Sent while detached (useq 4).
    change(&mut media, id, "missed-2");

    let mut a2 = Client::connect(s.addr);
    let r = ok(resume_hello(&mut a2, T1, "a", &token, 2));
    assert_eq!(r.body().str(key::RESUME).unwrap(), token, "the same token");
    assert_eq!(int(&r, key::REPLAYED), 2);
    let mut got = Vec::new();
    for _ in 0..2 {
        let f = a2
            .event(ixn::PROPERTIES_CHANGED, WAIT)
            .expect("replayed event");
        assert_eq!(
            f.head().session,
            a2.session,
            "addressed to the new session id"
        );
        got.push(useq(&f));
    }
    assert_eq!(got, vec![3, 4], "the events after last_event, in order");

    // No second login: the session and its interaction are the agent's still. The next event
    // is the next one (events arrive in order: a replay sent twice would come first).
    change(&mut media, id, "live");
    assert_eq!(useq(&a2.event(ixn::PROPERTIES_CHANGED, WAIT).unwrap()), 5);
    // The keyed retry gets the first answer; the next interaction is the very next id, so
    // the retry created none.
    let again = int(&ok(a2.ixn(ixn::SUBMIT, keyed_submit)), key::INTERACTION);
    assert_eq!(again, first, "answered from memory");
    let next = int(
        &ok(a2.ixn(ixn::SUBMIT, |w| w.str(key::QUEUE, "q2").map(drop))),
        key::INTERACTION,
    );
    assert_eq!(next, first + 1, "applied once");
    ok(a2.ixn(ixn::STOP_PROCESSING, |w| {
        w.int(key::INTERACTION, id);
        Ok(())
    }));
    assert!(metric_until(&mut s, "deskmux_core_sessions_resumed_total", |v| v >= 1.0) >= 1.0);
}

/// Tokens that are not the session's: forged, another agent's, another tenant's. Each is
/// refused with RESUME_REFUSED and the connection closes; the session is untouched.
#[test]
fn resume_tokens_of_others_and_forgeries_are_refused() {
    let (_dir, s) = start("");
    let mut a = Client::desktop(s.addr, T1, "a", TOKEN1);
    let mut hello_b = Client::connect(s.addr);
    let hb = ok(hello_b.hello(T2, "b", TOKEN2));
    let token_b = hb.body().str(key::RESUME).unwrap().to_string();
    ok(a.ixn(ixn::AGENT_LOGIN, |_| Ok(())));

    let mut forged = token_b.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let cases: [(u32, &str, &str); 4] = [
        (T2, "b", &forged),
        (T2, "a", &token_b),
        (T1, "b", &token_b),
        (T1, "a", "dms1.00.00"),
    ];
    for (tenant, agent, token) in cases {
        let mut c = Client::connect(s.addr);
        let r = resume_hello(&mut c, tenant, agent, token, 0);
        err(&r, ErrorCode::RESUME_REFUSED);
        assert!(c.closed_within(WAIT), "a refused hello closes");
    }
    // Both sessions are as they were: b's still resumable, a still logged in.
    drop(hello_b);
    let mut b2 = Client::connect(s.addr);
    ok(resume_hello(&mut b2, T2, "b", &token_b, 0));
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
}

/// When the grace ends the session ends as today (logout, invite back to its queue), a resume
/// is refused, and a fresh hello and login work.
#[test]
fn a_session_not_resumed_in_time_ends_as_before() {
    let (_dir, mut s) = start("[resume]\ngrace_ms = 200\n");
    let mut a = Client::connect(s.addr);
    let token = ok(a.hello(T1, "a", TOKEN1))
        .body()
        .str(key::RESUME)
        .unwrap()
        .to_string();
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    ok(a.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    ok(media.ixn(ixn::SUBMIT, |w| w.str(key::QUEUE, "q").map(drop)));
    a.event(ixn::INVITE, WAIT).expect("invite");
    drop(a);
    metric_until(&mut s, "deskmux_core_detached_expired_total", |v| v >= 1.0);
    let mut a2 = Client::connect(s.addr);
    err(
        &resume_hello(&mut a2, T1, "a", &token, 1),
        ErrorCode::RESUME_REFUSED,
    );
    // The invite went back to its queue: a fresh login of another agent gets it.
    let mut b = Client::desktop(s.addr, T1, "b", TOKEN1);
    ok(b.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
    ok(b.ixn(ixn::AGENT_READY, |_| Ok(())));
    b.event(ixn::INVITE, WAIT)
        .expect("the revoked invite is offered again");
    let mut a3 = Client::desktop(s.addr, T1, "a", TOKEN1);
    ok(a3.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
}

/// A detached session whose events pass `resume.buffer_bytes` ends, its memory goes, and its
/// resume is refused; others are untouched.
#[test]
fn a_replay_overflow_is_bounded_and_ends_the_session() {
    let (_dir, mut s) = start("[resume]\nbuffer_bytes = 4096\n");
    let mut a = Client::connect(s.addr);
    let token = ok(a.hello(T1, "a", TOKEN1))
        .body()
        .str(key::RESUME)
        .unwrap()
        .to_string();
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    let id = owned(&mut a, &mut media);
    drop(a);
    metric_until(&mut s, "deskmux_core_sessions_detached_total", |v| v >= 1.0);
    let big = "x".repeat(1000);
    for _ in 0..6 {
        change(&mut media, id, &big);
    }
    metric_until(&mut s, "deskmux_core_detached_overflowed_total", |v| {
        v >= 1.0
    });
    let bytes = metric_until(&mut s, "deskmux_core_replay_bytes", |v| v == 0.0);
    assert_eq!(bytes, 0.0, "the ended session's events are given back");
    let mut a2 = Client::connect(s.addr);
    err(
        &resume_hello(&mut a2, T1, "a", &token, 1),
        ErrorCode::RESUME_REFUSED,
    );
    // The agent is free: a fresh login works, and the other desktop was never touched.
    let mut a3 = Client::desktop(s.addr, T1, "a", TOKEN1);
    ok(a3.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
    ok(media.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
}

/// A desktop that says goodbye (`GO_AWAY`) is not kept: its agent is logged out at once.
#[test]
fn a_goodbye_ends_the_session_at_once() {
    let (_dir, mut s) = start("");
    let mut a = Client::desktop(s.addr, T1, "a", TOKEN1);
    ok(a.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
    let mut h = Head::new(Kind::Control, Service::Control, control::GO_AWAY);
    h.tenant = T1;
    a.send_raw(Frame::build(h, |_| Ok(())).unwrap().as_bytes());
    assert!(a.closed_within(WAIT));
    let mut a2 = Client::desktop(s.addr, T1, "a", TOKEN1);
    ok(a2.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
    let (_, body) = http(http_addr(&mut s), "GET", "/metrics", None);
    assert_eq!(
        sample(&body, "deskmux_core_sessions_detached_total"),
        Some(0.0),
        "a goodbye detaches nothing"
    );
}

/// A resume takes the session from a connection the server still believes alive: that one
/// is told (`SESSION_CLOSE`) and closed, and the session goes on on the new one.
#[test]
fn a_resume_takes_over_a_connection_still_open() {
    let (_dir, s) = start("");
    let mut a = Client::connect(s.addr);
    let token = ok(a.hello(T1, "a", TOKEN1))
        .body()
        .str(key::RESUME)
        .unwrap()
        .to_string();
    ok(a.ixn(ixn::AGENT_LOGIN, |_| Ok(())));
    let mut a2 = Client::connect(s.addr);
    ok(resume_hello(&mut a2, T1, "a", &token, 0));
    let close = a
        .wait_for(WAIT, |f| {
            f.head().kind == Kind::Control && f.head().msg_type == control::SESSION_CLOSE
        })
        .expect("the old connection is told");
    assert_eq!(close.head().tenant, T1);
    assert!(a.closed_within(WAIT), "and closed");
    ok(a2.ixn(ixn::AGENT_READY, |_| Ok(())));
}
