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
//! On PostgreSQL there is no local data file to lock: an Interaction Server instance holds
//! instead the ownership leases of its tenants in the database ([`LeaseGuard`], see
//! `storage::lease`), each with a fencing epoch that every group commit checks, so that
//! instances serving different tenants share one database, a standby on any host takes the
//! tenants over once their leases expire, and an old owner that was cut off (a pause, a
//! network cut) commits nothing once they are taken. UCS-only instances on PostgreSQL take
//! nothing ([`Guard::Shared`]): UCS keeps no state outside the database, so every instance is
//! active and a standby is pointless.
//!
//! This is the only module with `unsafe` (one libc call, see the SAFETY note).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::storage::StoreError;
use crate::storage::config::Location;
use crate::storage::lease::{Held, Leases};

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

/// The Interaction Server's hold on its tenants on PostgreSQL: their leases (see
/// `storage::lease`), renewed by a thread of their own for the life of the process, which
/// ends the process when they are lost or cannot be renewed in time.
#[derive(Debug)]
pub struct LeaseGuard {
    /// The leases held (tenants and epochs), for the store's fencing check.
    pub held: Held,
    /// The lease connection, shared with the renewal thread.
    leases: Arc<Mutex<Leases>>,
    /// Set once released: the renewal and its watchdog stop.
    released: Arc<AtomicBool>,
}

impl LeaseGuard {
    fn leases(cfg: &Config, pg: &postgres::Config) -> Result<Leases, LockError> {
        let mut client = crate::storage::postgres::connect(pg)?;
        crate::storage::postgres::migrate(&mut client)?;
        let owner = format!("{} (pid {})", cfg.instance, std::process::id());
        Ok(Leases::new(client, owner, cfg.storage.lease()))
    }

    fn tenants(cfg: &Config) -> Vec<u32> {
        cfg.tenants.iter().map(|t| t.id).collect()
    }

    /// Take the leases of every tenant of `cfg` in database `pg` if they are all free;
    /// `Ok(None)` if any is held by another instance. Leases held only by an earlier life of
    /// this instance (its `instance` name: a crash, a kill -9, then a restart) are waited out,
    /// for at most one lease and a half: an instance restarted at once starts, as on SQLite
    /// (where the kernel drops a dead process's lock), instead of failing for `lease_ms`.
    ///
    /// # Errors
    /// The database.
    pub fn try_take(cfg: &Config, pg: &postgres::Config) -> Result<Option<LeaseGuard>, LockError> {
        let mut leases = LeaseGuard::leases(cfg, pg)?;
        let lease = cfg.storage.lease();
        let tenants = LeaseGuard::tenants(cfg);
        let mine = format!("{} (pid ", cfg.instance);
        let give_up = Instant::now() + lease + lease / 2;
        loop {
            if let Some(held) = leases.try_take(&tenants, lease / 4)? {
                return Ok(Some(LeaseGuard::keep(leases, held, lease)?));
            }
            let owners = leases.owners(&tenants)?;
            if !owners.iter().all(|o| o.starts_with(&mine)) || Instant::now() >= give_up {
                return Ok(None);
            }
            tracing::info!(
                "tenant leases held by an earlier run of this instance: waiting for them to expire"
            );
            std::thread::sleep(lease / 4);
        }
    }

    /// Wait until every tenant of `cfg` in database `pg` is free (its owner stopped renewing and the lease
    /// expired), take them, and keep them.
    ///
    /// # Errors
    /// The database.
    pub fn take_blocking(cfg: &Config, pg: &postgres::Config) -> Result<LeaseGuard, LockError> {
        let mut leases = LeaseGuard::leases(cfg, pg)?;
        let lease = cfg.storage.lease();
        let tenants = LeaseGuard::tenants(cfg);
        loop {
            if let Some(held) = leases.try_take(&tenants, lease / 4)? {
                return LeaseGuard::keep(leases, held, lease);
            }
            // The poll period: a takeover comes at most this long after the expiry.
            std::thread::sleep(lease / 4);
        }
    }

    /// Start renewing `held` every third of `lease`; a watchdog ends the process once no
    /// renewal has succeeded for two thirds of it (before the leases can expire and be taken),
    /// and the renewal itself ends it when a lease has been taken. Both stop once the leases
    /// are released ([`LeaseGuard::release`]).
    fn keep(leases: Leases, held: Held, lease: Duration) -> Result<LeaseGuard, LockError> {
        let start = Instant::now();
        let last_ok = Arc::new(AtomicU64::new(0));
        let released = Arc::new(AtomicBool::new(false));
        let leases = Arc::new(Mutex::new(leases));
        let ms = |since: Instant| u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (renewed, h, conn, done) = (
            last_ok.clone(),
            held.clone(),
            leases.clone(),
            released.clone(),
        );
        std::thread::Builder::new()
            .name("lease-renew".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(lease / 3);
                    let asked = ms(start);
                    let mut leases = conn.lock().unwrap_or_else(|e| e.into_inner());
                    // Checked under the lock: no renewal after the release.
                    if done.load(Ordering::Acquire) {
                        return;
                    }
                    match leases.renew(&h) {
                        Ok(()) => renewed.store(asked, Ordering::Release),
                        Err(e @ StoreError::Fenced(_)) => {
                            tracing::error!("{e}; exiting: this instance acts for them no more");
                            std::process::exit(1);
                        }
                        Err(e) => tracing::warn!("tenant leases not renewed: {e}"),
                    }
                }
            })?;
        let limit = u64::try_from((lease * 2 / 3).as_millis()).unwrap_or(u64::MAX);
        let done = released.clone();
        std::thread::Builder::new()
            .name("lease-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(lease / 12);
                    if done.load(Ordering::Acquire) {
                        return;
                    }
                    if ms(start).saturating_sub(last_ok.load(Ordering::Acquire)) > limit {
                        tracing::error!(
                            "tenant leases not renewed for two thirds of lease_ms; exiting \
                             before another instance may take them"
                        );
                        std::process::exit(1);
                    }
                }
            })?;
        Ok(LeaseGuard {
            held,
            leases,
            released,
        })
    }

    /// A graceful stop: renew no more and let the leases expire now, so that a restart or a
    /// standby takes the tenants at once instead of after `lease_ms`. Blocking (call it off
    /// the async threads).
    ///
    /// # Errors
    /// The database (the leases then expire by themselves).
    pub fn release(&self) -> Result<(), LockError> {
        // A renewal thread that panicked leaves the connection as usable as before.
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        self.released.store(true, Ordering::Release);
        leases.release(&self.held)?;
        Ok(())
    }
}

/// The lock could not be taken (or waited for).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The SQLite data file cannot be opened or locked.
    #[error("lock on the data file: {0}")]
    Io(#[from] std::io::Error),
    /// PostgreSQL could not be reached for the tenant leases.
    #[error("tenant leases: {0}")]
    Postgres(#[from] postgres::Error),
    /// The leases' database failed.
    #[error("tenant leases: {0}")]
    Store(#[from] StoreError),
}

/// What keeps a second primary out, whichever the backend.
#[derive(Debug)]
pub enum Guard {
    /// The `flock` on the SQLite data file.
    File(InstanceLock),
    /// The leases of this instance's tenants in the PostgreSQL database.
    Leases(LeaseGuard),
    /// Nothing to keep out: a UCS-only instance on PostgreSQL, where every instance is active.
    Shared,
}

impl Guard {
    /// Take the guard of `cfg`'s data if free (`Ok(None)`: another instance holds it). On
    /// PostgreSQL, an instance running the Interaction Server (which keeps state outside the
    /// database) takes its tenants' leases, and a UCS-only one nothing.
    ///
    /// # Errors
    /// [`LockError`].
    pub fn try_acquire(cfg: &Config) -> Result<Option<Guard>, LockError> {
        Ok(match cfg.location() {
            Location::Sqlite { path, .. } => InstanceLock::try_acquire(&path)?.map(Guard::File),
            Location::Postgres(_) if !cfg.role.ixn() => Some(Guard::Shared),
            Location::Postgres(pg) => LeaseGuard::try_take(cfg, &pg)?.map(Guard::Leases),
        })
    }

    /// Wait for the guard of `cfg`'s data, then take it (see [`Guard::try_acquire`]).
    ///
    /// # Errors
    /// [`LockError`].
    pub fn acquire_blocking(cfg: &Config) -> Result<Guard, LockError> {
        Ok(match cfg.location() {
            Location::Sqlite { path, .. } => Guard::File(InstanceLock::acquire_blocking(&path)?),
            Location::Postgres(_) if !cfg.role.ixn() => Guard::Shared,
            Location::Postgres(pg) => Guard::Leases(LeaseGuard::take_blocking(cfg, &pg)?),
        })
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
