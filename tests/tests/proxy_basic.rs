//! The proxy's request path against a real core-server: answers equal direct answers, ids never
//! cross between desktops, tenants cannot be spoofed, bad frames only hurt their sender, caps.
//! Bodies shared with the io_uring run (`proxy_uring`) are in `proxy_support::cases`.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::msg::{control, ixn, key, ucs};
use deskmux_codec::{ErrorCode, Head, Kind, Service};
use deskmux_tests::TestClient;
use proxy_support::cases::{self, Driver};
use proxy_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_through_proxy_equal_direct() {
    cases::responses_through_proxy_equal_direct(Driver::Mio).await;
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
async fn bad_senders_and_backpressure_stay_with_their_desktop() {
    cases::bad_senders_and_backpressure_stay_with_their_desktop(Driver::Mio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_rules_and_deadline() {
    let st = stack(1, 1, "handshake_ms = 600\n");
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
