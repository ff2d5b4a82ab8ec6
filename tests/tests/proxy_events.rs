//! Event fan-out through the proxy: one upstream subscription per (link, tenant, topic),
//! events reach exactly the subscribers, in order, with no gaps; unicast events reach their
//! session.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{Flags, Kind, Service};
use deskmux_tests::TestClient;
use proxy_support::*;

async fn subscribe(c: &mut TestClient, topic: &str) -> (i64, i64) {
    let r = c
        .request(Service::Interaction, ixn::SUBSCRIBE, |w| {
            w.str(key::TOPIC, topic)?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    (
        r.body().int(key::SUBSCRIPTION).unwrap(),
        r.body().int(key::SEQ).unwrap(),
    )
}

async fn submit(c: &mut TestClient, queue: &str) {
    let r = c
        .request(Service::Interaction, ixn::SUBMIT, |w| {
            w.str(key::QUEUE, queue)?;
            w.list(key::PROPS, |w| {
                w.str("subject", "hi")?;
                Ok(())
            })?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
}

async fn queue_events(c: &mut TestClient, n: usize) -> Vec<i64> {
    let mut seqs = Vec::new();
    for _ in 0..n {
        let f = c
            .event(ixn::QUEUE_EVENT, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(f.head().flags.has(Flags::BROADCAST));
        seqs.push(f.body().int(key::SEQ).unwrap());
    }
    seqs
}

async fn no_queue_event(c: &mut TestClient) {
    let got = c.event(ixn::QUEUE_EVENT, Duration::from_millis(400)).await;
    assert!(
        got.is_err(),
        "unexpected event {:?}",
        got.map(|f| *f.head())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_exactly_the_subscribers_without_gaps() {
    let st = stack(1, 2, "");
    let topic = "queue:fan";
    let mut subs = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..6 {
        let mut c = desktop(st.proxy.addr, T1).await;
        let (id, seq) = subscribe(&mut c, topic).await;
        bases.push((id, seq));
        subs.push(c);
    }
    let mut other_tenant = desktop(st.proxy.addr, T2).await;
    subscribe(&mut other_tenant, topic).await;
    let mut bystander = desktop(st.proxy.addr, T1).await;
    let mut submitter = desktop(st.proxy.addr, T1).await;
    // One upstream subscription per (link, tenant, topic): at most 2 links × 2 tenants.
    // (`/status` is published once per tick: wait for the tick after the subscriptions.)
    let mut held = 0;
    let settled = wait_until(Duration::from_secs(5), || {
        held = status(st.proxy.admin)["workers"][0]["status"]["subscriptions"]
            .as_u64()
            .unwrap_or(0);
        (2..=4).contains(&held)
    });
    assert!(settled, "held {held} upstream subscriptions for 7 desktops");

    for _ in 0..10 {
        submit(&mut submitter, "fan").await;
    }
    for (c, (_, base)) in subs.iter_mut().zip(&bases) {
        let seqs = queue_events(c, 10).await;
        let want: Vec<i64> = (base + 1..=base + 10).collect();
        assert_eq!(seqs, want, "in order, no gap, no duplicate");
    }
    no_queue_event(&mut other_tenant).await;
    no_queue_event(&mut bystander).await;

    // A late subscriber is answered locally with the current seq, and continues from it.
    let mut late = desktop(st.proxy.addr, T1).await;
    let (_, base) = subscribe(&mut late, topic).await;
    // Unsubscribe one: it stops receiving; the others continue.
    let mut gone = subs.pop().unwrap();
    let r = gone
        .request(Service::Interaction, ixn::UNSUBSCRIBE, |w| {
            w.str(key::TOPIC, topic)?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none());
    submit(&mut submitter, "fan").await;
    assert_eq!(queue_events(&mut late, 1).await, vec![base + 1]);
    for c in &mut subs {
        assert_eq!(queue_events(c, 1).await.len(), 1);
    }
    no_queue_event(&mut gone).await;
    // A desktop leaving does not end the shared subscription.
    drop(subs.pop());
    submit(&mut submitter, "fan").await;
    assert_eq!(queue_events(&mut late, 1).await, vec![base + 2]);
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
