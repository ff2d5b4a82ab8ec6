//! `core-server --config NEW storage copy-from-sqlite FILE`: bring an SQLite data file's
//! contents into the PostgreSQL database the configuration names.
//!
//! Why: a site that outgrows one machine moves to PostgreSQL (see `SCALING.md`) with its
//! contacts, history, open interactions, agents' credentials (and the key their reconnect
//! tokens are signed with, so desktops need not log in again), and GMS bookings. Without a
//! copy the move would start from an empty database.
//!
//! The rules, each for a reason:
//! - **The source is not in use.** The copy takes the file's lock, as a core-server does, so a
//!   server still writing to it is found and the copy refused: what it wrote afterwards would
//!   be lost.
//! - **The source is at this build's schema.** An older file is brought up to date by opening
//!   it once with this core-server (any `creds list` does); a newer one is not understood.
//! - **The target is empty.** Copying into a database that already holds data would mix two
//!   sites' ids; the copy refuses rather than merge.
//! - **All or nothing.** One PostgreSQL transaction: a failure leaves the target empty, to be
//!   copied again. Then the id sequences are moved past the copied ids, so that new contacts,
//!   history and bookings never reuse one, and new interaction-id blocks start above them.

use std::path::{Path, PathBuf};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use rusqlite::{Connection, OpenFlags};

use super::schema::LATEST;

/// `core-server storage ...`.
#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Copy an SQLite data file (not in use) into the configuration's PostgreSQL database,
    /// which must be empty. Prints the rows copied per table.
    CopyFromSqlite {
        /// The SQLite data file (a core-server's `db`).
        file: PathBuf,
    },
}

/// Why a copy was refused or failed (nothing was written to the target).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The configuration's backend is not PostgreSQL.
    #[error("the configuration's [storage] backend is not postgres: nothing to copy into")]
    NotPostgres,
    /// The source cannot be used.
    #[error("{0}: {1}")]
    Source(PathBuf, String),
    /// The target already holds data.
    #[error("the target database is not empty ({0}): copy into an empty database")]
    NotEmpty(String),
    /// SQLite failed while reading.
    #[error("reading the SQLite file: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed (the transaction was rolled back: the target is as it was).
    #[error("writing to PostgreSQL (nothing was kept): {0}")]
    Postgres(#[from] postgres::Error),
    /// The target's schema could not be brought up to date.
    #[error("{0}")]
    Store(#[from] super::StoreError),
}

/// A column's type in both schemas.
#[derive(Clone, Copy)]
enum Col {
    /// SQLite INTEGER, PostgreSQL BIGINT.
    Int,
    /// TEXT, never NULL.
    Text,
    /// TEXT that may be NULL.
    OptText,
    /// SQLite BLOB, PostgreSQL BYTEA.
    Bytes,
}

/// The tables copied, with their columns (the same names in both schemas: `schema.rs` and
/// `postgres.rs`). Not copied: SQLite's `fence` (PostgreSQL fences by leases and its own
/// epoch row) and anything PostgreSQL-only (leases, id blocks).
const TABLES: &[(&str, &[(&str, Col)])] = &[
    (
        "contacts",
        &[
            ("id", Col::Int),
            ("tenant", Col::Int),
            ("attrs", Col::Bytes),
        ],
    ),
    (
        "contact_attrs",
        &[
            ("contact", Col::Int),
            ("tenant", Col::Int),
            ("key", Col::Text),
            ("value", Col::Text),
        ],
    ),
    (
        "history",
        &[
            ("id", Col::Int),
            ("tenant", Col::Int),
            ("contact", Col::Int),
            ("interaction", Col::Int),
            ("subject", Col::Text),
            ("text", Col::Text),
            ("len", Col::Int),
            ("created_us", Col::Int),
        ],
    ),
    (
        "interactions",
        &[
            ("id", Col::Int),
            ("tenant", Col::Int),
            ("queue", Col::Text),
            ("props", Col::Bytes),
            ("state", Col::Int),
            ("owner", Col::OptText),
            ("qpos", Col::Int),
        ],
    ),
    (
        "credentials",
        &[
            ("tenant", Col::Int),
            ("agent", Col::Text),
            ("kind", Col::Int),
            ("hash", Col::Text),
            ("generation", Col::Int),
            ("disabled", Col::Int),
            ("updated_us", Col::Int),
        ],
    ),
    ("auth_meta", &[("name", Col::Text), ("value", Col::Bytes)]),
    (
        "gms_bookings",
        &[
            ("id", Col::Int),
            ("tenant", Col::Int),
            ("grp", Col::Text),
            ("number", Col::Text),
            ("code", Col::OptText),
            ("caller", Col::Text),
            ("user_data", Col::Bytes),
            ("booked_us", Col::Int),
            ("expires_us", Col::Int),
        ],
    ),
];

/// Tables whose `id` is a PostgreSQL `BIGSERIAL`: their sequences move past the copied ids.
const SERIAL: &[&str] = &["contacts", "history", "gms_bookings"];

/// Rows copied, per table, in [`TABLES`] order.
pub type Copied = Vec<(&'static str, u64)>;

/// Run `op` against the configuration's storage `at`.
///
/// # Errors
/// See [`CopyError`].
pub fn run(at: &super::config::Location, op: &Op) -> Result<Copied, CopyError> {
    let Op::CopyFromSqlite { file } = op;
    let super::config::Location::Postgres(pg) = at else {
        return Err(CopyError::NotPostgres);
    };
    copy_from_sqlite(file, pg)
}

/// Copy the SQLite data file `from` into the (empty) PostgreSQL database `to`.
///
/// # Errors
/// See [`CopyError`].
pub fn copy_from_sqlite(from: &Path, to: &postgres::Config) -> Result<Copied, CopyError> {
    let bad = |why: String| CopyError::Source(from.to_path_buf(), why);
    if !from.is_file() {
        return Err(bad("no such file".into()));
    }
    // Held until the copy is done: no core-server can start on the file meanwhile.
    let _lock = match crate::lock::InstanceLock::try_acquire(from) {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Err(bad(
                "a core-server is using it (its lock is held): stop it first".into(),
            ));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let version: u32 = src.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != LATEST {
        return Err(bad(format!(
            "its schema is version {version}, this core-server's {LATEST}: {}",
            if version < LATEST {
                "open it once with this core-server first (`core-server --db FILE creds list`)"
            } else {
                "copy it with the core-server that wrote it, or a newer one"
            }
        )));
    }
    let mut client = super::postgres::connect(to)?;
    super::postgres::migrate(&mut client)?;
    let mut tx = client.transaction()?;
    // Every table copied must be empty; a lease row means instances have used it too.
    for table in TABLES.iter().map(|t| t.0).chain(["tenant_lease"]) {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])?
            .get(0);
        if n > 0 {
            return Err(CopyError::NotEmpty(format!("{table} has {n} rows")));
        }
    }
    // One read transaction on the source: a consistent snapshot of every table.
    src.execute_batch("BEGIN")?;
    let mut copied = Vec::with_capacity(TABLES.len());
    for (table, cols) in TABLES {
        copied.push((*table, copy_table(&src, &mut tx, table, cols)?));
    }
    src.execute_batch("COMMIT")?;
    for table in SERIAL {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), MAX(id)) FROM {table} \
                 HAVING MAX(id) IS NOT NULL"
            ),
            &[],
        )?;
    }
    // Interaction ids are handed out in blocks of 2^32 (`ixn_max_id`): the next block starts
    // above every copied id.
    tx.execute(
        "SELECT setval('interaction_blocks', MAX(id) >> 32) FROM interactions \
         HAVING MAX(id) >> 32 >= 1",
        &[],
    )?;
    tx.commit()?;
    Ok(copied)
}

/// Copy one table's rows with PostgreSQL's binary `COPY` (one stream, not a round trip per
/// row: a per-row `INSERT` ran at about 12,000 rows/s here); how many.
fn copy_table(
    src: &Connection,
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    cols: &[(&str, Col)],
) -> Result<u64, CopyError> {
    let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
    let types: Vec<Type> = cols
        .iter()
        .map(|(_, c)| match c {
            Col::Int => Type::INT8,
            Col::Text | Col::OptText => Type::TEXT,
            Col::Bytes => Type::BYTEA,
        })
        .collect();
    let mut select = src.prepare(&format!("SELECT {} FROM {table}", names.join(", ")))?;
    let mut rows = select.query([])?;
    let sink = tx.copy_in(&format!(
        "COPY {table}({}) FROM STDIN (FORMAT binary)",
        names.join(", ")
    ))?;
    let mut w = BinaryCopyInWriter::new(sink, &types);
    while let Some(row) = rows.next()? {
        let mut values: Vec<Box<dyn ToSql + Sync>> = Vec::with_capacity(cols.len());
        for (i, (_, col)) in cols.iter().enumerate() {
            values.push(match col {
                Col::Int => Box::new(row.get::<_, i64>(i)?),
                Col::Text => Box::new(row.get::<_, String>(i)?),
                Col::OptText => Box::new(row.get::<_, Option<String>>(i)?),
                Col::Bytes => Box::new(row.get::<_, Vec<u8>>(i)?),
            });
        }
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        w.write(&refs)?;
    }
    Ok(w.finish()?)
}
