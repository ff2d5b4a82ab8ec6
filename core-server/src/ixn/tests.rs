//! The engine without sockets: the clock is driven by hand, so the invite timeout is tested
//! without sleeping.
use super::*;
use crate::storage::sqlite::SqliteStore;
use crate::wire::Outbox;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod resume;

struct Desk {
    peer: Peer,
    rx: mpsc::Receiver<wire::Out>,
}

impl Desk {
    fn new() -> Desk {
        let limits = wire::QueueLimits {
            desktop_frames: 64,
            desktop_bytes: 1 << 24,
            link_frames: 64,
            link_bytes: 1 << 24,
        };
        let (out, rx, _st) = Outbox::new(limits, CancellationToken::new());
        Desk {
            peer: Peer {
                out,
                inflight: Arc::new(AtomicU32::new(0)),
                tap: None,
            },
            rx,
        }
    }

    /// Frames received so far, as (kind, type, interaction).
    fn drain(&mut self) -> Vec<(Kind, u16, i64)> {
        let mut v = Vec::new();
        while let Ok(wire::Out::Frame(b)) = self.rx.try_recv() {
            let mut dec = deskmux_codec::FrameDecoder::default();
            let mut buf = bytes::BytesMut::from(&b[..]);
            let f = dec.decode(&mut buf).unwrap().unwrap();
            let id = f.body().opt_int(key::INTERACTION).unwrap().unwrap_or(0);
            v.push((f.head().kind, f.head().msg_type, id));
        }
        v
    }
}

/// A request with a deadline far beyond any clock the tests drive.
fn ask(key: SessKey, f: Frame) -> Input {
    Input::Request(key, f, Instant::now() + Duration::from_secs(3600))
}

fn req(
    ty: u16,
    f: impl FnOnce(&mut deskmux_codec::BodyWriter<'_>) -> Result<(), deskmux_codec::BodyError>,
) -> Frame {
    let mut h = Head::new(Kind::Request, Service::Interaction, ty);
    h.tenant = 1;
    Frame::build(h, f).unwrap()
}

#[test]
fn reject_then_timeout_moves_to_next_agent() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("e.db")).unwrap();
    let db = Db::start(Box::new(store), 16).unwrap();
    let (tx, mut rx) = crate::queue::engine_channel(1024, usize::MAX);
    let set = Settings {
        invite_timeout: Duration::from_secs(5),
        with_ucs: false,
        resume: ResumeSettings::default(),
    };
    let mut e = Engine::new(set, db, tx, Vec::new(), 0);
    let t0 = Instant::now();
    let mut desks: Vec<Desk> = (0..3).map(|_| Desk::new()).collect();
    for (i, d) in desks.iter().enumerate() {
        let agent = ["a", "b", "media"][i].to_string();
        e.handle(
            t0,
            Input::Open {
                key: i as u64 + 1,
                tenant: 1,
                agent,
                wire: i as u64 + 1,
                peer: d.peer.clone(),
                link: None,
            },
        );
    }
    for k in [1, 2] {
        e.handle(t0, ask(k, req(ixn::AGENT_LOGIN, |_| Ok(()))));
        e.handle(t0, ask(k, req(ixn::AGENT_READY, |_| Ok(()))));
    }
    e.handle(
        t0,
        ask(
            3,
            req(ixn::SUBMIT, |w| {
                w.str(key::QUEUE, "q")?;
                Ok(())
            }),
        ),
    );
    // The submit is applied once the DB worker has committed it.
    let committed = rx.blocking_recv().unwrap();
    e.handle(t0, committed);
    assert!(desks[2].drain().contains(&(Kind::Response, ixn::SUBMIT, 1)));
    // "a" has been idle longest.
    assert!(desks[0].drain().contains(&(Kind::Event, ixn::INVITE, 1)));
    e.handle(
        t0,
        ask(
            1,
            req(ixn::REJECT, |w| {
                w.int(key::INTERACTION, 1);
                Ok(())
            }),
        ),
    );
    assert!(desks[1].drain().contains(&(Kind::Event, ixn::INVITE, 1)));
    // Nothing expires early; at the deadline b's invite is revoked and a gets it again.
    e.tick(t0 + Duration::from_secs(4));
    assert!(desks[1].drain().is_empty());
    e.tick(t0 + Duration::from_secs(6));
    assert!(
        desks[1]
            .drain()
            .contains(&(Kind::Event, ixn::INVITE_REVOKED, 1))
    );
    assert!(desks[0].drain().contains(&(Kind::Event, ixn::INVITE, 1)));
    assert_eq!(e.open_interactions(), 1);
    e.check_invariants();
}

/// Random operations from several agents; the derived indexes must always match.
#[test]
fn random_operations_keep_invariants() {
    for seed in [7, 8, 9] {
        random_operations(seed);
    }
}

fn random_operations(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(&dir.path().join("r.db"), "normal").unwrap();
    let db = Db::start(Box::new(store), 64).unwrap();
    let (tx, mut rx) = crate::queue::engine_channel(1024, usize::MAX);
    let set = Settings {
        invite_timeout: Duration::from_millis(100),
        with_ucs: false,
        resume: ResumeSettings::default(),
    };
    let mut e = Engine::new(set, db, tx, Vec::new(), 0);
    let mut now = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut desks: Vec<Desk> = (0..6).map(|_| Desk::new()).collect();
    let mut next_key = 100u64;
    let mut keys: Vec<u64> = Vec::new();
    for (i, d) in desks.iter().enumerate() {
        next_key += 1;
        keys.push(next_key);
        let agent = if i == 5 {
            "media".to_string()
        } else {
            format!("ag{i}")
        };
        e.handle(
            now,
            Input::Open {
                key: next_key,
                tenant: 1,
                agent,
                wire: next_key,
                peer: d.peer.clone(),
                link: None,
            },
        );
    }
    let ixn_req = |ty: u16, id: i64| {
        req(ty, move |w| {
            w.int(key::INTERACTION, id);
            w.str(key::QUEUE, "q2")?;
            Ok(())
        })
    };
    let props_req = |id: i64, v: u32| {
        req(ixn::CHANGE_PROPERTIES, move |w| {
            w.int(key::INTERACTION, id);
            w.list(key::PROPS, |l| l.str("k", &v.to_string()).map(drop))?;
            Ok(())
        })
    };
    // Writes resolve late, in between other operations, and one in four is turned into a
    // failure (as a failed commit would report it): memory must stay consistent either way.
    let resolve = |e: &mut Engine, rx: &mut EngineRx, now: Instant, rng: &mut fastrand::Rng| {
        if !e.ixns.values().any(|i| i.writing) {
            return;
        }
        let mut input = rx.blocking_recv().unwrap();
        if let Input::Written(w) = &mut input {
            if rng.u32(0..4) == 0 {
                w.failed = Some(wire::error(&w.req, ErrorCode::UNAVAILABLE, "test failure"));
            }
        }
        e.handle(now, input);
    };
    for _ in 0..3000 {
        if rng.u32(0..3) == 0 {
            resolve(&mut e, &mut rx, now, &mut rng);
            e.check_invariants();
        }
        let i = rng.usize(0..5);
        let k = keys[i];
        // Mostly an interaction this agent is invited to or owns, so that accepts, places and
        // stops go through and their writes overlap other requests on the same interaction.
        let agent = format!("ag{i}");
        let mine: Vec<u64> = e
            .ixns
            .iter()
            .filter(|(_, x)| match &x.st {
                St::Invited { session, .. } => *session == k,
                St::Owned { agent: a } => *a == agent,
                St::Queued => false,
            })
            .map(|(id, _)| *id)
            .collect();
        let open: Vec<u64> = e.ixns.keys().copied().collect();
        let id = if !mine.is_empty() && rng.u32(0..4) > 0 {
            mine[rng.usize(0..mine.len())] as i64
        } else if open.is_empty() {
            1
        } else {
            open[rng.usize(0..open.len())] as i64
        };
        let f = match rng.u32(0..13) {
            0 => req(ixn::AGENT_LOGIN, |_| Ok(())),
            1 | 2 => req(ixn::AGENT_READY, |_| Ok(())),
            3 => req(ixn::AGENT_NOT_READY, |_| Ok(())),
            4 => req(ixn::AGENT_LOGOUT, |_| Ok(())),
            5 => ixn_req(ixn::ACCEPT, id),
            6 => ixn_req(ixn::REJECT, id),
            7 => ixn_req(ixn::STOP_PROCESSING, id),
            8 => ixn_req(ixn::PLACE_IN_QUEUE, id),
            9 => props_req(id, rng.u32(..)),
            10 => {
                // Disconnect and reconnect as the same agent.
                e.handle(now, Input::Close(k));
                next_key += 1;
                keys[i] = next_key;
                e.handle(
                    now,
                    Input::Open {
                        key: next_key,
                        tenant: 1,
                        agent: format!("ag{i}"),
                        wire: next_key,
                        peer: desks[i].peer.clone(),
                        link: None,
                    },
                );
                e.check_invariants();
                continue;
            }
            _ => {
                let before = e.ixns.len();
                e.handle(
                    now,
                    ask(
                        keys[5],
                        req(ixn::SUBMIT, |w| {
                            w.str(key::QUEUE, "q1")?;
                            Ok(())
                        }),
                    ),
                );
                // The submit's commit comes back among the other writes' outcomes.
                while e.ixns.len() == before {
                    let input = rx.blocking_recv().unwrap();
                    e.handle(now, input);
                }
                e.check_invariants();
                continue;
            }
        };
        e.handle(now, ask(k, f));
        if rng.u32(0..4) == 0 {
            now += Duration::from_millis(60);
            e.tick(now);
        }
        e.check_invariants();
        for d in &mut desks {
            d.drain();
        }
    }
    // Every write resolves, and every request that waited for one is run.
    while e.ixns.values().any(|i| i.writing) {
        resolve(&mut e, &mut rx, now, &mut rng);
        e.check_invariants();
    }
    assert_eq!(e.deferred_total, 0);
}

/// The outcome of the one write out: with `fail`, as a failed commit reports it.
fn resolve_one(e: &mut Engine, rx: &mut EngineRx, now: Instant, fail: bool) {
    let mut input = rx.blocking_recv().unwrap();
    let Input::Written(w) = &mut input else {
        panic!("expected a write's outcome, got {input:?}");
    };
    if fail {
        w.failed = Some(wire::error(&w.req, ErrorCode::UNAVAILABLE, "test failure"));
    }
    e.handle(now, input);
    e.check_invariants();
}

fn on(ty: u16, id: i64) -> Frame {
    req(ty, move |w| {
        w.int(key::INTERACTION, id);
        Ok(())
    })
}

/// Memory changes only once a write commits: a failed `ACCEPT` leaves the invite, a failed
/// `STOP_PROCESSING` leaves the agent busy with it, requests on an interaction being written
/// wait for the outcome, an invite that times out during its `ACCEPT`'s write lasts until the
/// write resolves, and an `ACCEPT` that commits after its session ended still gives the agent
/// the interaction.
#[test]
fn writes_change_memory_only_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("w.db")).unwrap();
    let db = Db::start(Box::new(store), 16).unwrap();
    let (tx, mut rx) = crate::queue::engine_channel(1024, usize::MAX);
    let timeout = Duration::from_secs(5);
    let set = Settings {
        invite_timeout: timeout,
        with_ucs: false,
        resume: ResumeSettings::default(),
    };
    let mut e = Engine::new(set, db, tx, Vec::new(), 0);
    let t0 = Instant::now();
    let mut a = Desk::new();
    let mut media = Desk::new();
    let open = |e: &mut Engine, key: u64, agent: &str, d: &Desk| {
        e.handle(
            t0,
            Input::Open {
                key,
                tenant: 1,
                agent: agent.to_string(),
                wire: key,
                peer: d.peer.clone(),
                link: None,
            },
        );
    };
    open(&mut e, 1, "a", &a);
    open(&mut e, 9, "media", &media);
    e.handle(t0, ask(1, req(ixn::AGENT_LOGIN, |_| Ok(()))));
    e.handle(t0, ask(1, req(ixn::AGENT_READY, |_| Ok(()))));
    for _ in 0..2 {
        let submit = req(ixn::SUBMIT, |w| w.str(key::QUEUE, "q").map(drop));
        e.handle(t0, ask(9, submit));
        let committed = rx.blocking_recv().unwrap();
        e.handle(t0, committed);
    }
    media.drain();
    assert!(a.drain().contains(&(Kind::Event, ixn::INVITE, 1)));

    // An ACCEPT whose write fails: still invited, so it can be accepted again.
    e.handle(t0, ask(1, on(ixn::ACCEPT, 1)));
    assert!(e.ixns[&1].writing);
    // A REJECT sent meanwhile waits for the ACCEPT's outcome rather than requeueing an
    // interaction that may be owned a moment later.
    e.handle(t0, ask(1, on(ixn::REJECT, 1)));
    assert_eq!(e.deferred_total, 1);
    resolve_one(&mut e, &mut rx, t0, true);
    let got = a.drain();
    assert!(got.contains(&(Kind::Response, ixn::ACCEPT, 0)), "{got:?}");
    // The waiting REJECT ran after the failure: the invite went back and came again.
    assert!(got.contains(&(Kind::Response, ixn::REJECT, 0)), "{got:?}");
    assert!(got.contains(&(Kind::Event, ixn::INVITE, 1)), "{got:?}");
    assert_eq!(e.deferred_total, 0);

    // An ACCEPT being written when the invite times out: the invite lasts until the write
    // resolves; it failed, so the invite is revoked then.
    let t1 = t0 + Duration::from_secs(1);
    e.handle(t1, ask(1, on(ixn::ACCEPT, 1)));
    e.tick(t1 + timeout * 2);
    assert!(!a.drain().contains(&(Kind::Event, ixn::INVITE_REVOKED, 1)));
    resolve_one(&mut e, &mut rx, t1 + timeout * 2, true);
    let got = a.drain();
    assert!(
        got.contains(&(Kind::Event, ixn::INVITE_REVOKED, 1)),
        "{got:?}"
    );
    // ... and offered again (a is the only agent).
    assert!(got.contains(&(Kind::Event, ixn::INVITE, 1)), "{got:?}");

    // Committed: owned. Interaction 2 waits, since a is busy.
    let t2 = t1 + timeout * 2;
    e.handle(t2, ask(1, on(ixn::ACCEPT, 1)));
    resolve_one(&mut e, &mut rx, t2, false);
    assert_eq!(e.ixns[&1].st, St::Owned { agent: "a".into() });
    assert!(!a.drain().iter().any(|f| f.1 == ixn::INVITE && f.2 == 2));

    // A STOP whose write fails: a still owns 1, is still busy, and 2 is not offered.
    e.handle(t2, ask(1, on(ixn::STOP_PROCESSING, 1)));
    resolve_one(&mut e, &mut rx, t2, true);
    assert_eq!(e.ixns[&1].st, St::Owned { agent: "a".into() });
    let got = a.drain();
    assert!(got.contains(&(Kind::Response, ixn::STOP_PROCESSING, 0)));
    assert!(
        !got.iter().any(|f| f.1 == ixn::INVITE && f.2 == 2),
        "{got:?}"
    );
    // Committed this time: 1 is gone and 2 is offered.
    e.handle(t2, ask(1, on(ixn::STOP_PROCESSING, 1)));
    resolve_one(&mut e, &mut rx, t2, false);
    assert!(!e.ixns.contains_key(&1));
    assert!(a.drain().contains(&(Kind::Event, ixn::INVITE, 2)));

    // An ACCEPT of 2 being written when a's session ends (the invite is requeued) and a logs
    // in again on a new session, not ready: once committed, a owns 2 (it is out of its queue)
    // and counts it in its load.
    e.handle(t2, ask(1, on(ixn::ACCEPT, 2)));
    e.handle(t2, Input::Close(1));
    assert_eq!(e.ixns[&2].st, St::Queued);
    let a2 = Desk::new();
    open(&mut e, 2, "a", &a2);
    e.handle(t2, ask(2, req(ixn::AGENT_LOGIN, |_| Ok(()))));
    assert_eq!(e.tenants[&1].agents["a"].load, 0);
    resolve_one(&mut e, &mut rx, t2, false);
    assert_eq!(e.ixns[&2].st, St::Owned { agent: "a".into() });
    assert_eq!(e.tenants[&1].agents["a"].load, 1);
    assert_eq!(e.tenants[&1].waiting, 0);
}

/// A request handled after its deadline is answered `OVERLOADED` and not run.
#[test]
fn a_request_past_its_deadline_is_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("d.db")).unwrap();
    let db = Db::start(Box::new(store), 16).unwrap();
    let (tx, _rx) = crate::queue::engine_channel(1024, usize::MAX);
    let set = Settings {
        invite_timeout: Duration::from_secs(5),
        with_ucs: false,
        resume: ResumeSettings::default(),
    };
    let mut e = Engine::new(set, db, tx, Vec::new(), 0);
    let t0 = Instant::now();
    let mut d = Desk::new();
    e.handle(
        t0,
        Input::Open {
            key: 1,
            tenant: 1,
            agent: "a".into(),
            wire: 1,
            peer: d.peer.clone(),
            link: None,
        },
    );
    let login = req(ixn::AGENT_LOGIN, |_| Ok(()));
    let late = t0 + Duration::from_millis(1);
    e.handle(late, Input::Request(1, login.clone(), t0));
    assert!(e.tenants.get(&1).is_none_or(|t| t.agents.is_empty()));
    // At its deadline it still runs.
    e.handle(late, Input::Request(1, login, late));
    assert!(e.tenants[&1].agents.contains_key("a"));
    let codes: Vec<Option<ErrorCode>> = std::iter::from_fn(|| d.rx.try_recv().ok())
        .map(|o| match o {
            wire::Out::Frame(b) => {
                let mut buf = bytes::BytesMut::from(&b[..]);
                let f = deskmux_codec::FrameDecoder::default()
                    .decode(&mut buf)
                    .unwrap()
                    .unwrap();
                f.error().map(|(c, _)| c)
            }
            _ => None,
        })
        .collect();
    assert_eq!(codes, [Some(ErrorCode::OVERLOADED), None]);
}
