//! Which storage backend the whole-system tests run core-server on: SQLite (the default), or,
//! with `DESKMUX_TEST_STORAGE=postgres`, PostgreSQL.
//!
//! Why a switch in the harness: core-server with a `postgres` backend must pass the same
//! integration tests as with SQLite, and those tests write their own configurations in many
//! places. So the harness changes the configuration at the one point every test goes
//! through, the start of a core-server process ([`crate::Proc::spawn_env`] and
//! [`crate::creds::run`]): in PostgreSQL mode a configuration without a `[storage]` section
//! gets one, naming a database of its own on one PostgreSQL server per test process
//! ([`crate::pg::ProcessPg`]: `initdb` into a temp dir, on loopback, stopped when the process
//! ends). The database stands for the configuration's `db` file: the same file (a restart, a
//! standby on the same data) is the same database, another file another, fresh, database.
//!
//! The few tests of what only SQLite has (the data file itself, its `flock`, reading it with
//! `rusqlite`) skip themselves in PostgreSQL mode with [`sqlite_only`], saying why.
//!
//! ```text
//! DESKMUX_TEST_STORAGE=postgres cargo test -p deskmux-tests
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::pg::ProcessPg;

/// The environment variable that chooses the backend: `sqlite` (or unset) or `postgres`.
pub const ENV: &str = "DESKMUX_TEST_STORAGE";

/// The Interaction Server's tenant leases in this mode. Longer than `core_server_postgres`'s
/// (which times takeovers): the suite has floods that starve a 2-core machine for over a
/// second, and an owner that cannot renew its leases within two thirds of `lease_ms` stops
/// itself (`core-server/src/lock.rs`). Short enough that a restart after a kill -9, which
/// waits out its own leases (at most one and a half), is within the tests' waits.
pub const LEASE_MS: u64 = 5000;

/// Whether the tests run core-server on PostgreSQL. Panics on a value it does not know, so
/// that a typo does not quietly run the SQLite suite again.
pub fn postgres() -> bool {
    match std::env::var(ENV).as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("{ENV}={other:?}: use \"sqlite\" or \"postgres\""),
    }
}

/// For a test of what only the SQLite backend has: in PostgreSQL mode, print why the test
/// does not apply and return `true` (the test then returns at once).
pub fn sqlite_only(why: &str) -> bool {
    if postgres() {
        eprintln!("skipped in PostgreSQL mode ({ENV}=postgres): {why}");
        return true;
    }
    false
}

/// The process's PostgreSQL server and the database given to each data file.
struct Shared {
    pg: ProcessPg,
    dbs: Mutex<HashMap<PathBuf, String>>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        pg: ProcessPg::start(),
        dbs: Mutex::new(HashMap::new()),
    })
}

/// The data file a configuration names (its `db`, relative to the configuration's directory
/// as core-server resolves it; the directory itself when it names none).
fn data_key(config: &Path, text: &str) -> PathBuf {
    let dir = config.parent().unwrap_or(Path::new("/"));
    let db = text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "db").then(|| v.trim().trim_matches('"').to_string())
    });
    match db {
        Some(db) => dir.join(db),
        None => dir.to_path_buf(),
    }
}

/// Whether the configuration already says where its data is (a test of the PostgreSQL
/// backend itself, or of the configuration).
fn has_storage(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "[storage]")
}

/// In PostgreSQL mode, give the configuration at `config` a `[storage]` section for the
/// database of its data file (created on first sight), unless it has one. In SQLite mode, or
/// when the file cannot be read (a test of a missing configuration), nothing.
pub fn prepare(config: &Path) {
    if !postgres() {
        return;
    }
    let Ok(text) = std::fs::read_to_string(config) else {
        return;
    };
    if has_storage(&text) {
        return;
    }
    let s = shared();
    let key = data_key(config, &text);
    let db = {
        let mut dbs = s.dbs.lock().unwrap_or_else(|e| e.into_inner());
        let n = dbs.len();
        match dbs.get(&key) {
            Some(db) => db.clone(),
            None => {
                let db = format!("t{n}");
                s.pg.server.create(&db);
                eprintln!(
                    "{}: PostgreSQL database {db} on 127.0.0.1:{}",
                    config.display(),
                    s.pg.server.port
                );
                dbs.insert(key, db.clone());
                db
            }
        }
    };
    let dir = config.parent().unwrap_or(Path::new("."));
    let storage = s.pg.server.storage_toml_lease(dir, &db, LEASE_MS);
    let sep = if text.ends_with('\n') { "" } else { "\n" };
    std::fs::write(config, format!("{text}{sep}\n{storage}"))
        .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
}

/// `--config PATH` (or `--config=PATH`) in core-server's arguments.
pub fn config_arg<'a>(args: &[&'a str]) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == "--config" {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix("--config=")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_file_names_the_database() {
        let cfg = Path::new("/t/x/core.toml");
        assert_eq!(
            data_key(cfg, "listen = \"a\"\ndb = \"/d/core.db\"\n"),
            PathBuf::from("/d/core.db")
        );
        assert_eq!(
            data_key(cfg, "db = \"core.db\""),
            PathBuf::from("/t/x/core.db")
        );
        assert_eq!(data_key(cfg, "listen = \"a\""), PathBuf::from("/t/x"));
        assert!(has_storage("a = 1\n[storage]\nbackend = \"postgres\"\n"));
        assert!(!has_storage("a = 1\n[[tenants]]\nid = 1\n"));
        assert_eq!(config_arg(&["--config", "c.toml", "x"]), Some("c.toml"));
        assert_eq!(config_arg(&["--config=c.toml"]), Some("c.toml"));
        assert_eq!(config_arg(&["--version"]), None);
    }
}
