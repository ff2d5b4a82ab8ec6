//! Command-line options shared by `run`, `demo` and `compare`.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{RunConfig, Scenario, Transport};
use crate::shard;

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
    /// Ramp-up seconds: desktops connect evenly over this time.
    #[arg(long, default_value_t = 5.0)]
    pub ramp: f64,
    /// Warm-up seconds after the ramp, excluded from the statistics.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Measured seconds.
    #[arg(short, long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for outstanding answers at the end before counting them lost.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Event-loop threads per process (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Credentials file: lines `TENANT<TAB>AGENT<TAB>PASSWORD` (what `core-server creds
    /// import` reads); desktop `i` logs in with line `i`. `demo` and `compare` write their own.
    #[arg(long)]
    pub credentials: Option<std::path::PathBuf>,
    /// On reconnects, present the password again instead of the last reconnect token.
    #[arg(long)]
    pub no_reconnect_tokens: bool,
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
    /// Connect + hello timeout per attempt, seconds.
    #[arg(long, default_value_t = 10.0)]
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
    /// Write the summary as JSON here (stable keys; see report.rs).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the corrected-latency HDR interval log here.
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
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
        if let Some(r) = self.rate {
            if r.is_nan() || r <= 0.0 {
                return Err("--rate must be positive".into());
            }
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
            start_unix_ns: 0,
        })
        .and_then(|mut c: RunConfig| {
            c.load_credentials()?;
            Ok(c)
        })
    }
}
