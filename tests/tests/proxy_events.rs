//! Event fan-out through the proxy: one upstream subscription per (link, tenant, topic),
//! events reach exactly the subscribers, in order, with no gaps; unicast events reach their
//! session. The fan-out body, shared with the io_uring run (`proxy_uring`), is in
//! `proxy_support::cases`.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{Kind, Service};
use deskmux_tests::TestClient;
use proxy_support::cases::{self, Driver, submit};
use proxy_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_exactly_the_subscribers_without_gaps() {
    cases::fan_out_reaches_exactly_the_subscribers_without_gaps(Driver::Mio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_invite_reaches_its_session() {
    let st = stack(2, 2, "");
    let mut agent = desktop(st.proxy.addr, T1).await;
    let mut other = desktop(st.proxy.addr, T1).await;
    let r = agent
        .request(Service::Interaction, ixn::AGENT_LOGIN, |w| {
            w.str(key::PLACE, "p1")?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    let r = agent
        .request(Service::Interaction, ixn::AGENT_READY, |_| Ok(()))
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    let mut media = desktop(st.proxy.addr, T1).await;
    submit(&mut media, "uq").await;
    let inv = agent
        .event(ixn::INVITE, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(inv.head().kind, Kind::Event);
    assert_eq!(inv.head().session, agent.session);
    let id = inv.body().int(key::INTERACTION).unwrap();
    let r = agent
        .request(Service::Interaction, ixn::ACCEPT, |w| {
            w.int(key::INTERACTION, id);
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    assert!(
        other
            .event(ixn::INVITE, Duration::from_millis(300))
            .await
            .is_err()
    );
}

async fn login(c: &mut TestClient) -> anyhow::Result<deskmux_codec::Frame> {
    c.request(Service::Interaction, ixn::AGENT_LOGIN, |w| {
        w.str(key::PLACE, "p9")?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktop_leaving_closes_its_upstream_session() {
    let st = stack(1, 2, "");
    let mut a = TestClient::connect_hello(st.proxy.addr, T1, "agent-same", TOKEN1)
        .await
        .unwrap();
    let r = login(&mut a).await.unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    // While A is logged in, the same agent on another session is refused.
    let mut b = TestClient::connect_hello(st.proxy.addr, T1, "agent-same", TOKEN1)
        .await
        .unwrap();
    let r = login(&mut b).await.unwrap();
    assert_eq!(code(&r), Some(deskmux_codec::ErrorCode::INVALID_STATE));
    // A leaves: the proxy sends SESSION_CLOSE, the server logs the agent out.
    drop(a);
    // B's login succeeds once the server has logged A's agent out (bounded).
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = login(&mut b).await.unwrap();
        if r.error().is_none() {
            break;
        }
        assert_eq!(code(&r), Some(deskmux_codec::ErrorCode::INVALID_STATE));
        assert!(
            std::time::Instant::now() < end,
            "agent still logged in after its desktop left"
        );
        // Back-off between two attempts.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
