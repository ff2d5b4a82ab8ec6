//! One source address cannot take every QUIC handshake slot of a worker (issue 11;
//! `quic.max_handshakes_per_source`, PROTOCOL.md §4.1.1).
//!
//! A peer that sends Initials and never goes on holds a handshake slot each until the
//! handshake deadline. With Retry off (`retry = false`, so no address validation stands in the
//! way) 40 such connections come from 127.0.0.2 against `max_handshakes = 16`; a real desktop
//! from 127.0.0.3 must still get in. Before issue 11 the first address took all 16 slots and
//! the second was refused.
//!
//! Against the proxy that predates the per-source cap, `DESKMUX_TEST_OLD_PROXY=1` leaves
//! `max_handshakes_per_source` out of the config (the old proxy refuses unknown keys), so the
//! test fails on the attack's effect.

mod proxy_support;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use deskmux_codec::Service;
use deskmux_tests::secure_client::{
    ALPN, client_initials, quic_connect, quic_endpoint_at, self_signed,
};
use proxy_support::*;

/// Handshakes one source may hold at once in this test.
const PER_SOURCE: u64 = 4;
/// Connections the flooding source opens and leaves hanging.
const HANGING: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_every_handshake_slot() {
    let old = std::env::var("DESKMUX_TEST_OLD_PROXY").is_ok_and(|v| v == "1");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = self_signed(dir.path(), "proxy").expect("cert");
    let mut quic = cert.toml("quic") + "retry = false\nmax_handshakes = 16\n";
    if !old {
        quic += &format!("max_handshakes_per_source = {PER_SOURCE}\n");
    }
    // A long handshake deadline: the hanging connections keep their slots for the whole test.
    let st = stack_in(dir, 1, 1, "handshake_ms = 60000\n", &quic);

    // 40 connections from 127.0.0.2 that send their Initial and never go on.
    let flood = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let to: SocketAddr = st.proxy.addr;
    for initial in client_initials(&cert, HANGING) {
        flood.send_to(&initial, to).expect("send Initial");
    }
    // The worker decides on each (accept or refuse); its counters are published per tick.
    let mut m = String::new();
    let decided = wait_until(Duration::from_secs(30), || {
        m = http_get(st.proxy.admin, "/metrics").1;
        quic_metric(&m, "accepted") + quic_metric(&m, "refused") >= HANGING as u64
    });
    assert!(
        decided,
        "the worker did not decide on the {HANGING} Initials: {m}"
    );
    let accepted = quic_metric(&m, "accepted");
    assert!(
        accepted <= PER_SOURCE,
        "one source address holds {accepted} handshake slots (max_handshakes_per_source = {PER_SOURCE}; the worker has 16)"
    );

    // Another address still gets in, and works.
    let ep = quic_endpoint_at(
        "127.0.0.3:0".parse().expect("addr"),
        std::slice::from_ref(&cert.der),
        &[ALPN],
    )
    .expect("endpoint");
    let (_conn, mut c) = quic_connect(&ep, st.proxy.addr)
        .await
        .expect("a desktop from another source address is let in");
    c.hello_ok(T1, "quic-other-source", TOKEN1)
        .await
        .expect("hello over quic");
    let r = c
        .request(Service::Interaction, deskmux_codec::msg::ixn::ECHO, |w| {
            w.bin(deskmux_codec::msg::key::DATA, b"in")?;
            Ok(())
        })
        .await
        .expect("echo");
    assert!(r.error().is_none(), "{:?}", r.error());
}
