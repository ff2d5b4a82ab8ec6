//! Prometheus metrics of one worker.
//!
//! The registry is built here and handed to the admin server; the core and the driver update
//! the metrics (atomics, no locks on the hot path). Each worker has its own registry labelled
//! `worker="i"`; the supervisor's `/metrics` merges the workers' expositions.
//!
//! Naming follows Prometheus: counters are counters (exposed with `_total`), the per-upstream
//! label is `upstream` (`instance` is the label Prometheus gives every scrape target), and
//! every family is registered when the worker starts, so it is exposed (`# HELP`, `# TYPE`)
//! before its first sample. Also here: the `process_*` families read from `/proc/self`, and
//! the conversion of the exposition to the Prometheus text format 0.0.4 for scrapers that
//! ask for `text/plain`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set with one label.
pub type L1 = [(&'static str, String); 1];

/// The worker's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Desktops connected (any phase).
    pub desktops: Gauge,
    /// Desktops whose session is open.
    pub sessions: Gauge,
    /// Requests accepted from desktops, by service.
    pub requests: Family<L1, Counter>,
    /// Requests in flight upstream.
    pub in_flight: Gauge,
    /// Frames + bytes queued per link (label `link`).
    pub link_queue: Family<L1, Gauge>,
    /// Link (re)connect attempts.
    pub link_connects: Counter,
    /// Request latency through the proxy (accepted from desktop → answer queued), seconds.
    pub latency: Histogram,
    /// Errors produced or relayed, by error name.
    pub errors: Family<L1, Counter>,
    /// Broadcast event deliveries to desktops (one event × subscribers).
    pub fanout_deliveries: Counter,
    /// QUIC endpoint events since start (label `what`: retries, refused, accepted, failed).
    pub quic: Family<L1, Counter>,
    /// QUIC connections now (label `what`: desktops, handshaking).
    pub quic_connections: Family<L1, Gauge>,
    /// Upstream links up (label `upstream`), published by the driver every tick.
    pub upstream_links_up: Family<L1, Gauge>,
    /// Failed `accept` calls on the desktop listener (`EMFILE`: the open-file limit).
    pub accept_failures: Counter,
    /// Desktops disconnected, by reason.
    pub disconnects: Family<L1, Counter>,
    /// Connections refused at accept, by reason (desktop cap, source cap, draining).
    pub refused: Family<L1, Counter>,
    /// Desktops with an upstream session on each instance (label `upstream`).
    pub instance_sessions: Family<L1, Gauge>,
    /// Requests in flight on each instance's links (label `upstream`).
    pub instance_in_flight: Family<L1, Gauge>,
    /// 1 while the instance takes new sessions (state `running`), else 0 (label `upstream`).
    pub instance_running: Family<L1, Gauge>,
    /// Certificates swapped in by SIGHUP (one per section, `[tls]` or `[quic]`), so an
    /// operator can see that a rotation took effect in every worker.
    pub cert_reloads: Counter,
    /// Sections whose certificate a SIGHUP could not swap in (bad files, or a section added or
    /// removed): the worker keeps the previous certificate, and this is what to alert on.
    pub cert_reload_failures: Counter,
}

impl Metrics {
    /// Create the metrics and register them in `reg`.
    pub fn new(reg: &mut Registry) -> Metrics {
        let m = Metrics {
            desktops: Gauge::default(),
            sessions: Gauge::default(),
            requests: Family::default(),
            in_flight: Gauge::default(),
            link_queue: Family::default(),
            link_connects: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            errors: Family::default(),
            fanout_deliveries: Counter::default(),
            quic: Family::default(),
            quic_connections: Family::default(),
            upstream_links_up: Family::default(),
            accept_failures: Counter::default(),
            disconnects: Family::default(),
            refused: Family::default(),
            instance_sessions: Family::default(),
            instance_in_flight: Family::default(),
            instance_running: Family::default(),
            cert_reloads: Counter::default(),
            cert_reload_failures: Counter::default(),
        };
        reg.register(
            "deskmux_proxy_instance_sessions",
            "Desktops with an upstream session on the instance",
            m.instance_sessions.clone(),
        );
        reg.register(
            "deskmux_proxy_instance_in_flight",
            "Requests in flight on the instance's links",
            m.instance_in_flight.clone(),
        );
        reg.register(
            "deskmux_proxy_instance_running",
            "1 while the instance takes new sessions (state running)",
            m.instance_running.clone(),
        );
        reg.register(
            "deskmux_proxy_desktops",
            "Desktops connected",
            m.desktops.clone(),
        );
        reg.register(
            "deskmux_proxy_sessions",
            "Desktops with an open session",
            m.sessions.clone(),
        );
        reg.register(
            "deskmux_proxy_requests",
            "Requests accepted from desktops, by service",
            m.requests.clone(),
        );
        reg.register(
            "deskmux_proxy_in_flight",
            "Requests in flight upstream",
            m.in_flight.clone(),
        );
        reg.register(
            "deskmux_proxy_link_queue_bytes",
            "Bytes queued per upstream link",
            m.link_queue.clone(),
        );
        reg.register(
            "deskmux_proxy_links_up",
            "Upstream links up, by upstream",
            m.upstream_links_up.clone(),
        );
        reg.register(
            "deskmux_proxy_accept_failures",
            "Failed accepts on the desktop listener (EMFILE: the open-file limit is reached)",
            m.accept_failures.clone(),
        );
        reg.register(
            "deskmux_proxy_quic_connections",
            "QUIC connections now: desktops, and connections handshaking",
            m.quic_connections.clone(),
        );
        reg.register(
            "deskmux_proxy_link_connects",
            "Upstream link connect attempts",
            m.link_connects.clone(),
        );
        reg.register(
            "deskmux_proxy_request_latency_seconds",
            "Request latency through the proxy",
            m.latency.clone(),
        );
        reg.register(
            "deskmux_proxy_errors",
            "Error answers, by kind",
            m.errors.clone(),
        );
        reg.register(
            "deskmux_proxy_fanout_deliveries",
            "Broadcast event deliveries to desktops",
            m.fanout_deliveries.clone(),
        );
        reg.register(
            "deskmux_proxy_quic",
            "QUIC endpoint events: stateless retries sent, connections refused, accepted, failed in the handshake",
            m.quic.clone(),
        );
        reg.register(
            "deskmux_proxy_disconnects",
            "Desktops disconnected, by reason",
            m.disconnects.clone(),
        );
        reg.register(
            "deskmux_proxy_refused",
            "Connections refused at accept, by reason",
            m.refused.clone(),
        );
        reg.register(
            "deskmux_proxy_cert_reloads",
            "Certificates swapped in by SIGHUP ([tls] and [quic] count one each)",
            m.cert_reloads.clone(),
        );
        reg.register(
            "deskmux_proxy_cert_reload_failures",
            "Certificates a SIGHUP could not swap in (bad files, or a section added/removed); the previous one stays in use",
            m.cert_reload_failures.clone(),
        );
        m.zero_samples();
        m
    }

    /// A zero sample for each label value known in advance, so that every family is in the
    /// exposition from the start (prometheus-client leaves a family without samples out, and
    /// an alert on `rate(...)` needs the series to exist before the first event).
    fn zero_samples(&self) {
        use crate::error::{Disconnect, Refused};
        for what in ["retries", "refused", "accepted", "failed"] {
            let _ = self.quic.get_or_create(&[("what", what.to_string())]);
        }
        for what in ["desktops", "handshaking"] {
            let _ = self
                .quic_connections
                .get_or_create(&[("what", what.to_string())]);
        }
        for r in [Refused::DesktopCap, Refused::SourceCap, Refused::Draining] {
            let _ = self
                .refused
                .get_or_create(&[("reason", r.name().to_string())]);
        }
        let _ = self
            .refused
            .get_or_create(&[("reason", "accept_error".to_string())]);
        for d in [
            Disconnect::Eof,
            Disconnect::IoError,
            Disconnect::TlsError,
            Disconnect::Framing,
            Disconnect::HelloRefused,
            Disconnect::Left,
            Disconnect::SlowConsumer,
            Disconnect::Deadline,
            Disconnect::ClosedByServer,
            Disconnect::Shutdown,
            Disconnect::Overloaded,
        ] {
            let _ = self
                .disconnects
                .get_or_create(&[("reason", d.name().to_string())]);
        }
        for kind in [
            "auth_failed",
            "timeout",
            "link_lost",
            "overloaded",
            "unavailable",
        ] {
            let _ = self.errors.get_or_create(&[("kind", kind.to_string())]);
        }
    }

    /// Count an error by name.
    pub fn error(&self, name: &'static str) {
        self.errors
            .get_or_create(&[("kind", name.to_string())])
            .inc();
    }

    /// Count a disconnect by reason.
    pub fn disconnect(&self, reason: &'static str) {
        self.disconnects
            .get_or_create(&[("reason", reason.to_string())])
            .inc();
    }

    /// Bring the QUIC counters up to the endpoint's cumulative `stats` (retries, refused,
    /// accepted, failed) and set the connection gauges.
    pub fn set_quic(&self, stats: [(&'static str, u64); 4], desktops: u64, handshaking: u64) {
        for (what, v) in stats {
            let c = self.quic.get_or_create(&[("what", what.to_string())]);
            c.inc_by(v.saturating_sub(c.get()));
        }
        for (what, v) in [("desktops", desktops), ("handshaking", handshaking)] {
            self.quic_connections
                .get_or_create(&[("what", what.to_string())])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    /// Count a connection refused at accept, by reason.
    pub fn refusal(&self, reason: &'static str) {
        self.refused
            .get_or_create(&[("reason", reason.to_string())])
            .inc();
    }
}

mod exposition;
pub use exposition::{
    CONTENT_OPENMETRICS, CONTENT_TEXT, counter_family, process_families, to_text_format,
    wants_openmetrics,
};

/// What the admin server of a worker serves.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The metrics registry.
    pub registry: Arc<std::sync::Mutex<Registry>>,
    /// The status counters.
    pub status: Arc<crate::status::Status>,
}
