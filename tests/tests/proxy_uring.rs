//! The proxy with the io_uring driver (`[worker] driver = "uring"`): the same requests,
//! events, backpressure and isolation as with mio (a subset of `proxy_basic` and
//! `proxy_events`), and the configuration check that keeps TLS and QUIC on mio. Each test
//! first checks that a worker really holds an io_uring.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::msg::{control, ixn, key, ucs};
use deskmux_codec::{ErrorCode, Flags, Frame, Head, Kind, Service};
use deskmux_tests::{Proc, TestClient};
use proxy_support::*;

const URING: &str = "[worker]\ndriver = \"uring\"\n";

fn uring_stack(workers: usize, links: u16, limits: &str) -> Stack {
    let st = stack_in(
        tempfile::tempdir().expect("tempdir"),
        workers,
        links,
        limits,
        URING,
    );
    assert_eq!(
        uring_workers(&st.proxy.proc),
        workers,
        "every worker runs the io_uring driver"
    );
    st
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_uring_equal_direct() {
    let st = uring_stack(1, 2, "");
    let mut direct = TestClient::connect_hello(st.core_addr, T1, "direct-a", TOKEN1)
        .await
        .unwrap();
    let mut via = desktop(st.proxy.addr, T1).await;
    assert_ne!(via.session, 0);
    // Small bodies, and one far larger than a provided receive buffer (both directions span
    // many completions).
    for (svc, data) in [
        (Service::Interaction, b"hello ixn".to_vec()),
        (Service::Ucs, vec![7u8; 100_000]),
        (Service::Ucs, (0..300_000u32).map(|i| i as u8).collect()),
    ] {
        let a = echo(&mut direct, svc, &data).await;
        let b = echo(&mut via, svc, &data).await;
        assert_eq!(a.body_bytes(), b.body_bytes());
        assert_eq!(b.head().tenant, T1);
    }
    let nr = via
        .request(Service::Unknown(9), 1, |_| Ok(()))
        .await
        .unwrap();
    assert_eq!(code(&nr), Some(ErrorCode::NO_ROUTE));
    // Many desktops at once, each with its own answers.
    let mut ds = Vec::new();
    for _ in 0..20 {
        ds.push(desktop(st.proxy.addr, T1).await);
    }
    for round in 0..5 {
        for (i, d) in ds.iter_mut().enumerate() {
            let msg = format!("d{i} r{round}");
            let r = echo(d, Service::Interaction, msg.as_bytes()).await;
            let want = echo(&mut direct, Service::Interaction, msg.as_bytes()).await;
            assert!(r.error().is_none());
            assert_eq!(r.body_bytes(), want.body_bytes());
        }
    }
}

/// More bytes at once than the worker's provided buffers hold (4,096 of 2 KiB): receives end
/// for want of a buffer and must be armed again, or desktops stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_input_at_once_than_the_buffers_hold() {
    let st = uring_stack(1, 2, "");
    let mut ds = Vec::new();
    for _ in 0..200 {
        ds.push(desktop(st.proxy.addr, T1).await);
    }
    // Every desktop sends 4 echoes of 64 KiB before reading any answer: 50 MiB in the
    // sockets at once.
    let body: Vec<u8> = (0..64 * 1024u32).map(|k| k as u8).collect();
    let mut sent = Vec::new();
    for d in &mut ds {
        let mut corrs = Vec::new();
        for _ in 0..4 {
            let corr = d
                .send(Service::Ucs, ucs::ECHO, |w| {
                    w.bin(key::DATA, &body)?;
                    Ok(())
                })
                .await
                .unwrap();
            corrs.push(corr);
        }
        sent.push(corrs);
    }
    for (d, corrs) in ds.iter_mut().zip(sent) {
        for corr in corrs {
            let r = d.response(corr, Duration::from_secs(30)).await.unwrap();
            assert!(r.error().is_none(), "{:?}", r.error());
            assert_eq!(r.body().bin(key::DATA).unwrap(), &body[..]);
        }
    }
}

/// Many small requests on one link in one round: more frames than one vectored send takes
/// (64), then silence. The rest must follow without a new frame to push them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_longer_than_one_send_then_silence() {
    let st = uring_stack(1, 1, "");
    let mut ds = Vec::new();
    for _ in 0..300 {
        ds.push(desktop(st.proxy.addr, T1).await);
    }
    for round in 0..3 {
        let mut corrs = Vec::new();
        for d in &mut ds {
            let corr = d
                .send(Service::Interaction, ixn::ECHO, |w| {
                    w.bin(key::DATA, b"burst")?;
                    Ok(())
                })
                .await
                .unwrap();
            corrs.push(corr);
        }
        for (i, (d, corr)) in ds.iter_mut().zip(corrs).enumerate() {
            let r = d.response(corr, Duration::from_secs(10)).await;
            assert!(r.is_ok(), "round {round}: desktop {i} got no answer");
        }
    }
}

async fn subscribe(c: &mut TestClient, topic: &str) -> i64 {
    let r = c
        .request(Service::Interaction, ixn::SUBSCRIBE, |w| {
            w.str(key::TOPIC, topic)?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    r.body().int(key::SEQ).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_subscriber_in_order() {
    let st = uring_stack(1, 2, "");
    let topic = "queue:ufan";
    let mut subs = Vec::new();
    for _ in 0..5 {
        let mut c = desktop(st.proxy.addr, T1).await;
        let base = subscribe(&mut c, topic).await;
        subs.push((c, base));
    }
    let mut bystander = desktop(st.proxy.addr, T1).await;
    let mut submitter = desktop(st.proxy.addr, T1).await;
    for _ in 0..10 {
        let r = submitter
            .request(Service::Interaction, ixn::SUBMIT, |w| {
                w.str(key::QUEUE, "ufan")?;
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
    for (c, base) in &mut subs {
        let mut seqs = Vec::new();
        for _ in 0..10 {
            let f = c
                .event(ixn::QUEUE_EVENT, Duration::from_secs(5))
                .await
                .unwrap();
            assert!(f.head().flags.has(Flags::BROADCAST));
            seqs.push(f.body().int(key::SEQ).unwrap());
        }
        let want: Vec<i64> = (*base + 1..=*base + 10).collect();
        assert_eq!(seqs, want, "in order, no gap, no duplicate");
    }
    let got = bystander
        .event(ixn::QUEUE_EVENT, Duration::from_millis(400))
        .await;
    assert!(
        got.is_err(),
        "a desktop that did not subscribe got an event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_and_bad_senders_stay_with_their_desktop() {
    let st = uring_stack(1, 1, "max_in_flight = 4\nmax_frame = 65536\n");
    let mut good = desktop(st.proxy.addr, T1).await;
    // 200 pipelined requests, 4 allowed upstream at a time: the driver stops receiving this
    // desktop (its receive is cancelled, what arrived is held) and resumes when answers
    // free room; every request is answered exactly once.
    let mut d = desktop(st.proxy.addr, T1).await;
    let mut buf = Vec::new();
    for i in 0..200u64 {
        let mut h = Head::new(Kind::Request, Service::Ucs, ucs::ECHO);
        h.tenant = T1;
        h.correlation = 1000 + i;
        buf.extend_from_slice(Frame::with_body(h, b"").unwrap().as_bytes());
    }
    d.send_raw(&buf).await.unwrap();
    // Meanwhile a bad sender and one that disconnects mid-frame.
    let mut bad_magic = desktop(st.proxy.addr, T1).await;
    bad_magic
        .send_raw(&[0xde, 0xad, 0xbe, 0xef].repeat(10))
        .await
        .unwrap();
    let mut gone = desktop(st.proxy.addr, T1).await;
    let mut h = Head::new(Kind::Request, Service::Ucs, ucs::ECHO);
    h.tenant = T1;
    h.body_len = 1000;
    gone.send_raw(&h.to_bytes()).await.unwrap();
    drop(gone);
    for i in 0..200u64 {
        let r = d.response(1000 + i, Duration::from_secs(10)).await.unwrap();
        assert_eq!(code(&r), None, "request {i}");
    }
    let r = echo(&mut d, Service::Ucs, b"after").await;
    assert!(r.error().is_none());
    assert!(d.backlog().is_empty(), "answered exactly once");
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
    for i in 0..20 {
        let r = echo(&mut good, Service::Interaction, format!("g{i}").as_bytes()).await;
        assert!(r.error().is_none());
    }
    // The closed desktops left the worker.
    let left = wait_until(Duration::from_secs(10), || {
        status(st.proxy.admin)["workers"][0]["status"]["desktops"].as_u64() == Some(2)
    });
    assert!(left, "{}", status(st.proxy.admin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_uring() {
    let mut st = uring_stack(2, 1, "drain_grace_ms = 1500\n");
    let mut d = desktop(st.proxy.addr, T1).await;
    assert!(
        echo(&mut d, Service::Interaction, b"x")
            .await
            .error()
            .is_none()
    );
    // A request in flight when SIGTERM lands is still answered, then GO_AWAY.
    let corr = d
        .send(Service::Interaction, ixn::ECHO, |w| {
            w.bin(key::DATA, b"in flight")?;
            Ok(())
        })
        .await
        .unwrap();
    st.proxy.proc.signal("TERM").unwrap();
    let r = d.response(corr, Duration::from_secs(5)).await.unwrap();
    assert!(r.error().is_none());
    d.wait_for(Duration::from_secs(5), |f| {
        f.head().kind == Kind::Control && f.head().msg_type == control::GO_AWAY
    })
    .await
    .unwrap();
    // Both workers stop accepting (the multishot accept is cancelled) and exit cleanly.
    let code = st.proxy.proc.wait_exit(Duration::from_secs(8)).unwrap();
    assert_eq!(code, Some(0));
    assert!(d.closed_within(Duration::from_secs(3)).await.unwrap());
}

#[test]
fn uring_refuses_tls_and_quic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(
        dir.path(),
        &[("\"interaction\"", "127.0.0.1:7100".parse().unwrap())],
        1,
        1,
        "",
    );
    let base = std::fs::read_to_string(&cfg).unwrap();
    for (extra, says) in [
        ("[quic]\ncert = \"c.pem\"\nkey = \"k.pem\"\n", "QUIC"),
        ("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n", "[tls]"),
    ] {
        std::fs::write(&cfg, format!("{base}\n{URING}\n{extra}")).unwrap();
        let (st, err) = run_to_exit(&cfg, &["--check-config"]);
        assert!(!st.unwrap().success(), "accepted: {extra}");
        assert!(err.contains("worker.driver") && err.contains(says), "{err}");
    }
    std::fs::write(&cfg, format!("{base}\n{URING}")).unwrap();
    let (st, err) = run_to_exit(&cfg, &["--check-config"]);
    assert!(st.unwrap().success(), "{err}");
}
