//! The DB worker: one dedicated thread owns the [`Store`] and runs every storage operation,
//! with **group commit**.
//!
//! On PostgreSQL an instance may open several connections (`[storage] connections`): then
//! there is one worker per connection (a *lane*), each with its own queue and group commit,
//! as below. The Interaction Server and GMS use lane 0 only (their operations depend on
//! each other's order); UCS operations go to the lane of their session, so one session's
//! operations still run in the order they came, while other sessions' commit at the same
//! time on other connections. What one lane commits before it answers, every other lane's
//! next transaction sees (the database's own isolation), so a read anywhere sees every
//! acknowledged write, as across UCS instances.
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
//! the batch's uncommitted writes.
//!
//! What can fail, and what each operation is told (its [`Finish`] gets `Ok` only if its
//! changes were committed):
//! - **The transaction cannot be opened** (`BEGIN` fails, e.g. another process holds the write
//!   lock past `busy_timeout`): no operation of the batch is run at all — running them outside
//!   a transaction would make each write durable on its own while its client is told it failed.
//!   Each gets [`StoreError::NotApplied`].
//! - **One operation fails** (a storage error inside it, e.g. the disk is full): it runs inside
//!   its own SAVEPOINT, so it is rolled back alone, gets [`StoreError::NotApplied`], and the
//!   others of the batch still commit. Any storage error inside an operation rolls it back,
//!   even if the operation went on afterwards: half an operation is never committed.
//! - **SQLite abandons the whole transaction** by itself (it does on a full disk, an I/O error
//!   or out of memory, for statements that have no statement journal): everything the
//!   transaction ran so far is undone, so those operations get [`StoreError::NotApplied`];
//!   the operations not run yet get a new transaction.
//! - **The commit fails**: the outcome is unknown (a failed fsync may still have written), so
//!   every operation of the transaction gets that error.
//! - **Another instance took the data file over** ([`Store::fence_check`], at the start of
//!   every transaction): the batch is not run, and the worker stops for good. Its owner
//!   ([`Db::start_with`]) is told, and the server exits, leaving its standby as the only
//!   primary.
//! - **The connection to the database is gone** (PostgreSQL: `BEGIN` fails on a closed
//!   connection, which the driver does not reopen): the same, the batch refused unapplied and
//!   the worker stopped, so that the process exits to be restarted or replaced by its standby
//!   instead of refusing every request for ever.
//!
//! The queue is bounded in operations (`db_queue`, a [`Gauge`]): [`Db::try_submit`] refuses
//! an operation when that many wait, and its caller answers `OVERLOADED` (not sent). The
//! engine asks first ([`Db::has_room`]) and then submits unconditionally, so that a request it
//! has begun to handle is never refused halfway.
//!
//! An operation may carry a deadline (its request's `request_timeout_ms`): one still queued
//! when its batch is taken past that deadline is not run, and is told [`StoreError::Expired`]
//! (answered `OVERLOADED`, nothing applied). A queue that long is one its clients have likely
//! given up on; running their work late would only delay the requests behind it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use crate::queue::Gauge;
use crate::storage::{BookingRow, ContactRow, HistoryRow, IxnRow, Store, StoreError, StoreResult};

/// Called after the batch's commit with its outcome; sends the response.
pub type Finish = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// Runs inside the batch transaction; returns what to do once it is committed.
pub type Work = Box<dyn FnOnce(&mut dyn Store) -> Finish + Send>;
/// Work with its deadline and the bytes it was counted for, as queued.
struct Job {
    work: Work,
    deadline: Option<Instant>,
    bytes: usize,
}

/// Called once, on the worker thread, when the worker stops, with why.
pub type OnStop = Box<dyn FnOnce(&Stopped) + Send>;

/// Why the DB worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    /// Every [`Db`] handle was dropped (an orderly end).
    #[error("every handle was dropped")]
    Closed,
    /// The store refused to go on writing ([`StoreError::Fenced`]).
    #[error("{0}")]
    Fenced(StoreError),
    /// An operation (or the worker) panicked.
    #[error("panicked: {0}")]
    Panicked(String),
}

/// Group-commit counters (read by the admin `stats` command).
#[derive(Debug, Default)]
pub struct DbStats {
    /// Transactions committed (or failed).
    pub batches: AtomicU64,
    /// Operations run.
    pub ops: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
    /// Operations not run: they waited past their deadline.
    pub expired: AtomicU64,
}

/// Handle to the DB workers. Cheap to clone.
///
/// One worker per database connection (a *lane*; SQLite has one, PostgreSQL as many as
/// `[storage] connections`). Lane 0 takes the Interaction Server's and GMS's work, which
/// must stay in one order; UCS work is spread over all lanes by session
/// ([`Db::try_submit_for`]), so that one session's operations run in the order they came
/// while different sessions commit on different connections at once.
#[derive(Debug, Clone)]
pub struct Db {
    lanes: Arc<[mpsc::Sender<Job>]>,
    /// Operations waiting, against `db_queue`.
    gauge: Arc<Gauge>,
    /// Group-commit counters.
    pub stats: Arc<DbStats>,
}

impl Db {
    /// Start the worker thread on `store`; when it stops, that is logged.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(store: Box<dyn Store>, max_batch: usize) -> std::io::Result<Db> {
        Db::start_with(
            store,
            max_batch,
            (usize::MAX, usize::MAX),
            Box::new(|why| tracing::info!("db worker stopped: {why}")),
        )
    }

    /// Start the worker thread on `store`, admitting `queue.0` operations holding under
    /// `queue.1` bytes at a time through [`Db::try_submit`]; `on_stop` runs on it when it
    /// stops, however it stops (a panic included, where panics unwind).
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start_with(
        store: Box<dyn Store>,
        max_batch: usize,
        queue: (usize, usize),
        on_stop: OnStop,
    ) -> std::io::Result<Db> {
        Db::start_lanes(vec![store], max_batch, queue, on_stop)
    }

    /// [`Db::start_with`] on several stores, one worker thread (lane) each; the first is lane
    /// 0. The queue bound is shared by all lanes; `on_stop` runs once, for the first lane to
    /// stop (a fenced or panicked lane stops the whole server through it).
    ///
    /// # Errors
    /// A thread cannot be spawned (the lanes already started stop when the handle drops).
    ///
    /// # Panics
    /// `stores` is empty.
    pub fn start_lanes(
        stores: Vec<Box<dyn Store>>,
        max_batch: usize,
        queue: (usize, usize),
        on_stop: OnStop,
    ) -> std::io::Result<Db> {
        assert!(!stores.is_empty(), "a DB needs a store");
        let stats = Arc::new(DbStats::default());
        let gauge = Arc::new(Gauge::new(queue.0, queue.1));
        let on_stop = Arc::new(std::sync::Mutex::new(Some(on_stop)));
        let mut lanes = Vec::with_capacity(stores.len());
        for (i, mut store) in stores.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Job>();
            let (st, g, stop) = (stats.clone(), gauge.clone(), on_stop.clone());
            std::thread::Builder::new()
                .name(format!("db-worker-{i}"))
                .spawn(move || {
                    // Unwinding out of `run` is caught so that the owner learns of the death;
                    // the store may be mid-transaction then, but nothing uses it afterwards.
                    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        run(store.as_mut(), &rx, max_batch.max(1), &st, &g)
                    }));
                    let why = match ran {
                        Ok(Ok(())) => Stopped::Closed,
                        Ok(Err(e)) => Stopped::Fenced(e),
                        Err(p) => Stopped::Panicked(panic_text(p.as_ref())),
                    };
                    let first = stop.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(f) = first {
                        f(&why);
                    }
                })?;
            lanes.push(tx);
        }
        Ok(Db {
            lanes: lanes.into(),
            gauge,
            stats,
        })
    }

    /// How many lanes (database connections) this handle spreads work over.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Queue work holding about `bytes` whatever the queue holds (admitted already: see
    /// [`Db::has_room`]), not to be run after `deadline`. False if the worker is gone.
    pub fn submit(&self, work: Work, deadline: Option<Instant>, bytes: usize) -> bool {
        self.gauge.force(bytes);
        let job = Job {
            work,
            deadline,
            bytes,
        };
        let ok = self.lanes[0].send(job).is_ok();
        if !ok {
            self.gauge.done(bytes);
        }
        ok
    }

    /// Queue work if fewer than `db_queue` operations wait, not to be run after `deadline`.
    ///
    /// # Errors
    /// [`Full`] (the work is dropped, not run) if the queue is full or the worker is gone
    /// (`stopped` tells which).
    pub fn try_submit(
        &self,
        work: Work,
        deadline: Option<Instant>,
        bytes: usize,
    ) -> Result<(), Full> {
        self.try_submit_on(0, work, deadline, bytes)
    }

    /// [`Db::try_submit`] on the lane of `session`: every operation of one session goes to
    /// the same lane, so they run (and are answered) in the order they were submitted.
    ///
    /// # Errors
    /// As [`Db::try_submit`].
    pub fn try_submit_for(
        &self,
        session: u64,
        work: Work,
        deadline: Option<Instant>,
        bytes: usize,
    ) -> Result<(), Full> {
        let lane = (session % self.lanes.len() as u64) as usize;
        self.try_submit_on(lane, work, deadline, bytes)
    }

    fn try_submit_on(
        &self,
        lane: usize,
        work: Work,
        deadline: Option<Instant>,
        bytes: usize,
    ) -> Result<(), Full> {
        if !self.gauge.try_take(bytes) {
            return Err(Full { stopped: false });
        }
        let job = Job {
            work,
            deadline,
            bytes,
        };
        if self.lanes[lane].send(job).is_err() {
            self.gauge.done(bytes);
            return Err(Full { stopped: true });
        }
        Ok(())
    }

    /// Whether an operation would be admitted now (see [`Gauge::has_room`]).
    pub fn has_room(&self) -> bool {
        self.gauge.has_room()
    }

    /// The queue's count and cap.
    pub fn gauge(&self) -> &Gauge {
        &self.gauge
    }
}

/// Work refused by [`Db::try_submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// The worker is gone (rather than busy).
    pub stopped: bool,
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-text panic payload".into()
    }
}

/// An operation run, and what it is told after the commit (`None`: committed).
type Done = (Finish, Option<StoreError>);

/// Runs batches until every handle is dropped (`Ok`) or the store is fenced (`Err`).
fn run(
    store: &mut dyn Store,
    rx: &mpsc::Receiver<Job>,
    max_batch: usize,
    stats: &DbStats,
    gauge: &Gauge,
) -> Result<(), StoreError> {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    let mut batch: Vec<Work> = Vec::with_capacity(max_batch);
    let mut done: Vec<Done> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(w) => jobs.push(w),
                Err(_) => break,
            }
        }
        // Taken off the queue: room for as many more. Their bytes stay counted until the
        // batch is finished, since the batch holds them until then: what the queue admits
        // bounds what waits and what runs together.
        let mut held = 0;
        for j in &jobs {
            gauge.done(0);
            held += j.bytes;
        }
        // Work past its deadline is answered without a transaction (which might itself wait
        // for a lock): it is not run at all.
        let now = Instant::now();
        for job in jobs.drain(..) {
            if job.deadline.is_some_and(|d| d < now) {
                stats.expired.fetch_add(1, Ordering::Relaxed);
                let f = (job.work)(&mut Refuse(None));
                done.push((f, Some(StoreError::Expired)));
            } else {
                batch.push(job.work);
            }
        }
        let n = batch.len() as u64;
        let mut fenced = Ok(());
        if n > 0 {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.ops.fetch_add(n, Ordering::Relaxed);
            stats.max_batch.fetch_max(n, Ordering::Relaxed);
            let mut work = batch.drain(..);
            fenced = run_batch(store, &mut work, &mut done);
        }
        for (f, res) in done.drain(..) {
            f(res.as_ref().map_or(Ok(()), Err));
        }
        gauge.release(held);
        fenced?;
    }
    Ok(())
}

/// Run `work` in as few transactions as SQLite allows (one, unless it abandons one itself),
/// pushing each operation's fate on `done`. `Err` only if the store is fenced.
fn run_batch(
    store: &mut dyn Store,
    work: &mut dyn ExactSizeIterator<Item = Work>,
    done: &mut Vec<Done>,
) -> Result<(), StoreError> {
    while work.len() > 0 {
        if let Err(e) = store.begin() {
            tracing::error!(
                "could not open a transaction for {} operations; none of them was run: {e}",
                work.len()
            );
            refuse_all(
                &mut *work,
                done,
                &format!("the transaction could not be opened: {e}"),
            );
            // A store that can never open one again (its connection is gone) stops the worker.
            return match e {
                StoreError::Fenced(_) => Err(e),
                _ => Ok(()),
            };
        }
        if let Err(e) = store.fence_check() {
            store.rollback();
            tracing::error!("{} operations not run: {e}", work.len());
            refuse_all(&mut *work, done, &format!("{e}"));
            return match e {
                StoreError::Fenced(_) => Err(e),
                _ => Ok(()),
            };
        }
        let first = done.len();
        let mut abandoned = None;
        for w in &mut *work {
            if let Err(e) = store.savepoint() {
                refuse(w, done, &format!("savepoint: {e}"));
                abandoned = Some(format!("savepoint: {e}"));
                break;
            }
            let mut t = Tracked {
                inner: &mut *store,
                failed: None,
            };
            let f = w(&mut t);
            let failed = t.failed.take();
            if !store.in_transaction() {
                // SQLite rolled the whole transaction back by itself.
                let why = failed.unwrap_or_else(|| "no error reported".into());
                done.push((f, Some(StoreError::NotApplied(why.clone()))));
                abandoned = Some(why);
                break;
            }
            let kept = match &failed {
                None => store.release(),
                Some(why) => {
                    tracing::error!("a storage operation failed and was rolled back alone: {why}");
                    store.rollback_to()
                }
            };
            if let Err(e) = kept {
                // The savepoint could not be closed: the transaction's state is not known.
                done.push((f, Some(StoreError::NotApplied(format!("savepoint: {e}")))));
                abandoned = Some(format!("savepoint: {e}"));
                break;
            }
            done.push((f, failed.map(StoreError::NotApplied)));
        }
        if let Some(why) = abandoned {
            store.rollback();
            let lost = done.len() - first;
            tracing::error!(
                "a transaction of {lost} operations was rolled back whole ({why}); \
                 {} operations of the batch are left for a new one",
                work.len()
            );
            for d in &mut done[first..] {
                if d.1.is_none() {
                    d.1 = Some(StoreError::NotApplied(format!(
                        "rolled back with its transaction: {why}"
                    )));
                }
            }
            continue;
        }
        if let Err(e) = store.commit() {
            tracing::error!(
                "group commit of {} operations failed: {e}",
                done.len() - first
            );
            store.rollback();
            for d in &mut done[first..] {
                if d.1.is_none() {
                    // Not NotApplied: a commit that fails (in the fsync, say) may still land.
                    d.1 = Some(StoreError::Other(format!("commit failed: {e}")));
                }
            }
        }
    }
    Ok(())
}

/// Run each operation against a store that refuses everything, so that it builds its answer
/// (an error) without touching the data.
fn refuse_all(work: impl Iterator<Item = Work>, done: &mut Vec<Done>, why: &str) {
    for w in work {
        refuse(w, done, why);
    }
}

fn refuse(w: Work, done: &mut Vec<Done>, why: &str) {
    let f = w(&mut Refuse(Some(why)));
    done.push((f, Some(StoreError::NotApplied(why.to_string()))));
}

/// The store an operation sees when it must not run: every call fails, with why (`None`: it
/// waited past its deadline).
struct Refuse<'a>(Option<&'a str>);

impl Refuse<'_> {
    fn no<T>(&self) -> StoreResult<T> {
        Err(match self.0 {
            Some(why) => StoreError::NotApplied(why.to_string()),
            None => StoreError::Expired,
        })
    }
}

/// The store an operation sees when it runs: the real one, minus transaction control, noting
/// whether any call failed (then the operation is rolled back, whatever it did next).
struct Tracked<'a> {
    inner: &'a mut dyn Store,
    failed: Option<String>,
}

impl Tracked<'_> {
    fn note<T>(&mut self, r: StoreResult<T>) -> StoreResult<T> {
        if let Err(e) = &r
            && self.failed.is_none()
        {
            self.failed = Some(e.to_string());
        }
        r
    }

    fn not_here<T>(&mut self) -> StoreResult<T> {
        self.note(Err(StoreError::Other(
            "an operation may not control its transaction".into(),
        )))
    }
}

/// `Store` for the two wrappers, written once: each data call is handed to `$data` as
/// `$call` (the call on a given store), every transaction-control call gets `$ctl`, and
/// `in_transaction` answers `$open`.
macro_rules! wrapper_store {
    ($ty:ty, open = $open:expr, |$s:ident, $call:ident| $data:expr, |$s2:ident| $ctl:expr) => {
        impl Store for $ty {
            fn begin(&mut self) -> StoreResult<()> {
                let $s2 = self;
                $ctl
            }
            fn commit(&mut self) -> StoreResult<()> {
                let $s2 = self;
                $ctl
            }
            fn rollback(&mut self) {
                let $s2 = self;
                let _: StoreResult<()> = $ctl;
            }
            fn in_transaction(&self) -> bool {
                $open
            }
            fn savepoint(&mut self) -> StoreResult<()> {
                let $s2 = self;
                $ctl
            }
            fn release(&mut self) -> StoreResult<()> {
                let $s2 = self;
                $ctl
            }
            fn rollback_to(&mut self) -> StoreResult<()> {
                let $s2 = self;
                $ctl
            }
            fn fence_acquire(&mut self) -> StoreResult<u64> {
                let $s2 = self;
                $ctl
            }
            fn fence_check(&mut self) -> StoreResult<()> {
                let $s2 = self;
                $ctl
            }
            fn contact_create(
                &mut self,
                tenant: u32,
                attrs: &[u8],
                pairs: &[(String, String)],
            ) -> StoreResult<i64> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.contact_create(tenant, attrs, pairs);
                $data
            }
            fn contact_get(&mut self, tenant: u32, id: i64) -> StoreResult<Option<Vec<u8>>> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.contact_get(tenant, id);
                $data
            }
            fn contact_put(
                &mut self,
                tenant: u32,
                id: i64,
                attrs: &[u8],
                pairs: &[(String, String)],
            ) -> StoreResult<bool> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.contact_put(tenant, id, attrs, pairs);
                $data
            }
            fn contact_delete(&mut self, tenant: u32, id: i64) -> StoreResult<bool> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.contact_delete(tenant, id);
                $data
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
                let $s = self;
                let $call = |st: &mut dyn Store| {
                    st.contact_find(tenant, key, value, after, limit, max_bytes)
                };
                $data
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
                let $s = self;
                let $call = |st: &mut dyn Store| {
                    st.history_insert(tenant, contact, interaction, subject, text, now_us)
                };
                $data
            }
            fn history_list(
                &mut self,
                tenant: u32,
                contact: i64,
                before: Option<i64>,
                limit: u32,
                max_bytes: usize,
            ) -> StoreResult<Option<Vec<HistoryRow>>> {
                let $s = self;
                let $call =
                    |st: &mut dyn Store| st.history_list(tenant, contact, before, limit, max_bytes);
                $data
            }
            fn content_get(&mut self, tenant: u32, id: i64) -> StoreResult<Option<String>> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.content_get(tenant, id);
                $data
            }
            fn gms_in_use(
                &mut self,
                tenant: u32,
                group: &str,
                now_us: i64,
            ) -> StoreResult<Vec<(String, Option<String>)>> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.gms_in_use(tenant, group, now_us);
                $data
            }
            fn gms_book(&mut self, row: &BookingRow) -> StoreResult<i64> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.gms_book(row);
                $data
            }
            fn gms_for_number(
                &mut self,
                tenant: u32,
                number: &str,
                now_us: i64,
            ) -> StoreResult<Vec<BookingRow>> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.gms_for_number(tenant, number, now_us);
                $data
            }
            fn gms_release(&mut self, id: i64) -> StoreResult<bool> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.gms_release(id);
                $data
            }
            fn gms_expire(&mut self, now_us: i64) -> StoreResult<u64> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.gms_expire(now_us);
                $data
            }
            fn gms_count(&mut self, tenant: Option<u32>) -> StoreResult<u64> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.gms_count(tenant);
                $data
            }
            fn ixn_load(&mut self) -> StoreResult<Vec<IxnRow>> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.ixn_load();
                $data
            }
            fn ixn_max_id(&mut self) -> StoreResult<u64> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.ixn_max_id();
                $data
            }
            fn ixn_put(&mut self, row: &IxnRow) -> StoreResult<()> {
                let $s = self;
                let $call = |st: &mut dyn Store| st.ixn_put(row);
                $data
            }
        }
    };
}

wrapper_store!(
    Tracked<'_>,
    open = true,
    |s, call| {
        let r = call(&mut *s.inner);
        s.note(r)
    },
    |s| s.not_here()
);

wrapper_store!(Refuse<'_>, open = false, |s, _call| s.no(), |s| s.no());

#[cfg(test)]
mod tests {
    // The worker's other promises (group commit, a failing operation rolled back alone,
    // fencing, the queue's bounds and deadlines, a panic reported) are checked on both
    // backends in `tests/storage_backends.rs`; this one is about SQLite's write lock.
    use super::*;
    use crate::storage::sqlite::{SqliteOptions, SqliteStore};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    fn pairs(v: &str) -> Vec<(String, String)> {
        vec![("k".to_string(), v.to_string())]
    }

    /// A create of contact `k=v`; `saw_err` is set if the call failed.
    fn create(v: &'static str, saw_err: Arc<AtomicBool>) -> Work {
        Box::new(move |s: &mut dyn Store| -> Finish {
            if s.contact_create(1, v.as_bytes(), &pairs(v)).is_err() {
                saw_err.store(true, Ordering::Relaxed);
            }
            Box::new(|_| {})
        })
    }

    fn found(s: &mut SqliteStore, v: &str) -> usize {
        s.contact_find(1, "k", v, 0, 10, usize::MAX).unwrap().len()
    }

    #[test]
    fn a_failed_begin_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let opts = SqliteOptions {
            busy_timeout: Duration::from_millis(50),
            ..SqliteOptions::default()
        };
        let mut s = SqliteStore::open_opts(&path, &opts).unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let saw_err = Arc::new(AtomicBool::new(false));
        let batch = vec![create("a", saw_err.clone()), create("b", saw_err.clone())];
        let mut done = Vec::new();
        run_batch(&mut s, &mut batch.into_iter(), &mut done).unwrap();
        other.execute_batch("ROLLBACK").unwrap();
        assert!(
            done.iter()
                .all(|d| d.1.as_ref().is_some_and(StoreError::nothing_applied))
        );
        assert!(
            saw_err.load(Ordering::Relaxed),
            "the operations saw a refusing store"
        );
        assert_eq!((found(&mut s, "a"), found(&mut s, "b")), (0, 0));
    }
}
