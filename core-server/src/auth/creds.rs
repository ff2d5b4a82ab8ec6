//! Where credentials live: a `credentials` table in the server's own database (SQLite or
//! PostgreSQL, as `[storage]` says), so that a warm standby (same data) and every instance
//! sharing a PostgreSQL database know the same agents, and so that `core-server creds` can change
//! them while the server runs: every login reads its row afresh, so a disabled or rotated
//! credential stops working at the next login, with no reload.
//!
//! One row per (tenant, agent): the hash ([`super::secret`]), its kind, a `generation` that
//! every change bumps (reconnect tokens carry it, [`super::token`]), and a disabled flag. The
//! hash never leaves this module except to be verified.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::storage::config::Location;

/// A credential store failure.
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    /// SQLite failed.
    #[error("credentials: sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("credentials: postgres: {0}")]
    Postgres(#[from] postgres::Error),
    /// The data file's schema could not be brought up to date (or is newer than this build).
    #[error("credentials: {0}")]
    Schema(String),
    /// Hashing or randomness failed.
    #[error("credentials: {0}")]
    Hash(#[from] super::secret::HashError),
    /// No such credential.
    #[error("no credential for tenant {tenant} agent {agent:?}")]
    NotFound {
        /// Tenant.
        tenant: u32,
        /// Agent.
        agent: String,
    },
    /// Bad input (an import line, an empty agent).
    #[error("credentials: {0}")]
    Invalid(String),
}

/// What kind of secret a credential holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A person's password, argon2id.
    Password,
    /// A service account's generated API key, HMAC-SHA-256.
    ApiKey,
}

impl Kind {
    fn code(self) -> i64 {
        match self {
            Kind::Password => 0,
            Kind::ApiKey => 1,
        }
    }

    fn from_code(c: i64) -> Kind {
        if c == 1 { Kind::ApiKey } else { Kind::Password }
    }

    /// Its name in `creds list`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Password => "password",
            Kind::ApiKey => "api-key",
        }
    }
}

/// One stored credential, as a login needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Cred {
    /// Password or API key.
    pub kind: Kind,
    /// The stored hash (PHC string or salted HMAC).
    pub hash: String,
    /// Bumped by every change; reconnect tokens must carry the current one.
    pub generation: u64,
    /// Disabled credentials refuse every login and token.
    pub disabled: bool,
}

impl std::fmt::Debug for Cred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cred")
            .field("kind", &self.kind)
            .field("generation", &self.generation)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// One row of `creds list` (no hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Tenant.
    pub tenant: u32,
    /// Agent.
    pub agent: String,
    /// Kind.
    pub kind: Kind,
    /// Generation.
    pub generation: u64,
    /// Disabled.
    pub disabled: bool,
    /// Last change, microseconds since the UNIX epoch.
    pub updated_us: i64,
}

/// A connection to the credential tables, on the configured backend.
pub struct CredStore {
    conn: Conn,
}

enum Conn {
    Sqlite(Connection),
    Postgres(Box<postgres::Client>),
}

impl std::fmt::Debug for CredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredStore(..)")
    }
}

fn now_us() -> i64 {
    crate::wire::now_us()
}

fn generation(g: i64) -> u64 {
    u64::try_from(g).unwrap_or(0)
}

impl CredStore {
    /// Open the credential tables where `at` says, bringing the schema up to date (a SQLite
    /// data file is created if missing).
    ///
    /// # Errors
    /// The database cannot be opened or migrated.
    pub fn open_at(at: &Location) -> Result<CredStore, CredError> {
        match at {
            Location::Sqlite { path, .. } => CredStore::open(path),
            Location::Postgres(cfg) => {
                let mut client = crate::storage::postgres::connect(cfg)?;
                crate::storage::postgres::migrate(&mut client)
                    .map_err(|e| CredError::Schema(e.to_string()))?;
                Ok(CredStore {
                    conn: Conn::Postgres(Box::new(client)),
                })
            }
        }
    }

    /// Open the SQLite data file at `path` (created if missing) and make sure the tables
    /// exist.
    ///
    /// # Errors
    /// SQLite.
    pub fn open(path: &Path) -> Result<CredStore, CredError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // Same journal mode as the main store, so readers never block the writer.
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        crate::storage::schema::migrate(&conn).map_err(|e| CredError::Schema(e.to_string()))?;
        Ok(CredStore {
            conn: Conn::Sqlite(conn),
        })
    }

    /// The credential of (tenant, agent), if any.
    ///
    /// # Errors
    /// The database.
    pub fn get(&mut self, tenant: u32, agent: &str) -> Result<Option<Cred>, CredError> {
        match &mut self.conn {
            Conn::Sqlite(c) => Ok(c
                .prepare_cached(
                    "SELECT kind, hash, generation, disabled FROM credentials
                     WHERE tenant = ?1 AND agent = ?2",
                )?
                .query_row(params![tenant, agent], |r| {
                    Ok(Cred {
                        kind: Kind::from_code(r.get(0)?),
                        hash: r.get(1)?,
                        generation: generation(r.get(2)?),
                        disabled: r.get::<_, i64>(3)? != 0,
                    })
                })
                .optional()?),
            Conn::Postgres(c) => Ok(c
                .query_opt(
                    "SELECT kind, hash, generation, disabled FROM credentials
                     WHERE tenant = $1 AND agent = $2",
                    &[&i64::from(tenant), &agent],
                )?
                .map(|r| Cred {
                    kind: Kind::from_code(r.get(0)),
                    hash: r.get(1),
                    generation: generation(r.get(2)),
                    disabled: r.get::<_, i64>(3) != 0,
                })),
        }
    }

    /// Create or replace the credential of (tenant, agent) with an already computed hash;
    /// a replacement bumps the generation and enables it.
    ///
    /// # Errors
    /// The database, or an empty agent / tenant 0.
    pub fn put(
        &mut self,
        tenant: u32,
        agent: &str,
        kind: Kind,
        hash: &str,
    ) -> Result<(), CredError> {
        if tenant == 0 || agent.is_empty() {
            return Err(CredError::Invalid(
                "tenant must be non-zero and agent non-empty".into(),
            ));
        }
        match &mut self.conn {
            Conn::Sqlite(c) => {
                c.prepare_cached(
                    "INSERT INTO credentials(tenant, agent, kind, hash, generation, disabled, updated_us)
                     VALUES (?1, ?2, ?3, ?4, 1, 0, ?5)
                     ON CONFLICT(tenant, agent) DO UPDATE SET
                       kind = excluded.kind, hash = excluded.hash, disabled = 0,
                       generation = credentials.generation + 1, updated_us = excluded.updated_us",
                )?
                .execute(params![tenant, agent, kind.code(), hash, now_us()])?;
            }
            Conn::Postgres(c) => {
                c.execute(
                    "INSERT INTO credentials(tenant, agent, kind, hash, generation, disabled, updated_us)
                     VALUES ($1, $2, $3, $4, 1, 0, $5)
                     ON CONFLICT(tenant, agent) DO UPDATE SET
                       kind = EXCLUDED.kind, hash = EXCLUDED.hash, disabled = 0,
                       generation = credentials.generation + 1, updated_us = EXCLUDED.updated_us",
                    &[&i64::from(tenant), &agent, &kind.code(), &hash, &now_us()],
                )?;
            }
        }
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), CredError> {
        match &mut self.conn {
            Conn::Sqlite(c) => c.execute_batch(sql)?,
            Conn::Postgres(c) => c.batch_execute(sql)?,
        }
        Ok(())
    }

    /// Run `f` in one transaction (a bulk import is one commit, not one per agent).
    ///
    /// # Errors
    /// The database, or whatever `f` returns; nothing is kept then.
    pub fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut CredStore) -> Result<T, CredError>,
    ) -> Result<T, CredError> {
        let begin = match self.conn {
            // IMMEDIATE: take SQLite's write lock now, not at the first write.
            Conn::Sqlite(_) => "BEGIN IMMEDIATE",
            Conn::Postgres(_) => "BEGIN",
        };
        self.batch(begin)?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Disable or enable a credential (bumps the generation: outstanding tokens die).
    ///
    /// # Errors
    /// The database, or [`CredError::NotFound`].
    pub fn set_disabled(
        &mut self,
        tenant: u32,
        agent: &str,
        disabled: bool,
    ) -> Result<(), CredError> {
        let n = match &mut self.conn {
            Conn::Sqlite(c) => c
                .prepare_cached(
                    "UPDATE credentials SET disabled = ?3, generation = generation + 1,
                       updated_us = ?4
                     WHERE tenant = ?1 AND agent = ?2",
                )?
                .execute(params![tenant, agent, i64::from(disabled), now_us()])?
                as u64,
            Conn::Postgres(c) => c.execute(
                "UPDATE credentials SET disabled = $3, generation = generation + 1,
                   updated_us = $4
                 WHERE tenant = $1 AND agent = $2",
                &[&i64::from(tenant), &agent, &i64::from(disabled), &now_us()],
            )?,
        };
        if n == 0 {
            return Err(CredError::NotFound {
                tenant,
                agent: agent.into(),
            });
        }
        Ok(())
    }

    /// Every credential (of one tenant, if given), without hashes.
    ///
    /// # Errors
    /// The database.
    pub fn list(&mut self, tenant: Option<u32>) -> Result<Vec<Listed>, CredError> {
        match &mut self.conn {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(
                    "SELECT tenant, agent, kind, generation, disabled, updated_us FROM credentials
                     WHERE ?1 IS NULL OR tenant = ?1 ORDER BY tenant, agent",
                )?;
                let rows = st.query_map(params![tenant], |r| {
                    Ok(Listed {
                        tenant: r.get(0)?,
                        agent: r.get(1)?,
                        kind: Kind::from_code(r.get(2)?),
                        generation: generation(r.get(3)?),
                        disabled: r.get::<_, i64>(4)? != 0,
                        updated_us: r.get(5)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }
            Conn::Postgres(c) => Ok(c
                .query(
                    "SELECT tenant, agent, kind, generation, disabled, updated_us FROM credentials
                     WHERE $1::BIGINT IS NULL OR tenant = $1 ORDER BY tenant, agent",
                    &[&tenant.map(i64::from)],
                )?
                .into_iter()
                .map(|r| Listed {
                    tenant: u32::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                    agent: r.get(1),
                    kind: Kind::from_code(r.get(2)),
                    generation: generation(r.get(3)),
                    disabled: r.get::<_, i64>(4) != 0,
                    updated_us: r.get(5),
                })
                .collect()),
        }
    }

    /// The token key stored in the database, created (32 random bytes) on first use, so that
    /// every instance on this database (a primary and its standby, UCS instances sharing a
    /// PostgreSQL database) signs alike.
    ///
    /// # Errors
    /// The database or randomness.
    pub fn token_key(&mut self) -> Result<Vec<u8>, CredError> {
        let fresh = super::secret::random_bytes(32)?;
        // Insert if missing, then read: two processes racing both end up with the winner's key.
        match &mut self.conn {
            Conn::Sqlite(c) => {
                c.execute(
                    "INSERT OR IGNORE INTO auth_meta(name, value) VALUES ('token_key', ?1)",
                    params![fresh],
                )?;
                Ok(c.query_row(
                    "SELECT value FROM auth_meta WHERE name = 'token_key'",
                    [],
                    |r| r.get(0),
                )?)
            }
            Conn::Postgres(c) => {
                c.execute(
                    "INSERT INTO auth_meta(name, value) VALUES ('token_key', $1)
                     ON CONFLICT (name) DO NOTHING",
                    &[&fresh],
                )?;
                Ok(
                    c.query_one("SELECT value FROM auth_meta WHERE name = 'token_key'", &[])?
                        .get(0),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The store's behaviour is checked on both backends in `tests/storage_backends.rs`.
    #[test]
    fn debug_does_not_show_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = CredStore::open(&dir.path().join("c.db")).unwrap();
        s.put(1, "a", Kind::ApiKey, "secret-hash").unwrap();
        let c = s.get(1, "a").unwrap().unwrap();
        assert!(!format!("{c:?}").contains("secret-hash"));
    }
}
