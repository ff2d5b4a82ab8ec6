//! The data layer behind a small trait, so that SQLite (the default) and PostgreSQL (chosen in
//! `[storage]`, see [`config`]) back the same server.
//!
//! The trait is deliberately *primitive*: row-level reads and writes scoped by tenant, plus
//! explicit transaction boundaries. Everything above it (merging attributes, identify-or-create,
//! group commit) lives in [`crate::db`] and works for any backend. Every method takes the
//! tenant and every query filters on it, so a row of another tenant is simply "not found".
//!
//! Attributes and properties are stored as their encoded wire form (a body item list of `str`
//! values, PROTOCOL.md §3): a `CONTACT_GET` answer embeds the stored bytes as they are.

pub mod config;
pub mod copy;
pub mod lease;
pub mod postgres;
pub mod schema;
pub mod sqlite;

/// A storage failure (the answer is `INTERNAL`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite backend failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Anything else (I/O on the data file, corrupt row).
    #[error("storage: {0}")]
    Other(String),
    /// The operation was not applied, and it is known that nothing of it was: its batch's
    /// transaction could not be opened, or it (or its whole transaction) was rolled back.
    /// Retrying it is safe.
    #[error("not applied: {0}")]
    NotApplied(String),
    /// Another instance has taken the data file over (a newer fencing epoch), or the data
    /// file's path now names another file, or (PostgreSQL) the connection to the database was
    /// lost: this instance must not write any more.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The operation waited in the DB worker's queue past its deadline (`request_timeout_ms`)
    /// and was not run.
    #[error("not run: waited past request_timeout_ms")]
    Expired,
}

impl StoreError {
    /// Whether it is known that nothing of the operation was applied (so that it may be
    /// answered in the "not sent" retry class). Any other failure may have applied it.
    pub fn nothing_applied(&self) -> bool {
        matches!(
            self,
            StoreError::NotApplied(_) | StoreError::Fenced(_) | StoreError::Expired
        )
    }
}

/// A GMS booking of an access number (see `crate::gms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingRow {
    /// Booking id (0 before it is stored).
    pub id: i64,
    /// Tenant.
    pub tenant: u32,
    /// Resource group.
    pub group: String,
    /// The access number handed out.
    pub number: String,
    /// The access code, if one was asked for.
    pub code: Option<String>,
    /// The requesting client's phone number.
    pub caller: String,
    /// The request's user data, in wire form (a body item list of `str` values).
    pub user_data: Vec<u8>,
    /// When it was booked, µs since the UNIX epoch.
    pub booked_us: i64,
    /// When it expires, µs since the UNIX epoch.
    pub expires_us: i64,
}

/// A contact: id and its attributes in wire form (an item list of `str` values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRow {
    /// Contact id (unique across tenants).
    pub id: i64,
    /// Encoded attribute items.
    pub attrs: Vec<u8>,
}

/// One history record, without its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// History id.
    pub id: i64,
    /// Interaction id, 0 if none.
    pub interaction: i64,
    /// Subject line.
    pub subject: String,
    /// Creation time, microseconds since the UNIX epoch.
    pub created_us: i64,
    /// Text length in bytes.
    pub len: i64,
}

/// Where a persisted interaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IxnState {
    /// Waiting in its queue (an outstanding invite is not persisted: it is still queued).
    Queued,
    /// Accepted; owned by an agent.
    Owned,
    /// Stopped; kept for history.
    Completed,
}

impl IxnState {
    /// Stable integer code stored in the database.
    pub fn code(self) -> i64 {
        match self {
            IxnState::Queued => 0,
            IxnState::Owned => 1,
            IxnState::Completed => 2,
        }
    }

    /// Inverse of [`IxnState::code`].
    pub fn from_code(c: i64) -> IxnState {
        match c {
            0 => IxnState::Queued,
            1 => IxnState::Owned,
            _ => IxnState::Completed,
        }
    }
}

/// A persisted interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IxnRow {
    /// Interaction id.
    pub id: u64,
    /// Its tenant.
    pub tenant: u32,
    /// The queue it is in (or was last in).
    pub queue: String,
    /// Encoded property items.
    pub props: Vec<u8>,
    /// Queued, owned or completed.
    pub state: IxnState,
    /// Owning agent id when owned.
    pub owner: Option<String>,
    /// Position in its queue: lower is served first.
    pub qpos: i64,
}

/// A page of `rows` bounded in bytes, as every backend pages its list answers: rows are taken
/// in order until their `size` passes `max_bytes` (the row that passes it is included, so a
/// page always makes progress). `rows` may be lazy: no row after the page is read.
///
/// # Errors
/// The first row that fails to read.
pub fn page<T, E>(
    rows: impl IntoIterator<Item = Result<T, E>>,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Result<Vec<T>, E> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let row = row?;
        bytes = bytes.saturating_add(size(&row));
        out.push(row);
        if bytes > max_bytes {
            break;
        }
    }
    Ok(out)
}

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// The storage primitives. Called from one thread (the DB worker), inside explicit
/// transactions opened with [`Store::begin`].
pub trait Store: Send {
    /// Open a write transaction.
    fn begin(&mut self) -> StoreResult<()>;
    /// Commit it; returns once the commit is durable.
    fn commit(&mut self) -> StoreResult<()>;
    /// Abandon it.
    fn rollback(&mut self);
    /// Whether a transaction is open. A backend may abandon a whole transaction by itself on
    /// some errors (SQLite does on a full disk, an I/O error or out of memory), so the DB
    /// worker looks after every operation.
    fn in_transaction(&self) -> bool;
    /// Mark the start of one operation inside the transaction.
    fn savepoint(&mut self) -> StoreResult<()>;
    /// Keep the operation's changes (in the transaction) and forget its mark.
    fn release(&mut self) -> StoreResult<()>;
    /// Undo the operation's changes, and only them, and forget its mark.
    fn rollback_to(&mut self) -> StoreResult<()>;
    /// Become the data file's only writer: raise the fencing epoch stored in the database
    /// and remember it. Returns the new epoch. Called once, after taking the instance lock.
    fn fence_acquire(&mut self) -> StoreResult<u64>;
    /// Inside a transaction, before any write: [`StoreError::Fenced`] if a newer epoch is
    /// stored (another instance took over) or the data file was replaced. Without a
    /// [`Store::fence_acquire`] first, there is nothing to check.
    fn fence_check(&mut self) -> StoreResult<()>;

    /// Create a contact with encoded attributes; `pairs` are the same attributes, indexed for
    /// search. Returns the new id.
    fn contact_create(
        &mut self,
        tenant: u32,
        attrs: &[u8],
        pairs: &[(String, String)],
    ) -> StoreResult<i64>;
    /// A contact's encoded attributes, if it exists in this tenant.
    fn contact_get(&mut self, tenant: u32, id: i64) -> StoreResult<Option<Vec<u8>>>;
    /// Replace a contact's attributes. False if it does not exist in this tenant.
    fn contact_put(
        &mut self,
        tenant: u32,
        id: i64,
        attrs: &[u8],
        pairs: &[(String, String)],
    ) -> StoreResult<bool>;
    /// Delete a contact and its history. False if it does not exist in this tenant.
    fn contact_delete(&mut self, tenant: u32, id: i64) -> StoreResult<bool>;
    /// Contacts whose attribute `key` equals `value` and whose id is over `after`, lowest id
    /// first: at most `limit`, and no more once their attributes add up to over `max_bytes`
    /// (the row that passes it is included, so the caller sees that more remain). The byte
    /// bound keeps one page's memory bounded whatever the rows weigh.
    fn contact_find(
        &mut self,
        tenant: u32,
        key: &str,
        value: &str,
        after: i64,
        limit: u32,
        max_bytes: usize,
    ) -> StoreResult<Vec<ContactRow>>;

    /// Insert a history record; `None` if the contact does not exist in this tenant.
    fn history_insert(
        &mut self,
        tenant: u32,
        contact: i64,
        interaction: i64,
        subject: &str,
        text: &str,
        now_us: i64,
    ) -> StoreResult<Option<i64>>;
    /// A contact's history, newest first, only records with an id under `before` if given: at
    /// most `limit`, and no more once their subjects add up to over `max_bytes` (the row that
    /// passes it is included). `None` if the contact does not exist in this tenant.
    fn history_list(
        &mut self,
        tenant: u32,
        contact: i64,
        before: Option<i64>,
        limit: u32,
        max_bytes: usize,
    ) -> StoreResult<Option<Vec<HistoryRow>>>;
    /// A history record's text.
    fn content_get(&mut self, tenant: u32, id: i64) -> StoreResult<Option<String>>;

    /// The access numbers (and codes) of `group`'s bookings that have not expired at `now_us`.
    fn gms_in_use(
        &mut self,
        tenant: u32,
        group: &str,
        now_us: i64,
    ) -> StoreResult<Vec<(String, Option<String>)>>;
    /// Store a booking; its id.
    fn gms_book(&mut self, row: &BookingRow) -> StoreResult<i64>;
    /// The bookings of `number` in `tenant` that have not expired at `now_us`, newest first.
    fn gms_for_number(
        &mut self,
        tenant: u32,
        number: &str,
        now_us: i64,
    ) -> StoreResult<Vec<BookingRow>>;
    /// Remove a booking (matched); whether it was there.
    fn gms_release(&mut self, id: i64) -> StoreResult<bool>;
    /// Remove every booking expired at `now_us`; how many.
    fn gms_expire(&mut self, now_us: i64) -> StoreResult<u64>;
    /// Bookings held (expired or not), in `tenant` or in all.
    fn gms_count(&mut self, tenant: Option<u32>) -> StoreResult<u64>;

    /// All queued and owned interactions (restart recovery).
    fn ixn_load(&mut self) -> StoreResult<Vec<IxnRow>>;
    /// An id above which this instance may hand out interaction ids: the highest stored
    /// (0 if none) on SQLite; on PostgreSQL, where instances serving different tenants share
    /// the table, the start of a block of ids of this instance's own.
    fn ixn_max_id(&mut self) -> StoreResult<u64>;
    /// Insert or replace an interaction.
    fn ixn_put(&mut self, row: &IxnRow) -> StoreResult<()>;
}
