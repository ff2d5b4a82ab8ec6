//! Where credentials live: a `credentials` table in the server's own database, so that a warm
//! standby (same data file) knows the same agents, and so that `core-server creds` can change
//! them while the server runs: every login reads its row afresh, so a disabled or rotated
//! credential stops working at the next login, with no reload.
//!
//! One row per (tenant, agent): the hash ([`super::secret`]), its kind, a `generation` that
//! every change bumps (reconnect tokens carry it, [`super::token`]), and a disabled flag. The
//! hash never leaves this module except to be verified.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

/// A credential store failure.
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    /// SQLite failed.
    #[error("credentials: sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
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

/// A connection to the credential tables of a data file.
pub struct CredStore {
    conn: Connection,
}

impl std::fmt::Debug for CredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredStore(..)")
    }
}

fn now_us() -> i64 {
    crate::wire::now_us()
}

impl CredStore {
    /// Open the data file at `path` (created if missing) and make sure the tables exist.
    ///
    /// # Errors
    /// SQLite.
    pub fn open(path: &Path) -> Result<CredStore, CredError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // Same journal mode as the main store, so readers never block the writer.
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        crate::storage::schema::migrate(&conn).map_err(|e| CredError::Schema(e.to_string()))?;
        Ok(CredStore { conn })
    }

    /// The credential of (tenant, agent), if any.
    ///
    /// # Errors
    /// SQLite.
    pub fn get(&self, tenant: u32, agent: &str) -> Result<Option<Cred>, CredError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT kind, hash, generation, disabled FROM credentials
                 WHERE tenant = ?1 AND agent = ?2",
            )?
            .query_row(params![tenant, agent], |r| {
                Ok(Cred {
                    kind: Kind::from_code(r.get(0)?),
                    hash: r.get(1)?,
                    generation: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    disabled: r.get::<_, i64>(3)? != 0,
                })
            })
            .optional()?)
    }

    /// Create or replace the credential of (tenant, agent) with an already computed hash;
    /// a replacement bumps the generation and enables it.
    ///
    /// # Errors
    /// SQLite, or an empty agent / tenant 0.
    pub fn put(&self, tenant: u32, agent: &str, kind: Kind, hash: &str) -> Result<(), CredError> {
        if tenant == 0 || agent.is_empty() {
            return Err(CredError::Invalid(
                "tenant must be non-zero and agent non-empty".into(),
            ));
        }
        self.conn
            .prepare_cached(
                "INSERT INTO credentials(tenant, agent, kind, hash, generation, disabled, updated_us)
                 VALUES (?1, ?2, ?3, ?4, 1, 0, ?5)
                 ON CONFLICT(tenant, agent) DO UPDATE SET
                   kind = excluded.kind, hash = excluded.hash, disabled = 0,
                   generation = credentials.generation + 1, updated_us = excluded.updated_us",
            )?
            .execute(params![tenant, agent, kind.code(), hash, now_us()])?;
        Ok(())
    }

    /// Run `f` in one transaction (a bulk import is one fsync, not one per agent).
    ///
    /// # Errors
    /// SQLite, or whatever `f` returns; nothing is kept then.
    pub fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&CredStore) -> Result<T, CredError>,
    ) -> Result<T, CredError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(v) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Disable or enable a credential (bumps the generation: outstanding tokens die).
    ///
    /// # Errors
    /// SQLite, or [`CredError::NotFound`].
    pub fn set_disabled(&self, tenant: u32, agent: &str, disabled: bool) -> Result<(), CredError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE credentials SET disabled = ?3, generation = generation + 1, updated_us = ?4
                 WHERE tenant = ?1 AND agent = ?2",
            )?
            .execute(params![tenant, agent, i64::from(disabled), now_us()])?;
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
    /// SQLite.
    pub fn list(&self, tenant: Option<u32>) -> Result<Vec<Listed>, CredError> {
        let mut st = self.conn.prepare_cached(
            "SELECT tenant, agent, kind, generation, disabled, updated_us FROM credentials
             WHERE ?1 IS NULL OR tenant = ?1 ORDER BY tenant, agent",
        )?;
        let rows = st.query_map(params![tenant], |r| {
            Ok(Listed {
                tenant: r.get(0)?,
                agent: r.get(1)?,
                kind: Kind::from_code(r.get(2)?),
                generation: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                disabled: r.get::<_, i64>(4)? != 0,
                updated_us: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The token key stored in the database, created (32 random bytes) on first use, so that
    /// every instance on this data file (a primary and its standby) signs alike.
    ///
    /// # Errors
    /// SQLite or randomness.
    pub fn token_key(&self) -> Result<Vec<u8>, CredError> {
        let fresh = super::secret::random_bytes(32)?;
        // INSERT OR IGNORE then read: two processes racing both end up with the winner's key.
        self.conn.execute(
            "INSERT OR IGNORE INTO auth_meta(name, value) VALUES ('token_key', ?1)",
            params![fresh],
        )?;
        Ok(self.conn.query_row(
            "SELECT value FROM auth_meta WHERE name = 'token_key'",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_disable_list() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = CredStore::open(&dir.path().join("c.db")).unwrap();
        assert_eq!(s.get(1, "a").unwrap(), None);
        s.put(1, "a", Kind::Password, "h1").unwrap();
        let c = s.get(1, "a").unwrap().unwrap();
        assert_eq!(
            (c.kind, c.generation, c.disabled),
            (Kind::Password, 1, false)
        );
        assert_eq!(s.get(2, "a").unwrap(), None, "tenants are apart");
        s.set_disabled(1, "a", true).unwrap();
        let c = s.get(1, "a").unwrap().unwrap();
        assert_eq!((c.generation, c.disabled), (2, true));
        s.put(1, "a", Kind::ApiKey, "h2").unwrap();
        let c = s.get(1, "a").unwrap().unwrap();
        assert_eq!((c.kind, c.generation, c.disabled), (Kind::ApiKey, 3, false));
        assert!(matches!(
            s.set_disabled(1, "nobody", true),
            Err(CredError::NotFound { .. })
        ));
        s.in_transaction(|s| s.put(2, "b", Kind::Password, "h3"))
            .unwrap();
        let r = s.in_transaction(|s| {
            s.put(2, "c", Kind::Password, "h4")?;
            Err::<(), _>(CredError::Invalid("stop".into()))
        });
        assert!(r.is_err());
        assert_eq!(s.get(2, "c").unwrap(), None, "rolled back");
        let l = s.list(None).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(s.list(Some(2)).unwrap().len(), 1);
        assert!(!format!("{c:?}").contains("h2"));
    }

    #[test]
    fn token_key_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.db");
        let k1 = CredStore::open(&p).unwrap().token_key().unwrap();
        let k2 = CredStore::open(&p).unwrap().token_key().unwrap();
        assert_eq!(k1.len(), 32);
        assert_eq!(k1, k2);
    }
}
