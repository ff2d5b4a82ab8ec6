//! Reload (SIGHUP to the supervisor): a configuration that does not load is refused whole,
//! its error naming the file, line, column and key, and counted in
//! `deskmux_proxy_config_reload_failures_total`; one that changes keys a running proxy
//! cannot apply (`workers`, `backlog`, ...) names them in a warning and does not apply them.
//!
//! Before: a failed reload logged "not a valid configuration" with no place and no metric,
//! and changing `workers` was reported as a successful reload while nothing changed.

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
