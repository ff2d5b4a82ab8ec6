//! Metrics: `/metrics` passes `promtool check metrics`, is the Prometheus text format 0.0.4
//! unless OpenMetrics is asked for, labels upstreams `upstream` (not `instance`, which
//! Prometheus gives every target), exposes counters as counters, and has every family from
//! the start, `process_*` and the worker-restart and accept-failure counters included.
//!
//! Before: promtool failed, the label was `instance`, QUIC counters were gauges, there were
//! no `process_*`, restart or accept-failure series, and `Accept` was ignored (always
//! OpenMetrics).

mod proxy_support;

use std::io::Write;

use deskmux_codec::Service;
use proxy_support::*;

fn promtool(body: &str) {
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
    else {
        eprintln!("promtool not installed: the format was checked by the assertions only");
        return;
    };
    assert!(
        out.status.success(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_prometheus_conventions() {
    let st = stack(2, 1, "");
    let mut d = desktop(st.proxy.addr, T1).await;
    echo_ok(&mut d, Service::Interaction, b"count me").await;

    let (code, ctype, m) = http_get_accept(st.proxy.admin, "/metrics", "text/plain");
    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    assert!(!m.contains("# EOF"), "OpenMetrics only: {m}");
    promtool(&m);

    // The upstream label, never `instance`.
    assert!(
        m.lines()
            .any(|l| l.starts_with("deskmux_proxy_links_up{") && l.contains("upstream=\"up0\"")),
        "{m}"
    );
    assert!(!m.contains("instance=\""), "{m}");
    // Counters typed as counters, under their `_total` name.
    assert!(
        m.contains("# TYPE deskmux_proxy_link_connects_total counter"),
        "{m}"
    );
    // Families present before their first event: zero samples.
    for zero in [
        "deskmux_proxy_worker_restarts_total{worker=\"1\"} 0",
        "deskmux_proxy_config_reload_failures_total 0",
    ] {
        assert!(m.contains(zero), "{zero} missing: {m}");
    }
    for family in [
        "# TYPE deskmux_proxy_accept_failures_total counter",
        "# TYPE deskmux_proxy_quic_total counter",
        "# TYPE deskmux_proxy_quic_connections gauge",
    ] {
        assert!(m.contains(family), "{family} missing: {m}");
    }
    // Process series: the supervisor's unlabelled, each worker's with its index.
    for p in [
        "process_open_fds ",
        "process_open_fds{worker=\"0\"}",
        "process_resident_memory_bytes{worker=\"1\"}",
        "process_cpu_seconds_total ",
        "process_start_time_seconds ",
        "process_max_fds ",
    ] {
        assert!(m.contains(p), "{p} missing: {m}");
    }
    assert!(
        sample_sum(&m, "process_open_fds").unwrap_or(0.0) >= 3.0,
        "{m}"
    );

    // OpenMetrics when asked for it (Prometheus' own preference order).
    let (_, ctype, om) = http_get_accept(
        st.proxy.admin,
        "/metrics",
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3",
    );
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    assert!(
        om.contains("# TYPE deskmux_proxy_link_connects counter"),
        "{om}"
    );
}
