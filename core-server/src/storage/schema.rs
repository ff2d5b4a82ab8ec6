//! The data file's schema, versioned: `PRAGMA user_version` says which migrations a file has
//! had, and opening it runs the ones it lacks, in order, in one transaction.
//!
//! Why: the data file outlives the binary. An operator upgrading core-server must not have to
//! guess whether the new one understands the old file, and a file written by a newer
//! core-server must not be opened by an older one that would misread it. Every table of the
//! file (the main store's and the credentials') is here, so that whichever part of the server
//! (or `core-server creds`) opens the file first brings it up to date.
//!
//! Data files from before versioning have `user_version` 0 and the tables of the migrations
//! that existed then; the statements are `IF NOT EXISTS`, so running them again is harmless,
//! and those files are simply stamped. A migration added later is a new entry at the end of
//! [`MIGRATIONS`], never an edit of an old one.

use rusqlite::Connection;

/// One schema change: what it is for, and its SQL.
struct Migration {
    why: &'static str,
    sql: &'static str,
}

/// Every migration, in order; a file at version `n` has had the first `n`.
const MIGRATIONS: &[Migration] = &[
    Migration {
        why: "contacts, history, interactions and the fencing epoch",
        sql: "
CREATE TABLE IF NOT EXISTS contacts(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant INTEGER NOT NULL,
    attrs BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS contact_attrs(
    contact INTEGER NOT NULL,
    tenant INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS contact_attrs_kv ON contact_attrs(tenant, key, value, contact);
CREATE INDEX IF NOT EXISTS contact_attrs_c ON contact_attrs(contact);
CREATE TABLE IF NOT EXISTS history(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant INTEGER NOT NULL,
    contact INTEGER NOT NULL,
    interaction INTEGER NOT NULL,
    subject TEXT NOT NULL,
    text TEXT NOT NULL,
    len INTEGER NOT NULL,
    created_us INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS history_c ON history(contact, id);
CREATE TABLE IF NOT EXISTS interactions(
    id INTEGER PRIMARY KEY,
    tenant INTEGER NOT NULL,
    queue TEXT NOT NULL,
    props BLOB NOT NULL,
    state INTEGER NOT NULL,
    owner TEXT,
    qpos INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS interactions_open ON interactions(state) WHERE state < 2;
CREATE TABLE IF NOT EXISTS fence(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL);
INSERT OR IGNORE INTO fence(id, epoch) VALUES (1, 0);
",
    },
    Migration {
        why: "per-agent credentials and the reconnect token key",
        sql: "
CREATE TABLE IF NOT EXISTS credentials(
    tenant INTEGER NOT NULL,
    agent TEXT NOT NULL,
    kind INTEGER NOT NULL,
    hash TEXT NOT NULL,
    generation INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    updated_us INTEGER NOT NULL,
    PRIMARY KEY(tenant, agent));
CREATE TABLE IF NOT EXISTS auth_meta(
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL);
",
    },
];

/// The schema version this build writes.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

/// Why a data file's schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file was written by a newer core-server.
    #[error(
        "the data file's schema is version {found}, newer than this core-server knows ({LATEST}): \
         run the core-server that wrote it, or a newer one"
    )]
    TooNew {
        /// The file's `user_version`.
        found: u32,
    },
    /// SQLite failed (the migration was rolled back).
    #[error("schema migration: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Bring the file `conn` has open to [`LATEST`]; returns the version it had. Runs under
/// `BEGIN IMMEDIATE`, so that two processes opening one file do not both migrate it.
///
/// # Errors
/// [`SchemaError`]: a newer file, or a failed migration (then nothing of it is applied).
pub fn migrate(conn: &Connection) -> Result<u32, SchemaError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = migrate_in_transaction(conn);
    match &r {
        Ok(_) => conn.execute_batch("COMMIT")?,
        Err(_) => {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    r
}

fn migrate_in_transaction(conn: &Connection) -> Result<u32, SchemaError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > LATEST {
        return Err(SchemaError::TooNew { found });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!("data file schema: migration {} ({})", i + 1, m.why);
        conn.execute_batch(m.sql)?;
    }
    if found < LATEST {
        // PRAGMA takes no parameters; LATEST is a constant.
        conn.execute_batch(&format!("PRAGMA user_version = {LATEST}"))?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_gets_every_migration_and_a_second_open_none() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("s.db")).unwrap();
        assert_eq!(migrate(&conn).unwrap(), 0);
        assert_eq!(migrate(&conn).unwrap(), LATEST);
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, LATEST);
    }

    #[test]
    fn a_newer_file_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("s.db")).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        assert!(matches!(
            migrate(&conn),
            Err(SchemaError::TooNew { found: 99 })
        ));
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }
}
