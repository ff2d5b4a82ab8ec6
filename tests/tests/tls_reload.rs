//! Certificate rotation without a restart: a SIGHUP makes every worker re-read the `[tls]` and
//! `[quic]` certificate and key files. New TLS and QUIC desktops get the new certificate while
//! desktops connected before keep their sessions; bad files leave the previous certificate in
//! use and are counted; adding or removing a section is refused until a restart.

mod proxy_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use deskmux_codec::Service;
use deskmux_tests::secure_client::{
    ALPN, FrameClient, TestCert, client_config, quic_connect, quic_endpoint, self_signed,
    tls_connect,
};
use proxy_support::*;
use rustls::pki_types::CertificateDer;

/// How long a SIGHUP may take to show (the workers look at the flag every ~100 ms).
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// A desktop connected over QUIC: the client endpoint must outlive the connection.
struct QuicDesktop {
    _ep: quinn::Endpoint,
    _conn: quinn::Connection,
    c: FrameClient,
}

/// A new TLS desktop trusting only `root`: handshake, hello, echo.
async fn tls_desktop(addr: SocketAddr, root: &CertificateDer<'static>) -> Result<FrameClient> {
    let cfg = client_config(std::slice::from_ref(root), &[ALPN])?;
    let s = tls_connect(addr, cfg).await?;
    let mut c = FrameClient::new(s);
    c.hello_ok(T1, "tls-reload", TOKEN1).await?;
    try_echo(&mut c, Service::Interaction, b"tls hello").await?;
    Ok(c)
}

/// A new QUIC desktop (its own UDP socket) trusting only `root`: handshake, hello, echo.
async fn quic_desktop(addr: SocketAddr, root: &CertificateDer<'static>) -> Result<QuicDesktop> {
    let ep = quic_endpoint(std::slice::from_ref(root), &[ALPN])?;
    let (conn, mut c) = quic_connect(&ep, addr).await?;
    c.hello_ok(T1, "quic-reload", TOKEN1).await?;
    try_echo(&mut c, Service::Interaction, b"quic hello").await?;
    Ok(QuicDesktop {
        _ep: ep,
        _conn: conn,
        c,
    })
}

/// A client trusting only `root` must be refused by its own certificate check, over TLS and
/// over QUIC.
async fn refused_by_certificate(addr: SocketAddr, root: &CertificateDer<'static>) {
    let e = match tls_desktop(addr, root).await {
        Ok(_) => panic!("tls: a client trusting only the old certificate was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("invalid peer certificate"), "tls: {e}");
    let e = match quic_desktop(addr, root).await {
        Ok(_) => panic!("quic: a client trusting only the old certificate was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("invalid peer certificate"), "quic: {e}");
}

/// Overwrite the proxy's certificate and key files (same paths) with `src`'s.
fn install(src: &TestCert, dst: &TestCert) {
    std::fs::copy(&src.cert, &dst.cert).expect("copy cert");
    std::fs::copy(&src.key, &dst.key).expect("copy key");
}

/// A core-server and a proxy (`workers` workers) with `[tls]` and `[quic]` both naming the
/// files of certificate A (`proxy.crt` / `proxy.key`).
fn reload_stack(workers: usize) -> (Stack, TestCert) {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = self_signed(dir.path(), "proxy").expect("cert A");
    let extra = a.toml("tls") + &a.toml("quic");
    let st = stack_in(dir, workers, 1, "", &extra);
    (st, a)
}

/// Sum of a counter over the workers, from the supervisor's merged `/metrics`.
fn counter(admin: SocketAddr, name: &str) -> u64 {
    let (_, body) = http_get(admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}_total{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every worker's `/status` field `field` (from the supervisor's `/status`).
fn per_worker(admin: SocketAddr, field: &str) -> Vec<u64> {
    status(admin)["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["status"][field].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// Retry `f` every 50 ms until it succeeds or `RELOAD_WAIT` has passed; the last error if not.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let end = Instant::now() + RELOAD_WAIT;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= end => {
                panic!("{what}: not within {RELOAD_WAIT:?}: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_tls_and_quic_certificates_for_new_connections() {
    let (st, a) = reload_stack(2);
    let addr = st.proxy.addr;
    let admin = st.proxy.admin;
    let mut old_tls = tls_desktop(addr, &a.der).await.expect("tls with A");
    let mut old_quic = quic_desktop(addr, &a.der).await.expect("quic with A");

    // Rotate: B's files over A's paths, then SIGHUP the supervisor.
    let b = self_signed(st.dir.path(), "b").expect("cert B");
    install(&b, &a);
    st.proxy.proc.signal("HUP").expect("SIGHUP");

    // New desktops trusting only B get in, over TLS and over QUIC.
    let mut new_tls = eventually("tls with B", || tls_desktop(addr, &b.der)).await;
    let mut new_quic = eventually("quic with B", || quic_desktop(addr, &b.der)).await;
    // Every worker swapped both certificates ([tls] and [quic]), none failed.
    let all = wait_until(RELOAD_WAIT, || {
        let r = per_worker(admin, "cert_reloads");
        r.len() == 2 && r.iter().all(|n| *n >= 2)
    });
    assert!(all, "{}", status(admin));
    assert_eq!(per_worker(admin, "cert_reload_failures"), vec![0, 0]);
    assert!(counter(admin, "deskmux_proxy_cert_reloads") >= 4);
    assert_eq!(counter(admin, "deskmux_proxy_cert_reload_failures"), 0);

    // Several fresh connections (spread over both workers by the kernel): B always works,
    // A never does.
    for i in 0..6 {
        let mut t = tls_desktop(addr, &b.der)
            .await
            .unwrap_or_else(|e| panic!("tls with B, try {i}: {e:#}"));
        try_echo(&mut t, Service::Interaction, b"b").await.unwrap();
        let mut q = quic_desktop(addr, &b.der)
            .await
            .unwrap_or_else(|e| panic!("quic with B, try {i}: {e:#}"));
        try_echo(&mut q.c, Service::Interaction, b"b")
            .await
            .unwrap();
        refused_by_certificate(addr, &a.der).await;
    }

    // The desktops connected before the reload kept their sessions.
    try_echo(&mut old_tls, Service::Interaction, b"old tls still here")
        .await
        .unwrap();
    try_echo(
        &mut old_quic.c,
        Service::Interaction,
        b"old quic still here",
    )
    .await
    .unwrap();
    try_echo(&mut new_tls, Service::Interaction, b"new tls")
        .await
        .unwrap();
    try_echo(&mut new_quic.c, Service::Interaction, b"new quic")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_files_keep_the_old_certificate_and_are_counted() {
    let (st, a) = reload_stack(1);
    let addr = st.proxy.addr;
    let admin = st.proxy.admin;
    let mut old_tls = tls_desktop(addr, &a.der).await.expect("tls with A");
    let mut old_quic = quic_desktop(addr, &a.der).await.expect("quic with A");
    // Keep A's key to build a mismatched pair below.
    let a_key = st.dir.path().join("a-copy.key");
    std::fs::copy(&a.key, &a_key).unwrap();

    // 1. Garbage in both files.
    std::fs::write(&a.cert, "not a certificate\n").unwrap();
    std::fs::write(&a.key, "-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n").unwrap();
    st.proxy.proc.signal("HUP").expect("SIGHUP");
    // [tls] and [quic] each fail once; the rest of the reload applies.
    let counted = wait_until(RELOAD_WAIT, || {
        counter(admin, "deskmux_proxy_cert_reload_failures") >= 2
    });
    assert!(counted, "{}", http_get(admin, "/metrics").1);
    assert!(wait_until(RELOAD_WAIT, || per_worker(admin, "reloads") == vec![1]));
    assert_eq!(per_worker(admin, "cert_reload_failures"), vec![2]);
    assert_eq!(per_worker(admin, "cert_reloads"), vec![0]);
    // Still serving A to new desktops, over TLS and QUIC; the old ones still echo.
    let mut t = tls_desktop(addr, &a.der)
        .await
        .expect("tls with A after garbage");
    let mut q = quic_desktop(addr, &a.der)
        .await
        .expect("quic with A after garbage");
    try_echo(&mut old_tls, Service::Interaction, b"old tls")
        .await
        .unwrap();
    try_echo(&mut old_quic.c, Service::Interaction, b"old quic")
        .await
        .unwrap();

    // 2. A readable but mismatched pair: B's certificate with A's key.
    let b = self_signed(st.dir.path(), "b").expect("cert B");
    std::fs::copy(&b.cert, &a.cert).unwrap();
    std::fs::copy(&a_key, &a.key).unwrap();
    st.proxy.proc.signal("HUP").expect("SIGHUP");
    let counted = wait_until(RELOAD_WAIT, || {
        counter(admin, "deskmux_proxy_cert_reload_failures") >= 4
    });
    assert!(counted, "{}", http_get(admin, "/metrics").1);
    assert_eq!(per_worker(admin, "cert_reloads"), vec![0]);
    tls_desktop(addr, &a.der)
        .await
        .expect("tls with A after a mismatched pair");
    quic_desktop(addr, &a.der)
        .await
        .expect("quic with A after a mismatched pair");

    // 3. Fixed files: the next SIGHUP applies them.
    install(&b, &a);
    st.proxy.proc.signal("HUP").expect("SIGHUP");
    eventually("tls with B once fixed", || tls_desktop(addr, &b.der)).await;
    eventually("quic with B once fixed", || quic_desktop(addr, &b.der)).await;
    assert_eq!(per_worker(admin, "cert_reloads"), vec![2]);
    assert_eq!(counter(admin, "deskmux_proxy_cert_reload_failures"), 4);
    // Every desktop connected along the way is still served.
    for c in [&mut old_tls, &mut old_quic.c, &mut t, &mut q.c] {
        try_echo(c, Service::Interaction, b"still here")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_or_removing_a_section_needs_a_restart() {
    // Started with [tls] only.
    let dir = tempfile::tempdir().expect("tempdir");
    let a = self_signed(dir.path(), "proxy").expect("cert A");
    let st = stack_in(dir, 1, 1, "", &a.toml("tls"));
    let addr = st.proxy.addr;
    let admin = st.proxy.admin;
    let mut old = tls_desktop(addr, &a.der).await.expect("tls with A");

    // The new file drops [tls] and adds [quic] (with its own files).
    let text = std::fs::read_to_string(&st.proxy.config).unwrap();
    let swapped = text.replace(&a.toml("tls"), &a.toml("quic"));
    assert_ne!(text, swapped);
    std::fs::write(&st.proxy.config, swapped).unwrap();
    st.proxy.proc.signal("HUP").expect("SIGHUP");
    assert!(wait_until(RELOAD_WAIT, || per_worker(admin, "reloads") == vec![1]));
    assert_eq!(
        per_worker(admin, "cert_reload_failures"),
        vec![2],
        "one for the removed [tls], one for the added [quic]: {}",
        status(admin)
    );
    assert_eq!(counter(admin, "deskmux_proxy_cert_reload_failures"), 2);
    // The TCP port still speaks TLS with A (the removal was not applied).
    tls_desktop(addr, &a.der)
        .await
        .context("tls with A after the refused removal")
        .unwrap();
    try_echo(&mut old, Service::Interaction, b"old")
        .await
        .unwrap();
    // Nothing answers QUIC (the addition was not applied): the handshake times out.
    let ep = quic_endpoint(std::slice::from_ref(&a.der), &[ALPN]).unwrap();
    let e = match tokio::time::timeout(Duration::from_secs(2), quic_connect(&ep, addr)).await {
        Ok(Ok(_)) => panic!("quic accepted without a restart"),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => "timed out".to_string(),
    };
    println!("quic after a refused [quic] addition: {e}");
}
