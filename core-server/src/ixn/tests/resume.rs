//! Sessions that outlive their connection, and keyed requests, driven without sockets: the
//! clock is moved by hand past the grace period.
use super::*;
use std::sync::Mutex;

/// One frame as a desktop would see it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    kind: Kind,
    ty: u16,
    correlation: u64,
    interaction: i64,
    useq: i64,
    error: Option<ErrorCode>,
}

fn seen(d: &mut Desk) -> Vec<Seen> {
    let mut v = Vec::new();
    while let Ok(wire::Out::Frame(b)) = d.rx.try_recv() {
        let mut buf = bytes::BytesMut::from(&b[..]);
        let f = deskmux_codec::FrameDecoder::default()
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        let b = f.body();
        v.push(Seen {
            kind: f.head().kind,
            ty: f.head().msg_type,
            correlation: f.head().correlation,
            interaction: b.opt_int(key::INTERACTION).unwrap().unwrap_or(0),
            useq: b.opt_int(key::USEQ).unwrap().unwrap_or(0),
            error: f.error().map(|(c, _)| c),
        });
    }
    v
}

struct Rig {
    e: Engine,
    rx: EngineRx,
    t0: Instant,
    _dir: tempfile::TempDir,
}

fn rig(resume: ResumeSettings) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("r.db")).unwrap();
    let db = Db::start(Box::new(store), 16).unwrap();
    let (tx, rx) = crate::queue::engine_channel(1024, usize::MAX);
    let set = Settings {
        invite_timeout: Duration::from_secs(5),
        with_ucs: false,
        resume,
    };
    Rig {
        e: Engine::new(set, db, tx, Vec::new(), 0),
        rx,
        t0: Instant::now(),
        _dir: dir,
    }
}

impl Rig {
    fn open(&mut self, key: SessKey, agent: &str, d: &Desk) {
        self.e.handle(
            self.t0,
            Input::Open {
                key,
                tenant: 1,
                agent: agent.into(),
                wire: key,
                peer: d.peer.clone(),
                link: None,
            },
        );
    }

    /// Feed the engine what its DB worker and taps sent it, until `n` inputs came.
    fn feed(&mut self, now: Instant, n: usize) {
        for _ in 0..n {
            let input = self.rx.blocking_recv().unwrap();
            self.e.handle(now, input);
        }
        self.e.check_invariants();
    }

    /// Resume `sid` on a new binding `key`; the engine's verdict.
    fn resume(
        &mut self,
        now: Instant,
        key: SessKey,
        sid: SessKey,
        agent: &str,
        last_event: u64,
        d: &Desk,
    ) -> Result<(), &'static str> {
        let got = Arc::new(Mutex::new(None));
        let g = got.clone();
        self.e.handle(
            now,
            Input::Resume(Box::new(ResumeIn {
                key,
                sid,
                tenant: 1,
                agent: agent.into(),
                wire: key,
                peer: d.peer.clone(),
                link: None,
                last_event,
                hello: Box::new(|_| {
                    let mut h = Head::new(Kind::Response, Service::Control, 0x0001);
                    h.session = 99;
                    wire::build(h, |_| Ok(()))
                }),
                done: Box::new(move |r| *g.lock().unwrap() = Some(r)),
            })),
        );
        self.e.check_invariants();
        got.lock()
            .unwrap()
            .take()
            .expect("the engine gives every resume a verdict")
    }

    fn agent(&self, name: &str) -> Option<&Agent> {
        self.e.tenants.get(&1).and_then(|t| t.agents.get(name))
    }
}

/// Agent "a" (session 1) logged in and ready, and "media" (session 2) that submitted
/// interaction 1, committed: "a" is invited to it (its useq 1).
fn invited(resume: ResumeSettings) -> (Rig, Desk, Desk) {
    let mut r = rig(resume);
    let (a, media) = (Desk::new(), Desk::new());
    r.open(1, "a", &a);
    r.open(2, "media", &media);
    let t0 = r.t0;
    r.e.handle(t0, ask(1, req(ixn::AGENT_LOGIN, |_| Ok(()))));
    r.e.handle(t0, ask(1, req(ixn::AGENT_READY, |_| Ok(()))));
    r.e.handle(
        t0,
        ask(2, req(ixn::SUBMIT, |w| w.str(key::QUEUE, "q").map(drop))),
    );
    r.feed(t0, 1);
    (r, a, media)
}

fn keyed(ty: u16, corr: u64, k: &str, f: impl FnOnce(&mut deskmux_codec::BodyWriter<'_>)) -> Frame {
    let mut h = Head::new(Kind::Request, Service::Interaction, ty);
    h.tenant = 1;
    h.correlation = corr;
    Frame::build(h, |w| {
        f(w);
        w.str(key::IDEM_KEY, k)?;
        Ok(())
    })
    .unwrap()
}

/// An agent with an invite loses its connection: it stays logged in, its invite's revoke is
/// kept, and a resume from its last event gets exactly the events it missed, in order; then,
/// ready again, it is offered the interaction again.
#[test]
fn a_detached_session_keeps_its_agent_and_replays_what_it_missed() {
    let (mut r, mut a, mut media) = invited(ResumeSettings::default());
    let t0 = r.t0;
    assert_eq!(media.drain(), vec![(Kind::Response, ixn::SUBMIT, 1)]);
    let first = seen(&mut a);
    let invite = first.iter().find(|s| s.ty == ixn::INVITE).expect("invited");
    assert_eq!(invite.useq, 1);

    r.e.handle(t0, Input::Detach(1));
    assert!(
        r.agent("a").is_some_and(|x| !x.ready),
        "logged in, not ready"
    );
    // Requests of the old binding find nothing now.
    r.e.handle(t0, ask(1, req(ixn::AGENT_READY, |_| Ok(()))));
    assert!(r.agent("a").is_some_and(|x| !x.ready));
    // The invite times out while it is away: the revoke is kept for it.
    let t1 = t0 + Duration::from_secs(6);
    r.e.tick(t1);
    assert!(
        seen(&mut a).is_empty(),
        "nothing is sent to a dead connection"
    );

    let mut a2 = Desk::new();
    assert_eq!(r.resume(t1, 10, 1, "a", 1, &a2), Ok(()));
    let got = seen(&mut a2);
    assert_eq!(got[0].ty, 0x0001, "the server hello comes first: {got:?}");
    assert_eq!(
        (got[1].ty, got[1].interaction, got[1].useq),
        (ixn::INVITE_REVOKED, 1, 2),
        "{got:?}"
    );
    // Ready again: offered the interaction anew, numbered on.
    assert_eq!((got[2].ty, got[2].useq), (ixn::INVITE, 3), "{got:?}");
    assert!(r.agent("a").is_some_and(|x| x.ready && x.session == 1));
    // The new binding's requests are the session's.
    r.e.handle(t1, ask(10, on(ixn::ACCEPT, 1)));
    resolve_one(&mut r.e, &mut r.rx, t1, false);
    assert!(
        seen(&mut a2)
            .iter()
            .any(|s| s.ty == ixn::ACCEPT && s.error.is_none())
    );
    assert_eq!(r.e.ixns[&1].st, St::Owned { agent: "a".into() });
}

/// When the grace period ends, today's close runs: logout, invite back to its queue; a later
/// resume finds nothing.
#[test]
fn the_grace_period_ends_in_a_logout() {
    let (mut r, _a, _media) = invited(ResumeSettings::default());
    let t0 = r.t0;
    r.e.handle(t0, Input::Detach(1));
    r.e.tick(t0 + Duration::from_secs(4));
    assert!(r.agent("a").is_some(), "still within the grace period");
    assert!(
        matches!(r.e.ixns[&1].st, St::Invited { .. }),
        "its invite is held"
    );
    r.e.tick(t0 + Duration::from_secs(31));
    assert!(r.agent("a").is_none(), "logged out when the grace ended");
    assert!(!r.e.sessions.contains_key(&1));
    assert_eq!(r.e.ixns[&1].st, St::Queued);
    assert_eq!(r.e.replay_bytes, 0);
    let a2 = Desk::new();
    assert!(
        r.resume(t0 + Duration::from_secs(32), 10, 1, "a", 0, &a2)
            .is_err()
    );
}

/// Resume refusals: another agent's claim, a `last_event` ahead of the session, or one from
/// before the oldest event kept. A refused resume ends the session, so that the desktop's
/// fresh login finds its agent free.
#[test]
fn resumes_that_cannot_be_honoured_are_refused() {
    let (mut r, _a, _media) = invited(ResumeSettings {
        buffer_bytes: 1,
        ..ResumeSettings::default()
    });
    let t0 = r.t0;
    // The INVITE (useq 1) did not fit a 1-byte ring: only a resume from 1 is faithful.
    let a2 = Desk::new();
    assert!(r.resume(t0, 10, 1, "b", 1, &a2).is_err(), "another agent");
    assert!(
        r.e.sessions.contains_key(&1),
        "a claim for another agent touches nothing"
    );
    assert!(
        r.resume(t0, 11, 1, "a", 2, &a2).is_err(),
        "ahead of the session"
    );
    assert!(!r.e.sessions.contains_key(&1), "refused: the session ended");
    assert!(r.agent("a").is_none());

    // From before the ring.
    let b = Desk::new();
    r.open(3, "a", &b);
    r.e.handle(t0, ask(3, req(ixn::AGENT_LOGIN, |_| Ok(()))));
    r.e.handle(t0, ask(3, req(ixn::AGENT_READY, |_| Ok(()))));
    assert!(r.resume(t0, 12, 3, "a", 0, &a2).is_err());
}

/// A detached session whose events do not fit its ring ends (at the next tick), and gives
/// its memory back.
#[test]
fn a_detached_session_whose_events_overflow_ends() {
    let (mut r, _a, _media) = invited(ResumeSettings {
        buffer_bytes: 1,
        ..ResumeSettings::default()
    });
    let t0 = r.t0;
    r.e.handle(t0, Input::Detach(1));
    let t1 = t0 + Duration::from_secs(6);
    // The invite's revoke cannot be kept: the session ends at this tick's end.
    r.e.tick(t1);
    r.e.tick(t1);
    assert!(!r.e.sessions.contains_key(&1));
    assert!(r.agent("a").is_none());
    assert_eq!(r.e.stats_resume.overflowed, 1);
    assert_eq!(r.e.replay_bytes, 0);
}

/// A keyed SUBMIT is applied once: a retry after its answer gets the same interaction, and a
/// retry while it is still being written waits for that answer.
#[test]
fn a_keyed_request_is_applied_once() {
    let mut r = rig(ResumeSettings::default());
    let mut m = Desk::new();
    r.open(1, "media", &m);
    let t0 = r.t0;
    let submit = |corr, k: &str| {
        keyed(ixn::SUBMIT, corr, k, |w| {
            w.str(key::QUEUE, "q").unwrap();
        })
    };
    r.e.handle(t0, ask(1, submit(1, "k1")));
    // The commit, then the tap's record of the answer.
    r.feed(t0, 2);
    r.e.handle(t0, ask(1, submit(2, "k1")));
    let got = seen(&mut m);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].correlation, got[0].interaction), (1, 1));
    assert_eq!(
        (got[1].correlation, got[1].interaction),
        (2, 1),
        "answered again"
    );
    assert_eq!(r.e.open_interactions(), 1, "applied once");

    // A retry while the first run is being written.
    r.e.handle(t0, ask(1, submit(3, "k2")));
    r.e.handle(t0, ask(1, submit(4, "k2")));
    r.feed(t0, 2);
    let got = seen(&mut m);
    let by: Vec<(u64, i64)> = got.iter().map(|s| (s.correlation, s.interaction)).collect();
    assert!(by.contains(&(3, 2)) && by.contains(&(4, 2)), "{got:?}");
    assert_eq!(r.e.open_interactions(), 2);

    // A key over 64 bytes is malformed; another key runs.
    r.e.handle(t0, ask(1, submit(5, &"x".repeat(65))));
    assert_eq!(seen(&mut m)[0].error, Some(ErrorCode::MALFORMED));
    r.e.handle(t0, ask(1, submit(6, "k3")));
    r.feed(t0, 2);
    assert_eq!(seen(&mut m)[0].interaction, 3);
}

/// A keyed request whose answer says nothing happened ("not sent") is run again on retry.
#[test]
fn a_not_sent_answer_is_not_remembered() {
    let mut r = rig(ResumeSettings::default());
    let mut a = Desk::new();
    r.open(1, "a", &a);
    let t0 = r.t0;
    let ready = |corr| keyed(ixn::AGENT_READY, corr, "r1", |_| {});
    // Past its deadline: OVERLOADED, not sent.
    r.e.handle(
        t0 + Duration::from_millis(1),
        Input::Request(1, ready(1), t0),
    );
    assert_eq!(seen(&mut a)[0].error, Some(ErrorCode::OVERLOADED));
    r.e.handle(t0, ask(1, req(ixn::AGENT_LOGIN, |_| Ok(()))));
    r.e.handle(t0, ask(1, ready(2)));
    r.feed(t0, 1);
    let got = seen(&mut a);
    assert!(
        got.iter().any(|s| s.correlation == 2 && s.error.is_none()),
        "{got:?}"
    );
    assert!(r.agent("a").is_some_and(|x| x.ready), "the retry ran");
}

/// A detached session lets go of its connection's queue (it would hold the connection's
/// channel, and its frames, for the whole grace period).
#[test]
fn a_detached_session_lets_go_of_its_connection() {
    let mut r = rig(ResumeSettings::default());
    let mut d = Desk::new();
    let peer = std::mem::replace(&mut d.peer, Desk::new().peer);
    r.e.handle(
        r.t0,
        Input::Open {
            key: 1,
            tenant: 1,
            agent: "a".into(),
            wire: 1,
            peer,
            link: None,
        },
    );
    r.e.handle(r.t0, ask(1, req(ixn::AGENT_LOGIN, |_| Ok(()))));
    r.e.handle(r.t0, Input::Detach(1));
    // The login's answer is still there to read; then the channel is closed: nobody holds
    // its sending side any more.
    assert!(matches!(d.rx.try_recv(), Ok(wire::Out::Frame(_))));
    assert!(matches!(
        d.rx.try_recv(),
        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
    ));
    assert!(r.agent("a").is_some(), "the session itself is kept");
}

/// A keyed request that waits for its interaction's write runs once that write resolves (it
/// must not wait for its own answer), and its retry is answered from memory.
#[test]
fn a_keyed_request_that_waits_for_a_write_still_runs() {
    let (mut r, mut a, _media) = invited(ResumeSettings::default());
    let t0 = r.t0;
    r.e.handle(t0, ask(1, on(ixn::ACCEPT, 1)));
    resolve_one(&mut r.e, &mut r.rx, t0, false);
    let change = |corr, k: Option<&str>| {
        let mut h = Head::new(Kind::Request, Service::Interaction, ixn::CHANGE_PROPERTIES);
        h.tenant = 1;
        h.correlation = corr;
        Frame::build(h, |w| {
            w.int(key::INTERACTION, 1);
            w.list(key::PROPS, |p| p.str("note", "x").map(drop))?;
            if let Some(k) = k {
                w.str(key::IDEM_KEY, k)?;
            }
            Ok(())
        })
        .unwrap()
    };
    // A change being written; the keyed one behind it waits.
    r.e.handle(t0, ask(1, change(40, None)));
    r.e.handle(t0, ask(1, change(50, Some("c1"))));
    seen(&mut a);
    resolve_one(&mut r.e, &mut r.rx, t0, false);
    // The keyed change ran: its own write.
    resolve_one(&mut r.e, &mut r.rx, t0, false);
    r.feed(t0, 1);
    let got = seen(&mut a);
    assert!(
        got.iter().any(|s| s.correlation == 50 && s.error.is_none()),
        "{got:?}"
    );
    r.e.handle(t0, ask(1, change(51, Some("c1"))));
    let got = seen(&mut a);
    assert!(
        got.iter().any(|s| s.correlation == 51 && s.error.is_none()),
        "answered from memory: {got:?}"
    );
}
