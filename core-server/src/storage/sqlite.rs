//! The SQLite backend (rusqlite, bundled).
//!
//! Why SQLite: the server needs a real embedded database with one data file per instance, no
//! separate process to operate, crash safety under `kill -9` and file-level sharing with a warm
//! standby on the same host. SQLite in WAL mode gives exactly that; bundling it pins the
//! version and needs no system library. Its one weakness, a single writer, is what group commit
//! ([`crate::db`]) is for: one thread owns the connection and commits many operations per
//! transaction, so one WAL fsync covers a whole batch.
//!
//! Durability: `journal_mode=WAL` with `synchronous=FULL`, so a commit returns only after the
//! WAL is fsynced — an acknowledged write survives a crash or power loss. (`sqlite_synchronous =
//! "normal"` in the config trades that for speed: still safe against kill -9, not power loss.)
//!
//! Fencing: the `fence` table holds one epoch. An instance that takes the data file over (after
//! its lock, see `lock.rs`) raises it and remembers its value ([`Store::fence_acquire`]); at
//! the start of every transaction the DB worker compares ([`Store::fence_check`]) and, if
//! another instance has raised it since (or the path now names another file), refuses to
//! write: two primaries never both commit, even if the lock failed to keep one out.
//!
//! Disk full: `max_page_count` (config `sqlite_max_page_count`) caps the file; past it a write
//! fails with `SQLITE_FULL` exactly as on a full disk, which is how the tests make a disk full.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{BookingRow, ContactRow, HistoryRow, IxnRow, IxnState, Store, StoreError, StoreResult};

/// How to open the data file (see the `sqlite_*` fields of the configuration).
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// `synchronous`: `full`, `normal` or `extra`.
    pub synchronous: String,
    /// How long to wait for another connection's lock before failing with `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    /// `max_page_count`, if set.
    pub max_page_count: Option<u32>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: "full".into(),
            busy_timeout: Duration::from_secs(5),
            max_page_count: None,
        }
    }
}

/// The (device, inode) a path names now.
fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// A SQLite data file.
pub struct SqliteStore {
    conn: Connection,
    /// The data file's path, and the (device, inode) it named when opened: a primary whose
    /// path comes to name another file (deleted and recreated, renamed over) stops writing.
    path: PathBuf,
    file: (u64, u64),
    /// The fencing epoch this instance holds, once it has taken the data file over.
    epoch: Option<i64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating if needed) the data file at `path`, with `synchronous=FULL`.
    ///
    /// # Errors
    /// The file cannot be opened or the schema cannot be created.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(path, "full")
    }

    /// Open with a given `synchronous` setting (`full`, `normal` or `extra`).
    ///
    /// # Errors
    /// The file cannot be opened, the setting is unknown, or the schema cannot be created.
    pub fn open_with(path: &Path, synchronous: &str) -> StoreResult<SqliteStore> {
        SqliteStore::open_opts(
            path,
            &SqliteOptions {
                synchronous: synchronous.into(),
                ..SqliteOptions::default()
            },
        )
    }

    /// Open with every option.
    ///
    /// # Errors
    /// The file cannot be opened, an option is invalid, or the schema cannot be created.
    pub fn open_opts(path: &Path, opts: &SqliteOptions) -> StoreResult<SqliteStore> {
        let synchronous = opts.synchronous.as_str();
        if !matches!(synchronous, "full" | "normal" | "extra") {
            return Err(StoreError::Other(format!("synchronous={synchronous}")));
        }
        if opts.max_page_count == Some(0) {
            return Err(StoreError::Other(
                "max_page_count must be at least 1".into(),
            ));
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(opts.busy_timeout)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Other(format!(
                "journal_mode is {mode}, not wal"
            )));
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous={synchronous}; PRAGMA foreign_keys=OFF;"
        ))?;
        if let Some(max) = opts.max_page_count {
            // SQLite answers with the limit in force: never below the file's current size.
            let got: i64 =
                conn.query_row(&format!("PRAGMA max_page_count = {max}"), [], |r| r.get(0))?;
            if got != i64::from(max) {
                tracing::warn!("max_page_count {max} is below the data file's size; using {got}");
            }
        }
        super::schema::migrate(&conn).map_err(|e| StoreError::Other(e.to_string()))?;
        conn.set_prepared_statement_cache_capacity(64);
        let file =
            file_id(path).map_err(|e| StoreError::Other(format!("{}: {e}", path.display())))?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            file,
            epoch: None,
        })
    }

    fn put_pairs(&mut self, tenant: u32, id: i64, pairs: &[(String, String)]) -> StoreResult<()> {
        let mut ins = self.conn.prepare_cached(
            "INSERT INTO contact_attrs(contact, tenant, key, value) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (k, v) in pairs {
            ins.execute(params![id, tenant, k, v])?;
        }
        Ok(())
    }
}

impl Store for SqliteStore {
    fn begin(&mut self) -> StoreResult<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) {
        // Nothing to do if SQLite already rolled the transaction back itself.
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    fn savepoint(&mut self) -> StoreResult<()> {
        self.conn.prepare_cached("SAVEPOINT op")?.execute([])?;
        Ok(())
    }

    fn release(&mut self) -> StoreResult<()> {
        self.conn.prepare_cached("RELEASE op")?.execute([])?;
        Ok(())
    }

    fn rollback_to(&mut self) -> StoreResult<()> {
        // ROLLBACK TO keeps the savepoint open; RELEASE then drops it (its changes are gone).
        self.conn.prepare_cached("ROLLBACK TO op")?.execute([])?;
        self.conn.prepare_cached("RELEASE op")?.execute([])?;
        Ok(())
    }

    fn fence_acquire(&mut self) -> StoreResult<u64> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let bumped = self
            .conn
            .execute("UPDATE fence SET epoch = epoch + 1 WHERE id = 1", [])
            .and_then(|_| {
                self.conn
                    .query_row("SELECT epoch FROM fence WHERE id = 1", [], |r| {
                        r.get::<_, i64>(0)
                    })
            });
        let epoch = match bumped {
            Ok(e) => e,
            Err(e) => {
                self.rollback();
                return Err(e.into());
            }
        };
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            self.rollback();
            return Err(e.into());
        }
        self.epoch = Some(epoch);
        Ok(epoch.max(0) as u64)
    }

    fn fence_check(&mut self) -> StoreResult<()> {
        let Some(mine) = self.epoch else {
            return Ok(());
        };
        let now: i64 = self
            .conn
            .prepare_cached("SELECT epoch FROM fence WHERE id = 1")?
            .query_row([], |r| r.get(0))?;
        if now != mine {
            return Err(StoreError::Fenced(format!(
                "the data file's fencing epoch is {now}, this instance's is {mine}: \
                 another instance has taken it over"
            )));
        }
        match file_id(&self.path) {
            Ok(id) if id == self.file => Ok(()),
            Ok(_) => Err(StoreError::Fenced(format!(
                "{} now names another file than the one this instance writes",
                self.path.display()
            ))),
            Err(e) => Err(StoreError::Fenced(format!(
                "{} is no longer there: {e}",
                self.path.display()
            ))),
        }
    }

    fn contact_create(
        &mut self,
        tenant: u32,
        attrs: &[u8],
        pairs: &[(String, String)],
    ) -> StoreResult<i64> {
        self.conn
            .prepare_cached("INSERT INTO contacts(tenant, attrs) VALUES (?1, ?2)")?
            .execute(params![tenant, attrs])?;
        let id = self.conn.last_insert_rowid();
        self.put_pairs(tenant, id, pairs)?;
        Ok(id)
    }

    fn contact_get(&mut self, tenant: u32, id: i64) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT attrs FROM contacts WHERE id = ?1 AND tenant = ?2")?
            .query_row(params![id, tenant], |r| r.get(0))
            .optional()?)
    }

    fn contact_put(
        &mut self,
        tenant: u32,
        id: i64,
        attrs: &[u8],
        pairs: &[(String, String)],
    ) -> StoreResult<bool> {
        let n = self
            .conn
            .prepare_cached("UPDATE contacts SET attrs = ?3 WHERE id = ?1 AND tenant = ?2")?
            .execute(params![id, tenant, attrs])?;
        if n == 0 {
            return Ok(false);
        }
        self.conn
            .prepare_cached("DELETE FROM contact_attrs WHERE contact = ?1")?
            .execute(params![id])?;
        self.put_pairs(tenant, id, pairs)?;
        Ok(true)
    }

    fn contact_delete(&mut self, tenant: u32, id: i64) -> StoreResult<bool> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM contacts WHERE id = ?1 AND tenant = ?2")?
            .execute(params![id, tenant])?;
        if n == 0 {
            return Ok(false);
        }
        self.conn
            .prepare_cached("DELETE FROM contact_attrs WHERE contact = ?1")?
            .execute(params![id])?;
        self.conn
            .prepare_cached("DELETE FROM history WHERE contact = ?1")?
            .execute(params![id])?;
        Ok(true)
    }

    fn contact_find(
        &mut self,
        tenant: u32,
        key: &str,
        value: &str,
        after: i64,
        limit: u32,
        max_bytes: usize,
    ) -> StoreResult<Vec<ContactRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT c.id, c.attrs FROM contacts c WHERE c.id IN
               (SELECT contact FROM contact_attrs
                WHERE tenant = ?1 AND key = ?2 AND value = ?3 AND contact > ?4)
             AND c.tenant = ?1 ORDER BY c.id LIMIT ?5",
        )?;
        let rows = st.query_map(params![tenant, key, value, after, limit], |r| {
            Ok(ContactRow {
                id: r.get(0)?,
                attrs: r.get(1)?,
            })
        })?;
        Ok(super::page(rows, max_bytes, |r| r.attrs.len())?)
    }

    fn history_insert(
        &mut self,
        tenant: u32,
        contact: i64,
        interaction: i64,
        subject: &str,
        text: &str,
        now_us: i64,
    ) -> StoreResult<Option<i64>> {
        let exists: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM contacts WHERE id = ?1 AND tenant = ?2")?
            .query_row(params![contact, tenant], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Ok(None);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO history(tenant, contact, interaction, subject, text, len, created_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                tenant,
                contact,
                interaction,
                subject,
                text,
                text.len() as i64,
                now_us
            ])?;
        Ok(Some(self.conn.last_insert_rowid()))
    }

    fn history_list(
        &mut self,
        tenant: u32,
        contact: i64,
        before: Option<i64>,
        limit: u32,
        max_bytes: usize,
    ) -> StoreResult<Option<Vec<HistoryRow>>> {
        if self.contact_get(tenant, contact)?.is_none() {
            return Ok(None);
        }
        let mut st = self.conn.prepare_cached(
            "SELECT id, interaction, subject, created_us, len FROM history
             WHERE contact = ?1 AND tenant = ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4",
        )?;
        let before = before.unwrap_or(i64::MAX);
        let rows = st.query_map(params![contact, tenant, before, limit], |r| {
            Ok(HistoryRow {
                id: r.get(0)?,
                interaction: r.get(1)?,
                subject: r.get(2)?,
                created_us: r.get(3)?,
                len: r.get(4)?,
            })
        })?;
        Ok(Some(super::page(rows, max_bytes, |r| r.subject.len())?))
    }

    fn content_get(&mut self, tenant: u32, id: i64) -> StoreResult<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT text FROM history WHERE id = ?1 AND tenant = ?2")?
            .query_row(params![id, tenant], |r| r.get(0))
            .optional()?)
    }

    fn ixn_load(&mut self) -> StoreResult<Vec<IxnRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, tenant, queue, props, state, owner, qpos FROM interactions
             WHERE state < 2 ORDER BY qpos, id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(IxnRow {
                id: r.get::<_, i64>(0)? as u64,
                tenant: r.get(1)?,
                queue: r.get(2)?,
                props: r.get(3)?,
                state: IxnState::from_code(r.get(4)?),
                owner: r.get(5)?,
                qpos: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn ixn_max_id(&mut self) -> StoreResult<u64> {
        let m: Option<i64> = self
            .conn
            .query_row("SELECT MAX(id) FROM interactions", [], |r| r.get(0))?;
        Ok(m.unwrap_or(0).max(0) as u64)
    }

    fn gms_in_use(
        &mut self,
        tenant: u32,
        group: &str,
        now_us: i64,
    ) -> StoreResult<Vec<(String, Option<String>)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT number, code FROM gms_bookings
             WHERE tenant = ?1 AND grp = ?2 AND expires_us > ?3",
        )?;
        let rows = st.query_map(params![tenant, group, now_us], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn gms_book(&mut self, row: &BookingRow) -> StoreResult<i64> {
        self.conn
            .prepare_cached(
                "INSERT INTO gms_bookings(tenant, grp, number, code, caller, user_data,
                                          booked_us, expires_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                row.tenant,
                row.group,
                row.number,
                row.code,
                row.caller,
                row.user_data,
                row.booked_us,
                row.expires_us
            ])?;
        Ok(self.conn.last_insert_rowid())
    }

    fn gms_for_number(
        &mut self,
        tenant: u32,
        number: &str,
        now_us: i64,
    ) -> StoreResult<Vec<BookingRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, grp, code, caller, user_data, booked_us, expires_us FROM gms_bookings
             WHERE tenant = ?1 AND number = ?2 AND expires_us > ?3 ORDER BY id DESC",
        )?;
        let rows = st.query_map(params![tenant, number, now_us], |r| {
            Ok(BookingRow {
                id: r.get(0)?,
                tenant,
                group: r.get(1)?,
                number: number.to_string(),
                code: r.get(2)?,
                caller: r.get(3)?,
                user_data: r.get(4)?,
                booked_us: r.get(5)?,
                expires_us: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn gms_release(&mut self, id: i64) -> StoreResult<bool> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM gms_bookings WHERE id = ?1")?
            .execute(params![id])?;
        Ok(n > 0)
    }

    fn gms_expire(&mut self, now_us: i64) -> StoreResult<u64> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM gms_bookings WHERE expires_us <= ?1")?
            .execute(params![now_us])?;
        Ok(n as u64)
    }

    fn gms_count(&mut self, tenant: Option<u32>) -> StoreResult<u64> {
        let n: i64 = match tenant {
            Some(t) => self.conn.query_row(
                "SELECT count(*) FROM gms_bookings WHERE tenant = ?1",
                params![t],
                |r| r.get(0),
            )?,
            None => self
                .conn
                .query_row("SELECT count(*) FROM gms_bookings", [], |r| r.get(0))?,
        };
        Ok(n as u64)
    }

    fn ixn_put(&mut self, row: &IxnRow) -> StoreResult<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO interactions(id, tenant, queue, props, state, owner, qpos)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                row.id as i64,
                row.tenant,
                row.queue,
                row.props,
                row.state.code(),
                row.owner,
                row.qpos
            ])?;
        Ok(())
    }
}
