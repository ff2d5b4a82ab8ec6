//! Where core-server keeps its data by default: a relative `db` is under a data directory
//! (`data_dir`, else systemd's `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/deskmux`, else
//! `$HOME/.local/state/deskmux`), never under the working directory, which differs between a
//! shell, a unit and a container (before, `deskmux-core.db` landed wherever it was started).

use std::path::Path;
use std::process::{Command, Stdio};

use deskmux_tests::Proc;

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("core.toml");
    std::fs::write(
        &p,
        format!("listen = \"127.0.0.1:0\"\ndb = \"core.db\"\n{extra}\n[[tenants]]\nid = 1\nname = \"acme\"\n"),
    )
    .unwrap();
    p
}

/// `core-server --check-config` run in `cwd` with `env` (and no other state variables): the
/// data file it names.
fn checked_db(cfg: &Path, cwd: &Path, env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(deskmux_tests::bin_path("core-server"));
    cmd.arg("--config")
        .arg(cfg)
        .arg("--check-config")
        .current_dir(cwd)
        .env_remove("STATE_DIRECTORY")
        .env_remove("XDG_STATE_HOME")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("core-server --check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("db "))
        .unwrap_or_else(|| panic!("no db in {text}"));
    line.trim()
        .split(" (")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_relative_db_is_under_the_data_directory_not_the_working_directory() {
    if deskmux_tests::storage_mode::sqlite_only("where the SQLite data file goes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let state = dir.path().join("state");
    let home = dir.path().join("home");

    // Each default in its order of precedence.
    let cfg = config(dir.path(), "");
    let sd = dir.path().join("unit-state");
    assert_eq!(
        checked_db(&cfg, &cwd, &[("STATE_DIRECTORY", &sd), ("HOME", &home)]),
        sd.join("core.db").display().to_string()
    );
    assert_eq!(
        checked_db(&cfg, &cwd, &[("XDG_STATE_HOME", &state), ("HOME", &home)]),
        state.join("deskmux/core.db").display().to_string()
    );
    assert_eq!(
        checked_db(&cfg, &cwd, &[("HOME", &home)]),
        home.join(".local/state/deskmux/core.db")
            .display()
            .to_string()
    );
    // `data_dir` beats them all.
    let data = dir.path().join("data");
    let cfg = config(dir.path(), &format!("data_dir = \"{}\"", data.display()));
    assert_eq!(
        checked_db(&cfg, &cwd, &[("STATE_DIRECTORY", &sd)]),
        data.join("core.db").display().to_string()
    );

    // A server started on it creates the directory (private) and the file there.
    let mut p = Proc::spawn("core-server", &["--config", cfg.to_str().unwrap()]).unwrap();
    p.listening(WAIT).expect("core-server listening");
    assert!(data.join("core.db").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data_dir mode {mode:o}");
    assert!(!cwd.join("core.db").exists());
}
