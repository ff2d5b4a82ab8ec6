//! Reload (SIGHUP to the supervisor): a configuration that does not load is refused whole,
//! its error naming the file, line, column and key, and counted in
//! `deskmux_proxy_config_reload_failures_total`; one that changes keys a running proxy
//! cannot apply (`workers`, `backlog`, ...) names them in a warning and does not apply them.
//! A worker that gets SIGHUP itself (`systemctl kill -s HUP` signals every process of the
//! unit) and reads a configuration that does not load says so in its log and is counted in
//! the same family, labelled with its index.
//!
//! core-server follows the same conventions: SIGHUP re-reads its file, one that does not load
//! changes nothing, is logged with its place and counted
//! (`deskmux_core_config_reload_failures_total`), and changed keys that need a restart are
//! named in a warning. (SIGTERM drains in both: `proxy_ops.rs`, `core_server_durability.rs`.)
//!
//! Before: a failed reload logged "not a valid configuration" with no place and no metric,
//! changing `workers` was reported as a successful reload while nothing changed, and a
//! worker's own failed reload was only a log line.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::Service;
use proxy_support::*;

fn rewrite(cfg: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(cfg).expect("read config");
    assert!(text.contains(from), "{text}");
    std::fs::write(cfg, text.replacen(from, to, 1)).expect("write config");
}

fn metrics(p: &Proxy) -> String {
    http_get_accept(p.admin, "/metrics", "text/plain").2
}

/// The value of the sample named exactly `series` (name and labels, as written).
fn sample(m: &str, series: &str) -> Option<f64> {
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_names_file_line_and_key_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (_core, core_addr) = start_core(dir.path(), "core", "127.0.0.1:0");
    let cfg = proxy_config(dir.path(), &[("\"ixn\"", core_addr)], 1, 1, "");
    let log = dir.path().join("proxy.log");
    let proxy = start_proxy_logged(cfg.clone(), "", &[], &log);
    let mut d = desktop(proxy.addr, T1).await;

    // Line 7 of the file, after `[limits]`: a negative count.
    rewrite(&cfg, "[limits]\n", "[limits]\nmax_in_flight = -3\n");
    let line = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("max_in_flight"))
        .unwrap()
        + 1;
    proxy.proc.signal("HUP").unwrap();
    let counted = wait_until(Duration::from_secs(10), || {
        sample_sum(
            &metrics(&proxy),
            "deskmux_proxy_config_reload_failures_total",
        ) == Some(1.0)
    });
    assert!(counted, "{}", metrics(&proxy));
    let want = format!("{}:{line}:17", cfg.display());
    let found = wait_until(Duration::from_secs(5), || {
        let l = log_text(&log);
        l.contains(&want) && l.contains("limits.max_in_flight")
    });
    assert!(found, "no {want} and key in:\n{}", log_text(&log));
    assert_eq!(
        sample_sum(&metrics(&proxy), "deskmux_proxy_config_reloads_total"),
        Some(0.0)
    );
    // The running configuration still serves.
    echo_ok(&mut d, Service::Interaction, b"still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_need_a_restart_are_named_and_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (_core, core_addr) = start_core(dir.path(), "core", "127.0.0.1:0");
    let cfg = proxy_config(dir.path(), &[("\"ixn\"", core_addr)], 1, 1, "");
    let log = dir.path().join("proxy.log");
    let proxy = start_proxy_logged(cfg.clone(), "", &[], &log);

    rewrite(&cfg, "workers = 1\n", "workers = 3\nbacklog = 77\n");
    proxy.proc.signal("HUP").unwrap();
    let warned = wait_until(Duration::from_secs(10), || {
        log_text(&log).lines().any(|l| {
            l.contains("WARN") && l.contains("workers, backlog") && l.contains("need a restart")
        })
    });
    assert!(warned, "{}", log_text(&log));
    assert_eq!(
        sample_sum(&metrics(&proxy), "deskmux_proxy_config_reloads_total"),
        Some(1.0)
    );
    // Not applied: still one worker.
    let st = status(proxy.admin);
    assert_eq!(st["workers"].as_array().map(Vec::len), Some(1), "{st}");
    let mut d = desktop(proxy.addr, T1).await;
    echo_ok(&mut d, Service::Interaction, b"one worker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_own_failed_reload_is_logged_and_counted_by_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (_core, core_addr) = start_core(dir.path(), "core", "127.0.0.1:0");
    let cfg = proxy_config(dir.path(), &[("\"ixn\"", core_addr)], 2, 1, "");
    let log = dir.path().join("proxy.log");
    let proxy = start_proxy_logged(cfg.clone(), "", &[], &log);
    const FAILED: &str = "deskmux_proxy_config_reload_failures_total";
    let m = metrics(&proxy);
    // Every series is there from the start.
    for series in ["", "{worker=\"0\"}", "{worker=\"1\"}"] {
        assert_eq!(sample(&m, &format!("{FAILED}{series}")), Some(0.0), "{m}");
    }

    rewrite(&cfg, "[limits]\n", "[limits]\nmax_in_flight = -3\n");
    let pid = status(proxy.admin)["workers"][1]["pid"]
        .as_u64()
        .expect("worker 1's pid");
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let counted = wait_until(Duration::from_secs(10), || {
        sample(&metrics(&proxy), &format!("{FAILED}{{worker=\"1\"}}")) == Some(1.0)
    });
    let m = metrics(&proxy);
    assert!(counted, "{m}");
    // Only that worker: the supervisor checked nothing, worker 0 got no signal.
    assert_eq!(sample(&m, FAILED), Some(0.0), "{m}");
    assert_eq!(
        sample(&m, &format!("{FAILED}{{worker=\"0\"}}")),
        Some(0.0),
        "{m}"
    );
    let st = status(proxy.admin);
    assert_eq!(st["workers"][1]["reload_failures"], 1, "{st}");
    let text = log_text(&log);
    assert!(
        text.lines().any(|l| l.contains("ERROR")
            && l.contains("worker=1")
            && l.contains("not reloaded")
            && l.contains("limits.max_in_flight")),
        "{text}"
    );
    // The worker serves on with the configuration it had.
    let mut d = desktop(proxy.addr, T1).await;
    echo_ok(&mut d, Service::Interaction, b"still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_server_reloads_by_the_same_conventions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = core_config_with(
        dir.path(),
        "core",
        "127.0.0.1:0",
        "http_listen = \"127.0.0.1:0\"",
    );
    let log = dir.path().join("core.log");
    let bin = deskmux_tests::bin_path("core-server");
    let mut core = deskmux_tests::Proc::spawn_env(
        "/bin/sh",
        &[
            "-c",
            "exec \"$0\" \"$@\" 2>>\"$CORE_LOG\"",
            bin.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[("CORE_LOG", log.to_str().unwrap()), ("RUST_LOG", "info")],
    )
    .unwrap();
    let addr = core.listening(START).unwrap();
    let http: std::net::SocketAddr = core.wait_line("HTTP ", START).unwrap().parse().unwrap();
    let metric = |name: &str| sample(&http_get(http, "/metrics").1, name);
    const FAILED: &str = "deskmux_core_config_reload_failures_total";
    const APPLIED: &str = "deskmux_core_config_reloads_total";

    // A negative count: refused whole, logged with the file and the place, counted.
    rewrite(&cfg, "heartbeat_ms = 60000", "heartbeat_ms = -3");
    let line = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("heartbeat_ms"))
        .unwrap()
        + 1;
    core.signal("HUP").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || metric(FAILED) == Some(1.0)),
        "{}",
        http_get(http, "/metrics").1
    );
    assert_eq!(metric(APPLIED), Some(0.0));
    let text = log_text(&log);
    assert!(
        text.lines().any(|l| l.contains("ERROR")
            && l.contains(&cfg.display().to_string())
            && l.contains(&format!("line {line}"))),
        "{text}"
    );
    assert!(
        text.contains("heartbeat_ms = -3"),
        "the key is shown: {text}"
    );
    let mut d = desktop(addr, T1).await;
    echo_ok(&mut d, Service::Interaction, b"still serving").await;

    // A key that needs a restart: named in a warning; the rest applies.
    rewrite(&cfg, "heartbeat_ms = -3", "heartbeat_ms = 30000");
    core.signal("HUP").unwrap();
    assert!(wait_until(Duration::from_secs(10), || metric(APPLIED) == Some(1.0)));
    let text = log_text(&log);
    assert!(
        text.lines().any(|l| l.contains("WARN")
            && l.contains("heartbeat_ms")
            && l.contains("need a restart")),
        "{text}"
    );
    assert_eq!(metric(FAILED), Some(1.0));
}
