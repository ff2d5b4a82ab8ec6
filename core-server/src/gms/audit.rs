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

use std::path::Path;

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
    /// Print the bookings audit of the data file (`db`) as JSON: `made` (bookings ever made),
    /// `remaining` (rows left), `remaining_live` (not expired now), `now_us`, `groups`.
    Audit,
}

/// Run `op` on the data file `db`.
///
/// # Errors
/// See [`audit`].
pub fn run(db: &Path, op: &Op) -> Result<(), String> {
    match op {
        Op::Audit => {
            let a = audit(db, crate::wire::now_us())?;
            println!("{}", serde_json::to_string(&a).map_err(|e| e.to_string())?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{BookingRow, Store};

    #[test]
    fn counts_made_and_left_bookings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core.db");
        let mut s = crate::storage::sqlite::SqliteStore::open(&path).unwrap();
        let row = |n: &str, expires_us| BookingRow {
            id: 0,
            tenant: 1,
            group: "cb".into(),
            number: n.into(),
            code: None,
            caller: "+1".into(),
            user_data: Vec::new(),
            booked_us: 1,
            expires_us,
        };
        assert_eq!(audit(&path, 100).unwrap().made, 0, "no booking yet");
        let a = s.gms_book(&row("+1", 50)).unwrap();
        s.gms_book(&row("+2", 500)).unwrap();
        let c = s.gms_book(&row("+3", 500)).unwrap();
        assert!(s.gms_release(a).unwrap());
        assert!(s.gms_release(c).unwrap());
        let got = audit(&path, 100).unwrap();
        // The last id was released: `made` still counts it (ids are never reused).
        assert_eq!((got.made, got.remaining, got.remaining_live), (3, 1, 1));
        assert_eq!(got.groups, vec![(1, "cb".to_string(), 1)]);
        assert_eq!(audit(&path, 1000).unwrap().remaining_live, 0);
        assert!(audit(&dir.path().join("none.db"), 0).is_err());
    }
}
