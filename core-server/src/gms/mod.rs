//! GMS: access numbers for mobile and web clients, and the switch's call matching (the seed
//! on Genesys Mobile Services across sites).
//!
//! A client asks for a number to dial (`ACCESS_REQUEST`: resource group, its own number, user
//! data, optionally an access code); its call then reaches the switch, which asks which
//! request it belongs to (`ACCESS_MATCH`: the dialled number, the caller's number and/or the
//! code) and gets the user data back; the booking is released. Resource groups come in the
//! seed's locking modes ([`config::Locking`]); a pool that is exhausted answers in the
//! not-sent class, so that a client may ask the other site.
//!
//! Why it runs on the DB worker: every booking and match is a transaction of the worker's
//! group commit, so that it is acknowledged only once durable (it survives `kill -9`), and
//! two requests for the last free number are serialised there: exactly one gets it. Nothing
//! is kept in memory but the round-robin cursors (lost on restart: the next number is then
//! the first free one, which is still a free one).
//!
//! Expiry runs in the server ([`sweep`]): expired bookings are deleted every
//! `expiry_sweep_ms`, and a booking past its expiry is never matched or counted as holding
//! its number even before that, so nothing leaks and nothing lingers.
//!
//! Ways in: the HTTP/JSON API ([`http`]) and the binary protocol (service 3, through
//! the connection like the other services).

pub mod audit;
pub mod config;
pub mod http;
pub mod proto;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::{Db, Finish};
use crate::storage::{BookingRow, Store, StoreError};
use crate::wire::{self, Pairs};
use config::{GmsConfig, Group, Locking, Selection};

/// What a client asks for (`ACCESS_REQUEST`).
#[derive(Debug, Clone)]
pub struct AccessRequest {
    /// Tenant (the authenticated one).
    pub tenant: u32,
    /// Resource group.
    pub group: String,
    /// The client's own phone number: the switch sees it as the caller.
    pub caller: String,
    /// Data handed back to the switch on the match.
    pub user_data: Pairs,
    /// Access code digits; `None`: the group's `code_len`.
    pub code_len: Option<u8>,
}

/// A booking made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booked {
    /// Booking id.
    pub id: i64,
    /// The number to dial.
    pub number: String,
    /// The code to key in after it, if any.
    pub code: Option<String>,
    /// When the booking lapses, ms since the UNIX epoch.
    pub expires_ms: i64,
}

/// What the switch asks (`ACCESS_MATCH`).
#[derive(Debug, Clone)]
pub struct AccessMatch {
    /// Tenant (the authenticated one).
    pub tenant: u32,
    /// The number the call came in on.
    pub number: String,
    /// The caller's number, if the switch has it.
    pub caller: Option<String>,
    /// The access code the caller keyed in, if any.
    pub code: Option<String>,
}

/// A match found: the original request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Booking id.
    pub id: i64,
    /// Its resource group.
    pub group: String,
    /// The requester's number.
    pub caller: String,
    /// Its user data.
    pub user_data: Pairs,
}

/// Why a request or match was not served. Each maps to one protocol error code and retry
/// class (see the binary protocol and the HTTP API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GmsError {
    /// The request itself is wrong (rejected: fix it, do not retry).
    #[error("{0}")]
    Malformed(String),
    /// No such resource group in this tenant (rejected).
    #[error("no resource group {0:?}")]
    UnknownGroup(String),
    /// Every number of the pool is booked (not sent: retry later, or the other site).
    #[error("no free access number in group {0:?}; try again later or the other site")]
    Exhausted(String),
    /// No live booking matches (rejected).
    #[error("no booking matches")]
    NotFound,
    /// The DB worker's queue is full (not sent).
    #[error("storage queue full (db_queue)")]
    Overloaded,
    /// Storage failed; `applied` says whether it may have been applied (outcome unknown) or
    /// is known not to have been (not sent).
    #[error("storage failed: {why}")]
    Storage {
        /// Whether the outcome is unknown.
        maybe_applied: bool,
        /// What failed.
        why: String,
    },
}

impl GmsError {
    fn storage(e: &StoreError) -> GmsError {
        GmsError::Storage {
            maybe_applied: !e.nothing_applied(),
            why: e.to_string(),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct GmsStats {
    /// Bookings made.
    pub booked: AtomicU64,
    /// Requests refused because the pool was exhausted.
    pub exhausted: AtomicU64,
    /// Matches found (bookings released).
    pub matched: AtomicU64,
    /// Matches that found nothing.
    pub unmatched: AtomicU64,
    /// Bookings removed at expiry.
    pub expired: AtomicU64,
}

/// The service: its groups, the DB worker, the cursors.
#[derive(Debug, Clone)]
pub struct Gms {
    groups: Arc<HashMap<(u32, String), Arc<Group>>>,
    db: Db,
    /// Round-robin position per group.
    cursors: Arc<Mutex<HashMap<(u32, String), usize>>>,
    /// Counters.
    pub stats: Arc<GmsStats>,
    sweep: Duration,
}

type Reply<T> = Box<dyn FnOnce(Result<T, GmsError>) + Send>;

impl Gms {
    /// The service over `db` with the groups of `cfg`.
    pub fn new(cfg: &GmsConfig, db: Db) -> Gms {
        let groups = cfg
            .groups
            .iter()
            .map(|g| ((g.tenant, g.name.clone()), Arc::new(g.clone())))
            .collect();
        Gms {
            groups: Arc::new(groups),
            db,
            cursors: Arc::default(),
            stats: Arc::default(),
            sweep: Duration::from_millis(cfg.expiry_sweep_ms),
        }
    }

    /// Book a number for `r`, not after `deadline`; `reply` gets the booking once it is
    /// committed, or why not.
    pub fn request(&self, r: AccessRequest, deadline: Instant, reply: Reply<Booked>) {
        if let Err(e) = check_number("caller", &r.caller) {
            return reply(Err(e));
        }
        if let Err(e) = crate::limits::check_pairs(&r.user_data, crate::limits::ListKind::Props) {
            return reply(Err(GmsError::Malformed(format!(
                "user_data: {}",
                e.message()
            ))));
        }
        let Some(group) = self.groups.get(&(r.tenant, r.group.clone())).cloned() else {
            return reply(Err(GmsError::UnknownGroup(r.group)));
        };
        let code_len = r.code_len.unwrap_or(group.code_len);
        if code_len > config::MAX_CODE {
            return reply(Err(GmsError::Malformed(format!(
                "code_len must be 0 to {}",
                config::MAX_CODE
            ))));
        }
        if !self.db.has_room() {
            return reply(Err(GmsError::Overloaded));
        }
        let cursors = self.cursors.clone();
        let stats = self.stats.clone();
        let user_data = wire::encode_pairs(&r.user_data);
        let bytes = user_data.len() + r.caller.len() + 64;
        let work = Box::new(move |s: &mut dyn Store| -> Finish {
            let r = book(
                s, &group, &cursors, r.tenant, &r.caller, user_data, code_len,
            );
            Box::new(move |c: Result<(), &StoreError>| {
                let out = match (c, r) {
                    (Ok(()), Ok(b)) => {
                        stats.booked.fetch_add(1, Ordering::Relaxed);
                        Ok(b)
                    }
                    (Ok(()), Err(e)) => {
                        if matches!(e, GmsError::Exhausted(_)) {
                            stats.exhausted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e)
                    }
                    (Err(e), _) => Err(GmsError::storage(e)),
                };
                reply(out);
            })
        });
        // Refused only when the worker is gone, which ends the process (see `crate::server`).
        self.db.submit(work, Some(deadline), bytes);
    }

    /// Find and release the booking `m` names, not after `deadline`; `reply` gets the
    /// request once the release is committed, or why not.
    pub fn match_call(&self, m: AccessMatch, deadline: Instant, reply: Reply<Matched>) {
        if let Err(e) = check_number("number", &m.number) {
            return reply(Err(e));
        }
        if m.caller.is_none() && m.code.is_none() {
            return reply(Err(GmsError::Malformed(
                "a match needs the caller's number or the access code".into(),
            )));
        }
        if !self.db.has_room() {
            return reply(Err(GmsError::Overloaded));
        }
        let stats = self.stats.clone();
        let bytes = m.number.len() + 64;
        let work = Box::new(move |s: &mut dyn Store| -> Finish {
            let r = take(s, &m);
            Box::new(move |c: Result<(), &StoreError>| {
                let out = match (c, r) {
                    (Ok(()), Ok(found)) => {
                        stats.matched.fetch_add(1, Ordering::Relaxed);
                        Ok(found)
                    }
                    (Ok(()), Err(e)) => {
                        if e == GmsError::NotFound {
                            stats.unmatched.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e)
                    }
                    (Err(e), _) => Err(GmsError::storage(e)),
                };
                reply(out);
            })
        });
        self.db.submit(work, Some(deadline), bytes);
    }

    /// Remove expired bookings every `expiry_sweep_ms`, until the DB worker is gone.
    pub async fn sweep(self) {
        let mut tick = tokio::time::interval(self.sweep);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let stats = self.stats.clone();
            let work = Box::new(move |s: &mut dyn Store| -> Finish {
                let n = s.gms_expire(wire::now_us());
                Box::new(move |c: Result<(), &StoreError>| {
                    if let (Ok(()), Ok(n)) = (c, n) {
                        stats.expired.fetch_add(n, Ordering::Relaxed);
                    }
                })
            });
            // A full queue skips one sweep (expired bookings are ignored until the next); a
            // stopped worker ends the process anyway.
            if let Err(crate::db::Full { stopped: true }) = self.db.try_submit(work, None, 0) {
                return;
            }
        }
    }
}

fn check_number(what: &str, n: &str) -> Result<(), GmsError> {
    if n.is_empty() || n.len() > config::MAX_NUMBER {
        return Err(GmsError::Malformed(format!("{what} must be 1 to 64 bytes")));
    }
    Ok(())
}

/// `n` random decimal digits (rejection-sampled bytes, so every digit is equally likely).
fn digits(n: u8) -> Result<String, GmsError> {
    let mut out = String::with_capacity(n.into());
    while out.len() < usize::from(n) {
        let bytes = crate::auth::secret::random_bytes(16)
            .map_err(|e| GmsError::Malformed(format!("randomness: {e}")))?;
        for b in bytes.into_iter().filter(|b| *b < 250) {
            if out.len() < usize::from(n) {
                out.push(char::from(b'0' + b % 10));
            }
        }
    }
    Ok(out)
}

fn random_index(len: usize) -> Result<usize, GmsError> {
    let b = crate::auth::secret::random_bytes(8)
        .map_err(|e| GmsError::Malformed(format!("randomness: {e}")))?;
    let mut v = [0u8; 8];
    v.copy_from_slice(&b);
    Ok((u64::from_le_bytes(v) % len as u64) as usize)
}

/// In the DB worker's transaction: choose a number (and code) for the request, store the
/// booking.
fn book(
    s: &mut dyn Store,
    g: &Group,
    cursors: &Mutex<HashMap<(u32, String), usize>>,
    tenant: u32,
    caller: &str,
    user_data: Vec<u8>,
    code_len: u8,
) -> Result<Booked, GmsError> {
    let now = wire::now_us();
    let in_use = |s: &mut dyn Store| {
        s.gms_in_use(tenant, &g.name, now)
            .map_err(|e| GmsError::storage(&e))
    };
    let (number, code) = match g.locking {
        Locking::Pool => {
            if let Some(pick) = quick_pick(s, g, cursors, tenant, now)? {
                let code = (code_len > 0).then(|| digits(code_len)).transpose()?;
                return store_booking(s, g, tenant, caller, user_data, now, pick, code);
            }
            let in_use = in_use(s)?;
            let taken: HashSet<&str> = in_use.iter().map(|(n, _)| n.as_str()).collect();
            let free: Vec<&String> = g
                .numbers
                .iter()
                .filter(|n| !taken.contains(n.as_str()))
                .collect();
            if free.is_empty() {
                return Err(GmsError::Exhausted(g.name.clone()));
            }
            let pick = match g.selection {
                Selection::Random => free[random_index(free.len())?].clone(),
                Selection::RoundRobin => {
                    let mut c = cursors.lock().map_err(|_| GmsError::NotFound)?;
                    let at = c.entry((tenant, g.name.clone())).or_insert(0);
                    // The first free number at or after the cursor, in configuration order.
                    let n = (0..g.numbers.len())
                        .map(|i| &g.numbers[(*at + i) % g.numbers.len()])
                        .find(|n| !taken.contains(n.as_str()))
                        .cloned()
                        .ok_or_else(|| GmsError::Exhausted(g.name.clone()))?;
                    let pos = g.numbers.iter().position(|x| *x == n).unwrap_or(0);
                    *at = (pos + 1) % g.numbers.len();
                    n
                }
            };
            let code = (code_len > 0).then(|| digits(code_len)).transpose()?;
            (pick, code)
        }
        Locking::None => {
            let in_use = in_use(s)?;
            let number = match g.selection {
                Selection::Random => g.numbers[random_index(g.numbers.len())?].clone(),
                Selection::RoundRobin => {
                    let mut c = cursors.lock().map_err(|_| GmsError::NotFound)?;
                    let at = c.entry((tenant, g.name.clone())).or_insert(0);
                    let n = g.numbers[*at % g.numbers.len()].clone();
                    *at = (*at + 1) % g.numbers.len();
                    n
                }
            };
            // Without locking the code is what tells bookings of one number apart: it must
            // be unique among them (a few draws; a space that crowded counts as exhausted).
            let code = if code_len == 0 {
                None
            } else {
                let used: HashSet<&str> = in_use
                    .iter()
                    .filter(|(n, _)| *n == number)
                    .filter_map(|(_, c)| c.as_deref())
                    .collect();
                let mut fresh = None;
                for _ in 0..16 {
                    let c = digits(code_len)?;
                    if !used.contains(c.as_str()) {
                        fresh = Some(c);
                        break;
                    }
                }
                Some(fresh.ok_or_else(|| GmsError::Exhausted(g.name.clone()))?)
            };
            (number, code)
        }
    };
    store_booking(s, g, tenant, caller, user_data, now, number, code)
}

/// How many numbers [`quick_pick`] tries before the full scan.
const QUICK_TRIES: usize = 16;

/// In a pool, a free number found by looking a few candidates up by number (an index lookup
/// each), before [`book`] falls back to reading every booking the group holds, whose cost
/// grows with the bookings held: with a pool that is mostly free, a booking then costs the
/// same however many numbers are held. Same choice as the full scan: `random` draws numbers
/// uniformly and keeps the first free one (rejection sampling, so uniform over the free ones);
/// `round_robin` takes the first free one at or after the cursor. `None`: none of the
/// candidates was free.
fn quick_pick(
    s: &mut dyn Store,
    g: &Group,
    cursors: &Mutex<HashMap<(u32, String), usize>>,
    tenant: u32,
    now: i64,
) -> Result<Option<String>, GmsError> {
    let mut free = |n: &str| -> Result<bool, GmsError> {
        let rows = s
            .gms_for_number(tenant, n, now)
            .map_err(|e| GmsError::storage(&e))?;
        // Another group's booking of the number (a `none` group may list it) does not hold it
        // in this pool.
        Ok(!rows.iter().any(|b| b.group == g.name))
    };
    let len = g.numbers.len();
    match g.selection {
        Selection::Random => {
            for _ in 0..QUICK_TRIES {
                let n = &g.numbers[random_index(len)?];
                if free(n)? {
                    return Ok(Some(n.clone()));
                }
            }
        }
        Selection::RoundRobin => {
            let mut c = cursors.lock().map_err(|_| GmsError::NotFound)?;
            let at = c.entry((tenant, g.name.clone())).or_insert(0);
            for i in 0..QUICK_TRIES.min(len) {
                let n = &g.numbers[(*at + i) % len];
                if free(n)? {
                    *at = (*at + i + 1) % len;
                    return Ok(Some(n.clone()));
                }
            }
        }
    }
    Ok(None)
}

/// Store the booking of `number` (and `code`) for the request; what the client is told.
#[allow(clippy::too_many_arguments)]
fn store_booking(
    s: &mut dyn Store,
    g: &Group,
    tenant: u32,
    caller: &str,
    user_data: Vec<u8>,
    now: i64,
    number: String,
    code: Option<String>,
) -> Result<Booked, GmsError> {
    let expires_us = now.saturating_add(i64::try_from(g.booking_ttl_ms * 1000).unwrap_or(i64::MAX));
    let row = BookingRow {
        id: 0,
        tenant,
        group: g.name.clone(),
        number: number.clone(),
        code: code.clone(),
        caller: caller.to_string(),
        user_data,
        booked_us: now,
        expires_us,
    };
    let id = s.gms_book(&row).map_err(|e| GmsError::storage(&e))?;
    Ok(Booked {
        id,
        number,
        code,
        expires_ms: expires_us / 1000,
    })
}

/// In the DB worker's transaction: the booking `m` names, released.
///
/// The rule, per booking of the dialled number (newest first): if it has an access code,
/// the code must be the one keyed in; if it has none, the caller's number must be its
/// requester's. In a pool (locking) the number has at most one live booking, and the rule
/// still holds, so that a stray call to a booked number takes nobody's data; without locking
/// the first booking that passes it is the one.
fn take(s: &mut dyn Store, m: &AccessMatch) -> Result<Matched, GmsError> {
    let now = wire::now_us();
    let rows = s
        .gms_for_number(m.tenant, &m.number, now)
        .map_err(|e| GmsError::storage(&e))?;
    let found = rows.into_iter().find(|b| match (&b.code, &m.code) {
        (Some(want), Some(got)) => crate::auth::secret::ct_eq(got.as_bytes(), want.as_bytes()),
        (Some(_), None) => false,
        (None, _) => m.caller.as_deref() == Some(b.caller.as_str()),
    });
    let Some(b) = found else {
        return Err(GmsError::NotFound);
    };
    if !s.gms_release(b.id).map_err(|e| GmsError::storage(&e))? {
        return Err(GmsError::NotFound);
    }
    let user_data =
        wire::read_pairs(deskmux_codec::BodyRef::new(&b.user_data), "").unwrap_or_default();
    Ok(Matched {
        id: b.id,
        group: b.group,
        caller: b.caller,
        user_data,
    })
}
