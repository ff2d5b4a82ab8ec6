//! The DB worker: one dedicated thread owns the [`Store`] and runs every storage operation,
//! with **group commit**.
//!
//! How the group commit works: callers (connection tasks for UCS, the engine for interactions)
//! push [`Work`] items on a channel and go on. The worker blocks for the first item, then takes
//! every item already waiting (up to `group_commit_max`), opens ONE transaction, runs them all in
//! arrival order, and commits once — with `synchronous=FULL` that is one WAL fsync for the whole
//! batch. Only after the commit returns does it call each item's [`Finish`], which is where the
//! response is sent: so a write is acknowledged only once durable, and under load the fsync
//! cost is shared by as many operations as arrived while the previous batch was committing.
//! Reads ride the same queue (they are cheap and keep per-connection ordering: a read that
//! follows a write sees it) and are also answered after the commit, since they may have read
//! the batch's uncommitted writes. If the commit fails, every item gets the error (`INTERNAL`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use crate::storage::{Store, StoreError};

/// Called after the batch's commit with its outcome; sends the response.
pub type Finish = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// Runs inside the batch transaction; returns what to do once it is committed.
pub type Work = Box<dyn FnOnce(&mut dyn Store) -> Finish + Send>;

/// Group-commit counters (read by the admin `stats` command).
#[derive(Debug, Default)]
pub struct DbStats {
    /// Transactions committed (or failed).
    pub batches: AtomicU64,
    /// Operations run.
    pub ops: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
}

/// Handle to the DB worker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    tx: mpsc::Sender<Work>,
    /// Group-commit counters.
    pub stats: Arc<DbStats>,
}

impl Db {
    /// Start the worker thread on `store`.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(mut store: Box<dyn Store>, max_batch: usize) -> std::io::Result<Db> {
        let (tx, rx) = mpsc::channel::<Work>();
        let stats = Arc::new(DbStats::default());
        let st = stats.clone();
        std::thread::Builder::new()
            .name("db-worker".into())
            .spawn(move || run(store.as_mut(), &rx, max_batch.max(1), &st))?;
        Ok(Db { tx, stats })
    }

    /// Queue work. False if the worker is gone.
    pub fn submit(&self, w: Work) -> bool {
        self.tx.send(w).is_ok()
    }
}

fn run(store: &mut dyn Store, rx: &mpsc::Receiver<Work>, max_batch: usize, stats: &DbStats) {
    let mut batch: Vec<Work> = Vec::with_capacity(max_batch);
    let mut finishes: Vec<Finish> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(n, Ordering::Relaxed);
        stats.max_batch.fetch_max(n, Ordering::Relaxed);
        let began = store.begin();
        for w in batch.drain(..) {
            finishes.push(w(store));
        }
        let res = match began {
            Ok(()) => store.commit(),
            Err(e) => Err(e),
        };
        if let Err(e) = &res {
            tracing::error!("group commit of {} operations failed: {e}", finishes.len());
            store.rollback();
        }
        for f in finishes.drain(..) {
            f(res.as_ref().map(|_| ()));
        }
    }
    tracing::info!("db worker stopped");
}
