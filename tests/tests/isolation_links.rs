//! Issue 11's attacks through the proxy's links (PROTOCOL.md §4.2 the link hello's
//! `max_frame`, §4.3 link liveness, §5 codes, §10 what the proxy does with each frame from a
//! server): an answer over `max_frame`, links wedged in the middle of a frame, unicast events
//! on the wrong link or tenant, and answers that name another session or tenant.
//!
//! The harness, the old-proxy switch (`DESKMUX_TEST_OLD_PROXY=1`) and the waiting rules are
//! described in `isolation_support/mod.rs`.

mod fake_upstream;
mod isolation_support;
mod proxy_support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{ErrorCode, Flags, Frame, Kind, RetryClass, Service};
use deskmux_tests::TestClient;
use fake_upstream::{Reply, big_answer, data_of, echo_as, head_only, invite_event};
use isolation_support::{
    MIB, STEP, data_body, desktop, is_control_error, is_error, limits, rig, status, summary,
    upstream_session, wait_status, worker_sum,
};
use proxy_support::{T1, T2, TOKEN1, code};

// ------------------------------------------------------------------ oversized response

/// Attack: a request whose answer is larger than the proxy accepts (here 17 MiB, over even
/// the old link decoder's 16 MiB, then 3 MiB, over `max_frame`). Only that request fails
/// (`RESPONSE_TOO_LARGE`); the link and everyone else's requests on it are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_fails_only_its_request_and_keeps_the_link() {
    let max_frame = 2 * MIB as u64;
    // The link frame deadline is not what this test is about: generous, so that skipping
    // 17 MiB on a busy machine cannot trip it.
    let rig = rig(
        1,
        1,
        limits(
            &[("max_frame", max_frame)],
            &[("link_frame_timeout_ms", 20_000)],
        ),
    )
    .await;
    let fake = &rig.fakes[0];
    fake.set_script(|f| {
        let d = data_of(f);
        if d.starts_with(b"hold") {
            return Reply::Hold;
        }
        if let Some(n) = d
            .strip_prefix(b"big:")
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
        {
            return Reply::Send(vec![big_answer(f, n)]);
        }
        Reply::Default
    });
    let mut a = desktop(rig.addr(), T1, "iso2-a").await;
    let mut b = desktop(rig.addr(), T2, "iso2-b").await;
    let links_before = wait_status(rig.proxy.admin, "links_up", STEP, |n| n == 1).await;
    assert_eq!(links_before, Some(1), "/status links_up before the attack");
    let accepted_before = fake.accepted();

    // B has a request in flight on the shared link while A's huge answer comes back.
    let corr_b = b
        .send(Service::Interaction, ixn::ECHO, |w| {
            w.bin(key::DATA, b"hold-b")?;
            Ok(())
        })
        .await
        .unwrap();
    fake.wait_held(1, STEP, "B's request reaches the server", |f| {
        data_of(f).starts_with(b"hold")
    })
    .await;
    let huge = 17 * MIB;
    let corr_a = a
        .send(Service::Interaction, ixn::ECHO, |w| {
            w.bin(key::DATA, format!("big:{huge}").as_bytes())?;
            Ok(())
        })
        .await
        .unwrap();
    let ra = a.response(corr_a, STEP * 3).await;
    fake.release(|f| data_of(f).starts_with(b"hold"));
    let rb = b.response(corr_b, STEP).await;
    let a_ok = matches!(&ra, Ok(f) if code(f) == Some(ErrorCode::RESPONSE_TOO_LARGE));
    let b_ok = matches!(&rb, Ok(f) if f.error().is_none() && data_of(f) == b"hold-b");
    assert!(
        a_ok && b_ok,
        "a 17 MiB answer to A's request: A got {:?} (want RESPONSE_TOO_LARGE); B's request in \
         flight on the same link got {:?} (want its echo)",
        ra.as_ref().map(summary),
        rb.as_ref().map(summary),
    );
    // Answered once: nothing more for that id is already there.
    assert!(
        a.response(corr_a, Duration::ZERO).await.is_err(),
        "A's request answered twice"
    );

    // Over max_frame (what the desktop may receive) but under the old 16 MiB link limit.
    let corr = a
        .send(Service::Interaction, ixn::ECHO, |w| {
            w.bin(key::DATA, format!("big:{}", 3 * MIB).as_bytes())?;
            Ok(())
        })
        .await
        .unwrap();
    let r = a.response(corr, STEP * 2).await.expect("A's 3 MiB request");
    assert_eq!(
        code(&r),
        Some(ErrorCode::RESPONSE_TOO_LARGE),
        "a 3 MiB answer (max_frame 2 MiB): {}",
        summary(&r)
    );
    assert_eq!(r.head().correlation, corr);
    // Both desktops keep working on the same link.
    proxy_support::echo_ok(&mut a, Service::Interaction, b"after-a").await;
    proxy_support::echo_ok(&mut b, Service::Interaction, b"after-b").await;
    for c in [&a, &b] {
        assert!(
            c.backlog().iter().all(|f| f.head().kind != Kind::Control),
            "unexpected control frame: {:?}",
            c.backlog().iter().map(summary).collect::<Vec<_>>()
        );
    }
    let links_after = worker_sum(&status(rig.proxy.admin).await, "links_up");
    assert_eq!(
        links_after, links_before,
        "/status links_up after the attack"
    );
    assert_eq!(
        fake.accepted(),
        accepted_before,
        "the proxy reconnected its link: it failed it"
    );
    // The proxy announces the largest frame it takes on the link (= limits.max_frame).
    let announced = fake.with(|s| {
        s.links[0]
            .link_hello
            .as_ref()
            .and_then(|f| f.body().opt_int(key::MAX_FRAME).ok().flatten())
    });
    assert_eq!(
        announced,
        Some(max_frame as i64),
        "LINK_HELLO max_frame (the proxy's limits.max_frame)"
    );
}

// ------------------------------------------------------------------ wedged links

/// Whether `f` answers a request with a retry class for a lost link.
fn link_lost(f: &Frame) -> bool {
    matches!(
        code(f),
        Some(ErrorCode::LINK_LOST | ErrorCode::LINK_LOST_UNSENT)
    )
}

/// The head of a response to `req` announcing `body_len` bytes.
fn response_head(req: &Frame, body_len: u32) -> Bytes {
    let mut h = *req.head();
    h.kind = Kind::Response;
    h.flags = Flags::default();
    head_only(h, body_len)
}

/// Attack: the only instance's link gets the head of a 10 MiB frame (over `max_frame`, under
/// the old 16 MiB link limit) and then nothing. The link must be failed within
/// `link_frame_timeout_ms`: its requests answered with their retry class, its desktops told
/// `LINK_LOST`, and a new hello answered at once (the instance is unreachable: not sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_link_over_max_frame_leaves_rotation() {
    let rig = rig(1, 1, limits(&[], &[("link_frame_timeout_ms", 500)])).await;
    let fake = &rig.fakes[0];
    fake.set_script(|f| {
        if data_of(f).starts_with(b"hold") {
            Reply::Hold
        } else {
            Reply::Default
        }
    });
    let mut d1 = desktop(rig.addr(), T1, "iso3a-1").await;
    let c1 = d1
        .send(Service::Interaction, ixn::ECHO, |w| {
            w.bin(key::DATA, b"hold-1")?;
            Ok(())
        })
        .await
        .unwrap();
    let held = fake
        .wait_held(1, STEP, "the request reaches the server", |f| {
            data_of(f).starts_with(b"hold")
        })
        .await;
    fake.refuse_new_links();
    let link = fake.with(|s| s.up_links()[0]);
    fake.wedge(link, response_head(&held[0], 10 * MIB as u32));
    let c2 = d1
        .send(Service::Interaction, ixn::ECHO, |w| {
            w.bin(key::DATA, b"after-wedge")?;
            Ok(())
        })
        .await
        .unwrap();
    for (what, c) in [("in flight", c1), ("sent after the wedge", c2)] {
        let r = d1.response(c, STEP).await.unwrap_or_else(|e| {
            panic!(
                "request {what} on a link wedged by a 10 MiB head: no answer within {STEP:?} \
                 ({e}); the link was never declared down"
            )
        });
        assert!(
            link_lost(&r),
            "request {what} on the wedged link: {} (want LINK_LOST / LINK_LOST_UNSENT)",
            summary(&r)
        );
    }
    d1.wait_for(STEP, |f| is_control_error(f, ErrorCode::LINK_LOST))
        .await
        .expect("the desktop is told its link is lost (control ERROR LINK_LOST)");
    let mut d2 = TestClient::connect(rig.addr()).await.unwrap();
    let h = d2
        .hello(T1, "iso3a-2", TOKEN1, 0b110)
        .await
        .expect("a new hello is answered at once while the only instance is down");
    let c = code(&h);
    assert!(
        c.is_some_and(|c| c.retry_class() == RetryClass::NotSent),
        "hello with the only instance's link wedged: {} (want an error of class not sent, \
         e.g. UNAVAILABLE)",
        summary(&h)
    );
}

/// Attack: a link gets the head of a 1 MiB frame (within `max_frame`) and a few of its bytes,
/// never the rest. `link_frame_timeout_ms` fails the link: its request is answered with its
/// retry class, and new hellos succeed at once on the healthy second instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_link_within_max_frame_trips_link_frame_timeout() {
    let rig = rig(2, 1, limits(&[], &[("link_frame_timeout_ms", 500)])).await;
    for f in &rig.fakes {
        f.set_script(|f| {
            if data_of(f).starts_with(b"hold") {
                Reply::Hold
            } else {
                Reply::Default
            }
        });
    }
    let (sick, healthy) = (&rig.fakes[0], &rig.fakes[1]);
    // A desktop whose session lives on the instance that will wedge (hellos are spread).
    let mut others = Vec::new();
    let mut d1 = None;
    for i in 0..6 {
        let agent = format!("iso3b-{i}");
        let c = desktop(rig.addr(), T1, &agent).await;
        if upstream_session(sick, &agent).is_some() {
            d1 = Some(c);
            break;
        }
        others.push(c);
    }
    let mut d1 = d1.expect("one of 6 hellos opens its session on the first instance");
    let c1 = d1
        .send(Service::Interaction, ixn::ECHO, |w| {
            w.bin(key::DATA, b"hold-1")?;
            Ok(())
        })
        .await
        .unwrap();
    let held = sick
        .wait_held(1, STEP, "the request reaches the server", |f| {
            data_of(f).starts_with(b"hold")
        })
        .await;
    sick.refuse_new_links();
    let link = sick.with(|s| s.up_links()[0]);
    let mut begun = BytesMut::from(&response_head(&held[0], MIB as u32)[..]);
    begun.extend_from_slice(&[0u8; 4096]);
    sick.wedge(link, begun.freeze());
    let r = d1.response(c1, STEP).await.unwrap_or_else(|e| {
        panic!(
            "request in flight on a link whose 1 MiB frame never completes: no answer within \
             {STEP:?} ({e}); link_frame_timeout_ms = 500 did not fail the link"
        )
    });
    assert!(
        link_lost(&r),
        "request on the wedged link: {} (want LINK_LOST / LINK_LOST_UNSENT)",
        summary(&r)
    );
    // New hellos are answered at once, and land on the healthy instance.
    for i in 0..4 {
        let agent = format!("iso3b-new-{i}");
        let mut c = TestClient::connect(rig.addr()).await.unwrap();
        let h = c
            .hello(T1, &agent, TOKEN1, 0b110)
            .await
            .unwrap_or_else(|e| panic!("new hello {i} with one instance wedged: no answer ({e})"));
        assert!(h.error().is_none(), "new hello {i}: {}", summary(&h));
        proxy_support::echo_ok(&mut c, Service::Interaction, b"healthy").await;
        assert!(upstream_session(healthy, &agent).is_some());
    }
}

// ------------------------------------------------------------------ unicast events

/// Attack: the upstream sends `INVITE`s naming desktop B's session but stamped with another
/// tenant, or on a link / instance where B has no session. Only the event on B's own link,
/// with B's tenant, may reach B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_event_needs_the_sessions_link_and_tenant() {
    let rig = rig(2, 2, limits(&[], &[])).await;
    let mut b = desktop(rig.addr(), T2, "iso4-b").await;
    let home = (0..2)
        .find(|i| upstream_session(&rig.fakes[*i], "iso4-b").is_some())
        .expect("B's session at one of the fakes");
    let (fh, fo) = (&rig.fakes[home], &rig.fakes[1 - home]);
    let (b_link, b_up) = upstream_session(fh, "iso4-b").unwrap();
    let sibling = fh
        .with(|s| s.up_links().into_iter().find(|l| *l != b_link))
        .expect("a second link to B's instance");
    let foreign = fo.with(|s| s.up_links()[0]);

    // B's own link, tenant 1 (B is tenant 2).
    fh.send(b_link, invite_event(b_up, T1, 666));
    // Right tenant, the other link of B's instance.
    fh.send(sibling, invite_event(b_up, T2, 777));
    // Right tenant, a link of an instance where B has no session.
    fo.send(foreign, invite_event(b_up, T2, 888));
    // Fences: the proxy has processed everything sent before on those links.
    fh.ping(sibling, STEP).await;
    fo.ping(foreign, STEP).await;
    // The legitimate event, last, on B's link (in order after the first).
    fh.send(b_link, invite_event(b_up, T2, 555));

    let mut got = Vec::new();
    loop {
        let f = b
            .event(ixn::INVITE, STEP)
            .await
            .expect("B receives the INVITE for its own session, tenant and link");
        let id = f.body().int(key::INTERACTION).unwrap_or(-1);
        got.push((id, f.head().tenant));
        if id == 555 {
            break;
        }
    }
    let what = |id: i64| match id {
        666 => "stamped tenant 1, on B's own link",
        777 => "on another link of B's instance",
        888 => "from an instance B has no session on",
        _ => "?",
    };
    let leaked: Vec<String> = got
        .iter()
        .filter(|(id, _)| *id != 555)
        .map(|(id, t)| format!("INVITE {id} (tenant {t}) {}", what(*id)))
        .collect();
    assert!(
        leaked.is_empty(),
        "B (tenant 2) received unicast events that are not its own: {leaked:?}"
    );
    assert_eq!(got, vec![(555, T2)]);
}

// ------------------------------------------------------------------ misrouted responses

/// Attack (a faulty server, or one whose sessions got crossed): answers to desktop A's requests
/// (same link correlation id) whose heads name desktop B's session, B's tenant, or both. A gets
/// `INTERNAL` (outcome unknown) for each and never the misrouted frame; B gets nothing
/// (PROTOCOL.md §10: "the server answered for another session or tenant"). The link stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misrouted_response_is_answered_internal_and_never_delivered() {
    // One link: A's and B's sessions live on it.
    let rig = rig(1, 1, limits(&[], &[])).await;
    let fake = &rig.fakes[0];
    let mut a = desktop(rig.addr(), T1, "isomr-a").await;
    let mut b = desktop(rig.addr(), T2, "isomr-b").await;
    let (_, a_up) = upstream_session(fake, "isomr-a").expect("A's session at the fake");
    let (_, b_up) = upstream_session(fake, "isomr-b").expect("B's session at the fake");
    fake.set_script(move |f| match data_of(f) {
        b"mr:session" => Reply::Send(vec![echo_as(f, T1, b_up)]),
        b"mr:tenant" => Reply::Send(vec![echo_as(f, T2, a_up)]),
        b"mr:both" => Reply::Send(vec![echo_as(f, T2, b_up)]),
        _ => Reply::Default,
    });
    let accepted_before = fake.accepted();

    let cases = [
        ("mr:session", "B's session, A's tenant"),
        ("mr:tenant", "A's session, B's tenant"),
        ("mr:both", "B's session and tenant"),
    ];
    let mut wrong = Vec::new();
    for (data, what) in cases {
        let corr = a
            .send(Service::Interaction, ixn::ECHO, data_body(data.as_bytes()))
            .await
            .expect("A sends");
        match a.response(corr, STEP).await {
            Ok(f) if is_error(&f, ErrorCode::INTERNAL, RetryClass::OutcomeUnknown) => {}
            Ok(f) => wrong.push(format!(
                "{what}: A got {} with head session {} tenant {}",
                summary(&f),
                f.head().session,
                f.head().tenant
            )),
            Err(e) => wrong.push(format!("{what}: A got no answer ({e:#})")),
        }
    }
    assert!(
        wrong.is_empty(),
        "answers to A's requests whose heads name another session or tenant (want INTERNAL, \
         outcome unknown, for each): {wrong:?}"
    );

    // Fences: both desktops are served on the same link after it.
    proxy_support::echo_ok(&mut a, Service::Interaction, b"after-a").await;
    proxy_support::echo_ok(&mut b, Service::Interaction, b"after-b").await;
    let misrouted = |c: &TestClient| -> Vec<String> {
        c.backlog()
            .iter()
            .filter(|f| data_of(f).starts_with(b"mr:") || f.head().kind == Kind::Response)
            .map(summary)
            .collect()
    };
    assert!(
        misrouted(&a).is_empty(),
        "A received more than one answer per request: {:?}",
        misrouted(&a)
    );
    assert!(
        misrouted(&b).is_empty(),
        "B (whose session or tenant the answers named) received: {:?}",
        misrouted(&b)
    );
    assert_eq!(
        fake.accepted(),
        accepted_before,
        "the proxy reconnected its link: it failed it"
    );
}
