//! Process-level wiring: shared state, start-up (primary or warm standby), the accept loop,
//! and the operator's controls.
//!
//! Operator controls — signals, and the optional admin line protocol ([`crate::admin`]):
//! - `SIGUSR1`: mark the server *service unavailable* — `SERVICE_STATE state=1` on every
//!   connection; existing sessions continue, new `HELLO`/`SESSION_OPEN` get
//!   `SERVICE_UNAVAILABLE`.
//! - `SIGUSR2`: back to running (`SERVICE_STATE state=0`).
//! - `SIGHUP`: re-read the configuration file: the tenant list changes, and with `[tls]` the
//!   certificate, key and CA files are read again (new connections get them); other changes
//!   are named in a warning as needing a restart; a bad file or an unusable certificate changes
//!   nothing and is logged with its path (and line and column). Credentials need no reload:
//!   each login reads them afresh.
//! - `SIGTERM`/`SIGINT`: graceful shutdown — `GO_AWAY` on every connection, new requests get
//!   `SHUTTING_DOWN`, in-flight work has `shutdown_grace_ms` to finish, then the process exits.
//!
//! Warm standby: the data file is guarded by an exclusive lock on the data file itself
//! ([`crate::lock`]), so that no other name for it (a removed lock file, a symlink) lets a
//! second primary in. A primary takes it at start (and refuses to start if it is held). A
//! standby (`--standby`) listens at once, answering link hellos with `role=1` and refusing
//! sessions with `UNAVAILABLE`, while a thread blocks on the lock; when the primary dies the
//! standby gets the lock, loads the persisted state, switches to `role=0`, announces
//! `SERVICE_STATE` on every link and prints `ROLE primary` on stdout. On PostgreSQL an
//! Interaction Server holds its tenants' leases in the database instead
//! ([`crate::lock::Guard`]), and a standby takes them over once they expire; UCS-only
//! instances hold nothing: they are all active on the shared database.
//!
//! Fencing: whoever takes the lock raises the fencing epoch stored in the database before
//! loading anything, and the DB worker checks it at the start of every transaction. A primary
//! that finds a newer epoch (or its data file replaced) stops writing and exits.
//!
//! A primary whose DB worker or engine task ends exits too (with an error log): the process
//! would otherwise hold the lock while unable to serve, and its standby would never take over.
//! (Release builds abort on any panic, see the workspace's `Cargo.toml`; this covers the debug
//! builds and an orderly end that should never happen.)

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use deskmux_codec::msg::{self, GoAway, ServiceState, control};
use deskmux_codec::{Head, Kind, Service};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::auth::{self, Auth};
use crate::config::{Config, MIN_SECRET_LEN};
use crate::db::Db;
use crate::ixn::{self, Engine, Settings};
use crate::lock::{Guard, LockError};
use crate::queue::{self, EngineTx};
use crate::storage::config::{Backend, Location};
use crate::storage::postgres::PgStore;
use crate::storage::sqlite::SqliteStore;
use crate::storage::{IxnRow, Store, StoreError};
use crate::wire::{self, Outbox};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// I/O (bind, lock file).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The data file or database could not be opened (the source says why).
    #[error("the data could not be opened")]
    Store(#[from] StoreError),
    /// The credential store or the token key could not be set up.
    #[error("auth: {0}")]
    Auth(String),
    /// The instance lock (on the data file, or in PostgreSQL) could not be taken.
    #[error("{0}")]
    Lock(#[from] LockError),
    /// Another instance holds the data file and this one is not a standby.
    #[error("{0} is locked by another instance (start with --standby to wait)")]
    Locked(String),
    /// The data file's path came to name another file while this instance took its lock.
    #[error("data file {0} was replaced while its lock was being taken")]
    Replaced(String),
    /// `[tls]` cannot be used (files unreadable, key not matching, no CA).
    #[error("{0}")]
    Tls(String),
    /// A port could not be bound: most often another process (another core-server?)
    /// already serves it.
    #[error("{what} {addr}: {source} (is another process already serving it?)")]
    Bind {
        /// The configuration key.
        what: &'static str,
        /// Its address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn bind_error(
    what: &'static str,
    addr: std::net::SocketAddr,
    source: std::io::Error,
) -> ServerError {
    ServerError::Bind { what, addr, source }
}

/// State shared by every connection task.
pub struct Shared {
    /// The configuration.
    pub cfg: Config,
    /// True once this instance serves (primary); false while a standby waits.
    pub primary: AtomicBool,
    /// Marked "service unavailable" by the operator.
    pub unavailable: AtomicBool,
    /// GO_AWAY sent: new requests get `SHUTTING_DOWN`.
    pub shutting_down: AtomicBool,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Outbox>>,
    /// Connections being served (counted from accept to the end of their writer).
    pub open_conns: AtomicUsize,
    /// The connection cap in force: `max_connections`, less if the open-file limit is lower.
    pub max_conns: usize,
    /// Connections refused at the cap.
    pub refused_conns: AtomicU64,
    /// Configuration reloads (SIGHUP) that took effect.
    pub reloads: AtomicU64,
    /// Configuration reloads that failed (nothing changed).
    pub reload_failures: AtomicU64,
    /// Signs the resume tokens of this process's sessions (PROTOCOL.md §4.6).
    pub resume_key: crate::auth::resume::ResumeKey,
    /// The Interaction Server engine's inbox (set once primary, if the role runs).
    pub engine: OnceLock<EngineTx>,
    /// The DB worker (set once primary).
    pub db: OnceLock<Db>,
    /// The login checker (set once primary).
    pub auth: OnceLock<Auth>,
    /// The GMS access-number service (set once primary, if `[gms]` is configured).
    pub gms: OnceLock<crate::gms::Gms>,
    /// Tenants served: from the configuration, replaced by a reload (SIGHUP).
    tenants: RwLock<HashSet<u32>>,
    /// With `[tls]`: what accepted connections speak. A reload (SIGHUP) reads the certificate,
    /// key and CA files again and replaces it, so that a rotated certificate is served to new
    /// connections without a restart; connections already open keep theirs.
    tls: RwLock<Option<crate::tls::Acceptor>>,
    /// The configuration file, for reloads (`None`: the embedded one).
    config_path: Mutex<Option<PathBuf>>,
    lock: Mutex<Option<Guard>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("instance", &self.cfg.instance)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A fresh process-unique id (connections, sessions, links).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether this server serves `tenant`.
    pub fn tenant_known(&self, tenant: u32) -> bool {
        self.tenants.read().is_ok_and(|t| t.contains(&tenant))
    }

    /// Re-read the configuration file (SIGHUP): the tenant list changes at once; credentials
    /// need no reload (every login reads them from the database). Other changed fields are
    /// named in a warning, as needing a restart.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid configuration; nothing changes then.
    pub fn reload(&self) -> Result<usize, String> {
        let r = self.reload_inner();
        let counter = match r {
            Ok(_) => &self.reloads,
            Err(_) => &self.reload_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn reload_inner(&self) -> Result<usize, String> {
        let path = self.config_path.lock().ok().and_then(|p| p.clone());
        let Some(path) = path else {
            return Err("no --config file to reload".into());
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut new = Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        new.resolve_db()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        new.read_secret_files()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let old = &self.cfg;
        // The TLS files first: a certificate that cannot be used fails the whole reload,
        // with nothing changed. Switching TLS on or off changes what the port speaks, and
        // needs a restart.
        let tls = match (&new.tls, &old.tls) {
            (Some(t), Some(_)) => Some(crate::tls::acceptor(t)?),
            _ => None,
        };
        if let Some(a) = tls
            && let Ok(mut g) = self.tls.write()
        {
            *g = Some(a);
        }
        let ids: HashSet<u32> = new.tenants.iter().map(|t| t.id).collect();
        let n = ids.len();
        let mut restart = Vec::new();
        let leased = old.role.ixn() && old.storage.backend == Backend::Postgres;
        if leased {
            // On PostgreSQL the Interaction Server's tenants are those whose leases it took at
            // start: serving another needs its lease, so a restart.
            let held: HashSet<u32> = old.tenants.iter().map(|t| t.id).collect();
            if ids != held {
                restart.push("tenants (leased at start on PostgreSQL)");
            }
        } else if let Ok(mut t) = self.tenants.write() {
            *t = ids;
        }
        if new.link_secret != old.link_secret {
            restart.push("link_secret");
        }
        if new.storage != old.storage {
            restart.push("storage");
        }
        if new.db != old.db {
            restart.push("db");
        }
        if new.role != old.role {
            restart.push("role");
        }
        if new.max_frame != old.max_frame || new.heartbeat_ms != old.heartbeat_ms {
            restart.push("max_frame/heartbeat_ms");
        }
        if new.tls.is_some() != old.tls.is_some() {
            restart.push("tls (on or off)");
        }
        if !restart.is_empty() {
            tracing::warn!("reload: {} changed and need a restart", restart.join(", "));
        }
        Ok(n)
    }

    /// Open connections (direct desktops and links).
    pub fn connections(&self) -> usize {
        self.conns.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Track a connection for broadcasts.
    pub fn register(&self, id: u64, out: Outbox) {
        if let Ok(mut m) = self.conns.lock() {
            m.insert(id, out);
        }
    }

    /// Forget a connection.
    pub fn unregister(&self, id: u64) {
        if let Ok(mut m) = self.conns.lock() {
            m.remove(&id);
        }
    }

    /// Send a frame on every connection.
    pub fn broadcast(&self, b: &Bytes) {
        if let Ok(m) = self.conns.lock() {
            for o in m.values() {
                o.frame(b.clone());
            }
        }
    }

    /// The current state and role.
    pub fn service_state(&self) -> ServiceState<'_> {
        ServiceState {
            state: if self.unavailable.load(Ordering::Acquire) {
                msg::State::Unavailable
            } else {
                msg::State::Running
            },
            role: if self.primary.load(Ordering::Acquire) {
                msg::Role::Primary
            } else {
                msg::Role::Backup
            },
            instance: &self.cfg.instance,
        }
    }

    /// A `SERVICE_STATE` control frame.
    pub fn service_state_frame(&self) -> Bytes {
        let st = self.service_state();
        wire::build(
            Head::new(Kind::Control, Service::Control, control::SERVICE_STATE),
            |w| st.write(w),
        )
    }

    /// Mark the service (un)available and announce it everywhere.
    pub fn set_unavailable(&self, v: bool) {
        self.unavailable.store(v, Ordering::Release);
        self.broadcast(&self.service_state_frame());
    }
}

/// The `[auth]` settings, with the token key read from `auth.token_key_file` if set.
fn auth_settings(cfg: &Config) -> Result<auth::Settings, ServerError> {
    let token_key = match &cfg.auth.token_key_file {
        Some(p) => {
            let k = std::fs::read(p)
                .map_err(|e| ServerError::Auth(format!("token_key_file {}: {e}", p.display())))?;
            if k.len() < MIN_SECRET_LEN {
                return Err(ServerError::Auth(format!(
                    "token_key_file {} holds {} bytes; at least {MIN_SECRET_LEN} are needed",
                    p.display(),
                    k.len()
                )));
            }
            Some(k)
        }
        None => None,
    };
    let a = &cfg.auth;
    Ok(auth::Settings {
        store: cfg.location(),
        threads: a.threads,
        queue: a.queue,
        reconnect_ttl: Duration::from_secs(a.reconnect_ttl_s),
        lockout: cfg.lockout_rules(),
        token_key,
    })
}

/// A bound server, not yet accepting.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    http: Option<TcpListener>,
    /// The GMS HTTP API (`[gms] http_listen`).
    gms_http: Option<TcpListener>,
    admin_token: Option<Vec<u8>>,
}

/// The opened stores (one per database connection, `[storage] connections`; the first is
/// the one the Interaction Server and GMS use), the open interactions to recover, the
/// highest interaction id, and the login checker (opened on the same database).
type Opened = (Vec<Box<dyn Store>>, Vec<IxnRow>, u64, Auth);

/// Open the data under `guard`, take it over (raise the fencing epoch) if this instance is its
/// only writer, then read what the engine needs to recover: after the epoch is raised, an
/// older primary can commit nothing more, so what is read is final. Blocking (PostgreSQL's
/// client runs its own runtime): call it off the async threads.
fn open_store(cfg: &Config, guard: &Guard) -> Result<Opened, ServerError> {
    let at = cfg.location();
    let mut store: Box<dyn Store> = match &at {
        Location::Sqlite { path, opts } => {
            let store = SqliteStore::open_opts(path, opts)?;
            if let Guard::File(lock) = guard
                && !lock.names_it(path)?
            {
                return Err(ServerError::Replaced(path.display().to_string()));
            }
            Box::new(store)
        }
        Location::Postgres(c) => Box::new(open_pg(cfg, c, guard)?),
    };
    match guard {
        Guard::File(_) => {
            let epoch = store.fence_acquire()?;
            tracing::info!("{} taken over, fencing epoch {epoch}", at.describe());
        }
        Guard::Leases(l) => tracing::info!(
            "{}: tenants {:?} leased, epochs {:?}",
            at.describe(),
            l.held.tenants,
            l.held.epochs
        ),
        Guard::Shared => {
            tracing::info!("{} opened, shared with other UCS instances", at.describe());
        }
    }
    let (mut rows, max) = if cfg.role.ixn() {
        (store.ixn_load()?, store.ixn_max_id()?)
    } else {
        (Vec::new(), 0)
    };
    if let Guard::Leases(l) = guard {
        // Other instances' tenants share the table: recover only this one's.
        rows.retain(|r| l.held.tenants.contains(&i64::from(r.tenant)));
    }
    let auth = Auth::start(&auth_settings(cfg)?).map_err(|e| ServerError::Auth(e.to_string()))?;
    let mut stores = vec![store];
    if let Location::Postgres(c) = &at {
        for _ in 1..cfg.storage.connections {
            stores.push(Box::new(open_pg(cfg, c, guard)?));
        }
    }
    Ok((stores, rows, max, auth))
}

/// One PostgreSQL connection of this instance; under leases it is fenced by them (every
/// transaction checks them), as every connection of the instance is.
fn open_pg(cfg: &Config, c: &postgres::Config, guard: &Guard) -> Result<PgStore, ServerError> {
    let mut store = PgStore::open(c)?;
    if let Guard::Leases(l) = guard {
        store.hold_leases(l.held.clone());
        // Half the lease: a paused owner holds a taker off for at most that long past the
        // lease's expiry (see `limit_idle_in_transaction`).
        store.limit_idle_in_transaction(cfg.storage.lease() / 2)?;
    }
    Ok(store)
}

/// Start the roles on an opened store (must run inside the runtime).
fn activate(shared: &Shared, opened: Opened) -> Result<(), ServerError> {
    let (stores, rows, max_id, a) = opened;
    let db = Db::start_lanes(
        stores,
        shared.cfg.group_commit_max,
        (shared.cfg.db_queue, shared.cfg.db_queue_bytes),
        Box::new(|why| {
            tracing::error!("the DB worker stopped ({why}); exiting so that a standby can serve");
            std::process::exit(1);
        }),
    )?;
    let _ = shared.auth.set(a);
    if shared.cfg.role.ixn() {
        let (tx, rx) =
            queue::engine_channel(shared.cfg.engine_queue, shared.cfg.engine_queue_bytes);
        let set = Settings {
            invite_timeout: Duration::from_millis(u64::from(shared.cfg.invite_timeout_ms)),
            with_ucs: shared.cfg.role.ucs(),
            resume: crate::ixn::ResumeSettings {
                grace: Duration::from_millis(u64::from(shared.cfg.resume.grace_ms)),
                buffer_bytes: shared.cfg.resume.buffer_bytes,
                total_bytes: shared.cfg.resume.total_bytes,
                idem_keys: shared.cfg.resume.idem_keys,
            },
        };
        tracing::info!("recovered {} open interactions", rows.len());
        let engine = Engine::new(set, db.clone(), tx.clone(), rows, max_id);
        let task = tokio::spawn(ixn::run(engine, rx));
        tokio::spawn(async move {
            // The engine runs for the life of the process: `Shared` keeps its inbox open.
            let why = match task.await {
                Ok(()) => "its inbox closed".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!(
                "the interaction engine stopped ({why}); exiting so that a standby can serve"
            );
            std::process::exit(1);
        });
        let _ = shared.engine.set(tx);
    }
    if let Some(g) = &shared.cfg.gms {
        let gms = crate::gms::Gms::new(g, db.clone());
        tokio::spawn(gms.clone().sweep());
        let _ = shared.gms.set(gms);
    }
    let _ = shared.db.set(db);
    shared.primary.store(true, Ordering::Release);
    Ok(())
}

impl Server {
    /// Take the lock (or prepare to wait for it), open storage and bind the listener.
    ///
    /// # Errors
    /// [`ServerError`].
    pub async fn bind(cfg: Config) -> Result<Server, ServerError> {
        // Before the lock and the data file: a bad certificate should not make a standby wait.
        let tls = match &cfg.tls {
            Some(t) => Some(crate::tls::acceptor(t).map_err(ServerError::Tls)?),
            None => None,
        };
        // The ports next, before the data file: a port another process serves is refused now,
        // with its error, rather than after storage started (whose stop would exit first).
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| bind_error("listen", cfg.listen, e))?;
        let admin = match cfg.admin_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| bind_error("admin_listen", a, e))?,
            ),
            None => None,
        };
        let http = crate::http::bind(cfg.http_listen)
            .await
            .map_err(|e| bind_error("http_listen", cfg.http_listen.unwrap_or(cfg.listen), e))?;
        let gms_http = match cfg.gms.as_ref().and_then(|g| g.http_listen) {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| bind_error("gms.http_listen", a, e))?,
            ),
            None => None,
        };
        let c = cfg.clone();
        let got = tokio::task::spawn_blocking(move || match Guard::try_acquire(&c)? {
            Some(g) => {
                let opened = open_store(&c, &g)?;
                Ok::<_, ServerError>(Some((g, opened)))
            }
            None => Ok(None),
        })
        .await
        .map_err(std::io::Error::other)??;
        if got.is_none() && !cfg.standby {
            return Err(ServerError::Locked(cfg.location().describe()));
        }
        let shared = Arc::new(Shared {
            primary: AtomicBool::new(false),
            unavailable: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            open_conns: AtomicUsize::new(0),
            max_conns: connection_cap(cfg.max_connections),
            refused_conns: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            resume_key: crate::auth::resume::ResumeKey::random()
                .map_err(|e| ServerError::Auth(e.to_string()))?,
            engine: OnceLock::new(),
            db: OnceLock::new(),
            auth: OnceLock::new(),
            gms: OnceLock::new(),
            tenants: RwLock::new(cfg.tenants.iter().map(|t| t.id).collect()),
            tls: RwLock::new(tls),
            config_path: Mutex::new(None),
            lock: Mutex::new(None),
            cfg,
        });
        if let Some((l, opened)) = got {
            activate(&shared, opened)?;
            if let Ok(mut g) = shared.lock.lock() {
                *g = Some(l);
            }
        }
        let admin_token = match &shared.cfg.admin_token_file {
            Some(p) => {
                let t = std::fs::read(p).map_err(|e| {
                    ServerError::Auth(format!("admin_token_file {}: {e}", p.display()))
                })?;
                let t = t.trim_ascii().to_vec();
                if t.len() < MIN_SECRET_LEN {
                    return Err(ServerError::Auth(format!(
                        "admin_token_file {} holds {} bytes; at least {MIN_SECRET_LEN} are needed",
                        p.display(),
                        t.len()
                    )));
                }
                Some(t)
            }
            None => None,
        };
        Ok(Server {
            shared,
            listener,
            admin,
            http,
            gms_http,
            admin_token,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// From the socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin port's bound address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The GMS HTTP API's bound address, if configured.
    pub fn gms_http_addr(&self) -> Option<SocketAddr> {
        self.gms_http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The HTTP admin's bound address, if configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Whether this instance is serving (false: a standby still waiting).
    pub fn is_primary(&self) -> bool {
        self.shared.primary.load(Ordering::Acquire)
    }

    /// Remember the configuration file, so that SIGHUP can re-read it.
    pub fn set_config_path(&self, p: PathBuf) {
        if let Ok(mut g) = self.shared.config_path.lock() {
            *g = Some(p);
        }
    }

    /// The shared state (for embedding and tests).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accept connections forever (and, as a standby, take over when the lock frees).
    ///
    /// # Errors
    /// Never in practice; accept errors are logged and retried.
    pub async fn run(self) -> Result<(), ServerError> {
        let shared = self.shared.clone();
        if !shared.primary.load(Ordering::Acquire) {
            tokio::spawn(standby(shared.clone()));
        }
        tokio::spawn(signals(shared.clone()));
        let token = self.admin_token.map(Arc::new);
        if let Some(admin) = self.admin {
            tokio::spawn(crate::admin::serve(shared.clone(), admin, token.clone()));
        }
        if let Some(http) = self.http {
            tokio::spawn(crate::http::serve(shared.clone(), http, token));
        }
        if let Some(l) = self.gms_http {
            tokio::spawn(crate::gms::http::serve(l, shared.clone()));
        }
        tracing::info!("serving at most {} connections", shared.max_conns);
        loop {
            match self.listener.accept().await {
                Ok((s, _)) => {
                    // Counted here, before the task runs, so that a burst of accepts cannot
                    // pass the cap; `conn::serve` takes the count off when it ends.
                    let n = shared.open_conns.fetch_add(1, Ordering::AcqRel);
                    if n >= shared.max_conns {
                        shared.open_conns.fetch_sub(1, Ordering::AcqRel);
                        shared.refused_conns.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(refuse(s));
                    } else {
                        let tls = shared.tls.read().ok().and_then(|t| t.clone());
                        match tls {
                            None => {
                                tokio::spawn(crate::conn::serve(shared.clone(), s));
                            }
                            Some(a) => {
                                tokio::spawn(crate::conn::serve_tls(shared.clone(), a, s));
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Refuse a connection past the cap: a control `OVERLOADED`, then close (PROTOCOL.md §5). The
/// write is bounded in time (a peer that does not read gets nothing more); these sockets are
/// the "less 100" of the cap.
async fn refuse(mut s: TcpStream) {
    let f = deskmux_codec::control_error(
        0,
        deskmux_codec::ErrorCode::OVERLOADED,
        "too many connections",
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = s.write_all(&f.freeze()).await;
        let _ = s.shutdown().await;
    })
    .await;
}

/// The connection cap in force: `configured`, or the soft open-file limit less 100 if that is
/// lower (past it, accepts would fail with EMFILE and nobody would be told).
fn connection_cap(configured: usize) -> usize {
    match open_file_limit() {
        Some(n) => configured.min(n.saturating_sub(100).max(1)),
        None => configured,
    }
}

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits` (Linux); `None` if unknown or unlimited.
fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn standby(shared: Arc<Shared>) {
    println!("ROLE backup");
    let cfg = shared.cfg.clone();
    let got = tokio::task::spawn_blocking(move || {
        let lock = Guard::acquire_blocking(&cfg)?;
        let opened = open_store(&cfg, &lock)?;
        Ok::<_, ServerError>((lock, opened))
    })
    .await;
    match got {
        Ok(Ok((lock, opened))) => {
            if let Err(e) = activate(&shared, opened) {
                tracing::error!("takeover failed: {e}");
                std::process::exit(1);
            }
            if let Ok(mut g) = shared.lock.lock() {
                *g = Some(lock);
            }
            tracing::warn!("standby took over as primary");
            println!("ROLE primary");
            shared.broadcast(&shared.service_state_frame());
        }
        Ok(Err(e)) => {
            tracing::error!("standby could not take over: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            tracing::error!("standby task failed: {e}");
            std::process::exit(1);
        }
    }
}

async fn signals(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut usr1), Ok(mut usr2), Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = usr1.recv() => { tracing::warn!("service unavailable"); shared.set_unavailable(true); }
            _ = usr2.recv() => { tracing::warn!("service running"); shared.set_unavailable(false); }
            _ = hup.recv() => match shared.reload() {
                Ok(n) => tracing::warn!("reloaded: {n} tenants"),
                Err(e) => tracing::error!("reload failed, configuration unchanged: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    shutdown(&shared).await;
}

/// Graceful shutdown: GO_AWAY everywhere, refuse new work, let in-flight work finish, exit.
pub async fn shutdown(shared: &Shared) {
    shared.shutting_down.store(true, Ordering::Release);
    let ga = GoAway {
        reason: "shutting down",
        reconnect_ms: shared.cfg.go_away_reconnect_ms,
    };
    let frame = wire::build(
        Head::new(Kind::Control, Service::Control, control::GO_AWAY),
        |w| ga.write(w),
    );
    shared.broadcast(&frame);
    tracing::warn!(
        "GO_AWAY sent; exiting after {} ms",
        shared.cfg.shutdown_grace_ms
    );
    tokio::time::sleep(Duration::from_millis(u64::from(
        shared.cfg.shutdown_grace_ms,
    )))
    .await;
    // On PostgreSQL, the tenants' leases expire now rather than `lease_ms` after the exit:
    // a restart or a standby takes them at once.
    let guard = shared.lock.lock().ok().and_then(|mut g| g.take());
    if let Some(Guard::Leases(l)) = guard {
        match tokio::task::spawn_blocking(move || l.release()).await {
            Ok(Ok(())) => tracing::info!("tenant leases released"),
            Ok(Err(e)) => tracing::warn!("tenant leases not released (they expire): {e}"),
            Err(e) => tracing::warn!("tenant leases not released (they expire): {e}"),
        }
    }
    std::process::exit(0);
}
