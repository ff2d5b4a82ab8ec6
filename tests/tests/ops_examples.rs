//! The shipped examples work as written: every file in `deploy/config/` and the
//! configuration block of each README passes its binary's `--check-config` (which reads the
//! files they name: secrets, certificates), the systemd units in `deploy/systemd/` pass
//! `systemd-analyze verify` with no warning, the shell examples of the READMEs run (or, for
//! servers and long loads, parse: see [`shell_examples_run_or_at_least_parse`]), the test
//! names they give exist, `LICENSE` is the licence `Cargo.toml` declares, and the
//! Containerfile copies files and binaries that exist.
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
        // What the units are for: an fd limit, reload by SIGHUP, stop by a draining SIGTERM
        // with time to drain.
        for key in [
            "LimitNOFILE=",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(key)),
                "{}: no {key}",
                p.display()
            );
        }
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

// ------------------------------------------------------------------ shell examples

/// The pages whose shell examples are checked.
const PAGES: [&str; 5] = [
    "README.md",
    "proxy/README.md",
    "core-server/README.md",
    "loadgen/README.md",
    "deploy/README.md",
];

/// The marker, on the line before a ```sh fence, of a block CI runs whole.
const RUN: &str = "<!-- ci: run -->";

/// The workspace binaries an example may start.
const BINS: [&str; 4] = ["proxy", "core-server", "loadgen", "deskmux-conform"];

/// A ```sh block of a page: the line its fence is on, whether it is marked [`RUN`] (or marked
/// for another test: `other`), and its logical lines (a line ending in `\` joined with the
/// next).
struct ShBlock {
    line: usize,
    run: bool,
    other: bool,
    lines: Vec<String>,
}

fn sh_blocks(md: &Path) -> Vec<ShBlock> {
    let text = std::fs::read_to_string(md).unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<ShBlock> = None;
    let mut prev = "";
    let mut pending = String::new();
    for (i, line) in text.lines().enumerate() {
        match cur.as_mut() {
            None if line.trim_start().starts_with("```sh") => {
                let marker = prev.trim();
                cur = Some(ShBlock {
                    line: i + 1,
                    run: marker == RUN,
                    other: marker != RUN && marker.starts_with("<!--"),
                    lines: Vec::new(),
                });
            }
            None => {}
            Some(b) if line.trim_start().starts_with("```") => {
                if !pending.is_empty() {
                    b.lines.push(std::mem::take(&mut pending));
                }
                blocks.extend(cur.take());
            }
            Some(b) => match line.strip_suffix('\\') {
                Some(part) => pending.push_str(part),
                None => {
                    pending.push_str(line);
                    b.lines.push(std::mem::take(&mut pending));
                }
            },
        }
        prev = line;
    }
    blocks
}

/// A directory to run a page's examples in, as if at the top of the repository: `target/debug`
/// and `target/release` are the directory of the binaries under test, and the data directory
/// of core-server (a relative `db`) is inside it.
fn workdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let bins = deskmux_tests::bin_path("proxy")
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::create_dir(d.path().join("target")).unwrap();
    for profile in ["debug", "release"] {
        std::os::unix::fs::symlink(&bins, d.path().join("target").join(profile)).unwrap();
    }
    d
}

/// Run `script` with bash in `dir` (at most `limit`), the binaries under test first on the
/// `PATH`: success, and what it printed.
fn bash(dir: &Path, script: &str, limit: std::time::Duration) -> (bool, String) {
    let bins = deskmux_tests::bin_path("proxy")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = dir.join("example.out");
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env("XDG_STATE_HOME", dir.join("state"))
        .env_remove("STATE_DIRECTORY")
        .env_remove("RUST_BACKTRACE")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join("example.err")).unwrap())
        .spawn()
        .unwrap();
    let st = deskmux_tests::wait_child(&mut child, limit);
    let printed = format!(
        "{}{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(dir.join("example.err")).unwrap_or_default()
    );
    (st.is_some_and(|s| s.success()), printed)
}

/// The workspace binary `line` starts (as `target/<profile>/BIN`, `./target/...` or a bare
/// name on the `PATH`), and the command up to its first pipe, redirection, `&&`, `&` or
/// comment.
fn binary_command(line: &str) -> Option<String> {
    let line = line.trim();
    let first = line.split_whitespace().next()?;
    let name = first
        .trim_start_matches("./")
        .strip_prefix("target/debug/")
        .or_else(|| {
            first
                .trim_start_matches("./")
                .strip_prefix("target/release/")
        })
        .unwrap_or(first);
    if !BINS.contains(&name) {
        return None;
    }
    let mut cmd = line;
    for stop in [" |", " >", " 2>", " &&", " #", " &"] {
        if let Some(i) = cmd.find(stop) {
            cmd = &cmd[..i];
        }
    }
    Some(cmd.trim_end_matches('&').trim().to_string())
}

/// Every shell example of the pages works as written. Blocks marked `<!-- ci: run -->` are
/// quick and self-contained: each page's run in order in one directory (as a reader following
/// the page would), whole, with `bash -euo pipefail`; only their `cargo` lines are left out
/// (CI built the binaries first). In every other block (servers that run until stopped, loads
/// of minutes, host-specific paths), each line that starts a workspace binary is run with
/// `--help` added: clap then checks that its subcommand and every option exist and that their
/// values parse, and prints the help instead of running. What the program checks beyond clap
/// (a file's contents, a port) is not checked for these.
#[test]
fn shell_examples_run_or_at_least_parse() {
    let (mut ran, mut parsed) = (0, 0);
    for page in PAGES {
        let dir = workdir();
        for b in sh_blocks(&repo().join(page)) {
            let place = format!("{page}:{}", b.line);
            if b.run {
                let script: Vec<&str> = b
                    .lines
                    .iter()
                    .map(String::as_str)
                    .filter(|l| !l.trim_start().starts_with("cargo "))
                    .collect();
                let (ok, printed) = bash(
                    dir.path(),
                    &script.join("\n"),
                    std::time::Duration::from_secs(120),
                );
                assert!(ok, "{place}: the block fails as written:\n{printed}");
                ran += 1;
                continue;
            }
            if b.other {
                continue;
            }
            for l in &b.lines {
                let Some(cmd) = binary_command(l) else {
                    continue;
                };
                let (ok, printed) = bash(
                    dir.path(),
                    &format!("{cmd} --help"),
                    std::time::Duration::from_secs(30),
                );
                assert!(
                    ok && printed.contains("Usage"),
                    "{place}: `{cmd}` does not parse:\n{printed}"
                );
                parsed += 1;
            }
        }
    }
    // Not vacuous: the pages have both kinds.
    assert!(ran >= 4, "{ran} blocks run");
    assert!(parsed >= 20, "{parsed} commands parsed");
}

/// Every `--test NAME` the pages give names a test that exists (a `tests/NAME.rs` or
/// `tests/NAME/main.rs` of some crate), so that a renamed test file does not leave a command
/// that fails.
#[test]
fn test_names_in_the_pages_exist() {
    let mut n = 0;
    for page in PAGES {
        let text = std::fs::read_to_string(repo().join(page)).unwrap();
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w != "--test" {
                continue;
            }
            let Some(name) = words.next() else { break };
            let name = name.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_'));
            let found = [
                "tests/tests",
                "proxy/tests",
                "codec/tests",
                "core-server/tests",
                "loadgen/tests",
            ]
            .iter()
            .any(|d| {
                let d = repo().join(d);
                d.join(format!("{name}.rs")).exists() || d.join(name).join("main.rs").exists()
            });
            assert!(found, "{page}: `--test {name}` names no test");
            n += 1;
        }
    }
    assert!(n >= 10, "{n} test names");
}

/// `LICENSE` is the text of the licence `Cargo.toml` declares for the workspace.
#[test]
fn the_license_file_matches_cargo_toml() {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    assert!(
        manifest
            .lines()
            .any(|l| l.trim() == "license = \"Apache-2.0\""),
        "Cargo.toml declares another licence: update LICENSE and this test together"
    );
    let text = std::fs::read_to_string(repo().join("LICENSE")).unwrap();
    assert!(
        text.contains("Apache License") && text.contains("Version 2.0, January 2004"),
        "LICENSE is not the Apache License 2.0"
    );
}

/// The Containerfile (not built by CI: its base images come from a registry) copies what
/// exists: each source of a plain `COPY` is in the repository, and each binary taken from the
/// build stage is one this workspace builds.
#[test]
fn the_containerfile_copies_what_exists() {
    let text = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    // Instructions, with `\` continuations joined.
    let joined = text.replace("\\\n", " ");
    let (mut files, mut bins) = (0, 0);
    for line in joined.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        let words: Vec<&str> = args.split_whitespace().collect();
        let (from_build, words) = match words.split_first() {
            Some((f, rest)) if f.starts_with("--from=") => (true, rest),
            _ => (false, &words[..]),
        };
        let Some((_dest, sources)) = words.split_last() else {
            continue;
        };
        for src in sources {
            if from_build {
                let name = src
                    .strip_prefix("/src/target/release/")
                    .unwrap_or_else(|| panic!("{src}: not a release binary"));
                assert!(
                    deskmux_tests::bin_path(name).exists(),
                    "the Containerfile copies {name}, which the workspace does not build"
                );
                bins += 1;
            } else {
                assert!(
                    repo().join(src).exists(),
                    "the Containerfile copies {src}: missing"
                );
                files += 1;
            }
        }
    }
    assert!(files >= 2 && bins >= 3, "{files} files, {bins} binaries");
}
