//! Agent credentials for tests, provisioned the way operators do it: `core-server creds
//! import` on the data file, before the server starts.
//!
//! Every agent id a test logs in with must have a credential (the hello's agent is bound to
//! it). Rather than each test provisioning its own, a server started by the test support gets
//! the same set: the literal names below and `agent-0` .. `agent-255`, in tenants 1 and 2,
//! each tenant with one password ([`provision`]'s `passwords`). A test that needs a new name
//! uses [`agent`] or adds it to [`NAMED`].
//!
//! The hashes use argon2id's cheapest parameters so that provisioning ~660 agents costs a
//! fraction of a second; tests of the default cost provision their own.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Agent ids the tests use by name.
pub const NAMED: &[&str] = &[
    "a",
    "a1",
    "a2",
    "a3",
    "a4",
    "agent-a",
    "agent-b",
    "agent-new",
    "agent-same",
    "agent-x",
    "any",
    "b",
    "b1",
    "calm",
    "checker",
    "d",
    "direct",
    "direct-a",
    "fresh",
    "fuzz",
    "g-agent",
    "iso1-b",
    "iso2-a",
    "iso2-b",
    "iso3a-1",
    "iso3a-2",
    "iso4-b",
    "iso5",
    "iso6-a",
    "iso6-b",
    "iso7a",
    "iso8b",
    "iso8c",
    "iso9-again",
    "iso9-src2",
    "isob-good",
    "isomr-a",
    "isomr-b",
    "isou",
    "joiner",
    "media",
    "media-1",
    "n",
    "new",
    "new2",
    "plain",
    "quic-other-source",
    "quic-reload",
    "reader",
    "slow",
    "spoofer",
    "sup",
    "t",
    "tcp-after-bad-quic",
    "tls-reload",
    "watch",
    "writer",
    "wrong",
    "x",
    "x1",
    "x2",
    "y",
    "y1",
    "la",
    "lb",
    "quic-agent",
    "tls-agent",
    "bomber",
    "other",
    "deep",
    "flags",
    "pager",
    "linked",
    "half-direct",
    "half-check",
    "half-link-a",
    "half-link-b",
    "subs-link",
    "subs-direct",
    "bytes-writer",
    "bytes-slow",
    "bytes-other",
    "overload",
    "cap-a",
    "cap-b",
    "cap-c",
];

/// How many numbered agents (`agent-N`) each tenant gets.
pub const NUMBERED: usize = 256;

/// The numbered agent `n` (wrapping at [`NUMBERED`]).
pub fn agent(n: usize) -> String {
    format!("agent-{}", n % NUMBERED)
}

/// The `creds import` lines for `passwords` (tenant, password): every [`NAMED`] agent in each
/// tenant, and the numbered ones too if `numbered`.
pub fn import_lines(passwords: &[(u32, &str)], numbered: bool) -> String {
    let mut s = String::new();
    for (t, pw) in passwords {
        for a in NAMED {
            s.push_str(&format!("{t}\t{a}\t{pw}\n"));
        }
        for n in 0..if numbered { NUMBERED } else { 0 } {
            s.push_str(&format!("{t}\tagent-{n}\t{pw}\n"));
        }
    }
    s
}

/// Run `core-server --config CONFIG creds ARGS` with `stdin` written to its standard input
/// (where the command reads secrets); returns its output.
///
/// # Errors
/// The binary is missing or could not be run.
pub fn run(config: &Path, args: &[&str], stdin: &str) -> Result<std::process::Output> {
    // In PostgreSQL mode the agents go to the database the server will use.
    crate::storage_mode::prepare(config);
    let bin = crate::bin_path("core-server");
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(config)
        .arg("creds")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// Run `core-server --config CONFIG creds import` with `lines` on stdin (cheap argon2).
///
/// # Errors
/// The binary is missing or the import failed.
pub fn import(config: &Path, lines: &str) -> Result<()> {
    let out = run(
        config,
        &["import", "--argon2-m-kib", "8", "--argon2-t", "1"],
        lines,
    )?;
    if !out.status.success() {
        bail!(
            "creds import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Provision the standard test agents into the data file of `config`.
///
/// # Errors
/// See [`import`].
pub fn provision(config: &Path, passwords: &[(u32, &str)]) -> Result<()> {
    import(config, &import_lines(passwords, true))
}

/// Provision only the [`NAMED`] agents (a small data file: the disk-full tests fill theirs).
///
/// # Errors
/// See [`import`].
pub fn provision_named(config: &Path, passwords: &[(u32, &str)]) -> Result<()> {
    import(config, &import_lines(passwords, false))
}

/// A loadgen `--credentials` file in `dir` for `n` numbered agents of `tenant`, all with
/// `password` (the provisioned test agents).
///
/// # Errors
/// I/O.
pub fn loadgen_file(
    dir: &Path,
    tenant: u32,
    password: &str,
    n: usize,
) -> Result<std::path::PathBuf> {
    let p = dir.join(format!("credentials-{tenant}.tsv"));
    let mut s = String::new();
    for i in 0..n.min(NUMBERED) {
        s.push_str(&format!("{tenant}\tagent-{i}\t{password}\n"));
    }
    std::fs::write(&p, s)?;
    Ok(p)
}
