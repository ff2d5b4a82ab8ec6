//! The run configuration: everything a worker process needs, serializable so that the parent
//! can hand it to re-executed shard processes.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What each desktop does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Smallest request/response (`ECHO`): measures the proxy itself.
    Ping,
    /// Realistic agent mix; a share of desktops act as media servers submitting work.
    Agent,
    /// Subscribe to queue events; a share of desktops submit to generate them.
    Supervisor,
    /// Ping load, and all desktops drop and reconnect at once: without, then with jitter.
    Storm,
    /// GMS: simulated mobile clients book access numbers (`ACCESS_REQUEST`); after a think
    /// time the switch "dials" each one from the client's number and matches it
    /// (`ACCESS_MATCH`); every match is checked to return the request that booked it.
    Callback,
}

impl Scenario {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Ping => "ping",
            Scenario::Agent => "agent",
            Scenario::Supervisor => "supervisor",
            Scenario::Storm => "storm",
            Scenario::Callback => "callback",
        }
    }
}

/// How desktops reach the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain TCP: one socket (one file descriptor) per desktop.
    Tcp,
    /// TLS over TCP (ALPN `deskmux/1`): one socket per desktop, like TCP.
    Tls,
    /// QUIC (TLS 1.3, ALPN `deskmux/1`): one connection per desktop with one bidirectional
    /// stream, many desktops per UDP socket (no file descriptor per desktop).
    Quic,
}

impl Transport {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
        }
    }
}

/// One desktop's credential: a line `TENANT<TAB>AGENT<TAB>PASSWORD` of the `--credentials`
/// file (the format `core-server creds import` reads). Its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Cred {
    /// Tenant id.
    pub tenant: u32,
    /// Agent id.
    pub agent: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Cred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cred")
            .field("tenant", &self.tenant)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// Read a credentials file: one `TENANT<TAB>AGENT<TAB>PASSWORD` per line; desktop `i` uses
/// line `i` (wrapping). The file, not the command line, carries the passwords, so `ps` never
/// shows them.
///
/// # Errors
/// Unreadable file, a malformed line, or no line at all.
pub fn read_credentials(path: &std::path::Path) -> Result<Vec<Cred>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("credentials {}: {e}", path.display()))?;
    parse_credentials(&text, &path.display().to_string())
}

/// Parse credential lines (see [`read_credentials`]); `origin` names them in errors.
///
/// # Errors
/// A malformed line, or no line at all.
pub fn parse_credentials(text: &str, origin: &str) -> Result<Vec<Cred>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut it = line.splitn(3, '\t');
        let (Some(t), Some(a), Some(p)) = (it.next(), it.next(), it.next()) else {
            return Err(format!(
                "credentials {origin} line {}: expected TENANT<TAB>AGENT<TAB>PASSWORD",
                i + 1
            ));
        };
        out.push(Cred {
            tenant: t
                .trim()
                .parse()
                .map_err(|_| format!("credentials {origin} line {}: bad tenant", i + 1))?,
            agent: a.to_string(),
            password: p.to_string(),
        });
    }
    if out.is_empty() {
        return Err(format!("credentials {origin}: no credential in it"));
    }
    Ok(out)
}

/// The credentials as lines [`parse_credentials`] reads: what a parent process hands a shard
/// over its stdin pipe (never its command line or environment, which `ps` and
/// `/proc/PID/environ` show).
pub fn credential_lines(creds: &[Cred]) -> String {
    let mut s = String::new();
    for c in creds {
        s.push_str(&format!("{}\t{}\t{}\n", c.tenant, c.agent, c.password));
    }
    s
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// Target sites, in failover order (desktops start spread over them).
    pub sites: Vec<SocketAddr>,
    /// Desktops in total (all shards).
    pub desktops: u64,
    /// The scenario.
    pub scenario: Scenario,
    /// Closed loop: requests outstanding per desktop.
    pub window: u32,
    /// Open loop: total target request rate (requests/s over all desktops); `None` = closed.
    pub rate: Option<f64>,
    /// Ramp-up: desktops connect evenly over this many seconds.
    pub ramp_s: f64,
    /// Warm-up after the ramp, excluded from the statistics.
    pub warmup_s: f64,
    /// Measured duration.
    pub duration_s: f64,
    /// After the end, how long to wait for outstanding answers before counting them lost.
    pub drain_s: f64,
    /// Event-loop threads per process (0 = one per core).
    pub threads: usize,
    /// The credentials file (see [`read_credentials`]); desktop `i` uses its line `i`.
    pub credentials: PathBuf,
    /// The distinct tenants in it, in order of first appearance.
    pub tenants: Vec<u32>,
    /// The credentials themselves, read from `credentials` in each process (never serialized:
    /// the shard's command line must not carry passwords).
    #[serde(skip)]
    pub creds: std::sync::Arc<Vec<Cred>>,
    /// On a reconnect, present the reconnect token of the last server hello instead of the
    /// password (PROTOCOL.md §4.1), as a desktop in a reconnect storm does.
    pub reconnect_tokens: bool,
    /// After a drop, take the session back with its resume token (PROTOCOL.md §4.6) instead
    /// of a fresh hello and login.
    #[serde(default = "yes")]
    pub resume: bool,
    /// Log agents in (`AGENT_LOGIN`) after the hello.
    pub login: bool,
    /// Service the ping scenario echoes through (1 Interaction, 2 UCS).
    pub echo_service: u8,
    /// Desktops per source address (127.0.0.x) before the next one is used.
    pub per_source: u64,
    /// Desktops per worker process.
    pub per_process: u64,
    /// Ephemeral port range used for explicit source ports.
    pub port_range: (u16, u16),
    /// Interval of the HDR interval log and the latency-over-time plot, ms.
    pub interval_ms: u64,
    /// Agent / supervisor: share of desktops acting as media servers (submitters).
    pub media_share: f64,
    /// Agent / supervisor: total `SUBMIT` rate over all media servers, per second.
    pub submit_rate: f64,
    /// Queue the scenarios submit to and subscribe to.
    pub queue: String,
    /// Reconnect backoff base, ms.
    pub backoff_base_ms: u64,
    /// Reconnect backoff cap, ms.
    pub backoff_max_ms: u64,
    /// Jittered reconnect backoff (storm: only used for the first round's setting overridden).
    pub jitter: bool,
    /// Storm: spread of the jittered reconnect, ms.
    pub storm_spread_ms: u64,
    /// Connect + hello timeout per attempt, s.
    pub connect_timeout_s: f64,
    /// Desktop transport.
    pub transport: Transport,
    /// TLS and QUIC: PEM file with the certificates trusted to sign the site's certificate
    /// (a private CA, or the site's self-signed certificate).
    pub ca: Option<PathBuf>,
    /// TLS and QUIC: the server name the site's certificate must carry (and the SNI sent).
    pub server_name: String,
    /// QUIC: UDP sockets (client endpoints) per event-loop thread; desktops are spread over
    /// them, so the site sees that many source ports per thread.
    pub quic_sockets: usize,
    /// Ping: bytes of each `ECHO` payload (see [`crate::verify::write_echo_body`]).
    #[serde(default = "default_payload")]
    pub payload: usize,
    /// Run start (t = 0 of the run clock), ns since the Unix epoch; set by the parent so that
    /// all shards share one schedule.
    pub start_unix_ns: u64,
    /// Callback: the GMS resource group clients ask numbers of.
    #[serde(default = "default_group")]
    pub gms_group: String,
    /// Callback: seconds from a booking to the call that matches it (each drawn uniformly
    /// from half to one and a half times this).
    #[serde(default = "default_think")]
    pub think_s: f64,
    /// Callback: share of bookings whose call never comes (the client gives up): they must
    /// expire.
    #[serde(default)]
    pub abandon: f64,
}

fn default_group() -> String {
    "callback".into()
}

fn default_think() -> f64 {
    1.0
}

fn default_payload() -> usize {
    crate::verify::ECHO_PAYLOAD_LEN
}

fn yes() -> bool {
    true
}

impl RunConfig {
    /// Read [`RunConfig::credentials`] into [`RunConfig::creds`] and set `tenants`.
    ///
    /// # Errors
    /// See [`read_credentials`].
    pub fn load_credentials(&mut self) -> Result<(), String> {
        let creds = read_credentials(&self.credentials)?;
        self.set_credentials(creds);
        Ok(())
    }

    /// Use `creds` (and set `tenants` from them).
    pub fn set_credentials(&mut self, creds: Vec<Cred>) {
        let mut tenants = Vec::new();
        for c in &creds {
            if !tenants.contains(&c.tenant) {
                tenants.push(c.tenant);
            }
        }
        self.tenants = tenants;
        self.creds = std::sync::Arc::new(creds);
    }

    /// Nanoseconds of the ramp.
    pub fn ramp_ns(&self) -> u64 {
        (self.ramp_s * 1e9) as u64
    }

    /// Start of the measurement window (after ramp-up and warm-up).
    pub fn measure_start_ns(&self) -> u64 {
        ((self.ramp_s + self.warmup_s) * 1e9) as u64
    }

    /// End of the measurement window: desktops stop sending.
    pub fn measure_end_ns(&self) -> u64 {
        self.measure_start_ns() + (self.duration_s * 1e9) as u64
    }

    /// When outstanding requests are given up as lost.
    pub fn drain_end_ns(&self) -> u64 {
        self.measure_end_ns() + (self.drain_s * 1e9) as u64
    }

    /// When desktop `gid` connects (spread evenly over the ramp).
    pub fn connect_at_ns(&self, gid: u64) -> u64 {
        if self.desktops == 0 {
            return 0;
        }
        (u128::from(self.ramp_ns()) * u128::from(gid) / u128::from(self.desktops)) as u64
    }

    /// Storm rounds: (time the desktops drop, jittered reconnect?). One without jitter at a
    /// third of the window, one with jitter at two thirds.
    pub fn storm_rounds(&self) -> Vec<(u64, bool)> {
        if self.scenario != Scenario::Storm {
            return Vec::new();
        }
        let s = self.measure_start_ns();
        let d = (self.duration_s * 1e9) as u64;
        vec![(s + d / 3, false), (s + 2 * d / 3, true)]
    }
}
