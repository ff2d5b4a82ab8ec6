//! Who gets in: agent credentials, reconnect tokens and lockout, checked off the I/O tasks.
//!
//! Why a pool of its own: an argon2id verification takes tens of milliseconds of CPU by
//! design. Run on a connection task it would stall that task's runtime thread; run without a
//! bound, a login storm would take every core. So hellos are checked by `auth.threads` threads
//! fed by a bounded queue: a full queue answers `OVERLOADED` (not sent, retry) at once, and the
//! rest of the server keeps its CPU. Each thread has its own read connection to the database,
//! and reads the credential afresh on every login, so `core-server creds disable` takes effect
//! at the next login with no reload.
//!
//! Modules, one job each:
//! - [`secret`]: argon2id passwords and HMAC API keys;
//! - [`creds`]: the `credentials` table and the `creds` command's operations;
//! - [`token`]: reconnect tokens;
//! - [`resume`]: resume tokens, which name one session of this process;
//! - [`seal`]: the signed format both kinds of token share;
//! - [`lockout`]: exponential lockout per account and per source address.

pub mod creds;
pub mod lockout;
pub mod resume;
pub mod seal;
pub mod secret;
pub mod token;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TrySendError};

use self::creds::{CredError, CredStore, Kind};
use self::lockout::{Lockout, Rules};
use self::secret::Secret;
use self::token::{Claims, TokenKey};
use crate::storage::config::Location;

/// What a desktop presented.
#[derive(Debug, Clone)]
pub enum Proof {
    /// A password or API key (the hello's `token`).
    Secret(Secret),
    /// A reconnect token from an earlier server hello (the hello's `reconnect`).
    Reconnect(Secret),
}

/// One login attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The tenant claimed in the head.
    pub tenant: u32,
    /// The hello's agent.
    pub agent: String,
    /// Its proof.
    pub proof: Proof,
    /// The peer's address on a direct connection; `None` through a link (the proxy's address
    /// would lock out every desktop behind it).
    pub source: Option<IpAddr>,
}

/// The outcome of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// In: the agent's reconnect token for its next hello.
    Ok {
        /// A fresh reconnect token.
        reconnect: String,
    },
    /// Wrong, unknown, disabled or expired: `AUTH_FAILED`.
    Refused,
    /// Too many failures: `AUTH_FAILED`, try again after this long.
    LockedOut(Duration),
    /// The pool's queue is full: `OVERLOADED`.
    Busy,
    /// The database could not be read: `UNAVAILABLE`.
    Unavailable,
}

/// Settings of the pool (from `[auth]` in the configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The database holding the credentials.
    pub store: Location,
    /// Verification threads.
    pub threads: usize,
    /// Attempts waiting for a thread before new ones get `Busy`.
    pub queue: usize,
    /// Lifetime of a reconnect token.
    pub reconnect_ttl: Duration,
    /// Lockout rules.
    pub lockout: Rules,
    /// A deployment-wide token key; `None`: the one stored in the database.
    pub token_key: Option<Vec<u8>>,
}

/// Counters for the admin `stats` command.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Logins accepted (any proof).
    pub ok: AtomicU64,
    /// Of which with a reconnect token.
    pub ok_reconnect: AtomicU64,
    /// Attempts refused (wrong, unknown, disabled, expired).
    pub refused: AtomicU64,
    /// Attempts refused because the account or source was locked.
    pub locked_out: AtomicU64,
    /// Locks started.
    pub lockouts: AtomicU64,
    /// Attempts refused because the queue was full.
    pub busy: AtomicU64,
    /// argon2 verifications run (those against the decoy hash for unknown or disabled agents
    /// included).
    pub argon2_runs: AtomicU64,
    /// Wall time spent in argon2 verifications, ns.
    pub argon2_ns: AtomicU64,
}

type Reply = Box<dyn FnOnce(Verdict) + Send>;

struct Job {
    attempt: Attempt,
    reply: Reply,
}

struct Inner {
    lockout: Mutex<Lockout>,
    key: TokenKey,
    ttl: Duration,
    stats: Arc<AuthStats>,
    /// A password hash at the default cost, of no one's password (made at the first need):
    /// a password for an unknown or disabled agent is verified against it, so that the answer
    /// takes as long as a wrong password for a real agent and does not tell which agents
    /// exist.
    decoy: std::sync::OnceLock<Option<String>>,
}

/// Handle to the pool. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    tx: Sender<Job>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// The pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The credential tables could not be opened.
    #[error("{0}")]
    Creds(#[from] CredError),
    /// A thread could not be spawned.
    #[error("auth thread: {0}")]
    Io(#[from] std::io::Error),
}

fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// Open the credential tables and start the threads.
    ///
    /// # Errors
    /// [`AuthError`].
    pub fn start(s: &Settings) -> Result<Auth, AuthError> {
        let mut first = CredStore::open_at(&s.store)?;
        let key = match &s.token_key {
            Some(k) => k.clone(),
            None => first.token_key()?,
        };
        let inner = Arc::new(Inner {
            lockout: Mutex::new(Lockout::new(s.lockout)),
            key: TokenKey::new(&key),
            ttl: s.reconnect_ttl,
            stats: Arc::new(AuthStats::default()),
            decoy: std::sync::OnceLock::new(),
        });
        let (tx, rx) = channel::bounded::<Job>(s.queue.max(1));
        let mut store = Some(first);
        for i in 0..s.threads.max(1) {
            let mut store = match store.take() {
                Some(st) => st,
                None => CredStore::open_at(&s.store)?,
            };
            let rx: Receiver<Job> = rx.clone();
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("auth-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        let v = inner.check(&mut store, &job.attempt);
                        (job.reply)(v);
                    }
                })?;
        }
        Ok(Auth { tx, inner })
    }

    /// The counters.
    pub fn stats(&self) -> &AuthStats {
        &self.inner.stats
    }

    /// Check `a`; `reply` is called exactly once with the verdict, on this thread when the
    /// answer is immediate (locked out, queue full), else on a pool thread.
    pub fn check(&self, a: Attempt, reply: impl FnOnce(Verdict) + Send + 'static) {
        let locked = self
            .inner
            .lockout
            .lock()
            .ok()
            .and_then(|l| l.locked(a.tenant, &a.agent, a.source, Instant::now()));
        if let Some(d) = locked {
            self.inner.stats.locked_out.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = crate::lograte::LOGIN_REFUSED.allow() {
                tracing::warn!(tenant = a.tenant, agent = ?a.agent, source = ?a.source, suppressed, "login refused: locked out");
            }
            return reply(Verdict::LockedOut(d));
        }
        match self.tx.try_send(Job {
            attempt: a,
            reply: Box::new(reply),
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => {
                self.inner.stats.busy.fetch_add(1, Ordering::Relaxed);
                (j.reply)(Verdict::Busy);
            }
        }
    }
}

impl Inner {
    /// argon2id: `pw` against `hash`, counted.
    fn verify(&self, pw: &secret::Secret, hash: &str) -> bool {
        let t0 = Instant::now();
        let ok = secret::verify_password(pw, hash);
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.argon2_runs.fetch_add(1, Ordering::Relaxed);
        self.stats.argon2_ns.fetch_add(ns, Ordering::Relaxed);
        ok
    }

    /// The work of a wrong password, for a login that has no hash to check (see `decoy`).
    fn decoy_verify(&self, pw: &secret::Secret) {
        let decoy = self.decoy.get_or_init(|| {
            let nobody = secret::random_bytes(32).ok()?;
            secret::hash_password(&secret::Secret::new(nobody), secret::Argon2Cost::default()).ok()
        });
        if let Some(h) = decoy {
            self.verify(pw, h);
        }
    }

    /// Runs on a pool thread.
    fn check(&self, store: &mut CredStore, a: &Attempt) -> Verdict {
        let now = Instant::now();
        // Checked again: the lock may have started while this attempt waited in the queue.
        if let Some(d) = self
            .lockout
            .lock()
            .ok()
            .and_then(|l| l.locked(a.tenant, &a.agent, a.source, now))
        {
            self.stats.locked_out.fetch_add(1, Ordering::Relaxed);
            return Verdict::LockedOut(d);
        }
        let cred = match store.get(a.tenant, &a.agent) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("credential lookup failed: {e}");
                return Verdict::Unavailable;
            }
        };
        let mut reconnect = false;
        let (good, why) = match (&cred, &a.proof) {
            (None, Proof::Secret(s)) => {
                self.decoy_verify(s);
                (false, "unknown agent")
            }
            (None, _) => (false, "unknown agent"),
            (Some(c), Proof::Secret(s)) if c.disabled => {
                self.decoy_verify(s);
                (false, "credential disabled")
            }
            (Some(c), _) if c.disabled => (false, "credential disabled"),
            (Some(c), Proof::Secret(s)) => match c.kind {
                Kind::Password => (self.verify(s, &c.hash), "wrong password"),
                Kind::ApiKey => (secret::verify_api_key(s, &c.hash), "wrong api key"),
            },
            (Some(c), Proof::Reconnect(t)) => {
                reconnect = true;
                let claims = std::str::from_utf8(t.expose())
                    .ok()
                    .and_then(|t| self.key.open(t));
                match claims {
                    None => (false, "reconnect token not ours"),
                    Some(cl) if cl.tenant != a.tenant || cl.agent != a.agent => {
                        (false, "reconnect token for another agent")
                    }
                    Some(cl) if cl.expires_s <= unix_s() => (false, "reconnect token expired"),
                    Some(cl) if cl.generation != c.generation => {
                        (false, "reconnect token from before a credential change")
                    }
                    Some(_) => (true, ""),
                }
            }
        };
        let Ok(mut lock) = self.lockout.lock() else {
            return Verdict::Unavailable;
        };
        if !good {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            // A refused reconnect token is not a guess (tokens are signed, not guessable):
            // it is what every desktop presents after a failover to a server whose key
            // differs, or after its token expired, and then falls back to its password.
            // Counting those would lock out the source address a whole site shares.
            let locked = !reconnect && lock.failed(a.tenant, &a.agent, a.source, now);
            drop(lock);
            if locked {
                self.stats.lockouts.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(suppressed) = crate::lograte::LOGIN_REFUSED.allow() {
                tracing::warn!(tenant = a.tenant, agent = ?a.agent, source = ?a.source, locked, suppressed, "login refused: {why}");
            }
            return Verdict::Refused;
        }
        lock.succeeded(a.tenant, &a.agent);
        drop(lock);
        self.stats.ok.fetch_add(1, Ordering::Relaxed);
        if reconnect {
            self.stats.ok_reconnect.fetch_add(1, Ordering::Relaxed);
        }
        let generation = cred.map_or(0, |c| c.generation);
        Verdict::Ok {
            reconnect: self.key.mint(&Claims {
                tenant: a.tenant,
                agent: a.agent.clone(),
                expires_s: unix_s().saturating_add(self.ttl.as_secs()),
                generation,
            }),
        }
    }
}
