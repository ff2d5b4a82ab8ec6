//! TLS on the proxy's upstream links and on core-server's port (issue 12), real processes.
//!
//! - A proxy with `[link_tls]` reaches a core-server with `[tls]`: desktops say hello and echo
//!   through it; the server's port speaks TLS only (a plain TCP hello gets nothing) and
//!   serves direct TLS desktops too.
//! - A proxy whose CA did not sign the server's certificate (or that expects another name)
//!   keeps its links down: hellos get `UNAVAILABLE`, as with a wrong link secret, and the
//!   failures are counted as TLS errors. rustls sends the `LINK_HELLO` (the secret) only after
//!   the server is verified, so such a server never sees it.
//! - A configuration whose links would be plain TCP, without an explicit opt-in, refuses to
//!   start; `tls = false` on the upstream is such an opt-in.
//! - core-server with `client_ca`: a link without a client certificate is refused, one with a
//!   certificate the CA signed comes up; direct desktops need no certificate.

mod proxy_support;

use std::path::Path;
use std::time::Duration;

use deskmux_codec::{ErrorCode, Service};
use deskmux_tests::secure_client::{ALPN, TestCert, client_config, self_signed, tls_connect};
use deskmux_tests::{Proc, TestClient};
use proxy_support::*;

/// Start a core-server whose port speaks TLS with `cert` (and `client_ca`, if given).
fn tls_core(
    dir: &Path,
    name: &str,
    cert: &TestCert,
    client_ca: Option<&TestCert>,
) -> (Proc, std::net::SocketAddr) {
    let cfg = core_config(dir, name, "127.0.0.1:0");
    let mut tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.cert.display(),
        cert.key.display()
    );
    if let Some(ca) = client_ca {
        tls.push_str(&format!("client_ca = \"{}\"\n", ca.cert.display()));
    }
    append_toml(&cfg, &tls);
    let mut p = Proc::spawn("core-server", &["--config", cfg.to_str().unwrap_or("")])
        .expect("spawn core-server");
    let addr = p.listening(START).expect("core-server listening");
    (p, addr)
}

/// A proxy config (1 worker, 2 links to `core`) with `link_tls` as its link security (a
/// `[link_tls]` section, upstream overrides, or nothing) and no plaintext opt-in.
fn link_proxy_config(dir: &Path, core: std::net::SocketAddr, link_tls: &str) -> std::path::PathBuf {
    let cfg = proxy_config(dir, &[("[\"interaction\", \"ucs\"]", core)], 1, 2, "");
    let text = std::fs::read_to_string(&cfg)
        .expect("read proxy config")
        .replace("plaintext_links = true\n", "");
    assert!(!text.contains("plaintext_links"), "{text}");
    std::fs::write(&cfg, text).expect("write proxy config");
    append_toml(&cfg, link_tls);
    cfg
}

fn ca_section(ca: &TestCert) -> String {
    format!("[link_tls]\nca = \"{}\"\n", ca.cert.display())
}

fn links_up(admin: std::net::SocketAddr) -> u64 {
    status(admin)["workers"][0]["status"]["links_up"]
        .as_u64()
        .unwrap_or(0)
}

/// Sum of `deskmux_proxy_errors{kind="<kind>"}` over the workers.
fn errors(admin: std::net::SocketAddr, kind: &str) -> u64 {
    let (_, m) = http_get(admin, "/metrics");
    m.lines()
        .filter(|l| {
            l.starts_with("deskmux_proxy_errors") && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A hello through a proxy whose links are down: `UNAVAILABLE`, then the proxy closes.
async fn hello_unavailable(proxy: &Proxy) {
    let (code_h, _) = http_get(proxy.admin, "/health");
    assert_eq!(code_h, 503);
    let mut n = TestClient::connect(proxy.addr).await.unwrap();
    let h = n.hello(T1, "alice", TOKEN1, 0b110).await.unwrap();
    assert_eq!(code(&h), Some(ErrorCode::UNAVAILABLE), "{h:?}");
    assert!(n.closed_within(Duration::from_secs(3)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_links_carry_hello_and_echo() {
    let dir = tempfile::tempdir().unwrap();
    let server = self_signed(dir.path(), "core").unwrap();
    let (_core, core_addr) = tls_core(dir.path(), "c", &server, None);
    // The server's certificate is its own CA here; the name checked is 127.0.0.1 (addr's IP).
    let proxy = start_proxy(link_proxy_config(
        dir.path(),
        core_addr,
        &ca_section(&server),
    ));
    let admin = proxy.admin;
    assert!(
        wait_until_async(START, move || links_up(admin) == 2).await,
        "links up: {}",
        status(admin)
    );
    let mut d = desktop(proxy.addr, T1).await;
    echo_ok(&mut d, Service::Interaction, b"through a tls link").await;
    // More than a TLS record (16 KiB) and than one socket write, both ways.
    echo_ok(&mut d, Service::Ucs, &vec![0x3c; 1_200_000]).await;
    let mut e = desktop(proxy.addr, T2).await;
    echo_ok(&mut e, Service::Ucs, b"second tenant").await;
    assert_eq!(errors(admin, "link_tls"), 0);

    // The server's port speaks TLS only: a plain TCP hello is never answered.
    let mut plain = TestClient::connect(core_addr).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        plain.hello(T1, "alice", TOKEN1, 0b110),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(_))), "plain hello answered: {r:?}");

    // A direct desktop over TLS (ALPN deskmux/1) is served.
    let cfg = client_config(std::slice::from_ref(&server.der), &[ALPN]).unwrap();
    let s = tls_connect(core_addr, cfg)
        .await
        .expect("tls to core-server");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(ALPN));
    let mut direct = TestClient::new(s);
    direct
        .hello_ok(T1, &deskmux_tests::creds::agent(77), TOKEN1)
        .await
        .expect("direct hello over tls");
    echo_ok(&mut direct, Service::Interaction, b"direct").await;
}

/// A server the proxy's CA did not sign gets no link, until the CA file is fixed and the proxy
/// told with `SIGHUP`; a name the certificate does not carry gets none either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_not_signed_by_the_ca_keeps_links_down_and_hellos_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let server = self_signed(dir.path(), "core").unwrap();
    let other = self_signed(dir.path(), "other-ca").unwrap();
    let (_core, core_addr) = tls_core(dir.path(), "c", &server, None);
    let proxy = start_proxy(link_proxy_config(
        dir.path(),
        core_addr,
        &ca_section(&other),
    ));
    let admin = proxy.admin;
    // Each attempt fails in the handshake (unknown issuer), counted as a link TLS error.
    assert!(
        wait_until_async(START, move || errors(admin, "link_tls") >= 2).await,
        "{}",
        http_get(admin, "/metrics").1
    );
    assert_eq!(links_up(admin), 0);
    hello_unavailable(&proxy).await;
    // The operator puts the right CA in the file and sends SIGHUP: the links come up without
    // a restart (new link connections use the files read again).
    std::fs::copy(&server.cert, &other.cert).unwrap();
    proxy.proc.signal("HUP").unwrap();
    assert!(
        wait_until_async(START, move || links_up(admin) == 2).await,
        "links after the CA reload: {}",
        status(admin)
    );
    let mut d = desktop(proxy.addr, T1).await;
    echo_ok(&mut d, Service::Interaction, b"after the CA reload").await;
    drop(proxy);

    // The right CA, but a name the certificate does not carry: refused too.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg = link_proxy_config(dir2.path(), core_addr, &ca_section(&server));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("links = 2\n", "links = 2\nserver_name = \"core.example\"\n");
    std::fs::write(&cfg, text).unwrap();
    let proxy = start_proxy(cfg);
    let admin = proxy.admin;
    assert!(
        wait_until_async(START, move || errors(admin, "link_tls") >= 2).await,
        "{}",
        http_get(admin, "/metrics").1
    );
    assert_eq!(links_up(admin), 0);
    hello_unavailable(&proxy).await;
}

#[test]
fn plaintext_link_without_opt_in_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    // Any address: the proxy must refuse before it connects anywhere.
    let core: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cfg = link_proxy_config(dir.path(), core, "");
    let (st, err) = run_to_exit(&cfg, &[]);
    let st = st.expect("the proxy started with a plaintext link and no opt-in");
    assert!(!st.success());
    assert!(err.contains("plain TCP") && err.contains("up0"), "{err}");
    // `--check-config` says the same.
    let (st, err) = run_to_exit(&cfg, &["--check-config"]);
    assert!(!st.expect("check-config exits").success());
    assert!(err.contains("plaintext_links"), "{err}");

    // The opt-ins: `tls = false` on the upstream, or `--plaintext-links`.
    let optin = dir.path().join("optin.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("links = 2\n", "links = 2\ntls = false\n");
    std::fs::write(&optin, text).unwrap();
    let (st, err) = run_to_exit(&optin, &["--check-config"]);
    assert!(st.expect("check-config exits").success(), "{err}");
    let (st, err) = run_to_exit(&cfg, &["--check-config", "--plaintext-links"]);
    assert!(st.expect("check-config exits").success(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_refuses_a_link_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = self_signed(dir.path(), "core").unwrap();
    let client = self_signed(dir.path(), "proxy-link").unwrap();
    let (_core, core_addr) = tls_core(dir.path(), "c", &server, Some(&client));

    // No client certificate: TLS completes (direct desktops need none), LINK_HELLO is refused.
    let proxy = start_proxy(link_proxy_config(
        dir.path(),
        core_addr,
        &ca_section(&server),
    ));
    hello_unavailable(&proxy).await;
    assert_eq!(links_up(proxy.admin), 0);
    drop(proxy);

    // With the certificate client_ca signed (and the secret): the links come up.
    let dir2 = tempfile::tempdir().unwrap();
    let section = format!(
        "{}client_cert = \"{}\"\nclient_key = \"{}\"\n",
        ca_section(&server),
        client.cert.display(),
        client.key.display()
    );
    let proxy = start_proxy(link_proxy_config(dir2.path(), core_addr, &section));
    let admin = proxy.admin;
    assert!(
        wait_until_async(START, move || links_up(admin) == 2).await,
        "{}",
        status(admin)
    );
    let mut d = desktop(proxy.addr, T1).await;
    echo_ok(&mut d, Service::Interaction, b"mutual").await;

    // A direct desktop needs no client certificate.
    let cfg = client_config(std::slice::from_ref(&server.der), &[ALPN]).unwrap();
    let s = tls_connect(core_addr, cfg)
        .await
        .expect("tls to core-server");
    let mut direct = TestClient::new(s);
    direct
        .hello_ok(T2, &deskmux_tests::creds::agent(5), TOKEN2)
        .await
        .expect("direct hello without a client certificate");
}

/// Certificate rotation without a restart: the files are replaced and `SIGHUP` sent; new
/// connections get the new certificate, a connection already open keeps working, and a
/// rotation to files that do not fit together (a key of another certificate) fails the reload
/// whole, leaving the certificate being served. (Before, the files were read only at start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_server_rotates_its_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = self_signed(dir.path(), "first").unwrap();
    // The configuration names these two files; rotation replaces their contents.
    let (cert, key) = (dir.path().join("served.crt"), dir.path().join("served.key"));
    let serve = |c: &TestCert, with_key: bool| {
        std::fs::copy(&c.cert, &cert).unwrap();
        if with_key {
            std::fs::copy(&c.key, &key).unwrap();
        }
    };
    serve(&first, true);
    let cfg = core_config_with(
        dir.path(),
        "c",
        "127.0.0.1:0",
        "http_listen = \"127.0.0.1:0\"",
    );
    append_toml(
        &cfg,
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let mut core = Proc::spawn("core-server", &["--config", cfg.to_str().unwrap()]).unwrap();
    let core_addr = core.listening(START).expect("core-server listening");
    let http: std::net::SocketAddr = core.wait_line("HTTP ", START).unwrap().parse().unwrap();
    let reloads = move |what: &str| metric(http, &format!("deskmux_core_config_{what}_total"));
    let trusting = |c: &TestCert| client_config(std::slice::from_ref(&c.der), &[ALPN]).unwrap();
    let mut open = TestClient::new(tls_connect(core_addr, trusting(&first)).await.unwrap());
    open.hello_ok(T1, &deskmux_tests::creds::agent(1), TOKEN1)
        .await
        .expect("hello with the first certificate");

    let second = self_signed(dir.path(), "second").unwrap();
    serve(&second, true);
    core.signal("HUP").unwrap();
    assert!(
        wait_until_async(START, move || reloads("reloads") == 1.0).await,
        "the reload never took effect"
    );
    assert!(
        tls_connect(core_addr, trusting(&first)).await.is_err(),
        "the first certificate is still served after the rotation"
    );
    let mut d = TestClient::new(tls_connect(core_addr, trusting(&second)).await.unwrap());
    d.hello_ok(T1, &deskmux_tests::creds::agent(2), TOKEN1)
        .await
        .expect("hello with the second certificate");
    echo_ok(&mut d, Service::Ucs, b"rotated").await;
    echo_ok(&mut open, Service::Ucs, b"opened before the rotation").await;

    // A third certificate next to the second's key: the reload fails whole.
    let third = self_signed(dir.path(), "third").unwrap();
    serve(&third, false);
    core.signal("HUP").unwrap();
    assert!(
        wait_until_async(START, move || reloads("reload_failures") == 1.0).await,
        "a certificate that does not fit its key was not refused"
    );
    assert_eq!(reloads("reloads"), 1.0);
    let mut d = TestClient::new(tls_connect(core_addr, trusting(&second)).await.unwrap());
    d.hello_ok(T1, &deskmux_tests::creds::agent(3), TOKEN1)
        .await
        .expect("the second certificate is still served");
    assert!(tls_connect(core_addr, trusting(&third)).await.is_err());
}

/// A sample of core-server's `/metrics` (0 when absent).
fn metric(http: std::net::SocketAddr, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(http) else {
        return 0.0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
