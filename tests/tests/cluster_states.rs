//! Instance states through the proxy (real core-servers, a 2-worker proxy): `running`,
//! `disabled` / `drained` by an operator (`POST /instances/{name}/disable|enable`, fanned out
//! by the supervisor to every worker), `unavailable` announced by the server (SIGUSR1 →
//! SERVICE_STATE), `stopped` when its links are lost or its heartbeats are missed (SIGSTOP,
//! `link_heartbeat_ms`). Excluded instances get no new sessions; existing sessions continue.
//! A worker restarted by the supervisor keeps the operator's disable.

mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use deskmux_codec::Service;
use proxy_support::*;

/// Minimal blocking HTTP POST with an empty body (admin port).
fn http_post(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("write");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The merged `/status` entry of instance `name`.
fn inst(admin: SocketAddr, name: &str) -> serde_json::Value {
    let st = status(admin);
    st["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name).cloned())
        .unwrap_or(serde_json::Value::Null)
}

fn sessions(admin: SocketAddr, name: &str) -> u64 {
    inst(admin, name)["sessions"].as_u64().unwrap_or(u64::MAX)
}

/// Wait until `/status` (refreshed by the workers' 100 ms tick) shows `state` for `name`.
fn wait_state(admin: SocketAddr, name: &str, state: &str) -> bool {
    wait_until(Duration::from_secs(20), || {
        inst(admin, name)["state"] == state
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_enable_unavailable_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (c0, a0) = start_core(dir.path(), "c0", "127.0.0.1:0");
    let (mut c1, a1) = start_core(dir.path(), "c1", "127.0.0.1:0");
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = 2
link_secret = "{SECRET}"
plaintext_links = true

[limits]
link_heartbeat_ms = 100
link_backoff_min_ms = 50
link_backoff_max_ms = 200

[clusters.core]
balance = "round_robin"

[[upstream]]
name = "up0"
cluster = "core"
service = ["interaction", "ucs"]
addr = "{a0}"
links = 1

[[upstream]]
name = "up1"
cluster = "core"
service = ["interaction", "ucs"]
addr = "{a1}"
links = 1
"#
        ),
    )
    .unwrap();
    let proxy = start_proxy(cfg);
    let admin = proxy.admin;
    assert!(wait_state(admin, "up0", "running"));
    assert!(wait_state(admin, "up1", "running"));

    // Operator disables up0: every worker applies it; new sessions all go to up1.
    let (code, body) = http_post(admin, "/instances/up0/disable");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        http_post(admin, "/instances/nope/disable").0,
        404,
        "unknown instance"
    );
    assert!(
        wait_state(admin, "up0", "drained"),
        "{}",
        inst(admin, "up0")
    );
    let (_, m) = http_get(admin, "/metrics");
    let running: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("deskmux_proxy_instance_running{") && l.contains("up0"))
        .collect();
    assert!(
        running.len() == 2 && running.iter().all(|l| l.ends_with(" 0")),
        "{running:?}"
    );
    let mut on_up1 = Vec::new();
    for _ in 0..6 {
        on_up1.push(desktop(proxy.addr, T1).await);
    }
    assert!(wait_until(Duration::from_secs(20), || sessions(
        admin, "up1"
    ) == 6));
    assert_eq!(sessions(admin, "up0"), 0);
    let i1 = inst(admin, "up1");
    assert_eq!(i1["aliases"], 12, "one alias per service: {i1}");

    // Enabled again: back in the pool (each worker alternates, 8 desktops over 2 workers put
    // at least 2 on up0).
    assert_eq!(http_post(admin, "/instances/up0/enable").0, 200);
    assert!(wait_state(admin, "up0", "running"));
    let mut mixed = Vec::new();
    for _ in 0..8 {
        mixed.push(desktop(proxy.addr, T1).await);
    }
    // Every session shown (the 6 before and these 8), at least 2 of these on up0.
    assert!(
        wait_until(Duration::from_secs(20), || {
            sessions(admin, "up0") + sessions(admin, "up1") == 14
        }),
        "{} {}",
        inst(admin, "up0"),
        inst(admin, "up1")
    );
    let on_up0 = sessions(admin, "up0");
    assert!(on_up0 >= 2, "{}", inst(admin, "up0"));

    // Disabled with sessions on it: shown `disabled` (not drained), existing sessions work.
    assert_eq!(http_post(admin, "/instances/up0/disable").0, 200);
    assert!(
        wait_state(admin, "up0", "disabled"),
        "{}",
        inst(admin, "up0")
    );
    for d in &mut mixed {
        assert!(
            echo(d, Service::Interaction, b"still")
                .await
                .error()
                .is_none()
        );
    }
    for _ in 0..4 {
        on_up1.push(desktop(proxy.addr, T1).await);
    }
    // Once the 4 new sessions are shown, none of them is on up0.
    assert!(
        wait_until(Duration::from_secs(20), || {
            sessions(admin, "up0") + sessions(admin, "up1") == 18
        }),
        "{} {}",
        inst(admin, "up0"),
        inst(admin, "up1")
    );
    assert_eq!(
        sessions(admin, "up0"),
        on_up0,
        "no new session on a disabled instance"
    );
    // Its sessions end: drained.
    drop(mixed);
    assert!(
        wait_state(admin, "up0", "drained"),
        "{}",
        inst(admin, "up0")
    );
    assert_eq!(inst(admin, "up0")["drained"], true);
    assert_eq!(http_post(admin, "/instances/up0/enable").0, 200);

    // The server announces service unavailable: excluded for new sessions, existing continue.
    c1.signal("USR1").unwrap();
    assert!(
        wait_state(admin, "up1", "unavailable"),
        "{}",
        inst(admin, "up1")
    );
    // The mixed desktops' sessions on up1 are gone too: the 10 of `on_up1` are left.
    assert!(
        wait_until(Duration::from_secs(20), || sessions(admin, "up1") == 10),
        "{}",
        inst(admin, "up1")
    );
    let mut fresh = Vec::new();
    for _ in 0..4 {
        fresh.push(desktop(proxy.addr, T1).await);
    }
    // Once the 4 new sessions are shown (all on up0), none of them is on up1.
    assert!(
        wait_until(Duration::from_secs(20), || {
            sessions(admin, "up0") + sessions(admin, "up1") == 14
        }),
        "{} {}",
        inst(admin, "up0"),
        inst(admin, "up1")
    );
    assert_eq!(sessions(admin, "up1"), 10);
    assert_eq!(sessions(admin, "up0"), 4);
    assert!(
        echo(&mut on_up1[0], Service::Ucs, b"ok")
            .await
            .error()
            .is_none()
    );
    let st = inst(admin, "up1");
    assert!(st["in_flight"].is_u64() && st["sessions"].is_u64(), "{st}");

    // Its links are lost: stopped.
    c1.kill();
    assert!(
        wait_state(admin, "up1", "stopped"),
        "{}",
        inst(admin, "up1")
    );

    // A hung server (SIGSTOP): heartbeats missed (3 × link_heartbeat_ms) → stopped; back
    // (SIGCONT): links reconnect and it runs again.
    c0.signal("STOP").unwrap();
    let t = std::time::Instant::now();
    assert!(
        wait_state(admin, "up0", "stopped"),
        "{}",
        inst(admin, "up0")
    );
    println!("hung server stopped after {:?}", t.elapsed());
    c0.signal("CONT").unwrap();
    assert!(
        wait_state(admin, "up0", "running"),
        "{}",
        inst(admin, "up0")
    );
    assert!(
        echo(
            &mut desktop(proxy.addr, T1).await,
            Service::Interaction,
            b"back"
        )
        .await
        .error()
        .is_none()
    );

    // A worker restarted by the supervisor keeps the operator's disable.
    assert_eq!(http_post(admin, "/instances/up0/disable").0, 200);
    let pid = status(admin)["workers"][0]["pid"].as_u64().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let st = status(admin);
            let w = &st["workers"][0];
            w["restarts"].as_u64() == Some(1)
                && w["status"]["instances"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|i| i["name"] == "up0" && i["disabled"] == true)
                })
        }),
        "{}",
        status(admin)
    );
}
