//! Warm standby through the proxy: a core-server primary and a core-server `--standby` on the
//! same data file, paired in the proxy (`backup = "standby"`). Under load the primary is
//! killed with SIGKILL; the test measures the switchover time (from the kill to the first
//! successful request on a session opened afterwards, which can only be on the backup),
//! asserts it is under 1 s, and checks that every request got exactly one answer and every
//! desktop on the primary was told.

mod proxy_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskmux_codec::msg::{ixn, key};
use deskmux_codec::{ErrorCode, Kind, Service};
use deskmux_tests::{Proc, TestClient};
use proxy_support::*;

fn inst(admin: SocketAddr, name: &str) -> serde_json::Value {
    let st = status(admin);
    st["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Shared between the load tasks and the test.
struct Shared {
    stop: AtomicBool,
    /// (just before the kill, once the killed primary was reaped).
    kill_at: Mutex<Option<(Instant, Instant)>>,
    /// First success on a session opened after the kill (micros after the kill).
    first_ok_after_kill_us: AtomicU64,
    /// Desktops that have had a request answered on a later session than their first (the
    /// primary's sessions all die, so it is on the backup).
    recovered: AtomicUsize,
}

/// Hello until accepted (the proxy refuses with SERVICE_UNAVAILABLE / UNAVAILABLE while no
/// instance takes new sessions, e.g. during the switchover).
async fn connect_retry(addr: SocketAddr, n: u32) -> TestClient {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = TestClient::connect(addr).await.expect("connect");
        let r = c
            .hello(T1, &deskmux_tests::creds::agent(n as usize), TOKEN1, 0b110)
            .await
            .expect("hello answer");
        match code(&r) {
            None => return c,
            Some(ErrorCode::SERVICE_UNAVAILABLE | ErrorCode::UNAVAILABLE) => {
                eprintln!("hello {n} refused: {:?}", r.error());
            }
            Some(other) => panic!("hello refused: {other}"),
        }
        assert!(Instant::now() < end, "no instance took the session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One desktop: pipelined echo windows; on a lost session, check the notice and re-hello.
/// Returns (sent, ok, lost, unsent, sessions).
async fn load(addr: SocketAddr, n: u32, sh: Arc<Shared>) -> (u64, u64, u64, u64, u32) {
    let (mut sent, mut ok, mut lost, mut unsent, mut sessions) = (0u64, 0u64, 0u64, 0u64, 0u32);
    let mut recovered = false;
    while !sh.stop.load(Ordering::Relaxed) {
        let mut c = connect_retry(addr, n).await;
        let opened = Instant::now();
        sessions += 1;
        let after_kill = sh
            .kill_at
            .lock()
            .unwrap()
            .filter(|(_, reaped)| opened > *reaped)
            .map(|(k, _)| (k, ()));
        let mut broken = false;
        while !broken && !sh.stop.load(Ordering::Relaxed) {
            let mut window = Vec::new();
            for k in 0..5 {
                let corr = c
                    .send(Service::Interaction, ixn::ECHO, |w| {
                        w.bin(key::DATA, format!("d{n}-{k}").as_bytes())?;
                        Ok(())
                    })
                    .await
                    .expect("send");
                window.push(corr);
                sent += 1;
            }
            for corr in window {
                let r = c
                    .response(corr, Duration::from_secs(10))
                    .await
                    .expect("every request is answered");
                match code(&r) {
                    None => {
                        ok += 1;
                        if sessions >= 2 && !recovered {
                            recovered = true;
                            sh.recovered.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some((k, ())) = after_kill {
                            let us = k.elapsed().as_micros() as u64;
                            sh.first_ok_after_kill_us.fetch_min(us, Ordering::Relaxed);
                        }
                    }
                    Some(ErrorCode::LINK_LOST) => {
                        lost += 1;
                        broken = true;
                    }
                    Some(ErrorCode::LINK_LOST_UNSENT) => {
                        unsent += 1;
                        broken = true;
                    }
                    other => panic!("desktop {n}: unexpected answer {other:?}"),
                }
            }
        }
        if broken {
            // The desktop is told its upstream session is gone.
            let notice = c
                .wait_for(Duration::from_secs(5), |f| {
                    f.head().kind == Kind::Control && code(f) == Some(ErrorCode::LINK_LOST)
                })
                .await;
            assert!(notice.is_ok(), "desktop {n}: no LINK_LOST notice");
        }
        // No request is answered twice: nothing but the notice is left over.
        let _ = c.closed_within(Duration::from_millis(50)).await;
        assert!(
            !c.backlog().iter().any(|f| f.head().kind == Kind::Response),
            "desktop {n}: a stray (duplicate) response"
        );
    }
    (sent, ok, lost, unsent, sessions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_switches_to_standby_within_a_second() {
    if deskmux_tests::storage_mode::sqlite_only(
        "the switchover within a second is the SQLite flock's; on PostgreSQL the standby waits for the tenants' leases to expire: core_server_postgres::a_standby_takes_the_tenants_over_when_their_leases_expire, benches/pg_takeover.sh",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let core_cfg = core_config(dir.path(), "primary", "127.0.0.1:0");
    let cfg_s = core_cfg.to_str().unwrap();
    let mut primary = Proc::spawn("core-server", &["--config", cfg_s]).unwrap();
    let pa = primary.listening(START).unwrap();
    // The standby: same config, so the same data file; it waits on the file's lock.
    let mut standby = Proc::spawn(
        "core-server",
        &[
            "--config",
            cfg_s,
            "--standby",
            "--instance",
            "standby",
            "--listen",
            "127.0.0.1:0",
        ],
    )
    .unwrap();
    let sa = standby.listening(START).unwrap();
    standby.wait_line("ROLE backup", START).unwrap();
    let pcfg = dir.path().join("proxy.toml");
    std::fs::write(
        &pcfg,
        format!(
            r#"listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = 2
link_secret = "{SECRET}"
plaintext_links = true

[limits]
link_backoff_min_ms = 50
link_backoff_max_ms = 200

[[upstream]]
name = "primary"
service = ["interaction", "ucs"]
addr = "{pa}"
links = 2
backup = "standby"

[[upstream]]
name = "standby"
service = ["interaction", "ucs"]
addr = "{sa}"
links = 2
"#
        ),
    )
    .unwrap();
    let proxy = start_proxy(pcfg);
    let admin = proxy.admin;
    assert!(wait_until(Duration::from_secs(5), || {
        inst(admin, "primary")["state"] == "running" && inst(admin, "standby")["state"] == "backup"
    }));

    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        kill_at: Mutex::new(None),
        first_ok_after_kill_us: AtomicU64::new(u64::MAX),
        recovered: AtomicUsize::new(0),
    });
    let mut tasks = Vec::new();
    for n in 0..8u32 {
        tasks.push(tokio::spawn(load(proxy.addr, n, sh.clone())));
    }
    // All sessions are on the primary; the backup gets none while the primary lives.
    let all_on_primary = wait_until_async(Duration::from_secs(20), move || {
        inst(admin, "primary")["sessions"] == 8
    })
    .await;
    let p = inst(admin, "primary");
    assert!(all_on_primary, "8 sessions expected on the primary: {p}");
    assert_eq!(inst(admin, "standby")["sessions"], 0);

    let t_kill = Instant::now();
    primary.kill(); // SIGKILL, then reaped
    *sh.kill_at.lock().unwrap() = Some((t_kill, Instant::now()));
    let end = Instant::now() + Duration::from_secs(10);
    while sh.first_ok_after_kill_us.load(Ordering::Relaxed) == u64::MAX && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every desktop works on the backup: a request answered on its new session.
    let end = Instant::now() + Duration::from_secs(20);
    while sh.recovered.load(Ordering::Relaxed) < 8
        && Instant::now() < end
        && !tasks.iter().any(|t| t.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recovered = sh.recovered.load(Ordering::Relaxed);
    sh.stop.store(true, Ordering::Relaxed);
    let (mut sent, mut ok, mut err, mut sessions) = (0, 0, 0, 0);
    for t in tasks {
        let (s, o, l, u, n) = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("load task finished")
            .unwrap();
        assert_eq!(o + l + u, s, "every request got exactly one answer");
        assert!(l + u > 0, "every desktop on the primary saw the loss");
        assert!(n >= 2, "every desktop re-established its session");
        sent += s;
        ok += o;
        err += l + u;
        sessions += n;
    }
    assert_eq!(recovered, 8, "desktops answered on the backup");
    let us = sh.first_ok_after_kill_us.load(Ordering::Relaxed);
    assert_ne!(us, u64::MAX, "no request succeeded on the backup");
    let switchover = Duration::from_micros(us);
    println!(
        "SWITCHOVER {switchover:?} (kill -9 of the primary → first successful request on a new \
         session on the standby); requests sent {sent}, ok {ok}, explicit errors {err}, \
         sessions {sessions}"
    );
    assert!(
        switchover < Duration::from_secs(1),
        "switchover took {switchover:?}"
    );
    let s = inst(admin, "standby");
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(inst(admin, "primary")["state"], "stopped");
}
