//! A real PostgreSQL server for tests: the Debian `postgresql` package's `initdb` into a
//! temporary directory, `pg_ctl` on a loopback port, stopped on drop.
//!
//! TCP connections need a password (scram-sha-256), so that the tests go through the path
//! operators use (`[storage] password_file`); the server's own tools connect with it too.
//!
//! PostgreSQL refuses to run as root; as root (CI's containers) the server runs as the
//! `postgres` user the package creates, in a directory it owns.
//!
//! Shared by core-server's storage tests (`core-server/tests/storage_backends.rs` includes
//! this file), the whole-server tests here and their PostgreSQL mode ([`crate::storage_mode`]),
//! so that there is one way to start one.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The role's password (a test server on loopback, gone after the test).
pub const PASSWORD: &str = "pg-test-password-0123456789";
/// The role the tests connect as.
pub const USER: &str = "deskmux";
/// The tenant leases of the Interaction Server in the tests' configurations: short, so that
/// takeovers come quickly, and long enough that a busy machine renews them in time.
pub const LEASE_MS: u64 = 2000;

/// A running server; [`PgServer::create`] makes a database on it.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

/// The newest installed PostgreSQL's binaries.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PgServer {
    /// Start a fresh server (fsync off: the tests check behaviour, not the machine's
    /// durability).
    pub fn start() -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).expect("write pwfile");
        if root {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success());
        }
        let s = PgServer {
            dir,
            bin,
            port: free_port(),
            as_postgres: root,
        };
        let data = s.data();
        s.run_server_tool(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "-U",
                USER,
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=200",
            s.port,
            s.dir.path().display()
        );
        let log = s.dir.path().join("log");
        s.run_server_tool(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        s
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Run a server-side tool (`initdb`, `pg_ctl`): as `postgres` when root.
    fn run_server_tool(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .current_dir(Path::new("/"))
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Run `psql` on database `db` with `sql`; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-U", USER, "-d", db, "-XAtqc", sql])
            .arg("-p")
            .arg(self.port.to_string())
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The connection string of database `db` (with the password: for the storage tests).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={db}",
            self.port
        )
    }

    /// Create database `db`; its connection string.
    pub fn create(&self, db: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        self.url(db)
    }

    /// A core-server `[storage]` section for database `db`, its password in a file written
    /// in `dir`.
    pub fn storage_toml(&self, dir: &Path, db: &str) -> String {
        self.storage_toml_lease(dir, db, LEASE_MS)
    }

    /// As [`PgServer::storage_toml`], with tenant leases of `lease_ms`.
    pub fn storage_toml_lease(&self, dir: &Path, db: &str, lease_ms: u64) -> String {
        let pw = dir.join("pg.password");
        std::fs::write(&pw, format!("{PASSWORD}\n")).expect("write password file");
        format!(
            "[storage]\nbackend = \"postgres\"\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"{db}\"\nuser = \"{USER}\"\npassword_file = \"{}\"\nlease_ms = {lease_ms}\n",
            self.port,
            pw.display()
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data();
        let stop = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_server_tool(
                "pg_ctl",
                &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
            );
        }));
        let _ = stop;
    }
}

/// A server that lives as long as the process, which never drops it (a `static`): stopped,
/// and its directory removed, by a small shell started here that waits for the end of its
/// standard input, a pipe whose only writer this process holds. The pipe closes when the
/// process ends, however it ends (a panic, an abort, a signal), so the server never outlives
/// the tests that used it.
pub struct ProcessPg {
    /// The server (kept, not dropped: the watchdog stops it).
    pub server: std::mem::ManuallyDrop<PgServer>,
    /// The watchdog's standard input: held open until the process ends.
    _alive: std::process::ChildStdin,
    /// The watchdog, never waited for: it outlives the process, to stop the server.
    _watchdog: std::process::Child,
}

impl ProcessPg {
    /// Start a server and its watchdog.
    pub fn start() -> ProcessPg {
        let server = PgServer::start();
        let data = server.data();
        let pg_ctl = server.bin.join("pg_ctl");
        let mut cmd = Command::new("sh");
        // The watchdog ignores the terminal's Ctrl-C (the server, in the same process group,
        // stops on it by itself), reads to the end of its input, then stops the server.
        cmd.arg("-c")
            .arg("trap '' INT HUP; cat >/dev/null; \"$@\"; rm -rf \"$PG_TEST_DIR\"")
            .arg("pg-watchdog")
            .env("PG_TEST_DIR", server.dir.path());
        if server.as_postgres {
            cmd.args(["runuser", "-u", "postgres", "--"]);
        }
        cmd.arg(&pg_ctl)
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .current_dir("/")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("start the PostgreSQL watchdog");
        let alive = child.stdin.take().expect("watchdog stdin");
        ProcessPg {
            server: std::mem::ManuallyDrop::new(server),
            _alive: alive,
            _watchdog: child,
        }
    }
}
