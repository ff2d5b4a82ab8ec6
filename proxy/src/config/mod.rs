//! The proxy's configuration: one TOML file, every field documented with its default.
//!
//! It is its own module so that the defaults live in one place ([`Config::default`],
//! [`Limits::default`] and [`EXAMPLE_CONFIG`]) and so that the command line (`--listen`,
//! `--admin`, `--workers`, `--upstream`) can override a few fields after the file is read.
//! `proxy --check-config` parses and validates a file and exits.
//!
//! ```toml
//! listen = "127.0.0.1:7200"        # desktop port; port 0 picks a free port (shared by workers)
//! admin = "127.0.0.1:7290"         # admin HTTP (/metrics, /health, /status); port 0 = any
//! workers = 2                      # worker processes sharing the port with SO_REUSEPORT
//! link_secret_file = "/etc/deskmux/link.secret" # or link_secret = "..." inline (not both)
//! link_secret = "..."              # presented in LINK_HELLO to every upstream: 32 bytes or more
//! backlog = 4096                   # listen backlog
//!
//! [worker]
//! driver = "mio"                   # I/O driver: "mio" (epoll) or "uring" (io_uring; built with
//!                                  # the `uring` feature; plain TCP desktops and links only)
//!
//! [limits]
//! # max_desktops = 18910           # desktops per worker; default: the open-file limit minus
//!                                  # links, listeners, admin and closing sockets (see fd_limit)
//! max_in_flight = 256              # requests in flight per desktop (TOO_MANY_IN_FLIGHT past it)
//! max_frame = 2097152              # largest frame (head + body) accepted from a desktop
//! handshake_ms = 10000             # the whole hello must complete within this
//! heartbeat_ms = 5000              # heartbeat interval; 3 silent intervals close a desktop
//! request_timeout_ms = 30000       # no answer upstream within this: TIMEOUT (outcome unknown)
//! out_queue_frames = 4096          # frames queued towards one desktop before SLOW_CONSUMER
//! out_queue_bytes = 8388608        # bytes queued towards one desktop before SLOW_CONSUMER
//! link_queue_bytes = 67108864      # bytes queued on one link before new requests get OVERLOADED
//! drain_grace_ms = 5000            # SIGTERM: how long in-flight requests may take
//! go_away_reconnect_ms = 1000      # reconnect_ms announced to desktops in GO_AWAY
//! link_backoff_min_ms = 100        # first link reconnect delay (doubles, with ±50 % jitter)
//! link_backoff_max_ms = 5000       # largest link reconnect delay
//! link_heartbeat_ms = 0            # proxy-side link heartbeat; 3 intervals without a whole
//!                                  # frame = stopped (0: the server's announced heartbeat_ms)
//! hello_max_frame = 16384          # largest frame before the session is open (the hello)
//! frame_timeout_ms = 30000         # a desktop frame begun must be complete within this
//! link_frame_timeout_ms = 5000     # a link frame begun must be complete within this
//! max_subscriptions = 256          # subscriptions per desktop (TOO_MANY_SUBSCRIPTIONS past it)
//! max_desktops_per_source = 4096   # desktops per source IP address per worker (0: no cap)
//! desktop_read_bytes_per_s = 8388608 # one desktop's input after a burst of 2 max_frames (0: none)
//! worker_queue_bytes = 536870912   # everything a worker queues; over 3/4: backlogged desktops
//!                                  # are closed first, then new requests get OVERLOADED
//!
//! [[upstream]]
//! name = "core-1"                  # instance name, for logs and metrics
//! service = ["interaction", "ucs"] # one or several: "interaction"/"ixn", "ucs", or a number
//! addr = "127.0.0.1:7100"
//! links = 2                        # links per worker to this instance (the fan-out)
//! cluster = ""                     # a key of [clusters] ("" = default cluster, round robin)
//! backup = "core-1b"               # optional: warm-standby backup (another upstream's name)
//!
//! [clusters.core]
//! balance = "round_robin"          # or "least_outstanding" (power of two choices)
//!
//! [[tenant]]                       # tenant 7's UCS sessions only on "ucs-2" (or its backup)
//! id = 7
//! ucs = "ucs-2"
//!
//! # Link security: TLS per upstream, or plain TCP only when switched on explicitly.
//! plaintext_links = false          # true: upstreams without TLS may use plain TCP links
//! [link_tls]                       # TLS on every link (unless an upstream says tls = false)
//! ca = "/etc/deskmux/core-ca.pem"  # CA(s) the servers' certificates must chain to
//! client_cert = "..."              # optional: mutual TLS (core-server's tls.client_ca)
//! client_key = "..."
//! # and per [[upstream]], overriding: tls = true|false, ca, server_name (default: addr's IP),
//! # client_cert, client_key
//!
//! [tls]                            # optional: TLS on the desktop TCP port (absent: plain TCP)
//! cert = "/etc/deskmux/proxy.crt"  # PEM chain, leaf first; re-read on SIGHUP (rotation)
//! key = "/etc/deskmux/proxy.key"   # PEM private key; ALPN offered: deskmux/1
//!
//! [quic]                           # optional: QUIC desktops on UDP, same port number as listen
//! # cert = "..."  key = "..."      # default: the [tls] ones; re-read on SIGHUP too
//! max_handshakes = 256             # per worker, connections handshaking at once
//! max_desktops = 100000            # per worker; QUIC desktops use no file descriptor
//! retry = true                     # stateless retry for unvalidated addresses
//! max_handshakes_per_source = 64   # per worker and source IP address, handshaking at once
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

mod error;
mod fd_limit;
mod ranges;
mod report;
mod validate;

pub use error::{ConfigError, Located, Source};
pub use fd_limit::{DesktopCap, FdLimit, MAX_DESKTOPS_AUTO};
pub use ranges::{RANGES, Range};
pub use report::restart_needed;

/// Shortest link secret accepted without `--allow-weak-link-secret`.
pub const MIN_SECRET_LEN: usize = 32;

/// Secrets published in this repository (examples, old defaults): never accepted.
const KNOWN_SECRETS: &[&str] = &[
    "REPLACE-with-32-or-more-random-bytes",
    "deskmux-link-secret",
    "deskmux-demo-link-secret",
];

/// The link secret: a string whose `Debug` shows only its length (so `--check-config` and
/// logs of the configuration never carry it).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct LinkSecret(String);

impl LinkSecret {
    /// The secret's bytes, for the link hello.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkSecret(<{} bytes>)", self.0.len())
    }
}

impl Config {
    /// Why the link secret must not be used, if so: empty, shorter than [`MIN_SECRET_LEN`], or
    /// one published in this repository.
    pub fn weak_link_secret(&self) -> Option<String> {
        let s = &self.link_secret;
        if KNOWN_SECRETS.contains(&s.0.as_str()) {
            return Some("link_secret is a published example; set your own".into());
        }
        (s.len() < MIN_SECRET_LEN).then(|| {
            format!(
                "link_secret is {} bytes; use at least {MIN_SECRET_LEN} random bytes",
                s.len()
            )
        })
    }
}

/// A commented example configuration (printed by `proxy --example-config`).
pub const EXAMPLE_CONFIG: &str = r#"# deskmux proxy configuration (see proxy/src/config.rs for every field and its default)
listen = "127.0.0.1:7200"
admin = "127.0.0.1:7290"
workers = 2
# The secret core-server's `link_secret` holds: 32 bytes or more, random, yours. The proxy
# refuses to start with this placeholder.
link_secret = "REPLACE-with-32-or-more-random-bytes"

[limits]
# max_desktops = 19000          # default: what the open-file limit (ulimit -n) allows
max_in_flight = 256
heartbeat_ms = 5000

[[upstream]]
name = "core-1"
service = ["interaction", "ucs"]
addr = "127.0.0.1:7100"
links = 2
# cluster = "core"              # declared under [clusters.core]
# backup = "core-1b"            # warm standby: a core-server --standby on the same data file

# [clusters.core]
# balance = "least_outstanding" # or "round_robin" (default)

# [[tenant]]                    # tenant routing: tenant 7's UCS only on instance "ucs-2",
# id = 7                        # its interactions only on "ixn-2" (the Interaction Server
# ucs = "ucs-2"                 # instance holding its lease); either key may be left out
# interaction = "ixn-2"

# Links to core-server: TLS, verified against the CA that signed core-server's certificate
# (uncomment and point at your CA). Without it the links are plain TCP, which the proxy
# refuses to start with unless `plaintext_links = true` (or `tls = false` on the upstream).
# [link_tls]
# ca = "/etc/deskmux/core-ca.pem"
# client_cert = "/etc/deskmux/proxy-link.crt"   # mutual TLS (core-server tls.client_ca)
# client_key = "/etc/deskmux/proxy-link.key"

# [tls]                         # TLS on the desktop TCP port (absent: plain TCP)
# cert = "/etc/deskmux/proxy.crt"
# key = "/etc/deskmux/proxy.key"

# [quic]                        # QUIC desktops on UDP, same port number (certificate: [tls]'s)
# max_handshakes = 256
# max_desktops = 100000
"#;

/// A service byte, written in TOML as `"interaction"` (or `"ixn"`), `"ucs"`, `"gms"`, or a
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceId(pub u8);

impl<'de> Deserialize<'de> for ServiceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u8),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ServiceId(n)),
            Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl std::str::FromStr for ServiceId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "interaction" | "ixn" => Ok(ServiceId(1)),
            "ucs" => Ok(ServiceId(2)),
            "gms" => Ok(ServiceId(3)),
            other => other
                .parse::<u8>()
                .map(ServiceId)
                .map_err(|_| format!("unknown service {other:?} (interaction, ucs or a number)")),
        }
    }
}

/// One service or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(ServiceId),
    Many(Vec<ServiceId>),
}

fn services_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ServiceId>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn default_links() -> u16 {
    2
}

/// One upstream server instance.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Instance name, for logs and metrics. Default: the address.
    #[serde(default)]
    pub name: String,
    /// Services this instance serves (`service = "ucs"` or `service = ["interaction", "ucs"]`).
    #[serde(rename = "service", deserialize_with = "services_de")]
    pub services: Vec<ServiceId>,
    /// Address of the server.
    pub addr: SocketAddr,
    /// Links each worker keeps to this instance (the fan-out). Default 2.
    #[serde(default = "default_links")]
    pub links: u16,
    /// The cluster this instance belongs to (a key of `[clusters]`, which sets its balancing).
    /// Default `""`: the implicit default cluster (round robin).
    #[serde(default)]
    pub cluster: String,
    /// Capabilities this instance advertises (queue or strategy names), for a cluster with
    /// `capability_key`: requests naming one go round robin among the instances advertising
    /// it. Default: none.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Warm standby: the name of this instance's backup (another `[[upstream]]`). The backup
    /// gets no new sessions while this instance (the primary) is up and announces itself
    /// primary; once every link to the primary is lost (or it announces `role = backup`),
    /// new sessions go to the backup. Default: none.
    #[serde(default)]
    pub backup: Option<String>,
    /// TLS on this instance's links: `true` (needs a `ca`, here or in `[link_tls]`), `false`
    /// (plain TCP, explicitly: the opt-in `plaintext_links` gives for every upstream).
    /// Default: TLS when `[link_tls]` is present or `ca` is set here; otherwise plain TCP,
    /// which the proxy refuses to start with unless `plaintext_links = true`.
    #[serde(default)]
    pub tls: Option<bool>,
    /// PEM file of the CA(s) the server's certificate must chain to. Default: `[link_tls]`'s.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must carry (DNS name or IP address). Default: the IP
    /// address of `addr`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM certificate chain presented to the server (mutual TLS, core-server's
    /// `tls.client_ca`). Default: `[link_tls]`'s; none: no client certificate.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`. Default: `[link_tls]`'s.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl Upstream {
    /// Parse a command-line override `SERVICE[,SERVICE]=ADDR` (e.g. `ixn,ucs=127.0.0.1:7100`).
    ///
    /// # Errors
    /// A bad service name or address.
    pub fn parse_override(s: &str) -> Result<Upstream, String> {
        let (svc, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("upstream override {s:?}: expected SERVICE=ADDR"))?;
        let services = svc
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<ServiceId>, String>>()?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("upstream override {s:?}: {e}"))?;
        Ok(Upstream {
            name: format!("{svc}@{addr}"),
            services,
            addr,
            links: default_links(),
            cluster: String::new(),
            capabilities: Vec::new(),
            backup: None,
            tls: None,
            ca: None,
            server_name: None,
            client_cert: None,
            client_key: None,
        })
    }
}

/// How new sessions are spread over the instances of a cluster.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each new session goes to the next eligible instance in turn (default).
    #[default]
    RoundRobin,
    /// Power of two choices: two eligible instances are drawn at random and the one with fewer
    /// requests in flight (over this worker's links) gets the session.
    LeastOutstanding,
}

/// One cluster: the instances whose `cluster` names it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// Balancing of new sessions over the cluster's instances. Default `round_robin`.
    pub balance: Balance,
    /// Partitioned routing (the seeds' SMS subsets): the body field (a `str`) holding each
    /// request's key, e.g. `"phone"`. With it, a desktop's hello opens a session on every
    /// partition's instance and each request goes to the instance owning its key. Default:
    /// none (not partitioned).
    pub partition_key: Option<String>,
    /// The characters keys are made of. Default `"0123456789"`.
    pub key_space: String,
    /// The partitions: each instance of the cluster (backups excepted) with the key prefixes
    /// it owns. Validated: no overlaps, no gaps over the key space. At most 3 (a desktop has
    /// at most 4 upstream sessions). Default: none.
    pub partitions: Vec<Partition>,
    /// Capability routing (the seeds' URS round robin): the body field (a `str`) naming the
    /// capability, e.g. `"queue"`. With it, a desktop's hello opens a session on every
    /// running instance of the cluster (at most 4), and each request of `capability_types`
    /// goes round robin among the instances advertising its capability (`capabilities` on
    /// the upstream); other requests use the session's alias. If an instance dies, its
    /// capability-routed requests that were not sent are resubmitted to another instance
    /// with the capability; sent ones get `LINK_LOST` (never duplicated). Default: none.
    pub capability_key: Option<String>,
    /// Message types routed by capability. Default `[32]` (Interaction `SUBMIT`, 0x0020).
    pub capability_types: Vec<u16>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            balance: Balance::default(),
            partition_key: None,
            key_space: "0123456789".into(),
            partitions: Vec::new(),
            capability_key: None,
            capability_types: vec![0x0020],
        }
    }
}

/// One partition of a partitioned cluster.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// The owning instance (an `[[upstream]]` name in this cluster).
    pub instance: String,
    /// Key prefixes it owns (e.g. `["1", "2", "3"]`).
    pub prefixes: Vec<String>,
}

/// Tenant routing: a tenant's UCS sessions, its Interaction Server sessions, or both, open
/// only on one named instance (or its configured backup).
///
/// Why both services: UCS instances may split tenants between them for capacity, and an
/// Interaction Server partitioned by tenant (core-server on PostgreSQL: each instance leases
/// its tenants) can only serve the tenants it owns: a desktop of another tenant balanced onto
/// it would be refused. At least one of `ucs` and `interaction` is given.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantRoute {
    /// Tenant id (as in frame heads), non-zero.
    pub id: u32,
    /// Name of the `[[upstream]]` instance serving this tenant's UCS. Several tenants may
    /// share one. Unset: the tenant's UCS sessions are balanced like any other.
    #[serde(default)]
    pub ucs: Option<String>,
    /// Name of the `[[upstream]]` instance serving this tenant's interactions (the instance
    /// holding the tenant's lease). Unset: balanced.
    #[serde(default)]
    pub interaction: Option<String>,
}

impl TenantRoute {
    /// The `(service byte, service key, instance name)` triples this route pins.
    pub fn pins(&self) -> impl Iterator<Item = (u8, &'static str, &str)> {
        [
            (1u8, "interaction", &self.interaction),
            (2u8, "ucs", &self.ucs),
        ]
        .into_iter()
        .filter_map(|(s, key, n)| Some((s, key, n.as_deref()?)))
    }
}

/// Per-desktop and per-worker limits. All can be changed by SIGHUP.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Desktops per worker (TCP and TLS: each holds a file descriptor); past it a new
    /// connection gets OVERLOADED and is closed. Default: from the worker's open-file limit
    /// (`RLIMIT_NOFILE`) minus what links, listeners, the admin port and closing sockets
    /// need; a value set above that is lowered to it, with a warning (see `fd_limit`).
    pub max_desktops: usize,
    /// Requests one desktop may have in flight; more get TOO_MANY_IN_FLIGHT. Default 256.
    pub max_in_flight: u32,
    /// Largest frame (head + body) accepted from a desktop, bytes. Default 2 MiB.
    pub max_frame: u32,
    /// The whole desktop hello must complete within this (ms), not reset per byte. Default 10000.
    pub handshake_ms: u32,
    /// Heartbeat interval announced to desktops (ms); silent for 3 intervals closes. Default 5000.
    pub heartbeat_ms: u32,
    /// A request unanswered upstream for this long gets TIMEOUT (ms; looked for every
    /// sixteenth of it, at least every 100 ms, so at most 1/16 late). At most one hour.
    /// Default 30000.
    pub request_timeout_ms: u32,
    /// Frames queued towards one desktop before it is a slow consumer. Default 4096.
    pub out_queue_frames: usize,
    /// Bytes queued towards one desktop before it is a slow consumer. Default 8 MiB.
    pub out_queue_bytes: usize,
    /// Bytes queued on one link before new requests get OVERLOADED. Default 64 MiB.
    pub link_queue_bytes: usize,
    /// SIGTERM drain: how long in-flight requests may take before they are failed (ms). Default 5000.
    pub drain_grace_ms: u32,
    /// `reconnect_ms` announced to desktops in GO_AWAY. Default 1000.
    pub go_away_reconnect_ms: u32,
    /// First link reconnect delay (ms); it doubles per failure, with ±50 % jitter. Default 100.
    pub link_backoff_min_ms: u32,
    /// Largest link reconnect delay (ms). Default 5000.
    pub link_backoff_max_ms: u32,
    /// Link heartbeat interval (ms) used by the proxy when shorter than the server's announced
    /// `heartbeat_ms`: a link silent for 3 intervals is failed and, if it was the instance's
    /// last, the instance is `stopped` (and a warm-standby backup takes new sessions). The
    /// server answers heartbeats at once, so e.g. 200 detects a hung server in ≈600 ms.
    /// Liveness counts whole frames: bytes of a frame that never completes do not keep a link
    /// alive. Default 0: the server's interval.
    pub link_heartbeat_ms: u32,
    /// Largest frame (head + body) accepted from a desktop before its session is open (the
    /// hello), and most bytes buffered for it meanwhile. Default 16384.
    pub hello_max_frame: u32,
    /// A desktop frame whose first byte arrived must be complete within this (ms); otherwise
    /// `DEADLINE` and close. Not counted while the proxy itself holds the desktop back
    /// (backpressure). Default 30000.
    pub frame_timeout_ms: u32,
    /// A frame from a server whose first byte arrived must be complete within this (ms);
    /// otherwise the link is failed at once (a stalled link). Default 5000.
    pub link_frame_timeout_ms: u32,
    /// Subscriptions one desktop may hold (pending ones count); more get
    /// `TOO_MANY_SUBSCRIPTIONS`. Default 256.
    pub max_subscriptions: u32,
    /// Desktops per source IP address per worker, over TCP, TLS and QUIC together; past it a
    /// new connection gets `OVERLOADED` and is closed. 0: no cap. Default 4096 (raise it for
    /// sites whose desktops reach the proxy through one NAT address).
    pub max_desktops_per_source: u32,
    /// Bytes a second one desktop may send, after a burst of two `max_frame`s; past it the
    /// desktop is not read until it is back under (0: no limit). What a desktop sends is read,
    /// forwarded and walked by the server before anything can refuse it, so one sending
    /// large frames flat out would take the link it shares with thousands of others. Default
    /// 8388608 (8 MiB/s: four 2 MiB frames a second).
    pub desktop_read_bytes_per_s: u64,
    /// Bytes one worker may hold queued in all: desktop outbound queues, partial frames and
    /// link queues. Above 3/4 of it, the desktops with the largest backlogs (queues past half
    /// their bounds: they do not read) are closed as slow consumers, largest first; if that
    /// frees too little (the bytes wait on an upstream link), new requests and hellos get
    /// `OVERLOADED` (not sent). A partial frame may grow up to the whole budget; a frame
    /// towards a desktop that would pass it makes that desktop a slow consumer if it has
    /// anything queued. Default 512 MiB.
    pub worker_queue_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_desktops: fd_limit::MAX_DESKTOPS_AUTO,
            max_in_flight: 256,
            max_frame: 2 * 1024 * 1024,
            handshake_ms: 10_000,
            heartbeat_ms: 5000,
            request_timeout_ms: 30_000,
            out_queue_frames: 4096,
            out_queue_bytes: 8 * 1024 * 1024,
            link_queue_bytes: 64 * 1024 * 1024,
            drain_grace_ms: 5000,
            go_away_reconnect_ms: 1000,
            link_backoff_min_ms: 100,
            link_backoff_max_ms: 5000,
            link_heartbeat_ms: 0,
            hello_max_frame: 16 * 1024,
            frame_timeout_ms: 30_000,
            link_frame_timeout_ms: 5000,
            max_subscriptions: 256,
            max_desktops_per_source: 4096,
            desktop_read_bytes_per_s: 8 << 20,
            worker_queue_bytes: 512 * 1024 * 1024,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Desktop listen address. Default `127.0.0.1:7200`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Admin HTTP address. Default `127.0.0.1:7290`; port 0 picks a free port.
    pub admin: SocketAddr,
    /// Worker processes. Default 2.
    pub workers: usize,
    /// Link secret presented to every upstream: at least [`MIN_SECRET_LEN`] bytes (a shorter,
    /// empty or example one refuses to start without `--allow-weak-link-secret`). No default.
    pub link_secret: LinkSecret,
    /// A file holding the link secret (surrounding whitespace ignored), instead of
    /// `link_secret`, so that the configuration holds no secret and may be shipped, printed
    /// or world-readable. Read at start and on every SIGHUP. Not both.
    pub link_secret_file: Option<PathBuf>,
    /// Listen backlog. Default 4096.
    pub backlog: i32,
    /// Limits.
    pub limits: Limits,
    /// Upstream instances. Default: none (every hello gets UNAVAILABLE).
    pub upstream: Vec<Upstream>,
    /// Clusters by name (`[clusters.NAME]`), referenced by `upstream.cluster`. Instances
    /// without a cluster form the default cluster (round robin). Default: none.
    pub clusters: std::collections::BTreeMap<String, Cluster>,
    /// Tenant → UCS instance (`[[tenant]]`, reloadable with SIGHUP). A mapped tenant's UCS
    /// sessions open only on its instance (or that instance's backup); unmapped tenants are
    /// balanced as usual. Default: none.
    pub tenant: Vec<TenantRoute>,
    /// TLS on the desktop TCP port (`[tls]`). Default: none (plain TCP).
    pub tls: Option<Tls>,
    /// QUIC desktops on UDP, same port number as `listen` (`[quic]`). Default: none.
    pub quic: Option<Quic>,
    /// TLS on every upstream link that does not say `tls = false` (`[link_tls]`; each
    /// upstream may override its fields). Default: none.
    pub link_tls: Option<LinkTls>,
    /// Allow links in plain TCP to upstreams that configure no TLS. Without it (the
    /// default), the proxy refuses to start (and a SIGHUP is not applied) while such an
    /// upstream exists: a plaintext link carries the link secret and every desktop's
    /// credential readable. A plaintext link to a non-loopback address is logged as a
    /// warning at start. `--plaintext-links` sets it. Default false.
    pub plaintext_links: bool,
    /// How each worker does its I/O (`[worker]`). Read when a worker starts.
    pub worker: WorkerSection,
}

/// How each worker does its I/O (`[worker]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSection {
    /// The I/O driver around the worker's core. Default `"mio"`.
    pub driver: Driver,
}

/// The I/O driver of a worker: both drive the same sans-IO core (`crate::core`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// epoll readiness through mio: every transport (TCP, TLS, QUIC). The default.
    #[default]
    Mio,
    /// io_uring completions (multishot accept and receive into a ring of provided buffers,
    /// one `io_uring_enter` per round). Needs the `uring` cargo feature; plain TCP desktops
    /// and plain TCP links only (no `[tls]`, `[quic]` or TLS links).
    Uring,
}

impl std::str::FromStr for Driver {
    type Err = String;

    fn from_str(s: &str) -> Result<Driver, String> {
        match s {
            "mio" => Ok(Driver::Mio),
            "uring" => Ok(Driver::Uring),
            other => Err(format!("unknown driver {other:?} (mio or uring)")),
        }
    }
}

impl Driver {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Mio => "mio",
            Driver::Uring => "uring",
        }
    }
}

/// TLS for upstream links (`[link_tls]`), the defaults of every `[[upstream]]`'s `ca`,
/// `client_cert` and `client_key`. The proxy offers ALPN `deskmux/1`, verifies the server's
/// certificate against `ca` and the upstream's `server_name`, and writes `LINK_HELLO` (the
/// link secret) only once it did. The files are read when a worker starts and again on
/// SIGHUP (new links use the new files; files that cannot be used keep the previous ones).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LinkTls {
    /// PEM file of the CA(s) that sign the servers' certificates. Required here or on each
    /// TLS upstream.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain presented to servers (mutual TLS). Default: none.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// QUIC desktops (always encrypted: TLS 1.3 inside QUIC, ALPN `deskmux/1`).
///
/// The certificate and key are re-read on SIGHUP exactly like `[tls]`'s (new connections get
/// the new certificate, established ones keep theirs, bad files keep the previous one and are
/// counted in `deskmux_proxy_cert_reload_failures`). The other fields here are read when a
/// worker starts; adding or removing the section needs a restart.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Quic {
    /// PEM certificate chain. Default: `tls.cert` (one of the two must be set).
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key. Default: `tls.key`.
    pub key: Option<std::path::PathBuf>,
    /// Connections handshaking at once per worker; more are refused. Default 256.
    pub max_handshakes: usize,
    /// QUIC desktops per worker. They use no file descriptor, so this is not bounded by the
    /// fd limit like `limits.max_desktops` (TCP). Default 100000.
    pub max_desktops: usize,
    /// Stateless retry for every address not yet validated (no state under an Initial
    /// flood; costs one round trip per new connection). Default true.
    pub retry: bool,
    /// Connections from one source IP address handshaking at once per worker; more are
    /// refused, so one address cannot take every handshake slot. Default 64.
    pub max_handshakes_per_source: usize,
}

impl Default for Quic {
    fn default() -> Self {
        Quic {
            cert: None,
            key: None,
            max_handshakes: 256,
            max_desktops: 100_000,
            retry: true,
            max_handshakes_per_source: 64,
        }
    }
}

impl Config {
    /// The QUIC certificate and key paths (`[quic]`, else `[tls]`).
    pub fn quic_cert(&self) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        let q = self.quic.as_ref()?;
        let cert = q
            .cert
            .clone()
            .or_else(|| self.tls.as_ref().map(|t| t.cert.clone()))?;
        let key = q
            .key
            .clone()
            .or_else(|| self.tls.as_ref().map(|t| t.key.clone()))?;
        Some((cert, key))
    }
}

/// TLS for TCP desktops: a certificate chain and its key, PEM files. The server offers ALPN
/// `deskmux/1`.
///
/// Read when a worker starts, and again by every worker on SIGHUP, so certificates rotate
/// without a restart: replace the files (or point `cert`/`key` at new ones), then
/// `kill -HUP <supervisor pid>`. Connections accepted after the reload get the new
/// certificate; established ones keep their session. If the new files cannot be used
/// (unreadable, no certificate or key, key not matching the certificate) the worker logs a
/// warning, counts it in `deskmux_proxy_cert_reload_failures` and keeps serving the previous
/// certificate; the rest of the reload (limits, upstreams) still applies. Adding or removing
/// the `[tls]` section needs a restart (the listener is set up when a worker starts); a SIGHUP
/// that does so is logged and counted as a failure, and the TCP port keeps speaking what it
/// spoke.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first (relative paths: from the proxy's working directory).
    pub cert: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key: std::path::PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7200)),
            admin: SocketAddr::from(([127, 0, 0, 1], 7290)),
            workers: 2,
            link_secret: LinkSecret::default(),
            link_secret_file: None,
            backlog: 4096,
            limits: Limits::default(),
            upstream: Vec::new(),
            clusters: std::collections::BTreeMap::new(),
            tenant: Vec::new(),
            tls: None,
            quic: None,
            link_tls: None,
            plaintext_links: false,
            worker: WorkerSection::default(),
        }
    }
}

impl Config {
    /// Parse and validate a TOML document.
    ///
    /// # Errors
    /// [`ConfigError`] on bad TOML or invalid values.
    pub fn from_toml(s: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(s).map_err(|e| ConfigError::parse(None, s, &e))?;
        c.validate()?;
        Ok(c)
    }

    /// Read and parse a file, without validating it (command-line overrides come next).
    /// A parse error names the file, line, column and key.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn read(path: &std::path::Path) -> Result<(Config, Source), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        let mut c: Config =
            toml::from_str(&text).map_err(|e| ConfigError::parse(Some(path), &text, &e))?;
        if let Some(f) = &c.link_secret_file {
            if !c.link_secret.is_empty() {
                return Err(ConfigError::Invalid(
                    "link_secret and link_secret_file are both set; keep one".into(),
                ));
            }
            let secret = std::fs::read_to_string(f).map_err(|e| ConfigError::Read {
                path: f.display().to_string(),
                source: e,
            })?;
            c.link_secret = LinkSecret(secret.trim().to_string());
        }
        Ok((
            c,
            Source {
                path: path.to_path_buf(),
                text,
            },
        ))
    }

    /// Read, parse and validate a file (certificate files included).
    ///
    /// # Errors
    /// [`ConfigError`], located in the file where it names a key.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let (c, src) = Config::read(path)?;
        c.validate().map_err(|e| e.at(&src))?;
        Ok(c)
    }

    /// Read, parse and validate a file without loading the certificate files it names
    /// ([`Config::validate_settings`]): the SIGHUP reload, where the worker loads them itself
    /// and keeps its previous certificate if they are bad.
    ///
    /// # Errors
    /// [`ConfigError`], located in the file where it names a key.
    pub fn load_settings(path: &std::path::Path) -> Result<Config, ConfigError> {
        let (c, src) = Config::read(path)?;
        c.validate_settings().map_err(|e| e.at(&src))?;
        Ok(c)
    }

    /// Fill in defaults that depend on other fields (instance names).
    pub fn normalize(&mut self) {
        for u in &mut self.upstream {
            if u.name.is_empty() {
                u.name = u.addr.to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests;
