//! TLS on the desktop TCP port: rustls in the proxy's mio loop, certificates from rcgen.
//! A trusting client says hello, echoes (large frames too) and gets subscription events; a
//! client that does not trust the certificate, one offering the wrong ALPN, and one speaking
//! plain TCP each fail clearly, and none of them disturbs the good desktop.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{Flags, Service};
use deskmux_tests::TestClient;
use deskmux_tests::secure_client::{ALPN, FrameClient, TestCert, client_config, tls_connect};
use proxy_support::*;

/// A core-server and a proxy with `[tls]` (1 worker, 2 links).
fn tls_stack() -> (Stack, TestCert) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = deskmux_tests::secure_client::self_signed(dir.path(), "proxy").expect("cert");
    let st = stack_in(dir, 1, 2, "", &cert.toml("tls"));
    (st, cert)
}

async fn tls_desktop(st: &Stack, cert: &TestCert, tenant: u32) -> FrameClient {
    let cfg = client_config(std::slice::from_ref(&cert.der), &[ALPN]).unwrap();
    let s = tls_connect(st.proxy.addr, cfg)
        .await
        .expect("tls handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(ALPN));
    let mut c = FrameClient::new(s);
    let token = if tenant == T2 { TOKEN2 } else { TOKEN1 };
    c.hello_ok(tenant, "tls-agent", token)
        .await
        .expect("hello over tls");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_desktop_hello_echo_and_events() {
    let (st, cert) = tls_stack();
    let mut a = tls_desktop(&st, &cert, T1).await;
    assert_ne!(a.session, 0);
    echo_ok(&mut a, Service::Interaction, b"over tls").await;
    // Larger than a TLS record and than one socket write: many records, partial writes.
    echo_ok(&mut a, Service::Ucs, &vec![0x5a; 1_500_000]).await;
    // Pipelined requests come back complete.
    let mut corrs = Vec::new();
    for i in 0..64u8 {
        corrs.push(
            a.send(Service::Interaction, ixn::ECHO, |w| {
                w.bin(key::DATA, &[i; 3000])?;
                Ok(())
            })
            .await
            .unwrap(),
        );
    }
    for c in corrs {
        let r = a
            .wait_for(Duration::from_secs(5), |f| f.head().correlation == c)
            .await
            .unwrap();
        assert!(r.error().is_none());
    }
    // Subscription event: a TLS desktop subscribes, a plain TCP desktop submits.
    let r = a
        .request(Service::Interaction, ixn::SUBSCRIBE, |w| {
            w.str(key::TOPIC, "queue:tls")?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(r.error().is_none(), "{:?}", r.error());
    // The proxy port speaks TLS only, so the submitter is a second TLS desktop.
    let mut b = tls_desktop(&st, &cert, T1).await;
    let s = b
        .request(Service::Interaction, ixn::SUBMIT, |w| {
            w.str(key::QUEUE, "tls")?;
            w.list(key::PROPS, |w| {
                w.str("subject", "hi")?;
                Ok(())
            })?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(s.error().is_none(), "{:?}", s.error());
    let ev = a
        .event(ixn::QUEUE_EVENT, Duration::from_secs(5))
        .await
        .expect("queue event over tls");
    assert!(ev.head().flags.has(Flags::BROADCAST));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_failures_are_clear_and_isolated() {
    let (st, cert) = tls_stack();
    let mut good = tls_desktop(&st, &cert, T1).await;
    echo_ok(&mut good, Service::Interaction, b"before").await;

    // 1. A client that does not trust the certificate (another self-signed root).
    let other = deskmux_tests::secure_client::self_signed(st.dir.path(), "other").unwrap();
    let cfg = client_config(&[other.der], &[ALPN]).unwrap();
    let e = tls_connect(st.proxy.addr, cfg)
        .await
        .expect_err("untrusted certificate must fail");
    let msg = format!("{e:#}");
    println!("untrusted: {msg}");
    // rustls: "invalid peer certificate: BadSignature" (same subject as another root) or
    // "... UnknownIssuer".
    assert!(msg.contains("invalid peer certificate"), "{msg}");

    // 2. Wrong ALPN: the proxy refuses with a no_application_protocol alert.
    let cfg = client_config(std::slice::from_ref(&cert.der), &[b"h2"]).unwrap();
    let e = tls_connect(st.proxy.addr, cfg)
        .await
        .expect_err("wrong ALPN must fail");
    let msg = format!("{e:#}");
    println!("wrong alpn: {msg}");
    assert!(msg.contains("NoApplicationProtocol"), "{msg}");

    // 3. Plain TCP to the TLS port: the hello is not a TLS record; the proxy closes.
    let mut plain = TestClient::connect(st.proxy.addr).await.unwrap();
    let sent = plain.hello(T1, "plain", TOKEN1, 0b110).await;
    assert!(
        sent.is_err(),
        "plain hello on a TLS port must not be answered"
    );

    // 4. Garbage bytes, then a silent connection left half-open.
    let mut junk = TestClient::connect(st.proxy.addr).await.unwrap();
    junk.send_raw(&[0xff; 64]).await.unwrap();
    assert!(
        junk.closed_within(Duration::from_secs(3))
            .await
            .unwrap_or(true)
    );

    // The good desktop never noticed; a new one still works.
    echo_ok(&mut good, Service::Ucs, b"after").await;
    let mut again = tls_desktop(&st, &cert, T2).await;
    echo_ok(&mut again, Service::Interaction, b"new").await;
    let errs = http_get(st.proxy.admin, "/metrics").1;
    assert!(errs.contains("deskmux_proxy"), "metrics reachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_is_bounded_by_the_hello_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = deskmux_tests::secure_client::self_signed(dir.path(), "proxy").unwrap();
    let st = stack_in(dir, 1, 1, "handshake_ms = 400", &cert.toml("tls"));
    let proxy = &st.proxy;
    // Connects and never starts the TLS handshake.
    let mut idle = TestClient::connect(proxy.addr).await.unwrap();
    let t0 = std::time::Instant::now();
    assert!(
        idle.closed_within(Duration::from_secs(3))
            .await
            .unwrap_or(true)
    );
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn bad_tls_paths_are_rejected_by_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        "[tls]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(deskmux_tests::bin_path("proxy"))
        .args(["--config", p.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.cert") && err.contains("nonexistent"),
        "{err}"
    );
}
