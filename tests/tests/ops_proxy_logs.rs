//! The proxy's logs: `--log-format json` writes one JSON object a line, every line of a
//! worker carries its index, a log on a file holds no colour escapes, and desktops failing
//! authentication or breaking the protocol are logged at the default level (info), at most
//! one line a second per kind, naming the last such desktop's source address, tenant and
//! agent (never its password); failed TLS handshakes too, rather than a line each.
//!
//! Before: only plain text, ANSI escapes in redirected files, no worker index, auth failures
//! were never logged at the default level, and then only as a count.

mod proxy_support;

use std::time::Duration;

use deskmux_codec::ErrorCode;
use deskmux_tests::TestClient;
use proxy_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_with_the_worker_index_and_auth_failures_at_info() {
    let dir = tempfile::tempdir().unwrap();
    let (_core, core_addr) = start_core(dir.path(), "core", "127.0.0.1:0");
    let cfg = proxy_config(
        dir.path(),
        &[("[\"interaction\", \"ucs\"]", core_addr)],
        2,
        1,
        "",
    );
    let log = dir.path().join("proxy.log");
    let proxy = start_proxy_logged(cfg, "", &["--log-format", "json"], &log);

    // Three bad hellos: refused, and logged (as one line or a few, not one per desktop
    // past the rate).
    for _ in 0..3 {
        let mut n = TestClient::connect(proxy.addr).await.unwrap();
        let h = n.hello(T1, "alice", "wrong-token", 0b110).await.unwrap();
        assert_eq!(code(&h), Some(ErrorCode::AUTH_FAILED), "{h:?}");
    }
    let logged = wait_until_async(Duration::from_secs(10), {
        let log = log.clone();
        move || log_text(&log).contains("authentication failed")
    })
    .await;
    let text = log_text(&log);
    assert!(logged, "{text}");
    assert!(!text.contains('\u{1b}'), "colour escapes in a file: {text}");
    assert!(
        !text.contains("wrong-token"),
        "a password in the log: {text}"
    );
    let mut workers = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        if v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("deskmux_proxy::worker"))
        {
            assert!(
                v["worker"].is_u64(),
                "a worker's line without its index: {line}"
            );
        }
        if let Some(w) = v["worker"].as_u64() {
            workers.insert(w);
        }
        if v["message"]
            .as_str()
            .is_some_and(|m| m.contains("authentication failed"))
        {
            assert_eq!(v["level"], "INFO", "{line}");
            // Who: the desktop's address, the tenant and agent its hello claimed.
            assert_eq!(v["source"], "127.0.0.1", "{line}");
            assert_eq!(v["tenant"], 1, "{line}");
            assert_eq!(v["agent"], "alice", "{line}");
        }
    }
    assert_eq!(workers.into_iter().collect::<Vec<_>>(), [0, 1], "{text}");
}

#[test]
fn plain_lines_carry_the_worker_index_without_colour() {
    let dir = tempfile::tempdir().unwrap();
    let (_core, core_addr) = start_core(dir.path(), "core", "127.0.0.1:0");
    let cfg = proxy_config(dir.path(), &[("\"ixn\"", core_addr)], 1, 1, "");
    let log = dir.path().join("proxy.log");
    let _proxy = start_proxy_logged(cfg, "", &[], &log);
    // A worker logs its link coming up.
    let ok = wait_until(Duration::from_secs(10), || {
        log_text(&log)
            .lines()
            .any(|l| l.contains("worker=0") && l.contains("link up"))
    });
    let text = log_text(&log);
    assert!(ok, "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
}

/// A desktop whose session is open breaks the framing (a protocol violation): the line
/// names its worker, source address and tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_failure_names_the_desktop() {
    let dir = tempfile::tempdir().unwrap();
    let (_core, core_addr) = start_core(dir.path(), "core", "127.0.0.1:0");
    let cfg = proxy_config(dir.path(), &[("\"ixn\"", core_addr)], 1, 1, "");
    let log = dir.path().join("proxy.log");
    let proxy = start_proxy_logged(cfg, "", &[], &log);
    let mut d = desktop(proxy.addr, T1).await;
    // Not a frame: bad magic.
    d.send_raw(b"this is not a deskmux frame at all")
        .await
        .unwrap();
    assert!(d.closed_within(Duration::from_secs(10)).await.unwrap());
    let line = |text: &str| {
        text.lines()
            .find(|l| l.contains("INFO") && l.contains("protocol violation"))
            .map(str::to_string)
    };
    let logged = wait_until_async(Duration::from_secs(10), {
        let log = log.clone();
        move || line(&log_text(&log)).is_some()
    })
    .await;
    let text = log_text(&log);
    assert!(logged, "{text}");
    let l = line(&text).unwrap_or_default();
    assert!(
        l.contains("worker=0") && l.contains("source=127.0.0.1") && l.contains("tenant=1"),
        "{l}"
    );
}

/// Failed TLS handshakes, which any peer can provoke by the thousand, are not a line each at
/// the default level: one line a second with the count and the last source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_one_line_with_the_count_and_source() {
    use deskmux_tests::secure_client::{client_config, self_signed, tls_connect};
    let dir = tempfile::tempdir().unwrap();
    let (_core, core_addr) = start_core(dir.path(), "core", "127.0.0.1:0");
    let cert = self_signed(dir.path(), "proxy").unwrap();
    let cfg = proxy_config(
        dir.path(),
        &[("\"ixn\"", core_addr)],
        1,
        1,
        &cert.toml("tls"),
    );
    let log = dir.path().join("proxy.log");
    let proxy = start_proxy_logged(cfg, "", &[], &log);
    // Wrong ALPN: refused in the handshake, three times in a row.
    for _ in 0..3 {
        let c = client_config(std::slice::from_ref(&cert.der), &[b"h2"]).unwrap();
        assert!(tls_connect(proxy.addr, c).await.is_err());
    }
    let counted = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.contains("INFO") && l.contains("TLS handshake or record failed"))
            .inspect(|l| assert!(l.contains("source=127.0.0.1"), "{l}"))
            .filter_map(|l| {
                l.split(" count=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let logged = wait_until_async(Duration::from_secs(10), {
        let log = log.clone();
        move || counted(&log_text(&log)) == 3
    })
    .await;
    let text = log_text(&log);
    assert!(logged, "{text}");
    assert!(!text.contains("tls error"), "a line per failure: {text}");
}
