//! The proxy with the io_uring driver (`[worker] driver = "uring"`). The behaviours that
//! must hold under both drivers are the shared bodies of `proxy_support::cases`, run here with
//! io_uring (their mio runs are in `proxy_basic`, `proxy_ops` and `proxy_events`); the
//! driver's own edge cases (provided buffers running out, bursts longer than one vectored
//! send) and the configuration check that keeps TLS and QUIC on mio are here alone. Every
//! stack first checks that each worker really holds an io_uring.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::Service;
use deskmux_codec::msg::key;
use deskmux_tests::TestClient;
use proxy_support::cases::{self, Driver, URING};
use proxy_support::*;

/// The shared body, then many desktops at once, each with its own answers (under mio,
/// `proxy_basic::ids_never_cross_between_desktops` checks this, and more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_through_proxy_equal_direct() {
    let st = cases::responses_through_proxy_equal_direct(Driver::Uring).await;
    let mut direct = TestClient::connect_hello(st.core_addr, T1, "direct", TOKEN1)
        .await
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_senders_and_backpressure_stay_with_their_desktop() {
    cases::bad_senders_and_backpressure_stay_with_their_desktop(Driver::Uring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_exactly_the_subscribers_without_gaps() {
    cases::fan_out_reaches_exactly_the_subscribers_without_gaps(Driver::Uring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_gracefully() {
    cases::sigterm_drains_gracefully(Driver::Uring).await;
}

/// More bytes at once than the worker's provided buffers hold (4,096 of 2 KiB): receives end
/// for want of a buffer and must be armed again, or desktops stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_input_at_once_than_the_buffers_hold() {
    let st = Driver::Uring.stack(1, 2, "");
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
            corrs.push(cases::send_echo(d, Service::Ucs, &body).await);
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
    let st = Driver::Uring.stack(1, 1, "");
    let mut ds = Vec::new();
    for _ in 0..300 {
        ds.push(desktop(st.proxy.addr, T1).await);
    }
    for round in 0..3 {
        let mut corrs = Vec::new();
        for d in &mut ds {
            corrs.push(cases::send_echo(d, Service::Interaction, b"burst").await);
        }
        for (i, (d, corr)) in ds.iter_mut().zip(corrs).enumerate() {
            let r = d.response(corr, Duration::from_secs(10)).await;
            assert!(r.is_ok(), "round {round}: desktop {i} got no answer");
        }
    }
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
