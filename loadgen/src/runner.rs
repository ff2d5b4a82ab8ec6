//! Running a whole load: in this process when the desktops fit under the open-file limit,
//! otherwise sharded over worker processes (this executable re-executed as
//! `loadgen shard --shard i/N`, its configuration and credentials on stdin), each reporting progress and its final result
//! as JSON lines on stdout. Live progress (targeted, connected, failed, requests) is shown
//! continuously.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write as _};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::RunConfig;
use crate::engine::{self, Live, Progress, ShardResult};
use crate::shard;

/// Line prefix of a shard's progress report.
pub const PROGRESS_PREFIX: &str = "PROGRESS ";
/// Line prefix of a shard's final result.
pub const RESULT_PREFIX: &str = "RESULT ";

/// Event-loop threads per process: the configured number, or one per core.
pub fn threads_for(cfg: &RunConfig) -> usize {
    if cfg.threads > 0 {
        cfg.threads
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// On Ctrl-C, set `live.stop`: desktops stop sending, wait for their answers (up to the
/// drain), and the run ends with its report. A second Ctrl-C exits at once.
pub fn stop_on_ctrl_c(live: Arc<Live>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("loadgen: stopping (Ctrl-C again to abort)");
                live.stop_now();
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                crate::demo::kill_started();
                std::process::exit(130);
            }
        });
    });
}

/// What a parent writes on a shard's stdin: the configuration as one JSON line (credentials
/// left out, see [`RunConfig::creds`]), then the credential lines.
///
/// # Errors
/// The configuration does not serialize.
pub fn encode_shard_input(cfg: &RunConfig) -> Result<String, String> {
    let mut s = serde_json::to_string(cfg).map_err(|e| e.to_string())?;
    s.push('\n');
    s.push_str(&crate::config::credential_lines(&cfg.creds));
    Ok(s)
}

/// Read what [`encode_shard_input`] wrote, from `input` (the shard's stdin) to its end.
///
/// # Errors
/// Unreadable input, a bad configuration line or bad credential lines.
pub fn decode_shard_input(mut input: impl Read) -> Result<RunConfig, String> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the shard input: {e}"))?;
    let (json, creds) = text
        .split_once('\n')
        .ok_or("shard input: no configuration")?;
    let mut cfg: RunConfig =
        serde_json::from_str(json).map_err(|e| format!("shard configuration: {e}"))?;
    cfg.set_credentials(crate::config::parse_credentials(creds, "from the parent")?);
    Ok(cfg)
}

/// Shards this run needs.
pub fn shards_for(cfg: &RunConfig) -> u64 {
    shard::shard_count(cfg.desktops, cfg.per_process)
}

/// Run shard `i` of `n` in this process, printing progress and the result on stdout
/// (the worker-process side).
///
/// # Errors
/// The shard failed to run.
pub fn shard_main(cfg: RunConfig, i: u64, n: u64) -> Result<(), String> {
    let cfg = Arc::new(cfg);
    let range = shard::shard_range(cfg.desktops, n, i);
    let live = Arc::new(Live::new(threads_for(&cfg)));
    stop_on_ctrl_c(live.clone());
    let target = range.end - range.start;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reporter = {
        let live = live.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let p = live.snapshot(target);
                println!(
                    "{PROGRESS_PREFIX}{}",
                    serde_json::to_string(&p).unwrap_or_default()
                );
            }
        })
    };
    let res = engine::run_shard(cfg, range, live);
    done.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    let res = res?;
    println!(
        "{RESULT_PREFIX}{}",
        serde_json::to_string(&res).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Progress display: an indicatif bar on a terminal, plain lines otherwise.
pub struct Display {
    /// The bar (hidden when stderr is not a terminal).
    bar: ProgressBar,
    /// Last plain line.
    last_line: Instant,
    /// Run start, for the elapsed time.
    started: Instant,
    /// Quiet: no output.
    quiet: bool,
    /// Previous shown (time, ok) for the rate.
    prev: (Instant, u64),
    /// t = 0 of the run clock, ns since the Unix epoch.
    start_unix_ns: u64,
    /// The snapshots seen, on the run clock: the report's plots over time.
    timeline: Vec<Tick>,
}

/// Least time between two timeline points, s: shards report every 500 ms, and rates between
/// closer points would alias with those reports.
pub const TIMELINE_STEP_S: f64 = 0.5;

/// Live counters at one moment of a run (all processes summed): what the report plots over
/// time, from the ramp to the end of the drain.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tick {
    /// Seconds since t = 0 of the run.
    pub t_s: f64,
    /// The counters then.
    pub progress: Progress,
}

/// A whole run's result: each shard's, and the live counters over time.
#[derive(Debug, Default)]
pub struct RunOutput {
    /// Per shard.
    pub shards: Vec<ShardResult>,
    /// The live counters, about every 250 ms.
    pub timeline: Vec<Tick>,
}

impl Display {
    /// A display for `target` desktops of a run starting at `start_unix_ns`.
    pub fn new(target: u64, quiet: bool, start_unix_ns: u64) -> Display {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(target)
        };
        bar.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} connected {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Display {
            bar,
            last_line: Instant::now(),
            started: Instant::now(),
            quiet,
            prev: (Instant::now(), 0),
            start_unix_ns,
            timeline: Vec::new(),
        }
    }

    /// Show a snapshot (and keep it for the timeline).
    pub fn update(&mut self, p: &Progress) {
        let t_ns = engine::unix_ns().saturating_sub(self.start_unix_ns);
        if engine::unix_ns() >= self.start_unix_ns
            && self
                .timeline
                .last()
                .is_none_or(|l| t_ns as f64 / 1e9 - l.t_s >= TIMELINE_STEP_S)
        {
            self.timeline.push(Tick {
                t_s: t_ns as f64 / 1e9,
                progress: *p,
            });
        }
        let now = Instant::now();
        let dt = now.duration_since(self.prev.0).as_secs_f64();
        let every = if self.bar.is_hidden() { 2.0 } else { 1.0 };
        if dt < every {
            if !self.bar.is_hidden() {
                self.bar.set_position(p.connected);
            }
            return;
        }
        let rate = p.ok.saturating_sub(self.prev.1) as f64 / dt;
        self.prev = (now, p.ok);
        let msg = format!(
            "failed {} | sent {} ok {} err {} lost {} wrong {} ev {} | {:.0} ok/s",
            p.failed, p.sent, p.ok, p.errors, p.lost, p.wrong, p.events, rate
        );
        if self.quiet {
            return;
        }
        if self.bar.is_hidden() {
            {
                self.last_line = now;
                eprintln!(
                    "[{:>5.1}s] desktops targeted {} connected {} {msg}",
                    self.started.elapsed().as_secs_f64(),
                    p.target,
                    p.connected
                );
            }
        } else {
            self.bar.set_length(p.target);
            self.bar.set_position(p.connected);
            self.bar.set_message(msg);
        }
    }

    /// Remove the bar; returns the timeline.
    pub fn finish(self) -> Vec<Tick> {
        self.bar.finish_and_clear();
        self.timeline
    }
}

/// A shard's result as it arrives from its process.
type ShardSlot = Option<Result<ShardResult, String>>;

/// Fix the run's start time (t = 0): shortly from now, leaving worker processes time to start.
pub fn schedule(cfg: &mut RunConfig) {
    let lead = if shards_for(cfg) > 1 {
        400_000_000
    } else {
        50_000_000
    };
    cfg.start_unix_ns = engine::unix_ns() + lead;
}

/// Run the whole load and return every shard's result.
///
/// # Errors
/// A shard could not start or failed.
pub fn run(mut cfg: RunConfig, quiet: bool) -> Result<RunOutput, String> {
    if cfg.sites.is_empty() {
        return Err("no target sites".into());
    }
    if cfg.creds.is_empty() {
        return Err("no credentials (give --credentials FILE)".into());
    }
    let n = shards_for(&cfg);
    // Check that the source addresses suffice before starting anything.
    shard::source_addr(cfg.desktops.saturating_sub(1), cfg.desktops, cfg.per_source)?;
    if cfg.start_unix_ns == 0 {
        schedule(&mut cfg);
    }
    let mut display = Display::new(cfg.desktops, quiet, cfg.start_unix_ns);
    if n == 1 {
        let cfg = Arc::new(cfg);
        let live = Arc::new(Live::new(threads_for(&cfg)));
        stop_on_ctrl_c(live.clone());
        let target = cfg.desktops;
        let h = {
            let live = live.clone();
            let cfg = cfg.clone();
            std::thread::spawn(move || engine::run_shard(cfg, 0..target, live))
        };
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(250));
            display.update(&live.snapshot(target));
        }
        display.update(&live.snapshot(target));
        let timeline = display.finish();
        let r = h.join().map_err(|_| "shard thread panicked")??;
        return Ok(RunOutput {
            shards: vec![r],
            timeline,
        });
    }
    // The shards get the terminal's Ctrl-C themselves; this process only waits for them.
    stop_on_ctrl_c(Arc::new(Live::new(0)));
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let shard_input = encode_shard_input(&cfg)?;
    let progress = Arc::new(Mutex::new(vec![Progress::default(); n as usize]));
    let results: Arc<Mutex<Vec<ShardSlot>>> = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let mut children = Vec::new();
    let mut readers = Vec::new();
    for i in 0..n {
        let mut child = Command::new(&exe)
            .arg("shard")
            .arg("--shard")
            .arg(format!("{i}/{n}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn shard {i}: {e}"))?;
        // The configuration and the credentials go down the shard's stdin pipe, then it is
        // closed: nothing of them in its argv or environment, where `ps` shows them.
        {
            let mut stdin = child.stdin.take().ok_or("no shard stdin")?;
            stdin
                .write_all(shard_input.as_bytes())
                .map_err(|e| format!("shard {i} stdin: {e}"))?;
        }
        let out = child.stdout.take().ok_or("no shard stdout")?;
        let progress = progress.clone();
        let results = results.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(p) = line.strip_prefix(PROGRESS_PREFIX) {
                    if let Ok(p) = serde_json::from_str::<Progress>(p)
                        && let Ok(mut v) = progress.lock()
                    {
                        v[i as usize] = p;
                    }
                } else if let Some(r) = line.strip_prefix(RESULT_PREFIX) {
                    let r = serde_json::from_str::<ShardResult>(r)
                        .map_err(|e| format!("shard {i} result: {e}"));
                    if let Ok(mut v) = results.lock() {
                        v[i as usize] = Some(r);
                    }
                }
            }
        }));
        children.push(child);
    }
    loop {
        let mut all_done = true;
        for c in &mut children {
            if matches!(c.try_wait(), Ok(None)) {
                all_done = false;
            }
        }
        let mut sum = Progress::default();
        if let Ok(v) = progress.lock() {
            for p in v.iter() {
                sum.add(p);
            }
        }
        sum.target = cfg.desktops;
        display.update(&sum);
        if all_done {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let timeline = display.finish();
    for r in readers {
        let _ = r.join();
    }
    let mut out = Vec::new();
    let mut v = results.lock().map_err(|_| "poisoned")?;
    for (i, r) in v.iter_mut().enumerate() {
        match r.take() {
            Some(Ok(r)) => out.push(r),
            Some(Err(e)) => return Err(e),
            None => return Err(format!("shard {i} exited without a result")),
        }
    }
    Ok(RunOutput {
        shards: out,
        timeline,
    })
}
