//! Tenant ownership leases on PostgreSQL: which Interaction Server instance acts for a tenant.
//!
//! Why leases: an Interaction Server keeps each tenant's queues and agents in memory, so only
//! one instance may act for a tenant at a time. On PostgreSQL several instances share the
//! database, each serving the tenants of its configuration (the Interaction Server is
//! partitioned by tenant), and a standby on another host must be able to take a tenant over
//! without a file lock. A lease is a row per tenant (`tenant_lease`): its owner, a fencing
//! epoch, and an expiry in the database's clock (never the instances' clocks).
//!
//! - **Taking** ([`Leases::try_take`]): all of the instance's tenants, or none (one
//!   transaction): a lease is taken only once expired, and taking it raises its epoch.
//! - **Renewing** ([`Leases::renew`], every third of `lease_ms` by the holder's renewal
//!   thread): only while the epoch is still the holder's. A holder that finds a lease taken,
//!   or that could not renew for two thirds of `lease_ms` (cut off from the database), stops
//!   itself, before a standby can take the lease.
//! - **Fencing** (`PgStore::fence_check`, at the start of every group commit): the batch reads
//!   its tenants' lease rows `FOR SHARE` and runs only if every epoch is still its own. A taker
//!   raises the epoch with an `UPDATE` of those rows, so it waits for a batch in flight, and
//!   once it has raised it the old holder commits nothing more.
//! - **Releasing** ([`Leases::release`], at a graceful shutdown): the leases expire at once,
//!   so that a restart or a standby takes them without waiting out `lease_ms`.

use std::time::Duration;

use postgres::Client;

use super::{StoreError, StoreResult};

/// Microseconds since the UNIX epoch, in the database's clock.
const NOW_US: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

/// The leases an instance holds: (tenant, epoch), one per tenant it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Tenants, in the order of `epochs`.
    pub tenants: Vec<i64>,
    /// The epoch of each tenant's lease, as taken.
    pub epochs: Vec<i64>,
}

/// Lease operations on one connection.
pub struct Leases {
    client: Client,
    owner: String,
    lease: Duration,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("owner", &self.owner)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

fn lease_us(lease: Duration) -> i64 {
    i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)
}

impl Leases {
    /// Lease operations for `owner` (a name for operators: the epochs are what count), on a
    /// connection of their own to the migrated database.
    pub fn new(client: Client, owner: String, lease: Duration) -> Leases {
        Leases {
            client,
            owner,
            lease,
        }
    }

    /// Take the leases of all `tenants` if every one of them is free (never taken, or
    /// expired); `Ok(None)` (nothing taken) if any is held. `lock_wait` bounds the wait for a
    /// holder's batch in flight (a paused holder must not stop the taker for good).
    ///
    /// # Errors
    /// The database.
    pub fn try_take(&mut self, tenants: &[u32], lock_wait: Duration) -> StoreResult<Option<Held>> {
        let ids: Vec<i64> = tenants.iter().map(|&t| i64::from(t)).collect();
        let mut tx = self.client.transaction()?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}",
            lock_wait.as_millis().max(1)
        ))?;
        tx.execute(
            "INSERT INTO tenant_lease(tenant, owner, epoch, expires_us)
             SELECT t, '', 0, 0 FROM unnest($1::bigint[]) AS t
             ON CONFLICT (tenant) DO NOTHING",
            &[&ids],
        )?;
        let rows = match tx.query(
            &format!(
                "UPDATE tenant_lease SET owner = $2, epoch = epoch + 1,
                   expires_us = {NOW_US} + $3
                 WHERE tenant = ANY($1) AND expires_us < {NOW_US}
                 RETURNING tenant, epoch"
            ),
            &[&ids, &self.owner, &lease_us(self.lease)],
        ) {
            Ok(r) => r,
            // The holder's batch held a row past `lock_wait`: not free yet.
            Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if rows.len() != ids.len() {
            // Some are held: take none (the transaction is rolled back on drop).
            return Ok(None);
        }
        tx.commit()?;
        let mut held: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        held.sort_unstable();
        Ok(Some(Held {
            tenants: held.iter().map(|h| h.0).collect(),
            epochs: held.iter().map(|h| h.1).collect(),
        }))
    }

    /// The owners of the unexpired leases among `tenants`.
    ///
    /// # Errors
    /// The database.
    pub fn owners(&mut self, tenants: &[u32]) -> StoreResult<Vec<String>> {
        let ids: Vec<i64> = tenants.iter().map(|&t| i64::from(t)).collect();
        let rows = self.client.query(
            &format!(
                "SELECT DISTINCT owner FROM tenant_lease
                 WHERE tenant = ANY($1) AND expires_us >= {NOW_US}"
            ),
            &[&ids],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Let every lease of `held` that is still ours expire now (a graceful stop): the next
    /// instance takes them at once. The epochs stay, so a batch of ours still in flight is
    /// fenced once they are taken.
    ///
    /// # Errors
    /// The database.
    pub fn release(&mut self, held: &Held) -> StoreResult<()> {
        self.client.execute(
            "UPDATE tenant_lease AS l SET expires_us = 0
             FROM unnest($1::bigint[], $2::bigint[]) AS h(tenant, epoch)
             WHERE l.tenant = h.tenant AND l.epoch = h.epoch",
            &[&held.tenants, &held.epochs],
        )?;
        Ok(())
    }

    /// Extend every lease of `held` by `lease_ms` from now. [`StoreError::Fenced`] if any of
    /// them has been taken (a newer epoch).
    ///
    /// # Errors
    /// Fenced, or the database.
    pub fn renew(&mut self, held: &Held) -> StoreResult<()> {
        let n = self.client.execute(
            &format!(
                "UPDATE tenant_lease AS l SET expires_us = {NOW_US} + $3
                 FROM unnest($1::bigint[], $2::bigint[]) AS h(tenant, epoch)
                 WHERE l.tenant = h.tenant AND l.epoch = h.epoch"
            ),
            &[&held.tenants, &held.epochs, &lease_us(self.lease)],
        )?;
        if n as usize != held.tenants.len() {
            return Err(StoreError::Fenced(format!(
                "{} of the leases of tenants {:?} were taken by another instance",
                held.tenants.len() - n as usize,
                held.tenants
            )));
        }
        Ok(())
    }
}
