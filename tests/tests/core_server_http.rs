//! core-server's HTTP admin port against a real process: `/metrics` in the Prometheus text
//! format with the login counters, `/health` following the service state, `/status`, and the
//! mutating endpoints refused without the admin token. Before this port existed the only admin
//! was a line protocol that took `shutdown` from anyone who could connect.

mod core_server_support;

use std::io::Write;
use std::time::Duration;

use core_server_support::*;
use deskmux_codec::ErrorCode;

const ADMIN_TOKEN: &str = "http-admin-token-of-32-bytes-or-more";

#[test]
fn metrics_health_status_and_token_guarded_controls() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let cfg = write_config(
        dir.path(),
        5000,
        &format!(
            "http_listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n",
            token_file.display()
        ),
    );
    let mut s = Server::start(&cfg, &[]);
    let addr = http_addr(&mut s);

    // One good login and one refused one show in /metrics.
    let _a = Client::desktop(s.addr, T1, "a1", TOKEN1);
    err(
        &Client::connect(s.addr).hello(T1, "a2", "not-the-password"),
        ErrorCode::AUTH_FAILED,
    );
    let (code, body) = http(addr, "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        body.contains("# HELP deskmux_core_logins_refused_total"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE deskmux_core_logins_refused_total counter"),
        "{body}"
    );
    assert_eq!(
        sample(&body, "deskmux_core_logins_ok_total"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "deskmux_core_logins_refused_total"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(sample(&body, "deskmux_core_primary"), Some(1.0), "{body}");
    assert!(
        sample(&body, "deskmux_core_connections").unwrap() >= 1.0,
        "{body}"
    );
    // The process series an operator alerts on first.
    assert!(sample(&body, "process_open_fds").unwrap() >= 3.0, "{body}");
    assert!(
        sample(&body, "process_max_fds").unwrap() >= 1024.0,
        "{body}"
    );
    assert!(
        sample(&body, "process_resident_memory_bytes").unwrap() > 1e6,
        "{body}"
    );
    assert!(
        sample(&body, "process_start_time_seconds").unwrap() > 1.7e9,
        "{body}"
    );
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
    {
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("promtool not installed: the format was checked by hand only");
    }

    assert_eq!(http(addr, "GET", "/health", None).0, 200);
    let (code, st) = http(addr, "GET", "/status", None);
    assert_eq!(code, 200);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["role"], "primary");
    assert_eq!(st["auth"]["ok"], 1);

    // Mutating endpoints: refused without the token or with a wrong one.
    assert_eq!(http(addr, "POST", "/service/unavailable", None).0, 401);
    assert_eq!(
        http(addr, "POST", "/service/unavailable", Some("wrong-token")).0,
        401
    );
    assert_eq!(http(addr, "GET", "/health", None).0, 200, "nothing changed");
    assert_eq!(
        http(addr, "POST", "/service/unavailable", Some(ADMIN_TOKEN)).0,
        200
    );
    assert_eq!(http(addr, "GET", "/health", None).0, 503);
    assert_eq!(
        http(addr, "POST", "/service/available", Some(ADMIN_TOKEN)).0,
        200
    );
    assert_eq!(http(addr, "GET", "/health", None).0, 200);
    assert_eq!(http(addr, "POST", "/shutdown", None).0, 401);
    assert_eq!(http(addr, "POST", "/shutdown", Some(ADMIN_TOKEN)).0, 200);
    assert!(s.wait_exit(Duration::from_secs(10)), "shut down");
}

/// Without an `admin_token_file` the mutating endpoints are off (403), whoever asks.
#[test]
fn no_token_no_controls() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "http_listen = \"127.0.0.1:0\"\n");
    let mut s = Server::start(&cfg, &[]);
    let addr = http_addr(&mut s);
    assert_eq!(http(addr, "POST", "/shutdown", Some("anything")).0, 403);
    assert_eq!(http(addr, "POST", "/service/unavailable", None).0, 403);
    // Still serving, and still available.
    assert_eq!(http(addr, "GET", "/health", None).0, 200);
    let _c = Client::desktop(s.addr, T1, "a1", TOKEN1);
}

/// Every family is exposed from the start: a warm standby (no DB worker, engine or login
/// checker until it takes over) shows them at 0 rather than not at all.
#[test]
fn a_standby_exposes_every_family() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 5000, "");
    let _primary = Server::start(&cfg, &[]);
    let standby_cfg = write_config(dir.path(), 5000, "http_listen = \"127.0.0.1:0\"\n");
    let mut standby = Server::start(&standby_cfg, &["--standby"]);
    let addr = http_addr(&mut standby);
    let (code, body) = http(addr, "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert_eq!(sample(&body, "deskmux_core_primary"), Some(0.0), "{body}");
    for family in [
        "deskmux_core_db_batches_total",
        "deskmux_core_db_expired_total",
        "deskmux_core_engine_queued",
        "deskmux_core_logins_ok_total",
        "deskmux_core_argon2_seconds_total",
    ] {
        assert_eq!(sample(&body, family), Some(0.0), "{family} in {body}");
    }
}
