//! The event loops: one OS thread per core, each a current-thread tokio runtime driving
//! thousands of desktops as small local tasks; per-thread statistics (histograms, tallies)
//! merged into one [`ShardResult`] per process.
//!
//! Each thread also runs its precise timers ([`crate::timer`]), which open-loop desktops sleep
//! on, and a ticker that measures the thread's own CPU time and run-queue wait over the window.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::counts::TypeCounts;
use crate::gms::GmsCounts;
use crate::recorder::{self, Recorder, RecorderWire, Window};
use crate::verify::Tally;

pub use crate::stats::{ClientStats, Delivery, EventStats, EventsWire, merge_delivery};

/// The run clock: nanoseconds since the run's start (shared by every shard through
/// `start_unix_ns`), read from the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Monotonic anchor.
    anchor: Instant,
    /// Run time of the anchor, ns (negative if the run starts later).
    anchor_run_ns: i64,
    /// Run start, ns since the Unix epoch.
    start_unix_ns: u64,
}

/// Nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Clock {
    /// A clock for a run that starts at `start_unix_ns`.
    pub fn new(start_unix_ns: u64) -> Clock {
        let anchor = Instant::now();
        let now = unix_ns();
        Clock {
            anchor,
            anchor_run_ns: now as i64 - start_unix_ns as i64,
            start_unix_ns,
        }
    }

    /// Run time now, ns (0 before the start).
    pub fn now_ns(&self) -> u64 {
        (self.anchor.elapsed().as_nanos() as i64 + self.anchor_run_ns).max(0) as u64
    }

    /// The monotonic instant of run time `t`.
    pub fn instant(&self, t: u64) -> Instant {
        let d = t as i64 - self.anchor_run_ns;
        if d <= 0 {
            self.anchor
        } else {
            self.anchor + Duration::from_nanos(d as u64)
        }
    }

    /// Tokio instant of run time `t`.
    pub fn tokio_instant(&self, t: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.instant(t))
    }

    /// Unix time (µs) of run time `t`.
    pub fn unix_us(&self, t: u64) -> u64 {
        (self.start_unix_ns + t) / 1000
    }
}

/// Live counters of one thread, published by its ticker for the progress display.
#[derive(Debug, Default)]
pub struct ThreadLive {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Answered ok.
    pub ok: AtomicU64,
    /// Error answers.
    pub errors: AtomicU64,
    /// Lost requests.
    pub lost: AtomicU64,
    /// Wrong answers.
    pub wrong: AtomicU64,
    /// Events received.
    pub events: AtomicU64,
}

/// Live counters of one process.
#[derive(Debug, Default)]
pub struct Live {
    /// Desktops with a session now.
    pub connected: AtomicI64,
    /// Desktops that never got a session.
    pub failed: AtomicU64,
    /// Per thread.
    pub threads: Vec<ThreadLive>,
    /// Set to stop every desktop early (Ctrl-C).
    pub stop: AtomicBool,
    /// When [`Live::stop_now`] was called, ns since the Unix epoch (0: never): the end of the
    /// measured window of a stopped run.
    pub stopped_at_unix_ns: AtomicU64,
    /// Callback: the access numbers this process's clients hold now, by (site, number):
    /// (holder, expiry in ms since the Unix epoch). A number handed to a second client while
    /// held is a double booking.
    pub held: std::sync::Mutex<HashMap<(usize, String), (u64, i64)>>,
}

/// A snapshot of live counters (one process, or summed).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Desktops targeted.
    pub target: u64,
    /// Connected now.
    pub connected: u64,
    /// Failed.
    pub failed: u64,
    /// Requests sent.
    pub sent: u64,
    /// Ok.
    pub ok: u64,
    /// Errors.
    pub errors: u64,
    /// Lost.
    pub lost: u64,
    /// Wrong.
    pub wrong: u64,
    /// Events.
    pub events: u64,
}

impl Progress {
    /// Sum.
    pub fn add(&mut self, o: &Progress) {
        self.target += o.target;
        self.connected += o.connected;
        self.failed += o.failed;
        self.sent += o.sent;
        self.ok += o.ok;
        self.errors += o.errors;
        self.lost += o.lost;
        self.wrong += o.wrong;
        self.events += o.events;
    }
}

impl Live {
    /// Counters for `threads` threads.
    pub fn new(threads: usize) -> Live {
        Live {
            threads: (0..threads).map(|_| ThreadLive::default()).collect(),
            ..Live::default()
        }
    }

    /// Stop every desktop early (Ctrl-C), noting when: the figures are then over the window
    /// actually measured.
    pub fn stop_now(&self) {
        let _ = self.stopped_at_unix_ns.compare_exchange(
            0,
            unix_ns(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Sum the counters.
    pub fn snapshot(&self, target: u64) -> Progress {
        let mut p = Progress {
            target,
            connected: self.connected.load(Ordering::Relaxed).max(0) as u64,
            failed: self.failed.load(Ordering::Relaxed),
            ..Progress::default()
        };
        for t in &self.threads {
            p.sent += t.sent.load(Ordering::Relaxed);
            p.ok += t.ok.load(Ordering::Relaxed);
            p.errors += t.errors.load(Ordering::Relaxed);
            p.lost += t.lost.load(Ordering::Relaxed);
            p.wrong += t.wrong.load(Ordering::Relaxed);
            p.events += t.events.load(Ordering::Relaxed);
        }
        p
    }
}

/// One storm round's reconnect measurements.
#[derive(Debug, Clone)]
pub struct StormRound {
    /// Jittered reconnect?
    pub jitter: bool,
    /// Drop → new session, ns, per desktop.
    pub reconnect: Histogram<u64>,
    /// Failed attempts during the round.
    pub failed_attempts: u64,
    /// Desktops that did not get back.
    pub failed: u64,
}

/// Storm round as shipped between processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormWire {
    /// Jitter.
    pub jitter: bool,
    /// Hex histogram.
    pub reconnect: String,
    /// Failed attempts.
    pub failed_attempts: u64,
    /// Failed desktops.
    pub failed: u64,
}

/// Everything one thread measured.
#[derive(Debug)]
pub struct ThreadStats {
    /// Latencies.
    pub rec: Recorder,
    /// Request outcomes.
    pub tally: Tally,
    /// Events.
    pub events: EventStats,
    /// Connections.
    pub clients: ClientStats,
    /// Storm rounds.
    pub storm: Vec<StormRound>,
    /// First few verification failures, for the report.
    pub samples: Vec<String>,
    /// Scheduler lag of this thread's loop, ns.
    pub sched_lag: Histogram<u64>,
    /// This thread's CPU time inside the window, ns.
    pub cpu_ns: u64,
    /// Time this thread waited on a run queue (runnable, no CPU) inside the window, ns.
    pub wait_ns: u64,
    /// Requests recorded per operation name (agent scenario).
    pub ops: HashMap<&'static str, Histogram<u64>>,
    /// Requests written, by message type (logins and heartbeats too).
    pub by_type: TypeCounts,
    /// Callback: bookings.
    pub gms: GmsCounts,
}

impl ThreadStats {
    /// Note a verification failure (keeps the first 20).
    pub fn sample(&mut self, s: impl FnOnce() -> String) {
        if self.samples.len() < 20 {
            self.samples.push(s());
        }
    }
}

/// Per-thread context shared by its desktops. Its `Debug` leaves out the desktops' reconnect
/// tokens, which log in as their agents.
pub struct Ctx {
    /// The run.
    pub cfg: Arc<RunConfig>,
    /// The run clock.
    pub clock: Clock,
    /// Measurement window.
    pub window: Window,
    /// Statistics.
    pub stats: RefCell<ThreadStats>,
    /// Each desktop's last reconnect token (see [`RunConfig::reconnect_tokens`]).
    pub reconnect: RefCell<HashMap<u64, String>>,
    /// Each desktop's session to resume after a drop (see [`RunConfig::resume`]): its resume
    /// token and the last unicast `useq` it received.
    pub resume: RefCell<HashMap<u64, (String, u64)>>,
    /// Desktops whose agent is logged in on their current session (a resumed session needs
    /// no second login only then).
    pub logged_in: RefCell<std::collections::HashSet<u64>>,
    /// Each agent's interaction in progress and its step (agent scenario), for going on
    /// after a resume.
    pub work: RefCell<HashMap<u64, (i64, u8)>>,
    /// Each media server's submit in flight (its number, which keys it), for a retry after a
    /// resume.
    pub submits: RefCell<HashMap<u64, u64>>,
    /// Submits each media server has made.
    pub submits_made: RefCell<HashMap<u64, u64>>,
    /// Process-wide live counters.
    pub live: Arc<Live>,
    /// This thread's index.
    pub thread: usize,
    /// Shard's desktop id range start (for logs).
    pub shard: (u64, u64),
    /// QUIC runs: this thread's client endpoints (UDP sockets); `None` otherwise.
    pub quic: Option<crate::quic::EndpointSet>,
    /// TLS runs: the connector (trust store, server name); `None` otherwise.
    pub tls: Option<crate::tls::TlsClient>,
    /// This thread's precise timers (open-loop sends sleep on them).
    pub timers: Rc<crate::timer::Timers>,
    /// This thread's CPU and run-queue wait over the window, sampled by the ticker.
    pub cpu: Cell<CpuWindow>,
}

/// A thread's (CPU, run-queue wait) at the window's start, and whether its end was recorded.
///
/// The ticker samples at its first tick inside the window and its first tick after it. A ping
/// run's desktops end as soon as their last answers are in, which can be before that second
/// tick (10 ms period); the ticker is then aborted and the figures used to stay at zero
/// ("busiest thread 0 %" in 3 of 15 runs). [`CpuWindow::finish`] records the end when the
/// thread's desktops are done, if no tick has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuWindow {
    /// Sample at the first tick inside the window.
    start: Option<(u64, u64)>,
    /// The end has been recorded.
    done: bool,
}

impl CpuWindow {
    /// A tick at run time `now`, with the thread's current (CPU, wait) in `sample`. Returns
    /// (CPU, wait) over the window when this tick records its end.
    pub fn tick(
        &mut self,
        now: u64,
        window: &Window,
        sample: impl FnOnce() -> (u64, u64),
    ) -> Option<(u64, u64)> {
        if window.contains(now) {
            if self.start.is_none() {
                self.start = Some(sample());
            }
            None
        } else if now >= window.end_ns {
            self.finish(sample)
        } else {
            None
        }
    }

    /// The thread's desktops are done: record the end if no tick has.
    pub fn finish(&mut self, sample: impl FnOnce() -> (u64, u64)) -> Option<(u64, u64)> {
        if self.done {
            return None;
        }
        self.done = true;
        let (cpu, wait) = self.start?;
        let (c, w) = sample();
        Some((c.saturating_sub(cpu), w.saturating_sub(wait)))
    }
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("thread", &self.thread)
            .field("shard", &self.shard)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// Whether desktops should stop (end of run or Ctrl-C).
    pub fn stopping(&self) -> bool {
        self.live.stop.load(Ordering::Relaxed)
    }

    /// Mark a desktop connected.
    pub fn connected(&self) {
        let n = self.live.connected.fetch_add(1, Ordering::Relaxed) + 1;
        let mut s = self.stats.borrow_mut();
        s.clients.peak_connected = s.clients.peak_connected.max(n.max(0) as u64);
    }

    /// Mark a desktop disconnected.
    pub fn disconnected(&self) {
        self.live.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The measurement window of a run.
pub fn window_of(cfg: &RunConfig) -> Window {
    Window {
        start_ns: cfg.measure_start_ns(),
        end_ns: cfg.measure_end_ns(),
        interval_ns: cfg.interval_ms.max(1) * 1_000_000,
    }
}

/// A process's merged result, as printed by a shard process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardResult {
    /// Desktops this shard drove.
    pub desktops: u64,
    /// Threads.
    pub threads: usize,
    /// Request outcomes.
    pub tally: Tally,
    /// Latencies.
    pub rec: RecorderWire,
    /// Events.
    pub events: EventsWire,
    /// Connections.
    pub clients: ClientStats,
    /// Storm rounds.
    pub storm: Vec<StormWire>,
    /// Verification failure samples.
    pub samples: Vec<String>,
    /// Scheduler lag histogram (hex).
    pub sched_lag: String,
    /// CPU time of the event-loop threads inside the window, ns, per thread.
    pub thread_cpu_ns: Vec<u64>,
    /// Run-queue wait of the event-loop threads inside the window, ns, per thread.
    #[serde(default)]
    pub thread_wait_ns: Vec<u64>,
    /// CPU time of the whole process inside the window, ns.
    pub process_cpu_ns: u64,
    /// Per-operation latency histograms (hex), agent scenario.
    pub ops: Vec<(String, String)>,
    /// Requests written, by message type.
    #[serde(default)]
    pub by_type: BTreeMap<String, u64>,
    /// Stopped early (Ctrl-C).
    #[serde(default)]
    pub stopped_early: bool,
    /// When it was stopped, ns since the Unix epoch (0: it was not).
    #[serde(default)]
    pub stopped_at_unix_ns: u64,
    /// Callback: bookings.
    #[serde(default)]
    pub gms: GmsCounts,
}

/// CPU time of the calling thread, ns (`/proc/thread-self/schedstat`).
pub fn thread_cpu_ns() -> u64 {
    thread_sched().0
}

/// (CPU time, run-queue wait) of the calling thread, ns: the first two fields of
/// `/proc/thread-self/schedstat`. The wait is time the thread was runnable but had no CPU.
pub fn thread_sched() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut it = s.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// CPU time (user + system) of process `pid`, ns, from `/proc/PID/stat` (clock ticks of 10 ms).
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime = field 14, stime = field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

/// Run this process's share of the desktops (`range`) on `threads` event loops; blocks until
/// the run is over.
pub fn run_shard(
    cfg: Arc<RunConfig>,
    range: std::ops::Range<u64>,
    live: Arc<Live>,
) -> Result<ShardResult, String> {
    let threads = live.threads.len().max(1);
    let clock = Clock::new(cfg.start_unix_ns);
    let window = window_of(&cfg);
    let pid = std::process::id();
    // Process CPU at the window's start and end, sampled by a helper thread.
    let cpu_sampler = {
        let w = window;
        let live = live.clone();
        std::thread::spawn(move || {
            let sleep_until = |t: u64| {
                loop {
                    let now = clock.now_ns();
                    if now >= t || live.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_nanos((t - now).min(50_000_000)));
                }
            };
            sleep_until(w.start_ns);
            let a = process_cpu_ns(pid).unwrap_or(0);
            sleep_until(w.end_ns);
            let b = process_cpu_ns(pid).unwrap_or(0);
            b.saturating_sub(a)
        })
    };
    let mut handles = Vec::new();
    for t in 0..threads {
        let cfg = cfg.clone();
        let live = live.clone();
        let ids: Vec<u64> = range
            .clone()
            .filter(|i| (i - range.start) as usize % threads == t)
            .collect();
        let shard = (range.start, range.end);
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || run_thread(cfg, clock, window, live, t, shard, ids))
                .map_err(|e| e.to_string())?,
        );
    }
    let mut stats: Vec<ThreadStats> = Vec::new();
    for h in handles {
        stats.push(h.join().map_err(|_| "event-loop thread panicked")??);
    }
    let process_cpu_ns = cpu_sampler.join().unwrap_or(0);
    let mut r = merge_threads(&cfg, range, stats, process_cpu_ns);
    r.stopped_early = live.stop.load(Ordering::Relaxed);
    r.stopped_at_unix_ns = live.stopped_at_unix_ns.load(Ordering::Relaxed);
    Ok(r)
}

fn merge_threads(
    cfg: &RunConfig,
    range: std::ops::Range<u64>,
    stats: Vec<ThreadStats>,
    process_cpu_ns: u64,
) -> ShardResult {
    let mut rec = Recorder::new(window_of(cfg));
    let mut tally = Tally::default();
    let mut events = EventStats::default();
    let mut clients = ClientStats::default();
    let mut samples = Vec::new();
    let mut sched = recorder::new_hist();
    let mut storm: Vec<StormRound> = Vec::new();
    let mut ops: HashMap<&'static str, Histogram<u64>> = HashMap::new();
    let mut thread_cpu = Vec::new();
    let mut thread_wait = Vec::new();
    let mut by_type = TypeCounts::default();
    let mut gms = GmsCounts::default();
    let mut peak = 0;
    for s in &stats {
        rec.merge(&s.rec);
        tally.merge(&s.tally);
        gms.merge(&s.gms);
        by_type.merge(&s.by_type);
        events.merge(&s.events);
        let p = s.clients.peak_connected;
        clients.merge(&s.clients);
        peak = peak.max(p);
        samples.extend(s.samples.iter().cloned());
        let _ = sched.add(&s.sched_lag);
        thread_cpu.push(s.cpu_ns);
        thread_wait.push(s.wait_ns);
        for (i, r) in s.storm.iter().enumerate() {
            if storm.len() <= i {
                storm.push(StormRound {
                    jitter: r.jitter,
                    reconnect: recorder::new_hist(),
                    failed_attempts: 0,
                    failed: 0,
                });
            }
            let _ = storm[i].reconnect.add(&r.reconnect);
            storm[i].failed_attempts += r.failed_attempts;
            storm[i].failed += r.failed;
        }
        for (k, h) in &s.ops {
            let _ = ops.entry(k).or_insert_with(recorder::new_hist).add(h);
        }
    }
    // Peak connected is a process-wide gauge seen by each thread: take the max, not the sum.
    clients.peak_connected = peak;
    samples.truncate(20);
    ShardResult {
        desktops: range.end - range.start,
        threads: stats.len(),
        tally,
        rec: rec.to_wire(),
        events: events.to_wire(),
        clients,
        storm: storm
            .iter()
            .map(|r| StormWire {
                jitter: r.jitter,
                reconnect: recorder::hist_to_hex(&r.reconnect),
                failed_attempts: r.failed_attempts,
                failed: r.failed,
            })
            .collect(),
        samples,
        sched_lag: recorder::hist_to_hex(&sched),
        thread_cpu_ns: thread_cpu,
        thread_wait_ns: thread_wait,
        process_cpu_ns,
        ops: ops
            .iter()
            .map(|(k, h)| ((*k).to_string(), recorder::hist_to_hex(h)))
            .collect(),
        by_type: by_type.to_map(),
        stopped_early: false,
        stopped_at_unix_ns: 0,
        gms,
    }
}

fn run_thread(
    cfg: Arc<RunConfig>,
    clock: Clock,
    window: Window,
    live: Arc<Live>,
    thread: usize,
    shard: (u64, u64),
    ids: Vec<u64>,
) -> Result<ThreadStats, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let storm = cfg
        .storm_rounds()
        .iter()
        .map(|(_, jitter)| StormRound {
            jitter: *jitter,
            reconnect: recorder::new_hist(),
            failed_attempts: 0,
            failed: 0,
        })
        .collect();
    let tls = match cfg.transport {
        crate::config::Transport::Tls => Some(crate::tls::TlsClient::new(
            cfg.ca.as_deref().ok_or("tls: no --ca")?,
            &cfg.server_name,
        )?),
        _ => None,
    };
    let quic = match cfg.transport {
        crate::config::Transport::Tcp | crate::config::Transport::Tls => None,
        crate::config::Transport::Quic => {
            let ca = cfg.ca.as_deref().ok_or("quic: no --ca")?;
            let cc = crate::quic::client_config(ca)?;
            let loopback = cfg.sites.iter().all(|s| s.ip().is_loopback());
            let n = cfg.quic_sockets.max(1);
            // quinn spawns each endpoint's driver on the current runtime.
            let _enter = rt.enter();
            Some(
                crate::quic::EndpointSet::bind(n, &cc, &cfg.server_name, |k| {
                    crate::quic::socket_source(thread * n + k, loopback)
                })
                .map_err(|e| format!("quic: binding client sockets: {e}"))?,
            )
        }
    };
    let timers = {
        // The timerfd registers with this runtime's reactor.
        let _enter = rt.enter();
        crate::timer::Timers::new(clock).map_err(|e| format!("timerfd: {e}"))?
    };
    let ctx = Rc::new(Ctx {
        cfg: cfg.clone(),
        clock,
        window,
        stats: RefCell::new(ThreadStats {
            rec: Recorder::new(window),
            tally: Tally::default(),
            events: EventStats::default(),
            clients: ClientStats::default(),
            storm,
            samples: Vec::new(),
            sched_lag: recorder::new_hist(),
            cpu_ns: 0,
            wait_ns: 0,
            ops: HashMap::new(),
            by_type: TypeCounts::default(),
            gms: GmsCounts::default(),
        }),
        reconnect: RefCell::new(HashMap::new()),
        resume: RefCell::new(HashMap::new()),
        logged_in: RefCell::new(std::collections::HashSet::new()),
        work: RefCell::new(HashMap::new()),
        submits: RefCell::new(HashMap::new()),
        submits_made: RefCell::new(HashMap::new()),
        live,
        thread,
        shard,
        quic,
        tls,
        timers: timers.clone(),
        cpu: Cell::new(CpuWindow::default()),
    });
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let ticker = tokio::task::spawn_local(ticker(ctx.clone()));
        let driver = tokio::task::spawn_local(timers.drive());
        let mut tasks = Vec::with_capacity(ids.len());
        for gid in ids {
            tasks.push(tokio::task::spawn_local(crate::scenario::run_desktop(
                ctx.clone(),
                gid,
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
        ticker.abort();
        let _ = ticker.await;
        driver.abort();
        let _ = driver.await;
        record_cpu(&ctx, |c| c.finish(thread_sched));
        if let Some(eps) = &ctx.quic {
            eps.close(Duration::from_secs(2)).await;
        }
    });
    publish(&ctx);
    drop(local);
    let ctx = Rc::try_unwrap(ctx).map_err(|_| "desktop tasks still hold the context")?;
    Ok(ctx.stats.into_inner())
}

/// Copy a thread's counters into its live slot.
fn publish(ctx: &Ctx) {
    let s = ctx.stats.borrow();
    let l = &ctx.live.threads[ctx.thread];
    l.sent.store(s.tally.sent, Ordering::Relaxed);
    l.ok.store(s.tally.ok, Ordering::Relaxed);
    l.errors.store(s.tally.errors(), Ordering::Relaxed);
    l.lost.store(s.tally.lost, Ordering::Relaxed);
    l.wrong.store(s.tally.wrong_total(), Ordering::Relaxed);
    l.events.store(s.events.received, Ordering::Relaxed);
}

/// Per-thread housekeeping: publishes live counters, measures the loop's scheduler lag (how
/// late a 10 ms timer fires) and this thread's CPU time over the window.
async fn ticker(ctx: Rc<Ctx>) {
    const TICK: u64 = 10_000_000;
    let mut next = ctx.clock.now_ns() + TICK;
    let mut n = 0u64;
    loop {
        tokio::time::sleep_until(ctx.clock.tokio_instant(next)).await;
        let now = ctx.clock.now_ns();
        if ctx.window.contains(now) {
            // Tokio timers have 1 ms granularity; lag beyond that is the loop being busy.
            let lag = now.saturating_sub(next).max(1);
            ctx.stats.borrow_mut().sched_lag.saturating_record(lag);
        }
        let window = ctx.window;
        record_cpu(&ctx, |c| c.tick(now, &window, thread_sched));
        n += 1;
        // Every 50 ms: the report's throughput over time is the difference of two snapshots,
        // which must not alias with a slow publication.
        if n.is_multiple_of(5) {
            publish(&ctx);
        }
        next = next.max(now) + TICK;
    }
}

/// Update the thread's CPU window with `step`; store its figures when it has recorded the end.
fn record_cpu(ctx: &Ctx, step: impl FnOnce(&mut CpuWindow) -> Option<(u64, u64)>) {
    let mut c = ctx.cpu.get();
    let r = step(&mut c);
    ctx.cpu.set(c);
    if let Some((cpu, wait)) = r {
        let mut s = ctx.stats.borrow_mut();
        s.cpu_ns = cpu;
        s.wait_ns = wait;
    }
}

/// Events missed at the end of subscriptions: for each subscription (tenant, id), the highest
/// sequence number any subscriber saw, minus each subscriber's last. Sound when subscribers keep
/// listening until the drain deadline after publishers stopped (the supervisor scenario does).
pub fn missed_tails(tails: &[(u32, u64, u64)]) -> u64 {
    let mut max: HashMap<(u32, u64), u64> = HashMap::new();
    for (t, sub, last) in tails {
        let m = max.entry((*t, *sub)).or_default();
        *m = (*m).max(*last);
    }
    tails
        .iter()
        .map(|(t, sub, last)| max.get(&(*t, *sub)).copied().unwrap_or(0) - last)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU window's end is recorded once: by the first tick after the window, or — when
    /// the desktops finished before any such tick — when the thread finishes.
    #[test]
    fn cpu_window_records_its_end_even_without_a_tick_after_it() {
        let w = Window {
            start_ns: 100,
            end_ns: 200,
            interval_ns: 10,
        };
        // Ticks inside the window only, then the desktops are done.
        let mut c = CpuWindow::default();
        assert_eq!(c.tick(50, &w, || (1, 1)), None, "before the window");
        assert_eq!(c.tick(110, &w, || (1000, 10)), None);
        assert_eq!(c.tick(190, &w, || (5000, 50)), None);
        assert_eq!(c.finish(|| (9000, 90)), Some((8000, 80)));
        assert_eq!(c.finish(|| (9999, 99)), None, "recorded once");
        // A tick after the window records it; finishing then changes nothing.
        let mut c = CpuWindow::default();
        c.tick(150, &w, || (100, 0));
        assert_eq!(c.tick(205, &w, || (600, 7)), Some((500, 7)));
        assert_eq!(c.tick(215, &w, || (900, 9)), None);
        assert_eq!(c.finish(|| (1000, 10)), None);
        // No tick inside the window: nothing to measure from.
        let mut c = CpuWindow::default();
        assert_eq!(c.finish(|| (1, 1)), None);
    }

    #[test]
    fn tails_count_what_a_subscriber_missed_at_the_end() {
        // Subscription 7: three subscribers, the last one stopped 2 events short.
        // Subscription 8 (another link): its own numbering, nothing missed.
        let tails = [(1, 7, 10), (1, 7, 10), (1, 7, 8), (1, 8, 4), (2, 7, 1)];
        assert_eq!(missed_tails(&tails), 2);
        assert_eq!(missed_tails(&[]), 0);
    }
}
