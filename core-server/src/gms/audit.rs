//! `core-server gms audit`: what the data file says about GMS bookings, as one JSON object on
//! stdout, so that a load test (loadgen's `callback` demo) can check that nothing leaked: after
//! every booking's expiry, every number booked must have been matched or expired, and no
//! booking row may be left.
//!
//! The bookings table deletes a row when its booking is matched or swept at expiry, so the file
//! itself cannot tell those two apart; what it can tell is how many bookings were ever made
//! (the table's ids come from SQLite's `AUTOINCREMENT` sequence, which never reuses or rolls
//! back a committed id) and which rows are left. With the server's `gms_matched` and
//! `gms_expired` counters that is a full account: `made = matched + expired + remaining`.
//!
//! It opens the SQLite data file read-only and changes nothing; it may run while the server
//! runs (WAL readers do not block the writer), though a load test audits a stopped server, so
//! that nothing changes under it.
//!
//! On PostgreSQL ([`audit_postgres`]) it reads the same in one read-only transaction; `made`
//! is the table's id sequence, which never reuses an id but, unlike SQLite's, also spends one
//! on a booking whose transaction rolled back (a failed operation of a group commit), so there
//! `made` may exceed the account by such bookings.

use std::path::Path;

use crate::storage::config::Location;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

/// The audit's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Bookings ever made: the highest id handed out (0 if none).
    pub made: u64,
    /// Booking rows left.
    pub remaining: u64,
    /// Of those, not expired at `now_us`: numbers still held.
    pub remaining_live: u64,
    /// When it was read, µs since the UNIX epoch.
    pub now_us: i64,
    /// Per (tenant, group), the rows left: `[tenant, group, rows]`.
    pub groups: Vec<(u32, String, u64)>,
}

/// Read the audit from the SQLite data file `db` at time `now_us`.
///
/// # Errors
/// The file cannot be opened read-only, or has no bookings table (a data file of a version
/// before GMS, or not a data file).
pub fn audit(db: &Path, now_us: i64) -> Result<Audit, String> {
    let at = |e: rusqlite::Error| format!("{}: {e}", db.display());
    let c = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(at)?;
    let made: Option<i64> = c
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'gms_bookings'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(at)?;
    let count = |sql: &str| -> Result<u64, String> {
        let n: i64 = c.query_row(sql, [now_us], |r| r.get(0)).map_err(at)?;
        Ok(n.max(0) as u64)
    };
    let remaining = count("SELECT count(*) FROM gms_bookings WHERE ?1 = ?1")?;
    let remaining_live = count("SELECT count(*) FROM gms_bookings WHERE expires_us > ?1")?;
    let mut st = c
        .prepare(
            "SELECT tenant, grp, count(*) FROM gms_bookings GROUP BY tenant, grp ORDER BY 1, 2",
        )
        .map_err(at)?;
    let groups = st
        .query_map([], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?.max(0) as u64,
            ))
        })
        .map_err(at)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(at)?;
    Ok(Audit {
        made: made.unwrap_or(0).max(0) as u64,
        remaining,
        remaining_live,
        now_us,
        groups,
    })
}

/// `core-server gms ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Op {
    /// Print the bookings audit of the data (the `db` file, or the `[storage]` database) as JSON: `made` (bookings ever made),
    /// `remaining` (rows left), `remaining_live` (not expired now), `now_us`, `groups`.
    Audit,
}

/// Read the audit from PostgreSQL database `cfg` at time `now_us` (see the module's note on
/// `made`).
///
/// # Errors
/// The database cannot be reached, or has no bookings table (not migrated yet).
pub fn audit_postgres(cfg: &postgres::Config, now_us: i64) -> Result<Audit, String> {
    let at = |e: postgres::Error| {
        format!(
            "{}: {e}",
            Location::Postgres(Box::new(cfg.clone())).describe()
        )
    };
    let mut c = crate::storage::postgres::connect(cfg).map_err(at)?;
    let mut tx = c
        .build_transaction()
        .read_only(true)
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .map_err(at)?;
    let made: i64 = tx
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM gms_bookings_id_seq",
            &[],
        )
        .map_err(at)?
        .get(0);
    let row = tx
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE expires_us > $1) FROM gms_bookings",
            &[&now_us],
        )
        .map_err(at)?;
    let (remaining, remaining_live): (i64, i64) = (row.get(0), row.get(1));
    let groups = tx
        .query(
            "SELECT tenant, grp, count(*) FROM gms_bookings GROUP BY tenant, grp ORDER BY 1, 2",
            &[],
        )
        .map_err(at)?
        .iter()
        .map(|r| {
            let tenant: i64 = r.get(0);
            let n: i64 = r.get(2);
            (
                u32::try_from(tenant).unwrap_or(u32::MAX),
                r.get::<_, String>(1),
                n.max(0) as u64,
            )
        })
        .collect();
    tx.commit().map_err(at)?;
    Ok(Audit {
        made: made.max(0) as u64,
        remaining: remaining.max(0) as u64,
        remaining_live: remaining_live.max(0) as u64,
        now_us,
        groups,
    })
}

/// Read the audit from the data `at` (the SQLite file or the PostgreSQL database).
///
/// # Errors
/// See [`audit`] and [`audit_postgres`].
pub fn audit_at(at: &Location, now_us: i64) -> Result<Audit, String> {
    match at {
        Location::Sqlite { path, .. } => audit(path, now_us),
        Location::Postgres(cfg) => audit_postgres(cfg, now_us),
    }
}

/// Run `op` on the data `at`.
///
/// # Errors
/// See [`audit_at`].
pub fn run(at: &Location, op: &Op) -> Result<(), String> {
    match op {
        Op::Audit => {
            let a = audit_at(at, crate::wire::now_us())?;
            println!("{}", serde_json::to_string(&a).map_err(|e| e.to_string())?);
            Ok(())
        }
    }
}
