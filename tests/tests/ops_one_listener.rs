//! One listener owner: a second `proxy` (or `core-server`) started on a port that is already
//! served fails at start, naming the address, with a non-zero exit; the first keeps serving.
//!
//! Every proxy worker binds its port with `SO_REUSEPORT`, which the kernel would happily let a
//! second proxy share too: before this check, a double start or a stale unit silently took a
//! share of the desktops (8 of 20 landed on the stray proxy in the report that found it).

mod proxy_support;

use deskmux_codec::Service;
use proxy_support::*;

/// A port that was free a moment ago (bound on port 0, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `cfg` with its desktop port set to `port`.
fn with_listen(cfg: &std::path::Path, port: u16) {
    let text = std::fs::read_to_string(cfg).expect("read config");
    let text = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    assert!(text.contains(&format!(":{port}\"")), "{text}");
    std::fs::write(cfg, text).expect("write config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_on_a_served_port_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_core, core_addr) = start_core(dir.path(), "core", "127.0.0.1:0");
    let upstream = [("[\"interaction\", \"ucs\"]", core_addr)];
    let port = free_port();
    let first_dir = dir.path().join("first");
    std::fs::create_dir(&first_dir).unwrap();
    let first_cfg = proxy_config(&first_dir, &upstream, 2, 1, "");
    with_listen(&first_cfg, port);
    let first = start_proxy(first_cfg);
    assert_eq!(first.addr.port(), port);

    // The same port in another proxy's configuration (its own admin port): refused.
    let second_dir = dir.path().join("second");
    std::fs::create_dir(&second_dir).unwrap();
    let second_cfg = proxy_config(&second_dir, &upstream, 2, 1, "");
    with_listen(&second_cfg, port);
    let (st, err) = run_to_exit(&second_cfg, &[]);
    let st = st.expect("the second proxy kept running on a served port");
    assert!(!st.success(), "exit status {st}");
    assert!(
        err.contains("address in use") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );

    // Every desktop still reaches the first proxy.
    for _ in 0..8 {
        let mut d = desktop(first.addr, T1).await;
        echo_ok(&mut d, Service::Interaction, b"only one proxy here").await;
    }
}

#[test]
fn a_second_core_server_on_a_served_port_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_first, addr) = start_core(dir.path(), "first", "127.0.0.1:0");
    // Its own data file, so the data file's lock is not what stops it.
    let cfg = core_config(dir.path(), "second", &addr.to_string());
    let (st, err) = run_bin_to_exit("core-server", &cfg, &[]);
    let st = st.unwrap_or_else(|| panic!("the second core-server kept running on {addr}"));
    assert!(!st.success());
    assert!(
        err.to_lowercase().contains("address") && err.contains(&addr.port().to_string()),
        "{err}"
    );
}
