//! The proxy's request path against a real core-server: answers equal direct answers, ids never
//! cross between desktops, tenants cannot be spoofed, bad frames only hurt their sender, caps.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::msg::{control, ixn, key, ucs};
use deskmux_codec::{ErrorCode, Flags, Head, Kind, Service};
use deskmux_tests::TestClient;
use proxy_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_through_proxy_equal_direct() {
    let st = stack(1, 2, "");
    let mut direct = TestClient::connect_hello(st.core_addr, T1, "direct-a", TOKEN1)
        .await
        .unwrap();
    let mut via = desktop(st.proxy.addr, T1).await;
    assert_ne!(via.session, 0);
    for (svc, data) in [
        (Service::Interaction, b"hello ixn".to_vec()),
        (Service::Ucs, vec![7u8; 100_000]),
    ] {
        let a = echo(&mut direct, svc, &data).await;
        let b = echo(&mut via, svc, &data).await;
        assert_eq!(a.body_bytes(), b.body_bytes());
        assert_eq!(a.head().msg_type, b.head().msg_type);
        assert_eq!(a.head().kind, b.head().kind);
        assert_eq!(b.head().tenant, T1);
    }
    // A write and a read, and an error answer, compared field by field.
    let ca = create(&mut direct).await.unwrap();
    let cb = create(&mut via).await.unwrap();
    assert!(ca.error().is_none() && cb.error().is_none());
    let id = cb.body().int(key::CONTACT).unwrap();
    let ga = via
        .request(Service::Ucs, ucs::CONTACT_GET, |w| {
            w.int(key::CONTACT, id);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(ga.body().int(key::CONTACT).unwrap(), id);
    let ea = missing(&mut direct).await.unwrap();
    let eb = missing(&mut via).await.unwrap();
    assert_eq!(code(&ea), Some(ErrorCode::NOT_FOUND));
    assert_eq!(ea.body_bytes(), eb.body_bytes());
    assert_eq!(ea.head().flags, eb.head().flags);
    // Unknown message type: forwarded by service, the server's answer comes back.
    let ua = direct
        .request(Service::Ucs, 0x7777, |_| Ok(()))
        .await
        .unwrap();
    let ub = via.request(Service::Ucs, 0x7777, |_| Ok(())).await.unwrap();
    assert_eq!(code(&ua), Some(ErrorCode::UNKNOWN_MESSAGE));
    assert_eq!(ua.body_bytes(), ub.body_bytes());
    // Heartbeat answered locally.
    let hb = via
        .request(Service::Control, control::HEARTBEAT, |_| Ok(()))
        .await
        .unwrap();
    assert!(hb.error().is_none());
    // Unroutable service byte.
    let nr = via
        .request(Service::Unknown(9), 1, |_| Ok(()))
        .await
        .unwrap();
    assert_eq!(code(&nr), Some(ErrorCode::NO_ROUTE));
}

async fn create(c: &mut TestClient) -> anyhow::Result<deskmux_codec::Frame> {
    c.request(Service::Ucs, ucs::CONTACT_CREATE, |w| {
        w.list(key::ATTRS, |w| {
            w.str("email", "x@example.com")?;
            Ok(())
        })?;
        Ok(())
    })
    .await
}

async fn missing(c: &mut TestClient) -> anyhow::Result<deskmux_codec::Frame> {
    c.request(Service::Ucs, ucs::CONTACT_GET, |w| {
        w.int(key::CONTACT, 987_654_321);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_never_cross_between_desktops() {
    let st = stack(2, 2, "");
    let mut tasks = Vec::new();
    for d in 0..16u32 {
        let addr = st.proxy.addr;
        tasks.push(tokio::spawn(async move {
            let tenant = if d % 4 == 0 { T2 } else { T1 };
            let mut c = desktop(addr, tenant).await;
            // Every desktop uses the same correlation ids 1, 2, 3, ... with its own bodies,
            // pipelined 8 deep.
            let mut n = 0u32;
            while n < 200 {
                let mut sent = Vec::new();
                for k in 0..8 {
                    let body = format!("desk{d}-req{}", n + k);
                    let svc = if (n + k).is_multiple_of(2) {
                        Service::Interaction
                    } else {
                        Service::Ucs
                    };
                    let t = if svc == Service::Ucs {
                        ucs::ECHO
                    } else {
                        ixn::ECHO
                    };
                    let corr = c
                        .send(svc, t, |w| {
                            w.bin(key::DATA, body.as_bytes())?;
                            Ok(())
                        })
                        .await
                        .unwrap();
                    sent.push((corr, body));
                }
                for (corr, body) in sent {
                    let r = c.response(corr, Duration::from_secs(10)).await.unwrap();
                    assert!(r.error().is_none(), "{:?}", r.error());
                    assert_eq!(
                        r.body().bin(key::DATA).unwrap(),
                        body.as_bytes(),
                        "desktop {d}"
                    );
                    assert_eq!(r.head().tenant, tenant);
                    assert_eq!(r.head().session, c.session);
                }
                n += 8;
            }
            assert!(
                c.backlog().is_empty(),
                "no foreign frames: {:?}",
                c.backlog()
            );
            c.session
        }));
    }
    let mut sessions = std::collections::HashSet::new();
    for t in tasks {
        assert!(sessions.insert(t.await.unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_tenant_is_never_forwarded() {
    let st = stack(1, 2, "");
    let mut a = desktop(st.proxy.addr, T1).await;
    let mut b = desktop(st.proxy.addr, T2).await;
    // Desktop A (tenant 1) claims tenant 2 on a write.
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::CONTACT_CREATE);
    h.tenant = T2;
    h.correlation = 4242;
    let f = deskmux_codec::Frame::build(h, |w| {
        w.list(key::ATTRS, |w| {
            w.str("spoof", "yes")?;
            Ok(())
        })?;
        Ok(())
    })
    .unwrap();
    a.send_raw(f.as_bytes()).await.unwrap();
    let r = a.response(4242, Duration::from_secs(5)).await.unwrap();
    assert_eq!(code(&r), Some(ErrorCode::TENANT_MISMATCH));
    // A spoofed session id is refused too.
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::ECHO);
    h.tenant = T1;
    h.correlation = 4243;
    h.session = b.session;
    a.send_raw(deskmux_codec::Frame::with_body(h, b"").unwrap().as_bytes())
        .await
        .unwrap();
    let r = a.response(4243, Duration::from_secs(5)).await.unwrap();
    assert_eq!(code(&r), Some(ErrorCode::INVALID_STATE));
    // Nothing reached tenant 2's data.
    let s = b
        .request(Service::Ucs, ucs::CONTACT_SEARCH, |w| {
            w.str(key::KEY, "spoof")?;
            w.str(key::VALUE, "yes")?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(s.error().is_none(), "{:?}", s.error());
    let n = s
        .body()
        .list(key::CONTACTS)
        .map(|l| l.iter().count())
        .unwrap_or(0);
    assert_eq!(n, 0, "spoofed write must not be forwarded");
    // A still works with its own tenant.
    assert!(echo(&mut a, Service::Ucs, b"ok").await.error().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_only_close_their_sender() {
    let st = stack(1, 2, "max_frame = 65536\n");
    let mut good = desktop(st.proxy.addr, T1).await;
    let mut bad_magic = desktop(st.proxy.addr, T1).await;
    let mut too_big = desktop(st.proxy.addr, T1).await;
    let mut odd_kind = desktop(st.proxy.addr, T1).await;

    bad_magic
        .send_raw(&[0xde, 0xad, 0xbe, 0xef].repeat(10))
        .await
        .unwrap();
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::ECHO);
    h.tenant = T1;
    h.body_len = 10 * 1024 * 1024;
    too_big.send_raw(&h.to_bytes()).await.unwrap();
    let mut h = Head::new(Kind::Unknown(9), Service::Ucs, ucs::ECHO);
    h.tenant = T1;
    odd_kind.send_raw(&h.to_bytes()).await.unwrap();

    assert!(
        bad_magic
            .closed_within(Duration::from_secs(5))
            .await
            .unwrap()
    );
    let e = bad_magic.backlog().iter().find_map(code);
    assert_eq!(e, Some(ErrorCode::PROTOCOL));
    assert!(too_big.closed_within(Duration::from_secs(5)).await.unwrap());
    assert_eq!(
        too_big.backlog().iter().find_map(code),
        Some(ErrorCode::FRAME_TOO_LARGE)
    );
    // Unknown kind: a PROTOCOL control error, connection kept.
    let f = odd_kind
        .wait_for(Duration::from_secs(5), |f| f.head().kind == Kind::Control)
        .await
        .unwrap();
    assert_eq!(code(&f), Some(ErrorCode::PROTOCOL));
    assert!(f.head().flags.has(Flags::ERROR));
    assert!(
        echo(&mut odd_kind, Service::Interaction, b"still here")
            .await
            .error()
            .is_none()
    );
    // The others never noticed.
    for i in 0..20 {
        let r = echo(&mut good, Service::Interaction, format!("g{i}").as_bytes()).await;
        assert!(r.error().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_rules_deadline_and_in_flight_cap() {
    let st = stack(1, 1, "handshake_ms = 600\nmax_in_flight = 4\n");
    // Wrong token: AUTH_FAILED passed back, connection closed.
    let mut c = TestClient::connect(st.proxy.addr).await.unwrap();
    let r = c.hello(T1, "agent-x", "wrong", 0b110).await.unwrap();
    assert_eq!(code(&r), Some(ErrorCode::AUTH_FAILED));
    assert!(c.closed_within(Duration::from_secs(5)).await.unwrap());
    // Requests before hello: INVALID_STATE.
    let mut c = TestClient::connect(st.proxy.addr).await.unwrap();
    c.tenant = T1;
    let r = c
        .request(Service::Ucs, ucs::ECHO, |_| Ok(()))
        .await
        .unwrap();
    assert_eq!(code(&r), Some(ErrorCode::INVALID_STATE));
    // Handshake deadline covers the whole hello: trickling bytes does not extend it.
    let mut slow = TestClient::connect(st.proxy.addr).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut h = Head::new(Kind::Request, Service::Control, control::HELLO);
    h.body_len = 100;
    let bytes = h.to_bytes();
    // 10 bytes over 500 ms (each well inside the 600 ms deadline), then silence.
    for b in bytes.iter().take(10) {
        slow.send_raw(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(slow.closed_within(Duration::from_secs(3)).await.unwrap());
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(
        slow.backlog().iter().find_map(code),
        Some(ErrorCode::DEADLINE)
    );
    // In-flight cap: 20 pipelined requests, 4 allowed upstream at a time. The proxy holds
    // the rest back (it stops reading the desktop) instead of refusing them, so every one is
    // answered exactly once, and successfully.
    let mut d = desktop(st.proxy.addr, T1).await;
    let mut buf = Vec::new();
    for i in 0..20u64 {
        let mut h = Head::new(Kind::Request, Service::Ucs, ucs::ECHO);
        h.tenant = T1;
        h.correlation = 1000 + i;
        buf.extend_from_slice(deskmux_codec::Frame::with_body(h, b"").unwrap().as_bytes());
    }
    d.send_raw(&buf).await.unwrap();
    for i in 0..20u64 {
        let r = d.response(1000 + i, Duration::from_secs(5)).await.unwrap();
        assert_eq!(code(&r), None, "request {i}");
    }
    // Still connected and usable, and nothing answered twice.
    let r = echo(&mut d, Service::Ucs, b"after").await;
    assert!(r.error().is_none());
    assert!(
        d.backlog().is_empty(),
        "answered exactly once: {:?}",
        d.backlog()
    );
}

/// The proxy passes on the reconnect token its server gave (PROTOCOL.md §4.1): a desktop that
/// comes back presents it instead of its password, through the proxy, and gets in; the token
/// does not open another agent's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_token_through_the_proxy() {
    let st = stack(1, 2, "");
    let mut first = TestClient::connect(st.proxy.addr).await.unwrap();
    let h = first.hello(T1, "a1", TOKEN1, 0b110).await.unwrap();
    assert!(h.error().is_none(), "{:?}", h.error());
    let token = h
        .body()
        .str(key::RECONNECT)
        .expect("the proxy's server hello carries the server's reconnect token")
        .to_string();
    drop(first);
    let mut again = TestClient::connect(st.proxy.addr).await.unwrap();
    let h = again.hello_reconnect(T1, "a1", &token).await.unwrap();
    assert!(h.error().is_none(), "token refused: {:?}", h.error());
    let r = echo(&mut again, Service::Ucs, b"back").await;
    assert!(r.error().is_none());
    let mut other = TestClient::connect(st.proxy.addr).await.unwrap();
    let h = other.hello_reconnect(T1, "a2", &token).await.unwrap();
    assert_eq!(code(&h), Some(ErrorCode::AUTH_FAILED));
}
