//! Test bodies that must hold under both of the proxy's I/O drivers, written once: the home
//! file of each (`proxy_basic`, `proxy_ops`, `proxy_events`) runs it with mio, the default,
//! and `proxy_uring` runs it with io_uring. A body builds its own stack through [`Driver`], so
//! the two runs cannot drift apart in their assertions or in their limits.

use std::time::Duration;

use deskmux_codec::msg::{control, ixn, key, ucs};
use deskmux_codec::{ErrorCode, Flags, Frame, Head, Kind, Service};
use deskmux_tests::{Proc, TestClient};

use super::*;

/// The proxy config section that selects the io_uring driver.
pub const URING: &str = "[worker]\ndriver = \"uring\"\n";

/// Which I/O driver the proxy's workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// The default (no `[worker]` section).
    Mio,
    /// `[worker] driver = "uring"`; the stack checks that every worker holds an io_uring.
    Uring,
}

impl Driver {
    /// The standard [`stack`] with this driver.
    pub fn stack(self, workers: usize, links: u16, limits: &str) -> Stack {
        match self {
            Driver::Mio => stack(workers, links, limits),
            Driver::Uring => {
                let dir = tempfile::tempdir().expect("tempdir");
                let st = stack_in(dir, workers, links, limits, URING);
                assert_eq!(
                    uring_workers(&st.proxy.proc),
                    workers,
                    "every worker runs the io_uring driver"
                );
                st
            }
        }
    }
}

/// Worker processes of `proxy` (its children) that hold an io_uring file descriptor.
fn uring_workers(proxy: &Proc) -> usize {
    let pid = proxy.pid().expect("proxy pid");
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter(|child| {
            std::fs::read_dir(format!("/proc/{child}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("io_uring"))
                })
        })
        .count()
}

/// Answers through the proxy equal the server's direct answers, field by field: echoes (one
/// far larger than a receive buffer, so both directions span many reads), a write and a read,
/// error answers, an unknown message type; heartbeats are answered locally, an unroutable
/// service byte gets NO_ROUTE. Returns the stack for checks that only one driver makes.
pub async fn responses_through_proxy_equal_direct(driver: Driver) -> Stack {
    let st = driver.stack(1, 2, "");
    let mut direct = TestClient::connect_hello(st.core_addr, T1, "direct-a", TOKEN1)
        .await
        .unwrap();
    let mut via = desktop(st.proxy.addr, T1).await;
    assert_ne!(via.session, 0);
    for (svc, data) in [
        (Service::Interaction, b"hello ixn".to_vec()),
        (Service::Ucs, vec![7u8; 100_000]),
        (Service::Ucs, (0..300_000u32).map(|i| i as u8).collect()),
    ] {
        let a = echo(&mut direct, svc, &data).await;
        let b = echo(&mut via, svc, &data).await;
        assert_eq!(a.body_bytes(), b.body_bytes());
        assert_eq!(a.head().msg_type, b.head().msg_type);
        assert_eq!(a.head().kind, b.head().kind);
        assert_eq!(b.head().tenant, T1);
    }
    // A write and a read, and an error answer, compared field by field.
    let ca = create_contact(&mut direct).await.unwrap();
    let cb = create_contact(&mut via).await.unwrap();
    assert!(ca.error().is_none() && cb.error().is_none());
    let id = cb.body().int(key::CONTACT).unwrap();
    let ga = get_contact(&mut via, id).await.unwrap();
    assert_eq!(ga.body().int(key::CONTACT).unwrap(), id);
    let ea = get_contact(&mut direct, MISSING_CONTACT).await.unwrap();
    let eb = get_contact(&mut via, MISSING_CONTACT).await.unwrap();
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
    st
}

async fn create_contact(c: &mut TestClient) -> anyhow::Result<Frame> {
    c.request(Service::Ucs, ucs::CONTACT_CREATE, |w| {
        w.list(key::ATTRS, |w| {
            w.str("email", "x@example.com")?;
            Ok(())
        })?;
        Ok(())
    })
    .await
}

/// A contact id that no test creates.
const MISSING_CONTACT: i64 = 987_654_321;

async fn get_contact(c: &mut TestClient, id: i64) -> anyhow::Result<Frame> {
    c.request(Service::Ucs, ucs::CONTACT_GET, |w| {
        w.int(key::CONTACT, id);
        Ok(())
    })
    .await
}

/// Send one echo of `data` through `service` without waiting for its answer: its
/// correlation id.
pub async fn send_echo(c: &mut TestClient, service: Service, data: &[u8]) -> u64 {
    let msg_type = match service {
        Service::Ucs => ucs::ECHO,
        _ => ixn::ECHO,
    };
    c.send(service, msg_type, |w| w.bin(key::DATA, data).map(drop))
        .await
        .expect("send echo")
}

/// Send `n` empty UCS echoes (tenant 1) with correlations `first..first + n` in one write,
/// before reading any answer.
pub async fn send_pipelined(d: &mut TestClient, first: u64, n: u64) {
    let mut buf = Vec::new();
    for corr in first..first + n {
        let mut h = Head::new(Kind::Request, Service::Ucs, ucs::ECHO);
        h.tenant = T1;
        h.correlation = corr;
        buf.extend_from_slice(Frame::with_body(h, b"").unwrap().as_bytes());
    }
    d.send_raw(&buf).await.unwrap();
}

/// Every request [`send_pipelined`] sent is answered, successfully (each within `timeout`).
pub async fn expect_pipelined_answered(d: &mut TestClient, first: u64, n: u64, timeout: Duration) {
    for i in 0..n {
        let r = d.response(first + i, timeout).await.unwrap();
        assert_eq!(code(&r), None, "request {i}");
    }
}

/// Backpressure and bad senders each stay with their own desktop. 200 pipelined requests, 4
/// allowed upstream at a time: the worker stops reading that desktop (with io_uring its
/// receive is cancelled, what arrived is held) instead of refusing, and resumes when answers
/// free room, so every request is answered exactly once. Meanwhile bad magic and a frame over
/// `max_frame` close their sender with PROTOCOL and FRAME_TOO_LARGE, an unknown kind gets a
/// PROTOCOL control error and keeps its connection, a sender gone mid-frame leaves the
/// worker, and a well-behaved desktop never notices.
pub async fn bad_senders_and_backpressure_stay_with_their_desktop(driver: Driver) {
    let st = driver.stack(1, 1, "max_in_flight = 4\nmax_frame = 65536\n");
    let mut good = desktop(st.proxy.addr, T1).await;
    let mut d = desktop(st.proxy.addr, T1).await;
    send_pipelined(&mut d, 1000, 200).await;

    let mut bad_magic = desktop(st.proxy.addr, T1).await;
    bad_magic
        .send_raw(&[0xde, 0xad, 0xbe, 0xef].repeat(10))
        .await
        .unwrap();
    let mut too_big = desktop(st.proxy.addr, T1).await;
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::ECHO);
    h.tenant = T1;
    h.body_len = 10 * 1024 * 1024;
    too_big.send_raw(&h.to_bytes()).await.unwrap();
    let mut odd_kind = desktop(st.proxy.addr, T1).await;
    let mut h = Head::new(Kind::Unknown(9), Service::Ucs, ucs::ECHO);
    h.tenant = T1;
    odd_kind.send_raw(&h.to_bytes()).await.unwrap();
    let mut gone = desktop(st.proxy.addr, T1).await;
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::ECHO);
    h.tenant = T1;
    h.body_len = 1000;
    gone.send_raw(&h.to_bytes()).await.unwrap();
    drop(gone);

    expect_pipelined_answered(&mut d, 1000, 200, Duration::from_secs(10)).await;
    // Still connected and usable, and nothing answered twice.
    let r = echo(&mut d, Service::Ucs, b"after").await;
    assert!(r.error().is_none());
    assert!(
        d.backlog().is_empty(),
        "answered exactly once: {:?}",
        d.backlog()
    );

    assert!(
        bad_magic
            .closed_within(Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert_eq!(
        bad_magic.backlog().iter().find_map(code),
        Some(ErrorCode::PROTOCOL)
    );
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
    // The closed desktops left the worker: good, d and odd_kind remain.
    let left = wait_until(Duration::from_secs(10), || {
        status(st.proxy.admin)["workers"][0]["status"]["desktops"].as_u64() == Some(3)
    });
    assert!(left, "{}", status(st.proxy.admin));
}

/// SIGTERM drains: a request in flight is still answered, then GO_AWAY with the configured
/// reconnect delay; new work after it is refused as SHUTTING_DOWN; both workers stop
/// accepting and the proxy exits cleanly within the grace period (plus margin).
pub async fn sigterm_drains_gracefully(driver: Driver) {
    let mut st = driver.stack(2, 1, "drain_grace_ms = 1500\ngo_away_reconnect_ms = 777\n");
    let mut d = desktop(st.proxy.addr, T1).await;
    assert!(
        echo(&mut d, Service::Interaction, b"x")
            .await
            .error()
            .is_none()
    );
    // A request in flight when SIGTERM lands is still answered.
    let corr = send_echo(&mut d, Service::Interaction, b"in flight").await;
    st.proxy.proc.signal("TERM").unwrap();
    let r = d.response(corr, Duration::from_secs(5)).await.unwrap();
    assert!(r.error().is_none());
    let ga = d
        .wait_for(Duration::from_secs(5), |f| {
            f.head().kind == Kind::Control && f.head().msg_type == control::GO_AWAY
        })
        .await
        .unwrap();
    let g = deskmux_codec::msg::GoAway::read(ga.body()).unwrap();
    assert_eq!(g.reconnect_ms, 777);
    // New work after GO_AWAY: refused as not sent.
    let r = d
        .request(Service::Interaction, ixn::ECHO, |_| Ok(()))
        .await
        .unwrap();
    assert_eq!(code(&r), Some(ErrorCode::SHUTTING_DOWN));
    // Every worker stops accepting (with io_uring its multishot accept is cancelled) and the
    // proxy exits cleanly.
    let code = st.proxy.proc.wait_exit(Duration::from_secs(8)).unwrap();
    assert_eq!(code, Some(0));
    assert!(d.closed_within(Duration::from_secs(3)).await.unwrap());
}

/// Subscribe `c` to `topic`: its subscription id and the topic's current seq.
pub async fn subscribe(c: &mut TestClient, topic: &str) -> (i64, i64) {
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

/// Submit one interaction to `queue`, which must succeed.
pub async fn submit(c: &mut TestClient, queue: &str) {
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

/// The seqs of the next `n` queue events on `c`, each a broadcast.
pub async fn queue_events(c: &mut TestClient, n: usize) -> Vec<i64> {
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

/// `c` has received no queue event (it waits a quiet period for one).
pub async fn no_queue_event(c: &mut TestClient) {
    let got = c.event(ixn::QUEUE_EVENT, Duration::from_millis(400)).await;
    assert!(
        got.is_err(),
        "unexpected event {:?}",
        got.map(|f| *f.head())
    );
}

/// Event fan-out: one upstream subscription per (link, tenant, topic); events reach exactly
/// the subscribers, in order, with no gap or duplicate; a late subscriber continues from the
/// current seq; one that unsubscribes, or leaves, stops receiving while the others continue.
pub async fn fan_out_reaches_exactly_the_subscribers_without_gaps(driver: Driver) {
    let st = driver.stack(1, 2, "");
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
    // A desktop leaving does not end the shared subscription.
    drop(subs.pop());
    submit(&mut submitter, "fan").await;
    assert_eq!(queue_events(&mut late, 1).await, vec![base + 2]);
    // None of the 12 events reached the other tenant or the bystander, nor the unsubscribed
    // desktop after it unsubscribed: one quiet period for the three.
    tokio::join!(
        no_queue_event(&mut other_tenant),
        no_queue_event(&mut bystander),
        no_queue_event(&mut gone),
    );
}
