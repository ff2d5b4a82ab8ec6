//! Limits and validation: every numeric key is checked against its documented range by
//! `--check-config` (and at start), a configuration without upstreams or with an empty
//! cluster is refused, the summary is readable and never shows the link secret (core-server's
//! neither), and `limits.max_desktops` fits the open-file limit.
//!
//! Before: `max_desktops = 0`, `link_queue_bytes = 0`, `backlog = -5`,
//! `max_frame = 4294967295`, an empty cluster and no upstream all passed, the summary was a
//! `Debug` dump, and under `ulimit -n 256` the proxy kept `max_desktops = 19000`.

mod proxy_support;

use std::process::Command;

use proxy_support::SECRET;

const UP: &str = "[[upstream]]\nname = \"c1\"\nservice = \"ixn\"\naddr = \"127.0.0.1:7100\"\n";

/// `proxy --check-config` on `toml` (under `prelude`, e.g. a `ulimit`): success, stdout,
/// stderr.
fn check(toml: &str, prelude: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("proxy.toml");
    std::fs::write(
        &p,
        format!("link_secret = \"{SECRET}\"\nplaintext_links = true\n{toml}"),
    )
    .unwrap();
    let script = format!("{prelude}\nexec \"$0\" --config \"$1\" --check-config");
    let out = Command::new("/bin/sh")
        .args(["-c", &script])
        .arg(deskmux_tests::bin_path("proxy"))
        .arg(&p)
        .env("RUST_LOG", "info")
        .output()
        .expect("run proxy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn values_out_of_range_are_refused_naming_the_key_and_range() {
    for (toml, key, range) in [
        (
            "[limits]\nmax_desktops = 0\n",
            "limits.max_desktops",
            "1..=1000000",
        ),
        (
            "[limits]\nlink_queue_bytes = 0\n",
            "limits.link_queue_bytes",
            "65536..=",
        ),
        ("backlog = -5\n", "backlog", "1..=65535"),
        (
            "[limits]\nmax_frame = 4294967295\n",
            "limits.max_frame",
            "1024..=16777216",
        ),
    ] {
        let (ok, _, err) = check(&format!("{toml}{UP}"), "");
        assert!(!ok, "accepted: {toml}");
        assert!(err.contains(key) && err.contains(range), "{toml}: {err}");
        assert!(err.contains("proxy.toml:"), "no file named: {err}");
    }
}

#[test]
fn no_upstream_and_empty_clusters_are_refused() {
    let (ok, _, err) = check("workers = 1\n", "");
    assert!(!ok);
    assert!(err.contains("no [[upstream]]"), "{err}");
    let (ok, _, err) = check(
        &format!("[clusters.core]\nbalance = \"round_robin\"\n{UP}"),
        "",
    );
    assert!(!ok);
    assert!(err.contains("cluster core: no instances"), "{err}");
}

#[test]
fn the_summary_is_readable_and_redacts_the_secret() {
    let (ok, out, err) = check(UP, "");
    assert!(ok, "{err}");
    assert!(!out.contains(SECRET) && !err.contains(SECRET), "{out}{err}");
    assert!(
        !out.contains("Config {") && !out.contains("LinkSecret"),
        "{out}"
    );
    assert!(
        out.contains("link_secret         set (34 bytes, redacted)"),
        "{out}"
    );
    assert!(out.contains("upstream c1: 127.0.0.1:7100"), "{out}");
}

/// core-server's `--check-config` likewise: a summary, not a dump, without the link secret
/// or the admin token (read from their files).
#[test]
fn core_servers_summary_redacts_its_secrets_too() {
    let dir = tempfile::tempdir().unwrap();
    let token = "admin-token-0123456789abcdef-0123456789";
    std::fs::write(dir.path().join("admin.token"), token).unwrap();
    let p = dir.path().join("core.toml");
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:0\"\ndb = \"core.db\"\nlink_secret = \"{SECRET}\"\nadmin_token_file = \"{}\"\n[[tenants]]\nid = 1\nname = \"acme\"\n",
            dir.path().join("admin.token").display()
        ),
    )
    .unwrap();
    let out = Command::new(deskmux_tests::bin_path("core-server"))
        .arg("--config")
        .arg(&p)
        .arg("--check-config")
        .env("STATE_DIRECTORY", dir.path())
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{o}{e}");
    for secret in [SECRET, token] {
        assert!(!o.contains(secret) && !e.contains(secret), "{o}{e}");
    }
    assert!(o.contains("link secret") && !o.contains("Config {"), "{o}");
}

#[test]
fn max_desktops_follows_the_open_file_limit() {
    // Unset: derived from the limit (256 - 64 fixed - 2 links - 16 closing sockets).
    let (ok, out, err) = check(UP, "ulimit -n 256");
    assert!(ok, "{err}");
    assert!(
        out.contains("limits.max_desktops 174 (from the open-file limit 256"),
        "{out}"
    );
    // Set above it: lowered, with a warning naming both values.
    let (ok, out, err) = check(
        &format!("[limits]\nmax_desktops = 19000\n{UP}"),
        "ulimit -n 256",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("limits.max_desktops 174 (configured 19000"),
        "{out}"
    );
    assert!(
        err.contains("WARN")
            && err.contains("max_desktops = 19000")
            && err.contains("lowered to 174"),
        "{err}"
    );
}
