//! Failed logins through a proxy lock out the desktop's source address, as they do on a
//! direct connection, and not the proxy's (which would lock out every desktop behind it): the
//! proxy names each desktop's address in `SESSION_OPEN` (PROTOCOL.md §4.3), first, so that a
//! `source` a desktop writes into its own hello is not the one the server reads.
//!
//! Before, a guesser behind a proxy could try one password against every agent of a tenant
//! without meeting any lockout (each agent failed once; the source was never counted).

mod proxy_support;

use std::net::SocketAddr;

use deskmux_codec::ErrorCode;
use deskmux_codec::msg::{DesktopHello, control};
use deskmux_tests::TestClient;
use proxy_support::*;

/// A desktop connecting from `src` (another 127.0.0.0/8 address).
async fn from(src: &str, addr: SocketAddr) -> TestClient {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let s = sock.connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    TestClient::new(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_through_the_proxy_lock_out_their_source_not_the_proxy() {
    // core-server's default: 5 failures from one source lock it.
    let st = stack(1, 1, "");
    let addr = st.proxy.addr;
    for i in 0..6 {
        let mut c = from("127.0.0.2", addr).await;
        let agent = deskmux_tests::creds::agent(100 + i);
        let r = c
            .hello(T1, &agent, "not-the-password", 0b110)
            .await
            .unwrap();
        assert_eq!(r.error().map(|e| e.0), Some(ErrorCode::AUTH_FAILED));
    }
    // The right password from the guessing address is refused now: the address is locked.
    let mut c = from("127.0.0.2", addr).await;
    let r = c
        .hello(T1, &deskmux_tests::creds::agent(1), TOKEN1, 0b110)
        .await
        .unwrap();
    assert_eq!(
        r.error().map(|e| e.0),
        Some(ErrorCode::AUTH_FAILED),
        "a locked source still logged in: {r:?}"
    );
    // A desktop elsewhere, behind the same proxy, is not affected.
    let mut ok = from("127.0.0.3", addr).await;
    ok.hello_ok(T1, &deskmux_tests::creds::agent(2), TOKEN1)
        .await
        .expect("another source logs in through the same proxy");
    // A desktop cannot pass for another address by writing `source` into its hello.
    let mut spoof = from("127.0.0.2", addr).await;
    let hello = DesktopHello {
        version: 1,
        agent: &deskmux_tests::creds::agent(3),
        token: TOKEN1,
        reconnect: None,
        services: 0b110,
    };
    let r = spoof
        .request(deskmux_codec::Service::Control, control::HELLO, |w| {
            w.str("source", "127.0.0.9")?;
            hello.write(w)
        })
        .await
        .unwrap();
    assert_eq!(
        r.error().map(|e| e.0),
        Some(ErrorCode::AUTH_FAILED),
        "{r:?}"
    );
}
