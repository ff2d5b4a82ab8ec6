//! Command-line options shared by `run`, `demo` and `compare`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::config::{RunConfig, Scenario, Transport};
use crate::outputs::Output;
use crate::shard;
use crate::verify::{ECHO_PAYLOAD_LEN, MAX_ECHO_PAYLOAD};

/// Parse a duration in seconds: bare seconds (`30`, `2.5`) or with units `ms`, `s`, `m`, `h`,
/// possibly combined (`1m30s`).
///
/// # Errors
/// Malformed text, a negative or non-finite value.
pub fn parse_secs(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let bad = || format!("`{text}` is not a duration (examples: 30s, 2m, 500ms, 1m30s, 2.5)");
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(v) = t.parse::<f64>() {
        return if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(bad())
        };
    }
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    if total.is_finite() {
        Ok(total)
    } else {
        Err(bad())
    }
}

/// Parse `--payload`: at least [`ECHO_PAYLOAD_LEN`], at most [`MAX_ECHO_PAYLOAD`] bytes.
///
/// # Errors
/// Not a number or out of that range.
pub fn parse_payload(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a byte count"))?;
    if !(ECHO_PAYLOAD_LEN..=MAX_ECHO_PAYLOAD).contains(&n) {
        return Err(format!(
            "the payload must be {ECHO_PAYLOAD_LEN} to {MAX_ECHO_PAYLOAD} bytes"
        ));
    }
    Ok(n)
}

/// Resolve `--site` values: `HOST:PORT` with an IP address or a host name (the first address
/// it resolves to).
///
/// # Errors
/// A value without a port, or a name that does not resolve.
pub fn resolve_sites(sites: &[String]) -> Result<Vec<SocketAddr>, String> {
    sites
        .iter()
        .map(|s| {
            if let Ok(a) = s.parse::<SocketAddr>() {
                return Ok(a);
            }
            let addrs: Vec<SocketAddr> = s
                .to_socket_addrs()
                .map_err(|e| format!("--site {s}: {e} (expected HOST:PORT)"))?
                .collect();
            // IPv4 first: desktops spread over 127.0.0.x source addresses (see shard.rs).
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| addrs.first())
                .copied()
                .ok_or_else(|| format!("--site {s}: the name resolves to no address"))
        })
        .collect()
}

/// Load options.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Desktops to simulate (all processes together). Default: 1000 for `run`, 25 000 for
    /// `demo`, the server's open-file limit less headroom for `compare`.
    #[arg(short = 'n', long)]
    pub desktops: Option<u64>,
    /// Scenario.
    #[arg(short, long, value_enum, default_value_t = Scenario::Ping)]
    pub scenario: Scenario,
    /// Closed loop: requests outstanding per desktop.
    #[arg(short, long, default_value_t = 1)]
    pub window: u32,
    /// Open loop at this total rate (requests/s over all desktops); latency is then measured
    /// from the intended send time (coordinated omission corrected).
    #[arg(short, long)]
    pub rate: Option<f64>,
    /// Ramp-up: desktops connect evenly over this time (a duration: `30s`, `2m`, `500ms`, or
    /// bare seconds).
    #[arg(long, default_value = "5s", value_parser = parse_secs)]
    pub ramp: f64,
    /// Warm-up after the ramp, excluded from the statistics (a duration).
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    pub warmup: f64,
    /// Measured time (a duration).
    #[arg(short, long, default_value = "10s", value_parser = parse_secs)]
    pub duration: f64,
    /// How long to wait for outstanding answers at the end before counting them lost (a
    /// duration).
    #[arg(long, default_value = "5s", value_parser = parse_secs)]
    pub drain: f64,
    /// Event-loop threads per process (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Credentials file: lines `TENANT<TAB>AGENT<TAB>PASSWORD` (what `core-server creds
    /// import` reads); desktop `i` logs in with line `i`. `demo`, `compare` and `transports`
    /// import it into the core-server they start (tenants 1 and 2 exist there); without it
    /// they write their own (tenants 1 and 2 alternating).
    #[arg(long)]
    pub credentials: Option<std::path::PathBuf>,
    /// On reconnects, present the password again instead of the last reconnect token.
    #[arg(long)]
    pub no_reconnect_tokens: bool,
    /// After a drop, log in afresh instead of resuming the session (PROTOCOL.md §4.6).
    #[arg(long)]
    pub no_resume: bool,
    /// Skip AGENT_LOGIN after the hello.
    #[arg(long)]
    pub no_login: bool,
    /// Service the ping scenario echoes through: 1 Interaction Server, 2 UCS.
    #[arg(long, default_value_t = 1)]
    pub echo_service: u8,
    /// Desktops per 127.0.0.x source address (default: a third of the ephemeral port range, at
    /// most 4,000, under the proxy's default `limits.max_desktops_per_source` of 4,096).
    #[arg(long)]
    pub per_source: Option<u64>,
    /// Desktops per worker process (default: the open-file limit less headroom).
    #[arg(long)]
    pub per_process: Option<u64>,
    /// Interval of the HDR log and the latency-over-time plot, ms.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Agent/supervisor: share of desktops acting as media servers that submit.
    #[arg(long, default_value_t = 0.02)]
    pub media_share: f64,
    /// Agent/supervisor: total SUBMIT rate per second.
    #[arg(long, default_value_t = 50.0)]
    pub submit_rate: f64,
    /// Queue to submit to / subscribe to.
    #[arg(long, default_value = "loadgen")]
    pub queue: String,
    /// Reconnect backoff base, ms.
    #[arg(long, default_value_t = 100)]
    pub backoff_base_ms: u64,
    /// Reconnect backoff cap, ms.
    #[arg(long, default_value_t = 5000)]
    pub backoff_max_ms: u64,
    /// Reconnect without jitter (synchronized retries).
    #[arg(long)]
    pub no_jitter: bool,
    /// Storm: spread of the jittered round's first reconnect, ms.
    #[arg(long, default_value_t = 2000)]
    pub storm_spread_ms: u64,
    /// Connect + hello timeout per attempt (a duration).
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub connect_timeout: f64,
    /// Desktop transport: `tcp`, `tls` or `quic` (`tls`/`quic` need `--ca` for `run`; `demo`
    /// makes its own certificate).
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// TLS/QUIC: PEM file of the certificate(s) trusted for the site (its CA, or its
    /// self-signed certificate).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// TLS/QUIC: server name expected in the site's certificate (also sent as SNI).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// QUIC: UDP sockets per event-loop thread (the site sees this many source ports per
    /// thread; more spread the load over the site's `SO_REUSEPORT` workers).
    #[arg(long, default_value_t = 8)]
    pub quic_sockets: usize,
    /// Write the summary as JSON here (stable keys; see report.rs); `-` for stdout (the table
    /// then goes to stderr). Checked before the run.
    #[arg(long)]
    pub json: Option<Output>,
    /// Write the corrected-latency HDR interval log here (`-`: stdout). Checked before the run.
    #[arg(long)]
    pub hdr_log: Option<Output>,
    /// Write a self-contained HTML report here (`-`: stdout). Checked before the run.
    #[arg(long)]
    pub html: Option<Output>,
    /// Ping: bytes of the `ECHO` payload each request carries (and each answer returns), at
    /// least 16 (the correlation id and desktop id that make each one unique).
    #[arg(long, default_value_t = ECHO_PAYLOAD_LEN, value_parser = parse_payload)]
    pub payload: usize,
    /// Also fail (exit 5) when loadgen was SATURATED or missed its target rate: the figures
    /// then describe loadgen rather than the system under test.
    #[arg(long)]
    pub strict: bool,
    /// Run the same load this many times; each run is reported, then the spread (min, median,
    /// max) of the key figures. Outputs get a `-runK` suffix per run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Callback: the GMS resource group the clients ask access numbers of (it must be a pool
    /// with locking in the tenants of the credentials).
    #[arg(long, default_value = "callback")]
    pub group: String,
    /// Callback: time from a booking to the call that matches it (a duration; each is drawn
    /// from half to one and a half times it). Longer than the group's booking expiry, calls
    /// find their bookings expired (counted, not failures).
    #[arg(long, default_value = "1s", value_parser = parse_secs)]
    pub think: f64,
    /// Callback: share of bookings (0 to 1) whose call never comes, as when a user gives up:
    /// the numbers must come back at the booking's expiry.
    #[arg(long, default_value_t = 0.0)]
    pub abandon: f64,
    /// No live progress.
    #[arg(short, long)]
    pub quiet: bool,
}

impl LoadArgs {
    /// The run configuration for `sites`.
    ///
    /// # Errors
    /// Inconsistent options.
    pub fn to_config(&self, sites: Vec<SocketAddr>) -> Result<RunConfig, String> {
        let desktops = self.desktops.unwrap_or(1000);
        if desktops == 0 {
            return Err("--desktops must be at least 1".into());
        }
        if let Some(r) = self.rate
            && (r.is_nan() || r <= 0.0)
        {
            return Err("--rate must be positive".into());
        }
        let Some(credentials) = self.credentials.clone() else {
            return Err(
                "--credentials FILE is needed (lines TENANT<TAB>AGENT<TAB>PASSWORD)".into(),
            );
        };
        if self.transport != Transport::Tcp && self.ca.is_none() {
            return Err(format!(
                "--transport {} needs --ca (the PEM certificate to trust)",
                self.transport.as_str()
            ));
        }
        if self.scenario == Scenario::Callback && self.drain <= 1.5 * self.think {
            return Err(format!(
                "--drain ({} s) must exceed 1.5 x --think ({} s): the calls of the last bookings \
                 are dialled during the drain",
                self.drain, self.think
            ));
        }
        if let (Scenario::Callback, Some(r)) = (self.scenario, self.rate) {
            // A client dials its number before it asks for another: a period shorter than its
            // think time would put every client behind its schedule, and the corrected latency
            // would measure loadgen's clients, not the service.
            let period = desktops as f64 / r;
            if period <= 1.5 * self.think {
                return Err(format!(
                    "callback: --rate {r} over {desktops} clients gives each a request every \
                     {period:.2} s, not more than 1.5 x --think ({} s): use more clients, a lower \
                     rate or a shorter think time",
                    self.think
                ));
            }
        }
        let (soft, _) = shard::nofile_limit();
        let quic_sockets = self.quic_sockets.max(1);
        // A QUIC desktop needs no file descriptor: a process holds `quic_sockets` UDP sockets
        // per thread whatever its desktop count, so one process can drive them all.
        let per_process_default = match self.transport {
            Transport::Tcp | Transport::Tls => shard::desktops_per_process(soft),
            Transport::Quic => shard::QUIC_DESKTOPS_PER_PROCESS,
        };
        Ok(RunConfig {
            sites,
            desktops,
            scenario: self.scenario,
            window: self.window.max(1),
            rate: self.rate,
            ramp_s: self.ramp.max(0.0),
            warmup_s: self.warmup.max(0.0),
            duration_s: self.duration.max(0.1),
            drain_s: self.drain.max(0.0),
            threads: self.threads,
            credentials,
            tenants: Vec::new(),
            creds: Default::default(),
            reconnect_tokens: !self.no_reconnect_tokens,
            resume: !self.no_resume,
            login: !self.no_login,
            echo_service: self.echo_service,
            per_source: self
                .per_source
                .unwrap_or_else(|| shard::default_per_source(shard::port_range())),
            per_process: self.per_process.unwrap_or(per_process_default),
            port_range: shard::port_range(),
            interval_ms: self.interval_ms.max(10),
            media_share: self.media_share.clamp(0.0, 1.0),
            submit_rate: self.submit_rate.max(0.0),
            queue: self.queue.clone(),
            backoff_base_ms: self.backoff_base_ms.max(1),
            backoff_max_ms: self.backoff_max_ms.max(self.backoff_base_ms.max(1)),
            jitter: !self.no_jitter,
            storm_spread_ms: self.storm_spread_ms,
            connect_timeout_s: self.connect_timeout.max(0.1),
            transport: self.transport,
            ca: self.ca.clone(),
            server_name: self.server_name.clone(),
            quic_sockets,
            payload: self.payload,
            start_unix_ns: 0,
            gms_group: self.group.clone(),
            think_s: self.think.max(0.0),
            abandon: self.abandon.clamp(0.0, 1.0),
        })
        .and_then(|mut c: RunConfig| {
            c.load_credentials()?;
            Ok(c)
        })
    }
}
