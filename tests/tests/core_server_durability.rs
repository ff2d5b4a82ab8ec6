//! core-server persistence and availability: restart after kill -9 (queued and owned
//! interactions, every acknowledged UCS write intact), warm standby takeover, the operator's
//! service-state signals, and graceful shutdown with GO_AWAY.

mod core_server_support;

use std::time::Duration;

use core_server_support::*;
use deskmux_codec::msg::{self, control, ixn, key, ucs};
use deskmux_codec::{ErrorCode, Frame, Head, Kind, Service};

/// Pipeline `n` contact creates, collect the acks that arrive, then return (ids acked).
fn burst_creates(c: &mut Client, n: u64, base_corr: u64) -> Vec<i64> {
    for i in 0..n {
        let mut h = Head::new(Kind::Request, Service::Ucs, ucs::CONTACT_CREATE);
        h.tenant = T1;
        h.correlation = base_corr + i;
        let f = Frame::build(h, |w| props(w, key::ATTRS, &[("seq", &i.to_string())])).unwrap();
        c.send_raw(f.as_bytes());
    }
    let mut acked = Vec::new();
    // The first answer comes after a group commit, which may take a while (a busy machine, a
    // database across the network); after it, a 20 ms gap ends the collection, so that the
    // kill that follows cuts the burst.
    let mut gap = WAIT;
    for _ in 0..n {
        match c.read_frame(gap) {
            Some(f) if f.head().kind == Kind::Response && f.error().is_none() => {
                acked.push(int(&f, key::CONTACT));
                gap = Duration::from_millis(20);
            }
            Some(_) => {}
            None => break,
        }
    }
    acked
}

#[test]
fn restart_after_kill9_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let mut s = Server::start(&cfg, &[]);
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    let queued: Vec<i64> = (0..4).map(|_| submit(&mut media, "q")).collect();
    // One interaction owned by agent "a".
    let mut a = agent(s.addr, "a");
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    let inv = a.event(ixn::INVITE, WAIT).expect("invite");
    let owned = int(&inv, key::INTERACTION);
    assert_eq!(owned, queued[0]);
    ok(a.ixn(ixn::ACCEPT, with_ixn(owned)));
    ok(a.ixn(ixn::AGENT_NOT_READY, |_| Ok(())));
    // UCS: acknowledged writes, then a pipelined burst cut by kill -9.
    let mut w = Client::desktop(s.addr, T1, "writer", TOKEN1);
    let c1 = int(
        &ok(w.ucs(ucs::CONTACT_CREATE, |b| {
            props(b, key::ATTRS, &[("email", "k@x")])
        })),
        key::CONTACT,
    );
    ok(w.ucs(ucs::CONTACT_UPDATE, |b| {
        b.int(key::CONTACT, c1);
        props(b, key::ATTRS, &[("name", "Kay")])
    }));
    let h1 = int(
        &ok(w.ucs(ucs::HISTORY_INSERT, |b| {
            b.int(key::CONTACT, c1);
            b.str(key::SUBJECT, "s")?;
            b.str(key::TEXT, "durable text")?;
            Ok(())
        })),
        key::HISTORY,
    );
    let acked = burst_creates(&mut w, 300, 10_000);
    assert!(
        !acked.is_empty(),
        "some of the burst was acknowledged before the kill"
    );
    s.kill9();
    drop((media, a, w));

    let mut s = Server::start(&cfg, &[]);
    let mut r = Client::desktop(s.addr, T1, "reader", TOKEN1);
    let g = ok(r.ucs(ucs::CONTACT_GET, |b| {
        b.int(key::CONTACT, c1);
        Ok(())
    }));
    let attrs = g.body().list(key::ATTRS).unwrap();
    assert_eq!(attrs.str("name").unwrap(), "Kay");
    let t = ok(r.ucs(ucs::CONTENT_GET, |b| {
        b.int(key::HISTORY, h1);
        Ok(())
    }));
    assert_eq!(t.body().str(key::TEXT).unwrap(), "durable text");
    for id in &acked {
        ok(r.ucs(ucs::CONTACT_GET, |b| {
            b.int(key::CONTACT, *id);
            Ok(())
        }));
    }
    // Queued interactions come back in order to a ready agent.
    let mut b = agent(s.addr, "b");
    ok(b.ixn(ixn::AGENT_READY, |_| Ok(())));
    for want in &queued[1..] {
        let inv = b.event(ixn::INVITE, WAIT).expect("invite after restart");
        assert_eq!(int(&inv, key::INTERACTION), *want);
        ok(b.ixn(ixn::ACCEPT, with_ixn(*want)));
        ok(b.ixn(ixn::STOP_PROCESSING, with_ixn(*want)));
    }
    // The owned one is still owned by "a", who can complete it after logging in again.
    err(
        &b.ixn(ixn::STOP_PROCESSING, with_ixn(owned)),
        ErrorCode::INVALID_STATE,
    );
    let mut a = agent(s.addr, "a");
    ok(a.ixn(ixn::STOP_PROCESSING, with_ixn(owned)));
    // New ids do not collide with old ones.
    let mut media = Client::desktop(s.addr, T1, "media", TOKEN1);
    assert!(submit(&mut media, "q") > *queued.iter().max().unwrap());
    s.kill9();
}

#[test]
fn standby_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let mut p = Server::start(&cfg, &[]);
    // A second primary on the same data refuses to start.
    let st = std::process::Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
    let mut sb = Server::start(&cfg, &["--standby", "--instance", "core-2"]);
    sb.wait_line("ROLE backup");
    // The standby announces itself as backup and takes no sessions.
    let mut l = Client::connect(sb.addr);
    let ack = msg::LinkHelloAck::read(ok(l.link_hello(SECRET.as_bytes())).body())
        .unwrap()
        .state
        .role;
    assert_eq!(ack, msg::Role::Backup);
    err(&l.session_open(1, T1, "x", TOKEN1), ErrorCode::UNAVAILABLE);
    // State written on the primary.
    let mut media = Client::desktop(p.addr, T1, "media", TOKEN1);
    let ixn_id = submit(&mut media, "q");
    let c = int(
        &ok(media.ucs(ucs::CONTACT_CREATE, |b| {
            props(b, key::ATTRS, &[("email", "sb@x")])
        })),
        key::CONTACT,
    );
    p.kill9();
    sb.wait_line("ROLE primary");
    // The link sees SERVICE_STATE role=primary.
    let f = l
        .wait_for(WAIT, |f| {
            f.head().kind == Kind::Control && f.head().msg_type == control::SERVICE_STATE
        })
        .expect("service state");
    let ss = msg::ServiceState::read(f.body()).unwrap();
    assert_eq!(
        (ss.role, ss.state, ss.instance),
        (msg::Role::Primary, msg::State::Running, "core-2")
    );
    ok(l.session_open(1, T1, "x", TOKEN1));
    let g = ok(l.on(1, T1, Service::Ucs, ucs::CONTACT_GET, |b| {
        b.int(key::CONTACT, c);
        Ok(())
    }));
    assert_eq!(
        g.body().list(key::ATTRS).unwrap().str("email").unwrap(),
        "sb@x"
    );
    // A new link hello ack says primary.
    let mut l2 = Client::connect(sb.addr);
    let ack = msg::LinkHelloAck::read(ok(l2.link_hello(SECRET.as_bytes())).body())
        .unwrap()
        .state
        .role;
    assert_eq!(ack, msg::Role::Primary);
    // The queued interaction is served by the new primary.
    let mut a = agent(sb.addr, "a");
    ok(a.ixn(ixn::AGENT_READY, |_| Ok(())));
    let inv = a.event(ixn::INVITE, WAIT).expect("invite on standby");
    assert_eq!(int(&inv, key::INTERACTION), ixn_id);
}

#[test]
fn service_state_signals_and_go_away() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let mut s = Server::start(&cfg, &[]);
    let mut l = Client::connect(s.addr);
    ok(l.link_hello(SECRET.as_bytes()));
    ok(l.session_open(1, T1, "x", TOKEN1));
    let mut d = Client::desktop(s.addr, T1, "d", TOKEN1);
    let is_state =
        |f: &Frame| f.head().kind == Kind::Control && f.head().msg_type == control::SERVICE_STATE;
    s.signal("USR1");
    let f = l.wait_for(WAIT, is_state).expect("state on link");
    assert_eq!(
        msg::ServiceState::read(f.body()).unwrap().state,
        msg::State::Unavailable
    );
    assert!(
        d.wait_for(WAIT, is_state).is_some(),
        "state on direct connection"
    );
    // New sessions refused; existing ones continue.
    err(
        &l.session_open(2, T1, "y", TOKEN1),
        ErrorCode::SERVICE_UNAVAILABLE,
    );
    let mut n = Client::connect(s.addr);
    err(&n.hello(T1, "n", TOKEN1), ErrorCode::SERVICE_UNAVAILABLE);
    ok(l.on(1, T1, Service::Interaction, ixn::ECHO, |_| Ok(())));
    ok(d.ucs(ucs::CONTACT_CREATE, |b| props(b, key::ATTRS, &[])));
    s.signal("USR2");
    let f = l.wait_for(WAIT, is_state).expect("state on link");
    assert_eq!(
        msg::ServiceState::read(f.body()).unwrap().state,
        msg::State::Running
    );
    ok(l.session_open(2, T1, "y", TOKEN1));
    // Graceful shutdown: GO_AWAY first, then new requests get SHUTTING_DOWN, then exit.
    s.signal("TERM");
    let f = l
        .wait_for(WAIT, |f| {
            f.head().kind == Kind::Control && f.head().msg_type == control::GO_AWAY
        })
        .expect("go away");
    assert!(msg::GoAway::read(f.body()).unwrap().reconnect_ms > 0);
    err(
        &d.ucs(ucs::CONTACT_CREATE, |b| props(b, key::ATTRS, &[])),
        ErrorCode::SHUTTING_DOWN,
    );
    assert!(s.wait_exit(Duration::from_secs(5)));
}

const ADMIN_TOKEN: &str = "admin-token-of-at-least-32-bytes-0123";

#[test]
fn admin_line_protocol() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let cfg = write_config(
        dir.path(),
        5000,
        &format!("admin_token_file = \"{}\"\n", token_file.display()),
    );
    let mut s = Server::start(&cfg, &["--admin-listen", "127.0.0.1:0"]);
    let admin = s.wait_line("ADMIN ");
    let admin_addr: std::net::SocketAddr =
        admin.trim_start_matches("ADMIN ").trim().parse().unwrap();
    let a = std::net::TcpStream::connect(admin_addr).unwrap();
    a.set_read_timeout(Some(WAIT)).unwrap();
    let mut rd = BufReader::new(a.try_clone().unwrap());
    let mut wr = a;
    let mut cmd = |c: &str| {
        writeln!(wr, "{c}").unwrap();
        let mut l = String::new();
        rd.read_line(&mut l).unwrap();
        l.trim().to_string()
    };
    assert_eq!(
        cmd("state"),
        "state=running role=primary instance=test-core"
    );
    let mut l = Client::connect(s.addr);
    ok(l.link_hello(SECRET.as_bytes()));
    // Mutating commands need the admin token first.
    assert!(cmd("unavailable").starts_with("error admin token required"));
    assert!(cmd("shutdown").starts_with("error admin token required"));
    assert_eq!(cmd("token not-the-token"), "error bad token");
    assert_eq!(cmd(&format!("token {ADMIN_TOKEN}")), "ok");
    assert_eq!(cmd("unavailable"), "ok");
    let is_state =
        |f: &Frame| f.head().kind == Kind::Control && f.head().msg_type == control::SERVICE_STATE;
    let f = l.wait_for(WAIT, is_state).expect("state on link");
    assert_eq!(
        msg::ServiceState::read(f.body()).unwrap().state,
        msg::State::Unavailable
    );
    assert_eq!(
        cmd("state"),
        "state=unavailable role=primary instance=test-core"
    );
    assert_eq!(cmd("available"), "ok");
    assert_eq!(cmd("bogus"), "error unknown command");
    assert!(cmd("stats").starts_with("db_batches="));
    assert_eq!(cmd("shutdown"), "ok");
    assert!(
        l.wait_for(WAIT, |f| f.head().msg_type == control::GO_AWAY)
            .is_some()
    );
    assert!(s.wait_exit(Duration::from_secs(5)));
}
