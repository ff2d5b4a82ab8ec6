//! The warm-standby lock: an exclusive `flock(2)` on the data file itself.
//!
//! The primary holds the lock for its whole life; the kernel releases it when the process dies
//! (kill -9 included), so a standby blocked in [`InstanceLock::acquire_blocking`] wakes up and
//! takes over.
//!
//! Why the data file and not a lock file next to it: a lock belongs to the file (its inode),
//! not to a name. With a separate `<db>.lock`, removing that file ("stale lock") or naming the
//! data file another way (a symlink, a hard link, `./x.db` against `x.db` on another mount)
//! gave a second primary, and two primaries overwrite each other's interactions. The data file
//! is the one thing every instance that would write it must open.
//!
//! Living with SQLite on the same file: SQLite locks with `fcntl(2)` byte-range locks, which on
//! Linux are independent of `flock(2)` locks on local filesystems, so this lock neither blocks
//! nor is blocked by SQLite's own. (On NFS, Linux emulates `flock` with `fcntl`; SQLite's WAL
//! mode does not work on NFS anyway.) One rule follows from `fcntl` semantics: closing *any*
//! descriptor of a file drops all of the process's `fcntl` locks on it, SQLite's included. So
//! the descriptor held here stays open as long as the process (the server keeps the lock until
//! it exits), and nothing else opens the data file outside SQLite ([`InstanceLock::names_it`]
//! only `stat`s the path).
//!
//! A lock is not the last line: a primary also holds a fencing epoch stored in the database
//! (see `storage::sqlite`), so one that somehow lost its lock stops writing once another
//! instance has taken the file over.
//!
//! On PostgreSQL there is no local data file to lock: [`Guard`] holds instead a session-level
//! advisory lock in the database ([`DbLock`]), which PostgreSQL releases when the holder's
//! connection ends (its process died, or its host did and TCP keepalives noticed). The fencing
//! epoch stored in the database is what finally fences there too: an old primary whose lock
//! connection was lost (PostgreSQL restarted, a network cut) but which still runs finds the
//! newer epoch at its next transaction and stops. UCS-only instances on PostgreSQL take no
//! lock at all ([`Guard::Shared`]): UCS keeps no state outside the database, so every instance
//! is active and a standby is pointless.
//!
//! This is the only module with `unsafe` (one libc call, see the SAFETY note).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::storage::config::Location;

/// A held lock; dropping it (or dying) releases it.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    /// The data file's path, as given.
    pub path: PathBuf,
}

fn flock(file: &File, blocking: bool) -> std::io::Result<bool> {
    let op = libc::LOCK_EX | if blocking { 0 } else { libc::LOCK_NB };
    loop {
        // SAFETY: `flock` only reads the integer fd, which stays open for the call because
        // `file` is borrowed; it touches no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !blocking => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Open (creating it empty if missing: SQLite takes an empty file as an empty database) the
/// data file, following symlinks, so that every name of it leads to the same lock.
fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

impl InstanceLock {
    /// Take the lock on the data file `db` if free. `Ok(None)` if another instance holds it.
    ///
    /// # Errors
    /// The data file cannot be opened.
    pub fn try_acquire(db: &Path) -> std::io::Result<Option<InstanceLock>> {
        let file = open(db)?;
        Ok(flock(&file, false)?.then_some(InstanceLock {
            file,
            path: db.to_path_buf(),
        }))
    }

    /// Wait until the lock on the data file `db` is free, then take it.
    ///
    /// # Errors
    /// The data file cannot be opened or locked.
    pub fn acquire_blocking(db: &Path) -> std::io::Result<InstanceLock> {
        let file = open(db)?;
        flock(&file, true)?;
        Ok(InstanceLock {
            file,
            path: db.to_path_buf(),
        })
    }

    /// Whether `path` names the locked file now (same device and inode). Checked after SQLite
    /// has opened the path: had the file been replaced in between (or while a standby waited),
    /// the lock would guard a file nobody writes.
    ///
    /// # Errors
    /// `path` or the locked file cannot be examined.
    pub fn names_it(&self, path: &Path) -> std::io::Result<bool> {
        let held = self.file.metadata()?;
        let named = std::fs::metadata(path)?;
        Ok(held.dev() == named.dev() && held.ino() == named.ino())
    }
}

/// The key of the instance lock among PostgreSQL advisory locks (any fixed number: advisory
/// locks are per database, so deployments with their own database do not meet).
const DB_LOCK_KEY: i64 = 7_203_012;

/// The instance lock on PostgreSQL: a session-level advisory lock held by a connection of its
/// own, for the life of the process.
pub struct DbLock {
    /// Holding the connection holds the lock.
    _client: Box<postgres::Client>,
}

impl std::fmt::Debug for DbLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbLock(..)")
    }
}

impl DbLock {
    /// Take the lock if free; `Ok(None)` if another instance holds it.
    ///
    /// # Errors
    /// The database cannot be reached.
    pub fn try_acquire(cfg: &postgres::Config) -> Result<Option<DbLock>, postgres::Error> {
        let mut client = crate::storage::postgres::connect(cfg)?;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&DB_LOCK_KEY])?
            .get(0);
        Ok(got.then(|| DbLock {
            _client: Box::new(client),
        }))
    }

    /// Wait until the lock is free, then take it.
    ///
    /// # Errors
    /// The database cannot be reached, or the connection broke while waiting.
    pub fn acquire_blocking(cfg: &postgres::Config) -> Result<DbLock, postgres::Error> {
        let mut client = crate::storage::postgres::connect(cfg)?;
        client.execute("SELECT pg_advisory_lock($1)", &[&DB_LOCK_KEY])?;
        Ok(DbLock {
            _client: Box::new(client),
        })
    }
}

/// The lock could not be taken (or waited for).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The SQLite data file cannot be opened or locked.
    #[error("lock on the data file: {0}")]
    Io(#[from] std::io::Error),
    /// PostgreSQL could not be reached for its advisory lock.
    #[error("lock in the database: {0}")]
    Postgres(#[from] postgres::Error),
}

/// What keeps a second primary out, whichever the backend.
#[derive(Debug)]
pub enum Guard {
    /// The `flock` on the SQLite data file.
    File(InstanceLock),
    /// The advisory lock in the PostgreSQL database.
    Database(DbLock),
    /// Nothing to keep out: a UCS-only instance on PostgreSQL, where every instance is active.
    Shared,
}

impl Guard {
    /// Take the guard for data at `at` if free (`Ok(None)`: another instance holds it).
    /// `exclusive`: whether this instance keeps state outside the database (the Interaction
    /// Server role does); without it, on PostgreSQL, nothing is taken.
    ///
    /// # Errors
    /// [`LockError`].
    pub fn try_acquire(at: &Location, exclusive: bool) -> Result<Option<Guard>, LockError> {
        Ok(match at {
            Location::Sqlite { path, .. } => InstanceLock::try_acquire(path)?.map(Guard::File),
            Location::Postgres(_) if !exclusive => Some(Guard::Shared),
            Location::Postgres(c) => DbLock::try_acquire(c)?.map(Guard::Database),
        })
    }

    /// Wait for the guard of data at `at`, then take it (see [`Guard::try_acquire`]).
    ///
    /// # Errors
    /// [`LockError`].
    pub fn acquire_blocking(at: &Location, exclusive: bool) -> Result<Guard, LockError> {
        Ok(match at {
            Location::Sqlite { path, .. } => Guard::File(InstanceLock::acquire_blocking(path)?),
            Location::Postgres(_) if !exclusive => Guard::Shared,
            Location::Postgres(c) => Guard::Database(DbLock::acquire_blocking(c)?),
        })
    }

    /// Whether this instance is the only writer of what it holds (and so must fence).
    pub fn exclusive(&self) -> bool {
        !matches!(self, Guard::Shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let a = InstanceLock::try_acquire(&db).unwrap().unwrap();
        assert!(InstanceLock::try_acquire(&db).unwrap().is_none());
        drop(a);
        assert!(InstanceLock::try_acquire(&db).unwrap().is_some());
    }

    #[test]
    fn every_name_of_the_file_shares_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let a = InstanceLock::try_acquire(&db).unwrap().unwrap();
        let sym = dir.path().join("sym.db");
        std::os::unix::fs::symlink(&db, &sym).unwrap();
        let hard = dir.path().join("hard.db");
        std::fs::hard_link(&db, &hard).unwrap();
        assert!(InstanceLock::try_acquire(&sym).unwrap().is_none());
        assert!(InstanceLock::try_acquire(&hard).unwrap().is_none());
        assert!(a.names_it(&sym).unwrap());
        // The path now names another file: the lock no longer guards it.
        std::fs::remove_file(&db).unwrap();
        std::fs::write(&db, b"").unwrap();
        assert!(!a.names_it(&db).unwrap());
    }
}
