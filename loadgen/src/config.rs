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
}

impl Scenario {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Ping => "ping",
            Scenario::Agent => "agent",
            Scenario::Supervisor => "supervisor",
            Scenario::Storm => "storm",
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

/// One tenant's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCred {
    /// Tenant id.
    pub id: u32,
    /// A token the server accepts for it.
    pub token: String,
}

/// Parse `ID:TOKEN`.
///
/// # Errors
/// Malformed text.
pub fn parse_tenant(s: &str) -> Result<TenantCred, String> {
    let (id, token) = s.split_once(':').ok_or("tenant must be ID:TOKEN")?;
    Ok(TenantCred {
        id: id.trim().parse().map_err(|_| "bad tenant id")?,
        token: token.to_string(),
    })
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
    /// Tenants; desktop `i` uses tenant `i % len`.
    pub tenants: Vec<TenantCred>,
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
    /// Run start (t = 0 of the run clock), ns since the Unix epoch; set by the parent so that
    /// all shards share one schedule.
    pub start_unix_ns: u64,
}

impl RunConfig {
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
