//! What a worker shares with its admin thread: the status it publishes (`/status`,
//! `/health`), the operator commands queued for its event loop, and the signal flags.
//!
//! The event loop owns the core; the admin thread (axum) only sees atomics and two mutexes
//! filled once per tick ([`publish`]), so a slow HTTP client never stalls desktops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::core::Core;
use crate::metrics::Metrics;
use crate::router::InstState;

/// Signals delivered to a process, as flags its loop polls (installed by `main`).
#[derive(Debug, Default)]
pub struct Signals {
    /// SIGTERM: drain and exit.
    pub term: std::sync::Arc<AtomicBool>,
    /// SIGHUP: reload the configuration.
    pub hup: std::sync::Arc<AtomicBool>,
}

/// An operator command for the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// Take the named instance out of the pool for new sessions.
    Disable(String),
    /// Return it to the pool.
    Enable(String),
}

/// Status shared with the admin server (JSON `/status`, `/health`).
#[derive(Debug, Default)]
pub struct Status {
    /// Worker index.
    pub worker: AtomicU64,
    /// Desktops connected.
    pub desktops: AtomicU64,
    /// Links up.
    pub links_up: AtomicU64,
    /// Links configured.
    pub links_total: AtomicU64,
    /// Requests in flight.
    pub in_flight: AtomicU64,
    /// Upstream subscriptions held (or being made).
    pub subscriptions: AtomicU64,
    /// Bytes queued, counted against `worker_queue_bytes`.
    pub queued_bytes: AtomicU64,
    /// Draining after SIGTERM.
    pub draining: AtomicBool,
    /// Config reloads applied.
    pub reloads: AtomicU64,
    /// Certificates swapped in by SIGHUP (mirrors the Prometheus counter, for `/status`).
    pub cert_reloads: AtomicU64,
    /// Certificates a SIGHUP could not swap in (mirrors the Prometheus counter).
    pub cert_reload_failures: AtomicU64,
    /// Operator commands queued by the admin thread, applied by the event loop's next tick.
    pub commands: std::sync::Mutex<Vec<AdminCommand>>,
    /// Operator commands applied so far.
    pub commands_done: AtomicU64,
    /// Per-instance state, published by the event loop every tick (a JSON array).
    pub instances: std::sync::Mutex<serde_json::Value>,
}

impl Status {
    /// A JSON snapshot.
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "worker": g(&self.worker),
            "desktops": g(&self.desktops),
            "links_up": g(&self.links_up),
            "links_total": g(&self.links_total),
            "in_flight": g(&self.in_flight),
            "subscriptions": g(&self.subscriptions),
            "queued_bytes": g(&self.queued_bytes),
            "draining": self.draining.load(Ordering::Relaxed),
            "reloads": g(&self.reloads),
            "cert_reloads": g(&self.cert_reloads),
            "cert_reload_failures": g(&self.cert_reload_failures),
            "pid": std::process::id(),
            "instances": self.instances.lock().map(|v| v.clone()).unwrap_or_default(),
        })
    }

    /// Why this worker is not fully healthy (empty: it is): draining, no link up, or an
    /// upstream (still configured) with every link down. `/health` answers 503 with these.
    pub fn degraded(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            why.push("draining (SIGTERM)".to_string());
        }
        if self.links_up.load(Ordering::Relaxed) == 0 {
            why.push("no upstream link is up".to_string());
        }
        if let Ok(v) = self.instances.lock() {
            for i in v.as_array().into_iter().flatten() {
                let n = |k: &str| i.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                let retired = i.get("retired").and_then(serde_json::Value::as_bool) == Some(true);
                if !retired && n("links") > 0 && n("links_up") == 0 {
                    why.push(format!(
                        "upstream {}: all {} links down",
                        i.get("name")
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or("?"),
                        n("links")
                    ));
                }
            }
        }
        why
    }

    /// The operator commands queued since the last call.
    pub fn take_commands(&self) -> Vec<AdminCommand> {
        match self.commands.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => Vec::new(),
        }
    }
}

/// Publish the core's counts (a few atomic stores: the driver calls this every round, so
/// `/status` is current as soon as a round ends).
pub fn publish_counts(core: &Core, status: &Status) {
    let s = core.snapshot();
    status.desktops.store(s.desktops, Ordering::Relaxed);
    status.links_up.store(s.links_up, Ordering::Relaxed);
    status.links_total.store(s.links_total, Ordering::Relaxed);
    status.in_flight.store(s.in_flight, Ordering::Relaxed);
    status
        .subscriptions
        .store(s.subscriptions, Ordering::Relaxed);
    status.queued_bytes.store(s.queued_bytes, Ordering::Relaxed);
    status.draining.store(s.draining, Ordering::Relaxed);
}

/// Publish the counts and every instance's state (for `/status` and the per-instance and
/// per-link gauges): once per tick.
pub fn publish(core: &Core, status: &Status, metrics: &Metrics) {
    publish_counts(core, status);
    let links = core.links();
    for l in links {
        metrics
            .link_queue
            .get_or_create(&[("link", l.name.clone())])
            .set(l.out.bytes() as i64);
    }
    let router = core.router();
    let up = |l: usize| core.link_up(l);
    let mut out = Vec::new();
    for (idx, inst) in router.instances.iter().enumerate() {
        if inst.retired && inst.sessions == 0 {
            continue;
        }
        let st = router.state(idx, up);
        let in_flight: usize = inst.links.iter().map(|l| links[*l].ids.len()).sum();
        let links_up = inst.links.iter().filter(|l| up(**l)).count();
        let label = [("upstream", inst.conf.name.clone())];
        metrics
            .upstream_links_up
            .get_or_create(&label)
            .set(links_up as i64);
        metrics
            .instance_sessions
            .get_or_create(&label)
            .set(inst.sessions as i64);
        metrics
            .instance_in_flight
            .get_or_create(&label)
            .set(in_flight as i64);
        metrics
            .instance_running
            .get_or_create(&label)
            .set(i64::from(st == InstState::Running));
        out.push(serde_json::json!({
            "name": inst.conf.name,
            "addr": inst.conf.addr.to_string(),
            "cluster": inst.conf.cluster,
            "balance": inst.balance,
            "backup": inst.conf.backup,
            "backup_of": inst.backup_of.map(|p| router.instances[p].conf.name.clone()),
            "state": st.name(),
            "server_running": inst.running,
            "server_primary": inst.primary,
            "disabled": inst.disabled,
            "retired": inst.retired,
            "drained": st == InstState::Drained,
            "sessions": inst.sessions,
            "aliases": inst.aliases,
            "in_flight": in_flight,
            "links_up": links_up,
            "links": inst.links.len(),
        }));
    }
    if let Ok(mut v) = status.instances.lock() {
        *v = serde_json::Value::Array(out);
    }
}
