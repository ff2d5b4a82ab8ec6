//! The operator's admin port: a tiny line protocol on TCP (configure `admin_listen`; bind it to
//! loopback — it has no authentication).
//!
//! One command per line, one answer line each:
//! - `state` → `state=running|unavailable role=primary|backup instance=NAME`
//! - `token TOKEN` → `ok` if it is the admin token (`admin_token_file`), else `error bad token`;
//!   the mutating commands below need it first on the connection (without a configured token
//!   they are refused: anyone who can connect could otherwise shut the server down)
//! - `unavailable` → marks the service unavailable (SERVICE_STATE on every connection) → `ok`
//! - `available` → back to running → `ok`
//! - `stats` → `db_batches=N db_ops=N db_max_batch=N` (group-commit effect: ops per batch),
//!   then `db_queued=N db_overloaded=N` (operations waiting for the DB worker, and refused
//!   because `db_queue` were), `engine_queued=N engine_overloaded=N` (the same for the
//!   engine and `engine_queue`), `subs=N link_subs=N sub_topics=N sub_slots=N` (subscriptions the
//!   engine holds, of them held by proxy links, distinct tenant topics, and how many its
//!   table has room for) and `conns=N conns_max=N
//!   conns_refused=N` (connections served, the cap in force, refused at the cap)
//! - `auth` → `auth_ok=N auth_ok_reconnect=N auth_refused=N auth_locked_out=N auth_lockouts=N
//!   auth_busy=N argon2_runs=N argon2_ns=N` (logins, and the wall time argon2 took)
//! - `shutdown` → `ok`, then graceful shutdown (GO_AWAY, grace period, exit)
//! - anything else → `error unknown command`
//!
//! A line longer than 1 KiB closes the connection.
//!
//! The same controls exist as signals (SIGUSR1, SIGUSR2, SIGTERM; see [`crate::server`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use deskmux_codec::msg::{Role, State};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::server::Shared;

/// Longest command line accepted.
const MAX_LINE: u64 = 1024;

/// Serve admin connections forever; `token` guards the mutating commands.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, token: Option<Arc<Vec<u8>>>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(session(shared.clone(), s, token.clone()));
            }
            Err(e) => {
                tracing::warn!("admin accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The `stats` answer (see the module docs).
fn stats(shared: &Shared) -> String {
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut line = match shared.db.get() {
        Some(db) => format!(
            "db_batches={} db_ops={} db_max_batch={} db_queued={} db_overloaded={}",
            g(&db.stats.batches),
            g(&db.stats.ops),
            g(&db.stats.max_batch),
            db.gauge().depth(),
            g(&db.gauge().refused)
        ),
        None => "db_batches=0 db_ops=0 db_max_batch=0 db_queued=0 db_overloaded=0".to_string(),
    };
    match shared.engine.get() {
        Some(e) => {
            let st = e.stats();
            line.push_str(&format!(
                " engine_queued={} engine_overloaded={} subs={} link_subs={} sub_topics={} sub_slots={}",
                e.gauge().depth(),
                g(&e.gauge().refused),
                g(&st.subs),
                g(&st.link_subs),
                g(&st.sub_topics),
                g(&st.sub_slots)
            ));
        }
        None => line.push_str(
            " engine_queued=0 engine_overloaded=0 subs=0 link_subs=0 sub_topics=0 sub_slots=0",
        ),
    }
    line.push_str(&format!(
        " conns={} conns_max={} conns_refused={}",
        shared.open_conns.load(Ordering::Relaxed),
        shared.max_conns,
        g(&shared.refused_conns)
    ));
    line
}

async fn session(shared: Arc<Shared>, s: TcpStream, token: Option<Arc<Vec<u8>>>) {
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    let mut authorized = false;
    loop {
        let mut raw = Vec::new();
        match (&mut rd)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut raw)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) if raw.len() as u64 > MAX_LINE => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw);
        let cmd = line.trim();
        let mutating = matches!(cmd, "unavailable" | "available" | "shutdown");
        if let Some(t) = cmd.strip_prefix("token ") {
            authorized = token
                .as_ref()
                .is_some_and(|want| crate::auth::secret::ct_eq(t.as_bytes(), want));
            let answer = if authorized {
                "ok\n"
            } else {
                "error bad token\n"
            };
            if !authorized {
                tracing::warn!("admin line protocol: a wrong admin token was presented");
            }
            if wr.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if mutating && !authorized {
            let answer = if token.is_some() {
                "error admin token required (send: token TOKEN)\n"
            } else {
                "error no admin_token_file configured\n"
            };
            if wr.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let answer = match cmd {
            "state" => {
                let st = shared.service_state();
                format!(
                    "state={} role={} instance={}",
                    if st.state == State::Running {
                        "running"
                    } else {
                        "unavailable"
                    },
                    if st.role == Role::Primary {
                        "primary"
                    } else {
                        "backup"
                    },
                    st.instance
                )
            }
            "stats" => stats(&shared),
            "auth" => match shared.auth.get() {
                Some(a) => {
                    let s = a.stats();
                    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                    format!(
                        "auth_ok={} auth_ok_reconnect={} auth_refused={} auth_locked_out={} auth_lockouts={} auth_busy={} argon2_runs={} argon2_ns={}",
                        g(&s.ok),
                        g(&s.ok_reconnect),
                        g(&s.refused),
                        g(&s.locked_out),
                        g(&s.lockouts),
                        g(&s.busy),
                        g(&s.argon2_runs),
                        g(&s.argon2_ns)
                    )
                }
                None => "error not primary".to_string(),
            },
            "unavailable" => {
                shared.set_unavailable(true);
                "ok".to_string()
            }
            "available" => {
                shared.set_unavailable(false);
                "ok".to_string()
            }
            "shutdown" => {
                let _ = wr.write_all(b"ok\n").await;
                crate::server::shutdown(&shared).await;
                return;
            }
            _ => "error unknown command".to_string(),
        };
        if wr
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
