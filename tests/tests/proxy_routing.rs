//! Routing by service: Interaction Server messages go to the Interaction Server, UCS messages
//! to the UCS, each desktop gets one upstream session per instance, and losing one service's
//! server leaves the other service working.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::msg::{ixn, key, ucs};
use deskmux_codec::{ErrorCode, Kind, Service};
use deskmux_tests::TestClient;
use proxy_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_route_to_their_own_servers() {
    let dir = tempfile::tempdir().unwrap();
    let (_ixn, ixn_addr) = start_core_with(dir.path(), "ixn1", "127.0.0.1:0", "role = \"ixn\"");
    let (mut ucs_srv, ucs_addr) =
        start_core_with(dir.path(), "ucs1", "127.0.0.1:0", "role = \"ucs\"");
    let cfg = proxy_config(
        dir.path(),
        &[("\"interaction\"", ixn_addr), ("\"ucs\"", ucs_addr)],
        1,
        2,
        "",
    );
    let proxy = start_proxy(cfg);
    let mut d = desktop(proxy.addr, T1).await;
    // UCS work reaches the UCS server; Interaction work reaches the Interaction Server.
    let c = d
        .request(Service::Ucs, ucs::CONTACT_CREATE, |w| {
            w.list(key::ATTRS, |w| {
                w.str("email", "r@example.com")?;
                Ok(())
            })?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(c.error().is_none(), "{:?}", c.error());
    let r = d
        .request(Service::Interaction, ixn::AGENT_LOGIN, |w| {
            w.str(key::PLACE, "p")?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    // The contact lives on the UCS server only: a direct desktop there sees it.
    let id = c.body().int(key::CONTACT).unwrap();
    let mut direct = TestClient::connect_hello(ucs_addr, T1, "direct", TOKEN1)
        .await
        .unwrap();
    let g = direct
        .request(Service::Ucs, ucs::CONTACT_GET, |w| {
            w.int(key::CONTACT, id);
            Ok(())
        })
        .await
        .unwrap();
    assert!(g.error().is_none(), "{:?}", g.error());
    // The UCS server dies: UCS requests fail explicitly, Interaction keeps working.
    ucs_srv.kill();
    let notice = d
        .wait_for(Duration::from_secs(5), |f| {
            f.head().kind == Kind::Control && code(f) == Some(ErrorCode::LINK_LOST)
        })
        .await;
    assert!(notice.is_ok());
    let u = echo(&mut d, Service::Ucs, b"u").await;
    assert_eq!(code(&u), Some(ErrorCode::LINK_LOST_UNSENT));
    let i = echo(&mut d, Service::Interaction, b"i").await;
    assert!(i.error().is_none());
    // A new desktop asking for both services is refused while UCS is down (not sent).
    let mut n = TestClient::connect(proxy.addr).await.unwrap();
    let h = n.hello(T1, "new", TOKEN1, 0b110).await.unwrap();
    assert_eq!(code(&h), Some(ErrorCode::UNAVAILABLE));
    // Asking for Interaction only works.
    let mut n = TestClient::connect(proxy.addr).await.unwrap();
    let h = n.hello(T1, "new2", TOKEN1, 0b010).await.unwrap();
    assert!(h.error().is_none(), "{:?}", h.error());
    assert!(
        echo(&mut n, Service::Interaction, b"x")
            .await
            .error()
            .is_none()
    );
    // And a UCS request from it: that service was not opened.
    let u = echo(&mut n, Service::Ucs, b"u").await;
    assert_eq!(code(&u), Some(ErrorCode::INVALID_STATE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_link_secret_keeps_links_down_and_hellos_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let (_core, addr) = start_core(dir.path(), "c", "127.0.0.1:0");
    let cfg = proxy_config(dir.path(), &[("\"ucs\"", addr)], 1, 1, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(SECRET, "not-the-secret-but-just-as-long-0123");
    std::fs::write(&cfg, text).unwrap();
    let proxy = start_proxy(cfg);
    let (code_h, _) = http_get(proxy.admin, "/health");
    assert_eq!(code_h, 503);
    let mut n = TestClient::connect(proxy.addr).await.unwrap();
    let h = n.hello(T1, "x", TOKEN1, 0b100).await.unwrap();
    assert_eq!(code(&h), Some(ErrorCode::UNAVAILABLE));
    assert!(n.closed_within(Duration::from_secs(3)).await.unwrap());
}
