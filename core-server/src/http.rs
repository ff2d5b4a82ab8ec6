//! The operator's HTTP port (axum, like the proxy's): Prometheus `/metrics`, `/health`,
//! JSON `/status`, and the mutating controls behind an admin token.
//!
//! Why HTTP next to the line protocol ([`crate::admin`]): monitoring systems scrape HTTP, load
//! balancers probe it, and a token in a header is something operators already manage. The
//! mutating endpoints (`POST /service/unavailable`, `/service/available`, `/shutdown`) need
//! `Authorization: Bearer <token>` with the token read from `admin_token_file` (compared in
//! constant time); without a configured token they answer 403. It binds where `http_listen`
//! says; loopback is the documented choice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::server::Shared;

/// What the HTTP handlers share.
#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    /// The admin token; `None`: mutating endpoints are refused.
    token: Option<Arc<Vec<u8>>>,
}

/// Serve the HTTP admin on `listener` until the process ends.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, token: Option<Arc<Vec<u8>>>) {
    let app = App { shared, token };
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/service/unavailable", post(unavailable))
        .route("/service/available", post(available))
        .route("/shutdown", post(shutdown))
        .with_state(app);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!("http admin stopped: {e}");
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The Prometheus text format (0.0.4), written by hand: a handful of families, each with its
/// HELP and TYPE under the name its sample carries (counters end in `_total`), which is what
/// `promtool check metrics` asks for.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        use std::fmt::Write as _;
        let _ = writeln!(self.0, "# HELP deskmux_core_{name} {help}");
        let _ = writeln!(self.0, "# TYPE deskmux_core_{name} {kind}");
        let _ = writeln!(self.0, "deskmux_core_{name} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, v: u64) {
        self.family(name, "gauge", help, v as f64);
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.family(&format!("{name}_total"), "counter", help, v as f64);
    }
}

/// `/metrics`, built from the live counters at each scrape. Every family is there from the
/// start, with 0 while its part does not run yet (a standby has no DB worker, engine or login
/// checker until it takes over), so that dashboards and alerts see a series, not a gap.
async fn metrics(State(app): State<App>) -> Response {
    let s = &app.shared;
    let db = s.db.get();
    let engine = s.engine.get();
    let auth = s.auth.get().map(|a| a.stats());
    let mut t = Text::default();
    t.gauge(
        "primary",
        "1 while this instance serves, 0 while a standby waits",
        u64::from(s.primary.load(Ordering::Acquire)),
    );
    t.gauge(
        "service_unavailable",
        "1 while marked service unavailable",
        u64::from(s.unavailable.load(Ordering::Acquire)),
    );
    t.gauge(
        "connections",
        "Open connections (direct desktops and proxy links)",
        s.connections() as u64,
    );
    let dbv = |f: fn(&crate::db::Db) -> u64| db.map_or(0, f);
    t.counter(
        "db_batches",
        "Group-commit transactions run",
        dbv(|d| load(&d.stats.batches)),
    );
    t.counter(
        "db_operations",
        "Storage operations run in them",
        dbv(|d| load(&d.stats.ops)),
    );
    t.gauge(
        "db_max_batch",
        "Largest group-commit batch so far",
        dbv(|d| load(&d.stats.max_batch)),
    );
    t.gauge(
        "db_queued",
        "Operations waiting for the DB worker",
        dbv(|d| d.gauge().depth() as u64),
    );
    t.gauge(
        "db_queued_bytes",
        "Bytes held by operations waiting for the DB worker and by the batch it runs",
        dbv(|d| d.gauge().bytes() as u64),
    );
    t.counter(
        "db_overloaded",
        "Requests answered OVERLOADED because db_queue was full",
        dbv(|d| load(&d.gauge().refused)),
    );
    t.counter(
        "db_expired",
        "Storage operations not run: they waited past request_timeout_ms",
        dbv(|d| load(&d.stats.expired)),
    );
    let ev = |f: fn(&crate::queue::EngineTx) -> u64| engine.map_or(0, f);
    t.gauge(
        "engine_queued",
        "Requests waiting for the Interaction Server engine",
        ev(|e| e.gauge().depth() as u64),
    );
    t.gauge(
        "engine_queued_bytes",
        "Bytes held by requests waiting for the Interaction Server engine",
        ev(|e| e.gauge().bytes() as u64),
    );
    t.counter(
        "engine_overloaded",
        "Requests answered OVERLOADED because engine_queue was full",
        ev(|e| load(&e.gauge().refused)),
    );
    t.gauge(
        "subscriptions",
        "Subscriptions the engine holds",
        ev(|e| load(&e.stats().subs)),
    );
    t.gauge(
        "link_subscriptions",
        "Of them, held by proxy links",
        ev(|e| load(&e.stats().link_subs)),
    );
    t.counter(
        "sessions_detached",
        "Sessions kept for resume after their connection or link went (resume_grace_ms)",
        ev(|e| load(&e.stats().sessions_detached)),
    );
    t.counter(
        "sessions_resumed",
        "Sessions resumed by a later hello",
        ev(|e| load(&e.stats().sessions_resumed)),
    );
    t.counter(
        "resumes_refused",
        "Resumes refused (RESUME_REFUSED): ended session, events lost, another agent's token",
        ev(|e| load(&e.stats().resumes_refused)),
    );
    t.counter(
        "detached_expired",
        "Detached sessions ended when resume_grace_ms ran out",
        ev(|e| load(&e.stats().detached_expired)),
    );
    t.counter(
        "detached_overflowed",
        "Detached sessions ended because their unicast events overflowed resume_buffer_bytes",
        ev(|e| load(&e.stats().detached_overflowed)),
    );
    t.gauge(
        "sessions",
        "Desktop sessions the Interaction Server holds, attached or detached",
        ev(|e| load(&e.stats().sessions)),
    );
    t.gauge(
        "detached_sessions",
        "Of them, detached: kept for a resume (PROTOCOL.md 4.6)",
        ev(|e| load(&e.stats().detached_sessions)),
    );
    t.gauge(
        "replay_bytes",
        "Bytes of unicast events kept for replay to resuming sessions",
        ev(|e| load(&e.stats().replay_bytes)),
    );
    t.counter(
        "connections_refused",
        "Connections refused at max_connections",
        load(&s.refused_conns),
    );
    t.counter(
        "config_reloads",
        "Configuration reloads (SIGHUP) that took effect",
        load(&s.reloads),
    );
    t.counter(
        "config_reload_failures",
        "Configuration reloads that failed; nothing changed (the log says why)",
        load(&s.reload_failures),
    );
    let av = |f: fn(&crate::auth::AuthStats) -> u64| auth.map_or(0, f);
    t.counter("logins_ok", "Logins accepted", av(|a| load(&a.ok)));
    t.counter(
        "logins_ok_reconnect",
        "Logins accepted with a reconnect token",
        av(|a| load(&a.ok_reconnect)),
    );
    t.counter(
        "logins_refused",
        "Logins refused: unknown, wrong, disabled or expired",
        av(|a| load(&a.refused)),
    );
    t.counter(
        "logins_locked_out",
        "Logins refused because the agent or source was locked out",
        av(|a| load(&a.locked_out)),
    );
    t.counter("lockouts", "Lockouts started", av(|a| load(&a.lockouts)));
    t.counter(
        "logins_busy",
        "Logins answered OVERLOADED because the check queue was full",
        av(|a| load(&a.busy)),
    );
    t.counter(
        "argon2_verifications",
        "argon2id password verifications run",
        av(|a| load(&a.argon2_runs)),
    );
    t.family(
        "argon2_seconds_total",
        "counter",
        "Wall time spent in argon2id verifications",
        av(|a| load(&a.argon2_ns)) as f64 / 1e9,
    );
    let gv = |f: fn(&crate::gms::GmsStats) -> u64| s.gms.get().map_or(0, |g| f(&g.stats));
    t.counter(
        "gms_booked",
        "GMS access numbers booked",
        gv(|g| load(&g.booked)),
    );
    t.counter(
        "gms_exhausted",
        "GMS requests refused: no free number in the pool",
        gv(|g| load(&g.exhausted)),
    );
    t.counter(
        "gms_matched",
        "GMS calls matched (bookings released)",
        gv(|g| load(&g.matched)),
    );
    t.counter(
        "gms_unmatched",
        "GMS matches that found no live booking",
        gv(|g| load(&g.unmatched)),
    );
    t.counter(
        "gms_expired",
        "GMS bookings removed at expiry",
        gv(|g| load(&g.expired)),
    );
    process_metrics(&mut t.0);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        t.0,
    )
        .into_response()
}

/// The standard `process_*` series (as Prometheus' own clients export them), from
/// `/proc/self`: what an operator alerts on first (open files against the limit, memory).
fn process_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let mut family = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {v}");
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 (`state`) on.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let tick = 100.0; // USER_HZ: 100 on Linux for every architecture deskmux builds for
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        family(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds",
            (u + s) / tick,
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
    });
    if let (Some(start), Some(boot)) = (field(22), boot) {
        family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the UNIX epoch in seconds",
            boot + start / tick,
        );
    }
    let page = 4096.0;
    if let (Some(vsize), Some(rss)) = (field(23), field(24)) {
        family(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes",
            vsize,
        );
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes",
            rss * page,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors",
            fds.count() as f64,
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(max) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok())
    {
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors",
            max,
        );
    }
}

/// 200 while this instance serves and is not marked unavailable; 503 otherwise (a standby, a
/// server marked unavailable, one shutting down), so that a load balancer sends nothing there.
async fn health(State(app): State<App>) -> Response {
    let s = &app.shared;
    let primary = s.primary.load(Ordering::Acquire);
    let unavailable = s.unavailable.load(Ordering::Acquire);
    let stopping = s.shutting_down.load(Ordering::Acquire);
    if primary && !unavailable && !stopping {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let why = if stopping {
            "shutting down\n"
        } else if !primary {
            "standby\n"
        } else {
            "service unavailable\n"
        };
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

async fn status(State(app): State<App>) -> Response {
    let s = &app.shared;
    let st = s.service_state();
    let mut v = serde_json::json!({
        "instance": st.instance,
        "role": if s.primary.load(Ordering::Acquire) { "primary" } else { "backup" },
        "state": if s.unavailable.load(Ordering::Acquire) { "unavailable" } else { "running" },
        "shutting_down": s.shutting_down.load(Ordering::Acquire),
        "connections": s.connections(),
    });
    if let Some(db) = s.db.get() {
        v["db"] = serde_json::json!({
            "batches": load(&db.stats.batches),
            "operations": load(&db.stats.ops),
            "max_batch": load(&db.stats.max_batch),
            "expired": load(&db.stats.expired),
        });
    }
    if let Some(a) = s.auth.get() {
        let st = a.stats();
        v["auth"] = serde_json::json!({
            "ok": load(&st.ok),
            "ok_reconnect": load(&st.ok_reconnect),
            "refused": load(&st.refused),
            "locked_out": load(&st.locked_out),
            "lockouts": load(&st.lockouts),
            "busy": load(&st.busy),
            "argon2_runs": load(&st.argon2_runs),
            "argon2_ns": load(&st.argon2_ns),
        });
    }
    axum::Json(v).into_response()
}

/// Whether the request carries the admin token; the refusal to send otherwise.
fn authorized(app: &App, h: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let Some(want) = &app.token else {
        return Err((
            StatusCode::FORBIDDEN,
            "no admin_token_file configured: mutating endpoints are off\n",
        ));
    };
    let got = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if crate::auth::secret::ct_eq(got, want) {
        Ok(())
    } else {
        tracing::warn!("http admin: a mutating request without the admin token was refused");
        Err((StatusCode::UNAUTHORIZED, "admin token required\n"))
    }
}

async fn unavailable(State(app): State<App>, h: HeaderMap) -> Response {
    if let Err(r) = authorized(&app, &h) {
        return r.into_response();
    }
    app.shared.set_unavailable(true);
    (StatusCode::OK, "ok\n").into_response()
}

async fn available(State(app): State<App>, h: HeaderMap) -> Response {
    if let Err(r) = authorized(&app, &h) {
        return r.into_response();
    }
    app.shared.set_unavailable(false);
    (StatusCode::OK, "ok\n").into_response()
}

async fn shutdown(State(app): State<App>, h: HeaderMap) -> Response {
    if let Err(r) = authorized(&app, &h) {
        return r.into_response();
    }
    let shared = app.shared.clone();
    tokio::spawn(async move { crate::server::shutdown(&shared).await });
    (StatusCode::OK, "ok\n").into_response()
}

/// Bind the HTTP port if configured.
///
/// # Errors
/// The bind failed.
pub async fn bind(addr: Option<SocketAddr>) -> std::io::Result<Option<TcpListener>> {
    match addr {
        Some(a) => Ok(Some(TcpListener::bind(a).await?)),
        None => Ok(None),
    }
}
