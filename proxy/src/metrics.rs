//! Prometheus metrics of one worker.
//!
//! The registry is built here and handed to the admin server; the core and the driver update
//! the metrics (atomics, no locks on the hot path). Each worker has its own registry labelled
//! `worker="i"`; the supervisor's `/metrics` merges the workers' expositions.

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
    /// Links up (label `instance`).
    pub links_up: Family<L1, Gauge>,
    /// Link (re)connect attempts.
    pub link_connects: Counter,
    /// Request latency through the proxy (accepted from desktop → answer queued), seconds.
    pub latency: Histogram,
    /// Errors produced or relayed, by error name.
    pub errors: Family<L1, Counter>,
    /// Broadcast event deliveries to desktops (one event × subscribers).
    pub fanout_deliveries: Counter,
    /// QUIC endpoint counters (label `what`: retries, refused, accepted, failed, desktops,
    /// handshaking).
    pub quic: Family<L1, Gauge>,
    /// Desktops disconnected, by reason.
    pub disconnects: Family<L1, Counter>,
    /// Connections refused at accept, by reason (desktop cap, source cap, draining).
    pub refused: Family<L1, Counter>,
    /// Desktops with an upstream session on each instance (label `instance`).
    pub instance_sessions: Family<L1, Gauge>,
    /// Requests in flight on each instance's links (label `instance`).
    pub instance_in_flight: Family<L1, Gauge>,
    /// 1 while the instance takes new sessions (state `running`), else 0 (label `instance`).
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
            links_up: Family::default(),
            link_connects: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            errors: Family::default(),
            fanout_deliveries: Counter::default(),
            quic: Family::default(),
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
            "Upstream links up, by instance",
            m.links_up.clone(),
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
            "QUIC endpoint: stateless retries sent, connections refused / accepted / failed in the handshake, desktops and handshaking connections now",
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
        m
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

    /// Count a connection refused at accept, by reason.
    pub fn refusal(&self, reason: &'static str) {
        self.refused
            .get_or_create(&[("reason", reason.to_string())])
            .inc();
    }
}

/// What the admin server of a worker serves.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The metrics registry.
    pub registry: Arc<std::sync::Mutex<Registry>>,
    /// The status counters.
    pub status: Arc<crate::status::Status>,
}
