//! The shipped configuration examples and units work as written: every file in
//! `deploy/config/` and the configuration block of each README passes its binary's
//! `--check-config` (which reads the files they name: secrets, certificates), and the systemd
//! units in `deploy/systemd/` pass `systemd-analyze verify` with no warning.
//!
//! The examples name files under `/etc/deskmux/`; the test puts real ones (random secrets, a
//! fresh certificate) in a temporary directory and points the copies there. Nothing else of
//! the text is changed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A directory standing in for `/etc/deskmux`, with every file the examples name.
fn etc() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in ["link.secret", "admin.token", "token.key"] {
        std::fs::write(
            d.path().join(f),
            "0123456789abcdef0123456789abcdef-random\n",
        )
        .unwrap();
    }
    let core = deskmux_tests::secure_client::self_signed(d.path(), "core").unwrap();
    for f in ["proxy", "core-ca", "proxies-ca"] {
        std::fs::copy(&core.cert, d.path().join(format!("{f}.crt"))).unwrap();
        std::fs::copy(&core.cert, d.path().join(format!("{f}.pem"))).unwrap();
        std::fs::copy(&core.key, d.path().join(format!("{f}.key"))).unwrap();
    }
    d
}

/// Run `bin --config <text, pointed at etc> --check-config`; panics with its output if it
/// fails.
fn check(bin: &str, what: &str, text: &str, etc: &Path) {
    let text = text.replace("/etc/deskmux/", &format!("{}/", etc.display()));
    let cfg = etc.join(format!("{bin}-check.toml"));
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(deskmux_tests::bin_path(bin))
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        // A relative `db` resolves under the state directory: keep it in the temp dir.
        .env("STATE_DIRECTORY", etc)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    assert!(
        out.status.success(),
        "{what} fails `{bin} --check-config`:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Check every `deploy/config/<bin>*.toml` with `bin --check-config`; how many there are.
fn check_examples(bin: &str, etc: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("deploy/config")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with(bin) && name.ends_with(".toml") {
            check(bin, &name, &std::fs::read_to_string(&p).unwrap(), etc);
            n += 1;
        }
    }
    n
}

/// The ```toml blocks of a markdown file.
fn toml_blocks(md: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(md).unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => cur = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn core_server_examples_and_readme_block_pass_check_config() {
    let etc = etc();
    assert_eq!(
        check_examples("core-server", etc.path()),
        2,
        "a minimal and a complete core-server example"
    );
    let blocks = toml_blocks(&repo().join("core-server/README.md"));
    assert!(!blocks.is_empty());
    for (i, b) in blocks.iter().enumerate() {
        check(
            "core-server",
            &format!("core-server/README.md block {i}"),
            b,
            etc.path(),
        );
    }
}

#[test]
fn proxy_examples_and_readme_blocks_pass_check_config() {
    let etc = etc();
    assert_eq!(
        check_examples("proxy", etc.path()),
        2,
        "a minimal and a complete proxy example"
    );
    // The first block is a whole configuration; the later ones are sections to add to it.
    let blocks = toml_blocks(&repo().join("proxy/README.md"));
    assert!(blocks.len() >= 2, "{} blocks", blocks.len());
    check("proxy", "proxy/README.md block 0", &blocks[0], etc.path());
    for (i, b) in blocks.iter().enumerate().skip(1) {
        let whole = format!("{}\n{b}", blocks[0]);
        check(
            "proxy",
            &format!("proxy/README.md block {i} (added to block 0)"),
            &whole,
            etc.path(),
        );
    }
}

#[test]
fn systemd_units_verify_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let units = repo().join("deploy/systemd");
    let mut n = 0;
    for entry in std::fs::read_dir(&units).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "service") {
            continue;
        }
        // The units name the installed binaries; here, the built ones.
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace(
                "/usr/local/bin/core-server",
                &deskmux_tests::bin_path("core-server").display().to_string(),
            )
            .replace(
                "/usr/local/bin/deskmux-proxy",
                &deskmux_tests::bin_path("proxy").display().to_string(),
            );
        let copy = dir.path().join(p.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .env("SYSTEMD_LOG_LEVEL", "notice")
            .output()
            .expect("systemd-analyze (Debian package systemd) is needed to check the units");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{}: {err}",
            p.display()
        );
        n += 1;
    }
    assert_eq!(n, 2, "a unit for core-server and one for the proxy");
}
