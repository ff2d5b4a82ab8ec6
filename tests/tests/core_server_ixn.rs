//! core-server as Interaction Server: the agent and interaction life cycle (invite, accept,
//! change properties, transfer, reject, invite timeout, stop), subscriptions with sequence
//! numbers (per session direct, per link on a link), sessions on a link, tenant isolation.

mod core_server_support;

use std::time::Duration;

use core_server_support::*;
use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{ErrorCode, Flags, Frame, Kind, Service};

const INVITE_MS: u32 = 400;

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), INVITE_MS, "");
    let s = Server::start(&cfg, &[]);
    (dir, s)
}

fn agent(addr: std::net::SocketAddr, tenant: u32, name: &str, token: &str) -> Client {
    let mut c = Client::desktop(addr, tenant, name, token);
    ok(c.ixn(ixn::AGENT_LOGIN, |w| {
        w.str(key::PLACE, "place-1")?;
        Ok(())
    }));
    ok(c.ixn(ixn::AGENT_READY, |_| Ok(())));
    c
}

fn submit(c: &mut Client, queue: &str, p: &[(&str, &str)]) -> i64 {
    let r = ok(c.ixn(ixn::SUBMIT, |w| {
        w.str(key::QUEUE, queue)?;
        props(w, key::PROPS, p)
    }));
    int(&r, key::INTERACTION)
}

fn invite(c: &mut Client) -> Frame {
    c.event(ixn::INVITE, Duration::from_secs(5))
        .expect("invite")
}

fn prop_list(f: &Frame) -> Vec<(String, String)> {
    let l = f.body().list(key::PROPS).unwrap();
    l.iter()
        .map(|i| {
            let (k, v) = i.unwrap();
            match v {
                deskmux_codec::Value::Str(s) => (k.to_string(), s.to_string()),
                _ => panic!("non-string prop"),
            }
        })
        .collect()
}

#[test]
fn full_life_cycle() {
    let (_d, s) = start();
    let mut media = Client::desktop(s.addr, T1, "media-1", TOKEN1);
    let mut a = agent(s.addr, T1, "agent-a", TOKEN1);
    // Submit without being an agent; the only ready agent is invited.
    let id = submit(&mut media, "sales", &[("subject", "hello"), ("lang", "en")]);
    let inv = invite(&mut a);
    assert_eq!(int(&inv, key::INTERACTION), id);
    assert_eq!(inv.body().str(key::QUEUE).unwrap(), "sales");
    assert_eq!(int(&inv, key::TIMEOUT_MS), i64::from(INVITE_MS));
    assert_eq!(
        prop_list(&inv),
        vec![
            ("subject".into(), "hello".into()),
            ("lang".into(), "en".into())
        ]
    );
    assert_eq!(inv.head().session, a.session);
    // Only the invitee may accept.
    err(
        &media.ixn(ixn::ACCEPT, with_ixn(id)),
        ErrorCode::INVALID_STATE,
    );
    let r = ok(a.ixn(ixn::ACCEPT, with_ixn(id)));
    assert_eq!(int(&r, key::INTERACTION), id);
    // Change properties: the owner gets the full merged list.
    ok(media.ixn(ixn::CHANGE_PROPERTIES, |w| {
        w.int(key::INTERACTION, id);
        props(w, key::PROPS, &[("lang", ""), ("prio", "5")])
    }));
    let pc = a
        .event(ixn::PROPERTIES_CHANGED, Duration::from_secs(5))
        .expect("props changed");
    assert_eq!(
        prop_list(&pc),
        vec![
            ("subject".into(), "hello".into()),
            ("prio".into(), "5".into())
        ]
    );
    // Transfer to another queue: the owner is released; the only ready agent gets it again.
    ok(a.ixn(ixn::PLACE_IN_QUEUE, |w| {
        w.int(key::INTERACTION, id);
        w.str(key::QUEUE, "support")?;
        Ok(())
    }));
    let inv = invite(&mut a);
    assert_eq!(inv.body().str(key::QUEUE).unwrap(), "support");
    ok(a.ixn(ixn::ACCEPT, with_ixn(id)));
    // Stop processing completes it; afterwards it is gone.
    ok(a.ixn(ixn::STOP_PROCESSING, with_ixn(id)));
    err(&a.ixn(ixn::ACCEPT, with_ixn(id)), ErrorCode::NOT_FOUND);
    // Not ready: no invite.
    ok(a.ixn(ixn::AGENT_NOT_READY, |w| {
        w.str(key::REASON, "break")?;
        Ok(())
    }));
    let id2 = submit(&mut media, "sales", &[]);
    assert!(a.event(ixn::INVITE, Duration::from_millis(300)).is_none());
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    assert_eq!(int(&invite(&mut a), key::INTERACTION), id2);
    // Logout returns the pending invite; another agent gets it.
    ok(a.ixn(ixn::AGENT_LOGOUT, |_| Ok(())));
    let mut b = agent(s.addr, T1, "agent-b", TOKEN1);
    assert_eq!(int(&invite(&mut b), key::INTERACTION), id2);
    // Logged out: ready is out of order.
    err(
        &a.ixn(ixn::AGENT_READY, |_| Ok(())),
        ErrorCode::INVALID_STATE,
    );
    // Same agent id on another session: INVALID_STATE.
    let mut b2 = Client::desktop(s.addr, T1, "agent-b", TOKEN1);
    err(
        &b2.ixn(ixn::AGENT_LOGIN, |w| {
            w.str(key::PLACE, "p")?;
            Ok(())
        }),
        ErrorCode::INVALID_STATE,
    );
    // Completion with a contact writes history (both roles run here).
    let c = ok(media.ucs(deskmux_codec::msg::ucs::CONTACT_CREATE, |w| {
        props(w, key::ATTRS, &[("email", "z@z")])
    }));
    let contact = int(&c, key::CONTACT);
    ok(b.ixn(ixn::ACCEPT, with_ixn(id2)));
    ok(b.ixn(ixn::STOP_PROCESSING, |w| {
        w.int(key::INTERACTION, id2);
        w.int(key::CONTACT, contact);
        Ok(())
    }));
    let h = ok(media.ucs(deskmux_codec::msg::ucs::HISTORY_LIST, |w| {
        w.int(key::CONTACT, contact);
        Ok(())
    }));
    let items = h.body().list(key::ITEMS).unwrap();
    let first = items.list("item").unwrap();
    assert_eq!(first.int(key::INTERACTION).unwrap(), id2);
    assert_eq!(first.str(key::SUBJECT).unwrap(), "sales");
}

#[test]
fn reject_and_invite_timeout_go_to_next_agent() {
    let (_d, s) = start();
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    // a's READY is answered before b's is sent, and the server orders idle agents by a logical
    // clock, not by time: a is idle longest.
    let mut a = agent(s.addr, T1, "a", TOKEN1);
    let mut b = agent(s.addr, T1, "b", TOKEN1);
    let id = submit(&mut media, "q", &[]);
    // Longest idle first: a.
    assert_eq!(int(&invite(&mut a), key::INTERACTION), id);
    ok(a.ixn(ixn::REJECT, with_ixn(id)));
    // a's idle time restarted: b is next.
    assert_eq!(int(&invite(&mut b), key::INTERACTION), id);
    // b lets it time out: revoked, back to a.
    let rv = b
        .event(ixn::INVITE_REVOKED, Duration::from_secs(5))
        .expect("revoked");
    assert_eq!(int(&rv, key::INTERACTION), id);
    assert_eq!(int(&invite(&mut a), key::INTERACTION), id);
    // b can no longer accept it.
    err(&b.ixn(ixn::ACCEPT, with_ixn(id)), ErrorCode::INVALID_STATE);
    ok(a.ixn(ixn::ACCEPT, with_ixn(id)));
    ok(a.ixn(ixn::STOP_PROCESSING, with_ixn(id)));
    // Disconnecting an invited agent returns the interaction too.
    let id2 = submit(&mut media, "q", &[]);
    // Whichever of the two is invited first (short looks at each in turn, bounded).
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let (first, inv) = loop {
        if let Some(f) = a.event(ixn::INVITE, Duration::from_millis(20)) {
            break ('a', f);
        }
        if let Some(f) = b.event(ixn::INVITE, Duration::from_millis(20)) {
            break ('b', f);
        }
        assert!(std::time::Instant::now() < end, "nobody invited to {id2}");
    };
    assert_eq!(int(&inv, key::INTERACTION), id2);
    if first == 'a' {
        drop(a);
        assert_eq!(int(&invite(&mut b), key::INTERACTION), id2);
    } else {
        drop(b);
        assert_eq!(int(&invite(&mut a), key::INTERACTION), id2);
    }
}

#[test]
fn tenant_isolation_of_interactions() {
    let (_d, s) = start();
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    let mut other = agent(s.addr, T2, "g-agent", TOKEN2);
    let id = submit(&mut media, "q", &[]);
    // Another tenant's ready agent is never invited.
    assert!(
        other
            .event(ixn::INVITE, Duration::from_millis(300))
            .is_none()
    );
    // Its requests on that interaction are NOT_FOUND and touch nothing.
    err(&other.ixn(ixn::ACCEPT, with_ixn(id)), ErrorCode::NOT_FOUND);
    err(
        &other.ixn(ixn::STOP_PROCESSING, with_ixn(id)),
        ErrorCode::NOT_FOUND,
    );
    err(
        &other.ixn(ixn::PLACE_IN_QUEUE, |w| {
            w.int(key::INTERACTION, id);
            w.str(key::QUEUE, "x")?;
            Ok(())
        }),
        ErrorCode::NOT_FOUND,
    );
    let mut a = agent(s.addr, T1, "a", TOKEN1);
    assert_eq!(int(&invite(&mut a), key::INTERACTION), id);
}

#[test]
fn subscriptions_direct_and_link() {
    let (_d, s) = start();
    let mut sub = Client::desktop(s.addr, T1, "sup", TOKEN1);
    let r = ok(sub.ixn(ixn::SUBSCRIBE, |w| {
        w.str(key::TOPIC, "queue:q")?;
        Ok(())
    }));
    let sid = int(&r, key::SUBSCRIPTION);
    assert_eq!(int(&r, key::SEQ), 0);
    let st = ok(sub.ixn(ixn::SUBSCRIBE, |w| {
        w.str(key::TOPIC, "stats")?;
        Ok(())
    }));
    let stats_id = int(&st, key::SUBSCRIPTION);
    err(
        &sub.ixn(ixn::SUBSCRIBE, |w| {
            w.str(key::TOPIC, "bogus")?;
            Ok(())
        }),
        ErrorCode::MALFORMED,
    );
    // A link with two sessions of tenant 1 and one of tenant 2.
    let mut l = Client::connect(s.addr);
    ok(l.link_hello(SECRET.as_bytes()));
    ok(l.session_open(1, T1, "x1", TOKEN1));
    ok(l.session_open(2, T1, "x2", TOKEN1));
    ok(l.session_open(3, T2, "y1", TOKEN2));
    let topic = |w: &mut deskmux_codec::BodyWriter<'_>| {
        w.str(key::TOPIC, "queue:q")?;
        Ok(())
    };
    let l1 = int(
        &ok(l.on(1, T1, Service::Interaction, ixn::SUBSCRIBE, topic)),
        key::SUBSCRIPTION,
    );
    let l2 = int(
        &ok(l.on(2, T1, Service::Interaction, ixn::SUBSCRIBE, topic)),
        key::SUBSCRIPTION,
    );
    assert_eq!(l1, l2, "one subscription per (link, tenant, topic)");
    let l3 = int(
        &ok(l.on(3, T2, Service::Interaction, ixn::SUBSCRIBE, topic)),
        key::SUBSCRIPTION,
    );
    assert_ne!(l1, l3);
    // An agent on the link gets invites addressed to its session.
    ok(l.on(2, T1, Service::Interaction, ixn::AGENT_LOGIN, |w| {
        w.str(key::PLACE, "p")?;
        Ok(())
    }));
    ok(l.on(2, T1, Service::Interaction, ixn::AGENT_READY, |_| Ok(())));
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    let id = submit(&mut media, "q", &[]);
    let inv = l
        .event(ixn::INVITE, Duration::from_secs(5))
        .expect("invite on link");
    assert_eq!(inv.head().session, 2);
    assert_eq!(inv.head().tenant, T1);
    ok(l.on(2, T1, Service::Interaction, ixn::ACCEPT, with_ixn(id)));
    ok(l.on(
        2,
        T1,
        Service::Interaction,
        ixn::STOP_PROCESSING,
        with_ixn(id),
    ));
    // Direct subscriber: submitted, invited, accepted, completed with seq 1..4.
    let want = ["submitted", "invited", "accepted", "completed"];
    for (i, ev) in want.iter().enumerate() {
        let f = sub
            .event(ixn::QUEUE_EVENT, Duration::from_secs(5))
            .expect("queue event");
        assert!(f.head().flags.has(Flags::BROADCAST));
        assert_eq!(f.head().correlation as i64, sid);
        assert_eq!(f.head().session, 0);
        assert_eq!(int(&f, key::SEQ), i as i64 + 1);
        assert_eq!(f.body().str(key::EVENT).unwrap(), *ev);
        assert_eq!(int(&f, key::INTERACTION), id);
        assert!(int(&f, key::PUBLISHED_US) > 0);
    }
    // The link got each event exactly once, on its own subscription id.
    let mut seqs = Vec::new();
    while let Some(f) = l.wait_for(Duration::from_millis(300), |f| {
        f.head().msg_type == ixn::QUEUE_EVENT
    }) {
        assert_eq!(
            f.head().correlation as i64,
            l1,
            "tenant 2 subscription saw tenant 1 events"
        );
        seqs.push(int(&f, key::SEQ));
    }
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    // Stats events flow to the stats subscription.
    let f = sub
        .event(ixn::STATS_EVENT, Duration::from_secs(5))
        .expect("stats");
    assert_eq!(f.head().correlation as i64, stats_id);
    assert_eq!(f.body().str(key::TOPIC).unwrap(), "stats");
    let _ = f.body().int(key::WAITING).unwrap();
    let _ = f.body().int(key::READY_AGENTS).unwrap();
    // Unsubscribe: no more queue events.
    ok(sub.ixn(ixn::UNSUBSCRIBE, topic));
    sub.stash.retain(|f| f.head().msg_type != ixn::QUEUE_EVENT);
    let _ = submit(&mut media, "q", &[]);
    assert!(
        sub.wait_for(Duration::from_millis(300), |f| f.head().msg_type
            == ixn::QUEUE_EVENT)
            .is_none()
    );
    let _ = Kind::Event;
}

#[test]
fn session_close_and_link_loss_return_invites() {
    let (_d, s) = start();
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    let mut l = Client::connect(s.addr);
    ok(l.link_hello(SECRET.as_bytes()));
    for (sid, name) in [(1, "la"), (2, "lb")] {
        ok(l.session_open(sid, T1, name, TOKEN1));
        ok(l.on(sid, T1, Service::Interaction, ixn::AGENT_LOGIN, |w| {
            w.str(key::PLACE, "p")?;
            Ok(())
        }));
        // Answered before session 2's login is sent: session 1 is idle longest (the server
        // orders idle agents by a logical clock, not by time).
        ok(l.on(sid, T1, Service::Interaction, ixn::AGENT_READY, |_| Ok(())));
    }
    let id = submit(&mut media, "q", &[]);
    let inv = l
        .event(ixn::INVITE, Duration::from_secs(5))
        .expect("invite");
    assert_eq!(inv.head().session, 1, "longest idle link session first");
    // The proxy says desktop 1 left: its invite goes to session 2.
    let mut h = deskmux_codec::Head::new(
        Kind::Control,
        Service::Control,
        deskmux_codec::msg::control::SESSION_CLOSE,
    );
    h.tenant = T1;
    h.session = 1;
    l.send_raw(&h.to_bytes());
    let inv = l
        .event(ixn::INVITE, Duration::from_secs(5))
        .expect("invite after session close");
    assert_eq!((inv.head().session, int(&inv, key::INTERACTION)), (2, id));
    // The whole link dies: a direct agent gets it next.
    let mut a = agent(s.addr, T1, "direct", TOKEN1);
    drop(l);
    assert_eq!(int(&invite(&mut a), key::INTERACTION), id);
}
