//! The PROTOCOL.md conformance suite (`deskmux-conform`) against the real servers: core-server
//! reached directly (with the link secret, so the link rules run too) and the proxy in front
//! of it. CI runs it here; a peer built by anyone else is checked with the same binary.

mod proxy_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use deskmux_tests::bin_path;
use proxy_support::*;

/// Run the suite against `site` (over TLS trusting `ca`, if given); its report and whether it
/// exited with success.
fn conform(site: SocketAddr, link_secret: Option<&str>, ca: Option<&Path>) -> (String, bool) {
    let mut cmd = Command::new(bin_path("deskmux-conform"));
    cmd.args([
        "--site",
        &site.to_string(),
        "--tenant",
        "1",
        "--agent",
        "agent-7",
    ])
    .env("DESKMUX_CONFORM_PASSWORD", TOKEN1);
    if let Some(ca) = ca {
        cmd.arg("--tls")
            .arg(ca)
            .args(["--server-name", "localhost"]);
    }
    if let Some(s) = link_secret {
        cmd.env("DESKMUX_CONFORM_LINK_SECRET", s);
    }
    // Bounded: every wait inside the suite is bounded (--wait-ms), and it has a fixed list of
    // rules.
    let out = cmd
        .output()
        .expect("run deskmux-conform (cargo build --workspace --bins)");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{report}{}", String::from_utf8_lossy(&out.stderr));
    (report, out.status.success())
}

/// The `N passed, N failed, N skipped` counts of a report.
fn counts(report: &str) -> (usize, usize, usize) {
    let line = report
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .expect("a summary line");
    let n: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1], n[2])
}

/// How many rules the suite knows (`--list`).
fn rule_count() -> usize {
    let out = Command::new(bin_path("deskmux-conform"))
        .args(["--list", "--site", "unused:0"])
        .output()
        .expect("deskmux-conform --list");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_against_core_server_and_the_proxy() {
    let st = stack(1, 1, "");
    // The proxy's links are up once a hello through it succeeds.
    let _ready = desktop(st.proxy.addr, T1).await;

    let core = st.core_addr;
    let (report, ok) = tokio::task::spawn_blocking(move || conform(core, Some(SECRET), None))
        .await
        .expect("suite");
    let (pass, fail, skip) = counts(&report);
    assert!(ok && fail == 0, "core-server fails {fail} rule(s)");
    assert_eq!(
        skip, 0,
        "every rule runs against a server with its link secret"
    );
    assert_eq!(pass, rule_count(), "every rule passed");
    for section in [
        "§2.2", "§2.3", "§3", "§4.1", "§4.1.1", "§4.2", "§5.1", "§5.2", "§5.3", "§9",
    ] {
        assert!(
            report.contains(&format!("PASS {section} ")),
            "no rule of {section} ran"
        );
    }

    let proxy = st.proxy.addr;
    let (report, ok) = tokio::task::spawn_blocking(move || conform(proxy, None, None))
        .await
        .expect("suite");
    let (pass_p, fail, skip) = counts(&report);
    assert!(ok && fail == 0, "the proxy fails {fail} rule(s)");
    // A proxy takes no links: only the link rules are skipped.
    assert_eq!(pass_p + skip, pass, "the same rules ran through the proxy");
    assert!(
        report
            .lines()
            .filter(|l| l.starts_with("SKIP"))
            .all(|l| l.contains(" link."))
    );
}

/// The same rules over TLS: `--tls` against a proxy with a `[tls]` port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = deskmux_tests::secure_client::self_signed(dir.path(), "proxy").expect("cert");
    let st = stack_in(dir, 1, 1, "", &cert.toml("tls"));
    let (addr, ca) = (st.proxy.addr, cert.cert.clone());
    let (report, ok) = tokio::task::spawn_blocking(move || conform(addr, None, Some(&ca)))
        .await
        .expect("suite");
    let (pass, fail, skip) = counts(&report);
    assert!(ok && fail == 0, "the proxy over TLS fails {fail} rule(s)");
    assert_eq!(pass + skip, rule_count(), "every rule ran");
    assert!(pass > skip, "the rules ran over TLS ({pass} passed)");
}
