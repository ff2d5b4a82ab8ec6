//! The engine without sockets: the clock is driven by hand, so the invite timeout is tested
//! without sleeping.
use super::*;
use crate::storage::sqlite::SqliteStore;
use crate::wire::Outbox;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    let (tx, mut rx) = crate::queue::engine_channel(1024);
    let set = Settings {
        invite_timeout: Duration::from_secs(5),
        with_ucs: false,
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
        e.handle(t0, Input::Request(k, req(ixn::AGENT_LOGIN, |_| Ok(()))));
        e.handle(t0, Input::Request(k, req(ixn::AGENT_READY, |_| Ok(()))));
    }
    e.handle(
        t0,
        Input::Request(
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
        Input::Request(
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
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(&dir.path().join("r.db"), "normal").unwrap();
    let db = Db::start(Box::new(store), 64).unwrap();
    let (tx, mut rx) = crate::queue::engine_channel(1024);
    let set = Settings {
        invite_timeout: Duration::from_millis(100),
        with_ucs: false,
    };
    let mut e = Engine::new(set, db, tx, Vec::new(), 0);
    let mut now = Instant::now();
    let mut rng = fastrand::Rng::with_seed(7);
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
    for _ in 0..2000 {
        let i = rng.usize(0..5);
        let k = keys[i];
        let open: Vec<u64> = e.ixns.keys().copied().collect();
        let id = if open.is_empty() {
            1
        } else {
            open[rng.usize(0..open.len())] as i64
        };
        let f = match rng.u32(0..12) {
            0 => req(ixn::AGENT_LOGIN, |_| Ok(())),
            1 | 2 => req(ixn::AGENT_READY, |_| Ok(())),
            3 => req(ixn::AGENT_NOT_READY, |_| Ok(())),
            4 => req(ixn::AGENT_LOGOUT, |_| Ok(())),
            5 => ixn_req(ixn::ACCEPT, id),
            6 => ixn_req(ixn::REJECT, id),
            7 => ixn_req(ixn::STOP_PROCESSING, id),
            8 => ixn_req(ixn::PLACE_IN_QUEUE, id),
            9 => {
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
                e.handle(
                    now,
                    Input::Request(
                        keys[5],
                        req(ixn::SUBMIT, |w| {
                            w.str(key::QUEUE, "q1")?;
                            Ok(())
                        }),
                    ),
                );
                let committed = rx.blocking_recv().unwrap();
                e.handle(now, committed);
                e.check_invariants();
                continue;
            }
        };
        e.handle(now, Input::Request(k, f));
        if rng.u32(0..4) == 0 {
            now += Duration::from_millis(60);
            e.tick(now);
        }
        e.check_invariants();
        for d in &mut desks {
            d.drain();
        }
    }
}
