//! `[storage]`: which database backs the server, and how to reach it.
//!
//! Why a section of its own: SQLite (the default) needs nothing but the `db` path, so the
//! demo runs with nothing installed; PostgreSQL needs connection settings and a password,
//! and changes what guards the data (a lock held in the database instead of a `flock` on a
//! local file, see `crate::lock`). The password is read from `password_file`, never from the
//! configuration itself, so that the file can be world readable, shipped or printed, as with
//! `link_secret_file`.
//!
//! ```toml
//! [storage]
//! backend = "postgres"           # "sqlite" (default: the `db` file) or "postgres"
//! host = "127.0.0.1"             # host name or address; a path: a Unix socket directory
//! port = 5432
//! dbname = "deskmux"
//! user = "deskmux"
//! password_file = "/etc/deskmux/pg.password" # optional (trust or peer authentication)
//! connect_timeout_ms = 10000
//! lease_ms = 10000               # Interaction Server: a tenant's lease (see `storage::lease`)
//! connections = 1                # connections (each with its own group commit) for UCS work
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::sqlite::SqliteOptions;

/// Which database backs the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded SQLite file `db` (default).
    #[default]
    Sqlite,
    /// A PostgreSQL database, shared by several instances.
    Postgres,
}

/// The database password: a string whose `Debug` shows only its length, so that no log or
/// dump of the configuration carries it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DbPassword(String);

impl DbPassword {
    /// The password, to hand to the driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DbPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbPassword(<{} bytes>)", self.0.len())
    }
}

/// `[storage]`. Every field has a default; the PostgreSQL ones are used only with
/// `backend = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite` (default) or `postgres`.
    pub backend: Backend,
    /// PostgreSQL host: a name, an address, or (starting with `/`) the directory of its Unix
    /// socket. Default `127.0.0.1`. The connection is not encrypted: use a Unix socket, a
    /// loopback address or a private network.
    pub host: String,
    /// PostgreSQL port. Default 5432.
    pub port: u16,
    /// Database name. Default `deskmux`. Instances sharing it share every tenant's data.
    pub dbname: String,
    /// Role to connect as. Default `deskmux`.
    pub user: String,
    /// File holding the role's password (surrounding whitespace ignored). Default none
    /// (trust or peer authentication). Read at start.
    pub password_file: Option<PathBuf>,
    /// How long connecting may take, ms. Default 10000.
    pub connect_timeout_ms: u32,
    /// Interaction Server: how long a tenant's ownership lease lasts without renewal, ms
    /// (renewed every third of it). A standby takes the tenants over at most this long (plus
    /// a quarter of it) after their owner stopped renewing; an owner that cannot renew for
    /// two thirds of it stops itself first. At least 300. Default 10000.
    pub lease_ms: u32,
    /// PostgreSQL: database connections this instance opens, each with a worker thread and
    /// its own group commit. UCS work is spread over them by session (one session's
    /// operations stay on one, in order); the Interaction Server and GMS use the first. One
    /// connection bounds a UCS instance to one commit at a time. 1 to 32; default 1.
    pub connections: u32,
    /// The password, read from `password_file` (never from the configuration: a `password`
    /// key is refused as unknown).
    #[serde(skip)]
    pub password: DbPassword,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Sqlite,
            host: "127.0.0.1".into(),
            port: 5432,
            dbname: "deskmux".into(),
            user: "deskmux".into(),
            password_file: None,
            connect_timeout_ms: 10_000,
            lease_ms: 10_000,
            connections: 1,
            password: DbPassword::default(),
        }
    }
}

impl StorageConfig {
    /// Check the PostgreSQL settings when they are used.
    ///
    /// # Errors
    /// What is wrong, for the configuration error.
    pub fn validate(&self) -> Result<(), String> {
        if self.backend == Backend::Postgres
            && (self.host.is_empty() || self.dbname.is_empty() || self.user.is_empty())
        {
            return Err("storage: host, dbname and user must be non-empty".into());
        }
        if self.connect_timeout_ms == 0 {
            return Err("storage.connect_timeout_ms must be non-zero".into());
        }
        if self.lease_ms < 300 {
            return Err("storage.lease_ms must be at least 300".into());
        }
        if !(1..=32).contains(&self.connections) {
            return Err("storage.connections must be 1 to 32".into());
        }
        if self.connections > 1 && self.backend != Backend::Postgres {
            return Err(
                "storage.connections: SQLite has one writer; more connections are for \
                 backend = \"postgres\""
                    .into(),
            );
        }
        Ok(())
    }

    /// Read `password_file` (PostgreSQL only).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn read_password_file(&mut self) -> Result<(), String> {
        let Some(p) = &self.password_file else {
            return Ok(());
        };
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        let text = std::fs::read_to_string(p)
            .map_err(|e| format!("storage.password_file {}: {e}", p.display()))?;
        self.password = DbPassword(text.trim().to_string());
        Ok(())
    }

    /// The driver's connection settings (the password included, which its `Debug` hides).
    pub fn postgres(&self, instance: &str) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .user(&self.user)
            .application_name(instance)
            .connect_timeout(Duration::from_millis(u64::from(self.connect_timeout_ms)))
            // A connection to a database that vanished (its host died) is noticed within
            // about a minute instead of the kernel's two hours.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if !self.password.0.is_empty() {
            c.password(self.password.expose());
        }
        c
    }

    /// The tenant lease's length.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(u64::from(self.lease_ms))
    }

    /// One line for `--check-config`: where the data is, with no password.
    pub fn describe_postgres(&self) -> String {
        let pw = match &self.password_file {
            Some(p) => format!("password from {}", p.display()),
            None => "no password".to_string(),
        };
        format!(
            "postgres {}@{}:{}/{} ({pw}, {} connection{})",
            self.user,
            self.host,
            self.port,
            self.dbname,
            self.connections,
            if self.connections == 1 { "" } else { "s" }
        )
    }
}

/// Where the data lives, as the configuration says: what storage and credential stores open.
#[derive(Debug, Clone)]
pub enum Location {
    /// The SQLite file, with its options.
    Sqlite {
        /// The data file.
        path: PathBuf,
        /// How to open it.
        opts: SqliteOptions,
    },
    /// A PostgreSQL database.
    Postgres(Box<postgres::Config>),
}

impl Location {
    /// For logs and errors: the file, or `postgres user@host:port/dbname` (no password).
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite { path, .. } => path.display().to_string(),
            Location::Postgres(c) => {
                let host = match c.get_hosts().first() {
                    Some(postgres::config::Host::Tcp(h)) => h.clone(),
                    Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
                    None => String::new(),
                };
                format!(
                    "postgres {}@{host}:{}/{}",
                    c.get_user().unwrap_or(""),
                    c.get_ports().first().copied().unwrap_or(5432),
                    c.get_dbname().unwrap_or("")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<StorageConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn sqlite_by_default_and_no_inline_password() {
        assert_eq!(parse("").unwrap().backend, Backend::Sqlite);
        let e = parse("backend = \"postgres\"\npassword = \"hunter2hunter2\"").unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
        assert!(parse("backend = \"mysql\"").is_err());
    }

    #[test]
    fn connections_are_for_postgres_and_bounded() {
        let ok = parse("backend = \"postgres\"\nconnections = 4").unwrap();
        assert_eq!(ok.connections, 4);
        assert!(ok.validate().is_ok());
        assert!(ok.describe_postgres().contains("4 connections"));
        for bad in [
            "backend = \"postgres\"\nconnections = 0",
            "backend = \"postgres\"\nconnections = 33",
            "connections = 2",
        ] {
            assert!(parse(bad).unwrap().validate().is_err(), "{bad}");
        }
        assert_eq!(parse("").unwrap().connections, 1);
    }

    #[test]
    fn the_password_is_read_from_its_file_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pg.password");
        std::fs::write(&f, "s3cr3t-pg-pass\n").unwrap();
        let mut c = parse(&format!(
            "backend = \"postgres\"\nhost = \"db.example\"\npassword_file = \"{}\"",
            f.display()
        ))
        .unwrap();
        c.read_password_file().unwrap();
        assert_eq!(c.password.expose(), "s3cr3t-pg-pass");
        let pg = c.postgres("core-1");
        assert_eq!(pg.get_password(), Some(&b"s3cr3t-pg-pass"[..]));
        for shown in [
            format!("{c:?}"),
            format!("{pg:?}"),
            c.describe_postgres(),
            Location::Postgres(Box::new(pg)).describe(),
        ] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        assert!(
            c.describe_postgres()
                .contains("deskmux@db.example:5432/deskmux")
        );
        c.password_file = Some(dir.path().join("missing"));
        assert!(c.read_password_file().is_err());
    }
}
