//! The warm-standby lock: an exclusive `flock(2)` on a lock file next to the data file.
//!
//! The primary holds the lock for its whole life; the kernel releases it when the process dies
//! (kill -9 included), so a standby blocked in [`InstanceLock::acquire_blocking`] wakes up and
//! takes over. This is the only module with `unsafe` (one libc call, see the SAFETY note).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A held lock; dropping it (or dying) releases it.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    /// The lock file's path.
    pub path: PathBuf,
}

/// The lock file for the data file `db`: `<db>.lock`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
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

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

impl InstanceLock {
    /// Take the lock if free. `Ok(None)` if another instance holds it.
    ///
    /// # Errors
    /// The lock file cannot be opened.
    pub fn try_acquire(db: &Path) -> std::io::Result<Option<InstanceLock>> {
        let path = lock_path(db);
        let file = open(&path)?;
        Ok(flock(&file, false)?.then_some(InstanceLock { _file: file, path }))
    }

    /// Wait until the lock is free, then take it.
    ///
    /// # Errors
    /// The lock file cannot be opened or locked.
    pub fn acquire_blocking(db: &Path) -> std::io::Result<InstanceLock> {
        let path = lock_path(db);
        let file = open(&path)?;
        flock(&file, true)?;
        Ok(InstanceLock { _file: file, path })
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
}
