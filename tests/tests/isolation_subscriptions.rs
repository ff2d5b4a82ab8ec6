//! Issue 11's attacks on subscriptions through the proxy (PROTOCOL.md §9, §10; §4.3 for the
//! session-0 `UNSUBSCRIBE` that drops a link's subscription): a fan-out slot reused after its
//! desktop left, subscriptions that outlive their desktops, `SUBSCRIBE` and the in-flight cap,
//! the per-desktop cap, and an `UNSUBSCRIBE` right behind its `SUBSCRIBE`.
//!
//! The harness, the old-proxy switch (`DESKMUX_TEST_OLD_PROXY=1`) and the waiting rules are
//! described in `isolation_support/mod.rs`.

mod fake_upstream;
mod isolation_support;
mod proxy_support;

use std::time::Duration;

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{ErrorCode, Frame, Kind, Service};
use fake_upstream::{Reply, is_request, queue_event, subscribe_answer, topic_of};
use isolation_support::{
    STEP, desktop, desktop_rst, limits, rig, sub_body, summary, upstream_session,
    wait_desktops_gone, wait_status,
};
use proxy_support::{T1, T2, code};
use tokio::time::Instant;

// ------------------------------------------------------------------ slot reuse

/// Attack: a desktop leaves while its `SUBSCRIBE` is upstream; another tenant's subscription
/// takes the freed fan-out slot; the late answer (and the events of that subscription) must
/// not bind to it. The orphaned upstream subscription is released after its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_slot_reuse_never_leaks_another_tenants_events() {
    const X: u64 = 7001;
    const Y: u64 = 7002;
    // One link: both desktops' subscriptions live on it.
    let rig = rig(1, 1, limits(&[], &[])).await;
    let fake = &rig.fakes[0];
    fake.set_script(|f| {
        if is_request(f, Service::Interaction, ixn::SUBSCRIBE) {
            Reply::Hold
        } else {
            Reply::Default
        }
    });
    let topic_is = |t: &'static str| move |f: &Frame| topic_of(f).as_deref() == Some(t);

    let mut a = desktop_rst(rig.addr(), T1, "iso1-a").await;
    let (_, a_up) = upstream_session(fake, "iso1-a").expect("A's session at the fake");
    a.send(
        Service::Interaction,
        ixn::SUBSCRIBE,
        sub_body("queue:alpha"),
    )
    .await
    .expect("A subscribes");
    fake.wait_held(
        1,
        STEP,
        "A's SUBSCRIBE reaches the server",
        topic_is("queue:alpha"),
    )
    .await;
    drop(a); // reset: A is gone with its SUBSCRIBE upstream
    wait_desktops_gone(&rig, fake, &[a_up]).await;

    let mut b = desktop(rig.addr(), T2, "iso1-b").await;
    let corr_b = b
        .send(Service::Interaction, ixn::SUBSCRIBE, sub_body("queue:beta"))
        .await
        .expect("B subscribes");
    fake.wait_held(
        1,
        STEP,
        "B's SUBSCRIBE reaches the server",
        topic_is("queue:beta"),
    )
    .await;

    // The server answers A's (orphaned) SUBSCRIBE, then B's, then publishes on both.
    let released_at = fake.with(|s| s.now());
    assert_eq!(
        fake.release_with(topic_is("queue:alpha"), |f| vec![subscribe_answer(f, X, 0)]),
        1
    );
    assert_eq!(
        fake.release_with(topic_is("queue:beta"), |f| vec![subscribe_answer(f, Y, 0)]),
        1
    );
    let link = fake.with(|s| s.up_links()[0]);
    for seq in 1..=3 {
        fake.send(link, queue_event(X, T1, "queue:alpha", seq));
        fake.send(link, queue_event(Y, T2, "queue:beta", seq));
    }

    let ans = b
        .response(corr_b, STEP)
        .await
        .expect("B's SUBSCRIBE is answered");
    // Y's last event closes the window: one link, in order, so anything of X's that was
    // delivered to B arrives before it.
    let mut events = Vec::new();
    loop {
        let f = b
            .event(ixn::QUEUE_EVENT, STEP)
            .await
            .expect("B receives its own subscription's events");
        let last = f.head().correlation == Y && f.body().int(key::SEQ).ok() == Some(3);
        events.push(f);
        if last {
            break;
        }
    }
    let leaked: Vec<String> = events
        .iter()
        .filter(|f| f.head().correlation != Y || f.head().tenant != T2)
        .map(|f| {
            format!(
                "subscription {} tenant {} topic {:?} seq {:?}",
                f.head().correlation,
                f.head().tenant,
                f.body().opt_str(key::TOPIC).ok().flatten(),
                f.body().int(key::SEQ).ok()
            )
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "B (tenant 2, subscribed to queue:beta) received events of the subscription tenant 1's \
         departed desktop left behind: {leaked:?}"
    );
    assert_eq!(events.len(), 3, "B gets each of Y's 3 events once");
    assert!(ans.error().is_none(), "B's SUBSCRIBE: {}", summary(&ans));
    assert_eq!(
        ans.body().int(key::SUBSCRIPTION).ok(),
        Some(Y as i64),
        "B's SUBSCRIBE must be answered with its own subscription id, not the orphan's"
    );
    // The orphan is released upstream once its answer came.
    let unsub = fake
        .try_wait_for(STEP, |s| {
            s.unsubscribes()
                .into_iter()
                .find(|u| u.tenant == T1 && u.topic == "queue:alpha")
        })
        .await;
    let Some(u) = unsub else {
        panic!("the proxy never sent UNSUBSCRIBE for tenant 1's orphaned queue:alpha");
    };
    assert_eq!(u.link, link, "UNSUBSCRIBE on the subscription's link");
    assert!(
        u.at > released_at,
        "UNSUBSCRIBE must follow the SUBSCRIBE's answer"
    );
}

// ------------------------------------------------------------------ release and caps

/// Attack: many desktops subscribe (pipelined) to many topics and leave at once, some while
/// their `SUBSCRIBE`s are still upstream. Afterwards the proxy holds no subscription
/// (`/status` `subscriptions` = 0) and the server got an `UNSUBSCRIBE` for every subscription
/// it answered, after its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_released_when_desktops_leave() {
    const DESKTOPS: usize = 24;
    let rig = rig(1, 2, limits(&[], &[])).await;
    let fake = &rig.fakes[0];
    let late = |f: &Frame| {
        is_request(f, Service::Interaction, ixn::SUBSCRIBE)
            && topic_of(f).is_some_and(|t| t.ends_with(":late"))
    };
    fake.set_script(move |f| if late(f) { Reply::Hold } else { Reply::Default });
    let mut desks = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..DESKTOPS {
        let tenant = if i % 2 == 0 { T1 } else { T2 };
        let agent = format!("iso8a-{i}");
        let mut c = desktop_rst(rig.addr(), tenant, &agent).await;
        sessions.push(upstream_session(fake, &agent).unwrap().1);
        let mut topics: Vec<String> = (0..4).map(|j| format!("queue:d{i}-t{j}")).collect();
        topics.extend((0..2).map(|j| format!("queue:shared-{j}")));
        let mut answered = Vec::new();
        for t in &topics {
            answered.push(
                c.send(Service::Interaction, ixn::SUBSCRIBE, sub_body(t))
                    .await
                    .unwrap(),
            );
        }
        for j in 0..2 {
            let t = format!("queue:d{i}-l{j}:late");
            c.send(Service::Interaction, ixn::SUBSCRIBE, sub_body(&t))
                .await
                .unwrap();
        }
        for corr in answered {
            let r = c.response(corr, STEP).await.expect("SUBSCRIBE answered");
            assert!(r.error().is_none(), "SUBSCRIBE: {}", summary(&r));
        }
        desks.push(c);
    }
    fake.wait_held(
        DESKTOPS * 2,
        STEP * 2,
        "every late SUBSCRIBE reaches the server",
        late,
    )
    .await;
    // Everyone leaves at once (reset), with answers still upstream.
    drop(desks);
    wait_desktops_gone(&rig, fake, &sessions).await;
    assert_eq!(fake.release(late), DESKTOPS * 2);

    let left = wait_status(rig.proxy.admin, "subscriptions", STEP * 2, |n| n == 0).await;
    assert_eq!(
        left,
        Some(0),
        "/status subscriptions after every desktop left"
    );
    // Every (link, tenant, topic) the server answered is unsubscribed after its answer.
    let missing = |s: &fake_upstream::State| -> Vec<String> {
        let unsubs = s.unsubscribes();
        let mut latest: std::collections::HashMap<(usize, u32, String), u64> =
            std::collections::HashMap::new();
        for (l, r) in s.subscribed() {
            let e = latest.entry((l, r.tenant, r.topic)).or_insert(0);
            *e = (*e).max(r.at);
        }
        let mut v: Vec<String> = latest
            .into_iter()
            .filter(|((l, t, topic), at)| {
                !unsubs
                    .iter()
                    .any(|u| u.link == *l && u.tenant == *t && u.topic == *topic && u.at > *at)
            })
            .map(|((l, t, topic), _)| format!("link {l} tenant {t} {topic}"))
            .collect();
        v.sort();
        v
    };
    let answered = fake.with(|s| s.subscribed().len());
    let still = fake
        .try_wait_for(STEP * 2, |s| {
            let m = missing(s);
            m.is_empty().then_some(())
        })
        .await;
    if still.is_none() {
        let m = fake.with(missing);
        panic!(
            "no UNSUBSCRIBE upstream for {} of the {answered} subscriptions the server \
             answered, e.g. {:?}",
            m.len(),
            &m[..m.len().min(5)]
        );
    }
}

/// Attack: one desktop pipelines 12 `SUBSCRIBE`s the server sits on. `SUBSCRIBE` counts as in
/// flight: the server never sees more than `max_in_flight` (4) of them at once, and all 12 are
/// answered as the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_counts_toward_the_in_flight_cap() {
    const CAP: usize = 4;
    let rig = rig(1, 1, limits(&[("max_in_flight", CAP as u64)], &[])).await;
    let fake = &rig.fakes[0];
    let is_sub = |f: &Frame| is_request(f, Service::Interaction, ixn::SUBSCRIBE);
    fake.set_script(move |f| {
        if is_sub(f) {
            Reply::Hold
        } else {
            Reply::Default
        }
    });
    let mut d = desktop(rig.addr(), T1, "iso8b").await;
    let (_, up) = upstream_session(fake, "iso8b").unwrap();
    let mut corrs = Vec::new();
    for i in 0..12 {
        let t = format!("queue:if-{i}");
        corrs.push(
            d.send(Service::Interaction, ixn::SUBSCRIBE, sub_body(&t))
                .await
                .unwrap(),
        );
    }
    let seen = move |s: &fake_upstream::State| {
        s.requests(Service::Interaction, ixn::SUBSCRIBE)
            .iter()
            .filter(|(_, r)| r.frame.head().session == up)
            .count()
    };
    fake.wait_for(STEP, "the first SUBSCRIBEs reach the server", |s| {
        (seen(s) >= CAP).then_some(())
    })
    .await;
    // A wait for a failure: a proxy that does not count SUBSCRIBE forwards the rest at once.
    // The window only bounds the wait; the outstanding count below decides too.
    if let Some(n) = fake
        .try_wait_for(Duration::from_millis(1500), |s| {
            let n = seen(s);
            (n > CAP).then_some(n)
        })
        .await
    {
        panic!(
            "the server has {n} of one desktop's SUBSCRIBEs outstanding at once \
             (max_in_flight = {CAP})"
        );
    }
    // The server answers what it holds, as it comes: all 12 get their answer.
    let end = Instant::now() + STEP * 2;
    for corr in corrs {
        let r = loop {
            fake.release(is_sub);
            match d.response(corr, Duration::from_millis(50)).await {
                Ok(f) => break f,
                Err(e) if e.to_string().contains("timed out") && Instant::now() < end => {}
                Err(e) => panic!("SUBSCRIBE {corr} not answered: {e:#}"),
            }
        };
        assert!(r.error().is_none(), "SUBSCRIBE {corr}: {}", summary(&r));
    }
    assert_eq!(fake.with(seen), 12);
    let max_out = fake.with(|s| s.max_outstanding(up));
    assert!(
        max_out <= CAP,
        "the server saw {max_out} of the desktop's SUBSCRIBEs outstanding (max_in_flight = {CAP})"
    );
}

/// Attack: one desktop subscribes to ever more topics. Past `max_subscriptions` (5) it gets
/// `TOO_MANY_SUBSCRIPTIONS` and nothing reaches the server; a repeated topic is not a new
/// subscription; after an `UNSUBSCRIBE` there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_desktop_are_capped() {
    let rig = rig(1, 1, limits(&[], &[("max_subscriptions", 5)])).await;
    let fake = &rig.fakes[0];
    let mut d = desktop(rig.addr(), T1, "iso8c").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let t = format!("queue:cap-{i}");
        let r = d
            .request(Service::Interaction, ixn::SUBSCRIBE, sub_body(&t))
            .await
            .unwrap();
        assert!(r.error().is_none(), "SUBSCRIBE {t}: {}", summary(&r));
        ids.push(r.body().int(key::SUBSCRIPTION).unwrap());
    }
    let r = d
        .request(
            Service::Interaction,
            ixn::SUBSCRIBE,
            sub_body("queue:cap-5"),
        )
        .await
        .unwrap();
    assert_eq!(
        code(&r),
        Some(ErrorCode::TOO_MANY_SUBSCRIPTIONS),
        "a 6th topic with max_subscriptions = 5: {}",
        summary(&r)
    );
    // Fence: an echo after it has come back, so a forwarded SUBSCRIBE would be recorded.
    proxy_support::echo_ok(&mut d, Service::Interaction, b"fence").await;
    let forwarded = fake.with(|s| {
        s.requests(Service::Interaction, ixn::SUBSCRIBE)
            .iter()
            .any(|(_, r)| topic_of(&r.frame).as_deref() == Some("queue:cap-5"))
    });
    assert!(!forwarded, "the refused SUBSCRIBE reached the server");
    // Subscribing again to a topic it holds is answered with the same id.
    let r = d
        .request(
            Service::Interaction,
            ixn::SUBSCRIBE,
            sub_body("queue:cap-0"),
        )
        .await
        .unwrap();
    assert!(r.error().is_none(), "repeated SUBSCRIBE: {}", summary(&r));
    assert_eq!(r.body().int(key::SUBSCRIPTION).ok(), Some(ids[0]));
    // One fewer, room for one more.
    let r = d
        .request(
            Service::Interaction,
            ixn::UNSUBSCRIBE,
            sub_body("queue:cap-1"),
        )
        .await
        .unwrap();
    assert!(r.error().is_none(), "UNSUBSCRIBE: {}", summary(&r));
    let r = d
        .request(
            Service::Interaction,
            ixn::SUBSCRIBE,
            sub_body("queue:cap-5"),
        )
        .await
        .unwrap();
    assert!(
        r.error().is_none(),
        "SUBSCRIBE after an UNSUBSCRIBE: {}",
        summary(&r)
    );
}

// ------------------------------------------------------------------ unsubscribe behind subscribe

/// A desktop sends `UNSUBSCRIBE` right behind its `SUBSCRIBE` of the same topic, while the
/// server holds that `SUBSCRIBE`. The desktop gets the `SUBSCRIBE` answer first, then the
/// `UNSUBSCRIBE` answer (PROTOCOL.md §9: answered after it, in order); afterwards no event of
/// that topic reaches it; and the proxy drops the link subscription nobody holds with an
/// `UNSUBSCRIBE` of session 0 (§4.3), after the `SUBSCRIBE`'s answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_behind_its_subscribe_is_answered_after_it() {
    /// The id the server gives the topic that is dropped.
    const GONE: u64 = 7301;
    let rig = rig(1, 1, limits(&[], &[])).await;
    let fake = &rig.fakes[0];
    let gone = |f: &Frame| {
        is_request(f, Service::Interaction, ixn::SUBSCRIBE)
            && topic_of(f).as_deref() == Some("queue:gone")
    };
    fake.set_script(move |f| if gone(f) { Reply::Hold } else { Reply::Default });
    let mut d = desktop(rig.addr(), T1, "isou").await;
    // A topic it keeps: its event closes the window in which a dropped one would arrive.
    let r = d
        .request(Service::Interaction, ixn::SUBSCRIBE, sub_body("queue:kept"))
        .await
        .expect("SUBSCRIBE queue:kept");
    assert!(r.error().is_none(), "SUBSCRIBE queue:kept: {}", summary(&r));
    let kept = u64::try_from(r.body().int(key::SUBSCRIPTION).expect("subscription id"))
        .expect("subscription id");

    let c_sub = d
        .send(Service::Interaction, ixn::SUBSCRIBE, sub_body("queue:gone"))
        .await
        .expect("SUBSCRIBE queue:gone");
    let c_unsub = d
        .send(
            Service::Interaction,
            ixn::UNSUBSCRIBE,
            sub_body("queue:gone"),
        )
        .await
        .expect("UNSUBSCRIBE queue:gone");
    fake.wait_held(
        1,
        STEP,
        "the SUBSCRIBE of queue:gone reaches the server",
        gone,
    )
    .await;
    let released_at = fake.with(|s| s.now());
    assert_eq!(
        fake.release_with(gone, |f| vec![subscribe_answer(f, GONE, 0)]),
        1
    );

    // The two answers, in the order they arrive.
    let mut order = Vec::new();
    let end = Instant::now() + STEP;
    while order.len() < 2 {
        let left = end.saturating_duration_since(Instant::now());
        let f = match d.next_frame(left).await {
            Ok(Some(f)) => f,
            Ok(None) => panic!("the proxy closed the desktop; answers so far: {order:?}"),
            Err(e) => panic!("answers so far: {order:?}; then nothing ({e:#})"),
        };
        let h = f.head();
        if h.kind != Kind::Response || (h.correlation != c_sub && h.correlation != c_unsub) {
            continue;
        }
        let what = if h.correlation == c_sub {
            "SUBSCRIBE"
        } else {
            "UNSUBSCRIBE"
        };
        let id = f.body().opt_int(key::SUBSCRIPTION).ok().flatten();
        order.push((what, summary(&f), id));
        assert!(
            order[0].0 == "SUBSCRIBE",
            "an UNSUBSCRIBE right behind its SUBSCRIBE (held at the server) was answered \
             first: {order:?} (want the SUBSCRIBE's answer first, then the UNSUBSCRIBE's)"
        );
    }
    let ok = order[0].0 == "SUBSCRIBE"
        && order[1].0 == "UNSUBSCRIBE"
        && !order.iter().any(|(_, s, _)| s.contains("error"));
    assert!(
        ok,
        "an UNSUBSCRIBE right behind its SUBSCRIBE (held at the server): the desktop got \
         {order:?} (want the SUBSCRIBE's answer first, then the UNSUBSCRIBE's, both ok)"
    );
    assert_eq!(
        order[0].2,
        Some(GONE as i64),
        "the SUBSCRIBE is answered with the server's id"
    );

    // Nobody holds queue:gone: the link's subscription is dropped upstream (session 0).
    let unsub = fake
        .try_wait_for(STEP, |s| {
            s.unsubscribes()
                .into_iter()
                .find(|u| u.tenant == T1 && u.topic == "queue:gone" && u.at > released_at)
        })
        .await;
    let Some(u) = unsub else {
        panic!(
            "no UNSUBSCRIBE of queue:gone upstream after the SUBSCRIBE's answer; seen: {:?}",
            fake.with(|s| s.unsubscribes())
        );
    };
    assert_eq!(
        u.session, 0,
        "the proxy drops a link subscription with session 0 (PROTOCOL.md §4.3): {u:?}"
    );

    // Events of the dropped subscription, then one of the kept one (same link, in order).
    let link = fake.with(|s| s.up_links()[0]);
    for seq in 1..=2 {
        fake.send(link, queue_event(GONE, T1, "queue:gone", seq));
    }
    fake.send(link, queue_event(kept, T1, "queue:kept", 1));
    let mut got = Vec::new();
    loop {
        let f = d
            .event(ixn::QUEUE_EVENT, STEP)
            .await
            .expect("the event of the topic the desktop keeps");
        let c = f.head().correlation;
        got.push((
            c,
            f.body()
                .opt_str(key::TOPIC)
                .ok()
                .flatten()
                .map(String::from),
        ));
        if c == kept {
            break;
        }
    }
    assert_eq!(
        got,
        vec![(kept, Some("queue:kept".to_string()))],
        "events after the UNSUBSCRIBE of queue:gone was answered"
    );
}
