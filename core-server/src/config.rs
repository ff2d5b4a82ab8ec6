//! The server's configuration: one TOML file, every field optional with a documented default.
//!
//! It exists as its own module so that the defaults live in one place (the `Default` impls and
//! [`DEFAULT_CONFIG`], which `core-server --default-config` prints) and so that the command
//! line can override a few fields after the file is read.
//!
//! ```toml
//! listen = "127.0.0.1:7100"      # address to listen on (port 0: any free port)
//! role = "both"                  # "ixn", "ucs" or "both"
//! data_dir = "/var/lib/deskmux"  # where a relative `db` lives (default: see `Config::data_dir`)
//! db = "deskmux-core.db"         # SQLite data file; the standby lock is taken on it
//! instance = "core-1"            # name announced in link hello acks and SERVICE_STATE
//! link_secret_file = "/etc/deskmux/link.secret" # or link_secret = "..." inline (not both)
//! link_secret = "..."            # secret a proxy must present in LINK_HELLO: at least 32 bytes;
//!                                # empty (the default) refuses every link
//! heartbeat_ms = 5000            # heartbeat interval; 3 silent intervals close a connection
//! handshake_timeout_ms = 10000   # a hello must complete within this
//! max_frame = 2097152            # largest frame (head + body) accepted and sent, bytes (>= 131072)
//! max_in_flight = 256            # requests a session may have outstanding
//! invite_timeout_ms = 30000      # an unanswered invite returns to its queue after this
//! request_timeout_ms = 10000     # a request still queued after this is answered OVERLOADED, not run
//! outbound_queue = 8192          # frames queued per desktop connection before it is a slow consumer
//! outbound_queue_bytes = 8388608 # bytes queued per desktop connection before it is a slow consumer
//! link_outbound_queue = 262144   # frames queued per proxy link; past half, the link's reads pause
//! link_outbound_queue_bytes = 268435456 # bytes queued per proxy link; likewise
//! max_connections = 19900        # connections (desktops, links) served at once; more get OVERLOADED
//! desktop_read_bytes_per_s = 8388608 # a direct desktop's input, after a burst of 2 max_frames
//! engine_queue = 131072          # requests waiting for the interaction engine; more get OVERLOADED
//! engine_queue_bytes = 134217728 # ... or once they hold this many bytes
//! db_queue = 131072              # operations waiting for the DB worker; more get OVERLOADED
//! db_queue_bytes = 134217728     # ... or once they (and the batch being run) hold this many bytes
//! group_commit_max = 512         # most storage operations committed in one transaction
//! shutdown_grace_ms = 2000       # after GO_AWAY, how long in-flight work may take
//! go_away_reconnect_ms = 1000    # reconnect_ms announced in GO_AWAY
//! sqlite_synchronous = "full"    # "full" (fsync per group commit) or "normal" (see field docs)
//! admin_listen = "127.0.0.1:7101" # optional admin line protocol (default: none)
//! http_listen = "127.0.0.1:7102" # optional HTTP admin: /metrics, /health, /status (default: none)
//! admin_token_file = "admin.token" # token for mutating admin controls (default: none: refused)
//! standby = false                # start as a warm standby (also --standby)
//!
//! [auth]                         # see `AuthConfig`
//! threads = 1                    # argon2 verification threads
//! reconnect_ttl_s = 43200        # reconnect tokens live this long
//!
//! [resume]                       # sessions that outlive their connection (PROTOCOL.md §4.6)
//! grace_ms = 30000               # a session whose connection went is kept this long (0: not)
//! buffer_bytes = 65536           # unicast events kept per session for replay
//! total_bytes = 268435456        # ... and in all
//! idem_keys = 64                 # keyed requests whose answers a session remembers
//!
//! [storage]                      # optional: see `storage::config` (default: SQLite `db`)
//! backend = "postgres"           # shared by several instances; no `flock` on `db` then
//! host = "127.0.0.1"
//! dbname = "deskmux"
//! password_file = "/etc/deskmux/pg.password"
//!
//! [tls]                          # optional: the listen port speaks TLS only (ALPN deskmux/1)
//! cert = "/etc/deskmux/core.crt" # PEM chain, leaf first (read at start)
//! key = "/etc/deskmux/core.key"  # PEM private key
//! client_ca = "/etc/deskmux/proxies-ca.pem" # optional: a LINK_HELLO is accepted only on a
//!                                # connection whose client certificate chains to it, and
//!                                # still needs link_secret (mutual TLS backs up the secret)
//!
//! [[tenants]]                    # tenants this server serves; agents' credentials live in
//! id = 1                         # the database (`core-server creds`), not here
//! name = "acme"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::storage::config::{Backend, Location, StorageConfig};
use crate::storage::sqlite::SqliteOptions;

/// The embedded demo configuration (two tenants, a local data file).
pub const DEFAULT_CONFIG: &str = r#"# core-server demo configuration (see core-server/src/config.rs for every field)
listen = "127.0.0.1:7100"
role = "both"
db = "deskmux-core.db"
instance = "core-1"
# No link_secret: proxies cannot connect until one (32 bytes or more) is set.
heartbeat_ms = 5000
handshake_timeout_ms = 10000
max_frame = 2097152
max_in_flight = 256
invite_timeout_ms = 30000

# Agents log in with credentials stored in the database:
#   echo 'a-long-password' | core-server --db deskmux-core.db creds add --tenant 1 --agent alice
[[tenants]]
id = 1
name = "acme"

[[tenants]]
id = 2
name = "globex"
"#;

/// Which services this instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Interaction Server only.
    Ixn,
    /// UCS only.
    Ucs,
    /// Both (default).
    #[default]
    Both,
}

impl Role {
    /// Whether the Interaction Server role runs.
    pub fn ixn(self) -> bool {
        matches!(self, Role::Ixn | Role::Both)
    }

    /// Whether the UCS role runs.
    pub fn ucs(self) -> bool {
        matches!(self, Role::Ucs | Role::Both)
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ixn" => Ok(Role::Ixn),
            "ucs" => Ok(Role::Ucs),
            "both" => Ok(Role::Both),
            other => Err(format!("unknown role {other:?} (ixn, ucs or both)")),
        }
    }
}

/// One tenant this server serves. Its agents' credentials are in the database
/// (`core-server creds`); a shared per-tenant token (the old `tokens` key) let anyone of the
/// tenant pose as any agent, so it is refused as an unknown key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Tenant id, as carried in every frame head. Must be non-zero.
    pub id: u32,
    /// Name, for logs.
    #[serde(default)]
    pub name: String,
}

/// `[auth]`: how logins are checked (see `crate::auth`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Threads verifying logins (argon2id costs tens of ms of CPU each). Default 1.
    pub threads: usize,
    /// Logins waiting for a thread before more get `OVERLOADED`. Default 4096.
    pub queue: usize,
    /// Lifetime of the reconnect token each server hello carries, in seconds. Default 43200
    /// (12 h, a long shift): a desktop whose proxy dies late in the shift still reconnects
    /// without a password. Rotating or disabling the credential ends its tokens at once.
    pub reconnect_ttl_s: u64,
    /// Failed logins in a row (per agent, or per source address) before a lockout. Default 5.
    pub lockout_after: u32,
    /// First lockout, ms; each further failure doubles it. Default 1000.
    pub lockout_base_ms: u64,
    /// Longest lockout, ms (also how long a source's failures are remembered). Default 900000.
    pub lockout_max_ms: u64,
    /// Most agents and sources remembered by the lockout, each. Default 100000.
    pub lockout_cap: usize,
    /// File holding the key that signs reconnect tokens (32 bytes or more). Set the same file
    /// on every server a proxy fans one desktop out to, so that each accepts the others'
    /// tokens. Default: a key stored in the database (shared by a primary and its standby).
    pub token_key_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            threads: 1,
            queue: 4096,
            reconnect_ttl_s: 43_200,
            lockout_after: 5,
            lockout_base_ms: 1000,
            lockout_max_ms: 900_000,
            lockout_cap: 100_000,
            token_key_file: None,
        }
    }
}

/// `[resume]`: sessions that outlive their connection (PROTOCOL.md §4.6, `crate::ixn`'s
/// `resume` module).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResumeConfig {
    /// How long a session whose connection or link went without a goodbye is kept for its
    /// desktop to resume: its agent stays logged in (not ready) and its invites stay. 0: not
    /// kept (sessions end with their connection). Default 30000.
    pub grace_ms: u32,
    /// Bytes of recent unicast events kept per session for replay. A detached session whose
    /// events pass it ends. Default 65536.
    pub buffer_bytes: usize,
    /// Bytes of unicast events kept for replay, all sessions. Default 268435456 (256 MiB).
    pub total_bytes: usize,
    /// Keyed requests (`idem_key`) whose answers a session remembers. Default 64.
    pub idem_keys: usize,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            grace_ms: 30_000,
            buffer_bytes: 64 << 10,
            total_bytes: 256 << 20,
            idem_keys: 64,
        }
    }
}

/// The whole configuration. Every field has a default (see the module docs).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address. Default `127.0.0.1:7100`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Services run: `ixn`, `ucs` or `both`. Default `both`.
    pub role: Role,
    /// SQLite data file. Default `deskmux-core.db`. A relative path is under `data_dir`, never
    /// under the working directory (which differs between a shell, a unit and a container).
    /// The standby lock is taken on this file itself, with a fencing epoch stored in it.
    /// Unused with `[storage] backend = "postgres"`.
    pub db: PathBuf,
    /// The directory a relative `db` is in, created (mode 0700) if missing. Default: systemd's
    /// `$STATE_DIRECTORY` (a unit with `StateDirectory=deskmux`), else
    /// `$XDG_STATE_HOME/deskmux`, else `$HOME/.local/state/deskmux`.
    pub data_dir: Option<PathBuf>,
    /// Instance name announced to proxies. Default `core-1`.
    pub instance: String,
    /// Secret a proxy presents in `LINK_HELLO`, at least [`MIN_SECRET_LEN`] bytes (a shorter
    /// one refuses to start without `--allow-weak-link-secret`). Default empty: every link is
    /// refused.
    pub link_secret: LinkSecret,
    /// A file holding the link secret (surrounding whitespace ignored), instead of
    /// `link_secret`, so that the configuration itself holds no secret and can be world
    /// readable, shipped, or printed. Read at start and on SIGHUP. Not both.
    pub link_secret_file: Option<PathBuf>,
    /// Heartbeat interval in ms; a connection silent for 3 intervals is closed. Default 5000.
    pub heartbeat_ms: u32,
    /// Handshake deadline in ms (not reset by each byte). Default 10000.
    pub handshake_timeout_ms: u32,
    /// Largest frame (head + body) accepted, and largest answer sent: list answers page and
    /// texts come in chunks to stay under it (PROTOCOL.md §8.1). At least 128 KiB. Default 2 MiB.
    pub max_frame: u32,
    /// Requests a session may have in flight. Default 256.
    pub max_in_flight: u32,
    /// Invite timeout in ms, 1 to 86400000. Default 30000.
    pub invite_timeout_ms: u32,
    /// A request's deadline in ms from its arrival: one still waiting in the engine's or the DB
    /// worker's queue then is answered `OVERLOADED` (nothing applied; a retry is safe) instead
    /// of being run for a client that has likely given up. A request that has started is
    /// always finished and answered. Below the proxy's `request_timeout_ms` (default 30000), so
    /// that its desktops get this definite answer rather than `TIMEOUT` (outcome unknown).
    /// 1 to 3600000. Default 10000.
    pub request_timeout_ms: u32,
    /// Frames queued towards one connection before it counts as a slow consumer. Default 8192.
    pub outbound_queue: usize,
    /// Bytes queued towards one direct connection before it counts as a slow consumer (it is
    /// then closed and its queue dropped): a desktop that asks for large contents and does not
    /// read holds at most this much of the server's memory. At least `max_frame`. Default
    /// 8388608 (8 MiB).
    pub outbound_queue_bytes: usize,
    /// Frames queued towards one proxy link. Past half of it the server stops reading the
    /// link's requests until the writer catches up (TCP then slows the proxy); only a full
    /// queue closes the link. Default 262144.
    pub link_outbound_queue: usize,
    /// Bytes queued towards one proxy link: past half of it the link's reads pause, as for
    /// `link_outbound_queue`; only a full queue closes the link. At least `max_frame`. Default
    /// 268435456 (256 MiB).
    pub link_outbound_queue_bytes: usize,
    /// Connections (direct desktops and proxy links) served at once. A connection past it is
    /// accepted, sent a control `OVERLOADED` and closed. The cap in force is never more than
    /// the process's open-file limit less 100 (room for the data file, the listeners and the
    /// refusals themselves). Default 19900.
    pub max_connections: usize,
    /// Bytes a second a direct desktop may send, after a burst of two `max_frame`s; past it
    /// its connection is not read until it is back under (0: no limit). Links are not held
    /// to it. Default 8388608 (8 MiB/s: four 2 MiB contents a second).
    pub desktop_read_bytes_per_s: u64,
    /// Requests waiting for the interaction engine, across all connections. A request that
    /// finds the queue full is answered `OVERLOADED` (not sent) at once. Sessions opening and
    /// closing are never refused (they take a separate, uncounted place in the queue, bounded
    /// by the number of sessions). Default 131072.
    pub engine_queue: usize,
    /// Bytes the requests waiting for the engine may hold (their frames) before a request is
    /// answered `OVERLOADED`. At least `max_frame`. Default 128 MiB.
    pub engine_queue_bytes: usize,
    /// Storage operations waiting for the DB worker, across all connections. A UCS request, or
    /// an interaction request that would write, that finds it full is answered `OVERLOADED`
    /// (not sent) at once, before anything changed. Default 131072.
    pub db_queue: usize,
    /// Bytes the storage operations waiting for the DB worker, and those of the batch it is
    /// running, may hold before a request that would add one is answered `OVERLOADED`. At
    /// least `max_frame`. Default 128 MiB.
    pub db_queue_bytes: usize,
    /// Most storage operations run in one group-commit transaction. Default 512.
    pub group_commit_max: usize,
    /// Grace period after GO_AWAY before the process exits, in ms, at most 3600000. Default
    /// 2000.
    pub shutdown_grace_ms: u32,
    /// `reconnect_ms` announced in GO_AWAY. Default 1000.
    pub go_away_reconnect_ms: u32,
    /// SQLite `synchronous` setting: `full` (default: every commit fsyncs the WAL, so an
    /// acknowledged write survives power loss) or `normal` (commits are not fsynced; they
    /// survive a process crash or kill -9, but not an OS crash or power loss).
    pub sqlite_synchronous: String,
    /// Optional admin line-protocol address (see `admin.rs`), loopback recommended. Default none.
    pub admin_listen: Option<SocketAddr>,
    /// Optional HTTP admin address (`/metrics`, `/health`, `/status`; see `http.rs`), e.g.
    /// `127.0.0.1:7102`: bind it to loopback. Default none.
    pub http_listen: Option<SocketAddr>,
    /// File holding the token (32 bytes or more) that the HTTP admin's mutating endpoints
    /// require as `Authorization: Bearer <token>`. Default none: those endpoints answer 403.
    pub admin_token_file: Option<PathBuf>,
    /// Start as a warm standby: wait for the primary's lock, then take over. Default false.
    pub standby: bool,
    /// How logins are checked.
    pub auth: AuthConfig,
    /// Sessions that outlive their connection.
    pub resume: ResumeConfig,
    /// Tenants served. Default: none (every hello fails).
    pub tenants: Vec<Tenant>,
    /// TLS on the listen port (`[tls]`): desktops and proxy links alike. Default: none
    /// (plain TCP).
    pub tls: Option<Tls>,
    /// `[gms]`: the access-number service (see `crate::gms::config`). Default: none.
    pub gms: Option<crate::gms::config::GmsConfig>,
    /// SQLite `busy_timeout` in ms: how long a group commit waits for another process's lock
    /// on the data file (an operator's `sqlite3` shell, a backup tool) before its batch fails.
    /// A batch that cannot open its transaction fails whole, with nothing applied. Default 5000.
    pub sqlite_busy_timeout_ms: u32,
    /// SQLite `max_page_count`: the data file may not grow past this many pages (4 KiB each).
    /// A write that needs more fails with nothing of it applied, as on a full disk (writes
    /// batched with it may fail too, also unapplied); reads go on. Use it to keep the file
    /// under the disk's size, or to test disk-full handling. It cannot go below the file's
    /// current size. Default: unset (SQLite's own limit).
    pub sqlite_max_page_count: Option<u32>,
    /// `[storage]`: SQLite (default) or PostgreSQL (see `crate::storage::config`).
    pub storage: StorageConfig,
}

/// The link secret: a string whose `Debug` shows only its length, so that no log or dump of
/// the configuration carries it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct LinkSecret(String);

impl LinkSecret {
    /// The secret's bytes, for the constant-time compare.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is set (every link is refused).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkSecret(<{} bytes>)", self.0.len())
    }
}

/// TLS on the listen port. When present the port speaks TLS only (TLS 1.2 and 1.3, ALPN
/// `deskmux/1` offered; a client offering only other protocols is refused, one offering none
/// is accepted), for direct desktops and proxy links alike. The files are read at start and
/// again on SIGHUP (certificate rotation: new connections get the new one).
///
/// Mutual TLS (`client_ca`) *backs up* the link secret, it does not replace it: a
/// `LINK_HELLO` is accepted only on a connection that presented a client certificate chaining
/// to `client_ca`, and it must still carry `link_secret`. A stolen secret then opens no link
/// without a proxy's key, and a stolen key none without the secret. Direct desktops need no
/// client certificate (one they present is verified all the same).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key: PathBuf,
    /// PEM file of the CA(s) that sign the proxies' client certificates. Default: none (links
    /// are authenticated by the secret alone).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// Shortest link secret or token key accepted without `--allow-weak-link-secret`.
pub const MIN_SECRET_LEN: usize = 32;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7100)),
            role: Role::Both,
            db: PathBuf::from("deskmux-core.db"),
            data_dir: None,
            instance: "core-1".into(),
            link_secret: LinkSecret::default(),
            link_secret_file: None,
            heartbeat_ms: 5000,
            handshake_timeout_ms: 10_000,
            max_frame: 2 * 1024 * 1024,
            max_in_flight: 256,
            invite_timeout_ms: 30_000,
            request_timeout_ms: 10_000,
            outbound_queue: 8192,
            outbound_queue_bytes: 8 * 1024 * 1024,
            link_outbound_queue: 262_144,
            link_outbound_queue_bytes: 256 * 1024 * 1024,
            max_connections: 19_900,
            desktop_read_bytes_per_s: 8 << 20,
            engine_queue: 131_072,
            engine_queue_bytes: 128 << 20,
            db_queue: 131_072,
            db_queue_bytes: 128 << 20,
            group_commit_max: 512,
            shutdown_grace_ms: 2000,
            go_away_reconnect_ms: 1000,
            sqlite_synchronous: "full".into(),
            admin_listen: None,
            http_listen: None,
            admin_token_file: None,
            standby: false,
            auth: AuthConfig::default(),
            resume: ResumeConfig::default(),
            tenants: Vec::new(),
            tls: None,
            gms: None,
            sqlite_busy_timeout_ms: 5000,
            sqlite_max_page_count: None,
            storage: StorageConfig::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML did not parse.
    #[error("config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range or inconsistent.
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Parse and validate a TOML document.
    ///
    /// # Errors
    /// [`ConfigError`] on bad TOML or invalid values.
    pub fn from_toml(s: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(s)?;
        c.validate()?;
        Ok(c)
    }

    /// The directory a relative `db` is in: `data_dir`, or the default it documents.
    ///
    /// # Errors
    /// No `data_dir` and none of the environment variables of its default set.
    pub fn data_dir(&self) -> Result<PathBuf, ConfigError> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        self.data_dir
            .clone()
            .or_else(|| {
                // systemd may list several directories, separated by ':'.
                let s = env("STATE_DIRECTORY")?;
                s.to_str()?.split(':').next().map(PathBuf::from)
            })
            .or_else(|| env("XDG_STATE_HOME").map(|x| x.join("deskmux")))
            .or_else(|| env("HOME").map(|h| h.join(".local/state/deskmux")))
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "db is a relative path and there is no data_dir (nor STATE_DIRECTORY, \
                     XDG_STATE_HOME or HOME): set data_dir, or an absolute db"
                        .into(),
                )
            })
    }

    /// Make `db` absolute: a relative one goes under [`Config::data_dir`], which is created
    /// (mode 0700: it holds the credentials) if missing.
    ///
    /// # Errors
    /// No data directory, or it cannot be created.
    pub fn resolve_db(&mut self) -> Result<(), ConfigError> {
        // On PostgreSQL there is no local data file: nothing to resolve or create.
        if self.db.is_absolute() || self.storage.backend == Backend::Postgres {
            return Ok(());
        }
        let dir = self.data_dir()?;
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| ConfigError::Invalid(format!("data_dir {}: {e}", dir.display())))?;
        }
        self.db = dir.join(&self.db);
        Ok(())
    }

    /// Check ranges and uniqueness.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        // One item of any size the caps allow must fit one answer, or a paged answer could
        // not make progress (see `limits::MIN_MAX_FRAME`).
        if self.max_frame < crate::limits::MIN_MAX_FRAME {
            return bad("max_frame must be at least 131072 (limits::MIN_MAX_FRAME)");
        }
        if self.heartbeat_ms == 0 || self.handshake_timeout_ms == 0 {
            return bad("heartbeat_ms and handshake_timeout_ms must be non-zero");
        }
        self.storage.validate().map_err(ConfigError::Invalid)?;
        if self.standby && !self.role.ixn() && self.storage.backend == Backend::Postgres {
            return bad(
                "a UCS-only instance on PostgreSQL needs no standby: run several, all active",
            );
        }
        if let Some(g) = &self.gms {
            g.validate().map_err(ConfigError::Invalid)?;
            if let Some(x) = g
                .groups
                .iter()
                .find(|x| !self.tenants.iter().any(|t| t.id == x.tenant))
            {
                return Err(ConfigError::Invalid(format!(
                    "gms group {:?}: tenant {} is not in [[tenants]]",
                    x.name, x.tenant
                )));
            }
        }
        if !(1..=3_600_000).contains(&self.request_timeout_ms) {
            return bad("request_timeout_ms must be 1 to 3600000 (one hour)");
        }
        // An invite that expires at once is offered to nobody; a grace of more than an hour is
        // a typo (a stop would hang that long).
        if !(1..=86_400_000).contains(&self.invite_timeout_ms) {
            return bad("invite_timeout_ms must be 1 to 86400000 (a day)");
        }
        if self.shutdown_grace_ms > 3_600_000 {
            return bad("shutdown_grace_ms must be at most 3600000 (one hour)");
        }
        if self.max_in_flight == 0
            || self.outbound_queue == 0
            || self.link_outbound_queue == 0
            || self.group_commit_max == 0
        {
            return bad(
                "max_in_flight, outbound_queue, link_outbound_queue and group_commit_max must be non-zero",
            );
        }
        if self.max_connections == 0 || self.engine_queue == 0 || self.db_queue == 0 {
            return bad("max_connections, engine_queue and db_queue must be non-zero");
        }
        // A queue must hold the largest answer, or that answer alone would close its desktop.
        let max_frame = self.max_frame as usize;
        if self.engine_queue_bytes < max_frame || self.db_queue_bytes < max_frame {
            return bad("engine_queue_bytes and db_queue_bytes must be at least max_frame");
        }
        if self.outbound_queue_bytes < max_frame || self.link_outbound_queue_bytes < max_frame {
            return bad(
                "outbound_queue_bytes and link_outbound_queue_bytes must be at least max_frame",
            );
        }
        if !matches!(
            self.sqlite_synchronous.as_str(),
            "full" | "normal" | "extra"
        ) {
            return bad("sqlite_synchronous must be full, normal or extra");
        }
        let a = &self.auth;
        if a.threads == 0 || a.queue == 0 || a.lockout_after == 0 || a.lockout_cap == 0 {
            return bad(
                "auth.threads, auth.queue, auth.lockout_after and auth.lockout_cap must be non-zero",
            );
        }
        if a.reconnect_ttl_s == 0 || a.lockout_base_ms == 0 || a.lockout_max_ms < a.lockout_base_ms
        {
            return bad(
                "auth.reconnect_ttl_s and auth.lockout_base_ms must be non-zero, and auth.lockout_max_ms at least auth.lockout_base_ms",
            );
        }
        let r = &self.resume;
        if r.grace_ms > 3_600_000 || r.idem_keys == 0 || r.idem_keys > 4096 {
            return bad("resume.grace_ms must be at most 3600000, resume.idem_keys 1 to 4096");
        }
        if r.buffer_bytes < 4096 || r.total_bytes < r.buffer_bytes {
            return bad(
                "resume.buffer_bytes must be at least 4096, and resume.total_bytes at least resume.buffer_bytes",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.tenants {
            if t.id == 0 {
                return bad("tenant id 0 is reserved for control frames");
            }
            if !seen.insert(t.id) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {} listed twice",
                    t.id
                )));
            }
        }
        Ok(())
    }

    /// What `--check-config` prints: the settings an operator checks first, one per line,
    /// with no secret (the link secret by its length and source only).
    pub fn summary(&self) -> String {
        let on_off = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
        let tls = match &self.tls {
            Some(t) if t.client_ca.is_some() => "TLS, links need a client certificate",
            Some(_) => "TLS",
            None => "plain TCP",
        };
        let secret = match (&self.link_secret_file, self.link_secret.len()) {
            (_, 0) => "none (every link is refused)".to_string(),
            (Some(p), n) => format!("{n} bytes, from {}", p.display()),
            (None, n) => format!("{n} bytes, inline"),
        };
        let tenants: Vec<String> = self
            .tenants
            .iter()
            .map(|t| format!("{} {}", t.id, t.name))
            .collect();
        [
            "config ok".to_string(),
            format!("  listen        {} ({tls})", self.listen),
            format!("  role          {:?}, instance {}", self.role, self.instance),
            match self.storage.backend {
                Backend::Sqlite => format!(
                    "  db            {} (synchronous {}{})",
                    self.db.display(),
                    self.sqlite_synchronous,
                    if self.standby { ", standby" } else { "" }
                ),
                Backend::Postgres => format!(
                    "  db            {}{}{}",
                    self.storage.describe_postgres(),
                    if self.role.ixn() {
                        format!(", tenant leases of {} ms", self.storage.lease_ms)
                    } else {
                        String::new()
                    },
                    if self.standby { ", standby" } else { "" }
                ),
            },
            format!("  link secret   {secret}"),
            if tenants.is_empty() {
                // Legal (a server may be set up before its tenants), but a desktop of any
                // tenant is refused until one is added: say so where the operator looks.
                "  tenants       none (every desktop is refused until [[tenants]] are added)"
                    .to_string()
            } else {
                format!("  tenants       {}", tenants.join(", "))
            },
            format!(
                "  limits        max_frame {}, max_in_flight {}, max_connections {}, request_timeout_ms {}",
                self.max_frame, self.max_in_flight, self.max_connections, self.request_timeout_ms
            ),
            format!(
                "  queues        engine {} / {} bytes, db {} / {} bytes, group_commit_max {}",
                self.engine_queue,
                self.engine_queue_bytes,
                self.db_queue,
                self.db_queue_bytes,
                self.group_commit_max
            ),
            format!(
                "  admin         http {}, line protocol {}, token {}",
                on_off(self.http_listen),
                on_off(self.admin_listen),
                self.admin_token_file
                    .as_ref()
                    .map_or("none (controls refused)".to_string(), |p| format!("from {}", p.display()))
            ),
        ]
        .join("\n")
    }

    /// Where the data lives: the SQLite file with its options, or the PostgreSQL database.
    pub fn location(&self) -> Location {
        match self.storage.backend {
            Backend::Sqlite => Location::Sqlite {
                path: self.db.clone(),
                opts: SqliteOptions {
                    synchronous: self.sqlite_synchronous.clone(),
                    busy_timeout: std::time::Duration::from_millis(u64::from(
                        self.sqlite_busy_timeout_ms,
                    )),
                    max_page_count: self.sqlite_max_page_count,
                },
            },
            Backend::Postgres => {
                Location::Postgres(Box::new(self.storage.postgres(&self.instance)))
            }
        }
    }

    /// Read `link_secret_file` into `link_secret`, and `storage.password_file`.
    ///
    /// # Errors
    /// Both `link_secret` and its file set, or a file cannot be read.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        self.storage
            .read_password_file()
            .map_err(ConfigError::Invalid)?;
        let Some(p) = &self.link_secret_file else {
            return Ok(());
        };
        if !self.link_secret.is_empty() {
            return Err(ConfigError::Invalid(
                "link_secret and link_secret_file are both set; keep one".into(),
            ));
        }
        let text = std::fs::read_to_string(p)
            .map_err(|e| ConfigError::Invalid(format!("link_secret_file {}: {e}", p.display())))?;
        self.link_secret = LinkSecret(text.trim().to_string());
        Ok(())
    }

    /// Why the link secret is too weak to start with, if it is (empty is not weak: links
    /// are simply refused).
    pub fn weak_link_secret(&self) -> Option<String> {
        let n = self.link_secret.len();
        (n > 0 && n < MIN_SECRET_LEN).then(|| {
            format!(
                "link_secret is {n} bytes; use at least {MIN_SECRET_LEN} random bytes (or start with --allow-weak-link-secret)"
            )
        })
    }

    /// The lockout rules of `[auth]`.
    pub fn lockout_rules(&self) -> crate::auth::lockout::Rules {
        crate::auth::lockout::Rules {
            after: self.auth.lockout_after,
            base: std::time::Duration::from_millis(self.auth.lockout_base_ms),
            max: std::time::Duration::from_millis(self.auth.lockout_max_ms),
            cap: self.auth.lockout_cap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses_and_has_no_secret() {
        let c = Config::from_toml(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.tenants.len(), 2);
        assert!(c.link_secret.is_empty());
        assert_eq!(c.weak_link_secret(), None);
    }

    #[test]
    fn rejects_unknown_and_bad() {
        assert!(Config::from_toml("bogus = 1").is_err());
        assert!(Config::from_toml("max_frame = 131071").is_err());
        assert!(Config::from_toml("max_frame = 131072").is_ok());
        assert!(Config::from_toml("[[tenants]]\nid = 0").is_err());
        // The shared per-tenant token is gone; a config still carrying one is refused.
        let e = Config::from_toml("[[tenants]]\nid = 1\ntokens = [\"x\"]").unwrap_err();
        assert!(e.to_string().contains("tokens"), "{e}");
        assert!(Config::from_toml("[auth]\nthreadz = 1").is_err());
        assert!(Config::from_toml("[auth]\nthreads = 0").is_err());
        for zero in ["max_connections", "engine_queue", "db_queue"] {
            assert!(Config::from_toml(&format!("{zero} = 0")).is_err(), "{zero}");
        }
        assert!(Config::from_toml("invite_timeout_ms = 0").is_err());
        assert!(Config::from_toml("shutdown_grace_ms = 99999999").is_err());
        assert!(Config::from_toml("shutdown_grace_ms = 0").is_ok());
        assert!(Config::from_toml("outbound_queue_bytes = 131072").is_err());
        assert!(Config::from_toml("link_outbound_queue_bytes = 1000").is_err());
        let c = Config::from_toml("max_frame = 131072\noutbound_queue_bytes = 131072").unwrap();
        assert_eq!(c.outbound_queue_bytes, 131_072);
    }

    #[test]
    fn debug_does_not_show_the_link_secret() {
        let c = Config::from_toml("link_secret = \"s3cr3t-s3cr3t\"").unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert!(d.contains("13 bytes"), "{d}");
    }

    #[test]
    fn link_secret_file_is_read_trimmed_and_not_with_link_secret() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("link.secret");
        std::fs::write(&f, format!("{}\n", "k".repeat(40))).unwrap();
        let mut c = Config::from_toml(&format!("link_secret_file = \"{}\"", f.display())).unwrap();
        c.read_secret_files().unwrap();
        assert_eq!(c.link_secret.as_bytes(), "k".repeat(40).as_bytes());
        assert_eq!(c.weak_link_secret(), None);
        let mut both = Config::from_toml(&format!(
            "link_secret = \"{}\"\nlink_secret_file = \"{}\"",
            "x".repeat(32),
            f.display()
        ))
        .unwrap();
        assert!(both.read_secret_files().is_err());
        let mut missing =
            Config::from_toml("link_secret_file = \"/nonexistent/link.secret\"").unwrap();
        assert!(missing.read_secret_files().is_err());
    }

    #[test]
    fn the_check_summary_names_the_secret_by_length_only() {
        let secret = "s".repeat(20) + "-very-secret-value";
        let c = Config::from_toml(&format!("link_secret = \"{secret}\"")).unwrap();
        let s = c.summary();
        assert!(!s.contains(&secret), "{s}");
        assert!(s.contains("38 bytes, inline"), "{s}");
    }

    #[test]
    fn postgres_storage_needs_no_data_dir_and_is_named_in_the_summary() {
        let mut c =
            Config::from_toml("[storage]\nbackend = \"postgres\"\nhost = \"db1\"\ndbname = \"cc\"")
                .unwrap();
        c.data_dir = Some(PathBuf::from("/nonexistent/never-created"));
        c.resolve_db().unwrap();
        assert!(!c.db.is_absolute(), "no data file on PostgreSQL");
        assert!(matches!(c.location(), Location::Postgres(_)));
        let s = c.summary();
        assert!(
            s.contains(
                "db            postgres deskmux@db1:5432/cc (no password, 1 connection), tenant leases of 10000 ms"
            ),
            "{s}"
        );
        assert!(
            s.contains("tenants       none (every desktop is refused"),
            "a configuration without tenants says what that means: {s}"
        );
        // UCS-only instances on PostgreSQL are all active: a standby of one is refused.
        let e =
            Config::from_toml("role = \"ucs\"\nstandby = true\n[storage]\nbackend = \"postgres\"")
                .unwrap_err();
        assert!(e.to_string().contains("needs no standby"), "{e}");
        assert!(Config::from_toml("role = \"ucs\"\nstandby = true").is_ok());
        assert!(Config::from_toml("[storage]\nbackend = \"postgres\"\ndbname = \"\"").is_err());
    }

    #[test]
    fn short_link_secret_is_weak() {
        let c = Config::from_toml("link_secret = \"short\"").unwrap();
        assert!(c.weak_link_secret().unwrap().contains("5 bytes"));
        let c = Config::from_toml(&format!("link_secret = \"{}\"", "x".repeat(32))).unwrap();
        assert_eq!(c.weak_link_secret(), None);
    }
}
