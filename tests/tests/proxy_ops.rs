//! Operations: a slow reader is isolated, SIGTERM drains gracefully, a dead worker is
//! restarted, SIGHUP reloads limits without dropping desktops, the admin port answers.
//! Bodies shared with the io_uring run (`proxy_uring`) are in `proxy_support::cases`.

mod proxy_support;

use std::time::{Duration, Instant};

use deskmux_codec::msg::ucs;
use deskmux_codec::{ErrorCode, Head, Kind, Service};
use deskmux_tests::TestClient;
use proxy_support::cases::{self, Driver};
use proxy_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_isolated() {
    let st = stack(1, 2, "out_queue_bytes = 262144\nmax_in_flight = 4096\n");
    let mut fast = desktop(st.proxy.addr, T1).await;
    let mut slow = desktop(st.proxy.addr, T1).await;
    // The slow desktop floods 32 KiB echoes and never reads its answers.
    let flood = tokio::spawn(async move {
        let body = vec![b'x'; 32 * 1024];
        for i in 0..800u64 {
            let mut h = Head::new(Kind::Request, Service::Ucs, ucs::ECHO);
            h.tenant = T1;
            h.correlation = i + 1;
            let f = deskmux_codec::Frame::with_body(h, &body).unwrap();
            if slow.send_raw(f.as_bytes()).await.is_err() {
                return (slow, true);
            }
        }
        (slow, false)
    });
    // Meanwhile the fast desktop keeps getting quick answers.
    let t0 = Instant::now();
    for i in 0..100 {
        let s = Instant::now();
        let r = echo(&mut fast, Service::Ucs, format!("f{i}").as_bytes()).await;
        assert!(r.error().is_none());
        assert!(s.elapsed() < Duration::from_secs(1), "fast desktop stalled");
    }
    let (mut slow, _) = tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .expect("flood finished")
        .unwrap();
    // The slow one is disconnected (its SLOW_CONSUMER notice is best effort).
    assert!(
        slow.closed_within(Duration::from_secs(10))
            .await
            .unwrap_or(true)
    );
    let admin = st.proxy.admin;
    assert!(wait_until(Duration::from_secs(5), || {
        let (_, m) = http_get(admin, "/metrics");
        m.lines()
            .any(|l| l.contains("reason=\"slow_consumer\"") && !l.ends_with(" 0"))
    }));
    // The link and the fast desktop are fine.
    let r = echo(&mut fast, Service::Ucs, b"after").await;
    assert!(r.error().is_none());
    assert!(t0.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_gracefully() {
    cases::sigterm_drains_gracefully(Driver::Mio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_worker_is_restarted() {
    let st = stack(2, 1, "");
    let admin = st.proxy.admin;
    let s = status(admin);
    let old = s["workers"][1]["pid"].as_u64().unwrap();
    assert!(old > 0);
    std::process::Command::new("kill")
        .args(["-KILL", &old.to_string()])
        .status()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = status(admin);
            let w = &s["workers"][1];
            w["restarts"].as_u64() == Some(1)
                && w["pid"].as_u64().is_some_and(|p| p != old && p != 0)
                && w["status"]["links_up"].as_u64() == Some(1)
        }),
        "worker not restarted: {}",
        status(admin)
    );
    // Both workers serve: many connections spread by SO_REUSEPORT all work.
    for i in 0..20 {
        let mut c = desktop(st.proxy.addr, T1).await;
        assert!(
            echo(&mut c, Service::Ucs, format!("{i}").as_bytes())
                .await
                .error()
                .is_none()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_limits_without_dropping_desktops_and_admin_answers() {
    let st = stack(1, 1, "max_in_flight = 256\n");
    let admin = st.proxy.admin;
    let (code_h, _) = http_get(admin, "/health");
    assert_eq!(code_h, 200);
    let mut d = desktop(st.proxy.addr, T1).await;
    let (_, m) = http_get(admin, "/metrics");
    assert!(m.contains("deskmux_proxy_desktops{worker=\"0\"} 1"), "{m}");
    assert!(m.contains("deskmux_proxy_request_latency_seconds"));
    assert!(m.contains("# TYPE deskmux_proxy_desktops gauge"), "{m}");
    // Rewrite the config with a tighter in-flight cap and reload.
    let text = std::fs::read_to_string(&st.proxy.config).unwrap();
    std::fs::write(
        &st.proxy.config,
        text.replace("max_in_flight = 256", "max_in_flight = 2"),
    )
    .unwrap();
    st.proxy.proc.signal("HUP").unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        status(admin)["workers"][0]["status"]["reloads"].as_u64() == Some(1)
    }));
    // The same desktop is still connected: 10 pipelined requests, held back two at a time
    // now, are all answered.
    cases::send_pipelined(&mut d, 500, 10).await;
    cases::expect_pipelined_answered(&mut d, 500, 10, Duration::from_secs(5)).await;
    // A new session is told the new cap in its server hello.
    let mut n = TestClient::connect(st.proxy.addr).await.unwrap();
    let hello = n.hello(T1, "agent-new", TOKEN1, 0b110).await.unwrap();
    assert_eq!(
        deskmux_codec::msg::ServerHello::read(hello.body())
            .unwrap()
            .max_in_flight,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_upstream_list_without_dropping_desktops() {
    let dir = tempfile::tempdir().unwrap();
    let (_ucs, ucs_addr) = start_core_with(dir.path(), "u1", "127.0.0.1:0", "role = \"ucs\"");
    let (_ixn, ixn_addr) = start_core_with(dir.path(), "i1", "127.0.0.1:0", "role = \"ixn\"");
    let cfg = proxy_config(dir.path(), &[("\"ucs\"", ucs_addr)], 1, 1, "");
    let proxy = start_proxy(cfg.clone());
    let admin = proxy.admin;
    let mut a = TestClient::connect(proxy.addr).await.unwrap();
    assert!(
        a.hello(T1, "a", TOKEN1, 0b100)
            .await
            .unwrap()
            .error()
            .is_none()
    );
    let r = echo(&mut a, Service::Interaction, b"x").await;
    assert_eq!(code(&r), Some(ErrorCode::NO_ROUTE));
    // Add the Interaction Server.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let added = format!(
        "{text}\n[[upstream]]\nname = \"ixn\"\nservice = \"interaction\"\naddr = \"{ixn_addr}\"\nlinks = 1\n"
    );
    std::fs::write(&cfg, &added).unwrap();
    proxy.proc.signal("HUP").unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        let s = status(admin);
        s["workers"][0]["status"]["reloads"].as_u64() == Some(1)
            && s["workers"][0]["status"]["links_up"].as_u64() == Some(2)
    }));
    let mut b = desktop(proxy.addr, T1).await;
    assert!(
        echo(&mut b, Service::Interaction, b"i")
            .await
            .error()
            .is_none()
    );
    assert!(echo(&mut b, Service::Ucs, b"u").await.error().is_none());
    // Remove the UCS: existing sessions keep working, new ones find no route for it.
    let removed = added.replace(&format!("addr = \"{ucs_addr}\""), "addr = \"127.0.0.1:1\"");
    std::fs::write(&cfg, removed).unwrap();
    proxy.proc.signal("HUP").unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        status(admin)["workers"][0]["status"]["reloads"].as_u64() == Some(2)
    }));
    assert!(echo(&mut a, Service::Ucs, b"still").await.error().is_none());
    assert!(echo(&mut b, Service::Ucs, b"still").await.error().is_none());
}
