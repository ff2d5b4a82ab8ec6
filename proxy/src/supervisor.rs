//! The supervisor: N worker processes sharing the desktop port, restarted when they die.
//!
//! One process may hold at most 20,000 open files, so one `proxy` command serves 50,000+
//! desktops by running N workers, each a re-exec of this binary with `--worker-index i`,
//! each binding the same port with `SO_REUSEPORT` (the kernel spreads connections) and each
//! owning its own upstream links. A worker is a failure domain: if it dies, only its desktops
//! reconnect, and the supervisor starts a new one after a backoff (250 ms doubling to 10 s,
//! reset once a worker has lived 30 s).
//!
//! The supervisor binds the port first without listening (see `transport::reserve_port`),
//! so that `--listen 127.0.0.1:0` resolves to one port for all workers, and prints
//! `LISTENING <addr>` once every worker said `WORKER_READY`. SIGTERM is forwarded to the
//! workers; after it the supervisor waits for them to drain and exits. SIGHUP goes to the
//! caller's `on_hup` first (which reads and checks the configuration once, for everyone): only
//! a configuration that loads is forwarded to the workers.
//!
//! What the supervisor knows of each worker ([`WorkerInfo`]: restarts, whether it is down or
//! crash-looping, reloads it refused) is what `/health` and the restart and reload-failure
//! counters in `/metrics` report. A worker tells it on stdout (`WORKER_ADMIN`,
//! `WORKER_READY`, `WORKER_RELOAD_FAILED`); other lines are passed through.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::admin::WorkerInfo;
use crate::status::Signals;

/// What the supervisor runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Number of workers.
    pub workers: usize,
    /// The (reserved) desktop address every worker binds.
    pub listen: SocketAddr,
    /// Arguments common to every worker (`--config`, `--upstream`, ...).
    pub worker_args: Vec<String>,
    /// How long to wait for workers to drain after SIGTERM before killing them.
    pub grace: Duration,
    /// Instances disabled by an operator: passed to every (re)started worker
    /// (`--disabled NAME`), so that a restarted worker keeps them out of the pool.
    pub disabled: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

struct Slot {
    child: Option<Child>,
    started: Instant,
    restart_at: Option<Instant>,
    backoff: Duration,
    /// Deaths in a row, each within [`STABLE`] of its start.
    quick_deaths: u32,
}

/// A worker that lived this long is stable: its backoff and crash-loop count reset.
const STABLE: Duration = Duration::from_secs(30);

/// What the supervisor does on SIGHUP: `Some(grace)` forwards it to the workers with the
/// drain grace of the configuration it loaded; `None` (the configuration does not load)
/// forwards nothing, so the workers keep the configuration they run.
pub type OnHup<'a> = &'a mut dyn FnMut() -> Option<Duration>;

fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn spawn_worker(
    plan: &Plan,
    index: usize,
    workers: &Arc<Mutex<Vec<WorkerInfo>>>,
    ready: &mpsc::Sender<usize>,
) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(&plan.worker_args)
        .arg("--worker-index")
        .arg(index.to_string())
        .arg("--listen")
        .arg(plan.listen.to_string())
        .args(
            plan.disabled
                .lock()
                .map(|d| {
                    d.iter()
                        .flat_map(|n| ["--disabled".to_string(), n.clone()])
                        .collect()
                })
                .unwrap_or_else(|_| Vec::new()),
        )
        // A pipe the worker watches: EOF means the supervisor is gone, and the worker drains.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn()?;
    let pid = child.id();
    if let Ok(mut w) = workers.lock()
        && let Some(info) = w.get_mut(index)
    {
        info.pid = pid;
        info.admin = None;
    }
    if let Some(out) = child.stdout.take() {
        let workers = workers.clone();
        let ready = ready.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("WORKER_ADMIN ") {
                    if let (Ok(addr), Ok(mut w)) = (a.trim().parse(), workers.lock())
                        && let Some(info) = w.get_mut(index)
                    {
                        info.admin = Some(addr);
                    }
                } else if line.starts_with("WORKER_READY") {
                    let _ = ready.send(index);
                } else if line.starts_with("WORKER_RELOAD_FAILED") {
                    if let Ok(mut w) = workers.lock()
                        && let Some(info) = w.get_mut(index)
                    {
                        info.reload_failures += 1;
                    }
                } else {
                    println!("{line}");
                }
            }
        });
    }
    Ok(child)
}

/// Run the workers until SIGTERM; `on_listening` is called once all workers are ready (or
/// after 10 s). Returns the exit code.
///
/// # Errors
/// The first worker could not be started.
pub fn run(
    plan: &Plan,
    signals: &Signals,
    workers: &Arc<Mutex<Vec<WorkerInfo>>>,
    on_listening: impl FnOnce(),
    on_hup: OnHup<'_>,
) -> std::io::Result<i32> {
    let mut grace = plan.grace;
    let (tx, rx) = mpsc::channel();
    if let Ok(mut w) = workers.lock() {
        *w = (0..plan.workers)
            .map(|i| WorkerInfo {
                index: i,
                ..WorkerInfo::default()
            })
            .collect();
    }
    let mut slots = Vec::new();
    for i in 0..plan.workers {
        let child = spawn_worker(plan, i, workers, &tx)?;
        slots.push(Slot {
            child: Some(child),
            started: Instant::now(),
            restart_at: None,
            backoff: Duration::from_millis(250),
            quick_deaths: 0,
        });
    }
    let mut ready = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready.len() < plan.workers && Instant::now() < deadline {
        if let Ok(i) = rx.recv_timeout(Duration::from_millis(50)) {
            ready.insert(i);
        }
        if slots.iter_mut().any(|s| {
            s.child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some())
        }) {
            break;
        }
    }
    on_listening();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        while rx.try_recv().is_ok() {}
        if signals.hup.swap(false, Ordering::Relaxed)
            && let Some(g) = on_hup()
        {
            grace = g;
            info!("SIGHUP: forwarding to workers");
            for s in &slots {
                if let Some(c) = &s.child {
                    send_signal(c.id(), "HUP");
                }
            }
        }
        if signals.term.load(Ordering::Relaxed) {
            info!("SIGTERM: draining workers");
            for s in &slots {
                if let Some(c) = &s.child {
                    send_signal(c.id(), "TERM");
                }
            }
            let until = Instant::now() + grace + Duration::from_secs(3);
            loop {
                let alive = slots.iter_mut().any(|s| {
                    s.child
                        .as_mut()
                        .is_some_and(|c| c.try_wait().ok().flatten().is_none())
                });
                if !alive || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            for s in &mut slots {
                if let Some(mut c) = s.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            return Ok(0);
        }
        for (i, s) in slots.iter_mut().enumerate() {
            if s.child.is_some() && s.quick_deaths > 0 && s.started.elapsed() > STABLE {
                s.quick_deaths = 0;
                if let Ok(mut w) = workers.lock()
                    && let Some(info) = w.get_mut(i)
                {
                    info.down = None;
                }
            }
            if let Some(c) = s.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                warn!(worker = i, status = %st, "worker died; restarting");
                s.child = None;
                if s.started.elapsed() > STABLE {
                    s.backoff = Duration::from_millis(250);
                    s.quick_deaths = 0;
                }
                s.quick_deaths += 1;
                s.restart_at = Some(Instant::now() + s.backoff);
                let why = if s.quick_deaths > 1 {
                    format!(
                        "worker {i} is crash-looping: died {} times in a row within {} s of starting (last: {st}); next start in {} ms",
                        s.quick_deaths,
                        STABLE.as_secs(),
                        s.backoff.as_millis()
                    )
                } else {
                    format!(
                        "worker {i} died ({st}); restarting in {} ms",
                        s.backoff.as_millis()
                    )
                };
                s.backoff = (s.backoff * 2).min(Duration::from_secs(10));
                if let Ok(mut w) = workers.lock()
                    && let Some(info) = w.get_mut(i)
                {
                    info.pid = 0;
                    info.admin = None;
                    info.down = Some(why);
                }
            }
            if s.child.is_none()
                && let Some(at) = s.restart_at
                && Instant::now() >= at
            {
                s.restart_at = None;
                match spawn_worker(plan, i, workers, &tx) {
                    Ok(c) => {
                        s.child = Some(c);
                        s.started = Instant::now();
                        if let Ok(mut w) = workers.lock()
                            && let Some(info) = w.get_mut(i)
                        {
                            info.restarts += 1;
                            // Restarted: no longer down, but still crash-looping until it
                            // lived `STABLE` (cleared above).
                            if s.quick_deaths < 2 {
                                info.down = None;
                            }
                        }
                    }
                    Err(e) => {
                        warn!(worker = i, error = %e, "restart failed");
                        s.restart_at = Some(Instant::now() + s.backoff);
                    }
                }
            }
        }
    }
}
