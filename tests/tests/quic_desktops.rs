//! QUIC desktops: quinn-proto in the proxy's mio loop (one UDP socket per worker, same port
//! number as TCP), quinn clients with rcgen certificates. End to end (hello, echo, large and
//! pipelined frames, subscription events), TCP and QUIC desktops mixed on the same proxy and
//! upstream links, and handshake failures / garbage datagrams that disturb no one else.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{Flags, Service};
use deskmux_tests::TestClient;
use deskmux_tests::secure_client::{
    ALPN, FrameClient, TestCert, quic_connect, quic_endpoint, self_signed,
};
use proxy_support::*;

/// A core-server and a proxy with `[quic]` (plain TCP on the same port number).
fn quic_stack(workers: usize, limits: &str) -> (Stack, TestCert) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = self_signed(dir.path(), "proxy").expect("cert");
    let quic = cert.toml("quic") + "max_handshakes = 64\n";
    let st = stack_in(dir, workers, 2, limits, &quic);
    (st, cert)
}

struct QuicDesktop {
    _ep: quinn::Endpoint,
    conn: quinn::Connection,
    c: FrameClient,
}

async fn quic_desktop(st: &Stack, cert: &TestCert, tenant: u32) -> QuicDesktop {
    let ep = quic_endpoint(std::slice::from_ref(&cert.der), &[ALPN]).unwrap();
    let (conn, mut c) = quic_connect(&ep, st.proxy.addr)
        .await
        .expect("quic handshake");
    let token = if tenant == T2 { TOKEN2 } else { TOKEN1 };
    c.hello_ok(tenant, "quic-agent", token)
        .await
        .expect("hello over quic");
    QuicDesktop { _ep: ep, conn, c }
}

async fn subscribe(c: &mut FrameClient, topic: &str) {
    let r = c
        .request(Service::Interaction, ixn::SUBSCRIBE, |w| {
            w.str(key::TOPIC, topic)?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
}

fn submit_body(
    queue: &str,
) -> impl FnOnce(&mut deskmux_codec::BodyWriter<'_>) -> Result<(), deskmux_codec::BodyError> + '_ {
    move |w| {
        w.str(key::QUEUE, queue)?;
        w.list(key::PROPS, |w| {
            w.str("subject", "hi")?;
            Ok(())
        })?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_desktop_end_to_end() {
    let (st, cert) = quic_stack(1, "");
    let mut a = quic_desktop(&st, &cert, T1).await;
    assert_ne!(a.c.session, 0);
    assert_eq!(
        a.conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol),
        Some(ALPN.to_vec())
    );
    echo_ok(&mut a.c, Service::Interaction, b"over quic").await;
    // Larger than the stream's initial flow-control window: many packets, window updates.
    echo_ok(&mut a.c, Service::Ucs, &vec![0x5a; 1_500_000]).await;
    let mut corrs = Vec::new();
    for i in 0..64u8 {
        corrs.push(
            a.c.send(Service::Interaction, ixn::ECHO, |w| {
                w.bin(key::DATA, &[i; 3000])?;
                Ok(())
            })
            .await
            .unwrap(),
        );
    }
    for corr in corrs {
        let r =
            a.c.wait_for(Duration::from_secs(5), |f| f.head().correlation == corr)
                .await
                .unwrap();
        assert!(r.error().is_none());
    }
    subscribe(&mut a.c, "queue:quic").await;
    let mut b = quic_desktop(&st, &cert, T1).await;
    let s =
        b.c.request(Service::Interaction, ixn::SUBMIT, submit_body("quic"))
            .await
            .unwrap();
    assert!(s.error().is_none(), "{:?}", s.error());
    let ev =
        a.c.event(ixn::QUEUE_EVENT, Duration::from_secs(5))
            .await
            .expect("queue event over quic");
    assert!(ev.head().flags.has(Flags::BROADCAST));
    // A desktop that leaves: its connection closes, the proxy forgets it.
    drop(b);
    let gone = wait_until(Duration::from_secs(5), || {
        status(st.proxy.admin)["desktops"].as_u64() == Some(1)
    });
    assert!(gone, "{}", status(st.proxy.admin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_quic_desktops_share_the_proxy() {
    let (st, cert) = quic_stack(2, "");
    let mut q = quic_desktop(&st, &cert, T1).await;
    let mut t = desktop(st.proxy.addr, T1).await;
    // Each subscribes; each sees what the other submits.
    subscribe(&mut q.c, "queue:mixq").await;
    let r = t
        .request(Service::Interaction, ixn::SUBSCRIBE, |w| {
            w.str(key::TOPIC, "queue:mixt")?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none());
    let r = t
        .request(Service::Interaction, ixn::SUBMIT, submit_body("mixq"))
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    q.c.event(ixn::QUEUE_EVENT, Duration::from_secs(5))
        .await
        .expect("tcp's submit seen by the quic desktop");
    let r =
        q.c.request(Service::Interaction, ixn::SUBMIT, submit_body("mixt"))
            .await
            .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    t.event(ixn::QUEUE_EVENT, Duration::from_secs(5))
        .await
        .expect("quic's submit seen by the tcp desktop");
    // Several of each, interleaved, all on the same upstream links.
    let mut qs = Vec::new();
    let mut ts = Vec::new();
    for _ in 0..4 {
        qs.push(quic_desktop(&st, &cert, T1).await);
        ts.push(desktop(st.proxy.addr, T2).await);
    }
    for (i, (qd, td)) in qs.iter_mut().zip(ts.iter_mut()).enumerate() {
        echo_ok(&mut qd.c, Service::Ucs, format!("q{i}").as_bytes()).await;
        let f = echo(td, Service::Ucs, format!("t{i}").as_bytes()).await;
        assert!(f.error().is_none());
    }
    let s = status(st.proxy.admin);
    assert_eq!(s["desktops"].as_u64(), Some(10), "{s}");
    let links: u64 = s["instances"][0]["links"].as_u64().unwrap_or(0);
    assert_eq!(
        links, 4,
        "2 workers x 2 links, shared by TCP and QUIC desktops: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_failures_are_clear_and_isolated() {
    let (st, cert) = quic_stack(1, "");
    let mut good = quic_desktop(&st, &cert, T1).await;
    let mut tcp = desktop(st.proxy.addr, T1).await;

    // Wrong ALPN: the handshake fails with a TLS no_application_protocol alert.
    let ep = quic_endpoint(std::slice::from_ref(&cert.der), &[b"h3"]).unwrap();
    let e = match quic_connect(&ep, st.proxy.addr).await {
        Ok(_) => panic!("wrong ALPN accepted"),
        Err(e) => format!("{e:#}"),
    };
    println!("wrong alpn: {e}");
    assert!(
        e.contains("error 120") && e.contains("known protocol"),
        "{e}"
    );

    // Untrusted certificate: the client refuses the server.
    let other = self_signed(st.dir.path(), "other").unwrap();
    let ep2 = quic_endpoint(&[other.der], &[ALPN]).unwrap();
    let e = match quic_connect(&ep2, st.proxy.addr).await {
        Ok(_) => panic!("untrusted certificate accepted"),
        Err(e) => format!("{e:#}"),
    };
    println!("untrusted: {e}");
    assert!(e.contains("invalid peer certificate"), "{e}");

    // Garbage datagrams: random bytes, and Initial-looking long headers.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut junk = vec![0u8; 1200];
    for i in 0..2000u32 {
        for (k, b) in junk.iter_mut().enumerate() {
            *b = (i.wrapping_mul(2_654_435_761).wrapping_add(k as u32 * 40503) >> 13) as u8;
        }
        if i % 2 == 0 {
            junk[0] = 0xc3; // long header, Initial
            junk[1..5].copy_from_slice(&1u32.to_be_bytes()); // QUIC v1
        }
        let len = if i % 3 == 0 {
            1200
        } else {
            40 + (i as usize % 700)
        };
        let _ = udp.send_to(&junk[..len], st.proxy.addr);
    }

    // Nobody noticed.
    echo_ok(&mut good.c, Service::Interaction, b"still here").await;
    let f = echo(&mut tcp, Service::Ucs, b"tcp too").await;
    assert!(f.error().is_none());
    let mut fresh = quic_desktop(&st, &cert, T2).await;
    echo_ok(&mut fresh.c, Service::Ucs, b"new").await;
    let s = status(st.proxy.admin);
    assert_eq!(s["desktops"].as_u64(), Some(3), "{s}");
    // Every new connection went through a stateless retry; the two bad handshakes failed.
    // (The endpoint's gauges are published once per tick: wait for the tick that saw all.)
    let ok = wait_until(Duration::from_secs(5), || {
        let m = http_get(st.proxy.admin, "/metrics").1;
        quic_metric(&m, "retries") >= 4
            && quic_metric(&m, "failed") >= 2
            && quic_metric(&m, "desktops") == 2
    });
    let m = http_get(st.proxy.admin, "/metrics").1;
    let lines: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("deskmux_proxy_quic"))
        .collect();
    println!("{lines:#?}");
    assert!(ok, "{lines:#?}");
    assert_eq!(quic_metric(&m, "desktops"), 2, "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_handshake_deadlines_match_tcp() {
    // handshake_ms bounds both the stream opening and the hello, as for TCP.
    let (st, cert) = quic_stack(1, "heartbeat_ms = 300\nhandshake_ms = 400");
    // A QUIC connection that never opens its desktop stream is closed by the handshake
    // deadline.
    let ep = quic_endpoint(std::slice::from_ref(&cert.der), &[ALPN]).unwrap();
    let conn = ep
        .connect(st.proxy.addr, "localhost")
        .unwrap()
        .await
        .expect("quic handshake");
    let t0 = std::time::Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed by the proxy");
    println!("no stream: {why} after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(3));
    // A stream opened but no hello: DEADLINE, like TCP.
    let (_c2, mut c) = quic_connect(&ep, st.proxy.addr).await.unwrap();
    c.send(
        Service::Control,
        deskmux_codec::msg::control::HEARTBEAT,
        |_| Ok(()),
    )
    .await
    .unwrap();
    let f = c
        .wait_for(Duration::from_secs(3), |f| f.error().is_some())
        .await
        .expect("deadline error");
    assert_eq!(
        f.error().map(|(c, _)| c),
        Some(deskmux_codec::ErrorCode::DEADLINE)
    );
    let _ = TestClient::connect(st.proxy.addr).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_desktops_time_out_alike_over_tcp_and_quic() {
    // heartbeat 300 ms: a desktop silent for 3 intervals gets DEADLINE and is closed, whatever
    // its transport (the QUIC idle timeout is also 3 intervals, but acknowledgements of the
    // proxy's heartbeats keep the connection itself alive, so the session rule decides).
    let (st, cert) = quic_stack(1, "heartbeat_ms = 300");
    let mut q = quic_desktop(&st, &cert, T1).await;
    let mut t = desktop(st.proxy.addr, T1).await;
    let t0 = std::time::Instant::now();
    let is_deadline = |f: &deskmux_codec::Frame| {
        f.error().map(|(c, _)| c) == Some(deskmux_codec::ErrorCode::DEADLINE)
    };
    let fq =
        q.c.wait_for(Duration::from_secs(5), is_deadline)
            .await
            .expect("quic desktop: DEADLINE");
    let tq = t0.elapsed();
    let ft = t
        .wait_for(Duration::from_secs(5), is_deadline)
        .await
        .expect("tcp desktop: DEADLINE");
    let tt = t0.elapsed();
    println!("idle: quic DEADLINE after {tq:?}, tcp after {tt:?}");
    assert!(fq.error().is_some() && ft.error().is_some());
    assert!(tq < Duration::from_secs(3) && tt < Duration::from_secs(3));
    assert!(
        t.closed_within(Duration::from_secs(3))
            .await
            .unwrap_or(true)
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), q.conn.closed()).await;
    assert!(closed.is_ok(), "quic connection closed after DEADLINE");
}
