//! core-server: handshakes, echo (direct and on a link), link security, tenant isolation of
//! the session layer, and bad input (malformed, out of order, unknown, framing loss).

mod core_server_support;

use std::time::Duration;

use core_server_support::*;
use deskmux_codec::msg::{self, control, key};
use deskmux_codec::{ErrorCode, Flags, Frame, Head, Kind, Service};

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let s = Server::start(&cfg, &[]);
    (dir, s)
}

#[test]
fn hello_echo_heartbeat_direct() {
    let (_d, s) = start();
    let mut c = Client::connect(s.addr);
    // Heartbeat is allowed before hello.
    ok(c.call(Service::Control, control::HEARTBEAT, |_| Ok(())));
    // Other requests before hello: INVALID_STATE.
    err(&c.ixn(msg::ixn::ECHO, |_| Ok(())), ErrorCode::INVALID_STATE);
    let r = ok(c.hello(T1, "a1", TOKEN1));
    let sh = msg::ServerHello::read(r.body()).unwrap();
    assert!(sh.session > 0 && sh.max_frame >= 1024 && sh.max_in_flight > 0);
    assert_eq!(r.head().session, sh.session);
    // Second hello: INVALID_STATE.
    err(&c.hello(T1, "a1", TOKEN1), ErrorCode::INVALID_STATE);
    // Echo: same bytes back, on both services, kind = response.
    for svc in [Service::Interaction, Service::Ucs] {
        let mut h = Head::new(Kind::Request, svc, msg::ixn::ECHO);
        h.tenant = T1;
        h.correlation = 777;
        let req = Frame::build(h, |w| {
            w.bin("data", b"hello world")?;
            w.int("n", 5);
            Ok(())
        })
        .unwrap();
        c.send_raw(req.as_bytes());
        let resp = c.wait_response(777);
        assert_eq!(resp.head().kind, Kind::Response);
        assert_eq!(resp.body_bytes(), req.body_bytes());
        // The head as sent but for the kind and the session: a request may name its session
        // 0, its answer names it by its id (PROTOCOL.md §2.3).
        assert_eq!(resp.head().session, sh.session);
        assert_eq!(&resp.as_bytes()[4..24], &req.as_bytes()[4..24]);
    }
    // Session id other than 0 or our own: INVALID_STATE.
    let mut h = Head::new(Kind::Request, Service::Interaction, msg::ixn::ECHO);
    h.tenant = T1;
    h.session = 999_999;
    err(&c.call_head(h, |_| Ok(())), ErrorCode::INVALID_STATE);
}

#[test]
fn auth_failures_close() {
    let (_d, s) = start();
    let mut c = Client::connect(s.addr);
    err(&c.hello(T1, "a1", TOKEN2), ErrorCode::AUTH_FAILED);
    assert!(c.closed_within(Duration::from_secs(3)));
    let mut c = Client::connect(s.addr);
    err(&c.hello(77, "a1", TOKEN1), ErrorCode::AUTH_FAILED);
    let mut l = Client::connect(s.addr);
    err(&l.link_hello(b"wrong"), ErrorCode::AUTH_FAILED);
    assert!(l.closed_within(Duration::from_secs(3)));
}

#[test]
fn link_sessions_echo_and_isolation() {
    let (_d, s) = start();
    let mut l = Client::connect(s.addr);
    let ack = ok(l.link_hello(SECRET.as_bytes()));
    let a = msg::LinkHelloAck::read(ack.body()).unwrap();
    assert_eq!(a.state.role, msg::Role::Primary);
    assert_eq!(a.state.state, msg::State::Running);
    assert_eq!(a.state.instance, "test-core");
    // Unknown session on the link.
    err(
        &l.on(5, T1, Service::Interaction, msg::ixn::ECHO, |_| Ok(())),
        ErrorCode::INVALID_STATE,
    );
    let r = ok(l.session_open(5, T1, "a1", TOKEN1));
    assert_eq!(int(&r, key::SESSION), 5);
    ok(l.session_open(6, T2, "b1", TOKEN2));
    // Same id again: INVALID_STATE; bad token: AUTH_FAILED, link stays.
    err(
        &l.session_open(5, T1, "a1", TOKEN1),
        ErrorCode::INVALID_STATE,
    );
    err(&l.session_open(7, T1, "a1", TOKEN2), ErrorCode::AUTH_FAILED);
    let e = ok(l.on(5, T1, Service::Ucs, msg::ucs::ECHO, |w| {
        w.str("x", "y")?;
        Ok(())
    }));
    assert_eq!(e.head().session, 5);
    assert_eq!(e.body().str("x").unwrap(), "y");
    // Spoofed tenant on a session: TENANT_MISMATCH, touches nothing.
    let r = l.on(6, T1, Service::Ucs, msg::ucs::CONTACT_CREATE, |w| {
        props(w, key::ATTRS, &[("email", "x@y")])
    });
    err(&r, ErrorCode::TENANT_MISMATCH);
    // Session close, then the session is unknown.
    let mut h = Head::new(Kind::Control, Service::Control, control::SESSION_CLOSE);
    h.session = 5;
    h.tenant = T1;
    l.send_raw(&h.to_bytes());
    err(
        &l.on(5, T1, Service::Interaction, msg::ixn::ECHO, |_| Ok(())),
        ErrorCode::INVALID_STATE,
    );
    // Session open on a direct connection: INVALID_STATE.
    let mut c = Client::desktop(s.addr, T1, "a2", TOKEN1);
    err(
        &c.session_open(9, T1, "a2", TOKEN1),
        ErrorCode::INVALID_STATE,
    );
}

#[test]
fn spoofed_tenant_direct() {
    let (_d, s) = start();
    let mut a = Client::desktop(s.addr, T1, "a1", TOKEN1);
    let r = ok(a.ucs(msg::ucs::CONTACT_CREATE, |w| {
        props(w, key::ATTRS, &[("email", "a@acme")])
    }));
    let id = int(&r, key::CONTACT);
    let mut b = Client::desktop(s.addr, T2, "b1", TOKEN2);
    // Tenant 2 session stamping tenant 1 in the head.
    let mut h = Head::new(Kind::Request, Service::Ucs, msg::ucs::CONTACT_GET);
    h.tenant = T1;
    let r = b.call_head(h, |w| {
        w.int(key::CONTACT, id);
        Ok(())
    });
    err(&r, ErrorCode::TENANT_MISMATCH);
    let mut h = Head::new(Kind::Request, Service::Ucs, msg::ucs::CONTACT_DELETE);
    h.tenant = T1;
    err(
        &b.call_head(h, |w| {
            w.int(key::CONTACT, id);
            Ok(())
        }),
        ErrorCode::TENANT_MISMATCH,
    );
    // Its own tenant: the other tenant's object is simply not found.
    err(
        &b.ucs(msg::ucs::CONTACT_GET, |w| {
            w.int(key::CONTACT, id);
            Ok(())
        }),
        ErrorCode::NOT_FOUND,
    );
    // Still there for its owner.
    ok(a.ucs(msg::ucs::CONTACT_GET, |w| {
        w.int(key::CONTACT, id);
        Ok(())
    }));
}

#[test]
fn bad_input_keeps_connection_and_server() {
    let (_d, s) = start();
    let mut c = Client::desktop(s.addr, T1, "a1", TOKEN1);
    let mut other = Client::desktop(s.addr, T1, "a2", TOKEN1);
    // Malformed body (truncated item).
    let mut h = Head::new(Kind::Request, Service::Ucs, msg::ucs::CONTACT_GET);
    h.tenant = T1;
    h.correlation = 50;
    h.body_len = 3;
    let mut bytes = h.to_bytes().to_vec();
    bytes.extend_from_slice(&[5, b'a', b'b']);
    c.send_raw(&bytes);
    err(&c.wait_response(50), ErrorCode::MALFORMED);
    // Missing key.
    err(
        &c.ucs(msg::ucs::CONTACT_GET, |_| Ok(())),
        ErrorCode::MALFORMED,
    );
    err(&c.ixn(msg::ixn::SUBMIT, |_| Ok(())), ErrorCode::MALFORMED);
    // Unknown message types.
    err(&c.ixn(0x7777, |_| Ok(())), ErrorCode::UNKNOWN_MESSAGE);
    err(&c.ucs(0x7777, |_| Ok(())), ErrorCode::UNKNOWN_MESSAGE);
    err(
        &c.call(Service::Control, 0x7777, |_| Ok(())),
        ErrorCode::UNKNOWN_MESSAGE,
    );
    // Out of order: ready before login.
    err(
        &c.ixn(msg::ixn::AGENT_READY, |_| Ok(())),
        ErrorCode::INVALID_STATE,
    );
    // Unknown service byte.
    err(
        &c.call(Service::Unknown(9), 1, |_| Ok(())),
        ErrorCode::NO_ROUTE,
    );
    // Unknown kind: control error PROTOCOL, connection stays.
    let mut h = Head::new(Kind::Unknown(9), Service::Interaction, 1);
    h.tenant = T1;
    c.send_raw(&h.to_bytes());
    let f = c
        .wait_for(WAIT, |f| f.head().kind == Kind::Control)
        .expect("control error");
    assert!(f.head().flags.has(Flags::ERROR));
    assert_eq!(code(&f), Some(ErrorCode::PROTOCOL));
    // An event from a client: PROTOCOL.
    let mut h = Head::new(Kind::Event, Service::Interaction, msg::ixn::INVITE);
    h.tenant = T1;
    c.send_raw(&h.to_bytes());
    let f = c
        .wait_for(WAIT, |f| f.head().kind == Kind::Control)
        .expect("control error");
    assert_eq!(code(&f), Some(ErrorCode::PROTOCOL));
    // Still alive.
    ok(c.ixn(msg::ixn::ECHO, |_| Ok(())));
    // Framing loss: bad magic -> control error, then close.
    c.send_raw(&[0xde; 40]);
    let f = c
        .wait_for(WAIT, |f| f.head().kind == Kind::Control)
        .expect("control error");
    assert_eq!(code(&f), Some(ErrorCode::PROTOCOL));
    assert!(c.closed_within(Duration::from_secs(3)));
    // Oversized frame: FRAME_TOO_LARGE, then close.
    let mut big = Client::desktop(s.addr, T1, "a3", TOKEN1);
    let mut h = Head::new(Kind::Request, Service::Interaction, msg::ixn::ECHO);
    h.tenant = T1;
    h.body_len = 64 * 1024 * 1024;
    big.send_raw(&h.to_bytes());
    let f = big
        .wait_for(WAIT, |f| f.head().kind == Kind::Control)
        .expect("control error");
    assert_eq!(code(&f), Some(ErrorCode::FRAME_TOO_LARGE));
    assert!(big.closed_within(Duration::from_secs(3)));
    // Bad version.
    let mut v = Client::connect(s.addr);
    let mut b = Head::new(Kind::Request, Service::Control, control::HELLO).to_bytes();
    b[2] = 9;
    v.send_raw(&b);
    assert!(v.closed_within(Duration::from_secs(3)));
    // Other sessions untouched, server up.
    ok(other.ixn(msg::ixn::ECHO, |_| Ok(())));
    let mut n = Client::desktop(s.addr, T1, "a4", TOKEN1);
    ok(n.ixn(msg::ixn::ECHO, |_| Ok(())));
}

#[test]
fn handshake_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "handshake_timeout_ms = 300\n");
    let s = Server::start(&cfg, &[]);
    let mut c = Client::connect(s.addr);
    let f = c
        .wait_for(Duration::from_secs(3), |f| f.head().kind == Kind::Control)
        .expect("deadline error");
    assert_eq!(code(&f), Some(ErrorCode::DEADLINE));
    assert!(c.closed_within(Duration::from_secs(3)));
}

#[test]
fn idle_connection_closed_after_three_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let s = Server::start(&cfg, &["--heartbeat-ms", "300"]);
    let mut c = Client::desktop(s.addr, T1, "a1", TOKEN1);
    // The raw reader below never answers the server's heartbeats: silent for 3 intervals.
    assert!(c.closed_within(Duration::from_secs(3)));
    // A client that answers heartbeats stays.
    let mut d = Client::desktop(s.addr, T1, "a2", TOKEN1);
    assert!(d.wait_for(Duration::from_millis(1500), |_| false).is_none());
    ok(d.ixn(msg::ixn::ECHO, |_| Ok(())));
}

#[test]
fn in_flight_cap_answers_every_request_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "max_in_flight = 1\n");
    let s = Server::start(&cfg, &[]);
    let mut c = Client::desktop(s.addr, T1, "a1", TOKEN1);
    let mut all = Vec::new();
    for i in 0..100u64 {
        let mut h = Head::new(Kind::Request, Service::Ucs, msg::ucs::CONTACT_CREATE);
        h.tenant = T1;
        h.correlation = 1000 + i;
        all.extend_from_slice(
            Frame::build(h, |w| props(w, key::ATTRS, &[]))
                .unwrap()
                .as_bytes(),
        );
    }
    c.send_raw(&all);
    let mut seen = std::collections::HashSet::new();
    let (mut okc, mut capped) = (0, 0);
    while seen.len() < 100 {
        let f = c.read_frame(WAIT).expect("every request is answered");
        assert!(seen.insert(f.head().correlation), "answered twice");
        match code(&f) {
            None => okc += 1,
            Some(ErrorCode::TOO_MANY_IN_FLIGHT) => capped += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(okc >= 1 && capped >= 1, "ok {okc}, capped {capped}");
}

#[test]
fn random_frames_never_take_the_server_down() {
    let (_d, s) = start();
    let mut c = Client::desktop(s.addr, T1, "fuzz", TOKEN1);
    let mut bystander = Client::desktop(s.addr, T1, "calm", TOKEN1);
    // A small deterministic generator (xorshift) keeps the test reproducible without deps.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bytes = Vec::new();
    for _ in 0..2000 {
        let r = next();
        let kind = [1u8, 1, 1, 2, 3, 4, 9][(r % 7) as usize];
        let service = [0u8, 1, 1, 2, 2, 7][((r >> 8) % 6) as usize];
        let ty = [
            0x01u16, 0x02, 0x03, 0x04, 0x05, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x20, 0x21, 0x22,
            0x23, 0x24, 0x26, 0x27, 0x30, 0x31, 0x99,
        ][((r >> 16) % 21) as usize];
        let mut h = Head::new(Kind::from_u8(kind), Service::from_u8(service), ty);
        h.tenant = if (r >> 24) % 4 == 0 {
            (r >> 28) as u32 % 4
        } else {
            T1
        };
        h.flags = Flags(((r >> 32) % 8) as u8);
        h.correlation = 50_000 + next() % 1000;
        h.session = if (r >> 40) % 5 == 0 { next() % 3 } else { 0 };
        // Bodies: random bytes, or a well-formed body with random values for real keys.
        let body: Vec<u8> = if (r >> 48) % 2 == 0 {
            (0..(next() % 40)).map(|_| next() as u8).collect()
        } else {
            let f = Frame::build(Head::new(Kind::Request, Service::Control, 0), |w| {
                w.int(key::INTERACTION, (next() % 5) as i64);
                w.int(key::CONTACT, (next() % 5) as i64);
                w.str(key::QUEUE, "fz")?;
                w.str(
                    key::TOPIC,
                    if next() % 2 == 0 { "queue:fz" } else { "stats" },
                )?;
                props(w, key::PROPS, &[("a", "b")])?;
                props(w, key::ATTRS, &[("email", "f@z")])?;
                w.str(key::KEY, "email")?;
                w.str(key::VALUE, "f@z")?;
                w.str(key::TEXT, "t")?;
                Ok(())
            })
            .unwrap();
            f.body_bytes().to_vec()
        };
        h.body_len = body.len() as u32;
        bytes.extend_from_slice(&h.to_bytes());
        bytes.extend_from_slice(&body);
    }
    c.send_raw(&bytes);
    // The same connection still works: framing was never lost.
    let r = c.ixn(msg::ixn::ECHO, |w| {
        w.str("still", "here")?;
        Ok(())
    });
    assert_eq!(r.body().str("still").unwrap(), "here");
    ok(bystander.ixn(msg::ixn::ECHO, |_| Ok(())));
    let mut fresh = Client::desktop(s.addr, T2, "fresh", TOKEN2);
    ok(fresh.ucs(msg::ucs::CONTACT_CREATE, |w| props(w, key::ATTRS, &[])));
}

#[test]
fn slow_consumer_is_disconnected_others_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    // No input budget: the slow consumer's requests must all be read at once for its answers
    // to pile up before the test reads (and so relieves) its socket. Held to the default
    // 8 MiB/s, it is read for seconds, and whether it is cut off first depends on timing.
    let cfg = write_config(
        dir.path(),
        5000,
        "outbound_queue = 16\ndesktop_read_bytes_per_s = 0\n",
    );
    let s = Server::start(&cfg, &[]);
    let mut slow = Client::desktop(s.addr, T1, "slow", TOKEN1);
    let mut calm = Client::desktop(s.addr, T1, "calm", TOKEN1);
    // 400 echoes of 100 KiB, never read: the socket buffers fill, then the outbound queue.
    let mut h = Head::new(Kind::Request, Service::Interaction, msg::ixn::ECHO);
    h.tenant = T1;
    let frame = Frame::build(h, |w| {
        w.bin("data", &vec![7u8; 100 * 1024])?;
        Ok(())
    })
    .unwrap();
    let mut raw = slow.raw_stream();
    let slow_at = raw.local_addr().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for _ in 0..400 {
            if raw.write_all(frame.as_bytes()).is_err() {
                return;
            }
        }
    });
    // Once the server is held back by the slow consumer (its answers pile up unread), or has
    // already cut it off, the calm desktop is still served.
    assert!(
        server_backed_up(s.addr, slow_at, 32 * 1024, Duration::from_secs(30)),
        "the slow consumer's answers never piled up"
    );
    ok(calm.ixn(msg::ixn::ECHO, |_| Ok(())));
    assert!(
        slow.closed_within(Duration::from_secs(10)),
        "slow consumer still connected"
    );
    let _ = writer.join();
    ok(calm.ixn(msg::ixn::ECHO, |_| Ok(())));
}

/// A proxy link that reads its answers slowly is slowed down (backpressure), never dropped:
/// it carries thousands of desktops. 20,000 pipelined echoes on a link of a server whose
/// desktop queue limit is 64 frames and link queue 4,096, with the reader asleep at first,
/// must all be answered on the same link.
#[test]
fn slow_link_is_backpressured_not_dropped() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        5000,
        "outbound_queue = 64\nlink_outbound_queue = 4096\nmax_in_flight = 100000\n",
    );
    let s = Server::start(&cfg, &[]);
    let mut l = Client::connect(s.addr);
    ok(l.link_hello(SECRET.as_bytes()));
    ok(l.session_open(5, T1, "a1", TOKEN1));
    const N: u64 = 20_000;
    const FIRST: u64 = 1_000_000;
    let mut wire = Vec::new();
    for i in 0..N {
        let mut h = Head::new(Kind::Request, Service::Interaction, msg::ixn::ECHO);
        h.tenant = T1;
        h.session = 5;
        h.correlation = FIRST + i;
        let f = Frame::build(h, |w| {
            w.int("i", i as i64);
            Ok(())
        })
        .unwrap();
        wire.extend_from_slice(f.as_bytes());
    }
    let mut raw = l.raw_stream();
    let link_at = raw.local_addr().unwrap();
    let writer = std::thread::spawn(move || raw.write_all(&wire).is_ok());
    // The reader stays asleep until the server is held back by it: answers unread in our
    // receive queue and more queued on the server's side.
    assert!(
        server_backed_up(s.addr, link_at, 32 * 1024, Duration::from_secs(30)),
        "the server never queued answers towards the sleeping link"
    );
    let mut next = FIRST;
    while next < FIRST + N {
        let f = l
            .read_frame(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("link closed or stalled after {} answers", next - FIRST));
        if f.head().kind != Kind::Response {
            continue;
        }
        assert!(f.error().is_none(), "echo {next} failed: {:?}", f.error());
        // One link, one session: answers come back in request order.
        assert_eq!(f.head().correlation, next);
        assert_eq!(f.body().int("i").unwrap(), (next - FIRST) as i64);
        next += 1;
    }
    assert!(writer.join().unwrap(), "the link was closed while we wrote");
}
