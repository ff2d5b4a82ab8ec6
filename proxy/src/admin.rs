//! The admin HTTP servers (axum): Prometheus `/metrics`, `/health` and JSON `/status`.
//!
//! Each worker serves its own registry on an ephemeral loopback port (announced to the
//! supervisor as `WORKER_ADMIN <addr>`); the supervisor serves the configured admin address
//! and merges: `/metrics` concatenates the workers' samples under one `# HELP`/`# TYPE` per
//! family (each worker's samples carry `worker="i"`) and adds its own (worker restarts,
//! reloads, its `process_*`), `/status` lists the workers. `/metrics` is OpenMetrics when the
//! `Accept` header prefers it, else the Prometheus text format 0.0.4.
//!
//! `/health` is 200 `ok` only when nothing is degraded; otherwise 503 with one reason a line:
//! a worker down, restarting or crash-looping, an upstream with every link down, no link
//! up, draining. A load balancer sees "not fine", an operator reads why. Signals are not
//! handled here: `main` installs them as flags the event loops poll.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::Shared;
use crate::status::AdminCommand;

use crate::metrics::{CONTENT_OPENMETRICS, CONTENT_TEXT, to_text_format, wants_openmetrics};

/// Start a thread running a current-thread tokio runtime that serves `app` on `addr`.
/// Returns the bound address.
///
/// # Errors
/// The runtime or the bind failed.
pub fn spawn(addr: SocketAddr, app: Router) -> std::io::Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(listener.local_addr());
                let _ = axum::serve(listener, app).await;
            });
        })?;
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| std::io::Error::other("admin thread did not start"))?
}

/// The worker's admin routes.
pub fn worker_app(shared: Shared) -> Router {
    Router::new()
        .route("/metrics", get(worker_metrics))
        .route("/health", get(worker_health))
        .route("/status", get(worker_status))
        .route("/instances/{name}/{action}", post(worker_instance))
        .with_state(shared)
}

/// `POST /instances/{name}/disable|enable` on a worker: queue the command for the event loop
/// and wait (at most 2 s) until its tick applied it.
async fn worker_instance(
    State(s): State<Shared>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let cmd = match action.as_str() {
        "disable" => AdminCommand::Disable(name.clone()),
        "enable" => AdminCommand::Enable(name.clone()),
        _ => return (StatusCode::NOT_FOUND, "actions: disable, enable\n").into_response(),
    };
    let known = s.status.instances.lock().is_ok_and(|v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|i| i.get("name").and_then(|n| n.as_str()) == Some(name.as_str()))
        })
    });
    if !known {
        return (StatusCode::NOT_FOUND, format!("no instance {name:?}\n")).into_response();
    }
    let before = s.status.commands_done.load(Ordering::Relaxed);
    let queued = match s.status.commands.lock() {
        Ok(mut q) => {
            q.push(cmd);
            q.len() as u64
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while s.status.commands_done.load(Ordering::Relaxed) < before + queued {
        if tokio::time::Instant::now() >= deadline {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                "worker did not apply in time\n",
            )
                .into_response();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    axum::Json(serde_json::json!({
        "instance": name,
        "disabled": action == "disable",
    }))
    .into_response()
}

/// An exposition in OpenMetrics (ending `# EOF`), served in the format `headers` ask for.
fn serve_metrics(headers: &HeaderMap, om: String) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, CONTENT_OPENMETRICS)], om).into_response()
    } else {
        ([(header::CONTENT_TYPE, CONTENT_TEXT)], to_text_format(&om)).into_response()
    }
}

async fn worker_metrics(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let mut out = String::new();
    let ok = match s.registry.lock() {
        Ok(r) => prometheus_client::encoding::text::encode_registry(&mut out, &r).is_ok(),
        Err(_) => false,
    };
    if !ok {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let worker = s.status.worker.load(Ordering::Relaxed);
    out.push_str(&crate::metrics::process_families(&format!(
        "{{worker=\"{worker}\"}}"
    )));
    out.push_str("# EOF\n");
    serve_metrics(&headers, out)
}

async fn worker_health(State(s): State<Shared>) -> Response {
    health(s.status.degraded())
}

/// 200 `ok`, or 503 with the reasons, one a line.
fn health(why: Vec<String>) -> Response {
    if why.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded\n{}\n", why.join("\n")),
        )
            .into_response()
    }
}

async fn worker_status(State(s): State<Shared>) -> Response {
    axum::Json(s.status.json()).into_response()
}

/// One worker, as the supervisor knows it.
#[derive(Debug, Clone, Default)]
pub struct WorkerInfo {
    /// Worker index.
    pub index: usize,
    /// Current pid (0 while not running).
    pub pid: u32,
    /// Its admin address, once announced.
    pub admin: Option<SocketAddr>,
    /// Times it was restarted.
    pub restarts: u64,
    /// SIGHUPs this worker received and could not apply because the configuration did not
    /// load when it read it (a SIGHUP sent to the worker itself, or the file changed after
    /// the supervisor checked it). Kept across its restarts.
    pub reload_failures: u64,
    /// Why it is down or unstable, while it is (died and waiting for its restart, or
    /// crash-looping); `None` once it runs (or has run long enough to be stable).
    pub down: Option<String>,
}

/// What the supervisor's admin server sees.
#[derive(Debug, Clone)]
pub struct SupervisorState {
    /// The workers.
    pub workers: Arc<Mutex<Vec<WorkerInfo>>>,
    /// The desktop address.
    pub listen: SocketAddr,
    /// Instances disabled by an operator (re-sent to restarted workers).
    pub disabled: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// SIGHUP reloads: (applied, refused), counted by the supervisor (which reads the
    /// configuration once for every worker).
    pub reloads: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
}

/// The supervisor's admin routes.
pub fn supervisor_app(state: SupervisorState) -> Router {
    Router::new()
        .route("/metrics", get(sup_metrics))
        .route("/health", get(sup_health))
        .route("/status", get(sup_status))
        .route("/instances/{name}/{action}", post(sup_instance))
        .with_state(state)
}

/// `POST /instances/{name}/disable|enable`: fan the command out to every worker (each owns
/// its own links and router). 200 when every running worker applied it, 404 for an unknown
/// instance, 502 if some worker failed. Disabled names are remembered and re-sent to a
/// worker that restarts.
async fn sup_instance(
    State(s): State<SupervisorState>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    if action != "disable" && action != "enable" {
        return (StatusCode::NOT_FOUND, "actions: disable, enable\n").into_response();
    }
    let path = format!("/instances/{name}/{action}");
    let mut results = Vec::new();
    let (mut ok, mut not_found, mut failed) = (0, 0, 0);
    for w in admins(&s) {
        let r = match w.admin {
            Some(a) => request(a, "POST", &path).await,
            None => None,
        };
        match r.as_ref().map(|(c, _)| *c) {
            Some(200) => ok += 1,
            Some(404) => not_found += 1,
            _ => failed += 1,
        }
        results.push(serde_json::json!({
            "index": w.index,
            "code": r.map(|(c, _)| c),
        }));
    }
    if ok == 0 && not_found > 0 {
        return (StatusCode::NOT_FOUND, format!("no instance {name:?}\n")).into_response();
    }
    if let Ok(mut d) = s.disabled.lock() {
        if action == "disable" {
            d.insert(name.clone());
        } else {
            d.remove(&name);
        }
    }
    let code = if failed == 0 && not_found == 0 {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    (
        code,
        axum::Json(serde_json::json!({
            "instance": name,
            "disabled": action == "disable",
            "workers": results,
        })),
    )
        .into_response()
}

fn admins(s: &SupervisorState) -> Vec<WorkerInfo> {
    s.workers.lock().map(|w| w.clone()).unwrap_or_default()
}

/// A minimal HTTP/1.0 GET to a worker's loopback admin port (the client side only; the
/// servers are axum). Metrics are asked for in OpenMetrics, which the merge reads.
async fn fetch(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    request(addr, "GET", path).await
}

/// A minimal HTTP/1.0 request with an empty body to a worker's loopback admin port.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/openmetrics-text\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

/// Merge OpenMetrics texts: one `# HELP`/`# TYPE`/`# UNIT` header per family, all samples.
pub fn merge_metrics(texts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut fams: std::collections::HashMap<String, (Vec<String>, Vec<String>)> =
        std::collections::HashMap::new();
    for t in texts {
        let mut cur = String::new();
        for line in t.lines() {
            if line == "# EOF" || line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut it = rest.splitn(3, ' ');
                let _kind = it.next();
                let name = it.next().unwrap_or("").to_string();
                let e = fams.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    (Vec::new(), Vec::new())
                });
                if !e.0.iter().any(|l| l == line) {
                    e.0.push(line.to_string());
                }
                cur = name;
            } else if let Some(e) = fams.get_mut(&cur) {
                e.1.push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some((hdr, samples)) = fams.get(&name) {
            for l in hdr.iter().chain(samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

async fn sup_metrics(State(s): State<SupervisorState>, headers: HeaderMap) -> Response {
    let workers = admins(&s);
    let mut own = String::new();
    let restarts: Vec<(String, f64)> = workers
        .iter()
        .map(|w| (format!("{{worker=\"{}\"}}", w.index), w.restarts as f64))
        .collect();
    crate::metrics::counter_family(
        &mut own,
        "deskmux_proxy_worker_restarts",
        "counter",
        "Workers restarted by the supervisor after they died",
        &restarts,
    );
    let (ok, failed) = (
        s.reloads.0.load(Ordering::Relaxed),
        s.reloads.1.load(Ordering::Relaxed),
    );
    crate::metrics::counter_family(
        &mut own,
        "deskmux_proxy_config_reloads",
        "counter",
        "SIGHUP reloads of a configuration that loaded (keys needing a restart are not applied)",
        &[(String::new(), ok as f64)],
    );
    // The supervisor's own check (no label), and each worker's own reading (`worker`).
    let mut failures = vec![(String::new(), failed as f64)];
    failures.extend(workers.iter().map(|w| {
        (
            format!("{{worker=\"{}\"}}", w.index),
            w.reload_failures as f64,
        )
    }));
    crate::metrics::counter_family(
        &mut own,
        "deskmux_proxy_config_reload_failures",
        "counter",
        "SIGHUP reloads refused: the configuration did not load (no label: the supervisor's check; worker: that worker's own reading); the running one stays",
        &failures,
    );
    own.push_str(&crate::metrics::process_families(""));
    let mut texts = vec![own];
    for w in workers {
        if let Some(a) = w.admin
            && let Some((200, body)) = fetch(a, "/metrics").await
        {
            texts.push(body);
        }
    }
    serve_metrics(&headers, merge_metrics(&texts))
}

async fn sup_health(State(s): State<SupervisorState>) -> Response {
    let mut why = Vec::new();
    for w in admins(&s) {
        if let Some(d) = &w.down {
            why.push(d.clone());
        }
        match w.admin {
            None if w.down.is_none() => why.push(format!("worker {}: starting", w.index)),
            None => {}
            Some(a) => match fetch(a, "/health").await {
                Some((200, _)) => {}
                Some((_, body)) => why.extend(
                    body.lines()
                        .filter(|l| *l != "degraded" && !l.is_empty())
                        .map(|l| format!("worker {}: {l}", w.index)),
                ),
                None => why.push(format!("worker {}: admin port not answering", w.index)),
            },
        }
    }
    health(why)
}

async fn sup_status(State(s): State<SupervisorState>) -> Response {
    let mut workers = Vec::new();
    let mut desktops = 0u64;
    let mut per_worker: Vec<serde_json::Value> = Vec::new();
    for w in admins(&s) {
        let st = match w.admin {
            Some(a) => fetch(a, "/status")
                .await
                .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok()),
            None => None,
        };
        if let Some(v) = st.as_ref().and_then(|v| v.get("instances")) {
            per_worker.push(v.clone());
        }
        desktops += st
            .as_ref()
            .and_then(|v| v.get("desktops"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        workers.push(serde_json::json!({
            "index": w.index,
            "pid": w.pid,
            "restarts": w.restarts,
            "reload_failures": w.reload_failures,
            "admin": w.admin.map(|a| a.to_string()),
            "status": st,
        }));
    }
    axum::Json(serde_json::json!({
        "listen": s.listen.to_string(),
        "desktops": desktops,
        "instances": merge_instances(&per_worker),
        "workers": workers,
    }))
    .into_response()
}

/// Merge the workers' instance lists by name: counts are summed; the state is the workers'
/// common state, else `running` if any worker runs it, else `disabled` if any worker still
/// has sessions on a disabled instance, else the first worker's; `drained` only when every
/// worker says so.
pub fn merge_instances(per_worker: &[serde_json::Value]) -> serde_json::Value {
    use serde_json::Value;
    let mut order: Vec<String> = Vec::new();
    let mut merged: std::collections::HashMap<String, (Value, Vec<String>)> =
        std::collections::HashMap::new();
    for list in per_worker {
        for inst in list.as_array().into_iter().flatten() {
            let Some(name) = inst.get("name").and_then(Value::as_str) else {
                continue;
            };
            let state = inst
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match merged.get_mut(name) {
                None => {
                    order.push(name.to_string());
                    merged.insert(name.to_string(), (inst.clone(), vec![state]));
                }
                Some((acc, states)) => {
                    states.push(state);
                    for k in ["sessions", "aliases", "in_flight", "links_up", "links"] {
                        let sum = acc.get(k).and_then(Value::as_u64).unwrap_or(0)
                            + inst.get(k).and_then(Value::as_u64).unwrap_or(0);
                        acc[k] = Value::from(sum);
                    }
                    let drained = acc.get("drained").and_then(Value::as_bool) == Some(true)
                        && inst.get("drained").and_then(Value::as_bool) == Some(true);
                    acc["drained"] = Value::from(drained);
                }
            }
        }
    }
    let out: Vec<Value> = order
        .into_iter()
        .filter_map(|n| merged.remove(&n))
        .map(|(mut acc, states)| {
            let first = states.first().cloned().unwrap_or_default();
            let state = if states.iter().all(|s| *s == first) {
                first
            } else if states.iter().any(|s| s == "running") {
                "running".to_string()
            } else if states.iter().any(|s| s == "disabled") {
                // Drained only once every worker's sessions ended.
                "disabled".to_string()
            } else {
                first
            };
            acc["state"] = Value::from(state);
            acc["worker_states"] = Value::from(states);
            acc
        })
        .collect();
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_instances() {
        let w0 = serde_json::json!([
            {"name": "a", "state": "running", "sessions": 2, "aliases": 3, "in_flight": 1, "drained": false},
            {"name": "b", "state": "drained", "sessions": 0, "aliases": 0, "in_flight": 0, "drained": true},
        ]);
        let w1 = serde_json::json!([
            {"name": "a", "state": "stopped", "sessions": 1, "aliases": 1, "in_flight": 4, "drained": false},
            {"name": "b", "state": "drained", "sessions": 0, "aliases": 0, "in_flight": 0, "drained": true},
        ]);
        let m = merge_instances(&[w0, w1]);
        assert_eq!(m[0]["name"], "a");
        assert_eq!(m[0]["state"], "running");
        assert_eq!(m[0]["sessions"], 3);
        assert_eq!(m[0]["in_flight"], 5);
        assert_eq!(m[1]["state"], "drained");
        assert_eq!(m[1]["drained"], true);
        let w0 = serde_json::json!([{"name": "b", "state": "drained", "drained": true}]);
        let w1 = serde_json::json!([{"name": "b", "state": "disabled", "drained": false}]);
        let m = merge_instances(&[w0, w1]);
        assert_eq!(
            (&m[0]["state"], &m[0]["drained"]),
            (&"disabled".into(), &false.into())
        );
    }

    #[test]
    fn merges_families() {
        let a = "# HELP x X.\n# TYPE x gauge\nx{worker=\"0\"} 1\n# EOF\n".to_string();
        let b = "# HELP x X.\n# TYPE x gauge\nx{worker=\"1\"} 2\n# EOF\n".to_string();
        let m = merge_metrics(&[a, b]);
        assert_eq!(
            m,
            "# HELP x X.\n# TYPE x gauge\nx{worker=\"0\"} 1\nx{worker=\"1\"} 2\n# EOF\n"
        );
    }
}
