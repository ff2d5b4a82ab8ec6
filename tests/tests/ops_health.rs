//! `/health`: 200 `ok` only while nothing is degraded; 503 with the reason in the body while
//! every link of an upstream is down or while a worker is down, restarting or crash-looping.
//!
//! Before: `/health` stayed 200 while a worker crash-looped (it was 200 as long as any
//! worker had any link up), and a 503 said only "unhealthy".

mod proxy_support;

use std::time::Duration;

use proxy_support::*;

fn health(p: &Proxy) -> (u16, String) {
    http_get(p.admin, "/health")
}

#[test]
fn an_upstream_with_every_link_down_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_c1, a1) = start_core(dir.path(), "c1", "127.0.0.1:0");
    let (mut c2, a2) = start_core(dir.path(), "c2", "127.0.0.1:0");
    // Two upstreams: one down still leaves links up (the old check said healthy).
    let cfg = proxy_config(dir.path(), &[("\"ixn\"", a1), ("\"ucs\"", a2)], 1, 1, "");
    let proxy = start_proxy(cfg);
    assert!(
        wait_until(Duration::from_secs(10), || health(&proxy).0 == 200),
        "{:?}",
        health(&proxy)
    );
    c2.kill();
    let degraded = wait_until(Duration::from_secs(10), || {
        let (code, body) = health(&proxy);
        code == 503 && body.contains("upstream up1: all 1 links down")
    });
    assert!(degraded, "{:?}", health(&proxy));
}

#[test]
fn a_dead_worker_is_reported_until_it_is_back() {
    let st = stack(2, 1, "");
    let proxy = &st.proxy;
    assert!(
        wait_until(Duration::from_secs(10), || health(proxy).0 == 200),
        "{:?}",
        health(proxy)
    );
    let pid = status(proxy.admin)["workers"][1]["pid"]
        .as_u64()
        .expect("worker pid");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let degraded = wait_until(Duration::from_secs(10), || {
        let (code, body) = health(proxy);
        code == 503 && body.contains("worker 1")
    });
    assert!(degraded, "{:?}", health(proxy));
    // Restarted (after 250 ms) and its link up again: healthy.
    assert!(
        wait_until(Duration::from_secs(20), || health(proxy).0 == 200),
        "{:?}",
        health(proxy)
    );
    let restarts = status(proxy.admin)["workers"][1]["restarts"].as_u64();
    assert_eq!(restarts, Some(1));
}

#[test]
fn a_crash_looping_worker_is_reported() {
    let st = stack(2, 1, "");
    let proxy = &st.proxy;
    assert!(
        wait_until(Duration::from_secs(10), || health(proxy).0 == 200),
        "{:?}",
        health(proxy)
    );
    // The file no longer loads: a worker started now exits at once, again and again.
    std::fs::write(&proxy.config, "workers = \"two\"\n").unwrap();
    let pid = status(proxy.admin)["workers"][1]["pid"]
        .as_u64()
        .expect("worker pid");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let looping = wait_until(Duration::from_secs(10), || {
        let (code, body) = health(proxy);
        code == 503 && body.contains("worker 1 is crash-looping")
    });
    assert!(looping, "{:?}", health(proxy));
    // The other worker still serves: the reason names only the looping one.
    assert!(!health(proxy).1.contains("worker 0"), "{:?}", health(proxy));
}
