//! The PostgreSQL backend (the `postgres` crate, synchronous: it runs on the DB worker's own
//! thread, like SQLite).
//!
//! Why PostgreSQL: one server machine is the limit of an embedded file. PostgreSQL is shared
//! by several core-server instances (UCS scale-out), has transactional locks for fencing
//! across machines, and streaming replication for a site's hot copy.
//!
//! It keeps the [`Store`] contract as the SQLite backend does:
//! - one explicit transaction per group-commit batch, a savepoint per operation (an error
//!   inside PostgreSQL's transaction aborts it until `ROLLBACK TO SAVEPOINT`, which the DB
//!   worker does for the failed operation alone), and a commit that returns once durable
//!   (`synchronous_commit` as the server sets it; `on` by default);
//! - fencing checked at the start of every transaction, and held until its end (`FOR SHARE`):
//!   by the epochs of the tenant leases the instance holds (the Interaction Server on
//!   PostgreSQL, see `lease.rs`), or by the one epoch of a `fence` table, as on SQLite;
//! - interaction ids from blocks of 2^32 per instance (`interaction_blocks`), since
//!   instances serving different tenants hand out ids at once;
//! - the same tables, with PostgreSQL types (`BIGINT` tenants hold every `u32`, `BYTEA` for
//!   encoded attributes), created by its own ordered migrations (`deskmux_schema`), shared in
//!   spirit with `schema.rs`;
//! - GMS bookings of one group serialised across instances by a transaction-scoped advisory
//!   lock, since two instances may book at once (within one instance the DB worker already
//!   serialises them).

use std::collections::HashMap;

use postgres::{Client, NoTls, Statement};

use super::lease::Held;
use super::{BookingRow, ContactRow, HistoryRow, IxnRow, IxnState, Store, StoreError, StoreResult};

/// Every migration, in order; `deskmux_schema.version` says how many a database has had.
const MIGRATIONS: &[&str] = &[
    // 1: contacts, history, interactions and the fencing epoch.
    "
CREATE TABLE IF NOT EXISTS contacts(
    id BIGSERIAL PRIMARY KEY,
    tenant BIGINT NOT NULL,
    attrs BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS contact_attrs(
    contact BIGINT NOT NULL,
    tenant BIGINT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS contact_attrs_kv ON contact_attrs(tenant, key, value, contact);
CREATE INDEX IF NOT EXISTS contact_attrs_c ON contact_attrs(contact);
CREATE TABLE IF NOT EXISTS history(
    id BIGSERIAL PRIMARY KEY,
    tenant BIGINT NOT NULL,
    contact BIGINT NOT NULL,
    interaction BIGINT NOT NULL,
    subject TEXT NOT NULL,
    text TEXT NOT NULL,
    len BIGINT NOT NULL,
    created_us BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS history_c ON history(contact, id);
CREATE TABLE IF NOT EXISTS interactions(
    id BIGINT PRIMARY KEY,
    tenant BIGINT NOT NULL,
    queue TEXT NOT NULL,
    props BYTEA NOT NULL,
    state BIGINT NOT NULL,
    owner TEXT,
    qpos BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS interactions_open ON interactions(state) WHERE state < 2;
CREATE TABLE IF NOT EXISTS fence(
    id INT PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL);
INSERT INTO fence(id, epoch) VALUES (1, 0) ON CONFLICT DO NOTHING;
",
    // 2: per-agent credentials and the reconnect token key.
    "
CREATE TABLE IF NOT EXISTS credentials(
    tenant BIGINT NOT NULL,
    agent TEXT NOT NULL,
    kind BIGINT NOT NULL,
    hash TEXT NOT NULL,
    generation BIGINT NOT NULL,
    disabled BIGINT NOT NULL DEFAULT 0,
    updated_us BIGINT NOT NULL,
    PRIMARY KEY(tenant, agent));
CREATE TABLE IF NOT EXISTS auth_meta(
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL);
",
    // 3: GMS access-number bookings.
    "
CREATE TABLE IF NOT EXISTS gms_bookings(
    id BIGSERIAL PRIMARY KEY,
    tenant BIGINT NOT NULL,
    grp TEXT NOT NULL,
    number TEXT NOT NULL,
    code TEXT,
    caller TEXT NOT NULL,
    user_data BYTEA NOT NULL,
    booked_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS gms_bookings_number ON gms_bookings(tenant, number);
CREATE INDEX IF NOT EXISTS gms_bookings_group ON gms_bookings(tenant, grp);
CREATE INDEX IF NOT EXISTS gms_bookings_expiry ON gms_bookings(expires_us);
",
    // 4: tenant ownership leases (see `lease.rs`), and blocks of interaction ids, so that
    // instances serving different tenants on one database never hand out the same id.
    "
CREATE TABLE IF NOT EXISTS tenant_lease(
    tenant BIGINT PRIMARY KEY,
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_us BIGINT NOT NULL);
CREATE SEQUENCE IF NOT EXISTS interaction_blocks;
",
];

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        StoreError::Other(format!("postgres: {e}"))
    }
}

/// A connection to a PostgreSQL database holding deskmux's tables.
pub struct PgStore {
    client: Client,
    /// Prepared statements by their text (prepared once per connection).
    prepared: HashMap<&'static str, Statement>,
    /// Whether this store opened a transaction that is still open.
    open: bool,
    /// The fencing epoch this instance holds, once it has taken the database over.
    epoch: Option<i64>,
    /// The tenant leases this instance holds, if it fences by them instead of `epoch`.
    leases: Option<Held>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string may hold a password: never shown.
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// Bring the database `client` is connected to up to the latest migration, under an
/// advisory lock so that instances starting together do not migrate it twice.
///
/// # Errors
/// A database newer than this build, or a failed migration (rolled back).
pub fn migrate(client: &mut Client) -> StoreResult<()> {
    let mut tx = client.transaction()?;
    // Any fixed key: it only orders migrations among deskmux instances.
    tx.execute("SELECT pg_advisory_xact_lock(7203011)", &[])?;
    // `IF NOT EXISTS` on a migrated database is the usual case, not news for the log.
    tx.batch_execute("SET LOCAL client_min_messages = warning")?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS deskmux_schema(version BIGINT NOT NULL)")?;
    let found: Option<i64> = tx
        .query_opt("SELECT version FROM deskmux_schema", &[])?
        .map(|r| r.get(0));
    let latest = MIGRATIONS.len() as i64;
    // -1: a fresh database, whose version row is written below.
    let found = found.unwrap_or(-1);
    if found > latest {
        return Err(StoreError::Other(format!(
            "the database's schema is version {found}, newer than this core-server knows \
             ({latest}): run the core-server that wrote it, or a newer one"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tracing::info!("database schema: migration {}", i + 1);
        tx.batch_execute(sql)?;
    }
    if found < 0 {
        tx.execute(
            "INSERT INTO deskmux_schema(version) VALUES ($1)",
            &[&latest],
        )?;
    } else {
        tx.execute("UPDATE deskmux_schema SET version = $1", &[&latest])?;
    }
    tx.commit()?;
    Ok(())
}

/// Connect to the database `cfg` names (plain TCP or a Unix socket: see
/// `storage::config::StorageConfig::host`).
///
/// # Errors
/// The connection failed.
pub fn connect(cfg: &postgres::Config) -> Result<Client, postgres::Error> {
    cfg.connect(NoTls)
}

impl PgStore {
    /// Connect with `url` (a `postgres://` URL or `key=value` parameters) and migrate.
    ///
    /// # Errors
    /// The URL does not parse, or the connection or the migration failed.
    pub fn connect(url: &str) -> StoreResult<PgStore> {
        let cfg: postgres::Config = url.parse()?;
        PgStore::open(&cfg)
    }

    /// Connect with `cfg` and migrate.
    ///
    /// # Errors
    /// The connection or the migration failed.
    pub fn open(cfg: &postgres::Config) -> StoreResult<PgStore> {
        let mut client = connect(cfg)?;
        migrate(&mut client)?;
        Ok(PgStore {
            client,
            prepared: HashMap::new(),
            open: false,
            epoch: None,
            leases: None,
        })
    }

    /// Fence by the tenant leases `held` (taken with `lease::Leases::try_take`): every
    /// transaction then checks that each of them is still this instance's.
    pub fn hold_leases(&mut self, held: Held) {
        self.leases = Some(held);
    }

    /// Have PostgreSQL end this connection's session when it sits idle inside a transaction
    /// for longer than `d`. Why: a batch holds its tenants' lease rows `FOR SHARE` until it
    /// commits, and a taker's `UPDATE` of them waits for it; an owner paused in the middle of
    /// a batch (a long GC, a frozen VM, SIGSTOP) would hold every standby off for as long as
    /// it stays paused. With the limit its session ends, the taker goes on, and the owner,
    /// resumed, finds its connection gone and stops (nothing of that batch was committed).
    ///
    /// # Errors
    /// The database.
    pub fn limit_idle_in_transaction(&mut self, d: std::time::Duration) -> StoreResult<()> {
        self.client.batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {}",
            d.as_millis().max(1)
        ))?;
        Ok(())
    }

    /// [`Store::fence_check`] by tenant leases: their rows read `FOR SHARE` (so that a taker
    /// waits for this batch), each epoch still ours.
    fn lease_check(&mut self) -> StoreResult<()> {
        let Some(held) = self.leases.clone() else {
            return Ok(());
        };
        let st = self.st(
            "SELECT tenant, epoch FROM tenant_lease WHERE tenant = ANY($1)
             ORDER BY tenant FOR SHARE",
        )?;
        let now: Vec<(i64, i64)> = self
            .client
            .query(&st, &[&held.tenants])?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mine: Vec<(i64, i64)> = held.tenants.iter().copied().zip(held.epochs).collect();
        if now != mine {
            return Err(StoreError::Fenced(format!(
                "tenant leases (tenant, epoch) are now {now:?}, this instance's {mine:?}: \
                 another instance has taken a tenant over"
            )));
        }
        Ok(())
    }

    fn st(&mut self, sql: &'static str) -> StoreResult<Statement> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.prepared.insert(sql, s.clone());
        Ok(s)
    }

    fn put_pairs(&mut self, tenant: u32, id: i64, pairs: &[(String, String)]) -> StoreResult<()> {
        let ins = self
            .st("INSERT INTO contact_attrs(contact, tenant, key, value) VALUES ($1, $2, $3, $4)")?;
        for (k, v) in pairs {
            self.client
                .execute(&ins, &[&id, &i64::from(tenant), k, v])?;
        }
        Ok(())
    }
}

impl Store for PgStore {
    fn begin(&mut self) -> StoreResult<()> {
        if let Err(e) = self.client.batch_execute("BEGIN") {
            // The driver does not reconnect, and a new connection would not hold what this
            // instance held (its lock, its place): the instance must stop, and be restarted
            // (or its standby take over).
            if self.client.is_closed() {
                return Err(StoreError::Fenced(format!(
                    "the connection to PostgreSQL was lost: {e}"
                )));
            }
            return Err(e.into());
        }
        self.open = true;
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        self.open = false;
        self.client.batch_execute("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) {
        self.open = false;
        let _ = self.client.batch_execute("ROLLBACK");
    }

    fn in_transaction(&self) -> bool {
        // A connection that broke took its transaction with it.
        self.open && !self.client.is_closed()
    }

    fn savepoint(&mut self) -> StoreResult<()> {
        self.client.batch_execute("SAVEPOINT op")?;
        Ok(())
    }

    fn release(&mut self) -> StoreResult<()> {
        self.client.batch_execute("RELEASE SAVEPOINT op")?;
        Ok(())
    }

    fn rollback_to(&mut self) -> StoreResult<()> {
        self.client
            .batch_execute("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")?;
        Ok(())
    }

    fn fence_acquire(&mut self) -> StoreResult<u64> {
        let row = self.client.query_one(
            "UPDATE fence SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
            &[],
        )?;
        let epoch: i64 = row.get(0);
        self.epoch = Some(epoch);
        Ok(epoch.max(0) as u64)
    }

    fn fence_check(&mut self) -> StoreResult<()> {
        self.lease_check()?;
        let Some(mine) = self.epoch else {
            return Ok(());
        };
        // FOR SHARE: the row stays locked until this batch's transaction ends, so that a newer
        // instance's `fence_acquire` (an UPDATE of it) waits for the batch to commit or roll
        // back. Once that newer instance has its epoch, no batch of this one can commit: what
        // it then reads (the interactions to recover) is final.
        let st = self.st("SELECT epoch FROM fence WHERE id = 1 FOR SHARE")?;
        let now: i64 = self.client.query_one(&st, &[])?.get(0);
        if now != mine {
            return Err(StoreError::Fenced(format!(
                "the database's fencing epoch is {now}, this instance's is {mine}: \
                 another instance has taken it over"
            )));
        }
        Ok(())
    }

    fn contact_create(
        &mut self,
        tenant: u32,
        attrs: &[u8],
        pairs: &[(String, String)],
    ) -> StoreResult<i64> {
        let st = self.st("INSERT INTO contacts(tenant, attrs) VALUES ($1, $2) RETURNING id")?;
        let id: i64 = self
            .client
            .query_one(&st, &[&i64::from(tenant), &attrs])?
            .get(0);
        self.put_pairs(tenant, id, pairs)?;
        Ok(id)
    }

    fn contact_get(&mut self, tenant: u32, id: i64) -> StoreResult<Option<Vec<u8>>> {
        let st = self.st("SELECT attrs FROM contacts WHERE id = $1 AND tenant = $2")?;
        Ok(self
            .client
            .query_opt(&st, &[&id, &i64::from(tenant)])?
            .map(|r| r.get(0)))
    }

    fn contact_put(
        &mut self,
        tenant: u32,
        id: i64,
        attrs: &[u8],
        pairs: &[(String, String)],
    ) -> StoreResult<bool> {
        let st = self.st("UPDATE contacts SET attrs = $3 WHERE id = $1 AND tenant = $2")?;
        if self
            .client
            .execute(&st, &[&id, &i64::from(tenant), &attrs])?
            == 0
        {
            return Ok(false);
        }
        let del = self.st("DELETE FROM contact_attrs WHERE contact = $1")?;
        self.client.execute(&del, &[&id])?;
        self.put_pairs(tenant, id, pairs)?;
        Ok(true)
    }

    fn contact_delete(&mut self, tenant: u32, id: i64) -> StoreResult<bool> {
        let st = self.st("DELETE FROM contacts WHERE id = $1 AND tenant = $2")?;
        if self.client.execute(&st, &[&id, &i64::from(tenant)])? == 0 {
            return Ok(false);
        }
        let attrs = self.st("DELETE FROM contact_attrs WHERE contact = $1")?;
        self.client.execute(&attrs, &[&id])?;
        let hist = self.st("DELETE FROM history WHERE contact = $1")?;
        self.client.execute(&hist, &[&id])?;
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
        let st = self.st("SELECT c.id, c.attrs FROM contacts c WHERE c.id IN
               (SELECT contact FROM contact_attrs
                WHERE tenant = $1 AND key = $2 AND value = $3 AND contact > $4)
             AND c.tenant = $1 ORDER BY c.id LIMIT $5")?;
        let rows = self.client.query(
            &st,
            &[&i64::from(tenant), &key, &value, &after, &i64::from(limit)],
        )?;
        let rows = rows.into_iter().map(|r| {
            Ok::<_, StoreError>(ContactRow {
                id: r.get(0),
                attrs: r.get(1),
            })
        });
        super::page(rows, max_bytes, |r| r.attrs.len())
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
        if self.contact_get(tenant, contact)?.is_none() {
            return Ok(None);
        }
        let st = self.st(
            "INSERT INTO history(tenant, contact, interaction, subject, text, len, created_us)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )?;
        let id: i64 = self
            .client
            .query_one(
                &st,
                &[
                    &i64::from(tenant),
                    &contact,
                    &interaction,
                    &subject,
                    &text,
                    &(text.len() as i64),
                    &now_us,
                ],
            )?
            .get(0);
        Ok(Some(id))
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
        let st = self.st(
            "SELECT id, interaction, subject, created_us, len FROM history
             WHERE contact = $1 AND tenant = $2 AND id < $3 ORDER BY id DESC LIMIT $4",
        )?;
        let before = before.unwrap_or(i64::MAX);
        let rows = self.client.query(
            &st,
            &[&contact, &i64::from(tenant), &before, &i64::from(limit)],
        )?;
        let rows = rows.into_iter().map(|r| {
            Ok::<_, StoreError>(HistoryRow {
                id: r.get(0),
                interaction: r.get(1),
                subject: r.get(2),
                created_us: r.get(3),
                len: r.get(4),
            })
        });
        Ok(Some(super::page(rows, max_bytes, |r| r.subject.len())?))
    }

    fn content_get(&mut self, tenant: u32, id: i64) -> StoreResult<Option<String>> {
        let st = self.st("SELECT text FROM history WHERE id = $1 AND tenant = $2")?;
        Ok(self
            .client
            .query_opt(&st, &[&id, &i64::from(tenant)])?
            .map(|r| r.get(0)))
    }

    fn gms_in_use(
        &mut self,
        tenant: u32,
        group: &str,
        now_us: i64,
    ) -> StoreResult<Vec<(String, Option<String>)>> {
        // Bookings of one group are made one at a time across instances: this lock lasts
        // until the batch's transaction ends.
        let lock = self.st("SELECT pg_advisory_xact_lock($1, hashtext($2))")?;
        self.client
            .execute(&lock, &[&(i64::from(tenant) as i32), &group])?;
        let st = self.st("SELECT number, code FROM gms_bookings
             WHERE tenant = $1 AND grp = $2 AND expires_us > $3")?;
        Ok(self
            .client
            .query(&st, &[&i64::from(tenant), &group, &now_us])?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn gms_book(&mut self, row: &BookingRow) -> StoreResult<i64> {
        let st = self.st(
            "INSERT INTO gms_bookings(tenant, grp, number, code, caller, user_data,
                                      booked_us, expires_us)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )?;
        Ok(self
            .client
            .query_one(
                &st,
                &[
                    &i64::from(row.tenant),
                    &row.group,
                    &row.number,
                    &row.code,
                    &row.caller,
                    &row.user_data,
                    &row.booked_us,
                    &row.expires_us,
                ],
            )?
            .get(0))
    }

    fn gms_for_number(
        &mut self,
        tenant: u32,
        number: &str,
        now_us: i64,
    ) -> StoreResult<Vec<BookingRow>> {
        let st = self.st(
            "SELECT id, grp, code, caller, user_data, booked_us, expires_us FROM gms_bookings
             WHERE tenant = $1 AND number = $2 AND expires_us > $3 ORDER BY id DESC",
        )?;
        Ok(self
            .client
            .query(&st, &[&i64::from(tenant), &number, &now_us])?
            .into_iter()
            .map(|r| BookingRow {
                id: r.get(0),
                tenant,
                group: r.get(1),
                number: number.to_string(),
                code: r.get(2),
                caller: r.get(3),
                user_data: r.get(4),
                booked_us: r.get(5),
                expires_us: r.get(6),
            })
            .collect())
    }

    fn gms_release(&mut self, id: i64) -> StoreResult<bool> {
        let st = self.st("DELETE FROM gms_bookings WHERE id = $1")?;
        Ok(self.client.execute(&st, &[&id])? > 0)
    }

    fn gms_expire(&mut self, now_us: i64) -> StoreResult<u64> {
        let st = self.st("DELETE FROM gms_bookings WHERE expires_us <= $1")?;
        Ok(self.client.execute(&st, &[&now_us])?)
    }

    fn gms_count(&mut self, tenant: Option<u32>) -> StoreResult<u64> {
        let n: i64 = match tenant {
            Some(t) => {
                let st = self.st("SELECT count(*) FROM gms_bookings WHERE tenant = $1")?;
                self.client.query_one(&st, &[&i64::from(t)])?.get(0)
            }
            None => {
                let st = self.st("SELECT count(*) FROM gms_bookings")?;
                self.client.query_one(&st, &[])?.get(0)
            }
        };
        Ok(n.max(0) as u64)
    }

    fn ixn_load(&mut self) -> StoreResult<Vec<IxnRow>> {
        let st = self.st(
            "SELECT id, tenant, queue, props, state, owner, qpos FROM interactions
             WHERE state < 2 ORDER BY qpos, id",
        )?;
        Ok(self
            .client
            .query(&st, &[])?
            .into_iter()
            .map(|r| IxnRow {
                id: r.get::<_, i64>(0).max(0) as u64,
                tenant: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                queue: r.get(2),
                props: r.get(3),
                state: IxnState::from_code(r.get(4)),
                owner: r.get(5),
                qpos: r.get(6),
            })
            .collect())
    }

    fn ixn_max_id(&mut self) -> StoreResult<u64> {
        // A block of 2^32 ids of this instance's own, above every stored id: instances
        // serving other tenants of the database allocate from blocks of their own.
        let st = self.st(
            "SELECT GREATEST(COALESCE(MAX(id), 0), nextval('interaction_blocks') << 32)
             FROM interactions",
        )?;
        let m: i64 = self.client.query_one(&st, &[])?.get(0);
        Ok(m.max(0) as u64)
    }

    fn ixn_put(&mut self, row: &IxnRow) -> StoreResult<()> {
        let st = self.st(
            "INSERT INTO interactions(id, tenant, queue, props, state, owner, qpos)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET tenant = EXCLUDED.tenant, queue = EXCLUDED.queue,
               props = EXCLUDED.props, state = EXCLUDED.state, owner = EXCLUDED.owner,
               qpos = EXCLUDED.qpos",
        )?;
        self.client.execute(
            &st,
            &[
                &(row.id as i64),
                &i64::from(row.tenant),
                &row.queue,
                &row.props,
                &row.state.code(),
                &row.owner,
                &row.qpos,
            ],
        )?;
        Ok(())
    }
}
