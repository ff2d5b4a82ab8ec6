//! SIGHUP in a worker: re-read the configuration, swap in new certificates for new
//! connections (the listeners are the driver's), and hand the rest to the core.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{error, info, warn};

use super::Worker;
use crate::config::Config;
use crate::error::CertReloadError;

impl Worker {
    pub(super) fn reload_config(&mut self, now: Instant) {
        let Some(read) = self.reload.as_ref() else {
            return;
        };
        let mut new = match read() {
            Ok(c) => c,
            Err(e) => {
                // The supervisor checks the file before it forwards SIGHUP; this worker read
                // it again and it did not load (a SIGHUP sent to the worker itself, as
                // `systemctl kill -s HUP` does, or the file changed in between). Logged with
                // the reason, and counted by the supervisor, told on stdout.
                error!("SIGHUP: configuration not reloaded, keeping the running one: {e}");
                println!("WORKER_RELOAD_FAILED");
                return;
            }
        };
        // What needs a restart keeps its running value (the supervisor named it in a
        // warning): `self.cfg` describes what is served.
        new.keep_restart_only(&self.cfg);
        info!("SIGHUP: applying limits, upstreams, routes and certificates");
        self.reload_certificates(&mut new);
        self.core.reload(now, &new);
        let n = self.core.links().len();
        if self.links.len() < n {
            self.links.resize_with(n, || None);
        }
        self.cfg = new;
        // After `self.cfg`: link TLS settings come from the new configuration.
        let (applied, failed) = self.reload_link_tls();
        self.metrics.cert_reloads.inc_by(applied);
        self.status
            .cert_reloads
            .fetch_add(applied, Ordering::Relaxed);
        for reason in failed {
            warn!(error = %reason, "SIGHUP: link tls files not reloaded; keeping the previous ones");
            self.metrics.cert_reload_failures.inc();
            self.status
                .cert_reload_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        self.status.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// SIGHUP, `[tls]` and `[quic]`: load the certificate files `new` names and use them for
    /// connections accepted from now on (established ones keep their session). A section
    /// whose files cannot be used keeps its previous certificate. A section added or removed
    /// cannot be applied (listeners are set up when the worker starts): `new` gets the running
    /// section back, so `self.cfg` keeps describing what is served and the next SIGHUP
    /// compares against it again. Each section that fails is logged and counted; nothing here
    /// stops the worker.
    pub(super) fn reload_certificates(&mut self, new: &mut Config) {
        let mut failed: Vec<CertReloadError> = Vec::new();
        let mut applied = 0u64;
        failed.extend(keep_running_section(
            "tls",
            self.cfg.tls.is_some(),
            &self.cfg.tls,
            &mut new.tls,
        ));
        if let Some(t) = &new.tls {
            match crate::tls::server_config(&t.cert, &t.key) {
                // Without a listener (draining) nothing new is accepted: nothing to swap.
                Ok(sc) => {
                    if self
                        .listener
                        .as_mut()
                        .is_some_and(|l| l.set_tls_config(Arc::new(sc)))
                    {
                        applied += 1;
                        info!(cert = %t.cert.display(), "SIGHUP: [tls] certificate reloaded");
                    }
                }
                Err(reason) => failed.push(CertReloadError::Load {
                    section: "tls",
                    reason,
                }),
            }
        }
        failed.extend(keep_running_section(
            "quic",
            self.quic.is_some(),
            &self.cfg.quic,
            &mut new.quic,
        ));
        if let Some(q) = self.quic.as_mut() {
            // `None` only if [quic] took its files from a [tls] section that was added and
            // not applied above: keep the running section, whose files are its own.
            let paths = new.quic_cert().or_else(|| {
                new.quic = self.cfg.quic.clone();
                new.quic_cert()
            });
            if let Some((cert, key)) = paths {
                match q.reload_certificate(&cert, &key) {
                    Ok(()) => {
                        applied += 1;
                        info!(cert = %cert.display(), "SIGHUP: [quic] certificate reloaded");
                    }
                    Err(e) => failed.push(e),
                }
            }
        }
        self.metrics.cert_reloads.inc_by(applied);
        self.status
            .cert_reloads
            .fetch_add(applied, Ordering::Relaxed);
        for e in failed {
            warn!(error = %e, "SIGHUP: certificate not reloaded");
            self.metrics.cert_reload_failures.inc();
            self.status
                .cert_reload_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A `[tls]`/`[quic]` section added or removed by a reload cannot be applied (listeners are
/// set up when a worker starts): put the running section (`running`, served if `serving`)
/// back into the new configuration `new` and say why; `None` when the section is still
/// present, or still absent, as before.
fn keep_running_section<T: Clone>(
    section: &'static str,
    serving: bool,
    running: &Option<T>,
    new: &mut Option<T>,
) -> Option<CertReloadError> {
    match (serving, new.is_some()) {
        (false, true) => {
            *new = None;
            Some(CertReloadError::Added(section))
        }
        (true, false) => {
            new.clone_from(running);
            Some(CertReloadError::Removed(section))
        }
        _ => None,
    }
}
